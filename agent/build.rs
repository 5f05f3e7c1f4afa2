//! Link options of the agent binary, which runs beside every application container.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target != "x86_64-unknown-linux-gnu" || std::env::var("PROFILE").as_deref() != Ok("release") {
        return;
    }
    // Relative relocations packed (DT_RELR; glibc >= 2.36, as in distroless cc-debian12): the
    // loader reads every relocation record at start, so unpacked they were resident in each
    // agent (see the figure in `make bench-agent-compare`'s notes in the README).
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    // Not `--icf=all`: folding identical functions made the binary 0.7% smaller and the idle
    // agent 0.1-0.2 MiB larger (the folded code lands away from its callers).
}
