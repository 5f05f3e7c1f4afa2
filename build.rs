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
    // The agent's functions together, in the order it runs them (`make agent-order` writes the
    // script from a profile): the kernel maps code around each executed page (64 KiB of
    // fault-around, or the whole large folio the page cache holds), so the agent's ~1.8 MiB of
    // functions scattered through 18 MiB of code cost ~5-6 MiB resident; grouped, ~2 MiB.
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/agent-layout.ld");
    if script.exists() {
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
    }
}
