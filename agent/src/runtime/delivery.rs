//! Delivery of instructions: consuming the agent's queue, passing every message through the
//! guard, running the accepted instructions and settling each message.
//!
//! Ack rules: an instruction is acked only after its result was published or spooled; a message
//! that is refused (bad signature, undecodable, unknown kind) is rejected without requeue; a
//! replayed instruction is acked and dropped. A result that can be neither published nor spooled
//! is retried; at shutdown its instruction is left unacked so that the broker delivers it again.
//! An `instructions` message (several tasks) is acked once every task in it is settled, or
//! requeued then if one of them never started before shutdown.

use super::results::{deliver, failed_result, outgoing_for, publish_to_processor, result_of};
use super::Agent;
use crate::guard::{InstructionGuard, Refusal, Verdict};
use crate::stats::{bump, AgentStats};
use crate::worker::WorkerJob;
use elves_shared::bus::{BusMessage, Consumer, Delivery, QueueSpec};
use elves_shared::time::now_unix_ms;
use elves_shared::wire::{self, Instruction, Mode};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

const CONSUME_FIRST_BACKOFF: Duration = Duration::from_millis(100);
const CONSUME_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The agent's queue: durable, so that instructions wait for an agent that is restarting.
/// Starts consuming, retrying with backoff while the broker is down; `None` on shutdown.
pub(super) async fn open_consumer<S>(
    agent: &Agent,
    shutdown: &mut std::pin::Pin<&mut S>,
) -> Option<Consumer>
where
    S: Future<Output = ()>,
{
    let spec = QueueSpec::agent(agent.bus.as_ref(), &agent.config.id);
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
            () = tokio::time::sleep(elves_shared::bus::jittered(backoff)) => {}
        }
        backoff = (backoff * 2).min(CONSUME_MAX_BACKOFF);
    }
}

/// Settles one delivery, starting a task for the work that takes time.
pub(super) async fn handle(
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
        Verdict::Run(instruction) if agent.take_interrupted(&instruction.id) => {
            log::warn!(
                "task {}: was running when this agent stopped; reported lost, not run again",
                instruction.id
            );
            tasks.spawn(report_lost(agent.clone(), instruction, delivery));
        }
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

pub(super) fn job_of(instruction: &Instruction) -> WorkerJob {
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
    // On record before the worker exists: if this agent dies while it runs, the next start
    // knows the task may have done its work and does not run it again.
    let record_start = || {
        agent
            .done
            .record_started(&instruction.id, instruction.deadline, now_unix_ms())
            .map_err(|err| err.to_string())
    };
    let report = tokio::select! {
        report = agent.runner.run_recorded(job_of(&instruction), record_start) => Some(report),
        // Dropping the worker's future kills its process group. A closed channel (the sender
        // dropped without sending) only happens when the agent itself is going away.
        Ok(()) = cancelled => None,
    };
    agent.running().remove(&task_id);
    let agent_id = &agent.config.id;
    let result = match report {
        Some(report) if report.is_shutdown_refusal() => {
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

/// The result of a task whose worker was running when this agent stopped (killed, crashed,
/// or stopped past its shutdown grace): it may have done some or all of its work, and only
/// a human can tell whether running it again is safe.
pub(super) const LOST_MESSAGE: &str = "agent stopped while the task was running; it was not run again (its work may be partly or wholly done)";

async fn report_lost(agent: Arc<Agent>, instruction: Instruction, delivery: InstructionDelivery) {
    bump(&agent.stats.lost);
    let result = failed_result(
        &agent.config.id,
        &instruction,
        "lost",
        LOST_MESSAGE,
        now_unix_ms(),
    );
    let outgoing = outgoing_for(delivery.message(), result);
    if deliver(&agent, &outgoing).await {
        note_done(&agent, &instruction);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::testing::*;
    use async_trait::async_trait;
    use elves_shared::bus::{Bus, BusError, Destination, InProcBus};
    use elves_shared::crypto::InstructionSigner;
    use elves_shared::wire::{routing, AgentId, Cancel, TaskId, TaskType};
    use std::sync::atomic::{AtomicUsize, Ordering};

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
}
