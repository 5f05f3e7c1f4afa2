//! `tracelight agent` as a standalone binary, until `main.rs` wires the subcommand; used by the
//! collector interop test (`make e2e-agent`) and the benchmark.

use clap::Parser;

#[derive(Parser)]
#[command(name = "tracelight-agent")]
struct Cli {
    #[command(flatten)]
    args: tracelight::agent::AgentArgs,
}

fn main() -> anyhow::Result<()> {
    tracelight::agent::run(Cli::parse().args)
}
