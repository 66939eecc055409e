//! The `elves-agent` binary: loads the configuration, sets up logging, opens the bus and calls
//! [`elves_agent::run`] until Ctrl-C or SIGTERM.
//!
//! Everything else lives in the library so that tests run the same code.

use anyhow::Context;
use clap::Parser;
use elves_agent::{AgentConfig, AgentStats};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

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

// One thread is enough: the agent waits on the broker and on child processes, and the workers
// are separate processes. Fewer threads keep the idle footprint small on every managed host.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    elves_shared::logging::init();
    let args = Args::parse();
    match serve(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("elves-agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let config = AgentConfig::load(Some(&args.config), std::env::vars())
        .with_context(|| format!("loading {}", args.config.display()))?;
    let bus_url = elves_shared::bus::with_frame_max(&config.bus.url, config.bus.frame_max);
    let bus =
        elves_shared::bus::open(&bus_url, &config.bus.namespace).context("opening the bus")?;
    let stats = Arc::new(AgentStats::new());
    let outcome = elves_agent::run(config, bus.clone(), stats, shutdown_signal()).await;
    bus.close().await;
    outcome
}

/// Resolves on the first Ctrl-C or SIGTERM (what systemd sends on stop).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            log::error!("cannot listen for ctrl-c: {err}");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                log::error!("cannot listen for sigterm: {err}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => log::info!("ctrl-c received, shutting down"),
        () = terminate => log::info!("sigterm received, shutting down"),
    }
}
