//! The agent as a service: what the `elves-agent` binary and `elves agent` run. Loads the
//! configuration, opens the bus and runs the agent until Ctrl-C or SIGTERM. SIGHUP reads the
//! configuration file again for the center's keys (a key rotation): the trusted keys change
//! at once, nothing else does, and running tasks go on.

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
    let verifier = config.center.verifier().context("agent configuration")?;
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let reloaded = verifier.clone();
    let path = config_path.to_path_buf();
    let reloader = tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match reload_keys(&path, &reloaded) {
                Ok(ids) => log::info!("SIGHUP: trusting center keys {ids:?}"),
                Err(err) => log::error!("SIGHUP: keys unchanged: {err:#}"),
            }
        }
    });
    let outcome =
        crate::runtime::run_with_verifier(config, verifier, bus.clone(), stats, shutdown_signal()?)
            .await;
    reloader.abort();
    bus.close().await;
    outcome
}

/// Reads the configuration at `path` again and trusts exactly its center keys from now on;
/// answers their ids. A configuration that does not load changes nothing.
pub fn reload_keys(
    path: &Path,
    verifier: &elves_shared::crypto::InstructionVerifier,
) -> anyhow::Result<Vec<String>> {
    let config = AgentConfig::load(Some(path), std::env::vars())
        .with_context(|| format!("loading {}", path.display()))?;
    let next = config.center.verifier()?;
    verifier.replace_keys(&next);
    Ok(verifier.key_ids())
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

#[cfg(test)]
mod tests {
    use super::*;
    use elves_shared::crypto::InstructionSigner;

    #[test]
    fn a_reload_trusts_the_files_keys_and_a_bad_file_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let (k1, k2) = (
            InstructionSigner::generate("k1"),
            InstructionSigner::generate("k2"),
        );
        let write = |keys: &str| {
            std::fs::write(&path, format!("id = \"a\"\n[center.keys]\n{keys}")).unwrap();
        };
        write(&format!("k1 = \"{}\"\n", k1.public_key_hex()));
        let verifier = AgentConfig::load(Some(&path), Vec::new())
            .unwrap()
            .center
            .verifier()
            .unwrap();
        let held = verifier.clone();
        write("k2 = \"not hex\"\n");
        assert!(reload_keys(&path, &verifier).is_err());
        assert_eq!(held.key_ids(), vec!["k1"]);
        write(&format!(
            "k1 = \"{}\"\nk2 = \"{}\"\n",
            k1.public_key_hex(),
            k2.public_key_hex()
        ));
        assert_eq!(reload_keys(&path, &verifier).unwrap(), vec!["k1", "k2"]);
        write(&format!("k2 = \"{}\"\n", k2.public_key_hex()));
        assert_eq!(reload_keys(&path, &verifier).unwrap(), vec!["k2"]);
        assert!(held.verify(b"x", Some("k1"), Some(&k1.sign(b"x"))).is_err());
        assert!(held.verify(b"x", Some("k2"), Some(&k2.sign(b"x"))).is_ok());
    }
}
