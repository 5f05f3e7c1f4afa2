//! `tracelight <subcommand>`: the command line, and nothing else.

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use std::process::ExitCode;

// mimalloc: admission allocates many small objects; glibc malloc spent
// about 40% of an admission's instructions (measured with callgrind on `benches/admission.rs`).
// The `system-allocator` feature leaves it out, for heap profilers that see only malloc (heaptrack).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tracelight",
    version,
    about = "Distributed tracing for Kubernetes workloads, without touching their code"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the TracingPolicy CustomResourceDefinition as YAML.
    Crd,
    /// Print manifests with their pod templates injected exactly as the webhook would.
    Inject(tracelight::cli::inject::InjectArgs),
    /// Print the rollout a policy would run on the cluster now (phases, batches), changing nothing.
    Preview(tracelight::cli::preview::PreviewArgs),
    /// Check that every instrumented workload sends spans and its traces are whole (exits 1 when
    /// one is silent or a trace link is broken).
    Verify(tracelight::cli::verify::VerifyArgs),
    /// Print the service graph from the agents' probe traces, as text or Graphviz DOT (`-o dot`).
    Graph(tracelight::cli::graph::GraphArgs),
    /// Run the operator: admission webhook, certificate management and controllers.
    Controller(Box<tracelight::controller::ControllerArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd => tracelight::cli::crd::run(&mut std::io::stdout()),
        Command::Inject(args) => tracelight::cli::inject::run(&args),
        Command::Preview(args) => tracelight::cli::preview::run(&args),
        Command::Graph(args) => tracelight::cli::graph::run(&args),
        Command::Verify(args) => match tracelight::cli::verify::run(&args) {
            Ok(true) => Ok(()),
            // The table says which workloads failed.
            Ok(false) => return ExitCode::from(1),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
        },
        Command::Controller(args) => tracelight::controller::run(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
