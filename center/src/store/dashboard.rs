//! The dashboard's reads: filtered, paged lists of agents, tasks and the audit log, and the
//! overview's counts. Every list is filtered and paged here, in the database, so that a page
//! costs the same with ten rows or a million.

use super::batches::BatchRecord;
use super::models::{db_time, unix_ms, AgentRecord, AuditRecord, QueueRecord, TaskRecord};
use super::schema::{agents, audit_log, batches, cron_firings, crons, queues, tasks};
use super::{AgentRow, AuditRow, BatchRow, QueueRow, Store, StoreError, TaskRow};
use diesel::prelude::*;

/// What the agents page filters on; empty strings filter nothing.
#[derive(Debug, Clone, Default)]
pub struct AgentFilter {
    /// Part of the agent id or of its ip.
    pub text: String,
    /// Part of a label, as `key` or `key":"value` text of the stored JSON.
    pub label: String,
    /// An installed app's name.
    pub app: String,
    pub online: Option<bool>,
    /// Only these agent ids (what a non-admin auth id may use); `None`: every agent.
    pub only_ids: Option<Vec<String>>,
}

/// What the tasks page filters on; empty strings filter nothing.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub app: String,
    pub func: String,
    pub agent: String,
    /// A stored status (`pendding`, `execing`, `finish`, `stoped`, `skipped`).
    pub status: String,
    /// `rt`, `queue` or `cron` (a batch's tasks are queue tasks), or `batch`.
    pub task_type: String,
    /// `ok` (worker_flag 1) or `failed` (settled with another flag).
    pub outcome: String,
    /// Created at or after (unix ms).
    pub since: Option<u64>,
    /// Created before (unix ms).
    pub until: Option<u64>,
    /// Only tasks of these apps (those a non-admin auth id holds); `None`: every app.
    pub only_apps: Option<Vec<String>>,
    /// Only tasks this auth id started: its queues' and batches' tasks, its crons' firings,
    /// and the RT calls audited under it (`rt/exec`, `ui/rt/exec`, `ui/rerun`).
    pub auth_id: String,
}

/// The audit actions whose target is the id of an RT task the auth id started.
const RT_ACTIONS: [&str; 3] = ["rt/exec", "ui/rt/exec", "ui/rerun"];

/// One page of a list and whether another follows.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub rows: Vec<T>,
    pub has_more: bool,
}

/// Settled tasks of the overview's window, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutcomeCounts {
    pub ok: u64,
    pub failed: u64,
}

/// `%text%` for LIKE, with LIKE's own wildcards taken literally.
fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

fn page_bounds(offset: u64, limit: u64) -> (i64, i64) {
    (
        i64::try_from(offset).unwrap_or(i64::MAX),
        // One more than asked tells whether another page follows.
        i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX),
    )
}

fn into_page<T>(mut rows: Vec<T>, limit: u64) -> Page<T> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let has_more = rows.len() > limit;
    rows.truncate(limit);
    Page { rows, has_more }
}

/// The tasks matching every filter of `filter` but the auth id, as a boxed query to order
/// and page (a macro: the boxed query's backend type is the derived multi-backend's).
macro_rules! filtered_tasks {
    ($filter:expr) => {{
        let filter: &TaskFilter = $filter;
        let mut query = tasks::table.into_boxed();
        if !filter.app.is_empty() {
            query = query.filter(tasks::app.eq(filter.app.clone()));
        }
        if let Some(apps) = &filter.only_apps {
            query = query.filter(tasks::app.eq_any(apps.clone()));
        }
        if !filter.func.is_empty() {
            query = query.filter(tasks::func.eq(filter.func.clone()));
        }
        if !filter.agent.is_empty() {
            query = query.filter(tasks::agent.eq(filter.agent.clone()));
        }
        if !filter.status.is_empty() {
            query = query.filter(tasks::status.eq(filter.status.clone()));
        }
        match filter.task_type.as_str() {
            "" => {}
            // A batch's tasks are queue tasks of a queue that is the batch.
            "batch" => {
                query = query
                    .filter(tasks::queue_id.eq_any(batches::table.select(batches::id.nullable())))
            }
            task_type => query = query.filter(tasks::task_type.eq(task_type.to_string())),
        }
        match filter.outcome.as_str() {
            "ok" => query = query.filter(tasks::worker_flag.eq(1)),
            // Written out, not bound: PostgreSQL's generic plan of a prepared
            // `worker_flag <> $1` cannot use the partial indexes on failed tasks. The two
            // spellings (the same rows) are those of the two indexes' predicates: by app only
            // the app's index matches, since the planner, taking failures for spread evenly
            // over apps, otherwise walked every failure of every app newest first to find an
            // app's (250 ms over 1,000,000 tasks for an app without any).
            "failed" if filter.app.is_empty() => {
                query = query.filter(diesel::dsl::sql::<diesel::sql_types::Bool>(
                    "(tasks.worker_flag < 1 OR tasks.worker_flag > 1)",
                ))
            }
            "failed" => {
                query = query.filter(diesel::dsl::sql::<diesel::sql_types::Bool>(
                    "tasks.worker_flag <> 1",
                ))
            }
            _ => {}
        }
        if let Some(since) = filter.since {
            query = query.filter(tasks::created_at.ge(db_time(since)));
        }
        if let Some(until) = filter.until {
            query = query.filter(tasks::created_at.lt(db_time(until)));
        }
        query
    }};
}

impl Store {
    /// A page of agents by id. Online means a heartbeat within `missed_beats` intervals of
    /// `now`, the rule the heartbeat registry applies.
    pub fn dashboard_agents(
        &self,
        filter: &AgentFilter,
        now: u64,
        missed_beats: u64,
        offset: u64,
        limit: u64,
    ) -> Result<Page<AgentRow>, StoreError> {
        let mut query = agents::table.into_boxed();
        if !filter.text.is_empty() {
            let pattern = contains_pattern(&filter.text);
            query = query.filter(
                agents::id
                    .like(pattern.clone())
                    .escape('\\')
                    .or(agents::ip.like(pattern).escape('\\')),
            );
        }
        if !filter.label.is_empty() {
            query = query.filter(
                agents::labels
                    .like(contains_pattern(&filter.label))
                    .escape('\\'),
            );
        }
        if !filter.app.is_empty() {
            // The stored JSON object has the app's name as a quoted key.
            let key = format!("\"{}\":", filter.app);
            query = query.filter(agents::apps.like(contains_pattern(&key)).escape('\\'));
        }
        if let Some(ids) = &filter.only_ids {
            query = query.filter(agents::id.eq_any(ids.clone()));
        }
        let missed = i64::try_from(missed_beats).unwrap_or(i64::MAX);
        let fresh = (agents::last_heartbeat_at + agents::interval_ms * missed).ge(db_time(now));
        match filter.online {
            Some(true) => query = query.filter(fresh),
            Some(false) => query = query.filter(diesel::dsl::not(fresh)),
            None => {}
        }
        let (offset, limit_plus_one) = page_bounds(offset, limit);
        let records = query
            .order(agents::id)
            .offset(offset)
            .limit(limit_plus_one)
            .select(AgentRecord::as_select())
            .load(&mut *self.conn()?)?;
        let rows = records
            .into_iter()
            .map(AgentRow::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(into_page(rows, limit))
    }

    /// How many agents are known, and how many of them are online at `now`.
    pub fn dashboard_agent_counts(
        &self,
        now: u64,
        missed_beats: u64,
    ) -> Result<(u64, u64), StoreError> {
        let mut conn = self.conn()?;
        let total: i64 = agents::table.count().get_result(&mut *conn)?;
        let missed = i64::try_from(missed_beats).unwrap_or(i64::MAX);
        let online: i64 = agents::table
            .filter((agents::last_heartbeat_at + agents::interval_ms * missed).ge(db_time(now)))
            .count()
            .get_result(&mut *conn)?;
        Ok((unix_ms(total), unix_ms(online)))
    }

    /// A page of tasks, newest first.
    pub fn dashboard_tasks(
        &self,
        filter: &TaskFilter,
        offset: u64,
        limit: u64,
    ) -> Result<Page<TaskRow>, StoreError> {
        if !filter.auth_id.is_empty() {
            return self.dashboard_tasks_of_auth_id(filter, offset, limit);
        }
        let (offset, limit_plus_one) = page_bounds(offset, limit);
        let records = filtered_tasks!(filter)
            .order((tasks::created_at.desc(), tasks::id.desc()))
            .offset(offset)
            .limit(limit_plus_one)
            .select(TaskRecord::as_select())
            .load(&mut *self.conn()?)?;
        let rows = records
            .into_iter()
            .map(TaskRow::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(into_page(rows, limit))
    }

    /// [`Store::dashboard_tasks`] of one auth id. Tasks carry no auth id: its tasks are found
    /// from where it started them, each source read apart (its newest `offset + limit + 1`
    /// by index), then merged. One query ORing the three subselects made PostgreSQL walk the
    /// whole history newest first, testing every task against them.
    fn dashboard_tasks_of_auth_id(
        &self,
        filter: &TaskFilter,
        offset: u64,
        limit: u64,
    ) -> Result<Page<TaskRow>, StoreError> {
        let who = filter.auth_id.clone();
        let wanted =
            i64::try_from(offset.saturating_add(limit).saturating_add(1)).unwrap_or(i64::MAX);
        let mut conn = self.conn()?;
        let mut records: Vec<TaskRecord> = Vec::new();
        // Its queues' and batches' tasks (a batch is a queue too).
        let its_queues = queues::table
            .filter(queues::auth_id.eq(who.clone()))
            .select(queues::id.nullable());
        records.extend(
            filtered_tasks!(filter)
                .filter(tasks::queue_id.eq_any(its_queues))
                .order((tasks::created_at.desc(), tasks::id.desc()))
                .limit(wanted)
                .select(TaskRecord::as_select())
                .load(&mut *conn)?,
        );
        // Its crons' firings.
        let its_crons = crons::table
            .filter(crons::auth_id.eq(who.clone()))
            .select(crons::id);
        let its_firings = cron_firings::table
            .filter(cron_firings::cron_id.eq_any(its_crons))
            .select(cron_firings::task_id);
        records.extend(
            filtered_tasks!(filter)
                .filter(tasks::id.eq_any(its_firings))
                .order((tasks::created_at.desc(), tasks::id.desc()))
                .limit(wanted)
                .select(TaskRecord::as_select())
                .load(&mut *conn)?,
        );
        // Its RT calls, whose audit entries name the task.
        let its_calls = audit_log::table
            .filter(audit_log::auth_id.eq(who))
            .filter(audit_log::action.eq_any(RT_ACTIONS))
            .filter(audit_log::outcome.eq("ok"))
            .select(audit_log::target);
        records.extend(
            filtered_tasks!(filter)
                .filter(tasks::id.eq_any(its_calls))
                .order((tasks::created_at.desc(), tasks::id.desc()))
                .limit(wanted)
                .select(TaskRecord::as_select())
                .load(&mut *conn)?,
        );
        let mut rows = records
            .into_iter()
            .map(TaskRow::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        rows.sort_by(|a, b| (b.created_at, b.id.as_str()).cmp(&(a.created_at, a.id.as_str())));
        rows.dedup_by(|a, b| a.id == b.id);
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        let rows: Vec<TaskRow> = rows.into_iter().skip(skip).collect();
        Ok(into_page(rows, limit))
    }

    /// The newest task of `agent` that ended with `worker_flag` 1: a host can look online
    /// while every task on it fails.
    pub fn dashboard_last_success(&self, agent: &str) -> Result<Option<TaskRow>, StoreError> {
        let record = tasks::table
            .filter(tasks::agent.eq(agent))
            .filter(tasks::worker_flag.eq(1))
            .order(tasks::created_at.desc())
            .select(TaskRecord::as_select())
            .first(&mut *self.conn()?)
            .optional()?;
        record.map(TaskRow::try_from).transpose()
    }

    /// Tasks settled at or after `since`, by outcome.
    pub fn dashboard_outcomes_since(&self, since: u64) -> Result<OutcomeCounts, StoreError> {
        let mut conn = self.conn()?;
        let settled = tasks::table.filter(tasks::finished_at.ge(db_time(since)));
        let ok: i64 = settled
            .filter(tasks::worker_flag.eq(1))
            .count()
            .get_result(&mut *conn)?;
        let failed: i64 = tasks::table
            .filter(tasks::finished_at.ge(db_time(since)))
            .filter(tasks::worker_flag.ne(1))
            .count()
            .get_result(&mut *conn)?;
        Ok(OutcomeCounts {
            ok: unix_ms(ok),
            failed: unix_ms(failed),
        })
    }

    /// A page of the audit log, newest first; `auth_id` filters when not empty.
    pub fn dashboard_audit(
        &self,
        auth_id: &str,
        offset: u64,
        limit: u64,
    ) -> Result<Page<AuditRow>, StoreError> {
        let mut query = audit_log::table.into_boxed();
        if !auth_id.is_empty() {
            query = query.filter(audit_log::auth_id.eq(auth_id.to_string()));
        }
        let (offset, limit_plus_one) = page_bounds(offset, limit);
        let records = query
            .order(audit_log::id.desc())
            .offset(offset)
            .limit(limit_plus_one)
            .select(AuditRecord::as_select())
            .load(&mut *self.conn()?)?;
        Ok(into_page(
            records.into_iter().map(AuditRow::from).collect(),
            limit,
        ))
    }
}

impl Store {
    /// A page of queues (batches included: a batch is a queue too), newest first; `only_apps`
    /// as for tasks.
    pub fn dashboard_queues(
        &self,
        only_apps: Option<&[String]>,
        offset: u64,
        limit: u64,
    ) -> Result<Page<QueueRow>, StoreError> {
        let mut query = queues::table.into_boxed();
        if let Some(apps) = only_apps {
            query = query.filter(queues::app.eq_any(apps.to_vec()));
        }
        let (offset, limit_plus_one) = page_bounds(offset, limit);
        let records = query
            .order((queues::created_at.desc(), queues::id.desc()))
            .offset(offset)
            .limit(limit_plus_one)
            .select(QueueRecord::as_select())
            .load(&mut *self.conn()?)?;
        let rows = records
            .into_iter()
            .map(QueueRow::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(into_page(rows, limit))
    }

    /// A page of batches, newest first; `only_apps` as for tasks.
    pub fn dashboard_batches(
        &self,
        only_apps: Option<&[String]>,
        offset: u64,
        limit: u64,
    ) -> Result<Page<BatchRow>, StoreError> {
        let mut query = batches::table.into_boxed();
        if let Some(apps) = only_apps {
            query = query.filter(batches::app.eq_any(apps.to_vec()));
        }
        let (offset, limit_plus_one) = page_bounds(offset, limit);
        let records = query
            .order((batches::created_at.desc(), batches::id.desc()))
            .offset(offset)
            .limit(limit_plus_one)
            .select(BatchRecord::as_select())
            .load(&mut *self.conn()?)?;
        let rows = records
            .into_iter()
            .map(BatchRow::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(into_page(rows, limit))
    }

    /// The agents that report `app` installed, with the version each has, by agent id.
    pub fn dashboard_app_installs(&self, app: &str) -> Result<Vec<(String, String)>, StoreError> {
        let key = format!("\"{app}\":");
        let records = agents::table
            .filter(agents::apps.like(contains_pattern(&key)).escape('\\'))
            .order(agents::id)
            .select(AgentRecord::as_select())
            .load(&mut *self.conn()?)?;
        let mut installs = Vec::with_capacity(records.len());
        for record in records {
            let row = AgentRow::try_from(record)?;
            if let Some(version) = row.apps.get(app) {
                installs.push((row.id.to_string(), version.clone()));
            }
        }
        Ok(installs)
    }
}

#[cfg(any(test, feature = "testing"))]
impl Store {
    /// Fills the tasks table with `count` settled RT tasks for the dashboard's benchmark, in one
    /// statement: one created every second back from `now`, spread over `agents` agents
    /// (`bench-agent-<n>`) and five apps, one in ten failed. Never in a production build.
    pub fn fill_bench_tasks(&self, count: u64, agents: u64, now: u64) -> Result<(), StoreError> {
        use super::connection::DbConnection;
        let (count, agents, now) = (count as i64, agents.max(1) as i64, db_time(now));
        let columns = "id, queue_id, task_type, agent, app, func, param, timeout_s, proxy, mode, \
             depend_task_id, status, flag, error, worker_flag, worker_message, worker_costtime, \
             dispatched_by, dispatched_at, deadline, created_at, finished_at";
        let values = format!(
            "NULL, 'rt', 'bench-agent-' || (g % {agents}), 'app' || (g % 5), 'f', '{{}}', 30, '', \
             'NP', NULL, 'finish', 'true', '', CASE WHEN g % 10 = 0 THEN 0 ELSE 1 END, 'done', 5, \
             'bench', {now} - g * 1000, {now} - g * 1000 + 30000, {now} - g * 1000, \
             {now} - g * 1000 + 5"
        );
        match &mut *self.conn()? {
            DbConnection::Pg(pg) => {
                diesel::sql_query(format!(
                    "INSERT INTO tasks ({columns}) SELECT lpad(to_hex(g), 16, '0'), {values} \
                     FROM generate_series(1, {count}) AS g"
                ))
                .execute(pg)?;
                // What autovacuum does soon after a bulk load in production: planner statistics.
                diesel::sql_query("ANALYZE tasks").execute(pg)?;
                diesel::sql_query("ANALYZE agents").execute(pg)?;
            }
            DbConnection::Sqlite(sqlite) => {
                diesel::sql_query(format!(
                    "WITH RECURSIVE seq(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM seq \
                     WHERE g < {count}) INSERT INTO tasks ({columns}) \
                     SELECT printf('%016x', g), {values} FROM seq"
                ))
                .execute(sqlite)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{contains_pattern, TaskFilter};
    use crate::store::testing::{pg_url, TestDatabase};
    use crate::store::{AuditEntry, Dispatch, NewTask, Store};
    use elves_shared::wire::{AgentId, Mode, TaskId, TaskType};

    fn id(n: u64) -> TaskId {
        TaskId::parse(&format!("{n:016x}")).unwrap()
    }

    fn new_task(n: u64, queue: Option<u64>, created_at: u64) -> NewTask {
        NewTask {
            id: id(n),
            queue_id: queue.map(id),
            task_type: if queue.is_some() {
                TaskType::Queue
            } else {
                TaskType::Rt
            },
            agent: AgentId::parse("agent-1").unwrap(),
            app: "demo".to_string(),
            func: "f".to_string(),
            param: String::new(),
            timeout_s: 10,
            proxy: String::new(),
            mode: Mode::NP,
            depend_task_id: None,
            created_at,
        }
    }

    fn rt_call(store: &Store, n: u64, created_at: u64, auth_id: &str) {
        let dispatch = Dispatch {
            center_instance: "center".to_string(),
            dispatched_at: created_at,
            deadline: created_at + 10_000,
        };
        store
            .insert_task(&new_task(n, None, created_at), &dispatch)
            .unwrap();
        store
            .audit(&AuditEntry {
                at: created_at,
                auth_id: auth_id.to_string(),
                action: "rt/exec".to_string(),
                target: id(n).to_string(),
                agent: None,
                outcome: "ok".to_string(),
            })
            .unwrap();
    }

    fn page_ids(
        store: &Store,
        auth_id: &str,
        app: &str,
        offset: u64,
        limit: u64,
    ) -> (Vec<u64>, bool) {
        let filter = TaskFilter {
            auth_id: auth_id.to_string(),
            app: app.to_string(),
            ..TaskFilter::default()
        };
        let page = store.dashboard_tasks(&filter, offset, limit).unwrap();
        let ids = page
            .rows
            .iter()
            .map(|task| u64::from_str_radix(task.id.as_str(), 16).unwrap())
            .collect();
        (ids, page.has_more)
    }

    fn tasks_by_auth_id(store: &Store) {
        store.create_queue(&id(100), "demo", "ops", 1).unwrap();
        store.add_task(&new_task(1, Some(100), 10)).unwrap();
        store.add_task(&new_task(2, Some(100), 11)).unwrap();
        store.create_queue(&id(200), "demo", "other", 1).unwrap();
        store.add_task(&new_task(3, Some(200), 12)).unwrap();
        rt_call(store, 9, 20, "ops");
        rt_call(store, 8, 21, "other");
        // A refused call names no task of the auth id.
        store
            .audit(&AuditEntry {
                at: 22,
                auth_id: "ops".to_string(),
                action: "rt/exec".to_string(),
                target: id(8).to_string(),
                agent: None,
                outcome: "401.6 refused".to_string(),
            })
            .unwrap();

        assert_eq!(page_ids(store, "ops", "", 0, 50), (vec![9, 2, 1], false));
        assert_eq!(page_ids(store, "ops", "", 0, 2), (vec![9, 2], true));
        assert_eq!(page_ids(store, "ops", "", 2, 2), (vec![1], false));
        assert_eq!(page_ids(store, "other", "", 0, 50), (vec![8, 3], false));
        assert_eq!(page_ids(store, "nobody", "", 0, 50), (vec![], false));
        assert_eq!(page_ids(store, "ops", "other-app", 0, 50), (vec![], false));
    }

    /// The outcome filter, alone and with an app (each spelled as its partial index's
    /// predicate), over the benchmark's tasks: one in ten failed, all of them of `app0`.
    fn tasks_by_outcome(store: &Store) {
        store.fill_bench_tasks(100, 3, 1_000_000).unwrap();
        let count = |app: &str, outcome: &str| {
            let filter = TaskFilter {
                app: app.to_string(),
                outcome: outcome.to_string(),
                ..TaskFilter::default()
            };
            let page = store.dashboard_tasks(&filter, 0, 1000).unwrap();
            let flags: Vec<Option<i8>> = page.rows.iter().map(|task| task.worker_flag).collect();
            (page.rows.len(), flags)
        };
        let (failed, flags) = count("", "failed");
        assert_eq!(failed, 10);
        assert!(flags.iter().all(|flag| *flag == Some(0)), "{flags:?}");
        assert_eq!(count("app0", "failed").0, 10);
        assert_eq!(count("app3", "failed").0, 0);
        assert_eq!(count("", "ok").0, 90);
        assert_eq!(count("app3", "ok").0, 20);
    }

    #[test]
    fn tasks_by_outcome_on_sqlite() {
        let database = TestDatabase::sqlite().unwrap();
        tasks_by_outcome(&Store::open(&database.url).unwrap());
    }

    #[test]
    fn tasks_by_outcome_on_postgres() {
        let Some(url) = pg_url() else { return };
        let database = TestDatabase::postgres(&url).unwrap();
        tasks_by_outcome(&Store::open(&database.url).unwrap());
    }

    #[test]
    fn tasks_by_auth_id_on_sqlite() {
        let database = TestDatabase::sqlite().unwrap();
        tasks_by_auth_id(&Store::open(&database.url).unwrap());
    }

    #[test]
    fn tasks_by_auth_id_on_postgres() {
        // Skipped only where no PostgreSQL is configured (ELVES_TEST_PG_URL), as the store's
        // other PostgreSQL tests are.
        let Some(url) = pg_url() else { return };
        let database = TestDatabase::postgres(&url).unwrap();
        tasks_by_auth_id(&Store::open(&database.url).unwrap());
    }

    #[test]
    fn like_wildcards_in_a_filter_are_taken_literally() {
        assert_eq!(contains_pattern("a_b%c"), "%a\\_b\\%c%");
        assert_eq!(contains_pattern(""), "%%");
    }
}
