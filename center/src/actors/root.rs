//! Root: the supervisor of the center's actors.
//!
//! It starts the bus consumers' queues first, then Heartbeat and Scheduler under actix
//! `Supervisor`s (an actor that stops is rebuilt through `restarting()` with the same address,
//! so nobody holding an `Addr` notices), then feeds them from the bus.
//! TaskQueue, Cron and AppStore are their siblings.
//! Shutdown runs in reverse: consumers stop first (their deliveries go back to the broker),
//! then the actors with the actix system.

use super::app_store::{AgentReported, AppRegistry, AppStore};
use super::batch::BatchRunner;
use super::cron::Cron;
use super::heartbeat::{
    is_online, Heartbeat, HeartbeatsReceived, IntakeBack, IntakeLost, PresenceView,
};
use super::inventory::{Inventory, InventoryLabels};
use super::scheduler::{ReplyQueueLost, ReplyReceived, Scheduler};
use super::task_queue::{DispatchReady, ResultsReceived, TaskQueue};
use crate::config::CenterConfig;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use actix::prelude::*;
use elves_shared::bus::{BusMessage, Consumer, Delivery, QueueSpec, SharedBus};
use elves_shared::crypto::InstructionSigner;
use elves_shared::time::now_unix_ms;
use elves_shared::wire::{
    self, kind, routing, Heartbeat as HeartbeatMessage, JobResult, ResultBatch, TaskId,
};
use std::sync::Arc;

/// Unsettled deliveries per consumer; bounds memory when a burst arrives.
const PREFETCH: u16 = 256;

/// Unsettled deliveries of `center.output`. Its messages are up to 1 MiB each (an agent's
/// output of 200 ms); a few in flight keep the keeper busy while bounding what the center
/// holds to a few MiB, however fast workers write.
const OUTPUT_PREFETCH: u16 = 4;

/// Unsettled deliveries of `center.result`: results pile up here while a batch is stored,
/// so the next batch is a full one.
const RESULT_PREFETCH: u16 = 1024;

/// Unsettled deliveries of `center.heartbeat`, and heartbeats handed to Heartbeat at once at
/// most: 10,000 agents beating every 10 s send 1,000 a second.
const HEARTBEAT_PREFETCH: u16 = 1024;

/// Results stored in one transaction at most.
const RESULT_BATCH: usize = 256;

const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// The addresses of the supervised actors, handed to the HTTP API.
#[derive(Clone)]
pub struct Children {
    pub heartbeat: Addr<Heartbeat>,
    pub scheduler: Addr<Scheduler>,
    pub task_queue: Addr<TaskQueue>,
    pub cron: Addr<Cron>,
    pub app_store: Addr<AppStore>,
    pub batch: Addr<BatchRunner>,
    pub inventory: Addr<Inventory>,
    /// Labels from the inventory source, merged into the agents' own when read.
    pub inventory_labels: InventoryLabels,
    /// Every agent the Heartbeat registry knows, as memory has it.
    pub presence: PresenceView,
    /// Wakes this center's output followers when output was stored.
    pub output_stored: super::output::OutputSignal,
    /// Apps, auth ids and bindings, read by the API for every authentication.
    pub apps: AppRegistry,
}

pub struct Root {
    children: Children,
}

impl Actor for Root {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Context<Self>) {
        log::info!("root: stopped");
    }
}

#[derive(Message)]
#[rtype(result = "Children")]
pub struct GetChildren;

impl Handler<GetChildren> for Root {
    type Result = MessageResult<GetChildren>;

    fn handle(&mut self, _: GetChildren, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.children.clone())
    }
}

impl Root {
    /// Starts every actor and consumer; returns once the center can take traffic.
    /// Must run inside the actix system.
    pub async fn start(
        config: &CenterConfig,
        bus: SharedBus,
        signer: Arc<InstructionSigner>,
        metrics: Arc<Metrics>,
        store: Store,
        instance: String,
    ) -> Result<Addr<Root>, elves_shared::bus::BusError> {
        // Each center instance has its own reply queue so that an RT result comes back to the
        // center whose caller is waiting, even when several centers share one broker.
        let reply_queue = bus.queue_name(&format!("center.reply.{}", TaskId::random()));
        let replies = bus
            .consume(
                QueueSpec {
                    name: reply_queue.clone(),
                    bindings: Vec::new(),
                    durable: false,
                },
                PREFETCH,
            )
            .await?;
        let heartbeats = bus
            .consume(
                QueueSpec {
                    name: bus.queue_name("center.heartbeat"),
                    bindings: vec![routing::CENTER_HEARTBEAT.to_string()],
                    durable: true,
                },
                HEARTBEAT_PREFETCH,
            )
            .await?;

        // Shared by all centers: whichever center takes a result stores it.
        let results = bus
            .consume(
                QueueSpec {
                    name: bus.queue_name("center.result"),
                    bindings: vec![routing::CENTER_RESULT.to_string()],
                    durable: true,
                },
                RESULT_PREFETCH,
            )
            .await?;

        // Shared by all centers, like results: whichever center takes output stores it.
        let outputs = bus
            .consume(
                QueueSpec {
                    name: bus.queue_name("center.output"),
                    bindings: vec![routing::CENTER_OUTPUT.to_string()],
                    durable: true,
                },
                OUTPUT_PREFETCH,
            )
            .await?;
        let output_stored = super::output::OutputSignal::default();
        let (output_store, output_config, output_signal) =
            (store.clone(), config.output.clone(), output_stored.clone());
        let output_keeper = Supervisor::start(move |_| {
            super::output::OutputKeeper::new(output_store, output_config, output_signal)
        });

        let missed_beats = config.heartbeat.offline_after_missed_beats;
        let flush_every = std::time::Duration::from_millis(config.heartbeat.flush_ms);
        let heartbeat_store = store.clone();
        let presence = PresenceView::default();
        let heartbeat_presence = presence.clone();
        let heartbeat = Supervisor::start(move |_| {
            Heartbeat::with_store(missed_beats, heartbeat_store, flush_every)
                .sharing(heartbeat_presence.clone())
        });
        let rt = config.rt.clone();
        let scheduler_bus = bus.clone();
        let scheduler_signer = signer.clone();
        let scheduler_metrics = metrics.clone();
        let scheduler_store = store.clone();
        let scheduler_instance = instance.clone();
        let scheduler = Supervisor::start(move |_| {
            Scheduler::new(
                scheduler_bus,
                scheduler_signer,
                reply_queue,
                rt,
                scheduler_metrics,
                scheduler_store,
                scheduler_instance,
            )
        });
        let (cron_store, cron_bus, cron_signer) = (store.clone(), bus.clone(), signer.clone());
        let (cron_instance, cron_config, cron_rt) =
            (instance.clone(), config.cron.clone(), config.rt.clone());
        let cron = Supervisor::start(move |_| {
            Cron::new(
                cron_store,
                cron_bus,
                cron_signer,
                cron_instance,
                cron_config,
                cron_rt,
            )
        });
        let apps = AppRegistry::new(&config.auth, signer.clone());
        let (apps_store, apps_bus, apps_signer, apps_config, apps_registry) = (
            store.clone(),
            bus.clone(),
            signer.clone(),
            config.apps.clone(),
            apps.clone(),
        );
        let app_store = Supervisor::start(move |_| {
            let base_url = apps_config.public_url.clone();
            AppStore::new(
                apps_store,
                apps_bus,
                apps_signer,
                apps_config,
                base_url,
                apps_registry,
            )
        });
        let queue_config = config.queue.clone();
        let rt = config.rt.clone();
        let queue_store = store.clone();
        let batch_store = store.clone();
        let batch_metrics = metrics.clone();
        let task_queue = Supervisor::start(move |_| {
            TaskQueue::new(
                queue_store,
                bus,
                signer,
                instance,
                queue_config,
                rt,
                metrics,
            )
        });

        let inventory_labels = InventoryLabels::default();
        let (inventory_config, labels_in_force) =
            (config.inventory.clone(), inventory_labels.clone());
        let inventory =
            Supervisor::start(move |_| Inventory::new(inventory_config, labels_in_force));
        // Batches release agents into their queues; TaskQueue sends them.
        let wake_queue = task_queue.clone();
        let batch_tick = std::time::Duration::from_millis(config.queue.tick_ms.max(10));
        let batch_presence = presence.clone();
        let batch = Supervisor::start(move |_| {
            BatchRunner::new(
                batch_store,
                batch_metrics,
                Arc::new(move || wake_queue.do_send(DispatchReady)),
                batch_tick,
                {
                    // Memory first: a row is only as fresh as the last flush.
                    let presence = batch_presence.clone();
                    Arc::new(move |agent: &str, stored: Option<(u64, u64)>, now| {
                        presence.last_seen(agent).or(stored).is_some_and(
                            |(last_seen, interval_ms)| {
                                is_online(last_seen, interval_ms, missed_beats, now)
                            },
                        )
                    })
                },
            )
        });

        let agent_accounts = config.bus.agent_accounts;
        actix_rt::spawn(follow_intake(heartbeats.connected(), heartbeat.clone()));
        actix_rt::spawn(feed_heartbeats(
            heartbeats,
            heartbeat.clone(),
            app_store.clone(),
            agent_accounts,
        ));
        actix_rt::spawn(feed_replies(replies, scheduler.clone(), agent_accounts));
        actix_rt::spawn(feed_results(results, task_queue.clone(), agent_accounts));
        actix_rt::spawn(super::output::feed(outputs, output_keeper, agent_accounts));

        let children = Children {
            heartbeat,
            scheduler,
            task_queue,
            cron,
            app_store,
            batch,
            inventory,
            inventory_labels,
            presence,
            output_stored,
            apps,
        };
        Ok(Root { children }.start())
    }
}

/// Hands heartbeats to Heartbeat in batches of whatever has arrived (up to
/// [`HEARTBEAT_PREFETCH`]) and acks them once handed over: presence is recorded in memory
/// before anything else, and nothing on this path waits for the database (Heartbeat writes
/// the rows in its own periodic flush). A heartbeat is soft state: one lost in a crash is
/// replaced by the agent's next one.
async fn feed_heartbeats(
    mut consumer: Consumer,
    heartbeat: Addr<Heartbeat>,
    app_store: Addr<AppStore>,
    agent_accounts: bool,
) {
    while let Some(first) = consumer.next().await {
        let mut decoded = Vec::new();
        let mut deliveries = Vec::new();
        let mut next = Some(first);
        while let Some(delivery) = next {
            match decode_heartbeat(&delivery.message, agent_accounts) {
                Some(beat) => {
                    decoded.push(beat);
                    deliveries.push(delivery);
                }
                None => delivery.reject().await,
            }
            next = if deliveries.len() < usize::from(HEARTBEAT_PREFETCH) {
                consumer.try_next()
            } else {
                None
            };
        }
        if decoded.is_empty() {
            continue;
        }
        let received_at = now_unix_ms();
        for beat in &decoded {
            // AppStore compares what the agent has with what it should have.
            app_store.do_send(AgentReported {
                agent: beat.agent.clone(),
                packages: beat.packages.clone(),
                versions: beat.apps.clone(),
                interval_ms: beat.interval_ms,
                received_at,
            });
        }
        heartbeat.do_send(HeartbeatsReceived {
            heartbeats: decoded,
            received_at,
        });
        // Acks need no answer: the next batch need not wait for them.
        actix_rt::spawn(ack_all(deliveries));
    }
}

/// Tells Heartbeat when its intake loses the broker and when it is back, so that a broker
/// restart, which silences every agent at once, marks none of them offline.
async fn follow_intake(
    mut connected: tokio::sync::watch::Receiver<bool>,
    heartbeat: Addr<Heartbeat>,
) {
    while connected.changed().await.is_ok() {
        let at = now_unix_ms();
        if *connected.borrow_and_update() {
            heartbeat.do_send(IntakeBack { at });
        } else {
            heartbeat.do_send(IntakeLost { at });
        }
    }
}

/// The heartbeat a `center.heartbeat` message carries, when it may be taken; `None` (logged)
/// for anything else.
fn decode_heartbeat(message: &BusMessage, agent_accounts: bool) -> Option<HeartbeatMessage> {
    if message.kind != kind::HEARTBEAT {
        log::warn!(
            "heartbeat queue: dropped message of kind {:?}",
            message.kind
        );
        return None;
    }
    if let Some(why) = crate::dispatch::sender::heartbeat_body_refusal(message.body.len()) {
        log::warn!("heartbeat queue: dropped {why}");
        return None;
    }
    match wire::decode::<HeartbeatMessage>(&message.body) {
        Ok(decoded) => {
            match crate::dispatch::sender::heartbeat_refusal(message, &decoded, agent_accounts) {
                Some(why) => {
                    log::warn!("heartbeat queue: dropped a heartbeat: {why}");
                    None
                }
                None => Some(decoded),
            }
        }
        Err(err) => {
            log::warn!("heartbeat queue: dropped undecodable message: {err}");
            None
        }
    }
}

async fn feed_replies(mut consumer: Consumer, scheduler: Addr<Scheduler>, agent_accounts: bool) {
    let mut losses = consumer.losses();
    loop {
        let delivery = tokio::select! {
            delivery = consumer.next() => delivery,
            Ok(()) = losses.changed() => {
                // The reply queue is private: it went with the connection, and with it every
                // result on its way to a waiting caller.
                scheduler.do_send(ReplyQueueLost);
                continue;
            }
        };
        let Some(delivery) = delivery else {
            break;
        };
        let message = &delivery.message;
        match wire::decode::<JobResult>(&message.body) {
            Ok(result) if message.kind == kind::RESULT => {
                match crate::dispatch::sender::refusal(message, &result, agent_accounts) {
                    None => {
                        scheduler.do_send(ReplyReceived(result));
                        delivery.ack().await;
                    }
                    Some(why) => {
                        log::warn!("reply queue: dropped result of task {}: {why}", result.id);
                        delivery.reject().await;
                    }
                }
            }
            Ok(_) => {
                log::warn!("reply queue: dropped message of kind {:?}", message.kind);
                delivery.reject().await;
            }
            Err(err) => {
                log::warn!("reply queue: dropped undecodable message: {err}");
                delivery.reject().await;
            }
        }
    }
}

/// Stores results batch by batch: whatever has arrived (up to about [`RESULT_BATCH`] results;
/// one message may carry several) goes to TaskQueue as one batch, and each message is acked
/// only once the batch is committed.
async fn feed_results(mut consumer: Consumer, task_queue: Addr<TaskQueue>, agent_accounts: bool) {
    while let Some(first) = consumer.next().await {
        let mut messages = Vec::with_capacity(RESULT_BATCH);
        let mut results = Vec::with_capacity(RESULT_BATCH);
        let mut next = Some(first);
        while let Some(delivery) = next {
            match decode_results(&delivery.message, agent_accounts) {
                Some(decoded) => {
                    results.extend(decoded.iter().cloned());
                    messages.push((delivery, decoded));
                }
                None => delivery.reject().await,
            }
            next = if results.len() < RESULT_BATCH {
                consumer.try_next()
            } else {
                None
            };
        }
        if results.is_empty() {
            continue;
        }
        match task_queue.send(ResultsReceived(results)).await {
            Ok(Ok(_)) => {
                // Acks need no answer: the next batch need not wait for them.
                let deliveries = messages.into_iter().map(|(delivery, _)| delivery).collect();
                actix_rt::spawn(ack_all(deliveries));
            }
            Ok(Err(err)) if !is_unreachable(&err) && carries_several(&messages) => {
                // One result the store cannot take must not hold back the others.
                log::warn!(
                    "result queue: batch of {} message(s) not stored ({err}); storing them one by one",
                    messages.len()
                );
                store_one_by_one(&task_queue, messages).await;
            }
            Ok(Err(err)) => {
                log::error!(
                    "result queue: {} message(s) not stored, will retry: {err}",
                    messages.len()
                );
                requeue_after_pause(messages).await;
            }
            Err(err) => {
                log::error!("result queue: queue actor unavailable, will retry: {err}");
                requeue_after_pause(messages).await;
            }
        }
    }
}

/// The results a `center.result` message carries: one (`result`) or several (`results`).
/// `None` for a message that cannot be one of these, or carries a result that may not be
/// taken (`dispatch::sender`); it is dropped whole.
fn decode_results(message: &BusMessage, agent_accounts: bool) -> Option<Vec<JobResult>> {
    let decoded = match message.kind.as_str() {
        kind::RESULT => wire::decode::<JobResult>(&message.body).map(|result| vec![result]),
        kind::RESULTS => wire::decode::<ResultBatch>(&message.body).map(|batch| batch.results),
        other => {
            log::warn!("result queue: dropped message of kind {other:?}");
            return None;
        }
    };
    match decoded {
        Ok(results) if results.is_empty() => {
            log::warn!("result queue: dropped a results message with no result");
            None
        }
        Ok(results) => {
            let refused = results.iter().find_map(|result| {
                crate::dispatch::sender::refusal(message, result, agent_accounts)
                    .map(|why| format!("task {}: {why}", result.id))
            });
            match refused {
                None => Some(results),
                Some(why) => {
                    log::warn!(
                        "result queue: dropped a message of {} result(s): {why}",
                        results.len()
                    );
                    None
                }
            }
        }
        Err(err) => {
            log::warn!("result queue: dropped undecodable message: {err}");
            None
        }
    }
}

/// The database could not be reached at all: trying results one by one would only fail
/// again, each after the pool's timeout.
fn is_unreachable(err: &StoreError) -> bool {
    err.is_unavailable()
}

/// A message with its results.
type ResultMessage = (Delivery, Vec<JobResult>);

fn carries_several(messages: &[ResultMessage]) -> bool {
    messages.len() > 1 || messages.iter().any(|(_, results)| results.len() > 1)
}

/// Stores each result in a transaction of its own. A message is acked once all its results
/// are stored and requeued otherwise (its stored results are ignored when it comes back).
async fn store_one_by_one(task_queue: &Addr<TaskQueue>, messages: Vec<ResultMessage>) {
    let mut stored = Vec::new();
    let mut failed = Vec::new();
    let mut messages = messages.into_iter();
    'messages: for (delivery, results) in messages.by_ref() {
        for result in results {
            let id = result.id.clone();
            let gave_up = match task_queue.send(ResultsReceived(vec![result])).await {
                Ok(Ok(_)) => continue,
                Ok(Err(err)) => {
                    log::error!("task {id}: result not stored, will retry: {err}");
                    is_unreachable(&err)
                }
                Err(err) => {
                    log::error!("task {id}: queue actor unavailable, will retry: {err}");
                    true
                }
            };
            failed.push((delivery, Vec::new()));
            if gave_up {
                break 'messages;
            }
            continue 'messages;
        }
        stored.push(delivery);
    }
    failed.extend(messages);
    ack_all(stored).await;
    requeue_after_pause(failed).await;
}

async fn ack_all(deliveries: Vec<Delivery>) {
    for delivery in deliveries {
        delivery.ack().await;
    }
}

async fn requeue_after_pause(messages: Vec<ResultMessage>) {
    if messages.is_empty() {
        return;
    }
    // A pause so that a database outage is not a hot requeue loop.
    tokio::time::sleep(RETRY_PAUSE).await;
    for (delivery, _) in messages {
        delivery.requeue().await;
    }
}
