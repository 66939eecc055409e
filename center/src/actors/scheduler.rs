//! Scheduler: turns a task into a signed instruction on `agent.<id>` and, for instant (RT) tasks,
//! hands the caller the result that comes back on this center's private reply queue.
//! It does not decide whether the agent is reachable (Heartbeat does).
//!
//! It writes the RT history (the task row, then its result) off the caller's path: the
//! instruction is published while the row is being inserted, and the results are recorded
//! in batches, one transaction for the results that came back meanwhile. It owns both writes
//! of a task, so it keeps their order: a result that comes back before its row is stored
//! waits for it. These commits are not flushed to disk before they return on PostgreSQL
//! (see the store's "What a crash can lose"): a crash can lose an rt call's history row or
//! its result, never a queue task or a cron firing.

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
    /// Answer [`DispatchError::StillRunning`] after this long if the task has not ended; the
    /// task goes on and its result is recorded when it comes (SPEC §12, `wait_s`).
    pub wait: Option<Duration>,
}

/// A result arrived on the reply queue.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReplyReceived(pub JobResult);

/// The reply queue went with a lost broker connection (a broker restart, a network cut): the
/// results of the calls waiting now may never come, and their instructions, transient, may be
/// gone with the broker. Their callers get an answer at once instead of waiting out the
/// deadline.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReplyQueueLost;

/// Nobody waits for this task any more (its caller gave up or the publish failed).
#[derive(Message)]
#[rtype(result = "()")]
struct ForgetWaiter(TaskId);

/// The history row of an rt task was inserted (`stored`), or could not be.
#[derive(Message)]
#[rtype(result = "()")]
struct HistoryInserted {
    id: TaskId,
    stored: bool,
}

/// The batch of rt results being recorded is done with.
#[derive(Message)]
#[rtype(result = "()")]
struct ResultsRecorded;

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
    #[error("scheduler restarted while the task was running")]
    Interrupted,
    /// Not a failure: the caller's `wait_s` passed before the task ended; it goes on.
    #[error("task {0} is still running")]
    StillRunning(TaskId),
    #[error(
        "the broker connection was lost while task {task} waited for agent {agent}: the task \
         may not have run (its instruction went with the broker) or may have run without its \
         result reaching this center; its history row shows a result if one arrives later"
    )]
    BrokerLost { task: TaskId, agent: AgentId },
}

pub struct Scheduler {
    bus: SharedBus,
    signer: Arc<InstructionSigner>,
    reply_queue: String,
    rt: RtConfig,
    metrics: Arc<Metrics>,
    store: Store,
    instance: String,
    waiters: HashMap<TaskId, Waiter>,
    history: RtHistory,
}

/// A caller waiting for the result of an rt task.
struct Waiter {
    agent: AgentId,
    reply: oneshot::Sender<Result<JobResult, DispatchError>>,
}

/// Most rt results recorded in one transaction.
const RESULTS_PER_TRANSACTION: usize = 256;

/// The RT history still to write: rows being inserted, with the results that came back
/// before their row was stored, and results waiting for the next transaction. One batch of
/// results is recorded at a time; what arrives meanwhile makes the next batch.
#[derive(Debug, Default)]
struct RtHistory {
    inserting: HashMap<TaskId, Vec<JobResult>>,
    unrecorded: Vec<JobResult>,
    recording: bool,
}

impl RtHistory {
    fn inserting(&mut self, id: TaskId) {
        self.inserting.insert(id, Vec::new());
    }

    fn result_arrived(&mut self, result: JobResult) {
        match self.inserting.get_mut(&result.id) {
            Some(held) => held.push(result),
            None => self.unrecorded.push(result),
        }
    }

    /// The row of `id` is stored, or failed to be; returns the results held for it that are
    /// dropped (they would find no row).
    fn inserted(&mut self, id: &TaskId, stored: bool) -> Vec<JobResult> {
        let held = self.inserting.remove(id).unwrap_or_default();
        if stored {
            self.unrecorded.extend(held);
            Vec::new()
        } else {
            held
        }
    }

    /// The next batch to record, unless one is being recorded; [`RtHistory::recorded`] says
    /// when it is done.
    fn next_batch(&mut self) -> Option<Vec<JobResult>> {
        if self.recording || self.unrecorded.is_empty() {
            return None;
        }
        self.recording = true;
        let n = self.unrecorded.len().min(RESULTS_PER_TRANSACTION);
        Some(self.unrecorded.drain(..n).collect())
    }

    fn recorded(&mut self) {
        self.recording = false;
    }
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
            history: RtHistory::default(),
        }
    }

    /// Starts recording the next batch of rt results, unless a batch is being recorded.
    fn record_next_batch(&mut self, ctx: &mut Context<Self>) {
        let Some(batch) = self.history.next_batch() else {
            return;
        };
        let store = self.store.clone();
        let scheduler = ctx.address();
        // Not `ctx.spawn`: the batch is recorded even if the Scheduler restarts meanwhile.
        actix_rt::spawn(async move {
            let n_results = batch.len();
            let now = now_unix_ms();
            match blocking(move || store.record_rt_results(&batch, now)).await {
                Ok(_) => log::debug!("{n_results} rt results recorded"),
                Err(err) => log::error!("{n_results} rt results not stored: {err}"),
            }
            scheduler.do_send(ResultsRecorded);
        });
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
        let caller_wait = msg.wait;
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
        self.waiters.insert(
            instruction.id.clone(),
            Waiter {
                agent: instruction.agent.clone(),
                reply: sender,
            },
        );
        let message = dispatch::rt_message(&self.signer, &instruction, &self.reply_queue);
        let bus = self.bus.clone();
        let metrics = self.metrics.clone();
        let scheduler = ctx.address();
        // The history row is inserted while the instruction is published: the caller waits
        // for the agent, not for the database. Marked here, before anything is sent, so that
        // its result cannot overtake it.
        self.history.inserting(instruction.id.clone());
        let store = self.store.clone();
        let inserted_id = instruction.id.clone();
        let history_scheduler = scheduler.clone();
        actix_rt::spawn(async move {
            let outcome = blocking(move || store.insert_task(&stored_task, &dispatch)).await;
            if let Err(err) = &outcome {
                log::error!("task {inserted_id}: rt history not stored: {err}");
            }
            history_scheduler.do_send(HistoryInserted {
                id: inserted_id,
                stored: outcome.is_ok(),
            });
        });
        // Wait a little past the deadline so that a result sent at the last moment still lands.
        let wait = Duration::from_millis(instruction.deadline.saturating_sub(now) + 2_000);
        Box::pin(async move {
            let id = instruction.id.clone();
            let agent = instruction.agent.clone();
            if let Err(err) = dispatch::publish(&bus, &agent, message).await {
                scheduler.do_send(ForgetWaiter(id.clone()));
                metrics.record_task(TaskOutcome::Rejected);
                return Err(match err {
                    BusError::Unroutable(_) => DispatchError::Unroutable(agent),
                    other => DispatchError::Bus(other.to_string()),
                });
            }
            log::debug!("task {id}: rt sent to {agent}");
            let mut receiver = receiver;
            let received = match caller_wait.filter(|patience| *patience < wait) {
                Some(patience) => match tokio::time::timeout(patience, &mut receiver).await {
                    Ok(received) => Ok(received),
                    Err(_) => {
                        // The caller goes; the waiter stays until the result or the deadline,
                        // so that the result is counted and recorded like any other.
                        let rest = wait - patience;
                        let forget = scheduler.clone();
                        let (waited_id, metrics) = (id.clone(), metrics.clone());
                        actix_rt::spawn(async move {
                            if tokio::time::timeout(rest, receiver).await.is_err() {
                                forget.do_send(ForgetWaiter(waited_id.clone()));
                                metrics.record_task(TaskOutcome::Lost);
                                log::warn!("task {waited_id}: no result within its deadline");
                            }
                        });
                        return Err(DispatchError::StillRunning(id));
                    }
                },
                None => tokio::time::timeout(wait, receiver).await,
            };
            match received {
                Ok(Ok(Ok(result))) => Ok(result),
                Ok(Ok(Err(err))) => {
                    metrics.record_task(TaskOutcome::Lost);
                    log::warn!("task {id}: {err}");
                    Err(err)
                }
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

    fn handle(&mut self, msg: ReplyReceived, ctx: &mut Context<Self>) {
        let result = msg.0;
        if let Some(waiter) = self.waiters.get(&result.id) {
            if waiter.agent != result.agent {
                log::warn!(
                    "task {}: result from agent {} dropped: the task was sent to {}",
                    result.id,
                    result.agent,
                    waiter.agent
                );
                return;
            }
        }
        let outcome = if result.error.is_empty() {
            TaskOutcome::from_worker_flag(result.worker_flag)
        } else {
            TaskOutcome::Rejected
        };
        self.history.result_arrived(result.clone());
        self.record_next_batch(ctx);
        match self.waiters.remove(&result.id) {
            Some(waiter) => {
                self.metrics.record_task(outcome);
                // The caller may have gone (HTTP client disconnected); nothing else to do then.
                let _ = waiter.reply.send(Ok(result));
            }
            None => log::info!("task {}: late or duplicate rt result dropped", result.id),
        }
    }
}

impl Handler<ReplyQueueLost> for Scheduler {
    type Result = ();

    fn handle(&mut self, _: ReplyQueueLost, _: &mut Context<Self>) {
        if !self.waiters.is_empty() {
            log::warn!(
                "scheduler: reply queue lost with the broker connection, {} rt callers answered",
                self.waiters.len()
            );
        }
        for (task, waiter) in self.waiters.drain() {
            let lost = DispatchError::BrokerLost {
                task,
                agent: waiter.agent,
            };
            let _ = waiter.reply.send(Err(lost));
        }
    }
}

impl Handler<HistoryInserted> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: HistoryInserted, ctx: &mut Context<Self>) {
        let dropped = self.history.inserted(&msg.id, msg.stored);
        if !dropped.is_empty() {
            log::error!("task {}: rt result not stored: no history row", msg.id);
        }
        self.record_next_batch(ctx);
    }
}

impl Handler<ResultsRecorded> for Scheduler {
    type Result = ();

    fn handle(&mut self, _: ResultsRecorded, ctx: &mut Context<Self>) {
        self.history.recorded();
        self.record_next_batch(ctx);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::message::tests::instructions_in;
    use crate::store::testing::TestDatabase;
    use crate::store::TaskStatus;
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    use elves_shared::bus::QueueSpec;
    use std::time::Instant;

    fn task_id(n: u64) -> TaskId {
        TaskId::parse(&format!("{n:016x}")).unwrap()
    }

    fn rt_result(id: &TaskId, message: &str) -> JobResult {
        JobResult {
            id: id.clone(),
            agent: AgentId::parse("agent-1").unwrap(),
            task_type: TaskType::Rt,
            mode: Mode::NP,
            app: "demo".into(),
            func: "ok".into(),
            worker_flag: 1,
            worker_message: message.into(),
            worker_costtime: 3,
            started_at: 1,
            finished_at: 4,
            error: String::new(),
        }
    }

    fn ids(batch: &[JobResult]) -> Vec<TaskId> {
        batch.iter().map(|result| result.id.clone()).collect()
    }

    #[test]
    fn a_result_that_overtakes_its_row_waits_for_it() {
        let mut history = RtHistory::default();
        history.inserting(task_id(1));
        history.result_arrived(rt_result(&task_id(1), "early"));
        assert!(
            history.next_batch().is_none(),
            "held until the row is stored"
        );
        assert!(history.inserted(&task_id(1), true).is_empty());
        let batch = history.next_batch().unwrap();
        assert_eq!(ids(&batch), vec![task_id(1)]);
        assert_eq!(batch[0].worker_message, "early");
    }

    #[test]
    fn results_that_arrive_during_a_recording_make_one_next_batch() {
        let mut history = RtHistory::default();
        history.result_arrived(rt_result(&task_id(1), "a"));
        assert_eq!(ids(&history.next_batch().unwrap()), vec![task_id(1)]);
        for n in 2..=4 {
            history.result_arrived(rt_result(&task_id(n), "b"));
        }
        assert!(history.next_batch().is_none(), "one batch at a time");
        history.recorded();
        assert_eq!(
            ids(&history.next_batch().unwrap()),
            vec![task_id(2), task_id(3), task_id(4)]
        );
        history.recorded();
        assert!(history.next_batch().is_none());

        for n in 0..RESULTS_PER_TRANSACTION as u64 + 1 {
            history.result_arrived(rt_result(&task_id(100 + n), "c"));
        }
        assert_eq!(history.next_batch().unwrap().len(), RESULTS_PER_TRANSACTION);
        history.recorded();
        assert_eq!(history.next_batch().unwrap().len(), 1);
    }

    #[test]
    fn results_held_for_a_row_that_was_not_stored_are_dropped() {
        let mut history = RtHistory::default();
        history.inserting(task_id(1));
        history.inserting(task_id(2));
        history.result_arrived(rt_result(&task_id(1), "lost"));
        history.result_arrived(rt_result(&task_id(2), "kept"));
        assert_eq!(ids(&history.inserted(&task_id(1), false)), vec![task_id(1)]);
        assert!(history.next_batch().is_none());
        assert!(history.inserted(&task_id(2), true).is_empty());
        assert_eq!(ids(&history.next_batch().unwrap()), vec![task_id(2)]);
    }

    /// The database is locked by another writer for the whole call: the caller still gets its
    /// result, and the history (row, then result) is written once the lock goes.
    #[actix_rt::test]
    async fn the_caller_does_not_wait_for_the_history_and_its_result_is_recorded_after_its_row() {
        let database = TestDatabase::sqlite().unwrap();
        let store = Store::open(&database.url).unwrap();
        let path = database.url.strip_prefix("sqlite://").unwrap();
        let mut other_writer = diesel::SqliteConnection::establish(path).unwrap();
        other_writer.batch_execute("BEGIN IMMEDIATE").unwrap();

        let agent = AgentId::parse("agent-1").unwrap();
        let bus = elves_shared::bus::open("inproc", "test").unwrap();
        let mut agent_queue = bus
            .consume(QueueSpec::agent(bus.as_ref(), &agent), 16)
            .await
            .unwrap();
        let scheduler = Scheduler::new(
            bus,
            Arc::new(InstructionSigner::generate("center")),
            "reply".into(),
            RtConfig::default(),
            Arc::new(Metrics::default()),
            store.clone(),
            "center-a".into(),
        )
        .start();
        let call = actix_rt::spawn(scheduler.send(RunInstant {
            agent: agent.clone(),
            app: "demo".into(),
            func: "ok".into(),
            param: String::new(),
            timeout_s: 10,
            proxy: String::new(),
            mode: Mode::NP,
            wait: None,
        }));
        let delivery = tokio::time::timeout(Duration::from_secs(10), agent_queue.next())
            .await
            .expect("an instruction")
            .expect("the queue is open");
        let id = instructions_in(&delivery.message).remove(0).id;
        scheduler.do_send(ReplyReceived(rt_result(&id, "done")));
        let answer = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("an answer while the database is locked")
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(answer.worker_message, "done");
        assert_eq!(
            store.get_task(&id).unwrap(),
            None,
            "the row waits for the lock"
        );

        other_writer.batch_execute("COMMIT").unwrap();
        let give_up = Instant::now() + Duration::from_secs(10);
        let stored = loop {
            let stored = store.get_task(&id).unwrap();
            if let Some(task) = stored.filter(|task| task.status == TaskStatus::Finished) {
                break task;
            }
            assert!(Instant::now() < give_up, "the result was never recorded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(stored.worker_message.as_deref(), Some("done"));
        assert_eq!(stored.worker_flag, Some(1));
    }
}
