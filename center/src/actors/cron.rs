//! Cron: fires the center's crons (defined through the API or by `cron.d` files) as tasks of
//! type `cron`, and loads the definition files.
//!
//! Every center runs one and schedules every enabled cron; the database decides who fires:
//! each firing is claimed by a unique `(cron_id, fire_time)` row (see `store/crons.rs`), so a
//! firing runs once however many centers share the database. To publish on time, a firing is
//! claimed, stored and signed `prepare_ahead_ms` before its time, then published at its time.
//!
//! Misfires: when a cron is (re)loaded, firings between its `schedule_from` (the last settled
//! instant) and now were missed (no center ran). If the newest of them is less than
//! `misfire_threshold_s` old it runs once, at once; the others are skipped and logged.
//!
//! The actor keeps only a schedule in memory: the crons, their next fire time and the agent
//! addresses, reloaded from the database every `refresh_ms` and on every change made through
//! this center. Diesel calls run on the blocking pool. Results are not its business: TaskQueue
//! records them and notes them on the cron.

use crate::config::{CronConfig, RtConfig};
use crate::cron_files::{self, DefinitionError};
use crate::dispatch::{deadline, signed_message};
use crate::store::blocking::blocking;
use crate::store::{CronRow, Dispatch, FiringClaim, NewTask, Store, StoreError, SyncOutcome};
use actix::prelude::*;
use chrono_tz::Tz;
use elves_shared::bus::{Destination, SharedBus};
use elves_shared::crypto::InstructionSigner;
use elves_shared::quartz::{format_time, QuartzRule};
use elves_shared::time::now_unix_ms;
use elves_shared::wire::{routing, AgentId, Instruction, JobResult, TaskId, TaskType};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often due firings are looked for; small next to `prepare_ahead_ms`.
const TICK: Duration = Duration::from_millis(20);
/// Claims per database transaction. Large: a SQLite commit writes (and then checkpoints) every
/// page the transaction touched, and the firings of one fire time share many index pages, so
/// one transaction of 10,000 firings costs far less than five of 2,000.
const CLAIM_BATCH: usize = 10_000;
/// Firing rows are kept a day (or twice the misfire threshold if longer), then pruned.
const FIRINGS_KEPT_S: u64 = 86_400;
/// How often old firing rows are pruned.
const PRUNE_EVERY_MS: u64 = 60_000;

/// A cron was created, changed, started, stopped or deleted through this center: reload it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CronChanged(pub TaskId);

/// Read the definition files again and bring the database to match them.
#[derive(Message)]
#[rtype(result = "Result<ReloadReport, StoreError>")]
pub struct ReloadDefinitions;

/// What a reload did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadReport {
    pub dir: String,
    pub created: Vec<TaskId>,
    pub updated: Vec<TaskId>,
    pub removed: Vec<TaskId>,
    pub unchanged: usize,
    pub errors: Vec<DefinitionError>,
}

#[derive(Message)]
#[rtype(result = "CronState")]
pub struct GetState;

#[derive(Debug, Clone, MessageResponse, serde::Serialize)]
pub struct CronState {
    /// Enabled crons in this center's schedule.
    pub scheduled: usize,
    /// The next firing of any cron (`yyyy-mm-dd hh:mm:ss`), empty when none.
    pub next_fire_time: String,
    /// Firings this center claimed and published.
    pub fired: u64,
    /// Firings another center claimed first.
    pub claimed_elsewhere: u64,
    /// Missed firings skipped (older than the misfire threshold, or collapsed into one).
    pub misfires_skipped: u64,
    /// Firings that could not be published (recorded as failed).
    pub publish_failures: u64,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Tick;

#[derive(Message)]
#[rtype(result = "()")]
struct Refresh;

/// Crons and agents read from the database.
#[derive(Message)]
#[rtype(result = "()")]
struct Loaded {
    crons: Vec<CronRow>,
    /// `None` when only some crons were reloaded (the agents are unchanged).
    agents: Option<HashMap<String, AgentId>>,
    /// True for a full reload: crons absent from `crons` are gone.
    complete: bool,
    /// The ids asked for (a partial reload): those absent from `crons` are gone.
    asked: Vec<TaskId>,
}

/// One scheduled cron.
struct Entry {
    row: Arc<CronRow>,
    rule: QuartzRule,
    next: Option<u64>,
}

/// A firing to prepare: a cron at the revision this center loaded, and when.
struct Due {
    row: Arc<CronRow>,
    fire_time: u64,
}

#[derive(Default)]
struct Counters {
    fired: AtomicU64,
    claimed_elsewhere: AtomicU64,
    misfires_skipped: AtomicU64,
    publish_failures: AtomicU64,
}

pub struct Cron {
    store: Store,
    bus: SharedBus,
    signer: Arc<InstructionSigner>,
    instance: String,
    config: CronConfig,
    rt: RtConfig,
    zone: Tz,
    entries: HashMap<TaskId, Entry>,
    /// (next fire time, cron id), earliest first.
    schedule: BTreeSet<(u64, TaskId)>,
    /// Agent ip or id → agent id, from the agents table.
    agents: Arc<HashMap<String, AgentId>>,
    refreshing: bool,
    last_prune: u64,
    counters: Arc<Counters>,
    /// One claim transaction at a time from this center: concurrent writers on SQLite wait in
    /// the busy handler's sleeps, which costs far more than taking turns.
    claim_turn: Arc<tokio::sync::Mutex<()>>,
}

impl Cron {
    pub fn new(
        store: Store,
        bus: SharedBus,
        signer: Arc<InstructionSigner>,
        instance: String,
        config: CronConfig,
        rt: RtConfig,
    ) -> Self {
        let zone = config.zone();
        Cron {
            store,
            bus,
            signer,
            instance,
            config,
            rt,
            zone,
            entries: HashMap::new(),
            schedule: BTreeSet::new(),
            agents: Arc::new(HashMap::new()),
            refreshing: false,
            last_prune: 0,
            counters: Arc::new(Counters::default()),
            claim_turn: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    fn unschedule(&mut self, id: &TaskId) {
        if let Some(entry) = self.entries.remove(id) {
            if let Some(next) = entry.next {
                self.schedule.remove(&(next, id.clone()));
            }
        }
    }

    /// Puts a cron loaded from the database into the schedule, deciding what to do with the
    /// firings it missed.
    fn load(&mut self, row: CronRow, now: u64, due_now: &mut Vec<Due>) {
        let id = row.id.clone();
        if let Some(entry) = self.entries.get(&id) {
            if entry.row.revision == row.revision && entry.row.enabled == row.enabled {
                return;
            }
        }
        self.unschedule(&id);
        if !row.enabled {
            return;
        }
        let rule = match QuartzRule::parse(&row.definition.rule) {
            Ok(rule) => rule,
            Err(err) => {
                log::error!("cron {id}: not scheduled: {err}");
                return;
            }
        };
        let threshold_ms = self.config.misfire_threshold_s.saturating_mul(1000);
        let plan = plan_misfires(&rule, self.zone, row.schedule_from, now, threshold_ms);
        let row = Arc::new(row);
        if plan.skipped > 0 {
            self.counters
                .misfires_skipped
                .fetch_add(plan.skipped, Ordering::Relaxed);
            log::warn!(
                "cron {id}: {} missed firing(s) since {} skipped (misfire threshold {} s)",
                plan.skipped_text(),
                format_time(row.schedule_from, self.zone),
                self.config.misfire_threshold_s
            );
        }
        if let Some(fire_time) = plan.run_once {
            log::info!(
                "cron {id}: missed firing at {} runs now",
                format_time(fire_time, self.zone)
            );
            due_now.push(Due {
                row: row.clone(),
                fire_time,
            });
        } else if plan.skipped > 0 {
            let store = self.store.clone();
            let settled = now;
            actix_rt::spawn(async move {
                let cron_id = id.clone();
                if let Err(err) = blocking(move || store.skip_cron_firings(&cron_id, settled)).await
                {
                    log::warn!("cron {id}: recording skipped firings: {err}");
                }
            });
        }
        let id = row.id.clone();
        if let Some(next) = plan.next {
            self.schedule.insert((next, id.clone()));
        }
        self.entries.insert(
            id,
            Entry {
                row,
                rule,
                next: plan.next,
            },
        );
    }

    /// Takes every firing due before `until` off the schedule and schedules each cron's
    /// following firing.
    fn take_due(&mut self, until: u64) -> Vec<Due> {
        let mut due = Vec::new();
        while let Some((fire_time, id)) = self.schedule.first().cloned() {
            if fire_time > until {
                break;
            }
            self.schedule.pop_first();
            let Some(entry) = self.entries.get_mut(&id) else {
                continue;
            };
            due.push(Due {
                row: entry.row.clone(),
                fire_time,
            });
            entry.next = entry.rule.next_after_ms(fire_time, self.zone);
            if let Some(next) = entry.next {
                self.schedule.insert((next, id));
            }
        }
        due
    }

    fn preparer(&self) -> Preparer {
        Preparer {
            store: self.store.clone(),
            bus: self.bus.clone(),
            signer: self.signer.clone(),
            instance: self.instance.clone(),
            rt: self.rt.clone(),
            agents: self.agents.clone(),
            counters: self.counters.clone(),
            claim_turn: self.claim_turn.clone(),
        }
    }

    /// Claims, signs and (at their time) publishes `due`, off the actor's thread.
    fn fire(&self, due: Vec<Due>, ctx: &mut Context<Self>) {
        if due.is_empty() {
            return;
        }
        let mut by_time: BTreeMap<u64, Vec<Due>> = BTreeMap::new();
        for firing in due {
            by_time.entry(firing.fire_time).or_default().push(firing);
        }
        for (_, firings) in by_time {
            let mut firings = firings;
            while !firings.is_empty() {
                let rest = firings.split_off(firings.len().min(CLAIM_BATCH));
                let batch = std::mem::replace(&mut firings, rest);
                let preparer = self.preparer();
                let me = ctx.address();
                actix_rt::spawn(async move {
                    let stale = preparer.run(batch).await;
                    for id in stale {
                        me.do_send(CronChanged(id));
                    }
                });
            }
        }
    }
}

impl Actor for Cron {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if !self.config.enabled {
            log::info!("cron: disabled by configuration");
            return;
        }
        ctx.run_interval(TICK, |_, ctx| ctx.notify(Tick));
        ctx.run_interval(
            Duration::from_millis(self.config.refresh_ms.max(100)),
            |_, ctx| ctx.notify(Refresh),
        );
        // The files first, so that the first schedule has them.
        let me = ctx.address();
        actix_rt::spawn(async move {
            match me.send(ReloadDefinitions).await {
                Ok(Ok(report)) => log_report(&report),
                Ok(Err(err)) => log::error!("cron: loading definition files: {err}"),
                Err(err) => log::error!("cron: loading definition files: {err}"),
            }
            me.do_send(Refresh);
        });
    }
}

impl Supervised for Cron {
    fn restarting(&mut self, _: &mut Context<Self>) {
        log::warn!("cron: restarting; the schedule is rebuilt from the database");
        self.entries.clear();
        self.schedule.clear();
        self.refreshing = false;
    }
}

impl Handler<Tick> for Cron {
    type Result = ();

    fn handle(&mut self, _: Tick, ctx: &mut Context<Self>) {
        let until = now_unix_ms() + self.config.prepare_ahead_ms;
        let due = self.take_due(until);
        self.fire(due, ctx);
    }
}

impl Handler<Refresh> for Cron {
    type Result = ();

    fn handle(&mut self, _: Refresh, ctx: &mut Context<Self>) {
        if self.refreshing {
            return;
        }
        self.refreshing = true;
        let now = now_unix_ms();
        if now.saturating_sub(self.last_prune) > PRUNE_EVERY_MS {
            self.last_prune = now;
            let kept_ms = FIRINGS_KEPT_S
                .max(self.config.misfire_threshold_s.saturating_mul(2))
                .saturating_mul(1000);
            let store = self.store.clone();
            actix_rt::spawn(async move {
                let before = now.saturating_sub(kept_ms);
                match blocking(move || store.prune_cron_firings(before)).await {
                    Ok(0) => {}
                    Ok(n) => log::info!("cron: pruned {n} old firing rows"),
                    Err(err) => log::warn!("cron: pruning old firing rows: {err}"),
                }
            });
        }
        let store = self.store.clone();
        let me = ctx.address();
        actix_rt::spawn(async move {
            let loaded = blocking(move || {
                let crons = store.list_crons()?;
                let mut agents = HashMap::new();
                for agent in store.list_agents()? {
                    agents.insert(agent.ip.clone(), agent.id.clone());
                    agents.insert(agent.id.to_string(), agent.id);
                }
                Ok((crons, agents))
            })
            .await;
            match loaded {
                Ok((crons, agents)) => me.do_send(Loaded {
                    crons,
                    agents: Some(agents),
                    complete: true,
                    asked: Vec::new(),
                }),
                Err(err) => {
                    log::error!("cron: reading the crons: {err}");
                    me.do_send(Loaded {
                        crons: Vec::new(),
                        agents: None,
                        complete: false,
                        asked: Vec::new(),
                    });
                }
            }
        });
    }
}

impl Handler<CronChanged> for Cron {
    type Result = ();

    fn handle(&mut self, msg: CronChanged, ctx: &mut Context<Self>) {
        let store = self.store.clone();
        let me = ctx.address();
        let id = msg.0;
        actix_rt::spawn(async move {
            let asked = id.clone();
            match blocking(move || store.get_cron(&asked)).await {
                Ok(row) => me.do_send(Loaded {
                    crons: row.into_iter().collect(),
                    agents: None,
                    complete: false,
                    asked: vec![id],
                }),
                Err(err) => log::error!("cron {id}: reloading: {err}"),
            }
        });
    }
}

impl Handler<Loaded> for Cron {
    type Result = ();

    fn handle(&mut self, msg: Loaded, ctx: &mut Context<Self>) {
        if msg.complete || msg.agents.is_some() {
            self.refreshing = false;
        }
        if let Some(agents) = msg.agents {
            self.agents = Arc::new(agents);
        }
        let now = now_unix_ms();
        let present: BTreeSet<TaskId> = msg.crons.iter().map(|row| row.id.clone()).collect();
        let gone: Vec<TaskId> = if msg.complete {
            self.entries
                .keys()
                .filter(|id| !present.contains(*id))
                .cloned()
                .collect()
        } else {
            msg.asked
                .into_iter()
                .filter(|id| !present.contains(id))
                .collect()
        };
        for id in gone {
            self.unschedule(&id);
        }
        let mut due_now = Vec::new();
        for row in msg.crons {
            self.load(row, now, &mut due_now);
        }
        self.fire(due_now, ctx);
    }
}

impl Handler<ReloadDefinitions> for Cron {
    type Result = ResponseActFuture<Self, Result<ReloadReport, StoreError>>;

    fn handle(&mut self, _: ReloadDefinitions, _: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        let dir = self.config.dir.clone();
        let default_timeout_s = self.rt.default_timeout_s;
        let work = async move {
            blocking(move || {
                let definitions = cron_files::load_dir(&dir, default_timeout_s);
                let outcome: SyncOutcome = store.sync_file_crons(
                    &definitions.crons,
                    &definitions.broken_files,
                    &definitions.broken_ids,
                    now_unix_ms(),
                )?;
                Ok(ReloadReport {
                    dir: dir.display().to_string(),
                    created: outcome.created,
                    updated: outcome.updated,
                    removed: outcome.removed,
                    unchanged: outcome.unchanged,
                    errors: definitions.errors,
                })
            })
            .await
        };
        Box::pin(work.into_actor(self).map(|report, _, ctx| {
            if report.is_ok() {
                ctx.notify(Refresh);
            }
            report
        }))
    }
}

impl Handler<GetState> for Cron {
    type Result = CronState;

    fn handle(&mut self, _: GetState, _: &mut Context<Self>) -> CronState {
        let counters = &self.counters;
        CronState {
            scheduled: self.entries.len(),
            next_fire_time: self
                .schedule
                .first()
                .map(|(next, _)| format_time(*next, self.zone))
                .unwrap_or_default(),
            fired: counters.fired.load(Ordering::Relaxed),
            claimed_elsewhere: counters.claimed_elsewhere.load(Ordering::Relaxed),
            misfires_skipped: counters.misfires_skipped.load(Ordering::Relaxed),
            publish_failures: counters.publish_failures.load(Ordering::Relaxed),
        }
    }
}

/// Set by the processes that own their signals (`elves-center`, `elves center`): a SIGHUP
/// there reloads the definition files. Tests and embedded centers leave SIGHUP alone.
static SIGHUP_RELOAD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes centers started from now on reload their definition files on SIGHUP.
pub fn enable_sighup_reload() {
    SIGHUP_RELOAD.store(true, Ordering::Relaxed);
}

/// Reloads the definition files on every SIGHUP, if [`enable_sighup_reload`] was called.
/// Must run inside the actix system.
pub fn reload_on_sighup(cron: Addr<Cron>) {
    if !SIGHUP_RELOAD.load(Ordering::Relaxed) {
        return;
    }
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(err) => {
            log::error!("cron: cannot listen for SIGHUP: {err}");
            return;
        }
    };
    actix_rt::spawn(async move {
        while hangups.recv().await.is_some() {
            log::info!("cron: SIGHUP: reloading the definition files");
            match cron.send(ReloadDefinitions).await {
                Ok(Ok(report)) => log_report(&report),
                Ok(Err(err)) => log::error!("cron: reloading definition files: {err}"),
                Err(err) => log::error!("cron: reloading definition files: {err}"),
            }
        }
    });
}

/// Notes a cron task's result on its cron (blocking; TaskQueue calls it once the result is
/// stored). Results of other tasks, and of agent-local crons, change nothing.
pub fn note_result(store: &Store, result: &JobResult) {
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

pub fn log_report(report: &ReloadReport) {
    log::info!(
        "cron: definition files in {}: {} created, {} updated, {} removed, {} unchanged",
        report.dir,
        report.created.len(),
        report.updated.len(),
        report.removed.len(),
        report.unchanged
    );
    for error in &report.errors {
        log::error!("cron: definition file {error}");
    }
}

/// What to do with the firings a cron missed before `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MisfirePlan {
    /// The missed firing that runs once, now.
    pub run_once: Option<u64>,
    /// How many missed firings are skipped (counted up to a bound).
    pub skipped: u64,
    /// True when the count stopped at its bound.
    pub skipped_more: bool,
    /// The first firing after `now`.
    pub next: Option<u64>,
}

impl MisfirePlan {
    fn skipped_text(&self) -> String {
        if self.skipped_more {
            format!("more than {}", self.skipped)
        } else {
            self.skipped.to_string()
        }
    }
}

/// Missed firings counted one by one at most; beyond, the count says "more than".
const MISFIRE_COUNT_LIMIT: u64 = 10_000;

/// Decides about the firings after `schedule_from` and up to `now`: the newest runs once if
/// it is less than `threshold_ms` old, all others are skipped.
pub fn plan_misfires(
    rule: &QuartzRule,
    zone: Tz,
    schedule_from: u64,
    now: u64,
    threshold_ms: u64,
) -> MisfirePlan {
    let mut plan = MisfirePlan {
        run_once: None,
        skipped: 0,
        skipped_more: false,
        next: None,
    };
    let mut cursor = schedule_from;
    let mut newest_missed = None;
    loop {
        match rule.next_after_ms(cursor, zone) {
            Some(fire_time) if fire_time <= now => {
                if newest_missed.is_some() {
                    plan.skipped += 1;
                }
                newest_missed = Some(fire_time);
                cursor = fire_time;
                if plan.skipped >= MISFIRE_COUNT_LIMIT {
                    // Jump close to now rather than walk years of every-second firings.
                    plan.skipped_more = true;
                    let jump = now.saturating_sub(threshold_ms.saturating_add(1));
                    if jump > cursor {
                        cursor = jump;
                        newest_missed = None;
                        plan.skipped += 1;
                    }
                }
            }
            Some(fire_time) => {
                plan.next = Some(fire_time);
                break;
            }
            None => break,
        }
    }
    if let Some(missed) = newest_missed {
        if now.saturating_sub(missed) < threshold_ms {
            plan.run_once = Some(missed);
        } else {
            plan.skipped += 1;
        }
    }
    plan
}

/// Claims one batch of firings of the same fire time, signs what it won, and publishes at the
/// fire time.
struct Preparer {
    store: Store,
    bus: SharedBus,
    signer: Arc<InstructionSigner>,
    instance: String,
    rt: RtConfig,
    agents: Arc<HashMap<String, AgentId>>,
    counters: Arc<Counters>,
    claim_turn: Arc<tokio::sync::Mutex<()>>,
}

impl Preparer {
    /// Returns the crons that turned out stale (changed, stopped or deleted elsewhere).
    async fn run(self, batch: Vec<Due>) -> Vec<TaskId> {
        let now = now_unix_ms();
        // Addresses the cached agents do not know (an agent newer than the last refresh) are
        // looked up in the database; an address nobody knows is taken as the agent id.
        let unknown: BTreeSet<String> = batch
            .iter()
            .map(|due| due.row.definition.ip.clone())
            .filter(|address| !self.agents.contains_key(address))
            .collect();
        let mut agents: HashMap<String, AgentId> = HashMap::new();
        if !unknown.is_empty() {
            let store = self.store.clone();
            let looked_up = blocking(move || {
                let mut found = HashMap::new();
                for address in unknown {
                    if let Some(row) = store.get_agent_by_ip_or_id(&address)? {
                        found.insert(address, row.id);
                    }
                }
                Ok(found)
            })
            .await;
            match looked_up {
                Ok(found) => agents = found,
                Err(err) => log::warn!("cron: looking up agents: {err}"),
            }
        }
        let mut claims = Vec::with_capacity(batch.len());
        for due in &batch {
            let definition = &due.row.definition;
            let known = self
                .agents
                .get(&definition.ip)
                .or_else(|| agents.get(&definition.ip));
            let agent = match known {
                Some(agent) => agent.clone(),
                None => match AgentId::parse(&definition.ip) {
                    Ok(agent) => agent,
                    Err(_) => {
                        log::error!("cron {}: bad agent {:?}", due.row.id, definition.ip);
                        continue;
                    }
                },
            };
            claims.push(FiringClaim {
                cron_id: due.row.id.clone(),
                revision: due.row.revision,
                fire_time: due.fire_time,
                task: NewTask {
                    id: TaskId::random(),
                    queue_id: None,
                    task_type: TaskType::Cron,
                    agent,
                    app: definition.app.clone(),
                    func: definition.func.clone(),
                    param: definition.param.clone(),
                    timeout_s: definition.timeout_s,
                    proxy: definition.proxy.clone(),
                    mode: definition.mode,
                    depend_task_id: None,
                    created_at: now,
                },
                dispatch: Dispatch {
                    center_instance: self.instance.clone(),
                    dispatched_at: due.fire_time,
                    deadline: deadline(due.fire_time, definition.timeout_s, &self.rt),
                },
            });
        }
        let store = self.store.clone();
        let instance = self.instance.clone();
        let signer = self.signer.clone();
        // Claim and sign on the blocking pool: for thousands of firings both take a while.
        let turn = self.claim_turn.clone().lock_owned().await;
        let prepared = blocking(move || {
            let claiming = std::time::Instant::now();
            let outcome = store.claim_cron_firings(&instance, &claims, now);
            drop(turn);
            let outcome = outcome?;
            log::debug!(
                "cron: claimed {} of {} firing(s) in {:?}",
                outcome.won.len(),
                claims.len(),
                claiming.elapsed()
            );
            let n_lost = claims.len() - outcome.won.len();
            let messages: Vec<(Instruction, elves_shared::bus::BusMessage)> = outcome
                .won
                .iter()
                .filter_map(|index| claims.get(*index))
                .map(|claim| {
                    let instruction = instruction_of(claim);
                    let message = signed_message(&signer, &instruction, None);
                    (instruction, message)
                })
                .collect();
            Ok((messages, outcome.stale, n_lost))
        })
        .await;
        let (messages, stale, n_lost) = match prepared {
            Ok(prepared) => prepared,
            Err(err) => {
                log::error!("cron: claiming {} firing(s): {err}", batch.len());
                return Vec::new();
            }
        };
        let n_elsewhere = n_lost.saturating_sub(stale.len());
        self.counters
            .claimed_elsewhere
            .fetch_add(n_elsewhere as u64, Ordering::Relaxed);
        let Some(fire_time) = batch.first().map(|due| due.fire_time) else {
            return stale;
        };
        let wait = fire_time.saturating_sub(now_unix_ms());
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        let publishes = messages.into_iter().map(|(instruction, message)| {
            let bus = self.bus.clone();
            async move {
                let destination = Destination::Topic(routing::agent(&instruction.agent));
                match bus.publish(&destination, message).await {
                    Ok(()) => None,
                    Err(err) => Some((instruction, err.to_string())),
                }
            }
        });
        let outcomes = futures::future::join_all(publishes).await;
        let n_sent = outcomes.iter().filter(|outcome| outcome.is_none()).count();
        self.counters
            .fired
            .fetch_add(n_sent as u64, Ordering::Relaxed);
        let failures: Vec<JobResult> = outcomes
            .into_iter()
            .flatten()
            .map(|(instruction, err)| {
                log::warn!(
                    "cron task {}: could not send to {}: {err}",
                    instruction.id,
                    instruction.agent
                );
                crate::dispatch::undelivered(&instruction, &err)
            })
            .collect();
        if !failures.is_empty() {
            self.counters
                .publish_failures
                .fetch_add(failures.len() as u64, Ordering::Relaxed);
            let store = self.store.clone();
            let stored = blocking(move || {
                let now = now_unix_ms();
                for failure in &failures {
                    store.record_result(failure, now)?;
                    store.record_cron_result(failure)?;
                }
                Ok(())
            })
            .await;
            if let Err(err) = stored {
                log::error!("cron: recording undelivered firings: {err}");
            }
        }
        stale
    }
}

fn instruction_of(claim: &FiringClaim) -> Instruction {
    let task = &claim.task;
    Instruction {
        id: task.id.clone(),
        agent: task.agent.clone(),
        task_type: TaskType::Cron,
        mode: task.mode,
        app: task.app.clone(),
        func: task.func.clone(),
        param: task.param.clone(),
        timeout: task.timeout_s,
        proxy: task.proxy.clone(),
        issued_at: claim.dispatch.dispatched_at,
        deadline: claim.dispatch.deadline,
    }
}

/// The result of a firing that could not be published.
#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000;
    /// 2024-01-01 00:00:00 UTC.
    const T0: u64 = 1_704_067_200_000;

    fn every_second() -> QuartzRule {
        QuartzRule::parse("0/1 * * * * ?").unwrap()
    }

    #[test]
    fn nothing_missed_means_the_next_firing() {
        let plan = plan_misfires(&every_second(), Tz::UTC, T0, T0 + 500, 60 * SECOND);
        assert_eq!(
            plan,
            MisfirePlan {
                run_once: None,
                skipped: 0,
                skipped_more: false,
                next: Some(T0 + SECOND),
            }
        );
    }

    #[test]
    fn the_newest_missed_firing_within_the_threshold_runs_once() {
        // Down for 5.5 s: firings at +1 … +5 were missed; +5 runs, four are skipped.
        let plan = plan_misfires(&every_second(), Tz::UTC, T0, T0 + 5_500, 60 * SECOND);
        assert_eq!(plan.run_once, Some(T0 + 5 * SECOND));
        assert_eq!(plan.skipped, 4);
        assert_eq!(plan.next, Some(T0 + 6 * SECOND));
    }

    #[test]
    fn a_missed_firing_older_than_the_threshold_is_skipped() {
        let hourly = QuartzRule::parse("0 0 * * * ?").unwrap();
        // Last settled at 00:00; now 01:02: the 01:00 firing is 2 minutes old.
        let now = T0 + 62 * 60 * SECOND;
        let plan = plan_misfires(&hourly, Tz::UTC, T0, now, 60 * SECOND);
        assert_eq!(plan.run_once, None);
        assert_eq!(plan.skipped, 1);
        assert_eq!(plan.next, Some(T0 + 2 * 3_600 * SECOND));
        // With a 5-minute threshold it runs.
        let plan = plan_misfires(&hourly, Tz::UTC, T0, now, 300 * SECOND);
        assert_eq!(plan.run_once, Some(T0 + 3_600 * SECOND));
        assert_eq!(plan.skipped, 0);
    }

    #[test]
    fn years_of_missed_firings_are_not_walked_one_by_one() {
        let now = T0 + 365 * 86_400 * SECOND;
        let plan = plan_misfires(&every_second(), Tz::UTC, T0, now, 10 * SECOND);
        assert!(plan.skipped_more);
        assert_eq!(plan.run_once, Some(now));
        assert_eq!(plan.next, Some(now + SECOND));
    }
}
