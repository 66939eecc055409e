//! The agent as a service: what the `elves-agent` binary and `elves agent` run. Loads the
//! configuration, opens the bus and runs the agent until Ctrl-C or SIGTERM.

use crate::{AgentConfig, AgentStats};
use anyhow::Context;
use std::path::Path;
use std::sync::Arc;

/// Runs the agent configured by `config_path` (and the `ELVES_…` variables naming its keys)
/// on a runtime of its own until Ctrl-C or SIGTERM.
pub fn run_until_signal(config_path: &Path) -> anyhow::Result<()> {
    // One thread is enough: the agent waits on the broker and on child processes, and the
    // workers are separate processes. Fewer threads keep the idle footprint small on every
    // managed host. It is also the thread every worker dies with (`exec`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the agent's runtime")?;
    runtime.block_on(serve(config_path))
}

async fn serve(config_path: &Path) -> anyhow::Result<()> {
    let config = AgentConfig::load(Some(config_path), std::env::vars())
        .with_context(|| format!("loading {}", config_path.display()))?;
    let bus_url = elves_shared::bus::with_frame_max(&config.bus.url, config.bus.frame_max);
    let bus = elves_shared::bus::open_with_tls(&bus_url, &config.bus.namespace, &config.bus.tls())
        .context("opening the bus")?;
    let stats = Arc::new(AgentStats::new());
    let outcome = crate::run(config, bus.clone(), stats, shutdown_signal()).await;
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
