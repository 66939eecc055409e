//! TaskQueue: moves queue tasks through their life. It claims ready tasks from the database
//! and sends them, records results from `center.result`, fails tasks whose deadline passed,
//! and stops queues (cancelling what runs).
//!
//! The database is the source of truth, reply addresses of bus submissions included: the
//! actor keeps no task state of its own, so a restarted actor (or center) carries on where
//! the stored state says. Diesel calls run on the blocking pool, never on the actor's thread.

use crate::config::{QueueConfig, RtConfig};
use crate::dispatch::{self, Outbound, Sent};
use crate::metrics::{Metrics, TaskOutcome};
use crate::store::blocking::{blocking, join_outcome};
use crate::store::{RecordOutcome, StopOutcome, Store, StoreError, TaskRow, TaskStatus};
use actix::prelude::*;
use elves_shared::bus::{Destination, SharedBus};
use elves_shared::crypto::InstructionSigner;
use elves_shared::time::now_unix_ms;
use elves_shared::wire::{JobResult, TaskId, TaskType};
use futures::stream::{FuturesUnordered, StreamExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Look for ready tasks now (after a commit, or a result that may release dependents).
#[derive(Message)]
#[rtype(result = "()")]
pub struct DispatchReady;

#[derive(Message)]
#[rtype(result = "()")]
struct DispatchDone;

#[derive(Message)]
#[rtype(result = "()")]
struct Tick;

/// Results arrived on `center.result`; answers once they are all stored, in one transaction,
/// with one outcome per result in the same order.
#[derive(Message)]
#[rtype(result = "Result<Vec<RecordOutcome>, StoreError>")]
pub struct ResultsReceived(pub Vec<JobResult>);

/// Stop a queue: waiting tasks become `stoped`, running ones are cancelled on their agents.
#[derive(Message)]
#[rtype(result = "Result<StopOutcome, StoreError>")]
pub struct StopQueue {
    pub queue_id: TaskId,
}

#[derive(Message)]
#[rtype(result = "TaskQueueState")]
pub struct GetState;

#[derive(Debug, Clone, MessageResponse, serde::Serialize)]
pub struct TaskQueueState {
    pub dispatching: bool,
}

pub struct TaskQueue {
    store: Store,
    bus: SharedBus,
    signer: Arc<InstructionSigner>,
    /// Names this center in `dispatched_by`.
    instance: String,
    queue: QueueConfig,
    rt: RtConfig,
    metrics: Arc<Metrics>,
    dispatching: bool,
    dispatch_again: bool,
}

impl TaskQueue {
    pub fn new(
        store: Store,
        bus: SharedBus,
        signer: Arc<InstructionSigner>,
        instance: String,
        queue: QueueConfig,
        rt: RtConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        TaskQueue {
            store,
            bus,
            signer,
            instance,
            queue,
            rt,
            metrics,
            dispatching: false,
            dispatch_again: false,
        }
    }

    fn round(&self) -> DispatchRound {
        DispatchRound {
            store: self.store.clone(),
            bus: self.bus.clone(),
            signer: self.signer.clone(),
            instance: self.instance.clone(),
            batch: self.queue.batch.max(1),
            allowance: self.deadline_allowance(),
            bus_unavailable: AtomicBool::new(false),
        }
    }

    fn deadline_allowance(&self) -> Duration {
        Duration::from_secs(
            u64::from(self.rt.kill_grace_s) + u64::from(self.rt.dispatch_allowance_s),
        )
    }
}

impl Actor for TaskQueue {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(
            Duration::from_millis(self.queue.tick_ms.max(10)),
            |_, ctx| ctx.notify(Tick),
        );
        // Tasks this center claimed before it last stopped may never have been sent: send
        // them again (agents drop ids they have seen), then go on with the ready ones.
        let round = self.round();
        let me = ctx.address();
        actix_rt::spawn(async move {
            match round.resend_unfinished().await {
                Ok(0) => {}
                Ok(n) => log::info!("task queue: sent {n} unfinished tasks again after a restart"),
                Err(err) => log::error!("task queue: resending unfinished tasks: {err}"),
            }
            me.do_send(DispatchReady);
        });
    }
}

impl Supervised for TaskQueue {
    fn restarting(&mut self, _: &mut Context<Self>) {
        log::warn!("task queue: restarting; state is in the database");
        self.dispatching = false;
        self.dispatch_again = false;
    }
}

impl Handler<DispatchReady> for TaskQueue {
    type Result = ();

    fn handle(&mut self, _: DispatchReady, ctx: &mut Context<Self>) {
        if self.dispatching {
            self.dispatch_again = true;
            return;
        }
        self.dispatching = true;
        let round = self.round();
        let me = ctx.address();
        actix_rt::spawn(async move {
            if let Err(err) = round.run().await {
                log::error!("task queue: dispatch round failed: {err}");
            }
            me.do_send(DispatchDone);
        });
    }
}

impl Handler<DispatchDone> for TaskQueue {
    type Result = ();

    fn handle(&mut self, _: DispatchDone, ctx: &mut Context<Self>) {
        self.dispatching = false;
        if std::mem::take(&mut self.dispatch_again) {
            ctx.notify(DispatchReady);
        }
    }
}

impl Handler<Tick> for TaskQueue {
    type Result = ();

    fn handle(&mut self, _: Tick, ctx: &mut Context<Self>) {
        ctx.notify(DispatchReady);
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        // A task is failed as lost only after its deadline plus a grace for a result in flight.
        let bus = self.bus.clone();
        let now = now_unix_ms();
        let cutoff = now.saturating_sub(self.queue.result_grace_ms);
        actix_rt::spawn(async move {
            let expiring = store.clone();
            match blocking(move || expiring.expire_overdue(cutoff)).await {
                Ok(expired) => {
                    for task in &expired {
                        log::warn!(
                            "task {}: no result from {} before its deadline",
                            task.id,
                            task.agent
                        );
                        metrics.record_task(TaskOutcome::Lost);
                    }
                    note_expired_crons(&store, expired).await;
                }
                Err(err) => log::error!("task queue: expiring overdue tasks: {err}"),
            }
            let before = now.saturating_sub(REPLY_SWEEP_DELAY_MS);
            send_submit_replies(store, bus, ReplySelection::SettledBefore(before)).await;
        });
    }
}

impl Handler<ResultsReceived> for TaskQueue {
    type Result = ResponseActFuture<Self, Result<Vec<RecordOutcome>, StoreError>>;

    fn handle(&mut self, msg: ResultsReceived, _: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        let results = msg.0;
        let record = async move {
            let now = now_unix_ms();
            blocking(move || {
                let outcomes = store.record_results(&results, now)?;
                // A cron firing's result is also the cron's last result.
                for result in &results {
                    note_cron_result(&store, result);
                }
                Ok((results, outcomes))
            })
            .await
        };
        Box::pin(record.into_actor(self).map(|recorded, actor, ctx| {
            let (results, outcomes) = recorded?;
            let mut settled = Vec::new();
            for (result, outcome) in results.into_iter().zip(&outcomes) {
                if !outcome.applied {
                    log::info!("task {}: duplicate or late result ignored", result.id);
                    continue;
                }
                let task_outcome = if result.error.is_empty() {
                    TaskOutcome::from_worker_flag(result.worker_flag)
                } else {
                    TaskOutcome::Rejected
                };
                actor.metrics.record_task(task_outcome);
                settled.push(result.id);
            }
            // Settled tasks may have released their dependents, and may owe submit replies.
            if !settled.is_empty() {
                ctx.notify(DispatchReady);
                actix_rt::spawn(send_submit_replies(
                    actor.store.clone(),
                    actor.bus.clone(),
                    ReplySelection::Tasks(settled),
                ));
            }
            Ok(outcomes)
        }))
    }
}

impl Handler<StopQueue> for TaskQueue {
    type Result = ResponseFuture<Result<StopOutcome, StoreError>>;

    fn handle(&mut self, msg: StopQueue, _: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        let bus = self.bus.clone();
        let signer = self.signer.clone();
        Box::pin(async move {
            let queue_id = msg.queue_id;
            let now = now_unix_ms();
            let stop_store = store.clone();
            let outcome = blocking(move || stop_store.stop_queue(&queue_id, now)).await?;
            for task_id in &outcome.execing_task_ids {
                let lookup_store = store.clone();
                let id = task_id.clone();
                let Some(task) = blocking(move || lookup_store.get_task(&id)).await? else {
                    continue;
                };
                send_cancel(&bus, &signer, &task).await;
            }
            Ok(outcome)
        })
    }
}

impl Handler<GetState> for TaskQueue {
    type Result = TaskQueueState;

    fn handle(&mut self, _: GetState, _: &mut Context<Self>) -> TaskQueueState {
        TaskQueueState {
            dispatching: self.dispatching,
        }
    }
}

/// One pass of claiming and sending, until fewer than a batch of tasks are ready.
struct DispatchRound {
    store: Store,
    bus: SharedBus,
    signer: Arc<InstructionSigner>,
    instance: String,
    batch: usize,
    allowance: Duration,
    /// Set when a publish found the bus unavailable: the round claims no more.
    bus_unavailable: AtomicBool,
}

/// Batches of a dispatch round waiting for their publisher confirms at once.
const BATCHES_IN_FLIGHT: usize = 3;

/// What a claim hands to the publishes.
type Signed = Vec<Outbound>;

impl DispatchRound {
    async fn resend_unfinished(&self) -> Result<usize, StoreError> {
        let (store, signer) = (self.store.clone(), self.signer.clone());
        let instance = self.instance.clone();
        let unfinished = blocking(move || {
            Ok(dispatch::pack_per_agent(
                &signer,
                store.execing_queue_tasks_of(&instance)?,
            ))
        })
        .await?;
        let n_unfinished = unfinished.iter().map(|outbound| outbound.tasks.len()).sum();
        self.send_all(unfinished).await?;
        Ok(n_unfinished)
    }

    /// Claims and signs, batch after batch, until fewer than a batch of tasks are ready. The
    /// next batch is claimed (and signed) on the blocking pool while earlier ones are being
    /// published, and up to [`BATCHES_IN_FLIGHT`] batches wait for their publisher confirms
    /// at once, so the database, the broker's confirms and this center work side by side.
    async fn run(&self) -> Result<(), StoreError> {
        let mut sending = FuturesUnordered::new();
        let mut claiming = Some(self.claim_and_sign());
        let mut first_error = None;
        while let Some(mut claim) = claiming.take() {
            // Publishes only progress while polled: keep them going during the claim.
            let claimed = loop {
                tokio::select! {
                    claimed = &mut claim => break join_outcome(claimed),
                    Some(sent) = sending.next(), if !sending.is_empty() => {
                        note_error(&mut first_error, sent);
                    }
                }
            };
            let claimed = match claimed {
                Ok(claimed) => claimed,
                Err(err) => {
                    note_error(&mut first_error, Err(err));
                    break;
                }
            };
            // After a failure, tasks already claimed are still sent (otherwise they would wait
            // for their deadline), but no more are claimed.
            let n_claimed: usize = claimed.iter().map(|outbound| outbound.tasks.len()).sum();
            if n_claimed >= self.batch
                && first_error.is_none()
                && !self.bus_unavailable.load(Ordering::Relaxed)
            {
                claiming = Some(self.claim_and_sign());
            }
            sending.push(self.send_all(claimed));
            while sending.len() >= BATCHES_IN_FLIGHT {
                if let Some(sent) = sending.next().await {
                    note_error(&mut first_error, sent);
                }
            }
        }
        while let Some(sent) = sending.next().await {
            note_error(&mut first_error, sent);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Starts a claim on the blocking pool at once (not when first polled).
    fn claim_and_sign(&self) -> tokio::task::JoinHandle<Result<Signed, StoreError>> {
        let (store, signer) = (self.store.clone(), self.signer.clone());
        let instance = self.instance.clone();
        let (batch, allowance) = (self.batch, self.allowance);
        tokio::task::spawn_blocking(move || {
            let claimed = store.claim_ready_tasks(&instance, now_unix_ms(), batch, allowance)?;
            // Ed25519 signing is CPU work: done here rather than on an actix thread.
            Ok(dispatch::pack_per_agent(&signer, claimed))
        })
    }

    async fn send_all(&self, outbound: Signed) -> Result<(), StoreError> {
        let sends = outbound
            .into_iter()
            .map(|outbound| dispatch::publish_outbound(&self.bus, outbound));
        let mut failures = Vec::new();
        let mut unsent = Vec::new();
        for sent in futures::future::join_all(sends).await.into_iter().flatten() {
            match sent {
                Sent::Published => {}
                Sent::Undeliverable(failure) => failures.push(failure),
                Sent::BusUnavailable(task_id) => unsent.push(task_id),
            }
        }
        if !failures.is_empty() {
            let store = self.store.clone();
            blocking(move || store.record_results(&failures, now_unix_ms())).await?;
        }
        if !unsent.is_empty() {
            self.bus_unavailable.store(true, Ordering::Relaxed);
            let (store, instance) = (self.store.clone(), self.instance.clone());
            let n_unsent = unsent.len();
            let released = blocking(move || store.release_unsent(&unsent, &instance)).await?;
            log::warn!(
                "task queue: bus unavailable; {released} of {n_unsent} unsent tasks back to \
                 pendding, sent on a later round"
            );
        }
        Ok(())
    }
}

/// Keeps the first error of a round; the later ones are only logged.
fn note_error(first_error: &mut Option<StoreError>, outcome: Result<(), StoreError>) {
    if let Err(err) = outcome {
        match first_error {
            None => *first_error = Some(err),
            Some(_) => log::error!("task queue: dispatch round: {err}"),
        }
    }
}

async fn send_cancel(bus: &SharedBus, signer: &InstructionSigner, task: &TaskRow) {
    let message = dispatch::cancel_message(signer, &task.id);
    if let Err(err) = dispatch::publish(bus, &task.agent, message).await {
        // The task is already `stoped` in the database; its late result will be ignored.
        log::warn!(
            "task {}: cancel not delivered to {}: {err}",
            task.id,
            task.agent
        );
    }
}

/// Notes a cron task's result on its cron, once the result is stored (blocking). Results of
/// other tasks, and of agent-local crons, change nothing.
fn note_cron_result(store: &Store, result: &JobResult) {
    if result.task_type != TaskType::Cron {
        return;
    }
    if let Err(err) = store.record_cron_result(result) {
        log::error!(
            "cron task {}: result not noted on its cron: {err}",
            result.id
        );
    }
}

/// Which owed submit replies to send.
enum ReplySelection {
    /// Those of these tasks, just settled by this center.
    Tasks(Vec<TaskId>),
    /// Any settled before this instant: left over by a center that died before replying, or
    /// a task settled by a stop or an expiry.
    SettledBefore(u64),
}

/// How long a settled task's reply is left to the center that settled it before any center's
/// sweep sends it.
const REPLY_SWEEP_DELAY_MS: u64 = 5_000;

/// A cron firing that expired is the cron's last result too, like one that got a result.
async fn note_expired_crons(store: &Store, expired: Vec<TaskRow>) {
    let firings: Vec<JobResult> = expired
        .iter()
        .filter(|task| task.task_type == TaskType::Cron)
        .map(settled_result)
        .collect();
    if firings.is_empty() {
        return;
    }
    let store = store.clone();
    let noted = blocking(move || {
        for firing in &firings {
            note_cron_result(&store, firing);
        }
        Ok(())
    })
    .await;
    if let Err(err) = noted {
        log::error!("task queue: noting expired cron firings: {err}");
    }
}

/// How many owed replies one pass sends; the next tick takes the rest.
const REPLIES_PER_PASS: i64 = 256;

/// Sends the replies owed for settled submitted tasks, then forgets each one that went out.
/// A reply whose publish fails stays owed and is tried again on a later tick.
async fn send_submit_replies(store: Store, bus: SharedBus, selection: ReplySelection) {
    let lookup = store.clone();
    let owed = blocking(move || match &selection {
        ReplySelection::Tasks(ids) => {
            lookup.settled_submit_replies(Some(ids), None, REPLIES_PER_PASS)
        }
        ReplySelection::SettledBefore(before) => {
            lookup.settled_submit_replies(None, Some(*before), REPLIES_PER_PASS)
        }
    })
    .await;
    let owed = match owed {
        Ok(owed) => owed,
        Err(err) => {
            log::error!("task queue: reading owed submit replies: {err}");
            return;
        }
    };
    for (task, address) in owed {
        let envelope = elves_shared::wire::Envelope::ok(settled_result(&task));
        let message = dispatch::submit_reply::reply_message(&envelope, &address);
        if let Err(err) = bus
            .publish(&Destination::Queue(address.reply_to.clone()), message)
            .await
        {
            log::warn!(
                "task {}: submit reply to {} not delivered: {err}",
                task.id,
                address.reply_to
            );
            if matches!(err, elves_shared::bus::BusError::Unroutable(_)) {
                // Its reply queue is gone: nobody is left to answer.
            } else {
                continue;
            }
        }
        let forget = store.clone();
        let id = task.id.clone();
        if let Err(err) = blocking(move || forget.forget_submit_reply(&id)).await {
            log::error!(
                "task {}: submit reply sent but not forgotten: {err}",
                task.id
            );
        }
    }
}

/// The result a settled task stands for: its agent's, or the platform's when the agent gave
/// none (the deadline passed, the queue was stopped, a dependency failed).
pub fn settled_result(task: &TaskRow) -> JobResult {
    let error = if task.status != TaskStatus::Finished && task.error.is_empty() {
        format!("task {}", task.status.as_str())
    } else {
        task.error.clone()
    };
    JobResult {
        id: task.id.clone(),
        agent: task.agent.clone(),
        task_type: task.task_type,
        mode: task.mode,
        app: task.app.clone(),
        func: task.func.clone(),
        worker_flag: task.worker_flag.unwrap_or(-1),
        worker_message: task.worker_message.clone().unwrap_or_default(),
        worker_costtime: task.worker_costtime.unwrap_or(0),
        started_at: task.dispatched_at.unwrap_or(0),
        finished_at: task.finished_at.unwrap_or(0),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::message::tests::instructions_in;
    use crate::store::testing::TestDatabase;
    use crate::store::NewTask;
    use elves_shared::bus::testing::PublishOutageBus;
    use elves_shared::bus::{Bus, QueueSpec};
    use elves_shared::wire::{AgentId, Mode};

    fn task(queue_id: &TaskId, n: u64, agent: &AgentId) -> NewTask {
        NewTask {
            id: TaskId::parse(&format!("{n:016x}")).unwrap(),
            queue_id: Some(queue_id.clone()),
            task_type: TaskType::Queue,
            agent: agent.clone(),
            app: "demo".into(),
            func: "ok".into(),
            param: String::new(),
            timeout_s: 10,
            proxy: String::new(),
            mode: Mode::NP,
            depend_task_id: None,
            created_at: n,
        }
    }

    #[actix_rt::test]
    async fn tasks_that_meet_a_bus_outage_wait_for_the_bus_instead_of_failing() {
        let database = TestDatabase::sqlite().unwrap();
        let store = Store::open(&database.url).unwrap();
        let agent = AgentId::parse("agent-1").unwrap();
        let queue_id = TaskId::parse("00000000000000ff").unwrap();
        store.create_queue(&queue_id, "demo", "ops", 1).unwrap();
        for n in 1..=3 {
            store.add_task(&task(&queue_id, n, &agent)).unwrap();
        }
        store.commit_queue(&queue_id, 2).unwrap();

        let bus = Arc::new(PublishOutageBus::new("test", true));
        let mut agent_queue = bus
            .consume(QueueSpec::agent(bus.as_ref(), &agent), 16)
            .await
            .unwrap();
        let round = || DispatchRound {
            store: store.clone(),
            bus: bus.clone(),
            signer: Arc::new(InstructionSigner::generate("center")),
            instance: "center-a".into(),
            batch: 2,
            allowance: Duration::from_secs(5),
            bus_unavailable: AtomicBool::new(false),
        };

        round().run().await.unwrap();
        let tasks = store.queue_tasks(&queue_id).unwrap();
        assert!(
            tasks.iter().all(|task| task.status == TaskStatus::Pending),
            "{tasks:?}"
        );
        assert!(agent_queue.try_next().is_none(), "nothing was sent");

        bus.set_down(false);
        round().run().await.unwrap();
        let tasks = store.queue_tasks(&queue_id).unwrap();
        assert!(
            tasks
                .iter()
                .all(|task| task.status == TaskStatus::Executing),
            "{tasks:?}"
        );
        let expected: Vec<TaskId> = tasks.into_iter().map(|task| task.id).collect();
        let mut sent = Vec::new();
        while sent.len() < expected.len() {
            let delivery = tokio::time::timeout(Duration::from_secs(10), agent_queue.next())
                .await
                .expect("an instruction")
                .expect("the queue is open");
            let instructions = instructions_in(&delivery.message);
            sent.extend(instructions.into_iter().map(|instruction| instruction.id));
        }
        sent.sort();
        assert_eq!(sent, expected, "each task sent once the bus was back");
    }
}
