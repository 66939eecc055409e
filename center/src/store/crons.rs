//! Crons: their definitions (from the API or from definition files), start/stop, the claim of
//! each firing, and the last result.
//!
//! # Exactly once
//!
//! A firing is claimed by inserting `(cron_id, fire_time)` into `cron_firings`; the primary key
//! lets exactly one insert win, however many centers try. The claim, the firing's task and the
//! cron's `last_fire_time` are written in one transaction, so a firing that won always has its
//! task. A center claims only at the revision of the cron it has loaded: a cron stopped,
//! changed or deleted through another center is not fired with a stale definition.
//!
//! Scheduling (which firings are due, misfires) is the Cron actor's; sending is the caller's.

use super::connection::DbConnection;
use super::models::{db_time, unix_ms, NewTaskRecord};
use super::schema::{cron_firings, crons, tasks};
use super::{duplicate_id, Dispatch, NewTask, Store, StoreError};
use diesel::prelude::*;
use elves_shared::wire::{JobResult, Mode, TaskId};
use std::collections::{BTreeMap, HashMap};

/// Firing rows per claiming `INSERT`: five bound parameters each keeps a statement well under
/// SQLite's limit of 32,766 and PostgreSQL's of 65,535.
const CLAIM_ROWS_PER_INSERT: usize = 2_000;

/// What a cron runs, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronDefinition {
    /// The agent as given: an ip or an agent id. Resolved to an agent id at each firing.
    pub ip: String,
    pub app: String,
    pub func: String,
    pub param: String,
    /// Quartz syntax; validated by the caller.
    pub rule: String,
    pub mode: Mode,
    pub timeout_s: u32,
    pub proxy: String,
}

/// Where a cron was defined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CronSource {
    Api,
    /// A `[[cron]]` entry of a definition file: the file's name and the entry's id.
    File {
        file: String,
        entry: String,
    },
}

/// One stored cron.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronRow {
    pub id: TaskId,
    pub definition: CronDefinition,
    pub enabled: bool,
    pub source: CronSource,
    pub auth_id: String,
    pub revision: i64,
    pub created_at: u64,
    pub updated_at: u64,
    /// Firings at or before this instant are settled (fired, skipped, or before the cron
    /// existed or was started).
    pub schedule_from: u64,
    pub last_fire_time: Option<u64>,
    /// The fire time of the newest firing whose result arrived.
    pub last_exec_time: Option<u64>,
    /// That result as JSON: `{flag, error, result: {worker_flag, worker_message, worker_costtime}}`.
    pub last_exec_result: Option<String>,
}

/// A cron of a definition file, as the file says it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCron {
    pub id: TaskId,
    pub file: String,
    pub entry: String,
    pub definition: CronDefinition,
    pub enabled: bool,
}

/// What [`Store::sync_file_crons`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncOutcome {
    pub created: Vec<TaskId>,
    pub updated: Vec<TaskId>,
    pub removed: Vec<TaskId>,
    pub unchanged: usize,
}

/// One firing a center wants to claim: the cron at the revision it loaded, and the task it
/// would send.
#[derive(Debug, Clone)]
pub struct FiringClaim {
    pub cron_id: TaskId,
    pub revision: i64,
    pub fire_time: u64,
    pub task: NewTask,
    pub dispatch: Dispatch,
}

/// What [`Store::claim_cron_firings`] decided, by index into the claims given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimOutcome {
    /// Firings this call claimed: their tasks are stored, the caller sends them.
    pub won: Vec<usize>,
    /// Crons whose stored revision differs from the claim's, or that are stopped or gone: the
    /// caller reloads them.
    pub stale: Vec<TaskId>,
}

#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = crons)]
struct CronRecord {
    id: String,
    ip: String,
    app: String,
    func: String,
    param: String,
    rule: String,
    mode: String,
    timeout_s: i64,
    proxy: String,
    enabled: i32,
    source: String,
    file: Option<String>,
    entry: Option<String>,
    auth_id: String,
    revision: i64,
    created_at: i64,
    updated_at: i64,
    schedule_from: i64,
    last_fire_time: Option<i64>,
    last_exec_time: Option<i64>,
    last_exec_result: Option<String>,
}

/// No defaultable values (see `NewTaskRecord`): a batch of these is one statement on SQLite.
#[derive(Debug, Insertable)]
#[diesel(table_name = cron_firings, treat_none_as_default_value = false)]
struct FiringRecord<'a> {
    cron_id: &'a str,
    fire_time: i64,
    task_id: &'a str,
    center_instance: &'a str,
    claimed_at: i64,
}

impl CronRecord {
    fn new(
        id: &TaskId,
        definition: &CronDefinition,
        source: &CronSource,
        enabled: bool,
        auth_id: &str,
        now: u64,
    ) -> Self {
        let (source_name, file, entry) = match source {
            CronSource::Api => ("api", None, None),
            CronSource::File { file, entry } => ("file", Some(file.clone()), Some(entry.clone())),
        };
        CronRecord {
            id: id.to_string(),
            ip: definition.ip.clone(),
            app: definition.app.clone(),
            func: definition.func.clone(),
            param: definition.param.clone(),
            rule: definition.rule.clone(),
            mode: definition.mode.as_str().to_string(),
            timeout_s: i64::from(definition.timeout_s),
            proxy: definition.proxy.clone(),
            enabled: i32::from(enabled),
            source: source_name.to_string(),
            file,
            entry,
            auth_id: auth_id.to_string(),
            revision: 1,
            created_at: db_time(now),
            updated_at: db_time(now),
            schedule_from: db_time(now),
            last_fire_time: None,
            last_exec_time: None,
            last_exec_result: None,
        }
    }
}

impl TryFrom<CronRecord> for CronRow {
    type Error = StoreError;

    fn try_from(record: CronRecord) -> Result<CronRow, StoreError> {
        let corrupt = |what: String| StoreError::Corrupt(format!("cron {}: {what}", record.id));
        let mode = match record.mode.as_str() {
            "P" => Mode::P,
            "NP" => Mode::NP,
            other => return Err(corrupt(format!("unknown mode {other:?}"))),
        };
        let source = match (record.source.as_str(), &record.file, &record.entry) {
            ("api", _, _) => CronSource::Api,
            ("file", Some(file), Some(entry)) => CronSource::File {
                file: file.clone(),
                entry: entry.clone(),
            },
            (other, _, _) => return Err(corrupt(format!("bad source {other:?}"))),
        };
        let timeout_s =
            u32::try_from(record.timeout_s).map_err(|_| corrupt("timeout out of range".into()))?;
        let id = TaskId::parse(&record.id).map_err(|_| corrupt("bad id".into()))?;
        Ok(CronRow {
            id,
            definition: CronDefinition {
                ip: record.ip,
                app: record.app,
                func: record.func,
                param: record.param,
                rule: record.rule,
                mode,
                timeout_s,
                proxy: record.proxy,
            },
            enabled: record.enabled != 0,
            source,
            auth_id: record.auth_id,
            revision: record.revision,
            created_at: unix_ms(record.created_at),
            updated_at: unix_ms(record.updated_at),
            schedule_from: unix_ms(record.schedule_from),
            last_fire_time: record.last_fire_time.map(unix_ms),
            last_exec_time: record.last_exec_time.map(unix_ms),
            last_exec_result: record.last_exec_result,
        })
    }
}

impl Store {
    /// Creates a cron; `enabled` crons start firing after `now`.
    pub fn create_cron(
        &self,
        id: &TaskId,
        definition: &CronDefinition,
        source: &CronSource,
        enabled: bool,
        auth_id: &str,
        now: u64,
    ) -> Result<(), StoreError> {
        diesel::insert_into(crons::table)
            .values(&CronRecord::new(
                id, definition, source, enabled, auth_id, now,
            ))
            .execute(&mut *self.conn()?)
            .map_err(duplicate_id(id))?;
        Ok(())
    }

    pub fn get_cron(&self, id: &TaskId) -> Result<Option<CronRow>, StoreError> {
        let record = crons::table
            .find(id.as_str())
            .select(CronRecord::as_select())
            .first(&mut *self.conn()?)
            .optional()?;
        record.map(CronRow::try_from).transpose()
    }

    /// Every cron, by id.
    pub fn list_crons(&self) -> Result<Vec<CronRow>, StoreError> {
        let records = crons::table
            .order(crons::id)
            .select(CronRecord::as_select())
            .load(&mut *self.conn()?)?;
        records.into_iter().map(CronRow::try_from).collect()
    }

    /// The crons that name any of `addresses` (ips or agent ids), by id.
    pub fn crons_of(&self, addresses: &[String]) -> Result<Vec<CronRow>, StoreError> {
        let records = crons::table
            .filter(crons::ip.eq_any(addresses))
            .order(crons::id)
            .select(CronRecord::as_select())
            .load(&mut *self.conn()?)?;
        records.into_iter().map(CronRow::try_from).collect()
    }

    /// Starts or stops a cron. Starting a stopped cron settles every earlier firing (time spent
    /// stopped is not a misfire). Doing what is already done changes nothing. Returns the cron.
    pub fn set_cron_enabled(
        &self,
        id: &TaskId,
        enabled: bool,
        now: u64,
    ) -> Result<CronRow, StoreError> {
        self.conn()?.write_transaction(|conn| {
            let current: Option<i32> = crons::table
                .find(id.as_str())
                .select(crons::enabled)
                .first(conn)
                .optional()?;
            let current = current.ok_or_else(|| StoreError::CronNotFound(id.clone()))?;
            if (current != 0) != enabled {
                let target = crons::table.find(id.as_str());
                if enabled {
                    diesel::update(target)
                        .set((
                            crons::enabled.eq(1),
                            crons::revision.eq(crons::revision + 1),
                            crons::updated_at.eq(db_time(now)),
                            crons::schedule_from.eq(db_time(now)),
                        ))
                        .execute(conn)?;
                } else {
                    diesel::update(target)
                        .set((
                            crons::enabled.eq(0),
                            crons::revision.eq(crons::revision + 1),
                            crons::updated_at.eq(db_time(now)),
                        ))
                        .execute(conn)?;
                }
            }
            load_cron(conn, id)?.ok_or_else(|| StoreError::CronNotFound(id.clone()))
        })
    }

    /// Deletes an API cron and its firing history. A file cron is refused: it is removed by
    /// taking it out of its file and reloading.
    pub fn delete_cron(&self, id: &TaskId) -> Result<(), StoreError> {
        self.conn()?.write_transaction(|conn| {
            let cron = load_cron(conn, id)?.ok_or_else(|| StoreError::CronNotFound(id.clone()))?;
            if let CronSource::File { file, entry } = cron.source {
                return Err(StoreError::CronDefinedInFile {
                    cron_id: id.clone(),
                    file,
                    entry,
                });
            }
            delete_with_firings(conn, &[id.to_string()])
        })
    }

    /// Brings the file crons in the database to match `wanted` (every entry of every file):
    /// creates the new ones, updates those whose definition or `enabled` differ, and removes
    /// file crons no file defines any more, except those of `keep_files` (files that could not
    /// be read; `*` for all) and `keep_ids` (broken entries). API crons are left alone; a
    /// wanted id that an API cron already has is updated into a file cron.
    pub fn sync_file_crons(
        &self,
        wanted: &[FileCron],
        keep_files: &[String],
        keep_ids: &[TaskId],
        now: u64,
    ) -> Result<SyncOutcome, StoreError> {
        self.conn()?.write_transaction(|conn| {
            let existing: Vec<CronRecord> =
                crons::table.select(CronRecord::as_select()).load(conn)?;
            let mut existing: HashMap<String, CronRow> = existing
                .into_iter()
                .map(|record| CronRow::try_from(record).map(|row| (row.id.to_string(), row)))
                .collect::<Result<_, _>>()?;
            let mut outcome = SyncOutcome::default();
            for file_cron in wanted {
                let source = CronSource::File {
                    file: file_cron.file.clone(),
                    entry: file_cron.entry.clone(),
                };
                match existing.remove(file_cron.id.as_str()) {
                    None => {
                        diesel::insert_into(crons::table)
                            .values(&CronRecord::new(
                                &file_cron.id,
                                &file_cron.definition,
                                &source,
                                file_cron.enabled,
                                "cron.d",
                                now,
                            ))
                            .execute(conn)?;
                        outcome.created.push(file_cron.id.clone());
                    }
                    Some(row)
                        if row.definition == file_cron.definition
                            && row.enabled == file_cron.enabled
                            && row.source == source =>
                    {
                        outcome.unchanged += 1;
                    }
                    Some(row) => {
                        let definition = &file_cron.definition;
                        // A changed rule, or a cron that starts, fires from now on.
                        let schedule_from = if row.definition.rule != definition.rule
                            || (!row.enabled && file_cron.enabled)
                        {
                            db_time(now)
                        } else {
                            db_time(row.schedule_from)
                        };
                        diesel::update(crons::table.find(file_cron.id.as_str()))
                            .set((
                                crons::ip.eq(&definition.ip),
                                crons::app.eq(&definition.app),
                                crons::func.eq(&definition.func),
                                crons::param.eq(&definition.param),
                                crons::rule.eq(&definition.rule),
                                crons::mode.eq(definition.mode.as_str()),
                                crons::timeout_s.eq(i64::from(definition.timeout_s)),
                                crons::proxy.eq(&definition.proxy),
                                crons::enabled.eq(i32::from(file_cron.enabled)),
                                crons::source.eq("file"),
                                crons::file.eq(&file_cron.file),
                                crons::entry.eq(&file_cron.entry),
                                crons::revision.eq(crons::revision + 1),
                                crons::updated_at.eq(db_time(now)),
                                crons::schedule_from.eq(schedule_from),
                            ))
                            .execute(conn)?;
                        outcome.updated.push(file_cron.id.clone());
                    }
                }
            }
            let gone: Vec<String> = existing
                .into_values()
                .filter(|row| match &row.source {
                    CronSource::File { file, .. } => {
                        !keep_files.iter().any(|kept| kept == "*" || kept == file)
                            && !keep_ids.contains(&row.id)
                    }
                    CronSource::Api => false,
                })
                .map(|row| row.id.to_string())
                .collect();
            delete_with_firings(conn, &gone)?;
            for id in gone {
                outcome
                    .removed
                    .push(TaskId::parse(&id).map_err(|err| StoreError::Corrupt(err.to_string()))?);
            }
            outcome.removed.sort();
            Ok(outcome)
        })
    }

    /// Claims firings for `center_instance`, in the order given. A firing is claimed when its
    /// cron is enabled at the claim's revision and nobody claimed the same `(cron, fire time)`
    /// before; then its task is stored (already dispatched) and the cron's `last_fire_time`
    /// and `schedule_from` move up to it.
    pub fn claim_cron_firings(
        &self,
        center_instance: &str,
        claims: &[FiringClaim],
        now: u64,
    ) -> Result<ClaimOutcome, StoreError> {
        if claims.is_empty() {
            return Ok(ClaimOutcome::default());
        }
        self.conn()?.write_transaction(|conn| {
            let mut revisions: HashMap<String, i64> = HashMap::new();
            let ids: Vec<&str> = claims.iter().map(|claim| claim.cron_id.as_str()).collect();
            // SQLite allows some 32k bound parameters per statement.
            for chunk in ids.chunks(10_000) {
                let found: Vec<(String, i64)> = crons::table
                    .filter(crons::id.eq_any(chunk))
                    .filter(crons::enabled.eq(1))
                    .select((crons::id, crons::revision))
                    .load(conn)?;
                revisions.extend(found);
            }
            let mut outcome = ClaimOutcome::default();
            let mut current: Vec<usize> = Vec::with_capacity(claims.len());
            for (index, claim) in claims.iter().enumerate() {
                if revisions.get(claim.cron_id.as_str()) == Some(&claim.revision) {
                    current.push(index);
                } else if !outcome.stale.contains(&claim.cron_id) {
                    outcome.stale.push(claim.cron_id.clone());
                }
            }
            // In key order, so that concurrent claimers on PostgreSQL take the unique index's
            // locks in the same order and wait for each other rather than deadlock. A firing
            // given twice is claimed by its first claim only.
            let key = |index: &usize| (claims[*index].cron_id.as_str(), claims[*index].fire_time);
            current.sort_by(|a, b| key(a).cmp(&key(b)).then(a.cmp(b)));
            current.dedup_by(|later, first| key(later) == key(first));
            for chunk in current.chunks(CLAIM_ROWS_PER_INSERT) {
                let records: Vec<FiringRecord<'_>> = chunk
                    .iter()
                    .map(|index| {
                        let claim = &claims[*index];
                        FiringRecord {
                            cron_id: claim.cron_id.as_str(),
                            fire_time: db_time(claim.fire_time),
                            task_id: claim.task.id.as_str(),
                            center_instance,
                            claimed_at: db_time(now),
                        }
                    })
                    .collect();
                let by_key: HashMap<(&str, i64), usize> = chunk
                    .iter()
                    .zip(&records)
                    .map(|(index, record)| ((record.cron_id, record.fire_time), *index))
                    .collect();
                for (cron_id, fire_time) in insert_firings(conn, &records)? {
                    let index = by_key.get(&(cron_id.as_str(), fire_time)).ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "cron {cron_id}: claimed a firing at {fire_time} nobody asked for"
                        ))
                    })?;
                    outcome.won.push(*index);
                }
            }
            // Callers pair `won` with their claims in the order they gave them.
            outcome.won.sort_unstable();
            let mut tasks_to_insert = Vec::with_capacity(outcome.won.len());
            let mut won_by_time: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
            for index in &outcome.won {
                let claim = &claims[*index];
                tasks_to_insert.push(NewTaskRecord::executing(&claim.task, &claim.dispatch));
                won_by_time
                    .entry(claim.fire_time)
                    .or_default()
                    .push(claim.cron_id.as_str());
            }
            // 22 columns per task: stay below SQLite's bound-parameter limit.
            for chunk in tasks_to_insert.chunks(1_000) {
                insert_tasks(conn, chunk)?;
            }
            for (fire_time, cron_ids) in won_by_time {
                for chunk in cron_ids.chunks(10_000) {
                    diesel::update(crons::table)
                        .filter(crons::id.eq_any(chunk))
                        .filter(crons::schedule_from.lt(db_time(fire_time)))
                        .set((
                            crons::last_fire_time.eq(db_time(fire_time)),
                            crons::schedule_from.eq(db_time(fire_time)),
                        ))
                        .execute(conn)?;
                }
            }
            Ok(outcome)
        })
    }

    /// Moves a cron's `schedule_from` up to `until` without firing: the firings before it were
    /// skipped (misfires older than the threshold).
    pub fn skip_cron_firings(&self, id: &TaskId, until: u64) -> Result<(), StoreError> {
        diesel::update(crons::table.find(id.as_str()))
            .filter(crons::schedule_from.lt(db_time(until)))
            .set(crons::schedule_from.eq(db_time(until)))
            .execute(&mut *self.conn()?)?;
        Ok(())
    }

    /// Notes the result of a cron task on its cron, unless a newer firing's result is already
    /// there. Returns the cron id, or `None` when the task is no cron firing of this center
    /// (an agent-local cron, or a cron deleted since).
    pub fn record_cron_result(&self, result: &JobResult) -> Result<Option<TaskId>, StoreError> {
        self.conn()?.write_transaction(|conn| {
            let firing: Option<(String, i64)> = cron_firings::table
                .filter(cron_firings::task_id.eq(result.id.as_str()))
                .select((cron_firings::cron_id, cron_firings::fire_time))
                .first(conn)
                .optional()?;
            let Some((cron_id, fire_time)) = firing else {
                return Ok(None);
            };
            let summary = result_summary(result);
            diesel::update(crons::table.find(&cron_id))
                .filter(
                    crons::last_exec_time
                        .is_null()
                        .or(crons::last_exec_time.le(fire_time)),
                )
                .set((
                    crons::last_exec_time.eq(fire_time),
                    crons::last_exec_result.eq(summary),
                ))
                .execute(conn)?;
            TaskId::parse(&cron_id)
                .map(Some)
                .map_err(|err| StoreError::Corrupt(err.to_string()))
        })
    }

    /// The firings of a cron, oldest first: `(fire time, task id, center instance)`.
    pub fn cron_firings(&self, id: &TaskId) -> Result<Vec<(u64, TaskId, String)>, StoreError> {
        let rows: Vec<(i64, String, String)> = cron_firings::table
            .filter(cron_firings::cron_id.eq(id.as_str()))
            .order(cron_firings::fire_time)
            .select((
                cron_firings::fire_time,
                cron_firings::task_id,
                cron_firings::center_instance,
            ))
            .load(&mut *self.conn()?)?;
        rows.into_iter()
            .map(|(fire_time, task_id, instance)| {
                TaskId::parse(&task_id)
                    .map(|task_id| (unix_ms(fire_time), task_id, instance))
                    .map_err(|err| StoreError::Corrupt(err.to_string()))
            })
            .collect()
    }

    /// Forgets firings older than `before` (their tasks stay in the task history). Firings
    /// within the misfire threshold must be kept: they are what makes a late claim lose.
    pub fn prune_cron_firings(&self, before: u64) -> Result<usize, StoreError> {
        Ok(
            diesel::delete(cron_firings::table.filter(cron_firings::fire_time.lt(db_time(before))))
                .execute(&mut *self.conn()?)?,
        )
    }
}

/// The `last_exec_result` object of a cron (SPEC §11 "Cron").
fn result_summary(result: &JobResult) -> String {
    serde_json::json!({
        "flag": if result.error.is_empty() { "true" } else { "false" },
        "error": result.error,
        "result": {
            "worker_flag": result.worker_flag.to_string(),
            "worker_message": result.worker_message,
            "worker_costtime": result.worker_costtime,
        },
    })
    .to_string()
}

fn load_cron(conn: &mut DbConnection, id: &TaskId) -> Result<Option<CronRow>, StoreError> {
    let record = crons::table
        .find(id.as_str())
        .select(CronRecord::as_select())
        .first(conn)
        .optional()?;
    record.map(CronRow::try_from).transpose()
}

fn delete_with_firings(conn: &mut DbConnection, ids: &[String]) -> Result<(), StoreError> {
    for chunk in ids.chunks(10_000) {
        diesel::delete(cron_firings::table.filter(cron_firings::cron_id.eq_any(chunk)))
            .execute(conn)?;
        diesel::delete(crons::table.filter(crons::id.eq_any(chunk))).execute(conn)?;
    }
    Ok(())
}

/// Inserts firing rows in one statement, skipping those already there, and returns the keys
/// `(cron_id, fire_time)` of the rows it inserted: the firings this call won.
fn insert_firings(
    conn: &mut DbConnection,
    records: &[FiringRecord<'_>],
) -> Result<Vec<(String, i64)>, StoreError> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let insert = diesel::insert_into(cron_firings::table)
        .values(records)
        .on_conflict_do_nothing()
        .returning((cron_firings::cron_id, cron_firings::fire_time));
    // The multi-backend connection has no ON CONFLICT; each backend has.
    Ok(match conn {
        DbConnection::Pg(pg) => insert.get_results(pg)?,
        DbConnection::Sqlite(sqlite) => insert.get_results(sqlite)?,
    })
}

/// Inserts tasks in one statement per backend call (a multi-row insert).
fn insert_tasks(conn: &mut DbConnection, records: &[NewTaskRecord<'_>]) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    match conn {
        DbConnection::Pg(pg) => {
            diesel::insert_into(tasks::table)
                .values(records)
                .execute(pg)?;
        }
        DbConnection::Sqlite(sqlite) => {
            diesel::insert_into(tasks::table)
                .values(records)
                .execute(sqlite)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Run on SQLite always, and on PostgreSQL when `ELVES_TEST_PG_URL` is set.
    use super::*;
    use crate::store::testing::{pg_url, TestDatabase};
    use crate::store::TaskStatus;
    use elves_shared::wire::{AgentId, TaskType};
    use std::sync::{Arc, Barrier};

    fn on_both_backends(case: fn(&Store)) {
        let sqlite = TestDatabase::sqlite().unwrap();
        case(&Store::open(&sqlite.url).unwrap());
        if let Some(url) = pg_url() {
            let postgres = TestDatabase::postgres(&url).unwrap();
            let store = Store::open(&postgres.url).unwrap();
            case(&store);
            drop(store);
        }
    }

    fn id(n: u64) -> TaskId {
        TaskId::parse(&format!("{n:016x}")).unwrap()
    }

    fn definition(rule: &str) -> CronDefinition {
        CronDefinition {
            ip: "10.0.0.7".to_string(),
            app: "demo".to_string(),
            func: "tick".to_string(),
            param: "{}".to_string(),
            rule: rule.to_string(),
            mode: Mode::NP,
            timeout_s: 30,
            proxy: String::new(),
        }
    }

    fn claim(cron: &CronRow, fire_time: u64) -> FiringClaim {
        FiringClaim {
            cron_id: cron.id.clone(),
            revision: cron.revision,
            fire_time,
            task: NewTask {
                id: TaskId::random(),
                queue_id: None,
                task_type: TaskType::Cron,
                agent: AgentId::parse("10.0.0.7").unwrap(),
                app: "demo".to_string(),
                func: "tick".to_string(),
                param: "{}".to_string(),
                timeout_s: 30,
                proxy: String::new(),
                mode: Mode::NP,
                depend_task_id: None,
                created_at: fire_time,
            },
            dispatch: Dispatch {
                center_instance: "c".to_string(),
                dispatched_at: fire_time,
                deadline: fire_time + 95_000,
            },
        }
    }

    #[test]
    fn lifecycle() {
        on_both_backends(|store| {
            let cron_id = id(1);
            store
                .create_cron(
                    &cron_id,
                    &definition("0/1 * * * * ?"),
                    &CronSource::Api,
                    true,
                    "ops",
                    1_000,
                )
                .unwrap();
            assert!(matches!(
                store.create_cron(
                    &cron_id,
                    &definition("0/1 * * * * ?"),
                    &CronSource::Api,
                    true,
                    "ops",
                    1_000
                ),
                Err(StoreError::DuplicateId(_))
            ));
            let row = store.get_cron(&cron_id).unwrap().unwrap();
            assert!(row.enabled);
            assert_eq!((row.revision, row.schedule_from), (1, 1_000));
            let stopped = store.set_cron_enabled(&cron_id, false, 2_000).unwrap();
            assert!(!stopped.enabled);
            assert_eq!(stopped.revision, 2);
            assert_eq!(
                store
                    .set_cron_enabled(&cron_id, false, 2_500)
                    .unwrap()
                    .revision,
                2
            );
            let started = store.set_cron_enabled(&cron_id, true, 3_000).unwrap();
            assert_eq!((started.revision, started.schedule_from), (3, 3_000));
            assert!(matches!(
                store.set_cron_enabled(&id(9), true, 1),
                Err(StoreError::CronNotFound(_))
            ));
            assert_eq!(store.crons_of(&["10.0.0.7".to_string()]).unwrap().len(), 1);
            assert!(store.crons_of(&["other".to_string()]).unwrap().is_empty());

            // A firing is claimed once; a stale revision claims nothing.
            let first = claim(&started, 4_000);
            let outcome = store
                .claim_cron_firings("a", std::slice::from_ref(&first), 3_100)
                .unwrap();
            assert_eq!(outcome.won, vec![0]);
            let again = claim(&started, 4_000);
            assert!(store
                .claim_cron_firings("b", &[again], 3_200)
                .unwrap()
                .won
                .is_empty());
            let stale = FiringClaim {
                revision: 1,
                ..claim(&started, 5_000)
            };
            let outcome = store.claim_cron_firings("b", &[stale], 3_200).unwrap();
            assert_eq!(outcome.stale, vec![cron_id.clone()]);
            let task = store.get_task(&first.task.id).unwrap().unwrap();
            assert_eq!(
                (task.task_type, task.status),
                (TaskType::Cron, TaskStatus::Executing)
            );
            let row = store.get_cron(&cron_id).unwrap().unwrap();
            assert_eq!(
                (row.last_fire_time, row.schedule_from),
                (Some(4_000), 4_000)
            );

            // The result becomes the cron's last result; an older firing's does not replace it.
            let result = JobResult {
                id: first.task.id.clone(),
                agent: AgentId::parse("10.0.0.7").unwrap(),
                task_type: TaskType::Cron,
                mode: Mode::NP,
                app: "demo".to_string(),
                func: "tick".to_string(),
                worker_flag: 1,
                worker_message: "ok".to_string(),
                worker_costtime: 12,
                started_at: 4_001,
                finished_at: 4_013,
                error: String::new(),
            };
            assert_eq!(
                store.record_cron_result(&result).unwrap(),
                Some(cron_id.clone())
            );
            let row = store.get_cron(&cron_id).unwrap().unwrap();
            assert_eq!(row.last_exec_time, Some(4_000));
            let summary: serde_json::Value =
                serde_json::from_str(row.last_exec_result.as_deref().unwrap()).unwrap();
            assert_eq!(summary["flag"], "true");
            assert_eq!(summary["result"]["worker_flag"], "1");
            assert_eq!(summary["result"]["worker_message"], "ok");
            assert_eq!(summary["result"]["worker_costtime"], 12);
            let unknown = JobResult {
                id: id(77),
                ..result
            };
            assert_eq!(store.record_cron_result(&unknown).unwrap(), None);
            assert_eq!(store.cron_firings(&cron_id).unwrap().len(), 1);
            assert_eq!(store.prune_cron_firings(4_001).unwrap(), 1);

            store.delete_cron(&cron_id).unwrap();
            assert!(store.get_cron(&cron_id).unwrap().is_none());
            assert!(matches!(
                store.delete_cron(&cron_id),
                Err(StoreError::CronNotFound(_))
            ));
        });
    }

    #[test]
    fn concurrent_claims_fire_each_firing_once() {
        on_both_backends(|store| {
            let mut crons = Vec::new();
            for n in 0..20 {
                store
                    .create_cron(
                        &id(100 + n),
                        &definition("0/1 * * * * ?"),
                        &CronSource::Api,
                        true,
                        "ops",
                        0,
                    )
                    .unwrap();
                crons.push(store.get_cron(&id(100 + n)).unwrap().unwrap());
            }
            let barrier = Arc::new(Barrier::new(4));
            let handles: Vec<_> = (0..4)
                .map(|center| {
                    let (store, barrier, crons) = (store.clone(), barrier.clone(), crons.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        let mut won = 0;
                        for second in 1..=10u64 {
                            let claims: Vec<FiringClaim> = crons
                                .iter()
                                .map(|cron| claim(cron, second * 1_000))
                                .collect();
                            won += store
                                .claim_cron_firings(&format!("center-{center}"), &claims, second)
                                .unwrap()
                                .won
                                .len();
                        }
                        won
                    })
                })
                .collect();
            let total: usize = handles
                .into_iter()
                .map(|handle| handle.join().unwrap())
                .sum();
            assert_eq!(total, 20 * 10);
            for cron in &crons {
                let firings = store.cron_firings(&cron.id).unwrap();
                let times: Vec<u64> = firings.iter().map(|(at, _, _)| *at).collect();
                assert_eq!(times, (1..=10).map(|s| s * 1_000).collect::<Vec<_>>());
                for (_, task_id, _) in firings {
                    assert!(store.get_task(&task_id).unwrap().is_some());
                }
            }
        });
    }

    /// 100 crons × 25 fire times: 2,500 claims, more than one claiming `INSERT`.
    fn firing_set(store: &Store) -> Vec<FiringClaim> {
        let mut crons = Vec::new();
        for n in 0..100 {
            store
                .create_cron(
                    &id(1_000 + n),
                    &definition("0/1 * * * * ?"),
                    &CronSource::Api,
                    true,
                    "ops",
                    0,
                )
                .unwrap();
            crons.push(store.get_cron(&id(1_000 + n)).unwrap().unwrap());
        }
        let claims: Vec<FiringClaim> = (1..=25u64)
            .flat_map(|second| crons.iter().map(move |cron| (cron.clone(), second)))
            .map(|(cron, second)| claim(&cron, second * 1_000))
            .collect();
        assert!(claims.len() > CLAIM_ROWS_PER_INSERT);
        claims
    }

    /// The same firings with task ids of their own, as another center would claim them.
    fn reclaimed(claims: &[FiringClaim]) -> Vec<FiringClaim> {
        claims
            .iter()
            .map(|claim| {
                let mut claim = claim.clone();
                claim.task.id = TaskId::random();
                claim
            })
            .collect()
    }

    #[test]
    fn two_claims_of_one_firing_set_split_it_exactly() {
        on_both_backends(|store| {
            let first = firing_set(store);
            // The second claimer lists the firings in the opposite order.
            let mut second = reclaimed(&first);
            second.reverse();
            let barrier = Arc::new(Barrier::new(2));
            let handles: Vec<_> = [("a", first.clone()), ("b", second.clone())]
                .into_iter()
                .map(|(center, claims)| {
                    let (store, barrier) = (store.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        store.claim_cron_firings(center, &claims, 1).unwrap()
                    })
                })
                .collect();
            let outcomes: Vec<ClaimOutcome> = handles
                .into_iter()
                .map(|handle| handle.join().unwrap())
                .collect();
            assert!(outcomes.iter().all(|outcome| outcome.stale.is_empty()));

            // Every firing went to exactly one of the two, with that claimer's task.
            let mut winner: HashMap<(TaskId, u64), (&str, TaskId)> = HashMap::new();
            for ((center, claims), outcome) in [("a", &first), ("b", &second)].iter().zip(&outcomes)
            {
                for index in &outcome.won {
                    let claim = &claims[*index];
                    let previous = winner.insert(
                        (claim.cron_id.clone(), claim.fire_time),
                        (*center, claim.task.id.clone()),
                    );
                    assert!(previous.is_none(), "firing claimed twice");
                }
            }
            assert_eq!(winner.len(), first.len());
            for claim in &first {
                let firings = store.cron_firings(&claim.cron_id).unwrap();
                let (_, task_id, center) = firings
                    .iter()
                    .find(|(fire_time, _, _)| *fire_time == claim.fire_time)
                    .unwrap();
                let (expected_center, expected_task) =
                    &winner[&(claim.cron_id.clone(), claim.fire_time)];
                assert_eq!(
                    (center.as_str(), task_id),
                    (*expected_center, expected_task)
                );
            }
            // Only the winners' tasks are stored.
            for claims in [&first, &second] {
                for claim in claims {
                    let won = winner[&(claim.cron_id.clone(), claim.fire_time)].1 == claim.task.id;
                    assert_eq!(store.get_task(&claim.task.id).unwrap().is_some(), won);
                }
            }
        });
    }

    #[test]
    fn a_partly_claimed_firing_set_yields_only_the_unclaimed_firings() {
        on_both_backends(|store| {
            let all = firing_set(store);
            let taken: Vec<FiringClaim> = all.iter().step_by(3).cloned().collect();
            let outcome = store.claim_cron_firings("a", &taken, 1).unwrap();
            assert_eq!(outcome.won, (0..taken.len()).collect::<Vec<_>>());

            // The whole set again, with one firing given twice: the rest is won, once.
            let mut again = reclaimed(&all);
            again.push(FiringClaim {
                task: NewTask {
                    id: TaskId::random(),
                    ..again[1].task.clone()
                },
                ..again[1].clone()
            });
            let outcome = store.claim_cron_firings("b", &again, 2).unwrap();
            let expected: Vec<usize> = (0..all.len()).filter(|index| index % 3 != 0).collect();
            assert_eq!(outcome.won, expected);
            assert!(outcome.stale.is_empty());
            assert!(store
                .get_task(&again[again.len() - 1].task.id)
                .unwrap()
                .is_none());

            // Nothing is left to claim.
            let outcome = store.claim_cron_firings("c", &reclaimed(&all), 3).unwrap();
            assert!(outcome.won.is_empty());
        });
    }

    #[test]
    fn file_crons_sync_and_cannot_be_deleted() {
        on_both_backends(|store| {
            let file_cron = |n: u64, file: &str, rule: &str| FileCron {
                id: id(n),
                file: file.to_string(),
                entry: format!("entry-{n}"),
                definition: definition(rule),
                enabled: true,
            };
            store
                .create_cron(
                    &id(50),
                    &definition("0 0 * * * ?"),
                    &CronSource::Api,
                    true,
                    "ops",
                    0,
                )
                .unwrap();
            let wanted = vec![
                file_cron(1, "a.toml", "0 * * * * ?"),
                file_cron(2, "b.toml", "0 * * * * ?"),
            ];
            let outcome = store.sync_file_crons(&wanted, &[], &[], 10).unwrap();
            assert_eq!(outcome.created, vec![id(1), id(2)]);
            assert!(matches!(
                store.delete_cron(&id(1)),
                Err(StoreError::CronDefinedInFile { .. })
            ));
            let outcome = store.sync_file_crons(&wanted, &[], &[], 20).unwrap();
            assert_eq!(outcome.unchanged, 2);

            // Change one, drop one while its file is broken (kept), then really drop it.
            let changed = vec![file_cron(1, "a.toml", "0 0/5 * * * ?")];
            let outcome = store
                .sync_file_crons(&changed, &["b.toml".to_string()], &[], 30)
                .unwrap();
            assert_eq!((outcome.updated, outcome.removed.len()), (vec![id(1)], 0));
            let row = store.get_cron(&id(1)).unwrap().unwrap();
            assert_eq!(
                (
                    row.definition.rule.as_str(),
                    row.revision,
                    row.schedule_from
                ),
                ("0 0/5 * * * ?", 2, 30)
            );
            let outcome = store.sync_file_crons(&changed, &[], &[id(2)], 40).unwrap();
            assert!(outcome.removed.is_empty());
            let outcome = store.sync_file_crons(&changed, &[], &[], 50).unwrap();
            assert_eq!(outcome.removed, vec![id(2)]);
            assert!(store.get_cron(&id(50)).unwrap().is_some(), "api crons stay");
        });
    }
}
