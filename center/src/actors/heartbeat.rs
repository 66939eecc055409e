//! Heartbeat: the registry of agents, from their heartbeats: presence is decided here, in
//! memory, and nowhere else.
//! It answers "may I send work to this agent now?" without waiting out a task's timeout.
//! Root feeds it batches of heartbeats from the bus; it records them in memory first and
//! answers from memory, and writes the agents' rows to the database only in a periodic
//! background flush (one transaction for every agent heard from since the last flush), so a
//! slow or absent database never delays a heartbeat or a lookup, nor makes a live agent look
//! offline. At start it reads the agents' rows back, so that a restarted center knows the
//! fleet before the first beat arrives.

use crate::store::blocking::blocking;
use crate::store::{AgentRow, Store};
use actix::prelude::*;
use elves_shared::time::now_unix_ms;
use elves_shared::wire::{AgentId, Heartbeat as HeartbeatMessage};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

/// Rows written by one flush at most; the rest wait for the next one. Bounds the length of
/// one transaction (10,000 agents at one beat a second fit in one).
const FLUSH_MAX_ROWS: usize = 10_000;

/// Intake lags kept for [`HeartbeatState::intake_lag_ms`]: the latest this many heartbeats.
const LAG_SAMPLES: usize = 8_192;

/// Heartbeats that arrived together (at the center's clock `received_at`, unix ms).
#[derive(Message)]
#[rtype(result = "()")]
pub struct HeartbeatsReceived {
    pub heartbeats: Vec<HeartbeatMessage>,
    pub received_at: u64,
}

/// The center's heartbeat intake lost the broker (at `at`, unix ms): from then on silence
/// says nothing about the agents, so nobody goes offline for it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct IntakeLost {
    pub at: u64,
}

/// The intake consumes again (at `at`): the time it could not hear is credited to every agent
/// it knew, so that each has its full window again to be heard.
#[derive(Message)]
#[rtype(result = "()")]
pub struct IntakeBack {
    pub at: u64,
}

/// Where can work for `address` (an agent ip or id) go, at the center's clock `now`?
#[derive(Message)]
#[rtype(result = "AgentLookup")]
pub struct LookupAgent {
    pub address: String,
    pub now: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, MessageResponse)]
pub enum AgentLookup {
    Unknown,
    Offline { agent: AgentId, last_seen: u64 },
    Online { agent: AgentId },
}

#[derive(Message)]
#[rtype(result = "HeartbeatState")]
pub struct GetState {
    pub now: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, MessageResponse, serde::Serialize)]
pub struct HeartbeatState {
    pub agents_known: usize,
    pub agents_online: usize,
    /// Online agents by id, with the apps they reported.
    pub online: BTreeMap<String, BTreeMap<String, String>>,
    /// Agents heard from whose rows are not written yet.
    pub rows_pending: usize,
    /// From an agent's send to its presence recorded here, over the latest heartbeats (the
    /// agents' clocks against the center's, so meaningful on one machine or synced clocks).
    pub intake_lag_ms: IntakeLag,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct IntakeLag {
    pub samples: usize,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

impl IntakeLag {
    fn of(samples: &VecDeque<u64>) -> IntakeLag {
        let mut sorted: Vec<u64> = samples.iter().copied().collect();
        sorted.sort_unstable();
        let at = |pct: usize| {
            sorted
                .get((sorted.len().saturating_sub(1)) * pct / 100)
                .copied()
                .unwrap_or(0)
        };
        IntakeLag {
            samples: sorted.len(),
            p50: at(50),
            p99: at(99),
            max: sorted.last().copied().unwrap_or(0),
        }
    }
}

/// A flush finished; the rows it could not write come back.
#[derive(Message)]
#[rtype(result = "()")]
struct Flushed {
    unwritten: Vec<AgentRow>,
}

/// The rows read at start.
#[derive(Message)]
#[rtype(result = "()")]
struct Seeded(Vec<AgentRow>);

struct AgentEntry {
    last: HeartbeatMessage,
    last_seen: u64,
}

/// What the registry knows of every agent (its latest row as memory has it), shared read-only
/// with the code that needs presence off this actor: target resolution, which must see an
/// agent from its first heartbeat rather than from the next flush, and the batch runner's
/// steps, which run on blocking threads and cannot ask an actor.
#[derive(Clone, Default)]
pub struct PresenceView(Arc<RwLock<HashMap<AgentId, AgentRow>>>);

impl PresenceView {
    /// The agent's last heartbeat and interval, when memory knows it.
    pub fn last_seen(&self, agent: &str) -> Option<(u64, u64)> {
        let id = AgentId::parse(agent).ok()?;
        let agents = self.0.read().unwrap_or_else(PoisonError::into_inner);
        agents
            .get(&id)
            .map(|row| (row.last_heartbeat_at, row.interval_ms))
    }

    /// Every agent memory knows, as rows.
    pub fn rows(&self) -> Vec<AgentRow> {
        let agents = self.0.read().unwrap_or_else(PoisonError::into_inner);
        agents.values().cloned().collect()
    }

    fn put(&self, row: AgentRow) {
        let mut agents = self.0.write().unwrap_or_else(PoisonError::into_inner);
        agents.insert(row.id.clone(), row);
    }

    /// What [`IntakeBack`] credits to every agent, for the readers of this view too.
    fn credit(&self, deaf_since: u64, deaf_for: u64) {
        let mut agents = self.0.write().unwrap_or_else(PoisonError::into_inner);
        for row in agents.values_mut() {
            row.last_heartbeat_at = credit_deaf_time(row.last_heartbeat_at, deaf_since, deaf_for);
        }
    }

    fn clear(&self) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// Where the registry's rows go, and how often.
struct Persistence {
    store: Store,
    flush_every: Duration,
}

pub struct Heartbeat {
    agents: HashMap<AgentId, AgentEntry>,
    /// Agents are addressed by ip as well as by id; the latest heartbeat owns an ip.
    by_ip: HashMap<String, AgentId>,
    offline_after_missed_beats: u32,
    persistence: Option<Persistence>,
    /// The latest row of each agent heard from since the last flush: at most one per agent.
    pending: HashMap<AgentId, AgentRow>,
    flushing: bool,
    /// Whether the last flush failed, to log an outage once rather than every flush.
    flush_failing: bool,
    lags_ms: VecDeque<u64>,
    presence: PresenceView,
    /// Since when the intake cannot hear (its consumer lost the broker), if it cannot.
    deaf_since: Option<u64>,
}

impl Heartbeat {
    /// A registry in memory only (tests).
    pub fn new(offline_after_missed_beats: u32) -> Self {
        Heartbeat {
            agents: HashMap::new(),
            by_ip: HashMap::new(),
            offline_after_missed_beats,
            persistence: None,
            pending: HashMap::new(),
            flushing: false,
            flush_failing: false,
            lags_ms: VecDeque::with_capacity(LAG_SAMPLES),
            presence: PresenceView::default(),
            deaf_since: None,
        }
    }

    /// Keeps `presence` up to date with this registry.
    pub fn sharing(mut self, presence: PresenceView) -> Self {
        self.presence = presence;
        self
    }

    /// A registry that reads the agents' rows at start and writes them every `flush_every`.
    pub fn with_store(
        offline_after_missed_beats: u32,
        store: Store,
        flush_every: Duration,
    ) -> Self {
        Heartbeat {
            persistence: Some(Persistence { store, flush_every }),
            ..Heartbeat::new(offline_after_missed_beats)
        }
    }

    fn resolve(&self, address: &str) -> Option<&AgentEntry> {
        if let Some(entry) = AgentId::parse(address)
            .ok()
            .and_then(|id| self.agents.get(&id))
        {
            return Some(entry);
        }
        self.by_ip.get(address).and_then(|id| self.agents.get(id))
    }

    fn is_online(&self, entry: &AgentEntry, now: u64) -> bool {
        is_online(
            entry.last_seen,
            entry.last.interval_ms,
            self.offline_after_missed_beats,
            judged_at(self.deaf_since, now),
        )
    }

    /// Records one heartbeat unless a later one of the same agent is already known.
    fn record(&mut self, heartbeat: HeartbeatMessage, received_at: u64) {
        let agent = heartbeat.agent.clone();
        match self.agents.get(&agent) {
            Some(known) if known.last_seen > received_at => return,
            Some(_) => {}
            None => log::info!("agent {agent}: first heartbeat (ip {})", heartbeat.ip),
        }
        let row = AgentRow::from_heartbeat(&heartbeat, received_at);
        if self.persistence.is_some() {
            self.pending.insert(agent.clone(), row.clone());
        }
        self.presence.put(row);
        self.by_ip.insert(heartbeat.ip.clone(), agent.clone());
        self.agents.insert(
            agent,
            AgentEntry {
                last: heartbeat,
                last_seen: received_at,
            },
        );
    }

    /// Starts writing the pending rows unless a flush is still running: one at a time, so
    /// that a slow database sees one transaction, not a pile of them.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        let Some(persistence) = &self.persistence else {
            return;
        };
        if self.flushing || self.pending.is_empty() {
            return;
        }
        let rows: Vec<AgentRow> = if self.pending.len() <= FLUSH_MAX_ROWS {
            self.pending.drain().map(|(_, row)| row).collect()
        } else {
            let ids: Vec<AgentId> = self.pending.keys().take(FLUSH_MAX_ROWS).cloned().collect();
            ids.iter()
                .filter_map(|id| self.pending.remove(id))
                .collect()
        };
        self.flushing = true;
        let store = persistence.store.clone();
        let addr = ctx.address();
        actix_rt::spawn(async move {
            let count = rows.len();
            let unwritten = match blocking({
                let store = store.clone();
                let rows = rows.clone();
                move || store.upsert_agents(&rows)
            })
            .await
            {
                Ok(()) => {
                    log::debug!("heartbeat: {count} agent row(s) written");
                    Vec::new()
                }
                Err(err) => {
                    log::debug!("heartbeat: {count} agent row(s) not written: {err}");
                    rows
                }
            };
            addr.do_send(Flushed { unwritten });
        });
    }

    fn seed(&mut self, ctx: &mut Context<Self>) {
        let Some(persistence) = &self.persistence else {
            return;
        };
        let store = persistence.store.clone();
        let addr = ctx.address();
        actix_rt::spawn(async move {
            // Rows older than this cannot be online under any interval an agent may choose
            // (a day), so they need not be in memory: a lookup of one falls back to its row.
            let since = now_unix_ms().saturating_sub(24 * 3_600_000);
            match blocking(move || store.agents_seen_since(since)).await {
                Ok(rows) => addr.do_send(Seeded(rows)),
                Err(err) => log::warn!(
                    "heartbeat: agents not read from the database ({err}); they reappear with their next heartbeat"
                ),
            }
        });
    }
}

impl Actor for Heartbeat {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(persistence) = &self.persistence {
            ctx.run_interval(persistence.flush_every, |heartbeat, ctx| {
                heartbeat.flush(ctx)
            });
        }
        self.seed(ctx);
    }
}

impl Supervised for Heartbeat {
    fn restarting(&mut self, _: &mut Context<Self>) {
        log::warn!("heartbeat: restarting; agents are read back from the database");
        self.agents.clear();
        self.presence.clear();
        self.by_ip.clear();
        self.pending.clear();
        self.flushing = false;
        self.lags_ms.clear();
    }
}

impl Handler<HeartbeatsReceived> for Heartbeat {
    type Result = ();

    fn handle(&mut self, msg: HeartbeatsReceived, _: &mut Context<Self>) {
        // The one clock read outside the messages: how late presence is, for the figures.
        let recorded_at = now_unix_ms();
        for heartbeat in msg.heartbeats {
            if self.lags_ms.len() == LAG_SAMPLES {
                self.lags_ms.pop_front();
            }
            self.lags_ms
                .push_back(recorded_at.saturating_sub(heartbeat.sent_at));
            self.record(heartbeat, msg.received_at);
        }
    }
}

impl Handler<IntakeLost> for Heartbeat {
    type Result = ();

    fn handle(&mut self, msg: IntakeLost, _: &mut Context<Self>) {
        if self.deaf_since.is_none() {
            log::warn!("heartbeat: intake lost the broker; agents are not judged until it is back");
            self.deaf_since = Some(msg.at);
        }
    }
}

impl Handler<IntakeBack> for Heartbeat {
    type Result = ();

    fn handle(&mut self, msg: IntakeBack, _: &mut Context<Self>) {
        let Some(since) = self.deaf_since.take() else {
            return;
        };
        let deaf_for = msg.at.saturating_sub(since);
        log::info!(
            "heartbeat: intake back after {deaf_for} ms; that time is credited to every agent"
        );
        for entry in self.agents.values_mut() {
            entry.last_seen = credit_deaf_time(entry.last_seen, since, deaf_for);
        }
        self.presence.credit(since, deaf_for);
    }
}

impl Handler<Flushed> for Heartbeat {
    type Result = ();

    fn handle(&mut self, msg: Flushed, _: &mut Context<Self>) {
        self.flushing = false;
        if msg.unwritten.is_empty() {
            if self.flush_failing {
                log::info!("heartbeat: agent rows are written again");
            }
            self.flush_failing = false;
            return;
        }
        if !self.flush_failing {
            log::warn!(
                "heartbeat: {} agent row(s) not written to the database; presence is kept in memory and the rows are retried",
                msg.unwritten.len()
            );
        }
        self.flush_failing = true;
        // A newer heartbeat that arrived meanwhile supersedes the row that failed.
        for row in msg.unwritten {
            self.pending.entry(row.id.clone()).or_insert(row);
        }
    }
}

impl Handler<Seeded> for Heartbeat {
    type Result = ();

    fn handle(&mut self, msg: Seeded, _: &mut Context<Self>) {
        let count = msg.0.len();
        for row in msg.0 {
            // A heartbeat that arrived before the rows were read is newer than its row.
            if self.agents.contains_key(&row.id) {
                continue;
            }
            let heartbeat = heartbeat_of_row(&row);
            self.by_ip.entry(row.ip.clone()).or_insert(row.id.clone());
            self.presence.put(row.clone());
            self.agents.insert(
                row.id,
                AgentEntry {
                    last: heartbeat,
                    last_seen: row.last_heartbeat_at,
                },
            );
        }
        log::info!("heartbeat: {count} agent(s) read from the database");
    }
}

impl Handler<LookupAgent> for Heartbeat {
    type Result = AgentLookup;

    fn handle(&mut self, msg: LookupAgent, _: &mut Context<Self>) -> AgentLookup {
        match self.resolve(&msg.address) {
            None => AgentLookup::Unknown,
            Some(entry) if self.is_online(entry, msg.now) => AgentLookup::Online {
                agent: entry.last.agent.clone(),
            },
            Some(entry) => AgentLookup::Offline {
                agent: entry.last.agent.clone(),
                last_seen: entry.last_seen,
            },
        }
    }
}

impl Handler<GetState> for Heartbeat {
    type Result = HeartbeatState;

    fn handle(&mut self, msg: GetState, _: &mut Context<Self>) -> HeartbeatState {
        let online: BTreeMap<String, BTreeMap<String, String>> = self
            .agents
            .iter()
            .filter(|(_, entry)| self.is_online(entry, msg.now))
            .map(|(id, entry)| (id.to_string(), entry.last.apps.clone()))
            .collect();
        HeartbeatState {
            agents_known: self.agents.len(),
            agents_online: online.len(),
            online,
            rows_pending: self.pending.len(),
            intake_lag_ms: IntakeLag::of(&self.lags_ms),
        }
    }
}

/// What a stored row says of an agent's last heartbeat (what the row does not keep is empty).
fn heartbeat_of_row(row: &AgentRow) -> HeartbeatMessage {
    HeartbeatMessage {
        agent: row.id.clone(),
        ip: row.ip.clone(),
        asset: row.asset.clone(),
        version: row.version.clone(),
        apps: row.apps.clone(),
        sent_at: row.last_heartbeat_at,
        interval_ms: row.interval_ms,
        packages: BTreeMap::new(),
        labels: row.labels.clone(),
    }
}

/// The instant an agent is judged at: `now`, or the instant the intake went deaf while it is.
fn judged_at(deaf_since: Option<u64>, now: u64) -> u64 {
    deaf_since.map_or(now, |since| now.min(since))
}

/// `last_seen` moved on by the time the intake could not hear, when it was seen before then.
fn credit_deaf_time(last_seen: u64, deaf_since: u64, deaf_for: u64) -> u64 {
    if last_seen <= deaf_since {
        last_seen.saturating_add(deaf_for)
    } else {
        last_seen
    }
}

/// An agent is online until it has missed `missed_beats` of its own intervals.
pub fn is_online(last_seen: u64, interval_ms: u64, missed_beats: u32, now: u64) -> bool {
    let allowance = interval_ms.max(1).saturating_mul(u64::from(missed_beats));
    now.saturating_sub(last_seen) <= allowance
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_until_missed_beats() {
        assert!(is_online(1_000, 100, 3, 1_300));
        assert!(!is_online(1_000, 100, 3, 1_301));
        assert!(
            is_online(1_000, 100, 3, 900),
            "a clock step backwards is not offline"
        );
    }

    #[actix_rt::test]
    async fn lookup_by_id_and_ip() {
        let addr = Heartbeat::new(3).start();
        let heartbeat = HeartbeatMessage {
            agent: AgentId::parse("a1").unwrap(),
            ip: "10.1.1.1".into(),
            asset: String::new(),
            version: "0".into(),
            apps: BTreeMap::new(),
            sent_at: 0,
            interval_ms: 100,
            packages: BTreeMap::new(),
            labels: BTreeMap::new(),
        };
        let unknown = addr
            .send(LookupAgent {
                address: "a1".into(),
                now: 0,
            })
            .await
            .unwrap();
        assert_eq!(unknown, AgentLookup::Unknown);
        addr.send(HeartbeatsReceived {
            heartbeats: vec![heartbeat],
            received_at: 1_000,
        })
        .await
        .unwrap();
        let by_ip = addr
            .send(LookupAgent {
                address: "10.1.1.1".into(),
                now: 1_100,
            })
            .await
            .unwrap();
        assert!(matches!(by_ip, AgentLookup::Online { .. }));
        let later = addr
            .send(LookupAgent {
                address: "a1".into(),
                now: 2_000,
            })
            .await
            .unwrap();
        assert!(matches!(
            later,
            AgentLookup::Offline {
                last_seen: 1_000,
                ..
            }
        ));
    }

    fn beat(agent: &str, interval_ms: u64, sent_at: u64) -> HeartbeatMessage {
        HeartbeatMessage {
            agent: AgentId::parse(agent).unwrap(),
            ip: format!("ip-{agent}"),
            asset: String::new(),
            version: "1".into(),
            apps: BTreeMap::new(),
            sent_at,
            interval_ms,
            packages: BTreeMap::new(),
            labels: BTreeMap::new(),
        }
    }

    #[actix_rt::test]
    async fn presence_comes_first_rows_follow_and_a_new_registry_reads_them_back() {
        let database = crate::store::testing::TestDatabase::sqlite().unwrap();
        let store = Store::open(&database.url).unwrap();
        let now = now_unix_ms();
        let addr =
            Heartbeat::with_store(3, store.clone(), Duration::from_millis(3_600_000)).start();
        let beats: Vec<HeartbeatMessage> = (0..50)
            .map(|n| beat(&format!("a{n}"), 60_000, now))
            .collect();
        addr.send(HeartbeatsReceived {
            heartbeats: beats,
            received_at: now,
        })
        .await
        .unwrap();
        // Online at once, though the hour-long flush interval has written nothing yet.
        let lookup = addr
            .send(LookupAgent {
                address: "ip-a7".into(),
                now,
            })
            .await
            .unwrap();
        assert!(matches!(lookup, AgentLookup::Online { .. }), "{lookup:?}");
        let state = addr.send(GetState { now }).await.unwrap();
        assert_eq!(state.agents_online, 50);
        assert_eq!(state.rows_pending, 50);
        assert_eq!(state.intake_lag_ms.samples, 50);
        assert!(store.agents_seen_since(0).unwrap().is_empty());

        // A registry that flushes often writes every row in its flush.
        let flushing = Heartbeat::with_store(3, store.clone(), Duration::from_millis(20)).start();
        flushing
            .send(HeartbeatsReceived {
                heartbeats: (0..50)
                    .map(|n| beat(&format!("a{n}"), 60_000, now))
                    .collect(),
                received_at: now,
            })
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.agents_seen_since(0).unwrap().len() < 50 {
            assert!(std::time::Instant::now() < deadline, "rows never written");
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            flushing.send(GetState { now }).await.unwrap().rows_pending,
            0
        );

        // A registry started later (a restarted center) knows them before any heartbeat.
        let restarted = Heartbeat::with_store(3, store, Duration::from_millis(3_600_000)).start();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let state = restarted.send(GetState { now }).await.unwrap();
            if state.agents_online == 50 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "rows never read back");
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[actix_rt::test]
    async fn an_older_heartbeat_does_not_roll_presence_back() {
        let addr = Heartbeat::new(3).start();
        for received_at in [2_000, 1_000] {
            addr.send(HeartbeatsReceived {
                heartbeats: vec![beat("a1", 100, received_at)],
                received_at,
            })
            .await
            .unwrap();
        }
        let lookup = addr
            .send(LookupAgent {
                address: "a1".into(),
                now: 2_250,
            })
            .await
            .unwrap();
        assert!(matches!(lookup, AgentLookup::Online { .. }), "{lookup:?}");
    }

    #[test]
    fn deaf_time_neither_judges_nor_counts() {
        assert_eq!(judged_at(None, 5_000), 5_000);
        assert_eq!(judged_at(Some(3_000), 5_000), 3_000);
        assert_eq!(judged_at(Some(6_000), 5_000), 5_000);
        assert_eq!(credit_deaf_time(1_000, 3_000, 60_000), 61_000);
        assert_eq!(credit_deaf_time(4_000, 3_000, 60_000), 4_000);
    }

    #[actix_rt::test]
    async fn a_broker_outage_marks_nobody_offline() {
        let addr = Heartbeat::new(3).start();
        addr.send(HeartbeatsReceived {
            heartbeats: vec![beat("a1", 100, 1_000)],
            received_at: 1_000,
        })
        .await
        .unwrap();
        addr.send(IntakeLost { at: 1_200 }).await.unwrap();
        let online_at = |now: u64| {
            let addr = addr.clone();
            async move {
                matches!(
                    addr.send(LookupAgent {
                        address: "a1".into(),
                        now,
                    })
                    .await
                    .unwrap(),
                    AgentLookup::Online { .. }
                )
            }
        };
        assert!(online_at(60_000).await, "deaf: silence says nothing");
        addr.send(IntakeBack { at: 61_200 }).await.unwrap();
        assert!(online_at(61_250).await, "back: the window starts again");
        assert!(!online_at(61_400).await, "and runs out as usual");
    }
}
