//! Scheduler: turns a task into a signed instruction on `agent.<id>` and, for instant (RT) tasks,
//! hands the caller the result that comes back on this center's private reply queue.
//! It does not decide whether the agent is reachable (Heartbeat does) nor store anything.

use crate::config::RtConfig;
use crate::dispatch;
use crate::metrics::{Metrics, TaskOutcome};
use crate::store::blocking::blocking;
use crate::store::{Dispatch, NewTask, Store};
use actix::prelude::*;
use elves_shared::bus::{BusError, SharedBus};
use elves_shared::crypto::InstructionSigner;
use elves_shared::time::now_unix_ms;
use elves_shared::wire::{AgentId, JobResult, Mode, TaskId, TaskType};
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
        let stored_task = NewTask {
            id: TaskId::random(),
            queue_id: None,
            task_type: TaskType::Rt,
            agent: msg.agent,
            app: msg.app,
            func: msg.func,
            param: msg.param,
            timeout_s: msg.timeout_s,
            proxy: msg.proxy,
            mode: msg.mode,
            depend_task_id: None,
            created_at: now,
        };
        let dispatch = Dispatch {
            center_instance: self.instance.clone(),
            dispatched_at: now,
            deadline: dispatch::deadline(now, msg.timeout_s, &self.rt),
        };
        let instruction = dispatch::instruction(&stored_task, &dispatch);
        let (sender, receiver) = oneshot::channel();
        self.waiters.insert(instruction.id.clone(), sender);
        let message = dispatch::rt_message(&self.signer, &instruction, &self.reply_queue);
        let bus = self.bus.clone();
        let metrics = self.metrics.clone();
        let scheduler = ctx.address();
        let store = self.store.clone();
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
            if let Err(err) = dispatch::publish(&bus, &agent, message).await {
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
