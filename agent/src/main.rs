//! `tracelight-agent`: the sidecar the injector adds to every instrumented pod.

use clap::Parser;
use std::process::ExitCode;

// mimalloc: the hot path allocates many small objects; with it the agent also returns freed
// memory to the OS promptly (see `tracelight_process::allocator`). The `system-allocator`
// feature leaves it out, for heap profilers that see only malloc.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tracing agent sidecar: OTLP in on loopback, consistent sampling, export to the collector.
#[derive(Parser)]
#[command(name = "tracelight-agent", version)]
struct Cli {
    #[command(flatten)]
    args: tracelight_agent::AgentArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match tracelight_agent::run(cli.args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
