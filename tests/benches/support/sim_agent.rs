//! Simulated agents: a fleet of light agents in one process that speak the real protocol
//! without running anything, so that a bench measures the center and not the host's
//! fork/exec rate.
//!
//! Each simulated agent
//! - consumes its own durable queue `<namespace>.agent.<id>`, as the real agent does, with the
//!   real agent's default prefetch, and only then starts heartbeating to `center.heartbeat`
//!   (every [`SimConfig::heartbeat_interval_ms`], expiring after three intervals, reporting
//!   [`SimConfig::apps`] as installed);
//! - verifies every delivery's Ed25519 signature with the center's public key and decodes a
//!   lone `instruction` or an `instructions` pack; a delivery whose signature, body or any
//!   addressee is wrong is rejected whole and counted as refused;
//! - answers each instruction it has not seen before at once with a successful result
//!   (`worker_flag` 1, message [`RESULT_MESSAGE`]), the results of one delivery in one message
//!   to `center.result` (`result` for one, `results` for several), and acks the delivery once
//!   that message is published; an instruction seen before is counted as a duplicate and not
//!   answered again; a result that could not be published is forgotten and its delivery
//!   requeued, so that the redelivery is answered.
//!
//! Agents share bus connections, [`SimConfig::agents_per_connection`] each. Start a fleet with
//! [`SimFleet::start`] inside a Tokio runtime, read its [`SimCounters`] at any time, and stop it
//! with [`SimFleet::stop`].

use elves_shared::bus::{self, BusMessage, Delivery, Destination, QueueSpec, SharedBus};
use elves_shared::crypto::InstructionVerifier;
use elves_shared::time::now_unix_ms;
use elves_shared::wire::{self, kind, routing, AgentId, Heartbeat, Instruction, JobResult, TaskId};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The `worker_message` of every result a simulated agent sends.
pub const RESULT_MESSAGE: &str = "ok";
/// The `asset` and `version` a simulated agent reports in its heartbeats.
const ASSET: &str = "bench";
const VERSION: &str = "simulated";

/// What a fleet of simulated agents is.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The bus to speak on (`amqp://…`, or `inproc`), and the namespace of the center's.
    pub bus_url: String,
    pub namespace: String,
    /// The center's instruction key, as it prints it at start-up: instructions signed with
    /// anything else are refused.
    pub center_key_id: String,
    pub center_public_key_hex: String,
    /// One simulated agent per id.
    pub agents: Vec<AgentId>,
    /// Agents per bus connection (default 10).
    pub agents_per_connection: usize,
    /// Unacked deliveries each agent may hold (default 64: the real agent's, 2 × 32 workers).
    pub prefetch: u16,
    /// How often each agent heartbeats (default 1000 ms).
    pub heartbeat_interval_ms: u64,
    /// The apps each agent reports as installed, name → version (default `noop` 1).
    pub apps: BTreeMap<String, String>,
}

impl SimConfig {
    /// A fleet of `agents` on `bus_url`/`namespace` trusting the center's key, with the
    /// defaults above.
    pub fn new(
        bus_url: &str,
        namespace: &str,
        center_key_id: &str,
        center_public_key_hex: &str,
        agents: Vec<AgentId>,
    ) -> SimConfig {
        SimConfig {
            bus_url: bus_url.to_string(),
            namespace: namespace.to_string(),
            center_key_id: center_key_id.to_string(),
            center_public_key_hex: center_public_key_hex.to_string(),
            agents,
            agents_per_connection: 10,
            prefetch: 64,
            heartbeat_interval_ms: 1000,
            apps: [("noop".to_string(), "1".to_string())].into(),
        }
    }
}

/// What the agents of a fleet counted, summed over the fleet; readable while it runs.
#[derive(Debug, Default)]
pub struct SimCounters {
    /// Task ids answered, to catch an instruction delivered twice.
    seen: Mutex<HashSet<TaskId>>,
    published: AtomicU64,
    refused: AtomicU64,
    duplicates: AtomicU64,
}

impl SimCounters {
    /// Distinct instructions answered (or being answered).
    pub fn answered(&self) -> u64 {
        self.seen().len() as u64
    }

    /// Results the bus accepted.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Deliveries rejected: a bad signature, an undecodable body, an unknown kind, an empty
    /// pack or an instruction for another agent.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Instructions delivered again after they had been answered.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    fn seen(&self) -> MutexGuard<'_, HashSet<TaskId>> {
        // The set stays consistent whatever panicked while holding it: one insert or remove.
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running fleet of simulated agents.
pub struct SimFleet {
    counters: Arc<SimCounters>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// What the agents of one fleet share.
struct Fleet {
    verifier: InstructionVerifier,
    counters: Arc<SimCounters>,
    prefetch: u16,
    heartbeat_interval_ms: u64,
    apps: BTreeMap<String, String>,
}

impl SimFleet {
    /// Opens the bus connections and starts every agent on the current Tokio runtime. Fails
    /// when the center's key is not a valid Ed25519 public key or a connection cannot be
    /// opened; an agent that cannot consume its queue logs why and never comes online.
    pub fn start(config: SimConfig) -> anyhow::Result<SimFleet> {
        let mut verifier = InstructionVerifier::new();
        verifier.add_public_key_hex(&config.center_key_id, &config.center_public_key_hex)?;
        let counters = Arc::new(SimCounters::default());
        let fleet = Arc::new(Fleet {
            verifier,
            counters: counters.clone(),
            prefetch: config.prefetch,
            heartbeat_interval_ms: config.heartbeat_interval_ms,
            apps: config.apps,
        });
        let (stop, stopping) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for group in config.agents.chunks(config.agents_per_connection.max(1)) {
            let bus = bus::open(&config.bus_url, &config.namespace)?;
            for id in group {
                tasks.spawn(run_agent(
                    id.clone(),
                    bus.clone(),
                    fleet.clone(),
                    stopping.clone(),
                ));
            }
        }
        Ok(SimFleet {
            counters,
            stop,
            tasks,
        })
    }

    /// The fleet's counters, to read now or from another task.
    pub fn counters(&self) -> Arc<SimCounters> {
        self.counters.clone()
    }

    /// Stops every agent: each stops taking deliveries and heartbeating, and finishes the
    /// answers it has started.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// One simulated agent, until `stopping` turns true or its queue is closed.
async fn run_agent(
    id: AgentId,
    bus: SharedBus,
    fleet: Arc<Fleet>,
    mut stopping: watch::Receiver<bool>,
) {
    let spec = QueueSpec {
        name: bus.queue_name(&format!("agent.{id}")),
        bindings: vec![routing::agent(&id)],
        durable: true,
    };
    let mut consumer = match bus.consume(spec, fleet.prefetch).await {
        Ok(consumer) => consumer,
        Err(err) => {
            log::error!("simulated agent {id}: cannot consume its queue: {err}");
            return;
        }
    };
    // Heartbeats only once the queue exists, as the real agent does.
    let beats = tokio::spawn(heartbeats(
        id.clone(),
        bus.clone(),
        fleet.clone(),
        stopping.clone(),
    ));
    let mut answering = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopping.wait_for(|stop| *stop) => break,
            delivery = consumer.next() => match delivery {
                Some(delivery) => {
                    answering.spawn(answer(id.clone(), bus.clone(), fleet.clone(), delivery));
                }
                None => break,
            },
            Some(_) = answering.join_next(), if !answering.is_empty() => {}
        }
    }
    while answering.join_next().await.is_some() {}
    let _ = beats.await;
}

/// Answers one delivery the way the real agent does: a lone `instruction` or a signed
/// `instructions` pack, refused whole when its signature, body or any addressee is wrong; the
/// results of one delivery leave in one message (`result` for one, `results` for several), and
/// the delivery is acked once that message is published.
async fn answer(id: AgentId, bus: SharedBus, fleet: Arc<Fleet>, delivery: Delivery) {
    let counters = &fleet.counters;
    let message = &delivery.message;
    let verified = fleet
        .verifier
        .verify(
            &message.body,
            message.key_id.as_deref(),
            message.sig.as_deref(),
        )
        .is_ok();
    let instructions = match message.kind.as_str() {
        _ if !verified => None,
        kind::INSTRUCTION => wire::decode::<Instruction>(&message.body)
            .ok()
            .map(|instruction| vec![instruction]),
        kind::INSTRUCTIONS => wire::decode::<wire::InstructionBatch>(&message.body)
            .ok()
            .map(|batch| batch.instructions),
        _ => None,
    }
    .filter(|instructions| {
        !instructions.is_empty() && instructions.iter().all(|one| one.agent == id)
    });
    let Some(instructions) = instructions else {
        counters.refused.fetch_add(1, Ordering::Relaxed);
        delivery.reject().await;
        return;
    };
    let delivered = instructions.len();
    let fresh: Vec<Instruction> = {
        let mut seen = counters.seen();
        instructions
            .into_iter()
            .filter(|instruction| seen.insert(instruction.id.clone()))
            .collect()
    };
    counters
        .duplicates
        .fetch_add((delivered - fresh.len()) as u64, Ordering::Relaxed);
    if fresh.is_empty() {
        delivery.ack().await;
        return;
    }
    let now = now_unix_ms();
    let results: Vec<JobResult> = fresh
        .iter()
        .map(|instruction| JobResult {
            id: instruction.id.clone(),
            agent: id.clone(),
            task_type: instruction.task_type,
            mode: instruction.mode,
            app: instruction.app.clone(),
            func: instruction.func.clone(),
            worker_flag: 1,
            worker_message: RESULT_MESSAGE.to_string(),
            worker_costtime: 0,
            started_at: now,
            finished_at: now,
            error: String::new(),
        })
        .collect();
    let mut reply = match results.as_slice() {
        [one] => BusMessage::msgpack(kind::RESULT, wire::encode(one)),
        _ => BusMessage::msgpack(
            kind::RESULTS,
            wire::encode(&wire::ResultBatch {
                results: results.clone(),
            }),
        ),
    };
    reply.correlation_id = Some(
        message
            .correlation_id
            .clone()
            .unwrap_or_else(|| fresh[0].id.to_string()),
    );
    let destination = Destination::Topic(routing::CENTER_RESULT.to_string());
    match bus.publish(&destination, reply).await {
        Ok(()) => {
            counters
                .published
                .fetch_add(results.len() as u64, Ordering::Relaxed);
            delivery.ack().await;
        }
        Err(err) => {
            log::warn!(
                "simulated agent {id}: {} result(s) starting with {} not published: {err}",
                results.len(),
                fresh[0].id
            );
            {
                let mut seen = counters.seen();
                for instruction in &fresh {
                    seen.remove(&instruction.id);
                }
            }
            delivery.requeue().await;
        }
    }
}

async fn heartbeats(
    id: AgentId,
    bus: SharedBus,
    fleet: Arc<Fleet>,
    mut stopping: watch::Receiver<bool>,
) {
    let interval_ms = fleet.heartbeat_interval_ms;
    let mut ticker = tokio::time::interval(Duration::from_millis(interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let destination = Destination::Topic(routing::CENTER_HEARTBEAT.to_string());
    loop {
        tokio::select! {
            _ = stopping.wait_for(|stop| *stop) => return,
            _ = ticker.tick() => {}
        }
        let heartbeat = Heartbeat {
            agent: id.clone(),
            ip: id.to_string(),
            asset: ASSET.to_string(),
            version: VERSION.to_string(),
            apps: fleet.apps.clone(),
            sent_at: now_unix_ms(),
            interval_ms,
            packages: Default::default(),
            labels: Default::default(),
        };
        let mut message = BusMessage::msgpack(kind::HEARTBEAT, wire::encode(&heartbeat));
        message.expiration_ms = Some(interval_ms * 3);
        if let Err(err) = bus.publish(&destination, message).await {
            log::warn!("simulated agent {id}: heartbeat not sent: {err}");
        }
    }
}
