//! Link options that keep `tracelight agent` small in memory (see "Where the memory goes" in
//! `src/agent/mod.rs`). Both change where things sit in the binary, not what runs.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=config/agent-layout.ld");
    // x86_64-unknown-linux-gnu links with rust-lld since Rust 1.90; the layout script relies on
    // lld's `INSERT BEFORE`. Other targets and debug builds keep the default layout.
    let target = std::env::var("TARGET").unwrap_or_default();
    if target != "x86_64-unknown-linux-gnu" || std::env::var("PROFILE").as_deref() != Ok("release") {
        return;
    }
    // Relative relocations packed (DT_RELR; glibc >= 2.36, as in distroless cc-debian12): the
    // 0.8 MiB of relocation records read at every start become 10 KiB.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    // The functions that run placed together, the agent's first, then the operator's, in the
    // order they run (`make agent-order` writes the script from profiles of both): the kernel
    // maps code around each executed page (64 KiB of fault-around, or the whole large folio the
    // page cache holds), so code scattered through 18 MiB costs several times its size resident.
    // Measured: the agent's code resident at idle 5.3 -> ~1.5 MiB; the operator's peak RSS at
    // 2000 workloads 78.7 -> 73.4 MiB.
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/agent-layout.ld");
    if script.exists() {
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
    }
}
