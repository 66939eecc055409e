//! Running tasks: claiming ready queue tasks, storing rt/cron tasks, settling tasks by result
//! or by deadline, and skipping what depended on a task that failed.
//!
//! Sending instructions, cancelling and retrying are the caller's; this file only records.

use super::connection::{DbConnection, Durability};
use super::models::{db_time, NewTaskRecord, TaskRecord};
use super::queues::{finish_queue_if_done, lock_queue};
use super::schema::{queues, tasks};
use super::{
    duplicate_id, Backend, Dispatch, NewTask, QueueStatus, RecordOutcome, Store, StoreError,
    TaskRow, TaskStatus,
};
use diesel::dsl::exists;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Integer, Text};
use elves_shared::wire::{JobResult, TaskId, TaskType};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// The error and message of a task that the deadline settled.
pub const DEADLINE_MESSAGE: &str = "agent did not report a result before the deadline";

// The task another task depends on, in the ready-to-dispatch query.
diesel::alias! {
    const DEPENDENCY: Alias<Dependency> = tasks as dependency;
}

/// How a task ends: the fields written when it becomes `finish`.
struct Settlement<'a> {
    flag: &'static str,
    error: &'a str,
    worker_flag: i8,
    worker_message: &'a str,
    worker_costtime: u64,
}

impl<'a> Settlement<'a> {
    /// `flag` is "true" when the agent ran the task, whatever the worker said; "false" with the
    /// agent's error when it did not.
    fn from_result(result: &'a JobResult) -> Settlement<'a> {
        Settlement {
            flag: if result.error.is_empty() {
                "true"
            } else {
                "false"
            },
            error: &result.error,
            worker_flag: result.worker_flag,
            worker_message: &result.worker_message,
            worker_costtime: result.worker_costtime,
        }
    }

    fn deadline_passed() -> Settlement<'static> {
        Settlement {
            flag: "false",
            error: DEADLINE_MESSAGE,
            worker_flag: -1,
            worker_message: DEADLINE_MESSAGE,
            worker_costtime: 0,
        }
    }
}

impl Store {
    /// Claims up to `limit` ready queue tasks for `center_instance`, oldest first, moving them
    /// from `pendding` to `execing`. Ready: its queue is `committed`, and it has no dependency
    /// or its dependency is `finish` with `worker_flag` 1. Each task's deadline becomes
    /// `now + timeout_s + deadline_allowance` (the allowance covers the kill grace and the
    /// dispatch); the instruction should carry the stored deadline.
    ///
    /// Each task is returned to exactly one caller, however many claim at once.
    pub fn claim_ready_tasks(
        &self,
        center_instance: &str,
        now: u64,
        limit: usize,
        deadline_allowance: Duration,
    ) -> Result<Vec<TaskRow>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let allowance_ms = i64::try_from(deadline_allowance.as_millis()).unwrap_or(i64::MAX);
        let deadline_base = db_time(now).saturating_add(allowance_ms);
        self.conn()?.write_transaction(|conn| {
            let candidates = ready_task_ids(limit);
            // PostgreSQL: the rows stay locked until commit and a concurrent claimer skips
            // them instead of waiting. SQLite: the transaction holds the write lock.
            let ids: Vec<String> = match conn {
                DbConnection::Pg(pg) => candidates.for_update().skip_locked().load(pg)?,
                DbConnection::Sqlite(sqlite) => candidates.load(sqlite)?,
            };
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            diesel::update(tasks::table)
                .filter(tasks::id.eq_any(&ids))
                .filter(tasks::status.eq(TaskStatus::Pending.as_str()))
                .set((
                    tasks::status.eq(TaskStatus::Executing.as_str()),
                    tasks::dispatched_by.eq(center_instance),
                    tasks::dispatched_at.eq(db_time(now)),
                    tasks::deadline.eq((tasks::timeout_s * 1000 + deadline_base).nullable()),
                ))
                .execute(conn)?;
            load_tasks(conn, &ids)
        })
    }

    /// Puts queue tasks this center claimed but could not send (the bus was unavailable) back
    /// to `pendding`, so that a later dispatch round sends them instead of failing them. Only
    /// tasks still `execing` under `center_instance` in a still committed queue change; returns
    /// how many did.
    pub fn release_unsent(
        &self,
        task_ids: &[TaskId],
        center_instance: &str,
    ) -> Result<usize, StoreError> {
        if task_ids.is_empty() {
            return Ok(0);
        }
        let ids: Vec<&str> = task_ids.iter().map(TaskId::as_str).collect();
        self.conn()?.write_transaction(|conn| {
            let queue_ids: BTreeSet<String> = tasks::table
                .filter(tasks::id.eq_any(&ids))
                .select(tasks::queue_id)
                .load::<Option<String>>(conn)?
                .into_iter()
                .flatten()
                .collect();
            // Queue rows first, in id order, like every other writer of queue tasks. A stopped
            // queue keeps its claimed tasks `execing`: they are cancelled or expire.
            let mut committed = Vec::new();
            for queue_id in queue_ids {
                if lock_queue(conn, &queue_id)? == Some(QueueStatus::Committed) {
                    committed.push(queue_id);
                }
            }
            Ok(diesel::update(tasks::table)
                .filter(tasks::id.eq_any(&ids))
                .filter(tasks::queue_id.eq_any(&committed))
                .filter(tasks::status.eq(TaskStatus::Executing.as_str()))
                .filter(tasks::dispatched_by.eq(center_instance))
                .set((
                    tasks::status.eq(TaskStatus::Pending.as_str()),
                    tasks::dispatched_by.eq(None::<String>),
                    tasks::dispatched_at.eq(None::<i64>),
                    tasks::deadline.eq(None::<i64>),
                ))
                .execute(conn)?)
        })
    }

    /// Stores an rt or cron task that is being sent now: it starts `execing`, never goes
    /// through a claim, and is settled by [`Store::record_result`] or the deadline.
    ///
    /// An rt task's row is history (its caller waits for the agent, not for the row) and
    /// commits with [`Durability::Relaxed`]; a cron firing's is fully durable.
    pub fn insert_task(&self, task: &NewTask, dispatch: &Dispatch) -> Result<(), StoreError> {
        let invalid = |reason| StoreError::InvalidTask {
            task_id: task.id.clone(),
            reason,
        };
        if task.task_type == TaskType::Queue || task.queue_id.is_some() {
            return Err(invalid("queue tasks are added with add_task"));
        }
        if task.depend_task_id.is_some() {
            return Err(invalid("only queue tasks can depend on another task"));
        }
        let record = NewTaskRecord::executing(task, dispatch);
        let insert = |conn: &mut DbConnection| {
            diesel::insert_into(tasks::table)
                .values(&record)
                .execute(conn)
                .map_err(duplicate_id(&task.id))
        };
        let mut conn = self.conn()?;
        match (row_durability(task.task_type), self.backend) {
            (Durability::Relaxed, Backend::Postgres) => {
                conn.write_transaction_with(Durability::Relaxed, insert)?
            }
            // One statement is its own transaction, and saves the BEGIN and COMMIT.
            _ => insert(&mut conn)?,
        };
        Ok(())
    }

    /// Queue tasks that `center_instance` claimed and that are still `execing`: after a
    /// restart the center sends them again, because it may have died between the claim and the
    /// publish. Agents drop an instruction id they have already seen, so nothing runs twice.
    pub fn execing_queue_tasks_of(
        &self,
        center_instance: &str,
    ) -> Result<Vec<TaskRow>, StoreError> {
        let records = tasks::table
            .filter(tasks::status.eq(TaskStatus::Executing.as_str()))
            .filter(tasks::dispatched_by.eq(center_instance))
            .filter(tasks::task_type.eq(TaskType::Queue.as_str()))
            .order((tasks::created_at, tasks::id))
            .select(TaskRecord::as_select())
            .load(&mut *self.conn()?)?;
        records.into_iter().map(TaskRow::try_from).collect()
    }

    pub fn get_task(&self, id: &TaskId) -> Result<Option<TaskRow>, StoreError> {
        let record = tasks::table
            .find(id.as_str())
            .select(TaskRecord::as_select())
            .first(&mut *self.conn()?)
            .optional()?;
        record.map(TaskRow::try_from).transpose()
    }

    /// Settles a task with an agent's result. Idempotent: only an `execing` task changes
    /// (to `finish`); a duplicate or late result, or one for an unknown task, changes nothing
    /// and says so. A result whose `worker_flag` is not 1 skips every task that depends on
    /// this one, directly or not. The queue finishes when none of its tasks is left pending or
    /// running.
    pub fn record_result(&self, result: &JobResult, now: u64) -> Result<RecordOutcome, StoreError> {
        self.record_results(std::slice::from_ref(result), now)?
            .pop()
            .ok_or_else(|| StoreError::Corrupt(format!("task {}: no outcome", result.id)))
    }

    /// Settles a batch of results in one transaction, each as [`Store::record_result`] would;
    /// returns one outcome per result, in the order given. One transaction per batch rather
    /// than per result is what lets a busy center keep up: each queue row is locked once, and
    /// the commit (on PostgreSQL a flush of its log to disk) is paid once. Results for the same task in one
    /// batch behave as if recorded one after the other: the first in the slice settles it,
    /// the others are duplicates. A queue finished by the batch is reported on the last of its
    /// results that applied.
    pub fn record_results(
        &self,
        results: &[JobResult],
        now: u64,
    ) -> Result<Vec<RecordOutcome>, StoreError> {
        self.record_results_with(Durability::Full, results, now)
    }

    /// [`Store::record_results`] for the results of rt calls: their transaction commits with
    /// [`Durability::Relaxed`], since the caller already has the result and the row is
    /// history. Queue and cron results must go through [`Store::record_results`].
    pub fn record_rt_results(
        &self,
        results: &[JobResult],
        now: u64,
    ) -> Result<Vec<RecordOutcome>, StoreError> {
        self.record_results_with(Durability::Relaxed, results, now)
    }

    fn record_results_with(
        &self,
        durability: Durability,
        results: &[JobResult],
        now: u64,
    ) -> Result<Vec<RecordOutcome>, StoreError> {
        if results.is_empty() {
            return Ok(Vec::new());
        }
        self.conn()?.write_transaction_with(durability, |conn| {
            let mut task_ids: Vec<&str> = results.iter().map(|result| result.id.as_str()).collect();
            task_ids.sort_unstable();
            task_ids.dedup();
            // The queue and the agent of a task never change, so they can be read before the
            // locks.
            let rows = tasks::table
                .filter(tasks::id.eq_any(&task_ids))
                .select((tasks::id, tasks::queue_id, tasks::agent))
                .load::<(String, Option<String>, String)>(conn)?;
            let mut queue_of: HashMap<String, Option<String>> = HashMap::new();
            let mut agent_of: HashMap<String, String> = HashMap::new();
            for (id, queue_id, agent) in rows {
                queue_of.insert(id.clone(), queue_id);
                agent_of.insert(id, agent);
            }
            // Queue rows first, in id order (a BTreeSet), then task rows in id order, as the
            // expiry does: two centers recording overlapping batches cannot deadlock.
            let queue_ids: BTreeSet<&str> =
                queue_of.values().flatten().map(String::as_str).collect();
            for queue_id in &queue_ids {
                lock_queue(conn, queue_id)?;
            }
            // The first result for each known task settles it, if anything does; the others
            // are duplicates. In task id order: the lock order.
            let mut first_result_of: BTreeMap<&str, usize> = BTreeMap::new();
            for (n, result) in results.iter().enumerate() {
                // Only the agent the task was sent to can settle it.
                let sent_to = agent_of.get(result.id.as_str());
                if sent_to.is_some_and(|agent| agent == result.agent.as_str()) {
                    first_result_of.entry(result.id.as_str()).or_insert(n);
                } else if let Some(agent) = sent_to {
                    log::warn!(
                        "task {}: result from agent {} dropped: the task was sent to {agent}",
                        result.id,
                        result.agent
                    );
                }
            }
            let settlements: Vec<(&str, Settlement<'_>)> = first_result_of
                .iter()
                .map(|(&task_id, &n)| (task_id, Settlement::from_result(&results[n])))
                .collect();
            let settled = settle_all(conn, &settlements, now)?;
            let mut applied = vec![false; results.len()];
            let mut skipped: Vec<Vec<TaskId>> = vec![Vec::new(); results.len()];
            for (&task_id, &n) in &first_result_of {
                if settled.contains(task_id) {
                    applied[n] = true;
                    if results[n].worker_flag != 1 {
                        skipped[n] = skip_dependents(conn, task_id, now)?;
                    }
                }
            }
            // Only a queue that one of these results changed can have been finished by them.
            let mut last_applied_of_queue: BTreeMap<&str, usize> = BTreeMap::new();
            for (n, result) in results.iter().enumerate() {
                if let (true, Some(Some(queue_id))) = (applied[n], queue_of.get(result.id.as_str()))
                {
                    last_applied_of_queue.insert(queue_id.as_str(), n);
                }
            }
            let mut finished: Vec<Option<TaskId>> = vec![None; results.len()];
            for (queue_id, n) in last_applied_of_queue {
                if finish_queue_if_done(conn, queue_id, now)? {
                    finished[n] = Some(parse_id(queue_id)?);
                }
            }
            let known_ids: Vec<String> = queue_of.into_keys().collect();
            let mut stored: HashMap<TaskId, TaskRow> = load_tasks(conn, &known_ids)?
                .into_iter()
                .map(|task| (task.id.clone(), task))
                .collect();
            let mut n_outcomes_left: HashMap<&TaskId, usize> = HashMap::new();
            for result in results {
                *n_outcomes_left.entry(&result.id).or_default() += 1;
            }
            let mut outcomes = Vec::with_capacity(results.len());
            for (n, result) in results.iter().enumerate() {
                // The last outcome for a task takes the row; earlier ones get a copy.
                let left = n_outcomes_left.entry(&result.id).or_default();
                *left = left.saturating_sub(1);
                let task = if *left > 0 {
                    stored.get(&result.id).cloned()
                } else {
                    stored.remove(&result.id)
                };
                outcomes.push(RecordOutcome {
                    applied: applied[n],
                    task,
                    skipped_task_ids: std::mem::take(&mut skipped[n]),
                    finished_queue_id: finished[n].take(),
                });
            }
            Ok(outcomes)
        })
    }

    /// Settles every `execing` task whose deadline is before `now` as `finish` with
    /// `worker_flag` -1 and [`DEADLINE_MESSAGE`], skips their dependents and finishes the
    /// queues this completes. Returns the tasks it settled, for logs and counters.
    pub fn expire_overdue(&self, now: u64) -> Result<Vec<TaskRow>, StoreError> {
        self.conn()?.write_transaction(|conn| {
            let overdue: Vec<(String, Option<String>)> = tasks::table
                .filter(tasks::status.eq(TaskStatus::Executing.as_str()))
                .filter(tasks::deadline.lt(db_time(now)))
                .select((tasks::id, tasks::queue_id))
                .order(tasks::id)
                .load(conn)?;
            // Queue rows first, in id order (a BTreeSet), then task rows in id order.
            let queue_ids: BTreeSet<String> = overdue
                .iter()
                .filter_map(|(_, queue_id)| queue_id.clone())
                .collect();
            for queue_id in &queue_ids {
                lock_queue(conn, queue_id)?;
            }
            let settlement = Settlement::deadline_passed();
            let mut expired = Vec::new();
            for (task_id, _) in overdue {
                // A result may have settled it since the select: then it is not ours.
                if settle(conn, &task_id, &settlement, now)? {
                    skip_dependents(conn, &task_id, now)?;
                    expired.push(task_id);
                }
            }
            for queue_id in &queue_ids {
                finish_queue_if_done(conn, queue_id, now)?;
            }
            load_tasks(conn, &expired)
        })
    }
}

/// How durable the row of a task stored already dispatched is: an rt call's is history,
/// relaxed; a cron firing's is not.
fn row_durability(task_type: TaskType) -> Durability {
    match task_type {
        TaskType::Rt => Durability::Relaxed,
        TaskType::Cron | TaskType::Queue => Durability::Full,
    }
}

/// The ids of ready queue tasks, oldest first. A separate function so that the claim can add
/// PostgreSQL's locking clause, which only an unboxed select accepts. The conditions are
/// correlated `EXISTS`, not joins, so that `FOR UPDATE` locks the task rows only.
#[diesel::dsl::auto_type(no_type_alias)]
fn ready_task_ids(limit: i64) -> _ {
    let pending: &'static str = TaskStatus::Pending.as_str();
    let committed: &'static str = QueueStatus::Committed.as_str();
    let finished: &'static str = TaskStatus::Finished.as_str();
    let succeeded: i32 = 1;
    let queue_committed = exists(
        queues::table
            .filter(queues::id.nullable().eq(tasks::queue_id))
            .filter(queues::status.eq(committed))
            .select(queues::id),
    );
    let dependency_succeeded = exists(
        DEPENDENCY
            .filter(
                DEPENDENCY
                    .field(tasks::id)
                    .nullable()
                    .eq(tasks::depend_task_id),
            )
            .filter(DEPENDENCY.field(tasks::status).eq(finished))
            .filter(DEPENDENCY.field(tasks::worker_flag).eq(succeeded))
            .select(DEPENDENCY.field(tasks::id)),
    );
    tasks::table
        .select(tasks::id)
        .filter(tasks::status.eq(pending))
        .filter(queue_committed)
        .filter(tasks::depend_task_id.is_null().or(dependency_succeeded))
        .order((tasks::created_at, tasks::id))
        .limit(limit)
}

/// Moves an `execing` task to `finish`; says whether this call did it.
fn settle(
    conn: &mut DbConnection,
    task_id: &str,
    settlement: &Settlement<'_>,
    now: u64,
) -> Result<bool, StoreError> {
    let n_updated = diesel::update(tasks::table.find(task_id))
        .filter(tasks::status.eq(TaskStatus::Executing.as_str()))
        .set((
            tasks::status.eq(TaskStatus::Finished.as_str()),
            tasks::flag.eq(settlement.flag),
            tasks::error.eq(settlement.error),
            tasks::worker_flag.eq(i32::from(settlement.worker_flag)),
            tasks::worker_message.eq(settlement.worker_message),
            tasks::worker_costtime.eq(db_time(settlement.worker_costtime)),
            tasks::finished_at.eq(db_time(now)),
        ))
        .execute(conn)?;
    Ok(n_updated == 1)
}

/// Moves the `execing` tasks among `settlements` (sorted by task id) to `finish`; returns the
/// ids of those this call settled.
fn settle_all(
    conn: &mut DbConnection,
    settlements: &[(&str, Settlement<'_>)],
    now: u64,
) -> Result<BTreeSet<String>, StoreError> {
    let DbConnection::Pg(pg) = conn else {
        // SQLite runs in this process: a statement per task costs microseconds.
        let mut settled = BTreeSet::new();
        for (task_id, settlement) in settlements {
            if settle(conn, task_id, settlement, now)? {
                settled.insert(task_id.to_string());
            }
        }
        return Ok(settled);
    };
    // PostgreSQL is a round trip away: two statements for the whole batch rather than one per
    // task. The rows are locked first, in id order, since the order in which one UPDATE … FROM
    // locks them is the plan's.
    let task_ids: Vec<&str> = settlements.iter().map(|(task_id, _)| *task_id).collect();
    let execing: Vec<String> = tasks::table
        .filter(tasks::id.eq_any(&task_ids))
        .filter(tasks::status.eq(TaskStatus::Executing.as_str()))
        .order(tasks::id)
        .select(tasks::id)
        .for_update()
        .load(pg)?;
    if execing.is_empty() {
        return Ok(BTreeSet::new());
    }
    let mut columns = SettlementColumns::default();
    for (task_id, settlement) in settlements {
        if execing
            .binary_search_by(|id| id.as_str().cmp(task_id))
            .is_ok()
        {
            columns.push(task_id, settlement);
        }
    }
    let settled: Vec<SettledId> = diesel::sql_query(
        "UPDATE tasks SET status = $1, flag = v.flag, error = v.error, \
         worker_flag = v.worker_flag, worker_message = v.worker_message, \
         worker_costtime = v.worker_costtime, finished_at = $2 \
         FROM unnest($3::text[], $4::text[], $5::text[], $6::int4[], $7::text[], $8::int8[]) \
         AS v(id, flag, error, worker_flag, worker_message, worker_costtime) \
         WHERE tasks.id = v.id AND tasks.status = $9 \
         RETURNING tasks.id",
    )
    .bind::<Text, _>(TaskStatus::Finished.as_str())
    .bind::<BigInt, _>(db_time(now))
    .bind::<Array<Text>, _>(&columns.ids)
    .bind::<Array<Text>, _>(&columns.flags)
    .bind::<Array<Text>, _>(&columns.errors)
    .bind::<Array<Integer>, _>(&columns.worker_flags)
    .bind::<Array<Text>, _>(&columns.worker_messages)
    .bind::<Array<BigInt>, _>(&columns.worker_costtimes)
    .bind::<Text, _>(TaskStatus::Executing.as_str())
    .load(pg)?;
    Ok(settled.into_iter().map(|row| row.id).collect())
}

/// A batch of settlements as one array per column, for `unnest`.
#[derive(Default)]
struct SettlementColumns<'a> {
    ids: Vec<&'a str>,
    flags: Vec<&'a str>,
    errors: Vec<&'a str>,
    worker_flags: Vec<i32>,
    worker_messages: Vec<&'a str>,
    worker_costtimes: Vec<i64>,
}

impl<'a> SettlementColumns<'a> {
    fn push(&mut self, task_id: &'a str, settlement: &Settlement<'a>) {
        self.ids.push(task_id);
        self.flags.push(settlement.flag);
        self.errors.push(settlement.error);
        self.worker_flags.push(i32::from(settlement.worker_flag));
        self.worker_messages.push(settlement.worker_message);
        self.worker_costtimes
            .push(db_time(settlement.worker_costtime));
    }
}

#[derive(QueryableByName)]
struct SettledId {
    #[diesel(sql_type = Text)]
    id: String,
}

/// Marks every pending task that depends on `failed_task_id`, directly or not, `skipped`,
/// with an error that names the dependency and the task that failed. Returns their ids.
fn skip_dependents(
    conn: &mut DbConnection,
    failed_task_id: &str,
    now: u64,
) -> Result<Vec<TaskId>, StoreError> {
    let mut skipped = Vec::new();
    let mut parents = vec![failed_task_id.to_string()];
    while let Some(parent) = parents.pop() {
        let error = if parent == failed_task_id {
            format!("dependency task {failed_task_id} failed")
        } else {
            format!("dependency task {parent} was skipped because task {failed_task_id} failed")
        };
        let dependents: Vec<String> = tasks::table
            .filter(tasks::depend_task_id.eq(&parent))
            .filter(tasks::status.eq(TaskStatus::Pending.as_str()))
            .select(tasks::id)
            .order(tasks::id)
            .load(conn)?;
        if dependents.is_empty() {
            continue;
        }
        diesel::update(tasks::table)
            .filter(tasks::id.eq_any(&dependents))
            .filter(tasks::status.eq(TaskStatus::Pending.as_str()))
            .set((
                tasks::status.eq(TaskStatus::Skipped.as_str()),
                tasks::error.eq(&error),
                tasks::finished_at.eq(db_time(now)),
            ))
            .execute(conn)?;
        for dependent in dependents {
            skipped.push(parse_id(&dependent)?);
            parents.push(dependent);
        }
    }
    Ok(skipped)
}

/// The tasks with these ids, oldest first.
fn load_tasks(conn: &mut DbConnection, ids: &[String]) -> Result<Vec<TaskRow>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let records = tasks::table
        .filter(tasks::id.eq_any(ids))
        .order((tasks::created_at, tasks::id))
        .select(TaskRecord::as_select())
        .load(conn)?;
    records.into_iter().map(TaskRow::try_from).collect()
}

fn parse_id(text: &str) -> Result<TaskId, StoreError> {
    TaskId::parse(text).map_err(|err| StoreError::Corrupt(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::pg::Pg;
    use diesel::sqlite::Sqlite;

    #[test]
    fn only_rt_rows_are_relaxed() {
        assert_eq!(row_durability(TaskType::Rt), Durability::Relaxed);
        assert_eq!(row_durability(TaskType::Cron), Durability::Full);
        assert_eq!(row_durability(TaskType::Queue), Durability::Full);
    }

    #[test]
    fn ready_query_locks_only_task_rows_on_postgres() {
        let postgres =
            diesel::debug_query::<Pg, _>(&ready_task_ids(7).for_update().skip_locked()).to_string();
        assert!(postgres.contains("FOR UPDATE SKIP LOCKED"), "{postgres}");
        assert!(!postgres.contains("JOIN"), "{postgres}");
        assert_eq!(postgres.matches("EXISTS").count(), 2, "{postgres}");
        let sqlite = diesel::debug_query::<Sqlite, _>(&ready_task_ids(7)).to_string();
        assert!(!sqlite.contains("FOR UPDATE"), "{sqlite}");
    }
}
