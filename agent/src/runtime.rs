//! The agent's runtime: consumes its instruction queue, runs app workers, reports results, sends
//! heartbeats and flushes the result spool, until told to shut down.
//!
//! Ack rules: an instruction is acked only after its result was published or spooled; a message
//! that is refused (bad signature, undecodable, unknown kind) is rejected without requeue; a
//! replayed instruction is acked and dropped. A result that can be neither published nor spooled
//! is retried; at shutdown its instruction is left unacked so that the broker delivers it again.
//!
//! Deciding whether an instruction may run is `guard`'s job, running the process is `worker`'s,
//! and keeping results on disk is `spool`'s: this module only wires them to the bus.
//! The agent opens no listening port.

use crate::config::AgentConfig;
use crate::done_journal::DoneJournal;
use crate::exec::ExecLimits;
use crate::guard::{InstructionGuard, Refusal, Verdict};
use crate::result_batcher::ResultBatcher;
use crate::spool::{self, Outgoing, Spool};
use crate::stats::{bump, AgentStats};
use crate::worker::{self, WorkerError, WorkerJob, WorkerReport, WorkerRunner};
use anyhow::Context;
use elves_shared::bus::{
    BusError, BusMessage, Consumer, Delivery, Destination, QueueSpec, SharedBus,
};
use elves_shared::time::now_unix_ms;
use elves_shared::wire::{
    self, routing, Heartbeat, Instruction, JobResult, Mode, TaskId, TaskType,
};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinSet;

const CONSUME_FIRST_BACKOFF: Duration = Duration::from_millis(100);
const CONSUME_MAX_BACKOFF: Duration = Duration::from_secs(5);
const DELIVER_FIRST_BACKOFF: Duration = Duration::from_millis(100);
const DELIVER_MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long running workers may go on after shutdown was asked. Below systemd's default stop
/// timeout (90 s), so that the agent, not SIGKILL, ends what is left and kills its process groups.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Heartbeats older than this many intervals are useless to a center: let the broker drop them
/// rather than pile them up while no center is consuming.
const HEARTBEAT_TTL_INTERVALS: u64 = 3;

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
    /// The tasks finished here, across restarts.
    done: DoneJournal,
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
}

/// Runs the agent until `shutdown` resolves (or the bus is dropped).
pub async fn run(
    config: AgentConfig,
    bus: SharedBus,
    stats: Arc<AgentStats>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    config.validate().context("agent configuration")?;
    let agent_id = config.id.clone();
    let verifier = config.center.verifier().context("agent configuration")?;
    let configured = config.interpreters.clone();
    // Resolving probes interpreters with child processes: keep it off the async threads.
    let interpreters =
        tokio::task::spawn_blocking(move || worker::resolve_interpreters(&configured))
            .await
            .context("resolving interpreters")?;
    let runner = WorkerRunner::new(
        config.apps_dir.clone(),
        interpreters,
        exec_limits(&config),
        config.max_concurrent,
    );
    let spool_dir = config.spool_dir.clone();
    let spool = tokio::task::spawn_blocking(move || Spool::open(&spool_dir))
        .await
        .context("opening the spool")??;
    let journal_dir = config.spool_dir.clone();
    let (done, done_before) =
        tokio::task::spawn_blocking(move || DoneJournal::open(&journal_dir, now_unix_ms()))
            .await
            .context("opening the done journal")??;
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

    let mut background = JoinSet::new();
    background.spawn(spool::run_flusher(
        agent.spool.clone(),
        agent.bus.clone(),
        agent.stats.clone(),
        agent.spool_wake.clone(),
        stopped(agent.stopping.clone()),
    ));
    background.spawn(local_cron_loop(agent.clone()));
    background.spawn(crate::installer::run(
        crate::installer::Installer::new(
            agent.config.apps_dir.clone(),
            agent.config.package_limits,
            Some(agent.config.center.download_url.clone()),
        ),
        agent.app_sets.subscribe(),
        agent.beat_now.clone(),
        agent.stopping.clone(),
    ));

    tokio::pin!(shutdown);
    let mut tasks = JoinSet::new();
    let mut outcome = Ok(());
    if let Some(mut consumer) = open_consumer(&agent, &mut shutdown).await {
        // Heartbeats start only once the instruction queue exists: a center that sees this
        // agent online must be able to route work to it.
        background.spawn(heartbeat_loop(agent.clone()));
        let mut guard = InstructionGuard::new(verifier, agent_id.clone());
        for (task_id, deadline) in done_before {
            guard.remember(task_id, deadline);
        }
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                delivery = consumer.next() => match delivery {
                    Some(delivery) => handle(&agent, &mut guard, delivery, &mut tasks).await,
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

/// The agent's queue: durable, so that instructions wait for an agent that is restarting.
fn queue_spec(agent: &Agent) -> QueueSpec {
    QueueSpec {
        name: agent.bus.queue_name(&format!("agent.{}", agent.config.id)),
        bindings: vec![routing::agent(&agent.config.id)],
        durable: true,
    }
}

/// Starts consuming, retrying with backoff while the broker is down; `None` on shutdown.
async fn open_consumer<S>(agent: &Agent, shutdown: &mut std::pin::Pin<&mut S>) -> Option<Consumer>
where
    S: Future<Output = ()>,
{
    let spec = queue_spec(agent);
    let agent_id = &agent.config.id;
    let mut backoff = CONSUME_FIRST_BACKOFF;
    loop {
        let attempt = tokio::select! {
            () = shutdown.as_mut() => return None,
            attempt = agent.bus.consume(spec.clone(), agent.config.prefetch()) => attempt,
        };
        match attempt {
            Ok(consumer) => {
                log::info!("agent {agent_id}: consuming {}", spec.name);
                return Some(consumer);
            }
            Err(err) => log::warn!(
                "agent {agent_id}: cannot consume {} yet, retrying in {backoff:?}: {err}",
                spec.name
            ),
        }
        tokio::select! {
            () = shutdown.as_mut() => return None,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(CONSUME_MAX_BACKOFF);
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

/// Settles one delivery, starting a task for the work that takes time.
async fn handle(
    agent: &Arc<Agent>,
    guard: &mut InstructionGuard,
    delivery: Delivery,
    tasks: &mut JoinSet<()>,
) {
    let stats = &agent.stats;
    bump(&stats.received);
    let message_id = delivery
        .message
        .message_id
        .clone()
        .unwrap_or_else(|| "-".to_string());
    match delivery.message.kind.as_str() {
        wire::kind::INSTRUCTION => match guard.check(&delivery.message, now_unix_ms()) {
            Verdict::Refused(refusal) => {
                refuse(stats, &message_id, "instruction", refusal, delivery).await
            }
            verdict => {
                let delivery = InstructionDelivery::Single(Box::new(delivery));
                start(agent, verdict, delivery, tasks).await;
            }
        },
        wire::kind::INSTRUCTIONS => match guard.check_batch(&delivery.message, now_unix_ms()) {
            Ok(verdicts) => {
                let batch = Arc::new(SharedDelivery::new(delivery, verdicts.len()));
                for verdict in verdicts {
                    let delivery = InstructionDelivery::Shared(batch.clone());
                    start(agent, verdict, delivery, tasks).await;
                }
            }
            Err(refusal) => refuse(stats, &message_id, "instructions", refusal, delivery).await,
        },
        wire::kind::CANCEL => match guard.check_cancel(&delivery.message) {
            Ok(cancel) => {
                match agent.running().remove(&cancel.id) {
                    Some(sender) => {
                        log::info!("task {}: cancel received, killing its worker", cancel.id);
                        let _ = sender.send(());
                    }
                    None => {
                        log::info!("task {}: cancel received, task not running here", cancel.id)
                    }
                }
                delivery.ack().await;
            }
            Err(refusal) => refuse(stats, &message_id, "cancel", refusal, delivery).await,
        },
        wire::kind::APP_SET => match guard.check_app_set(&delivery.message, now_unix_ms()) {
            Ok(Some(set)) => {
                log::info!("app set received: {} app(s)", set.apps.len());
                agent.app_sets.send_replace(Some(set));
                delivery.ack().await;
            }
            Ok(None) => {
                log::info!("message {message_id}: stale app set dropped");
                delivery.ack().await;
            }
            Err(refusal) => refuse(stats, &message_id, "app set", refusal, delivery).await,
        },
        other => {
            bump(&stats.undecodable);
            log::warn!("message {message_id}: unknown kind {other:?}, rejected");
            delivery.reject().await;
        }
    }
}

/// Acts on the verdict about one instruction (never a refusal: those settle the message).
async fn start(
    agent: &Arc<Agent>,
    verdict: Verdict,
    delivery: InstructionDelivery,
    tasks: &mut JoinSet<()>,
) {
    let stats = &agent.stats;
    match verdict {
        Verdict::Run(instruction) => {
            bump(&stats.ran);
            let (cancel, cancelled) = oneshot::channel();
            agent.running().insert(instruction.id.clone(), cancel);
            log::info!(
                "task {}: accepted, app {} func {} type {} mode {}",
                instruction.id,
                instruction.app,
                instruction.func,
                instruction.task_type,
                instruction.mode
            );
            tasks.spawn(run_task(agent.clone(), instruction, delivery, cancelled));
        }
        Verdict::Expired(instruction) => {
            bump(&stats.expired);
            log::warn!(
                "task {}: expired before it ran (deadline {}, now {})",
                instruction.id,
                instruction.deadline,
                now_unix_ms()
            );
            tasks.spawn(report_expired(agent.clone(), instruction, delivery));
        }
        Verdict::Replayed(task_id) => {
            bump(&stats.replayed);
            log::warn!("task {task_id}: received again, dropped");
            delivery.done().await;
        }
        Verdict::Refused(refusal) => {
            // `handle` settles refusals itself; reaching here is a bug, not a reason to run.
            log::error!("instruction refused late: {refusal}");
            delivery.done().await;
        }
    }
}

/// The delivery an instruction came in: its own, or one shared with the other instructions of
/// an `instructions` message.
enum InstructionDelivery {
    Single(Box<Delivery>),
    Shared(Arc<SharedDelivery>),
}

impl InstructionDelivery {
    fn message(&self) -> &BusMessage {
        match self {
            InstructionDelivery::Single(delivery) => &delivery.message,
            InstructionDelivery::Shared(shared) => &shared.message,
        }
    }

    /// This instruction is settled: its result is safe, or it needs none.
    async fn done(self) {
        match self {
            InstructionDelivery::Single(delivery) => delivery.ack().await,
            InstructionDelivery::Shared(shared) => shared.settle(false).await,
        }
    }

    /// This instruction should come again (it never started before shutdown).
    async fn give_back(self) {
        match self {
            InstructionDelivery::Single(delivery) => delivery.requeue().await,
            InstructionDelivery::Shared(shared) => shared.settle(true).await,
        }
    }
}

/// One message of several instructions: acked once every instruction in it is settled, or
/// requeued then if any of them asked to come again. The ones already done are in the done
/// journal by then, so that the next delivery runs only the others.
struct SharedDelivery {
    message: BusMessage,
    delivery: Mutex<Option<Delivery>>,
    unsettled: std::sync::atomic::AtomicUsize,
    give_back: std::sync::atomic::AtomicBool,
}

impl SharedDelivery {
    fn new(delivery: Delivery, n_instructions: usize) -> Self {
        SharedDelivery {
            message: delivery.message.clone(),
            delivery: Mutex::new(Some(delivery)),
            unsettled: std::sync::atomic::AtomicUsize::new(n_instructions),
            give_back: std::sync::atomic::AtomicBool::new(false),
        }
    }

    async fn settle(&self, give_back: bool) {
        use std::sync::atomic::Ordering;
        if give_back {
            self.give_back.store(true, Ordering::SeqCst);
        }
        if self.unsettled.fetch_sub(1, Ordering::SeqCst) != 1 {
            return;
        }
        let delivery = self
            .delivery
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(delivery) = delivery {
            if self.give_back.load(Ordering::SeqCst) {
                delivery.requeue().await;
            } else {
                delivery.ack().await;
            }
        }
    }
}

async fn refuse(
    stats: &AgentStats,
    message_id: &str,
    kind: &str,
    refusal: Refusal,
    delivery: Delivery,
) {
    match &refusal {
        Refusal::Undecodable(_) => bump(&stats.undecodable),
        // Re-routed instructions are counted with forgeries: both are attempts to run
        // something the center did not send to this agent.
        Refusal::Signature(_) | Refusal::WrongAgent(_) => bump(&stats.refused_signature),
    }
    log::warn!("message {message_id}: {kind} refused: {refusal}");
    delivery.reject().await;
}

fn job_of(instruction: &Instruction) -> WorkerJob {
    WorkerJob {
        task_id: instruction.id.to_string(),
        app: instruction.app.clone(),
        func: instruction.func.clone(),
        param: instruction.param.clone(),
        kind: instruction.task_type.as_str().to_string(),
        mode: instruction.mode.as_str().to_string(),
        timeout: Duration::from_secs(u64::from(instruction.timeout)),
        proxy: instruction.proxy.clone(),
    }
}

/// A result for `instruction` with everything but the outcome filled in.
fn result_of(
    agent_id: &wire::AgentId,
    instruction: &Instruction,
    report: WorkerReport,
) -> JobResult {
    JobResult {
        id: instruction.id.clone(),
        agent: agent_id.clone(),
        task_type: instruction.task_type,
        mode: instruction.mode,
        app: instruction.app.clone(),
        func: instruction.func.clone(),
        worker_flag: report.worker_flag,
        worker_message: report.worker_message,
        worker_costtime: report.costtime_ms,
        started_at: report.started_at,
        finished_at: report.finished_at,
        error: String::new(),
    }
}

/// A result for a task that did not run to its end, with `error` saying why.
fn failed_result(
    agent_id: &wire::AgentId,
    instruction: &Instruction,
    error: &str,
    message: &str,
    started_at: u64,
) -> JobResult {
    let finished_at = now_unix_ms();
    let report = WorkerReport {
        worker_flag: -1,
        worker_message: message.to_string(),
        costtime_ms: finished_at.saturating_sub(started_at),
        started_at,
        finished_at,
    };
    JobResult {
        error: error.to_string(),
        ..result_of(agent_id, instruction, report)
    }
}

/// Where the result of `instruction` goes: the waiting center's reply queue for RT tasks,
/// `center.result` for the others (and for an RT instruction that names no reply queue).
fn outgoing_for(instruction_message: &BusMessage, result: JobResult) -> Outgoing {
    let destination = match (&result.task_type, &instruction_message.reply_to) {
        (TaskType::Rt, Some(reply_to)) if !reply_to.is_empty() => {
            Destination::Queue(reply_to.clone())
        }
        _ => Destination::Topic(routing::CENTER_RESULT.to_string()),
    };
    let correlation_id = instruction_message
        .correlation_id
        .clone()
        .unwrap_or_else(|| result.id.to_string());
    Outgoing {
        destination,
        correlation_id: Some(correlation_id),
        result,
    }
}

/// Runs one accepted instruction and reports its result.
async fn run_task(
    agent: Arc<Agent>,
    instruction: Instruction,
    delivery: InstructionDelivery,
    cancelled: oneshot::Receiver<()>,
) {
    let _running = agent.stats.running_guard();
    let started_at = now_unix_ms();
    let task_id = instruction.id.clone();
    let report = tokio::select! {
        report = agent.runner.run(job_of(&instruction)) => Some(report),
        // Dropping the worker's future kills its process group. A closed channel (the sender
        // dropped without sending) only happens when the agent itself is going away.
        Ok(()) = cancelled => None,
    };
    agent.running().remove(&task_id);
    let agent_id = &agent.config.id;
    let result = match report {
        Some(report) if is_shutdown_refusal(&report) => {
            // It never started: give it back for the next agent start rather than report a
            // failure that only says this process was stopping.
            log::info!("task {task_id}: not started before shutdown, requeued");
            delivery.give_back().await;
            return;
        }
        Some(report) => result_of(agent_id, &instruction, report),
        None => failed_result(
            agent_id,
            &instruction,
            "cancelled",
            "task cancelled by the center",
            started_at,
        ),
    };
    let outgoing = outgoing_for(delivery.message(), result);
    if !deliver(&agent, &outgoing).await {
        // Left unsettled: the broker delivers it again once this agent's channel closes.
        return;
    }
    note_done(&agent, &instruction);
    delivery.done().await;
    if instruction.mode == Mode::P {
        publish_to_processor(&agent, &outgoing.result).await;
    }
}

/// `WorkerRunner::run` reports a job refused because the runner was closed only through its
/// message; nothing ran, so the instruction is requeued.
fn is_shutdown_refusal(report: &WorkerReport) -> bool {
    report.worker_flag == -1
        && report.costtime_ms == 0
        && report.worker_message == WorkerError::ShuttingDown.to_string()
}

async fn report_expired(
    agent: Arc<Agent>,
    instruction: Instruction,
    delivery: InstructionDelivery,
) {
    let result = failed_result(
        &agent.config.id,
        &instruction,
        "expired",
        "instruction expired before it ran",
        now_unix_ms(),
    );
    let outgoing = outgoing_for(delivery.message(), result);
    if deliver(&agent, &outgoing).await {
        delivery.done().await;
    }
}

/// Writes the task into the done journal, so that a later delivery of its instruction (after
/// a restart) is dropped as a replay.
fn note_done(agent: &Agent, instruction: &Instruction) {
    if let Err(err) = agent
        .done
        .record(&instruction.id, instruction.deadline, now_unix_ms())
    {
        log::warn!(
            "task {}: not written to the done journal (a redelivery after a restart would run it again): {err}",
            instruction.id
        );
    }
}

/// Publishes a result, or spools it when the bus will not take it; retries both until one works
/// or shutdown starts. True when the result is safe (published or on disk).
async fn deliver(agent: &Agent, outgoing: &Outgoing) -> bool {
    let task_id = &outgoing.result.id;
    let mut stopping = agent.stopping.clone();
    let mut backoff = DELIVER_FIRST_BACKOFF;
    loop {
        let published = if outgoing.goes_to_center_result() {
            agent.results.publish(outgoing.clone()).await
        } else {
            spool::publish(agent.bus.as_ref(), outgoing).await
        };
        match published {
            Ok(()) => {
                bump(&agent.stats.results_published);
                log::debug!("task {task_id}: result published");
                return true;
            }
            Err(err) => {
                // Unavailable is the usual reason; Unroutable (no center ever declared
                // center.result) and Refused also mean "not now", and no result may be lost.
                log::warn!("task {task_id}: result not published, spooling it: {err}");
                match spool::spool_result(
                    &agent.spool,
                    outgoing.clone(),
                    &agent.spool_wake,
                    &agent.stats,
                )
                .await
                {
                    Ok(path) => {
                        log::info!("task {task_id}: result spooled to {}", path.display());
                        return true;
                    }
                    Err(err) => log::error!("task {task_id}: result not spooled either: {err}"),
                }
            }
        }
        tokio::select! {
            _ = stopping.wait_for(|stopping| *stopping) => {
                log::error!("task {task_id}: result not stored at shutdown; instruction left unacked");
                return false;
            }
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(DELIVER_MAX_BACKOFF);
    }
}

/// P mode: the app's processor gets the result too. Best effort: the center already has it,
/// and a processor that is not running must not hold up the agent.
async fn publish_to_processor(agent: &Agent, result: &JobResult) {
    let app_dir = agent.config.apps_dir.join(&result.app);
    let target = tokio::task::spawn_blocking(move || crate::processor::target_of(&app_dir))
        .await
        .unwrap_or(crate::processor::ProcessorTarget::Bus);
    if let crate::processor::ProcessorTarget::Http { url, timeout } = target {
        match crate::processor::post(&agent.processor_http, &url, timeout, result).await {
            Ok(()) => log::debug!("task {}: result posted to {url}", result.id),
            Err(err) => log::warn!("task {}: result not posted to {url}: {err}", result.id),
        }
        return;
    }
    let destination = Destination::Topic(routing::processor(&result.app));
    let message = BusMessage::msgpack(wire::kind::RESULT, wire::encode(result));
    match agent.bus.publish(&destination, message).await {
        Ok(()) => log::debug!(
            "task {}: result sent to processor.{}",
            result.id,
            result.app
        ),
        Err(BusError::Unroutable(_)) => log::info!(
            "task {}: no processor listening on processor.{}",
            result.id,
            result.app
        ),
        Err(err) => log::warn!(
            "task {}: result not sent to processor.{}: {err}",
            result.id,
            result.app
        ),
    }
}

/// Runs the agent-local crons of `cron_file` until shutdown.
async fn local_cron_loop(agent: Arc<Agent>) {
    let path = agent.config.cron_file.clone();
    let loaded = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || crate::local_cron::load(&path))
            .await
            .unwrap_or_default()
    };
    for error in &loaded.errors {
        log::error!("local cron {}: {error}", path.display());
    }
    if loaded.crons.is_empty() {
        return;
    }
    log::info!(
        "local cron: {} cron(s) from {} ({} disabled)",
        loaded.crons.len(),
        path.display(),
        loaded.disabled
    );
    // `validate` checked the zone.
    let zone = elves_shared::quartz::parse_time_zone(&agent.config.cron_time_zone)
        .unwrap_or(chrono_tz::Tz::UTC);
    let skipped_agent = agent.clone();
    crate::local_cron::run(
        loaded.crons,
        zone,
        agent.stopping.clone(),
        |cron| run_local_cron(agent.clone(), cron),
        move |cron| {
            bump(&skipped_agent.stats.cron_skipped);
            log::warn!(
                "local cron {}: previous run still going, firing skipped",
                cron.id
            );
        },
    )
    .await;
}

/// One firing of a local cron: runs the worker and reports like a center task of type cron
/// (NP: `center.result`; P: also `processor.<app>`).
async fn run_local_cron(agent: Arc<Agent>, cron: crate::local_cron::LocalCron) {
    let task_id = TaskId::random();
    bump(&agent.stats.cron_runs);
    let _running = agent.stats.running_guard();
    log::info!(
        "task {task_id}: local cron {} fired, app {} func {} mode {}",
        cron.id,
        cron.app,
        cron.func,
        cron.mode
    );
    let timeout_s = if cron.timeout_s == 0 {
        agent.config.exec.timeout_s
    } else {
        cron.timeout_s
    };
    let job = WorkerJob {
        task_id: task_id.to_string(),
        app: cron.app.clone(),
        func: cron.func.clone(),
        param: cron.param.clone(),
        kind: TaskType::Cron.as_str().to_string(),
        mode: cron.mode.as_str().to_string(),
        timeout: Duration::from_secs(timeout_s),
        proxy: cron.proxy.clone(),
    };
    let report = agent.runner.run(job).await;
    if is_shutdown_refusal(&report) {
        return;
    }
    if report.worker_flag != 1 {
        bump(&agent.stats.cron_failures);
    }
    log::info!(
        "task {task_id}: local cron {} done, worker_flag {}",
        cron.id,
        report.worker_flag
    );
    let result = JobResult {
        id: task_id.clone(),
        agent: agent.config.id.clone(),
        task_type: TaskType::Cron,
        mode: cron.mode,
        app: cron.app,
        func: cron.func,
        worker_flag: report.worker_flag,
        worker_message: report.worker_message,
        worker_costtime: report.costtime_ms,
        started_at: report.started_at,
        finished_at: report.finished_at,
        error: String::new(),
    };
    let outgoing = Outgoing {
        destination: Destination::Topic(routing::CENTER_RESULT.to_string()),
        correlation_id: Some(task_id.to_string()),
        result,
    };
    if deliver(&agent, &outgoing).await && cron.mode == Mode::P {
        publish_to_processor(&agent, &outgoing.result).await;
    }
}

/// Beats at once, then every `heartbeat_interval_ms`, until shutdown.
async fn heartbeat_loop(agent: Arc<Agent>) {
    let agent_id = agent.config.id.clone();
    let mut stopping = agent.stopping.clone();
    let mut ticker = tokio::time::interval(agent.config.heartbeat_interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_failed = false;
    loop {
        tokio::select! {
            _ = stopping.wait_for(|stopping| *stopping) => return,
            _ = ticker.tick() => {}
            () = agent.beat_now.notified() => {}
        }
        match beat(&agent).await {
            Ok(()) => {
                if last_failed {
                    log::info!("agent {agent_id}: heartbeats go through again");
                }
                last_failed = false;
            }
            // Logged loudly once per outage, not every beat; the next beat retries.
            Err(err) if !last_failed => {
                log::warn!("agent {agent_id}: heartbeat not sent: {err}");
                last_failed = true;
            }
            Err(err) => log::debug!("agent {agent_id}: heartbeat not sent: {err}"),
        }
    }
}

async fn beat(agent: &Agent) -> Result<(), BusError> {
    let apps_dir = agent.config.apps_dir.clone();
    let (apps, packages) = tokio::task::spawn_blocking(move || {
        (
            installed_apps(&apps_dir),
            crate::installer::installed_packages(&apps_dir),
        )
    })
    .await
    .unwrap_or_default();
    let heartbeat = Heartbeat {
        agent: agent.config.id.clone(),
        ip: agent.config.ip(),
        asset: agent.config.asset.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        apps,
        sent_at: now_unix_ms(),
        interval_ms: agent.config.heartbeat_interval_ms,
        packages,
    };
    let mut message = BusMessage::msgpack(wire::kind::HEARTBEAT, wire::encode(&heartbeat));
    message.expiration_ms = Some(
        agent
            .config
            .heartbeat_interval_ms
            .saturating_mul(HEARTBEAT_TTL_INTERVALS),
    );
    let destination = Destination::Topic(routing::CENTER_HEARTBEAT.to_string());
    agent.bus.publish(&destination, message).await
}

/// The apps installed under `apps_dir`: name → the content of `<app>/VERSION`, or "0" when it
/// is missing or not a valid version. Directories whose name is not a valid app name (such as
/// an installer's temporary or backup directories) are not apps.
pub fn installed_apps(apps_dir: &Path) -> BTreeMap<String, String> {
    let mut apps = BTreeMap::new();
    let entries = match std::fs::read_dir(apps_dir) {
        Ok(entries) => entries,
        Err(err) => {
            log::warn!("apps directory {}: {err}", apps_dir.display());
            return apps;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
            continue;
        };
        if !elves_shared::names::is_valid_name(name) || !path.is_dir() {
            continue;
        }
        let version = std::fs::read_to_string(path.join("VERSION"))
            .ok()
            .map(|text| text.trim().to_string())
            .filter(|version| elves_shared::names::is_valid_version(version))
            .unwrap_or_else(|| "0".to_string());
        apps.insert(name.to_string(), version);
    }
    apps
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use elves_shared::bus::{Bus, InProcBus};
    use elves_shared::crypto::InstructionSigner;
    use elves_shared::wire::{AgentId, Cancel};
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::time::Instant;

    const WAIT: Duration = Duration::from_secs(20);

    /// Polls `condition` until it holds, failing the test after `WAIT`.
    async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn write_app(apps_dir: &Path, app: &str, script: &str, version: Option<&str>) {
        let dir = apps_dir.join(app);
        std::fs::create_dir_all(&dir).unwrap();
        let worker = dir.join("app-worker");
        std::fs::write(&worker, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o755)).unwrap();
        if let Some(version) = version {
            std::fs::write(dir.join("VERSION"), format!("{version}\n")).unwrap();
        }
    }

    struct Harness {
        signer: InstructionSigner,
        bus: SharedBus,
        stats: Arc<AgentStats>,
        agent_id: AgentId,
        dir: tempfile::TempDir,
        stop: Option<oneshot::Sender<()>>,
        agent: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    }

    impl Harness {
        /// Starts an agent with two apps: `demo` answers at once, `slow` sleeps.
        async fn start(bus: SharedBus, configure: impl FnOnce(&mut AgentConfig)) -> Harness {
            let dir = tempfile::tempdir().unwrap();
            let apps_dir = dir.path().join("apps");
            write_app(
                &apps_dir,
                "demo",
                "echo '<ElvesWFlag>true</ElvesWFlag><ElvesWResult>hi</ElvesWResult>'",
                Some("1.2"),
            );
            let pid_file = dir.path().join("slow.pid");
            write_app(
                &apps_dir,
                "slow",
                &format!(
                    "echo $$ > {0}.tmp && mv {0}.tmp {0}; exec sleep 1000",
                    pid_file.display()
                ),
                None,
            );
            let signer = InstructionSigner::generate("center");
            let agent_id = AgentId::parse("host-1").unwrap();
            let mut config = AgentConfig::new(agent_id.clone());
            config.apps_dir = apps_dir;
            config.spool_dir = dir.path().join("spool");
            config.center.public_key = signer.public_key_hex();
            config.interpreters = [("sh".to_string(), "/bin/sh".to_string())].into();
            configure(&mut config);
            // The center declares an agent's queue before it sends the first instruction.
            bus.declare(&QueueSpec {
                name: bus.queue_name("agent.host-1"),
                bindings: vec![routing::agent(&agent_id)],
                durable: true,
            })
            .await
            .unwrap();
            let stats = Arc::new(AgentStats::new());
            let (stop, stopped) = oneshot::channel::<()>();
            let agent = tokio::spawn(run(config, bus.clone(), stats.clone(), async move {
                let _ = stopped.await;
            }));
            Harness {
                signer,
                bus,
                stats,
                agent_id,
                dir,
                stop: Some(stop),
                agent: Some(agent),
            }
        }

        fn instruction(&self, id: &str, app: &str, task_type: TaskType) -> Instruction {
            let now = now_unix_ms();
            Instruction {
                id: TaskId::parse(id).unwrap(),
                agent: self.agent_id.clone(),
                task_type,
                mode: Mode::NP,
                app: app.into(),
                func: "hello".into(),
                param: "{}".into(),
                timeout: 30,
                proxy: String::new(),
                issued_at: now,
                deadline: now + 60_000,
            }
        }

        fn signed(&self, kind: &str, body: Vec<u8>) -> BusMessage {
            sign_with(&self.signer, kind, body)
        }

        async fn send(&self, message: BusMessage) {
            let destination = Destination::Topic(routing::agent(&self.agent_id));
            self.bus.publish(&destination, message).await.unwrap();
        }

        async fn consume(&self, suffix: &str, key: &str) -> Consumer {
            let spec = QueueSpec {
                name: self.bus.queue_name(suffix),
                bindings: vec![key.to_string()],
                durable: true,
            };
            self.bus.consume(spec, 16).await.unwrap()
        }

        /// Stops the agent and checks that it returns cleanly within a bound.
        async fn stop(mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            if let Some(agent) = self.agent.take() {
                let res = tokio::time::timeout(WAIT, agent).await;
                res.expect("agent stopped in time")
                    .expect("agent task joined")
                    .expect("agent returned ok");
            }
        }
    }

    fn sign_with(signer: &InstructionSigner, kind: &str, body: Vec<u8>) -> BusMessage {
        let mut message = BusMessage::msgpack(kind, body);
        message.sig = Some(signer.sign(&message.body));
        message.key_id = Some(signer.key_id().to_string());
        message
    }

    async fn next_result(consumer: &mut Consumer) -> (BusMessage, JobResult) {
        let delivery = tokio::time::timeout(WAIT, consumer.next())
            .await
            .expect("a result in time")
            .expect("the bus is open");
        let message = delivery.message.clone();
        delivery.ack().await;
        assert_eq!(message.kind, wire::kind::RESULT);
        let result = wire::decode(&message.body).unwrap();
        (message, result)
    }

    fn inproc() -> SharedBus {
        Arc::new(InProcBus::new(&format!("test-{}", TaskId::random())))
    }

    /// The results in a `center.result` message, alone or packed.
    async fn next_results(consumer: &mut Consumer) -> Vec<JobResult> {
        let delivery = tokio::time::timeout(WAIT, consumer.next())
            .await
            .expect("a result in time")
            .expect("the bus is open");
        let message = delivery.message.clone();
        delivery.ack().await;
        match message.kind.as_str() {
            wire::kind::RESULT => vec![wire::decode(&message.body).unwrap()],
            wire::kind::RESULTS => {
                wire::decode::<wire::ResultBatch>(&message.body)
                    .unwrap()
                    .results
            }
            other => panic!("not a result message: {other}"),
        }
    }

    fn batch_message(harness: &Harness, instructions: &[Instruction]) -> BusMessage {
        let body = wire::encode(&wire::InstructionBatch {
            instructions: instructions.to_vec(),
        });
        harness.signed(wire::kind::INSTRUCTIONS, body)
    }

    #[tokio::test]
    async fn every_instruction_of_a_signed_batch_gets_its_own_verdict_and_result() {
        let harness = Harness::start(inproc(), |_| {}).await;
        let mut results = harness
            .consume("center.result", routing::CENTER_RESULT)
            .await;
        let earlier = harness.instruction("0000000000000001", "demo", TaskType::Queue);
        harness
            .send(harness.signed(wire::kind::INSTRUCTION, wire::encode(&earlier)))
            .await;
        assert_eq!(next_results(&mut results).await[0].id, earlier.id);

        let fresh = ["0000000000000002", "0000000000000003"]
            .map(|id| harness.instruction(id, "demo", TaskType::Queue));
        let mut late = harness.instruction("0000000000000004", "demo", TaskType::Queue);
        late.deadline = late.issued_at - 1;
        let batch = [
            earlier.clone(),
            fresh[0].clone(),
            late.clone(),
            fresh[1].clone(),
        ];
        harness.send(batch_message(&harness, &batch)).await;
        let mut got = Vec::new();
        while got.len() < 3 {
            got.extend(next_results(&mut results).await);
        }
        got.sort_by(|a, b| a.id.cmp(&b.id));
        let ids: Vec<&TaskId> = got.iter().map(|result| &result.id).collect();
        assert_eq!(ids, [&fresh[0].id, &fresh[1].id, &late.id]);
        assert_eq!(
            (got[0].worker_flag, got[0].worker_message.as_str()),
            (1, "hi")
        );
        assert_eq!(
            (got[1].worker_flag, got[1].worker_message.as_str()),
            (1, "hi")
        );
        assert_eq!(got[2].error, "expired");
        let stats = harness.stats.snapshot();
        assert_eq!((stats.ran, stats.replayed, stats.expired), (3, 1, 1));

        // A batch with one instruction for another host is refused whole: nothing runs.
        let mut stray = harness.instruction("0000000000000006", "demo", TaskType::Queue);
        stray.agent = AgentId::parse("host-2").unwrap();
        let ours = harness.instruction("0000000000000005", "demo", TaskType::Queue);
        harness.send(batch_message(&harness, &[ours, stray])).await;
        let stats = harness.stats.clone();
        wait_until("the re-routed batch to be refused", || {
            stats.snapshot().refused_signature == 1
        })
        .await;
        assert_eq!(stats.snapshot().ran, 3);
        assert!(
            results.try_next().is_none(),
            "no result for a refused batch"
        );
        harness.stop().await;
    }

    #[tokio::test]
    async fn a_task_finished_before_a_restart_does_not_run_again_when_its_instruction_returns() {
        let bus = inproc();
        let spool = tempfile::tempdir().unwrap();
        let spool_dir = spool.path().to_path_buf();
        let harness = Harness::start(bus.clone(), |config| {
            config.spool_dir = spool_dir.clone();
        })
        .await;
        let mut results = harness
            .consume("center.result", routing::CENTER_RESULT)
            .await;
        let done = harness.instruction("0000000000000001", "demo", TaskType::Queue);
        let message = harness.signed(wire::kind::INSTRUCTION, wire::encode(&done));
        harness.send(message.clone()).await;
        assert_eq!(next_results(&mut results).await[0].id, done.id);
        let center_key = harness.signer.public_key_hex();
        harness.stop().await;

        let restarted = Harness::start(bus.clone(), |config| {
            config.spool_dir = spool_dir.clone();
            config.center.public_key = center_key;
        })
        .await;
        let not_done = harness_instruction(&restarted, "0000000000000002");
        let second = sign_with(
            &restarted.signer,
            wire::kind::INSTRUCTION,
            wire::encode(&not_done),
        );
        restarted.send(message).await;
        let stats = restarted.stats.clone();
        wait_until("the returning instruction to be dropped", || {
            stats.snapshot().replayed == 1
        })
        .await;
        assert_eq!(stats.snapshot().ran, 0);
        // The restarted agent trusts the first signer only: the second instruction is refused,
        // which shows the key override took effect rather than a fresh agent ignoring all.
        restarted.send(second).await;
        wait_until("the other signer to be refused", || {
            stats.snapshot().refused_signature == 1
        })
        .await;
        assert!(results.try_next().is_none(), "nothing ran twice");
        restarted.stop().await;
    }

    fn harness_instruction(harness: &Harness, id: &str) -> Instruction {
        harness.instruction(id, "demo", TaskType::Queue)
    }

    #[tokio::test]
    async fn signed_instructions_run_and_forged_garbage_and_late_ones_do_not() {
        let harness = Harness::start(inproc(), |_| {}).await;
        let mut results = harness
            .consume("center.result", routing::CENTER_RESULT)
            .await;

        let first = harness.instruction("0000000000000001", "demo", TaskType::Queue);
        let first_message = harness.signed(wire::kind::INSTRUCTION, wire::encode(&first));
        harness.send(first_message.clone()).await;
        let (message, result) = next_result(&mut results).await;
        assert_eq!(result.id, first.id);
        assert_eq!(result.agent, harness.agent_id);
        assert_eq!(result.task_type, TaskType::Queue);
        assert_eq!(result.worker_flag, 1, "{result:?}");
        assert_eq!(result.worker_message, "hi");
        assert_eq!(result.error, "");
        assert!(result.started_at <= result.finished_at);
        assert_eq!(message.correlation_id.as_deref(), Some("0000000000000001"));

        let forger = InstructionSigner::generate("center");
        let forged = harness.instruction("0000000000000002", "demo", TaskType::Queue);
        harness
            .send(sign_with(
                &forger,
                wire::kind::INSTRUCTION,
                wire::encode(&forged),
            ))
            .await;
        let stats = harness.stats.clone();
        wait_until("the forgery to be refused", || {
            stats.snapshot().refused_signature == 1
        })
        .await;

        harness
            .send(harness.signed(wire::kind::INSTRUCTION, b"\xff\x00garbage".to_vec()))
            .await;
        harness
            .send(BusMessage::msgpack("launch_missiles", b"\x01\x02".to_vec()))
            .await;
        wait_until("garbage to be counted", || {
            stats.snapshot().undecodable == 2
        })
        .await;

        let mut late = harness.instruction("0000000000000003", "demo", TaskType::Queue);
        late.deadline = now_unix_ms() - 1_000;
        harness
            .send(harness.signed(wire::kind::INSTRUCTION, wire::encode(&late)))
            .await;
        // Results arrive in order, so the forged instruction would have shown up here.
        let (_, result) = next_result(&mut results).await;
        assert_eq!(result.id, late.id);
        assert_eq!(result.error, "expired");
        assert_eq!(result.worker_flag, -1);
        assert_eq!(result.worker_message, "instruction expired before it ran");

        harness.send(first_message).await;
        wait_until("the replay to be dropped", || {
            stats.snapshot().replayed == 1
        })
        .await;

        let second = harness.instruction("0000000000000004", "demo", TaskType::Cron);
        harness
            .send(harness.signed(wire::kind::INSTRUCTION, wire::encode(&second)))
            .await;
        let (_, result) = next_result(&mut results).await;
        assert_eq!(result.id, second.id);
        assert_eq!(result.worker_flag, 1);

        let snapshot = stats.snapshot();
        assert_eq!(snapshot.received, 7);
        assert_eq!(snapshot.ran, 2);
        assert_eq!(snapshot.expired, 1);
        assert_eq!(snapshot.refused_signature, 1);
        assert_eq!(snapshot.undecodable, 2);
        assert_eq!(snapshot.replayed, 1);
        assert_eq!(snapshot.results_published, 3);
        assert_eq!(snapshot.results_spooled, 0);
        harness.stop().await;
    }

    #[tokio::test]
    async fn rt_results_answer_the_reply_queue_and_p_mode_reaches_the_processor() {
        let harness = Harness::start(inproc(), |_| {}).await;
        let reply_queue = harness.bus.queue_name("reply.center-a");
        let mut replies = harness
            .bus
            .consume(
                QueueSpec {
                    name: reply_queue.clone(),
                    bindings: Vec::new(),
                    durable: false,
                },
                4,
            )
            .await
            .unwrap();
        let mut processor = harness
            .consume("processor.demo", &routing::processor("demo"))
            .await;

        let mut rt = harness.instruction("00000000000000a1", "demo", TaskType::Rt);
        rt.mode = Mode::P;
        let mut message = harness.signed(wire::kind::INSTRUCTION, wire::encode(&rt));
        message.reply_to = Some(reply_queue);
        message.correlation_id = Some("call-7".into());
        harness.send(message).await;

        let (reply, result) = next_result(&mut replies).await;
        assert_eq!(reply.correlation_id.as_deref(), Some("call-7"));
        assert_eq!(result.id, rt.id);
        assert_eq!(result.task_type, TaskType::Rt);
        assert_eq!(result.worker_flag, 1);
        let (_, processed) = next_result(&mut processor).await;
        assert_eq!(processed, result);
        harness.stop().await;
    }

    #[tokio::test]
    async fn a_signed_cancel_kills_the_running_worker_and_a_forged_one_does_not() {
        let harness = Harness::start(inproc(), |_| {}).await;
        let mut results = harness
            .consume("center.result", routing::CENTER_RESULT)
            .await;
        let slow = harness.instruction("00000000000000b1", "slow", TaskType::Queue);
        harness
            .send(harness.signed(wire::kind::INSTRUCTION, wire::encode(&slow)))
            .await;
        let pid_file = harness.dir.path().join("slow.pid");
        wait_until("the slow worker to start", || pid_file.exists()).await;

        let cancel = wire::encode(&Cancel {
            id: slow.id.clone(),
        });
        let forger = InstructionSigner::generate("center");
        harness
            .send(sign_with(&forger, wire::kind::CANCEL, cancel.clone()))
            .await;
        let stats = harness.stats.clone();
        wait_until("the forged cancel to be refused", || {
            stats.snapshot().refused_signature == 1
        })
        .await;
        assert_eq!(stats.snapshot().running, 1);

        harness
            .send(harness.signed(wire::kind::CANCEL, cancel))
            .await;
        let (_, result) = next_result(&mut results).await;
        assert_eq!(result.id, slow.id);
        assert_eq!(result.error, "cancelled");
        assert_eq!(result.worker_flag, -1);
        wait_until("the gauge to come down", || stats.snapshot().running == 0).await;
        harness.stop().await;
    }

    #[tokio::test]
    async fn heartbeats_report_the_installed_apps() {
        let bus = inproc();
        let mut heartbeats = bus
            .consume(
                QueueSpec {
                    name: bus.queue_name("center.heartbeat"),
                    bindings: vec![routing::CENTER_HEARTBEAT.into()],
                    durable: true,
                },
                4,
            )
            .await
            .unwrap();
        let harness = Harness::start(bus, |config| {
            config.heartbeat_interval_ms = 100;
            config.asset = "rack-7".into();
        })
        .await;
        for _ in 0..2 {
            let delivery = tokio::time::timeout(WAIT, heartbeats.next())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(delivery.message.kind, wire::kind::HEARTBEAT);
            let heartbeat: Heartbeat = wire::decode(&delivery.message.body).unwrap();
            delivery.ack().await;
            assert_eq!(heartbeat.agent, harness.agent_id);
            assert_eq!(heartbeat.ip, "host-1");
            assert_eq!(heartbeat.asset, "rack-7");
            assert_eq!(heartbeat.version, env!("CARGO_PKG_VERSION"));
            assert_eq!(heartbeat.interval_ms, 100);
            let expected: BTreeMap<String, String> = [
                ("demo".to_string(), "1.2".to_string()),
                ("slow".to_string(), "0".to_string()),
            ]
            .into();
            assert_eq!(heartbeat.apps, expected);
        }
        harness.stop().await;
    }

    #[tokio::test]
    async fn a_result_nobody_can_take_yet_is_spooled_and_sent_later() {
        let harness = Harness::start(inproc(), |_| {}).await;
        let task = harness.instruction("00000000000000c1", "demo", TaskType::Queue);
        harness
            .send(harness.signed(wire::kind::INSTRUCTION, wire::encode(&task)))
            .await;
        let stats = harness.stats.clone();
        wait_until("the result to be spooled", || {
            stats.snapshot().results_spooled == 1
        })
        .await;
        let spool_dir = harness.dir.path().join("spool");
        let spooled_results = |dir: &Path| {
            std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "result"))
                        .count()
                })
                .unwrap_or(1)
        };
        assert_eq!(spooled_results(&spool_dir), 1);

        // A center appears and binds center.result: the flusher's next attempt gets through.
        let mut results = harness
            .consume("center.result", routing::CENTER_RESULT)
            .await;
        let (_, result) = next_result(&mut results).await;
        assert_eq!(result.id, task.id);
        assert_eq!(result.worker_flag, 1);
        wait_until("the spool file to be removed", || {
            spooled_results(&spool_dir) == 0
        })
        .await;
        assert_eq!(stats.snapshot().results_published, 1);
        harness.stop().await;
    }

    /// The in-process bus, except that the first `n_failures` consumes fail as if the broker
    /// were down.
    struct LateBroker {
        inner: InProcBus,
        n_failures: usize,
        n_attempts: AtomicUsize,
    }

    #[async_trait]
    impl Bus for LateBroker {
        fn namespace(&self) -> &str {
            self.inner.namespace()
        }

        async fn declare(&self, spec: &QueueSpec) -> Result<(), BusError> {
            self.inner.declare(spec).await
        }

        async fn publish(
            &self,
            destination: &Destination,
            message: BusMessage,
        ) -> Result<(), BusError> {
            self.inner.publish(destination, message).await
        }

        async fn consume(&self, spec: QueueSpec, prefetch: u16) -> Result<Consumer, BusError> {
            let attempt = self.n_attempts.fetch_add(1, Ordering::SeqCst);
            if attempt < self.n_failures && spec.name.contains(".agent.") {
                return Err(BusError::Unavailable("connection refused".into()));
            }
            self.inner.consume(spec, prefetch).await
        }
    }

    #[tokio::test]
    async fn the_agent_waits_for_a_broker_that_is_down_at_start() {
        let bus = Arc::new(LateBroker {
            inner: InProcBus::new("late"),
            n_failures: 2,
            n_attempts: AtomicUsize::new(0),
        });
        let harness = Harness::start(bus.clone(), |_| {}).await;
        let mut results = harness
            .consume("center.result", routing::CENTER_RESULT)
            .await;
        let task = harness.instruction("00000000000000d1", "demo", TaskType::Queue);
        harness
            .send(harness.signed(wire::kind::INSTRUCTION, wire::encode(&task)))
            .await;
        let (_, result) = next_result(&mut results).await;
        assert_eq!(result.worker_flag, 1);
        assert!(bus.n_attempts.load(Ordering::SeqCst) >= 3);
        harness.stop().await;
    }

    #[tokio::test]
    async fn a_config_without_the_center_key_does_not_start() {
        let config = AgentConfig::new(AgentId::parse("host-1").unwrap());
        let err = run(config, inproc(), Arc::new(AgentStats::new()), async {})
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("center.public_key"), "{err:#}");
    }

    #[test]
    fn installed_apps_reads_versions_and_skips_non_apps() {
        let dir = tempfile::tempdir().unwrap();
        write_app(dir.path(), "alpha", "true", Some("2.0.1"));
        write_app(dir.path(), "beta", "true", None);
        write_app(dir.path(), "gamma", "true", Some("not a version!"));
        std::fs::create_dir_all(dir.path().join(".alpha.tmp-123")).unwrap();
        std::fs::write(dir.path().join("stray-file"), b"x").unwrap();
        let apps = installed_apps(dir.path());
        let expected: BTreeMap<String, String> = [
            ("alpha".to_string(), "2.0.1".to_string()),
            ("beta".to_string(), "0".to_string()),
            ("gamma".to_string(), "0".to_string()),
        ]
        .into();
        assert_eq!(apps, expected);
        assert!(installed_apps(&PathBuf::from("/nonexistent/apps")).is_empty());
    }

    #[test]
    fn rt_without_reply_to_falls_back_to_center_result() {
        let instruction = Instruction {
            id: TaskId::parse("00000000000000e1").unwrap(),
            agent: AgentId::parse("host-1").unwrap(),
            task_type: TaskType::Rt,
            mode: Mode::NP,
            app: "demo".into(),
            func: "f".into(),
            param: String::new(),
            timeout: 0,
            proxy: String::new(),
            issued_at: 0,
            deadline: 0,
        };
        let result = failed_result(&instruction.agent, &instruction, "expired", "late", 5);
        let outgoing = outgoing_for(&BusMessage::default(), result);
        assert_eq!(
            outgoing.destination,
            Destination::Topic(routing::CENTER_RESULT.into())
        );
        assert_eq!(outgoing.correlation_id.as_deref(), Some("00000000000000e1"));
        assert_eq!(job_of(&instruction).timeout, Duration::ZERO);
        assert_eq!(job_of(&instruction).kind, "rt");
    }
}
