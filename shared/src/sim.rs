//! Simulated agents: a fleet of light agents in one process that speak the real protocol
//! without running anything, so that a bench or `elves sim` loads a center with thousands of
//! agents from one machine and measures the center, not the host's fork/exec rate.
//!
//! It is the one implementation: the benches (`tests/benches/`) and the `elves sim` command
//! both use it. It lives in `elves-shared` behind the `sim` feature because it needs only what
//! this crate has (the bus, the wire types, the Ed25519 check) and both users already depend
//! on it; the center and the agent are built without it.
//!
//! Each simulated agent
//! - consumes its own durable queue `<namespace>.agent.<id>` (declared as the real agent
//!   declares it, [`QueueSpec::agent`]), with the real agent's default prefetch, and only then
//!   starts heartbeating to `center.heartbeat` (every [`SimConfig::heartbeat_interval_ms`],
//!   expiring after three intervals, reporting [`SimConfig::apps`] as installed and
//!   [`SimConfig::labels`]);
//! - verifies every delivery's Ed25519 signature with the center's public key and decodes a
//!   lone `instruction` or an `instructions` pack; a delivery whose signature, body or any
//!   addressee is wrong is rejected whole and counted as refused;
//! - answers each instruction it has not seen before with a result after a run time drawn from
//!   [`SimConfig::run_time`]: successful (`worker_flag` 1, message [`RESULT_MESSAGE`]) or,
//!   with probability [`SimConfig::failure_rate`], failed (`worker_flag` 0, message
//!   [`FAILURE_MESSAGE`]). Instructions that take no time leave together, the results of one
//!   delivery in one message to `center.result` (`result` for one, `results` for several), or
//!   an RT result to the instruction's `reply_to`;
//!   others leave one by one as they finish. The delivery is acked once all are published; an
//!   instruction seen before is counted as a duplicate and not answered again; a result that
//!   could not be published is forgotten and its delivery requeued, so that the redelivery is
//!   answered;
//! - when it is one of the [`SimConfig::away`] fraction, goes away now and then: stops
//!   consuming (its unacked deliveries go back to its queue) and heartbeating for a while,
//!   then comes back.
//!
//! Agents share bus connections, [`SimConfig::agents_per_connection`] each, and start over
//! [`SimConfig::start_jitter_ms`]. Start a fleet with [`SimFleet::start`] inside a Tokio
//! runtime, read its [`SimCounters`] at any time, and stop it with [`SimFleet::stop`].

use crate::bus::{self, BusError, BusMessage, Delivery, Destination, QueueSpec, SharedBus};
use crate::crypto::InstructionVerifier;
use crate::time::now_unix_ms;
use crate::wire::{self, kind, routing, AgentId, Heartbeat, Instruction, JobResult, TaskId};
use rand::Rng;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The `worker_message` of every successful result a simulated agent sends.
pub const RESULT_MESSAGE: &str = "ok";
/// The `worker_message` of a result the failure rate turned into a failure.
pub const FAILURE_MESSAGE: &str = "simulated failure";
/// The `asset` and `version` a simulated agent reports in its heartbeats.
const ASSET: &str = "simulated";
const VERSION: &str = "simulated";
/// The first and the longest pause between attempts to consume, as the real agent's.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);
/// Heartbeats older than this many intervals are of no use to a center (as the real agent's).
const HEARTBEAT_TTL_INTERVALS: u64 = 3;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("center key: {0}")]
    CenterKey(String),
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// How long a simulated task runs before its result is sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RunTime {
    /// Always this many milliseconds (`0`: answer at once).
    Fixed(u64),
    /// Uniform between the two bounds, in milliseconds, inclusive.
    Uniform { min_ms: u64, max_ms: u64 },
    /// Exponential with this mean, in milliseconds (many short tasks, a long tail), capped at
    /// 20 means so that one draw cannot hold a delivery for ever.
    Exponential { mean_ms: u64 },
}

impl RunTime {
    pub fn sample(&self, rng: &mut impl Rng) -> Duration {
        let ms = match *self {
            RunTime::Fixed(ms) => ms,
            RunTime::Uniform { min_ms, max_ms } => rng.gen_range(min_ms..=max_ms),
            RunTime::Exponential { mean_ms } => {
                let uniform: f64 = rng.gen_range(f64::EPSILON..1.0);
                let draw = -(mean_ms as f64) * uniform.ln();
                draw.min(mean_ms as f64 * 20.0) as u64
            }
        };
        Duration::from_millis(ms)
    }
}

impl FromStr for RunTime {
    type Err = String;

    /// `50` (fixed), `10..200` (uniform), `exp:50` (exponential, mean 50), all milliseconds.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let number = |part: &str| {
            part.trim()
                .parse::<u64>()
                .map_err(|_| format!("run time {text:?}: {part:?} is not a number of milliseconds"))
        };
        if let Some(mean) = text.strip_prefix("exp:") {
            return Ok(RunTime::Exponential {
                mean_ms: number(mean)?,
            });
        }
        if let Some((min, max)) = text.split_once("..") {
            let (min_ms, max_ms) = (number(min)?, number(max)?);
            if min_ms > max_ms {
                return Err(format!(
                    "run time {text:?}: the lower bound is above the upper"
                ));
            }
            return Ok(RunTime::Uniform { min_ms, max_ms });
        }
        number(text).map(RunTime::Fixed)
    }
}

impl fmt::Display for RunTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunTime::Fixed(ms) => write!(f, "{ms}"),
            RunTime::Uniform { min_ms, max_ms } => write!(f, "{min_ms}..{max_ms}"),
            RunTime::Exponential { mean_ms } => write!(f, "exp:{mean_ms}"),
        }
    }
}

/// A part of the fleet that goes away now and then and comes back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Away {
    /// The share of the agents that do (0 to 1); which ones is fixed at start, spread evenly.
    pub fraction: f64,
    /// How long such an agent stays between absences: uniform between half and one and a half
    /// of this, so that they do not all leave together.
    pub online_ms: u64,
    /// How long each absence lasts.
    pub offline_ms: u64,
}

/// What a fleet of simulated agents is.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The bus to speak on (`amqp://…`, or `inproc`), and the namespace of the center's.
    pub bus_url: String,
    pub namespace: String,
    /// The TLS files of an `amqps://` bus (default none: the system's CAs).
    pub bus_tls: crate::tls::ClientTls,
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
    /// The labels each agent reports (default none).
    pub labels: BTreeMap<String, String>,
    /// How long each task runs (default 0: answered at once).
    pub run_time: RunTime,
    /// The share of results that report failure (0 to 1, default 0).
    pub failure_rate: f64,
    /// Agents that go away and come back (default none).
    pub away: Option<Away>,
    /// Each agent starts after a delay drawn uniformly below this (default 0: all at once).
    pub start_jitter_ms: u64,
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
            bus_tls: crate::tls::ClientTls::default(),
            center_key_id: center_key_id.to_string(),
            center_public_key_hex: center_public_key_hex.to_string(),
            agents,
            agents_per_connection: 10,
            prefetch: 64,
            heartbeat_interval_ms: 1000,
            apps: [("noop".to_string(), "1".to_string())].into(),
            labels: BTreeMap::new(),
            run_time: RunTime::Fixed(0),
            failure_rate: 0.0,
            away: None,
            start_jitter_ms: 0,
        }
    }
}

/// `count` agent ids `<prefix>-<n>`, n from 1, zero-padded to the same width.
pub fn agent_ids(prefix: &str, count: usize) -> Result<Vec<AgentId>, wire::IdError> {
    let width = count.to_string().len();
    (1..=count)
        .map(|n| AgentId::parse(&format!("{prefix}-{n:0width$}")))
        .collect()
}

/// What the agents of a fleet counted, summed over the fleet; readable while it runs.
#[derive(Debug, Default)]
pub struct SimCounters {
    /// Task ids answered, to catch an instruction delivered twice.
    seen: Mutex<HashSet<TaskId>>,
    /// Results published, by agent.
    published_by: Mutex<HashMap<AgentId, u64>>,
    published: AtomicU64,
    failed: AtomicU64,
    refused: AtomicU64,
    duplicates: AtomicU64,
    connected: AtomicU64,
    away: AtomicU64,
    absences: AtomicU64,
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

    /// Results the bus accepted, by the agent that sent them.
    pub fn published_by_agent(&self) -> HashMap<AgentId, u64> {
        self.published_by
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Of those, results that reported failure.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
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

    /// Agents consuming their queue now.
    pub fn connected(&self) -> u64 {
        self.connected.load(Ordering::Relaxed)
    }

    /// Agents away now (see [`Away`]).
    pub fn away(&self) -> u64 {
        self.away.load(Ordering::Relaxed)
    }

    /// Absences begun so far.
    pub fn absences(&self) -> u64 {
        self.absences.load(Ordering::Relaxed)
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
    labels: BTreeMap<String, String>,
    run_time: RunTime,
    failure_rate: f64,
}

impl SimFleet {
    /// Opens the bus connections and starts every agent on the current Tokio runtime. Fails
    /// when the center's key is not a valid Ed25519 public key or a bus URL is bad; an agent
    /// that cannot consume its queue yet retries with backoff until the fleet stops.
    pub fn start(config: SimConfig) -> Result<SimFleet, SimError> {
        let (url, namespace) = (config.bus_url.clone(), config.namespace.clone());
        let tls = config.bus_tls.clone();
        SimFleet::start_with(config, || bus::open_with_tls(&url, &namespace, &tls))
    }

    /// As [`SimFleet::start`], every agent on `bus` (its URL and namespace in `config` are
    /// not used): for a fleet on the in-process bus of the center it loads.
    pub fn start_on_bus(config: SimConfig, bus: SharedBus) -> Result<SimFleet, SimError> {
        SimFleet::start_with(config, || Ok(bus.clone()))
    }

    fn start_with(
        config: SimConfig,
        mut open_bus: impl FnMut() -> Result<SharedBus, BusError>,
    ) -> Result<SimFleet, SimError> {
        let mut verifier = InstructionVerifier::new();
        verifier
            .add_public_key_hex(&config.center_key_id, &config.center_public_key_hex)
            .map_err(|err| SimError::CenterKey(err.to_string()))?;
        let counters = Arc::new(SimCounters::default());
        let fleet = Arc::new(Fleet {
            verifier,
            counters: counters.clone(),
            prefetch: config.prefetch,
            heartbeat_interval_ms: config.heartbeat_interval_ms.max(1),
            apps: config.apps,
            labels: config.labels,
            run_time: config.run_time,
            failure_rate: config.failure_rate.clamp(0.0, 1.0),
        });
        let (stop, stopping) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let total = config.agents.len();
        let mut rng = rand::thread_rng();
        let mut index = 0;
        for group in config.agents.chunks(config.agents_per_connection.max(1)) {
            let bus = open_bus()?;
            for id in group {
                let start_delay = Duration::from_millis(match config.start_jitter_ms {
                    0 => 0,
                    jitter => rng.gen_range(0..jitter),
                });
                let away = config
                    .away
                    .filter(|away| goes_away(index, total, away.fraction));
                index += 1;
                tasks.spawn(run_agent(
                    id.clone(),
                    bus.clone(),
                    fleet.clone(),
                    start_delay,
                    away,
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

/// Whether agent `index` of `total` is one of the `fraction` that go away: spread evenly, so
/// that exactly `round(fraction × total)` do.
fn goes_away(index: usize, total: usize, fraction: f64) -> bool {
    let wanted = (fraction.clamp(0.0, 1.0) * total as f64).round() as usize;
    (index + 1) * wanted / total.max(1) > index * wanted / total.max(1)
}

/// One simulated agent, until `stopping` turns true: sessions of consuming and heartbeating,
/// with absences between them when it is one that goes away.
async fn run_agent(
    id: AgentId,
    bus: SharedBus,
    fleet: Arc<Fleet>,
    start_delay: Duration,
    away: Option<Away>,
    mut stopping: watch::Receiver<bool>,
) {
    if pause(start_delay, &mut stopping).await {
        return;
    }
    loop {
        let until = away.map(|away| {
            let half = away.online_ms / 2;
            let stay = rand::thread_rng().gen_range(half..=half + away.online_ms);
            Instant::now() + Duration::from_millis(stay)
        });
        if !session(&id, &bus, &fleet, until, stopping.clone()).await {
            return;
        }
        let Some(away) = away else { return };
        if *stopping.borrow() {
            return;
        }
        fleet.counters.away.fetch_add(1, Ordering::Relaxed);
        fleet.counters.absences.fetch_add(1, Ordering::Relaxed);
        let stopped = pause(Duration::from_millis(away.offline_ms), &mut stopping).await;
        fleet.counters.away.fetch_sub(1, Ordering::Relaxed);
        if stopped {
            return;
        }
    }
}

/// Sleeps `delay`; true when the fleet was stopped meanwhile.
async fn pause(delay: Duration, stopping: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = stopping.wait_for(|stop| *stop) => true,
        () = tokio::time::sleep(delay) => false,
    }
}

/// Consumes the agent's queue and heartbeats until `until` (never, when `None`) or until the
/// fleet stops. False when the agent cannot go on (the fleet stopped before its queue could be
/// consumed, or the queue was closed).
async fn session(
    id: &AgentId,
    bus: &SharedBus,
    fleet: &Arc<Fleet>,
    until: Option<Instant>,
    mut stopping: watch::Receiver<bool>,
) -> bool {
    let Some(mut consumer) = consume(id, bus, fleet, &mut stopping).await else {
        return false;
    };
    fleet.counters.connected.fetch_add(1, Ordering::Relaxed);
    // Heartbeats only once the queue exists, as the real agent does; they end with the session.
    let (end_beats, beats_ending) = watch::channel(false);
    let beats = tokio::spawn(heartbeats(
        id.clone(),
        bus.clone(),
        fleet.clone(),
        beats_ending,
    ));
    let session_end = async {
        match until {
            Some(until) => tokio::time::sleep_until(until).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(session_end);
    let mut answering = JoinSet::new();
    let go_on = loop {
        tokio::select! {
            _ = stopping.wait_for(|stop| *stop) => break true,
            () = &mut session_end => break true,
            delivery = consumer.next() => match delivery {
                Some(delivery) => {
                    answering.spawn(answer(id.clone(), bus.clone(), fleet.clone(), delivery));
                }
                None => break false,
            },
            Some(_) = answering.join_next(), if !answering.is_empty() => {}
        }
    };
    let _ = end_beats.send(true);
    while answering.join_next().await.is_some() {}
    // Dropping the consumer closes its channel: what it had not acked goes back to the queue.
    drop(consumer);
    fleet.counters.connected.fetch_sub(1, Ordering::Relaxed);
    let _ = beats.await;
    go_on
}

/// Starts consuming the agent's queue, retrying with jittered backoff as the real agent does
/// (a broker taking a fleet's connections at once resets some of them); `None` once the fleet
/// stops.
async fn consume(
    id: &AgentId,
    bus: &SharedBus,
    fleet: &Fleet,
    stopping: &mut watch::Receiver<bool>,
) -> Option<bus::Consumer> {
    let mut backoff = FIRST_RETRY;
    loop {
        match bus
            .consume(QueueSpec::agent(bus.as_ref(), id), fleet.prefetch)
            .await
        {
            Ok(consumer) => return Some(consumer),
            Err(err) => log::warn!("simulated agent {id}: cannot consume its queue yet: {err}"),
        }
        if pause(bus::jittered(backoff), stopping).await {
            return None;
        }
        backoff = (backoff * 2).min(MAX_RETRY);
    }
}

/// Answers one delivery the way the real agent does: a lone `instruction` or a signed
/// `instructions` pack, refused whole when its signature, body or any addressee is wrong; the
/// delivery is acked once every result is published.
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
    let correlation_id = message
        .correlation_id
        .clone()
        .unwrap_or_else(|| fresh[0].id.to_string());
    // RT results go to the waiting center's reply queue, the others to `center.result`, as
    // the real agent sends them; an RT instruction travels alone.
    let destination = match &message.reply_to {
        Some(reply_to)
            if !reply_to.is_empty()
                && fresh.iter().all(|one| one.task_type == wire::TaskType::Rt) =>
        {
            Destination::Queue(reply_to.clone())
        }
        _ => Destination::Topic(routing::CENTER_RESULT.to_string()),
    };
    let runs: Vec<(Instruction, Duration, bool)> = {
        let mut rng = rand::thread_rng();
        fresh
            .into_iter()
            .map(|instruction| {
                let run_time = fleet.run_time.sample(&mut rng);
                let fails = rng.gen_bool(fleet.failure_rate);
                (instruction, run_time, fails)
            })
            .collect()
    };
    let published = if runs.iter().all(|(_, run_time, _)| run_time.is_zero()) {
        let results: Vec<JobResult> = runs
            .iter()
            .map(|(instruction, _, fails)| result_of(&id, instruction, *fails))
            .collect();
        match publish_results(&bus, &destination, &results, &correlation_id).await {
            Ok(()) => vec![true; results.len()],
            Err(err) => {
                log::warn!(
                    "simulated agent {id}: {} result(s) starting with {} not published: {err}",
                    results.len(),
                    results[0].id
                );
                vec![false; results.len()]
            }
        }
    } else {
        let finishing = runs.iter().map(|(instruction, run_time, fails)| {
            let (bus, id, correlation_id, destination) = (&bus, &id, &correlation_id, &destination);
            async move {
                tokio::time::sleep(*run_time).await;
                let result = result_of(id, instruction, *fails);
                match publish_results(
                    bus,
                    destination,
                    std::slice::from_ref(&result),
                    correlation_id,
                )
                .await
                {
                    Ok(()) => true,
                    Err(err) => {
                        log::warn!(
                            "simulated agent {id}: result of {} not published: {err}",
                            result.id
                        );
                        false
                    }
                }
            }
        });
        futures::future::join_all(finishing).await
    };
    let mut all_published = true;
    let n_published = published.iter().filter(|published| **published).count() as u64;
    if n_published > 0 {
        *counters
            .published_by
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id.clone())
            .or_default() += n_published;
    }
    for ((instruction, _, fails), published) in runs.iter().zip(published) {
        if published {
            counters.published.fetch_add(1, Ordering::Relaxed);
            if *fails {
                counters.failed.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            all_published = false;
            counters.seen().remove(&instruction.id);
        }
    }
    if all_published {
        delivery.ack().await;
    } else {
        delivery.requeue().await;
    }
}

fn result_of(id: &AgentId, instruction: &Instruction, fails: bool) -> JobResult {
    let now = now_unix_ms();
    JobResult {
        id: instruction.id.clone(),
        agent: id.clone(),
        task_type: instruction.task_type,
        mode: instruction.mode,
        app: instruction.app.clone(),
        func: instruction.func.clone(),
        worker_flag: if fails { 0 } else { 1 },
        worker_message: if fails {
            FAILURE_MESSAGE
        } else {
            RESULT_MESSAGE
        }
        .to_string(),
        worker_costtime: 0,
        started_at: now,
        finished_at: now,
        error: String::new(),
    }
}

/// One message to `destination`: `result` for one, `results` for several.
async fn publish_results(
    bus: &SharedBus,
    destination: &Destination,
    results: &[JobResult],
    correlation_id: &str,
) -> Result<(), BusError> {
    let mut reply = match results {
        [one] => BusMessage::msgpack(kind::RESULT, wire::encode(one)),
        _ => BusMessage::msgpack(
            kind::RESULTS,
            wire::encode(&wire::ResultBatch {
                results: results.to_vec(),
            }),
        ),
    };
    reply.correlation_id = Some(correlation_id.to_string());
    bus.publish(destination, reply).await
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
    let mut last_failed = false;
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
            labels: fleet.labels.clone(),
        };
        let mut message = BusMessage::msgpack(kind::HEARTBEAT, wire::encode(&heartbeat));
        // As the real agent's: in the broker's memory only.
        message.transient = true;
        message.expiration_ms = Some(interval_ms * HEARTBEAT_TTL_INTERVALS);
        match bus.publish(&destination, message).await {
            Ok(()) => last_failed = false,
            // Once per outage per agent, not every beat: a broker restart under 10,000
            // agents would otherwise print 10,000 lines a beat.
            Err(err) if !last_failed => {
                log::warn!("simulated agent {id}: heartbeat not sent: {err}");
                last_failed = true;
            }
            Err(err) => log::debug!("simulated agent {id}: heartbeat not sent: {err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_times_parse_and_print_back() {
        for text in ["0", "50", "10..200", "exp:50"] {
            let parsed: RunTime = text.parse().unwrap();
            assert_eq!(parsed.to_string(), text);
        }
        assert!("200..10".parse::<RunTime>().is_err());
        assert!("fast".parse::<RunTime>().is_err());
        assert!("exp:".parse::<RunTime>().is_err());
    }

    #[test]
    fn samples_stay_in_their_bounds() {
        let mut rng = rand::thread_rng();
        let uniform = RunTime::Uniform {
            min_ms: 10,
            max_ms: 20,
        };
        let exponential = RunTime::Exponential { mean_ms: 5 };
        for _ in 0..1000 {
            let ms = uniform.sample(&mut rng).as_millis();
            assert!((10..=20).contains(&ms));
            assert!(exponential.sample(&mut rng).as_millis() <= 100);
        }
        assert_eq!(RunTime::Fixed(7).sample(&mut rng), Duration::from_millis(7));
    }

    #[test]
    fn the_away_fraction_is_exact_and_spread() {
        let away: Vec<usize> = (0..100).filter(|i| goes_away(*i, 100, 0.1)).collect();
        assert_eq!(away.len(), 10);
        assert!(away.windows(2).all(|pair| pair[1] - pair[0] == 10));
        assert_eq!((0..7).filter(|i| goes_away(*i, 7, 0.0)).count(), 0);
        assert_eq!((0..7).filter(|i| goes_away(*i, 7, 1.0)).count(), 7);
    }

    #[test]
    fn ids_are_numbered_with_one_width() {
        let ids = agent_ids("sim", 12).unwrap();
        assert_eq!(ids.len(), 12);
        assert_eq!(ids[0].as_str(), "sim-01");
        assert_eq!(ids[11].as_str(), "sim-12");
        assert!(agent_ids("bad prefix", 1).is_err());
    }
}
