//! The `elves-agent` binary: parses its arguments and calls
//! [`elves_agent::service::run_until_signal`] (logging, configuration, bus, Ctrl-C/SIGTERM).
//!
//! Everything else lives in the library so that tests run the same code.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "elves-agent",
    version,
    about = "the elves agent: runs app workers on this host"
)]
struct Args {
    /// The agent's TOML configuration; `ELVES_…` environment variables naming its keys override
    /// them (others, such as the `elves` client's `ELVES_URL`, are ignored).
    #[arg(long, default_value = "config/agent.toml")]
    config: PathBuf,
}

fn main() -> ExitCode {
    elves_shared::logging::init();
    let args = Args::parse();
    match elves_agent::service::run_until_signal(&args.config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("elves-agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}
