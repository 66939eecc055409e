//! Cron: fires the center's crons (defined through the API or by `cron.d` files) as tasks of
//! type `cron`, and loads the definition files.
//!
//! Every center runs one and schedules every enabled cron; the database decides who fires:
//! each firing is claimed by a unique `(cron_id, fire_time)` row (see `store/crons.rs`), so a
//! firing runs once however many centers share the database. To publish on time, a firing is
//! claimed, stored and signed `prepare_ahead_ms` before its time, then published at its time
//! (`preparer`).
//!
//! Misfires: when a cron is (re)loaded, firings between its `schedule_from` (the last settled
//! instant) and now were missed (no center ran). If the newest of them is less than
//! `misfire_threshold_s` old it runs once, at once; the others are skipped and logged
//! (`misfire`).
//!
//! The actor keeps only a schedule in memory: the crons, their next fire time and the agent
//! addresses, reloaded from the database every `refresh_ms` and on every change made through
//! this center. The definition files are read by `reload`. Diesel calls run on the blocking
//! pool. Results are not its business: TaskQueue records them and notes them on the cron.

mod misfire;
mod preparer;
mod reload;

pub use misfire::{plan_misfires, MisfirePlan};
pub use reload::{
    enable_sighup_reload, log_report, reload_on_sighup, ReloadDefinitions, ReloadReport,
};

use crate::config::{CronConfig, RtConfig};
use crate::store::blocking::blocking;
use crate::store::{CronRow, Store};
use actix::prelude::*;
use chrono_tz::Tz;
use elves_shared::bus::SharedBus;
use elves_shared::crypto::InstructionSigner;
use elves_shared::quartz::{format_time, QuartzRule};
use elves_shared::time::now_unix_ms;
use elves_shared::wire::{AgentId, TaskId};
use preparer::{batches, Due, Preparer, CLAIM_BATCH};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often due firings are looked for; small next to `prepare_ahead_ms`.
const TICK: Duration = Duration::from_millis(20);
/// Firing rows are kept a day (or twice the misfire threshold if longer), then pruned.
const FIRINGS_KEPT_S: u64 = 86_400;
/// How often old firing rows are pruned.
const PRUNE_EVERY_MS: u64 = 60_000;

/// A cron was created, changed, started, stopped or deleted through this center: reload it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CronChanged(pub TaskId);

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

#[derive(Default)]
struct Counters {
    fired: AtomicU64,
    claimed_elsewhere: AtomicU64,
    misfires_skipped: AtomicU64,
    publish_failures: AtomicU64,
}

/// One scheduled cron.
struct Entry {
    row: Arc<CronRow>,
    rule: QuartzRule,
    next: Option<u64>,
}

/// The enabled crons and when each fires next.
#[derive(Default)]
struct Schedule {
    entries: HashMap<TaskId, Entry>,
    /// (next fire time, cron id), earliest first.
    queue: BTreeSet<(u64, TaskId)>,
}

impl Schedule {
    /// True when `row` is scheduled at its revision and state already.
    fn holds(&self, row: &CronRow) -> bool {
        self.entries.get(&row.id).is_some_and(|entry| {
            entry.row.revision == row.revision && entry.row.enabled == row.enabled
        })
    }

    fn insert(&mut self, row: Arc<CronRow>, rule: QuartzRule, next: Option<u64>) {
        let id = row.id.clone();
        if let Some(next) = next {
            self.queue.insert((next, id.clone()));
        }
        self.entries.insert(id, Entry { row, rule, next });
    }

    fn remove(&mut self, id: &TaskId) {
        if let Some(entry) = self.entries.remove(id) {
            if let Some(next) = entry.next {
                self.queue.remove(&(next, id.clone()));
            }
        }
    }

    /// The scheduled crons that a reload says are gone: for a complete reload those absent
    /// from `crons`, else those of `asked` absent from it.
    fn gone(&self, crons: &[CronRow], complete: bool, asked: Vec<TaskId>) -> Vec<TaskId> {
        let present: BTreeSet<&TaskId> = crons.iter().map(|row| &row.id).collect();
        if complete {
            self.entries
                .keys()
                .filter(|id| !present.contains(id))
                .cloned()
                .collect()
        } else {
            asked
                .into_iter()
                .filter(|id| !present.contains(id))
                .collect()
        }
    }

    /// Takes every firing due before `until` off the schedule and schedules each cron's
    /// following firing.
    fn take_due(&mut self, until: u64, zone: Tz) -> Vec<Due> {
        let mut due = Vec::new();
        while let Some((fire_time, id)) = self.queue.first().cloned() {
            if fire_time > until {
                break;
            }
            self.queue.pop_first();
            let Some(entry) = self.entries.get_mut(&id) else {
                continue;
            };
            due.push(Due {
                row: entry.row.clone(),
                fire_time,
            });
            entry.next = entry.rule.next_after_ms(fire_time, zone);
            if let Some(next) = entry.next {
                self.queue.insert((next, id));
            }
        }
        due
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn first_fire_time(&self) -> Option<u64> {
        self.queue.first().map(|(next, _)| *next)
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.queue.clear();
    }
}

/// How long firing rows are kept: a day, or twice the misfire threshold if longer.
fn firings_kept_ms(misfire_threshold_s: u64) -> u64 {
    FIRINGS_KEPT_S
        .max(misfire_threshold_s.saturating_mul(2))
        .saturating_mul(1000)
}

pub struct Cron {
    store: Store,
    bus: SharedBus,
    signer: Arc<InstructionSigner>,
    instance: String,
    config: CronConfig,
    rt: RtConfig,
    zone: Tz,
    schedule: Schedule,
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
            schedule: Schedule::default(),
            agents: Arc::new(HashMap::new()),
            refreshing: false,
            last_prune: 0,
            counters: Arc::new(Counters::default()),
            claim_turn: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Puts a cron loaded from the database into the schedule, deciding what to do with the
    /// firings it missed.
    fn load(&mut self, row: CronRow, now: u64, due_now: &mut Vec<Due>) {
        if self.schedule.holds(&row) {
            return;
        }
        let id = row.id.clone();
        self.schedule.remove(&id);
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
        self.schedule.insert(row, rule, plan.next);
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
        for batch in batches(due, CLAIM_BATCH) {
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
        self.schedule.clear();
        self.refreshing = false;
    }
}

impl Handler<Tick> for Cron {
    type Result = ();

    fn handle(&mut self, _: Tick, ctx: &mut Context<Self>) {
        let until = now_unix_ms() + self.config.prepare_ahead_ms;
        let due = self.schedule.take_due(until, self.zone);
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
            let kept_ms = firings_kept_ms(self.config.misfire_threshold_s);
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
        for id in self.schedule.gone(&msg.crons, msg.complete, msg.asked) {
            self.schedule.remove(&id);
        }
        let mut due_now = Vec::new();
        for row in msg.crons {
            self.load(row, now, &mut due_now);
        }
        self.fire(due_now, ctx);
    }
}

impl Handler<GetState> for Cron {
    type Result = CronState;

    fn handle(&mut self, _: GetState, _: &mut Context<Self>) -> CronState {
        let counters = &self.counters;
        CronState {
            scheduled: self.schedule.len(),
            next_fire_time: self
                .schedule
                .first_fire_time()
                .map(|next| format_time(next, self.zone))
                .unwrap_or_default(),
            fired: counters.fired.load(Ordering::Relaxed),
            claimed_elsewhere: counters.claimed_elsewhere.load(Ordering::Relaxed),
            misfires_skipped: counters.misfires_skipped.load(Ordering::Relaxed),
            publish_failures: counters.publish_failures.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{CronDefinition, CronSource};
    use elves_shared::wire::Mode;

    const SECOND: u64 = 1_000;
    /// 2024-01-01 00:00:00 UTC.
    pub(super) const T0: u64 = 1_704_067_200_000;

    /// An enabled API cron `n` on `agent`, settled up to [`T0`].
    pub(super) fn cron_row(n: u64, rule: &str, agent: &str) -> CronRow {
        CronRow {
            id: TaskId::parse(&format!("{n:016x}")).unwrap(),
            definition: CronDefinition {
                ip: agent.into(),
                app: "backup".into(),
                func: "run".into(),
                param: "{\"target\":\"/srv\"}".into(),
                rule: rule.into(),
                mode: Mode::P,
                timeout_s: 30,
                proxy: "proxy-1".into(),
            },
            enabled: true,
            source: CronSource::Api,
            auth_id: "ops".into(),
            revision: 1,
            created_at: T0,
            updated_at: T0,
            schedule_from: T0,
            last_fire_time: None,
            last_exec_time: None,
            last_exec_result: None,
        }
    }

    fn scheduled(schedule: &mut Schedule, row: CronRow, next: Option<u64>) {
        let rule = QuartzRule::parse(&row.definition.rule).unwrap();
        schedule.insert(Arc::new(row), rule, next);
    }

    fn fired(due: &[Due]) -> Vec<(u64, u64)> {
        due.iter()
            .map(|due| {
                let n = u64::from_str_radix(due.row.id.as_str(), 16).unwrap();
                (n, due.fire_time)
            })
            .collect()
    }

    #[test]
    fn due_firings_come_earliest_first_and_each_cron_is_rescheduled() {
        let mut schedule = Schedule::default();
        scheduled(
            &mut schedule,
            cron_row(1, "0/2 * * * * ?", "a"),
            Some(T0 + 2 * SECOND),
        );
        scheduled(
            &mut schedule,
            cron_row(2, "0/3 * * * * ?", "a"),
            Some(T0 + 3 * SECOND),
        );
        let due = schedule.take_due(T0 + 4 * SECOND, Tz::UTC);
        assert_eq!(
            fired(&due),
            vec![
                (1, T0 + 2 * SECOND),
                (2, T0 + 3 * SECOND),
                (1, T0 + 4 * SECOND)
            ]
        );
        assert_eq!(schedule.len(), 2);
        assert_eq!(schedule.first_fire_time(), Some(T0 + 6 * SECOND));
        assert!(schedule.take_due(T0 + 5 * SECOND, Tz::UTC).is_empty());
    }

    #[test]
    fn a_firing_after_until_stays_scheduled() {
        let mut schedule = Schedule::default();
        scheduled(
            &mut schedule,
            cron_row(1, "0 0 * * * ?", "a"),
            Some(T0 + 3_600 * SECOND),
        );
        assert!(schedule
            .take_due(T0 + 3_600 * SECOND - 1, Tz::UTC)
            .is_empty());
        assert_eq!(schedule.first_fire_time(), Some(T0 + 3_600 * SECOND));
        let due = schedule.take_due(T0 + 3_600 * SECOND, Tz::UTC);
        assert_eq!(fired(&due), vec![(1, T0 + 3_600 * SECOND)]);
    }

    #[test]
    fn a_cron_with_no_firing_left_fires_no_more() {
        let mut schedule = Schedule::default();
        let once = "10 0 0 1 1 ? 2024";
        scheduled(
            &mut schedule,
            cron_row(1, once, "a"),
            Some(T0 + 10 * SECOND),
        );
        let due = schedule.take_due(T0 + 86_400 * SECOND, Tz::UTC);
        assert_eq!(fired(&due), vec![(1, T0 + 10 * SECOND)]);
        assert_eq!(schedule.first_fire_time(), None);
        assert_eq!(
            schedule.len(),
            1,
            "still scheduled, to be seen in the state"
        );
    }

    #[test]
    fn a_removed_cron_does_not_fire() {
        let mut schedule = Schedule::default();
        scheduled(
            &mut schedule,
            cron_row(1, "0/1 * * * * ?", "a"),
            Some(T0 + SECOND),
        );
        scheduled(
            &mut schedule,
            cron_row(2, "0/1 * * * * ?", "a"),
            Some(T0 + SECOND),
        );
        schedule.remove(&cron_row(1, "", "").id);
        let due = schedule.take_due(T0 + SECOND, Tz::UTC);
        assert_eq!(fired(&due), vec![(2, T0 + SECOND)]);
        assert_eq!(schedule.len(), 1);
    }

    #[test]
    fn only_a_new_revision_or_state_is_loaded_again() {
        let mut schedule = Schedule::default();
        scheduled(
            &mut schedule,
            cron_row(1, "0/1 * * * * ?", "a"),
            Some(T0 + SECOND),
        );
        assert!(schedule.holds(&cron_row(1, "0/1 * * * * ?", "a")));
        let mut revised = cron_row(1, "0/5 * * * * ?", "a");
        revised.revision = 2;
        assert!(!schedule.holds(&revised));
        let mut stopped = cron_row(1, "0/1 * * * * ?", "a");
        stopped.enabled = false;
        assert!(!schedule.holds(&stopped));
        assert!(!schedule.holds(&cron_row(2, "0/1 * * * * ?", "a")));
    }

    #[test]
    fn a_complete_reload_drops_the_crons_it_lacks_and_a_partial_one_those_asked() {
        let mut schedule = Schedule::default();
        for n in 1..=3 {
            scheduled(
                &mut schedule,
                cron_row(n, "0/1 * * * * ?", "a"),
                Some(T0 + SECOND),
            );
        }
        let id = |n| cron_row(n, "", "").id;
        let listed = vec![cron_row(2, "0/1 * * * * ?", "a")];
        let mut gone = schedule.gone(&listed, true, Vec::new());
        gone.sort();
        assert_eq!(gone, vec![id(1), id(3)]);
        // A partial reload of 1 and 2 that found only 2: 1 is gone, 3 is not its business.
        assert_eq!(
            schedule.gone(&listed, false, vec![id(1), id(2)]),
            vec![id(1)]
        );
    }

    #[test]
    fn firing_rows_are_kept_a_day_or_twice_the_misfire_threshold() {
        assert_eq!(firings_kept_ms(60), 86_400 * SECOND);
        assert_eq!(firings_kept_ms(86_400), 2 * 86_400 * SECOND);
        assert_eq!(firings_kept_ms(u64::MAX), u64::MAX);
    }
}
