//! The agent's runtime: its life from start to shutdown. [`run`] opens what the agent keeps
//! (spool, done journal, result publisher), starts the background loops, consumes the
//! instruction queue until told to shut down, then lets running workers finish within a bound.
//!
//! The work itself is in the submodules: `delivery` takes each message from the queue through
//! the guard to a worker and settles it (ack, reject or requeue); `results` publishes results,
//! spooling them when the bus will not take them; `heartbeat` reports this agent and its apps;
//! `cron_firings` runs the agent-local crons. Deciding whether an instruction may run is
//! `guard`'s job, running the process is `worker`'s, and keeping results on disk is `spool`'s.
//! The agent opens no listening port.

mod cron_firings;
mod delivery;
mod heartbeat;
mod results;
mod survivors;
#[cfg(test)]
mod testing;

use crate::config::AgentConfig;
use crate::done_journal::DoneJournal;
use crate::exec::ExecLimits;
use crate::guard::InstructionGuard;
use crate::output::{OutputConfig, OutputForwarder};
use crate::result_batcher::ResultBatcher;
use crate::spool::{self, Spool};
use crate::stats::AgentStats;
use crate::worker::{self, WorkerRunner};
use anyhow::Context;
use elves_shared::bus::SharedBus;
use elves_shared::time::now_unix_ms;
use elves_shared::wire::{self, TaskId};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinSet;

/// The installed-apps listing moved to its own module; this path stays for callers.
pub use crate::app_scan::installed_apps;

/// How long running workers may go on after shutdown was asked. Below systemd's default stop
/// timeout (90 s), so that the agent, not SIGKILL, ends what is left and kills its process groups.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// What the tasks of one agent share.
struct Agent {
    config: AgentConfig,
    bus: SharedBus,
    stats: Arc<AgentStats>,
    runner: WorkerRunner,
    spool: Arc<Spool>,
    spool_wake: Arc<Notify>,
    /// Publishes the results bound for `center.result`.
    results: ResultBatcher,
    /// The tasks started and finished here, across restarts.
    done: DoneJournal,
    /// Task id → deadline of the tasks an earlier run of this agent started and never
    /// finished. They are not run again: their instruction, when it comes back, is answered
    /// with a `lost` result.
    interrupted: Mutex<HashMap<TaskId, u64>>,
    /// Task id → the sender that cancels it, for every accepted task not finished yet.
    running: Mutex<HashMap<TaskId, oneshot::Sender<()>>>,
    /// Becomes true when shutdown starts; retry loops give up on it.
    stopping: watch::Receiver<bool>,
    /// The latest app set from the center, for the installer.
    app_sets: watch::Sender<Option<wire::AppSet>>,
    /// Makes the heartbeat go out now (after an install, to report it).
    beat_now: Arc<Notify>,
    /// Posts P-mode results to the processors that `appcfg.json` names.
    processor_http: reqwest::Client,
}

impl Agent {
    fn running(&self) -> MutexGuard<'_, HashMap<TaskId, oneshot::Sender<()>>> {
        // A poisoned map only means a task panicked while inserting; the map itself is intact.
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// True (once) when `id` was running when this agent last stopped.
    fn take_interrupted(&self, id: &TaskId) -> bool {
        self.interrupted
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(id)
            .is_some()
    }
}

/// Runs the agent until `shutdown` resolves (or the bus is dropped).
pub async fn run(
    config: AgentConfig,
    bus: SharedBus,
    stats: Arc<AgentStats>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let verifier = config.center.verifier().context("agent configuration")?;
    run_with_verifier(config, verifier, bus, stats, shutdown).await
}

/// [`run`] trusting `verifier`'s keys, which the caller may replace while the agent runs
/// (`InstructionVerifier::replace_keys`: a key rotation, see `service::reload_keys`).
pub async fn run_with_verifier(
    config: AgentConfig,
    verifier: elves_shared::crypto::InstructionVerifier,
    bus: SharedBus,
    stats: Arc<AgentStats>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    config.validate().context("agent configuration")?;
    let agent_id = config.id.clone();
    let configured = config.interpreters.clone();
    // Resolving probes interpreters with child processes: keep it off the async threads.
    let interpreters =
        tokio::task::spawn_blocking(move || worker::resolve_interpreters(&configured))
            .await
            .context("resolving interpreters")?;
    let output = OutputForwarder::new(OutputConfig {
        cap_bytes: config.exec.output_cap,
        interval: Duration::from_millis(config.exec.output_interval_ms),
        ..OutputConfig::default()
    });
    let mut runner = WorkerRunner::new(
        config.apps_dir.clone(),
        interpreters,
        exec_limits(&config),
        config.max_concurrent,
    );
    if config.exec.output_live {
        runner = runner.with_output(output.clone());
    }
    let spool_dir = config.spool_dir.clone();
    let spool = tokio::task::spawn_blocking(move || Spool::open(&spool_dir))
        .await
        .context("opening the spool")??;
    let journal_dir = config.spool_dir.clone();
    let (done, journal) =
        tokio::task::spawn_blocking(move || DoneJournal::open(&journal_dir, now_unix_ms()))
            .await
            .context("opening the done journal")??;
    if !journal.interrupted.is_empty() {
        let interrupted: Vec<TaskId> = journal
            .interrupted
            .iter()
            .map(|(id, _)| id.clone())
            .collect();
        log::warn!(
            "agent {agent_id}: {} task(s) were running when this agent last stopped; they will \
             be reported lost, not run again: {interrupted:?}",
            interrupted.len()
        );
        // A worker's own process died with the agent, but what it started may still run.
        tokio::task::spawn_blocking(move || survivors::kill(&interrupted))
            .await
            .context("ending what interrupted tasks left running")?;
    }
    let (stop, stopping) = watch::channel(false);
    let results = ResultBatcher::start(bus.clone());
    let agent = Arc::new(Agent {
        config,
        bus,
        stats,
        runner,
        spool: Arc::new(spool),
        spool_wake: Arc::new(Notify::new()),
        results,
        done,
        running: Mutex::new(HashMap::new()),
        interrupted: Mutex::new(journal.interrupted.into_iter().collect()),
        stopping,
        app_sets: watch::channel(None).0,
        beat_now: Arc::new(Notify::new()),
        processor_http: reqwest::Client::new(),
    });
    log::info!(
        "agent {agent_id}: starting, apps in {}, spool in {}",
        agent.config.apps_dir.display(),
        agent.config.spool_dir.display()
    );
    // systemd's Type=notify: started means configuration, key, spool and journal are in order;
    // the broker may come later. Workers inherit NOTIFY_SOCKET (removing it races other
    // threads reading the environment), and the unit's NotifyAccess=main ignores them.
    if let Err(err) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        log::warn!("agent {agent_id}: telling systemd it is ready: {err}");
    }

    let mut background = JoinSet::new();
    background.spawn(spool::run_flusher(
        agent.spool.clone(),
        agent.bus.clone(),
        agent.stats.clone(),
        agent.spool_wake.clone(),
        stopped(agent.stopping.clone()),
    ));
    background.spawn(cron_firings::run(agent.clone()));
    background.spawn(output.run(
        agent.bus.clone(),
        agent.config.id.clone(),
        stopped(agent.stopping.clone()),
    ));
    background.spawn(crate::installer::run(
        crate::installer::Installer::new(
            agent.config.apps_dir.clone(),
            agent.config.package_limits,
            Some(agent.config.center.download_url.clone()),
            agent.config.center.tls_ca.as_deref(),
        ),
        agent.app_sets.subscribe(),
        agent.beat_now.clone(),
        agent.stopping.clone(),
    ));

    tokio::pin!(shutdown);
    let mut tasks = JoinSet::new();
    let mut outcome = Ok(());
    if let Some(mut consumer) = delivery::open_consumer(&agent, &mut shutdown).await {
        // Heartbeats start only once the instruction queue exists: a center that sees this
        // agent online must be able to route work to it.
        background.spawn(heartbeat::run(agent.clone()));
        let mut guard = InstructionGuard::new(verifier, agent_id.clone());
        for (task_id, deadline) in journal.done {
            guard.remember(task_id, deadline);
        }
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                delivery = consumer.next() => match delivery {
                    Some(delivery) => delivery::handle(&agent, &mut guard, delivery, &mut tasks).await,
                    None => {
                        log::error!("agent {agent_id}: the bus was closed");
                        outcome = Err(anyhow::anyhow!("the bus was closed"));
                        break;
                    }
                },
                // Reaps finished tasks so that the set does not grow with every instruction.
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => log_join(joined),
            }
        }
        log::info!(
            "agent {agent_id}: shutting down, {} task(s) in flight",
            tasks.len()
        );
        let _ = stop.send(true);
        // Jobs still waiting for a worker slot end at once and are requeued; running workers
        // get SHUTDOWN_GRACE to finish.
        agent.runner.close();
        drain(&agent_id, &mut tasks).await;
        // Dropped only now, so that the acks of the tasks above still have their channel;
        // whatever the consumer holds unsettled goes back to the broker.
        drop(consumer);
    } else {
        log::info!("agent {agent_id}: shutdown before the bus could be reached");
    }
    let _ = stop.send(true);
    while let Some(joined) = background.join_next().await {
        log_join(joined);
    }
    log::info!("agent {agent_id}: stopped");
    outcome
}

fn exec_limits(config: &AgentConfig) -> ExecLimits {
    ExecLimits {
        timeout: Duration::from_secs(config.exec.timeout_s),
        kill_grace: Duration::from_millis(config.exec.kill_grace_ms),
        stdout_cap: config.exec.stdout_cap,
        stderr_cap: config.exec.stderr_cap,
    }
}
/// Waits for the tasks in flight, up to [`SHUTDOWN_GRACE`], then ends the rest: dropping a
/// worker kills its process group, and its instruction, never acked, is delivered again.
async fn drain(agent_id: &wire::AgentId, tasks: &mut JoinSet<()>) {
    let all_done = async {
        while let Some(joined) = tasks.join_next().await {
            log_join(joined);
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, all_done)
        .await
        .is_err()
    {
        log::warn!(
            "agent {agent_id}: {} task(s) still running after {SHUTDOWN_GRACE:?}, killing them",
            tasks.len()
        );
        tasks.abort_all();
        while let Some(joined) = tasks.join_next().await {
            log_join(joined);
        }
    }
}

fn log_join(joined: Result<(), tokio::task::JoinError>) {
    if let Err(err) = joined {
        if err.is_panic() {
            log::error!("agent task panicked: {err}");
        }
    }
}

/// Resolves once shutdown has started.
async fn stopped(mut stopping: watch::Receiver<bool>) {
    // An error means the sender is gone, which only happens once `run` returns: stop too.
    let _ = stopping.wait_for(|stopping| *stopping).await;
}

#[cfg(test)]
mod tests {
    use super::testing::inproc;
    use super::*;
    use elves_shared::wire::AgentId;

    #[tokio::test]
    async fn a_config_without_the_center_key_does_not_start() {
        let config = AgentConfig::new(AgentId::parse("host-1").unwrap());
        let err = run(config, inproc(), Arc::new(AgentStats::new()), async {})
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("center.public_key"), "{err:#}");
    }
}
