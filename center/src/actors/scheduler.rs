//! Scheduler: turns a task into a signed instruction on `agent.<id>` and, for instant (RT) tasks,
//! hands the caller the result that comes back on this center's private reply queue.
//! It does not decide whether the agent is reachable (Heartbeat does) nor store anything.

use crate::config::RtConfig;
use crate::metrics::{Metrics, TaskOutcome};
use crate::store::blocking::blocking;
use crate::store::{Dispatch, NewTask, Store};
use actix::prelude::*;
use elves_shared::bus::{BusError, BusMessage, Destination, SharedBus};
use elves_shared::crypto::InstructionSigner;
use elves_shared::time::now_unix_ms;
use elves_shared::wire::{
    self, kind, routing, AgentId, Instruction, JobResult, Mode, TaskId, TaskType,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Run `app.func` on `agent` now and answer with its result.
#[derive(Message)]
#[rtype(result = "Result<JobResult, DispatchError>")]
pub struct RunInstant {
    pub agent: AgentId,
    pub app: String,
    pub func: String,
    pub param: String,
    pub timeout_s: u32,
    pub proxy: String,
    pub mode: Mode,
}

/// A result arrived on the reply queue.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReplyReceived(pub JobResult);

/// Nobody waits for this task any more (its caller gave up or the publish failed).
#[derive(Message)]
#[rtype(result = "()")]
struct ForgetWaiter(TaskId);

#[derive(Message)]
#[rtype(result = "SchedulerState")]
pub struct GetState;

#[derive(Debug, Clone, MessageResponse, serde::Serialize)]
pub struct SchedulerState {
    pub waiting_rt: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("agent {0} has no queue on the bus")]
    Unroutable(AgentId),
    #[error("bus: {0}")]
    Bus(String),
    #[error("no result from agent {agent} within {waited_s} s")]
    NoResult { agent: AgentId, waited_s: u64 },
    #[error("store: {0}")]
    Store(String),
    #[error("scheduler restarted while the task was running")]
    Interrupted,
}

pub struct Scheduler {
    bus: SharedBus,
    signer: Arc<InstructionSigner>,
    reply_queue: String,
    rt: RtConfig,
    metrics: Arc<Metrics>,
    store: Store,
    instance: String,
    waiters: HashMap<TaskId, oneshot::Sender<JobResult>>,
}

impl Scheduler {
    pub fn new(
        bus: SharedBus,
        signer: Arc<InstructionSigner>,
        reply_queue: String,
        rt: RtConfig,
        metrics: Arc<Metrics>,
        store: Store,
        instance: String,
    ) -> Self {
        Scheduler {
            bus,
            signer,
            reply_queue,
            rt,
            metrics,
            store,
            instance,
            waiters: HashMap::new(),
        }
    }
}

impl Actor for Scheduler {
    type Context = Context<Self>;
}

impl Supervised for Scheduler {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // Dropping the senders wakes every waiting caller with `Interrupted`.
        log::warn!(
            "scheduler: restarting, {} rt callers interrupted",
            self.waiters.len()
        );
        self.waiters.clear();
    }
}

impl Handler<RunInstant> for Scheduler {
    type Result = ResponseFuture<Result<JobResult, DispatchError>>;

    fn handle(&mut self, msg: RunInstant, ctx: &mut Context<Self>) -> Self::Result {
        let now = now_unix_ms();
        let instruction = Instruction {
            id: TaskId::random(),
            agent: msg.agent,
            task_type: TaskType::Rt,
            mode: msg.mode,
            app: msg.app,
            func: msg.func,
            param: msg.param,
            timeout: msg.timeout_s,
            proxy: msg.proxy,
            issued_at: now,
            deadline: deadline(now, msg.timeout_s, &self.rt),
        };
        let (sender, receiver) = oneshot::channel();
        self.waiters.insert(instruction.id.clone(), sender);
        let message = rt_message(&self.signer, &instruction, &self.reply_queue);
        let bus = self.bus.clone();
        let metrics = self.metrics.clone();
        let scheduler = ctx.address();
        let store = self.store.clone();
        let stored_task = NewTask {
            id: instruction.id.clone(),
            queue_id: None,
            task_type: TaskType::Rt,
            agent: instruction.agent.clone(),
            app: instruction.app.clone(),
            func: instruction.func.clone(),
            param: instruction.param.clone(),
            timeout_s: instruction.timeout,
            proxy: instruction.proxy.clone(),
            mode: instruction.mode,
            depend_task_id: None,
            created_at: now,
        };
        let dispatch = Dispatch {
            center_instance: self.instance.clone(),
            dispatched_at: now,
            deadline: instruction.deadline,
        };
        // Wait a little past the deadline so that a result sent at the last moment still lands.
        let wait = Duration::from_millis(instruction.deadline.saturating_sub(now) + 2_000);
        Box::pin(async move {
            let id = instruction.id.clone();
            let agent = instruction.agent.clone();
            // Stored before it is sent, so that the task history has every rt call and a result
            // always finds its row.
            if let Err(err) = blocking(move || store.insert_task(&stored_task, &dispatch)).await {
                scheduler.do_send(ForgetWaiter(id.clone()));
                return Err(DispatchError::Store(err.to_string()));
            }
            let destination = Destination::Topic(routing::agent(&agent));
            if let Err(err) = bus.publish(&destination, message).await {
                scheduler.do_send(ForgetWaiter(id.clone()));
                metrics.record_task(TaskOutcome::Rejected);
                return Err(match err {
                    BusError::Unroutable(_) => DispatchError::Unroutable(agent),
                    other => DispatchError::Bus(other.to_string()),
                });
            }
            log::debug!("task {id}: rt sent to {agent}");
            match tokio::time::timeout(wait, receiver).await {
                Ok(Ok(result)) => Ok(result),
                Ok(Err(_)) => Err(DispatchError::Interrupted),
                Err(_) => {
                    scheduler.do_send(ForgetWaiter(id.clone()));
                    metrics.record_task(TaskOutcome::Lost);
                    log::warn!("task {id}: no result from {agent}");
                    Err(DispatchError::NoResult {
                        agent,
                        waited_s: wait.as_secs(),
                    })
                }
            }
        })
    }
}

impl Handler<ReplyReceived> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: ReplyReceived, _: &mut Context<Self>) {
        let result = msg.0;
        let outcome = if result.error.is_empty() {
            TaskOutcome::from_worker_flag(result.worker_flag)
        } else {
            TaskOutcome::Rejected
        };
        let store = self.store.clone();
        let to_store = result.clone();
        actix_rt::spawn(async move {
            let id = to_store.id.clone();
            let now = now_unix_ms();
            if let Err(err) = blocking(move || store.record_result(&to_store, now)).await {
                log::error!("task {id}: rt result not stored: {err}");
            }
        });
        match self.waiters.remove(&result.id) {
            Some(waiter) => {
                self.metrics.record_task(outcome);
                // The caller may have gone (HTTP client disconnected); nothing else to do then.
                let _ = waiter.send(result);
            }
            None => log::info!("task {}: late or duplicate rt result dropped", result.id),
        }
    }
}

impl Handler<ForgetWaiter> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: ForgetWaiter, _: &mut Context<Self>) {
        self.waiters.remove(&msg.0);
    }
}

impl Handler<GetState> for Scheduler {
    type Result = SchedulerState;

    fn handle(&mut self, _: GetState, _: &mut Context<Self>) -> SchedulerState {
        SchedulerState {
            waiting_rt: self.waiters.len(),
        }
    }
}

/// `issued_at + timeout + kill grace + dispatch allowance` (SPEC §11 "Finer points").
pub fn deadline(issued_at: u64, timeout_s: u32, rt: &RtConfig) -> u64 {
    let seconds =
        u64::from(timeout_s) + u64::from(rt.kill_grace_s) + u64::from(rt.dispatch_allowance_s);
    issued_at + seconds * 1000
}

/// Encodes and signs an instruction; the signature covers the exact body bytes.
pub fn signed_message(
    signer: &InstructionSigner,
    instruction: &Instruction,
    reply_to: Option<&str>,
) -> BusMessage {
    let body = wire::encode(instruction);
    let mut message = BusMessage::msgpack(kind::INSTRUCTION, body);
    message.sig = Some(signer.sign(&message.body));
    message.key_id = Some(signer.key_id().to_string());
    message.message_id = Some(instruction.id.to_string());
    message.correlation_id = Some(instruction.id.to_string());
    message.reply_to = reply_to.map(str::to_string);
    // The broker drops what nobody consumed before the deadline; the agent checks it too.
    message.expiration_ms = Some(instruction.deadline.saturating_sub(instruction.issued_at));
    message
}

/// The message of an RT instruction: signed, answered on `reply_queue`, and transient.
///
/// The caller's wait and the center's reply queue both end with a broker restart, so an RT
/// instruction kept on the broker's disk would only run later with nobody waiting for its
/// result; kept in memory, it also spares the broker a disk write on the caller's clock.
/// Queue and cron instructions stay persistent: they must survive the restart.
pub fn rt_message(
    signer: &InstructionSigner,
    instruction: &Instruction,
    reply_queue: &str,
) -> BusMessage {
    let mut message = signed_message(signer, instruction, Some(reply_queue));
    message.transient = true;
    message
}

/// One `instructions` message for several instructions to the same agent, signed once.
pub fn signed_batch_message(
    signer: &InstructionSigner,
    instructions: Vec<Instruction>,
) -> BusMessage {
    let now = now_unix_ms();
    // The broker may drop the message only once every instruction in it has expired.
    let last_deadline = instructions
        .iter()
        .map(|instruction| instruction.deadline)
        .max()
        .unwrap_or(now);
    let body = wire::encode(&wire::InstructionBatch { instructions });
    let mut message = BusMessage::msgpack(kind::INSTRUCTIONS, body);
    message.sig = Some(signer.sign(&message.body));
    message.key_id = Some(signer.key_id().to_string());
    message.expiration_ms = Some(last_deadline.saturating_sub(now).max(1));
    message
}

/// The result of a task whose instruction could not be sent: it fails at once with 410.1, so
/// that its dependents and its cron see the failure now rather than at its deadline.
pub fn undelivered(instruction: &Instruction, err: &dyn std::fmt::Display) -> JobResult {
    let now = now_unix_ms();
    JobResult {
        id: instruction.id.clone(),
        agent: instruction.agent.clone(),
        task_type: instruction.task_type,
        mode: instruction.mode,
        app: instruction.app.clone(),
        func: instruction.func.clone(),
        worker_flag: -1,
        worker_message: String::new(),
        worker_costtime: 0,
        started_at: now,
        finished_at: now,
        error: format!(
            "[410.1]could not send the job to agent {}: {err}",
            instruction.agent
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_adds_timeout_grace_and_allowance() {
        let rt = RtConfig {
            default_timeout_s: 90,
            kill_grace_s: 5,
            dispatch_allowance_s: 60,
        };
        assert_eq!(deadline(1_000, 10, &rt), 1_000 + 75_000);
    }

    fn instruction() -> Instruction {
        Instruction {
            id: TaskId::random(),
            agent: AgentId::parse("a").unwrap(),
            task_type: TaskType::Rt,
            mode: Mode::NP,
            app: "x".into(),
            func: "y".into(),
            param: String::new(),
            timeout: 1,
            proxy: String::new(),
            issued_at: 10,
            deadline: 20,
        }
    }

    #[test]
    fn signed_message_verifies() {
        let signer = InstructionSigner::generate("center");
        let instruction = instruction();
        let message = signed_message(&signer, &instruction, Some("reply"));
        let mut verifier = elves_shared::crypto::InstructionVerifier::new();
        verifier
            .add_public_key_hex("center", &signer.public_key_hex())
            .unwrap();
        verifier
            .verify(
                &message.body,
                message.key_id.as_deref(),
                message.sig.as_deref(),
            )
            .unwrap();
        assert_eq!(message.expiration_ms, Some(10));
        assert_eq!(message.reply_to.as_deref(), Some("reply"));
        assert!(
            !message.transient,
            "queue and cron instructions must outlive the broker"
        );
    }

    #[test]
    fn rt_messages_are_transient_and_answered_on_the_reply_queue() {
        let signer = InstructionSigner::generate("center");
        let instruction = instruction();
        let message = rt_message(&signer, &instruction, "center.reply");
        assert!(message.transient);
        // Otherwise the very message a queue or cron instruction would be.
        let persistent = signed_message(&signer, &instruction, Some("center.reply"));
        let same_but_persistent = BusMessage {
            transient: false,
            timestamp_ms: persistent.timestamp_ms,
            ..message
        };
        assert_eq!(same_but_persistent, persistent);
    }
}
