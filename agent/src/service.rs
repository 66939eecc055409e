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
    let outcome = crate::run(config, bus.clone(), stats, shutdown_signal()?).await;
    bus.close().await;
    outcome
}

/// Resolves on the first Ctrl-C or SIGTERM (what systemd sends on stop). Both handlers are
/// installed when this is called, not when the future is first polled: the agent tells systemd
/// it is ready before it waits on this, and a SIGTERM in between must still drain the agent
/// rather than end the process by the signal's default action.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for ctrl-c")?;
    let mut terminate = signal(SignalKind::terminate()).context("listening for sigterm")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => log::info!("ctrl-c received, shutting down"),
            _ = terminate.recv() => log::info!("sigterm received, shutting down"),
        }
    })
}
