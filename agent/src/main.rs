//! `tracelight-agent`: the sidecar the injector adds to every instrumented pod.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use tracelight_agent::args::{AgentArgs, Command};

// mimalloc: the hot path allocates many small objects; with it the agent also returns freed
// memory to the OS promptly (see `tracelight_process::allocator`). The `system-allocator`
// feature leaves it out, for heap profilers that see only malloc.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = match AgentArgs::parse_from(std::env::args().skip(1)) {
        Ok(Command::Run(args)) => *args,
        Ok(Command::Help) => {
            print!("{}", AgentArgs::help());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("tracelight-agent {}", tracelight_contract::VERSION);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match tracelight_agent::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
