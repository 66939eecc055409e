//! Queue lifecycle: create, add tasks, commit, stop, read back; plus the queue-row lock and
//! the "is this queue done" check that results and expiries share.
//!
//! Dispatching and settling tasks is in `dispatch.rs`.

use super::connection::DbConnection;
use super::models::{NewQueueRecord, NewTaskRecord, QueueRecord, TaskRecord};
use super::schema::{queues, tasks};
use super::{
    duplicate_id, NewTask, QueueRow, QueueStatus, StopOutcome, Store, StoreError, TaskRow,
    TaskStatus,
};
use crate::store::models::db_time;
use diesel::dsl::exists;
use diesel::prelude::*;
use elves_shared::wire::{TaskId, TaskType};
use std::collections::HashSet;

/// Columns of a `tasks` row as `NewTaskRecord` inserts it: each is one bound parameter.
const TASK_INSERT_COLUMNS: usize = 16;
/// Rows of one multi-row insert, under each backend's limit on bound parameters (SQLite
/// 32,766, PostgreSQL 65,535): fewer, larger statements are what makes a batch fast.
const SQLITE_TASK_ROWS_PER_INSERT: usize = 32_766 / TASK_INSERT_COLUMNS;
const PG_TASK_ROWS_PER_INSERT: usize = 65_535 / TASK_INSERT_COLUMNS;
/// Ids of one `IN (…)` lookup, well under either limit.
const ID_LOOKUPS_PER_QUERY: usize = 10_000;

impl Store {
    /// Creates an `open` queue.
    pub fn create_queue(
        &self,
        id: &TaskId,
        app: &str,
        auth_id: &str,
        now: u64,
    ) -> Result<(), StoreError> {
        let record = NewQueueRecord {
            id: id.as_str(),
            app,
            auth_id,
            status: QueueStatus::Open.as_str(),
            created_at: db_time(now),
        };
        diesel::insert_into(queues::table)
            .values(&record)
            .execute(&mut *self.conn()?)
            .map_err(duplicate_id(id))?;
        Ok(())
    }

    pub fn get_queue(&self, id: &TaskId) -> Result<Option<QueueRow>, StoreError> {
        let record = queues::table
            .find(id.as_str())
            .select(QueueRecord::as_select())
            .first(&mut *self.conn()?)
            .optional()?;
        record.map(QueueRow::try_from).transpose()
    }

    /// Adds a `pendding` task to an `open` queue. A dependency must be a task of the same
    /// queue, which also rules out cycles: it must exist before its dependent.
    pub fn add_task(&self, task: &NewTask) -> Result<(), StoreError> {
        let invalid = |reason| StoreError::InvalidTask {
            task_id: task.id.clone(),
            reason,
        };
        let queue_id = task
            .queue_id
            .as_ref()
            .ok_or_else(|| invalid("a queue task needs a queue id"))?;
        if task.task_type != TaskType::Queue {
            return Err(invalid("only queue tasks go into a queue"));
        }
        self.conn()?.write_transaction(|conn| {
            let status = lock_queue_for_add(conn, queue_id.as_str())?
                .ok_or_else(|| StoreError::QueueNotFound(queue_id.clone()))?;
            if status != QueueStatus::Open {
                return Err(StoreError::QueueStatusDoesNotAllow {
                    queue_id: queue_id.clone(),
                    status,
                    action: "add a task",
                });
            }
            if let Some(depend_task_id) = &task.depend_task_id {
                let n_found: i64 = tasks::table
                    .filter(tasks::id.eq(depend_task_id.as_str()))
                    .filter(tasks::queue_id.eq(queue_id.as_str()))
                    .count()
                    .get_result(conn)?;
                if n_found == 0 {
                    return Err(StoreError::DependencyNotFound {
                        queue_id: queue_id.clone(),
                        depend_task_id: depend_task_id.clone(),
                    });
                }
            }
            diesel::insert_into(tasks::table)
                .values(&NewTaskRecord::pending(task))
                .execute(conn)
                .map_err(duplicate_id(&task.id))?;
            Ok(())
        })
    }

    /// Adds tasks to an `open` queue in one transaction: all of them or, on any error, none.
    /// A task may depend on a task already in the queue or on an earlier task of the same
    /// batch (never a later one, which keeps the batch free of cycles). When dependencies are
    /// missing, the error names the one of the earliest task.
    pub fn add_tasks(&self, queue_id: &TaskId, tasks: &[NewTask]) -> Result<(), StoreError> {
        let mut earlier: HashSet<&str> = HashSet::with_capacity(tasks.len());
        let mut outside: Vec<&str> = Vec::new();
        for task in tasks {
            let invalid = |reason| StoreError::InvalidTask {
                task_id: task.id.clone(),
                reason,
            };
            if task.queue_id.as_ref() != Some(queue_id) {
                return Err(invalid("a task of a batch belongs to the batch's queue"));
            }
            if task.task_type != TaskType::Queue {
                return Err(invalid("only queue tasks go into a queue"));
            }
            if let Some(depend) = &task.depend_task_id {
                if !earlier.contains(depend.as_str()) {
                    outside.push(depend.as_str());
                }
            }
            if !earlier.insert(task.id.as_str()) {
                return Err(StoreError::DuplicateId(task.id.clone()));
            }
        }
        outside.sort_unstable();
        outside.dedup();
        let rows_per_insert = |conn: &DbConnection| match conn {
            DbConnection::Pg(_) => PG_TASK_ROWS_PER_INSERT,
            DbConnection::Sqlite(_) => SQLITE_TASK_ROWS_PER_INSERT,
        };
        self.conn()?.write_transaction(|conn| {
            let status = lock_queue_for_add(conn, queue_id.as_str())?
                .ok_or_else(|| StoreError::QueueNotFound(queue_id.clone()))?;
            if status != QueueStatus::Open {
                return Err(StoreError::QueueStatusDoesNotAllow {
                    queue_id: queue_id.clone(),
                    status,
                    action: "add tasks",
                });
            }
            let mut found: HashSet<String> = HashSet::with_capacity(outside.len());
            for chunk in outside.chunks(ID_LOOKUPS_PER_QUERY) {
                let ids: Vec<String> = tasks::table
                    .filter(tasks::queue_id.eq(queue_id.as_str()))
                    .filter(tasks::id.eq_any(chunk))
                    .select(tasks::id)
                    .load(conn)?;
                found.extend(ids);
            }
            if found.len() < outside.len() {
                let mut batch_ids: HashSet<&str> = HashSet::with_capacity(tasks.len());
                for task in tasks {
                    if let Some(depend) = &task.depend_task_id {
                        if !batch_ids.contains(depend.as_str()) && !found.contains(depend.as_str())
                        {
                            return Err(StoreError::DependencyNotFound {
                                queue_id: queue_id.clone(),
                                depend_task_id: depend.clone(),
                            });
                        }
                    }
                    batch_ids.insert(task.id.as_str());
                }
            }
            let records: Vec<NewTaskRecord> = tasks.iter().map(NewTaskRecord::pending).collect();
            for chunk in records.chunks(rows_per_insert(conn)) {
                insert_task_records(conn, chunk)?;
            }
            Ok(())
        })
    }

    /// Commits an `open` queue that has at least one task, which lets its tasks run.
    pub fn commit_queue(&self, id: &TaskId, now: u64) -> Result<(), StoreError> {
        self.conn()?.write_transaction(|conn| {
            let status = lock_queue(conn, id.as_str())?
                .ok_or_else(|| StoreError::QueueNotFound(id.clone()))?;
            let does_not_allow = |action| StoreError::QueueStatusDoesNotAllow {
                queue_id: id.clone(),
                status,
                action,
            };
            if status != QueueStatus::Open {
                return Err(does_not_allow("commit"));
            }
            let has_tasks: bool = diesel::select(exists(
                tasks::table
                    .filter(tasks::queue_id.eq(id.as_str()))
                    .select(tasks::id),
            ))
            .get_result(conn)?;
            if !has_tasks {
                return Err(does_not_allow("commit an empty queue"));
            }
            let n_updated = diesel::update(queues::table.find(id.as_str()))
                .filter(queues::status.eq(QueueStatus::Open.as_str()))
                .set((
                    queues::status.eq(QueueStatus::Committed.as_str()),
                    queues::committed_at.eq(db_time(now)),
                ))
                .execute(conn)?;
            if n_updated == 0 {
                return Err(does_not_allow("commit"));
            }
            Ok(())
        })
    }

    /// Stops an `open` or `committed` queue: every task not yet settled becomes `stoped`, and
    /// the queue `stopped`. Returns the tasks that were `execing`, to be cancelled on their
    /// agents. Stopping a stopped queue changes nothing and succeeds; a finished queue cannot
    /// be stopped.
    pub fn stop_queue(&self, id: &TaskId, now: u64) -> Result<StopOutcome, StoreError> {
        self.conn()?.write_transaction(|conn| {
            let status = lock_queue(conn, id.as_str())?
                .ok_or_else(|| StoreError::QueueNotFound(id.clone()))?;
            match status {
                QueueStatus::Stopped => {
                    return Ok(StopOutcome {
                        previous_status: status,
                        execing_task_ids: Vec::new(),
                    })
                }
                QueueStatus::Finished => {
                    return Err(StoreError::QueueStatusDoesNotAllow {
                        queue_id: id.clone(),
                        status,
                        action: "stop",
                    })
                }
                QueueStatus::Open | QueueStatus::Committed => {}
            }
            // A claim does not lock the queue, only the tasks it takes: lock the unsettled
            // tasks too, so that a task being claimed right now is seen as `execing` (and
            // cancelled) rather than missed.
            let unsettled = tasks::table
                .filter(tasks::queue_id.eq(id.as_str()))
                .filter(
                    tasks::status
                        .eq_any([TaskStatus::Pending.as_str(), TaskStatus::Executing.as_str()]),
                )
                .select((tasks::id, tasks::status))
                .order(tasks::id);
            let unsettled: Vec<(String, String)> = match conn {
                DbConnection::Pg(pg) => unsettled.for_update().load(pg)?,
                DbConnection::Sqlite(sqlite) => unsettled.load(sqlite)?,
            };
            let execing_task_ids = unsettled
                .iter()
                .filter(|(_, status)| status == TaskStatus::Executing.as_str())
                .map(|(task_id, _)| TaskId::parse(task_id))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| StoreError::Corrupt(err.to_string()))?;
            diesel::update(tasks::table)
                .filter(tasks::queue_id.eq(id.as_str()))
                .filter(
                    tasks::status
                        .eq_any([TaskStatus::Pending.as_str(), TaskStatus::Executing.as_str()]),
                )
                .set((
                    tasks::status.eq(TaskStatus::Stopped.as_str()),
                    tasks::finished_at.eq(db_time(now)),
                ))
                .execute(conn)?;
            diesel::update(queues::table.find(id.as_str()))
                .filter(queues::status.eq(status.as_str()))
                .set((
                    queues::status.eq(QueueStatus::Stopped.as_str()),
                    queues::finished_at.eq(db_time(now)),
                ))
                .execute(conn)?;
            Ok(StopOutcome {
                previous_status: status,
                execing_task_ids,
            })
        })
    }

    /// The tasks of a queue, oldest first. Empty for an unknown queue.
    pub fn queue_tasks(&self, queue_id: &TaskId) -> Result<Vec<TaskRow>, StoreError> {
        let records = tasks::table
            .filter(tasks::queue_id.eq(queue_id.as_str()))
            .order((tasks::created_at, tasks::id))
            .select(TaskRecord::as_select())
            .load(&mut *self.conn()?)?;
        records.into_iter().map(TaskRow::try_from).collect()
    }
}

/// One multi-row `INSERT` of tasks.
pub(super) fn insert_task_records(
    conn: &mut DbConnection,
    records: &[NewTaskRecord<'_>],
) -> Result<(), StoreError> {
    let insert = diesel::insert_into(tasks::table).values(records);
    match conn {
        DbConnection::Pg(pg) => insert.execute(pg)?,
        DbConnection::Sqlite(sqlite) => insert.execute(sqlite)?,
    };
    Ok(())
}

/// Reads a queue's status and, on PostgreSQL, locks its row until the transaction ends.
/// Everyone who changes a queue's tasks calls this first (see the module doc for the order).
/// On SQLite the write transaction already excludes every other writer.
pub(super) fn lock_queue(
    conn: &mut DbConnection,
    queue_id: &str,
) -> Result<Option<QueueStatus>, StoreError> {
    let query = queues::table.find(queue_id).select(queues::status);
    // FOR NO KEY UPDATE rather than FOR UPDATE: inserting a task takes a KEY SHARE lock on its
    // queue (the foreign key), which this does not block.
    let status: Option<String> = match conn {
        DbConnection::Pg(pg) => query.for_no_key_update().first(pg).optional()?,
        DbConnection::Sqlite(sqlite) => query.first(sqlite).optional()?,
    };
    parse_queue_status(queue_id, status)
}

/// [`lock_queue`] for adding a task: a shared lock, so that tasks added to one queue at once
/// do not wait for each other, while a commit or a stop (which lock the row exclusively) still
/// waits for the adds in flight and is waited for by later ones.
fn lock_queue_for_add(
    conn: &mut DbConnection,
    queue_id: &str,
) -> Result<Option<QueueStatus>, StoreError> {
    let query = queues::table.find(queue_id).select(queues::status);
    let status: Option<String> = match conn {
        DbConnection::Pg(pg) => query.for_share().first(pg).optional()?,
        DbConnection::Sqlite(sqlite) => query.first(sqlite).optional()?,
    };
    parse_queue_status(queue_id, status)
}

fn parse_queue_status(
    queue_id: &str,
    status: Option<String>,
) -> Result<Option<QueueStatus>, StoreError> {
    status
        .map(|status| {
            QueueStatus::parse(&status).ok_or_else(|| {
                StoreError::Corrupt(format!("queue {queue_id}: unknown status {status:?}"))
            })
        })
        .transpose()
}

/// Marks a committed queue `finished` when none of its tasks is pending or running; says
/// whether it did. The caller holds the queue's lock.
pub(super) fn finish_queue_if_done(
    conn: &mut DbConnection,
    queue_id: &str,
    now: u64,
) -> Result<bool, StoreError> {
    // EXISTS stops at the first unsettled task; a count would read every one of them, which
    // made each result of a large queue cost time in proportion to the tasks still to run.
    let any_unsettled: bool = diesel::select(exists(
        tasks::table
            .filter(tasks::queue_id.eq(queue_id))
            .filter(
                tasks::status
                    .eq_any([TaskStatus::Pending.as_str(), TaskStatus::Executing.as_str()]),
            )
            .select(tasks::id),
    ))
    .get_result(conn)?;
    if any_unsettled {
        return Ok(false);
    }
    let n_updated = diesel::update(queues::table.find(queue_id))
        .filter(queues::status.eq(QueueStatus::Committed.as_str()))
        .set((
            queues::status.eq(QueueStatus::Finished.as_str()),
            queues::finished_at.eq(db_time(now)),
        ))
        .execute(conn)?;
    Ok(n_updated == 1)
}

#[cfg(test)]
mod tests {
    //! Run on SQLite always, and on PostgreSQL when `ELVES_TEST_PG_URL` is set.
    use super::*;
    use crate::store::testing::{pg_url, TestDatabase};
    use elves_shared::wire::{AgentId, Mode};

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

    fn task(queue_id: &TaskId, depend: Option<&TaskId>) -> NewTask {
        NewTask {
            id: TaskId::random(),
            queue_id: Some(queue_id.clone()),
            task_type: TaskType::Queue,
            agent: AgentId::parse("10.0.0.7").unwrap(),
            app: "demo".to_string(),
            func: "run".to_string(),
            param: "{}".to_string(),
            timeout_s: 30,
            proxy: String::new(),
            mode: Mode::NP,
            depend_task_id: depend.cloned(),
            created_at: 1_000,
        }
    }

    #[test]
    fn a_batch_larger_than_one_insert_goes_in_whole_with_its_dependencies() {
        on_both_backends(|store| {
            let queue_id = TaskId::random();
            store.create_queue(&queue_id, "demo", "ops", 1_000).unwrap();
            let before = task(&queue_id, None);
            store.add_task(&before).unwrap();
            // More rows than one insert takes on either backend.
            let n_tasks = PG_TASK_ROWS_PER_INSERT * 2 + 3;
            let mut batch = vec![task(&queue_id, Some(&before.id))];
            while batch.len() < n_tasks {
                let previous = batch[batch.len() - 1].id.clone();
                batch.push(task(&queue_id, Some(&previous)));
            }
            store.add_tasks(&queue_id, &batch).unwrap();
            let stored = store.queue_tasks(&queue_id).unwrap();
            assert_eq!(stored.len(), n_tasks + 1);
            assert!(stored.iter().all(|task| task.status == TaskStatus::Pending));
        });
    }

    #[test]
    fn a_refused_batch_stores_nothing() {
        on_both_backends(|store| {
            let queue_id = TaskId::random();
            store.create_queue(&queue_id, "demo", "ops", 1_000).unwrap();
            let missing = TaskId::random();
            let first = task(&queue_id, None);
            // A dependency on a later task of the batch is no dependency yet.
            let later = task(&queue_id, None);
            let batch = [
                task(&queue_id, Some(&first.id)),
                first.clone(),
                task(&queue_id, Some(&missing)),
            ];
            match store.add_tasks(&queue_id, &batch) {
                Err(StoreError::DependencyNotFound { depend_task_id, .. }) => {
                    assert_eq!(depend_task_id, first.id, "the earliest element's is named");
                }
                other => panic!("expected a missing dependency, got {other:?}"),
            }
            let batch = [first.clone(), task(&queue_id, Some(&later.id)), later];
            assert!(matches!(
                store.add_tasks(&queue_id, &batch),
                Err(StoreError::DependencyNotFound { .. })
            ));
            let other_queue = TaskId::random();
            let batch = [first.clone(), task(&other_queue, None)];
            assert!(matches!(
                store.add_tasks(&queue_id, &batch),
                Err(StoreError::InvalidTask { .. })
            ));
            assert!(store.queue_tasks(&queue_id).unwrap().is_empty());

            store.add_tasks(&queue_id, &[first]).unwrap();
            store.commit_queue(&queue_id, 2_000).unwrap();
            assert!(matches!(
                store.add_tasks(&queue_id, &[task(&queue_id, None)]),
                Err(StoreError::QueueStatusDoesNotAllow { .. })
            ));
            assert!(matches!(
                store.add_tasks(&TaskId::random(), &[task(&queue_id, None)]),
                Err(StoreError::InvalidTask { .. })
            ));
            assert_eq!(store.queue_tasks(&queue_id).unwrap().len(), 1);
        });
    }
}
