//! The center's storage: queues, tasks, the audit log and agents, in SQLite (the embedded
//! default, one file) or PostgreSQL (shared by several centers), through diesel and an r2d2
//! pool.
//!
//! Every [`Store`] method is one transaction and blocks: callers run it on a `SyncArbiter`,
//! in `web::block` or in `spawn_blocking`, never on an actor's or a handler's thread.
//! `Store` is `Clone + Send + Sync` (it is a handle on the pool).
//!
//! # Several centers, one database
//!
//! Every state change is a conditional update (`… WHERE status = <expected>`), and the method
//! says whether it won: [`RecordOutcome::applied`], the tasks [`Store::claim_ready_tasks`]
//! returns, the errors of the queue calls. On SQLite every writing transaction starts with
//! `BEGIN IMMEDIATE`, so writers run one at a time. On PostgreSQL:
//! - a claim selects ready tasks `FOR UPDATE SKIP LOCKED`, so concurrent claimers split the
//!   ready tasks between them and never wait on each other;
//! - whoever changes a queue's tasks (add, commit, stop, a result, an expiry) first locks
//!   the queue's row, so that for example two centers recording the last two results of a
//!   queue cannot both miss that the queue is done. Adding a task takes a shared lock (adds
//!   to one queue run side by side; a commit or stop waits for them), the others an
//!   exclusive one. Queue rows are locked before task rows, several queue rows in id order and
//!   several task rows in id order (a batch of results is settled sorted by task id), so
//!   these transactions do not deadlock.
//!
//! # A center that dies
//!
//! There is no hand-over of a dead center's work. Its claimed tasks stay `execing` with their
//! `deadline` (claim time + timeout + the caller's allowance for the kill grace and the
//! dispatch), and whichever center next runs [`Store::expire_overdue`] settles them with
//! `worker_flag` -1, skips their dependents and finishes their queues. A task claimed but never
//! published goes the same way. A result that arrives after that is a late result and changes
//! nothing. Tasks still `pendding` are simply claimed by the surviving centers.
//!
//! # What a crash can lose
//!
//! Every commit is durable (on PostgreSQL, flushed to disk before it returns) except the RT
//! history: the row of an rt call ([`Store::insert_task`] of a `TaskType::Rt` task) and its
//! result ([`Store::record_rt_results`]) commit with `synchronous_commit = off`, because the
//! caller of an rt call already has its answer and the history is a record of it. A crash of
//! the PostgreSQL server can lose the last such commits (a fraction of a second of them):
//! an rt call's history row, or its result (the row then expires at its deadline). Never a
//! queue task, a cron firing, or any of their results. The agents' rows
//! ([`Store::upsert_agents`]) commit the same way: they are soft state that the next
//! heartbeat rewrites. SQLite is unchanged (its WAL is synced
//! at checkpoints; a crash of the machine, not of the center, can lose the last commits of
//! any kind there, as before).
//!
//! This module does not talk to the bus, sign instructions or know about HTTP codes: callers
//! map [`StoreError`] variants to `ApiError`.

mod agents;
mod apps;
mod batches;
pub mod blocking;
mod connection;
mod crons;
mod dashboard;
mod dispatch;
mod models;
mod output;
mod queues;
pub mod rollout;
mod schema;
mod submit_replies;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(test)]
mod tests;

pub use apps::{AppRow, AppVersionRow, AuthIdRow, NewAppVersion, Registry, Role, VersionAdded};
pub use batches::{BatchAgentRow, BatchMember, BatchRow, BatchState, BatchStep, NewBatch};
pub use connection::Backend;
pub use crons::{
    ClaimOutcome, CronDefinition, CronRow, CronSource, FileCron, FiringClaim, SyncOutcome,
};
pub use dashboard::{AgentFilter, OutcomeCounts, Page, TaskFilter};
pub use dispatch::DEADLINE_MESSAGE;
pub use models::{
    AgentRow, AuditEntry, AuditRow, Dispatch, NewTask, QueueRow, QueueStatus, TaskRow, TaskStatus,
};
pub use output::{OutputBounds, OutputRead};
pub use submit_replies::ReplyAddress;

use connection::{Manager, SqlitePragmas, Target};
use diesel::r2d2::{Pool, PooledConnection};
use elves_shared::wire::TaskId;

/// Connections kept by the pool. Writers take turns on SQLite anyway; on PostgreSQL this is
/// per center.
const POOL_SIZE: u32 = 8;
/// How long a store call waits for a connection before it fails. A healthy database hands
/// one out in milliseconds; past this it is away (or overloaded), and a call should say so
/// soon instead of holding its caller for r2d2's default 30 s.
const CHECKOUT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Why a store call failed. The first variants are outcomes a caller answers with an API
/// code; the rest are failures of the database itself.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database url {0:?}: use sqlite://<path>, a file path, or postgres://…")]
    BadUrl(String),
    #[error("queue {0} not found")]
    QueueNotFound(TaskId),
    #[error("queue {queue_id} is {status}: cannot {action}")]
    QueueStatusDoesNotAllow {
        queue_id: TaskId,
        status: QueueStatus,
        action: &'static str,
    },
    #[error("dependency task {depend_task_id} not found in queue {queue_id}")]
    DependencyNotFound {
        queue_id: TaskId,
        depend_task_id: TaskId,
    },
    #[error("cron {0} not found")]
    CronNotFound(TaskId),
    #[error("cron {cron_id} is defined by entry {entry:?} of {file}: change it there and reload")]
    CronDefinedInFile {
        cron_id: TaskId,
        file: String,
        entry: String,
    },
    #[error("app {0} not found")]
    AppNotFound(String),
    #[error("app {app} has no version {version}")]
    AppVersionNotFound { app: String, version: String },
    #[error("app {app} version {version} exists with different content")]
    VersionConflict { app: String, version: String },
    #[error("auth id {0} not found")]
    AuthIdNotFound(String),
    #[error("auth id {0} already exists")]
    AuthIdExists(String),
    #[error("id {0} is already taken")]
    DuplicateId(TaskId),
    #[error("task {task_id}: {reason}")]
    InvalidTask {
        task_id: TaskId,
        reason: &'static str,
    },
    #[error("batch {0} not found")]
    BatchNotFound(TaskId),
    #[error("batch {batch_id} is {state}: cannot {action}")]
    BatchStateDoesNotAllow {
        batch_id: TaskId,
        state: BatchState,
        action: &'static str,
    },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("creating the directory of the database file {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("connecting to the database: {0}")]
    Connect(#[from] diesel::ConnectionError),
    #[error("database unavailable: no connection within 3 s ({0})")]
    Pool(#[from] diesel::r2d2::PoolError),
    #[error("running the database migrations: {0}")]
    Migration(String),
    #[error("database: {0}")]
    Query(#[from] diesel::result::Error),
}

impl StoreError {
    /// True when the database could not be reached or dropped the connection: the call may
    /// succeed once it is back, and says so rather than looking like a bug.
    pub fn is_unavailable(&self) -> bool {
        use diesel::result::{DatabaseErrorKind, Error};
        matches!(
            self,
            StoreError::Pool(_)
                | StoreError::Connect(_)
                | StoreError::Query(
                    Error::DatabaseError(
                        DatabaseErrorKind::ClosedConnection
                            | DatabaseErrorKind::UnableToSendCommand,
                        _,
                    ) | Error::BrokenTransactionManager,
                )
        )
    }
}

/// What [`Store::stop_queue`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopOutcome {
    /// The queue's status before the call; `Stopped` means it was already stopped and the call
    /// changed nothing.
    pub previous_status: QueueStatus,
    /// Tasks that were `execing` and are now `stoped`: the caller sends each agent a Cancel.
    pub execing_task_ids: Vec<TaskId>,
}

/// What [`Store::record_result`] (or [`Store::record_results`], for each result) did with a
/// result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordOutcome {
    /// False when the task was not `execing`: a duplicate, a result after the deadline or the
    /// stop, or an unknown task. Nothing changed then.
    pub applied: bool,
    /// The task as stored after the call; `None` for an unknown task id.
    pub task: Option<TaskRow>,
    /// Dependents (direct or not) that this result marked `skipped`.
    pub skipped_task_ids: Vec<TaskId>,
    /// The queue this result completed, if it did.
    pub finished_queue_id: Option<TaskId>,
}

/// A handle on the database. Cheap to clone; every method is one blocking transaction.
#[derive(Clone)]
pub struct Store {
    pool: Pool<Manager>,
    backend: Backend,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish()
    }
}

impl Store {
    /// Opens the database named by `url` and brings its schema up to date.
    ///
    /// `sqlite://<path>` or a plain file path opens (and creates, with its directory) a SQLite
    /// file; `postgres://…` or `postgresql://…` connects to PostgreSQL.
    pub fn open(url: &str) -> Result<Store, StoreError> {
        let target = Target::parse(url)?;
        if let Target::Sqlite(path) = &target {
            create_parent_dir(path)?;
        }
        // A first, unpooled connection fails fast with the real reason (r2d2 would retry until
        // its timeout) and runs the migrations before any pooled connection is used.
        let mut first = target.establish()?;
        SqlitePragmas::apply(&mut first)?;
        connection::run_migrations(&mut first)?;
        drop(first);
        let backend = target.backend();
        let pool = Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(1))
            .connection_timeout(CHECKOUT_TIMEOUT)
            // No ping before each call: see `Manager::is_valid`.
            .test_on_check_out(false)
            .connection_customizer(Box::new(SqlitePragmas))
            .build(Manager { target })?;
        Ok(Store { pool, backend })
    }

    /// Connects once to the database named by `url` and lists the migrations it lacks, without
    /// applying them or creating anything: a SQLite file that does not exist is an error.
    /// For `elves doctor`, which checks a deployment without changing it.
    pub fn pending_migrations(url: &str) -> Result<Vec<String>, StoreError> {
        let target = Target::parse(url)?;
        if let Target::Sqlite(path) = &target {
            if !std::path::Path::new(path).is_file() {
                return Err(StoreError::Connect(diesel::ConnectionError::BadConnection(
                    format!("{path} does not exist"),
                )));
            }
        }
        let mut conn = target.establish()?;
        connection::pending_migrations(&mut conn)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn conn(&self) -> Result<PooledConnection<Manager>, StoreError> {
        Ok(self.pool.get()?)
    }
}

fn create_parent_dir(path: &str) -> Result<(), StoreError> {
    match std::path::Path::new(path).parent() {
        Some(parent) if !parent.as_os_str().is_empty() => {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                path: path.to_string(),
                source,
            })
        }
        _ => Ok(()),
    }
}

/// Maps a unique-key violation on insert to [`StoreError::DuplicateId`].
fn duplicate_id(id: &TaskId) -> impl FnOnce(diesel::result::Error) -> StoreError + '_ {
    move |err| match err {
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        ) => StoreError::DuplicateId(id.clone()),
        other => StoreError::Query(other),
    }
}
