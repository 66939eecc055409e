//! Rows as the rest of the center sees them (typed ids and statuses, unix-ms times as `u64`),
//! the raw records diesel reads and writes, and the conversions between the two.
//!
//! No query lives here. A stored value that does not convert back (an unknown status, a
//! malformed id) is reported as [`StoreError::Corrupt`], never unwrapped.

use super::schema::{agents, audit_log, queues, tasks};
use super::StoreError;
use diesel::prelude::*;
use elves_shared::wire::{AgentId, Heartbeat, Mode, TaskId, TaskType};
use std::collections::BTreeMap;
use std::fmt;

/// The life of a queue: tasks are added while `open`; `committed` lets them run; `finished`
/// once none is pending or running; `stopped` by a stop call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueStatus {
    Open,
    Committed,
    Finished,
    Stopped,
}

impl QueueStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueStatus::Open => "open",
            QueueStatus::Committed => "committed",
            QueueStatus::Finished => "finished",
            QueueStatus::Stopped => "stopped",
        }
    }

    pub fn parse(text: &str) -> Option<QueueStatus> {
        [
            QueueStatus::Open,
            QueueStatus::Committed,
            QueueStatus::Finished,
            QueueStatus::Stopped,
        ]
        .into_iter()
        .find(|status| status.as_str() == text)
    }
}

impl fmt::Display for QueueStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task's status. The stored strings (and [`TaskStatus::as_str`]) are the original ELVES
/// spellings that queue results show: `pendding`, `execing`, `finish`, `stoped`, `skipped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskStatus {
    /// Waiting: for its queue's commit, its dependency, or a dispatcher.
    Pending,
    /// Claimed by a center and sent (or about to be sent) to its agent.
    Executing,
    /// Settled by a result or by the deadline; `worker_flag` tells how it went.
    Finished,
    /// Its queue was stopped before it finished.
    Stopped,
    /// A task it depends on (directly or not) did not succeed.
    Skipped,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pendding",
            TaskStatus::Executing => "execing",
            TaskStatus::Finished => "finish",
            TaskStatus::Stopped => "stoped",
            TaskStatus::Skipped => "skipped",
        }
    }

    pub fn parse(text: &str) -> Option<TaskStatus> {
        [
            TaskStatus::Pending,
            TaskStatus::Executing,
            TaskStatus::Finished,
            TaskStatus::Stopped,
            TaskStatus::Skipped,
        ]
        .into_iter()
        .find(|status| status.as_str() == text)
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRow {
    pub id: TaskId,
    pub app: String,
    pub auth_id: String,
    pub status: QueueStatus,
    pub created_at: u64,
    pub committed_at: Option<u64>,
    /// When the queue finished or was stopped.
    pub finished_at: Option<u64>,
}

/// A task to store: a queue task (`add_task`) or an rt/cron task (`insert_task`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask {
    pub id: TaskId,
    /// `Some` for queue tasks only.
    pub queue_id: Option<TaskId>,
    pub task_type: TaskType,
    /// The agent id, already resolved from the caller's ip or id.
    pub agent: AgentId,
    pub app: String,
    pub func: String,
    pub param: String,
    pub timeout_s: u32,
    pub proxy: String,
    pub mode: Mode,
    /// A task of the same queue that must finish with `worker_flag` 1 first.
    pub depend_task_id: Option<TaskId>,
    pub created_at: u64,
}

/// Who sent a task and until when its result is awaited (rt and cron tasks are stored already
/// dispatched).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatch {
    pub center_instance: String,
    pub dispatched_at: u64,
    pub deadline: u64,
}

/// One stored task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    pub id: TaskId,
    pub queue_id: Option<TaskId>,
    pub task_type: TaskType,
    pub agent: AgentId,
    pub app: String,
    pub func: String,
    pub param: String,
    pub timeout_s: u32,
    pub proxy: String,
    pub mode: Mode,
    pub depend_task_id: Option<TaskId>,
    pub status: TaskStatus,
    /// `"true"` once the platform got a result from the agent, `"false"` when it did not (the
    /// agent's error, or the deadline); empty while there is no result and for skipped tasks.
    pub flag: String,
    /// Why there is no worker result, or, for a skipped task, which dependency failed.
    pub error: String,
    /// `None` until a result or the deadline settled the task.
    pub worker_flag: Option<i8>,
    pub worker_message: Option<String>,
    pub worker_costtime: Option<u64>,
    /// The center instance that claimed the task.
    pub dispatched_by: Option<String>,
    pub dispatched_at: Option<u64>,
    /// After this instant (unix ms) `expire_overdue` settles the task with `worker_flag` -1.
    pub deadline: Option<u64>,
    pub created_at: u64,
    /// When the task reached `finish`, `stoped` or `skipped`.
    pub finished_at: Option<u64>,
}

/// One audit-log entry to write: who did what to which target, on which agent, and how it
/// ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: u64,
    pub auth_id: String,
    /// What was done, e.g. the endpoint `queue/commit`.
    pub action: String,
    /// What it was done to, e.g. a queue or task id.
    pub target: String,
    pub agent: Option<String>,
    /// `ok` or the error code and message.
    pub outcome: String,
}

/// One stored audit-log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    /// Increases with every entry.
    pub id: i64,
    pub entry: AuditEntry,
}

/// What the center knows of an agent from its last heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRow {
    pub id: AgentId,
    pub ip: String,
    pub asset: String,
    pub version: String,
    /// Installed apps: name → version.
    pub apps: BTreeMap<String, String>,
    /// When the center received the last heartbeat (its own clock, unix ms).
    pub last_heartbeat_at: u64,
    pub interval_ms: u64,
    /// The labels the agent reported (its own, before any inventory is merged in).
    pub labels: BTreeMap<String, String>,
}

impl AgentRow {
    /// The row for a heartbeat the center received at `received_at`. The center's clock is
    /// used, not the agent's `sent_at`, so that a skewed agent clock cannot make it look
    /// online or offline.
    pub fn from_heartbeat(heartbeat: &Heartbeat, received_at: u64) -> AgentRow {
        AgentRow {
            id: heartbeat.agent.clone(),
            ip: heartbeat.ip.clone(),
            asset: heartbeat.asset.clone(),
            version: heartbeat.version.clone(),
            apps: heartbeat.apps.clone(),
            last_heartbeat_at: received_at,
            interval_ms: heartbeat.interval_ms,
            // Labels that break the rule (an agent older or newer than this center) are left
            // out rather than stored: targets could never name them.
            labels: heartbeat
                .labels
                .iter()
                .filter(|(key, value)| {
                    elves_shared::target::is_valid_label_text(key)
                        && elves_shared::target::is_valid_label_text(value)
                })
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
        }
    }
}

/// Unix ms to the database's BIGINT. Times before 2262 fit; later ones saturate.
pub(super) fn db_time(unix_ms: u64) -> i64 {
    i64::try_from(unix_ms).unwrap_or(i64::MAX)
}

/// The database's BIGINT back to unix ms; a negative value (never written) reads as 0.
pub(super) fn unix_ms(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn parse_task_id(what: &str, text: String) -> Result<TaskId, StoreError> {
    TaskId::parse(&text)
        .map_err(|_| StoreError::Corrupt(format!("{what} {text:?} is not a task id")))
}

fn parse_task_type(task_id: &str, text: &str) -> Result<TaskType, StoreError> {
    match text {
        "rt" => Ok(TaskType::Rt),
        "queue" => Ok(TaskType::Queue),
        "cron" => Ok(TaskType::Cron),
        _ => Err(StoreError::Corrupt(format!(
            "task {task_id}: unknown type {text:?}"
        ))),
    }
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = queues)]
pub(super) struct QueueRecord {
    pub id: String,
    pub app: String,
    pub auth_id: String,
    pub status: String,
    pub created_at: i64,
    pub committed_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl TryFrom<QueueRecord> for QueueRow {
    type Error = StoreError;

    fn try_from(record: QueueRecord) -> Result<QueueRow, StoreError> {
        let status = QueueStatus::parse(&record.status).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "queue {}: unknown status {:?}",
                record.id, record.status
            ))
        })?;
        Ok(QueueRow {
            id: parse_task_id("queue id", record.id)?,
            app: record.app,
            auth_id: record.auth_id,
            status,
            created_at: unix_ms(record.created_at),
            committed_at: record.committed_at.map(unix_ms),
            finished_at: record.finished_at.map(unix_ms),
        })
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = queues)]
pub(super) struct NewQueueRecord<'a> {
    pub id: &'a str,
    pub app: &'a str,
    pub auth_id: &'a str,
    pub status: &'static str,
    pub created_at: i64,
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = tasks)]
pub(super) struct TaskRecord {
    pub id: String,
    pub queue_id: Option<String>,
    pub task_type: String,
    pub agent: String,
    pub app: String,
    pub func: String,
    pub param: String,
    pub timeout_s: i64,
    pub proxy: String,
    pub mode: String,
    pub depend_task_id: Option<String>,
    pub status: String,
    pub flag: String,
    pub error: String,
    pub worker_flag: Option<i32>,
    pub worker_message: Option<String>,
    pub worker_costtime: Option<i64>,
    pub dispatched_by: Option<String>,
    pub dispatched_at: Option<i64>,
    pub deadline: Option<i64>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

impl TryFrom<TaskRecord> for TaskRow {
    type Error = StoreError;

    fn try_from(record: TaskRecord) -> Result<TaskRow, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("task {}: {what}", record.id));
        let task_type = parse_task_type(&record.id, &record.task_type)?;
        let status = TaskStatus::parse(&record.status)
            .ok_or_else(|| corrupt(&format!("unknown status {:?}", record.status)))?;
        let mode = match record.mode.as_str() {
            "P" => Mode::P,
            "NP" => Mode::NP,
            other => return Err(corrupt(&format!("unknown mode {other:?}"))),
        };
        let agent = AgentId::parse(&record.agent)
            .map_err(|_| corrupt(&format!("bad agent id {:?}", record.agent)))?;
        let timeout_s =
            u32::try_from(record.timeout_s).map_err(|_| corrupt("timeout out of range"))?;
        let worker_flag = record
            .worker_flag
            .map(i8::try_from)
            .transpose()
            .map_err(|_| corrupt("worker_flag out of range"))?;
        Ok(TaskRow {
            id: parse_task_id("task id", record.id)?,
            queue_id: record
                .queue_id
                .map(|id| parse_task_id("queue id", id))
                .transpose()?,
            task_type,
            agent,
            app: record.app,
            func: record.func,
            param: record.param,
            timeout_s,
            proxy: record.proxy,
            mode,
            depend_task_id: record
                .depend_task_id
                .map(|id| parse_task_id("dependency id", id))
                .transpose()?,
            status,
            flag: record.flag,
            error: record.error,
            worker_flag,
            worker_message: record.worker_message,
            worker_costtime: record.worker_costtime.map(unix_ms),
            dispatched_by: record.dispatched_by,
            dispatched_at: record.dispatched_at.map(unix_ms),
            deadline: record.deadline.map(unix_ms),
            created_at: unix_ms(record.created_at),
            finished_at: record.finished_at.map(unix_ms),
        })
    }
}

/// `None` is NULL, which is also every optional column's default: without the defaultable
/// values diesel would otherwise use, a batch of these is one multi-row `INSERT` on SQLite
/// too, not one statement per row.
#[derive(Debug, Insertable)]
#[diesel(table_name = tasks, treat_none_as_default_value = false)]
pub(super) struct NewTaskRecord<'a> {
    pub id: &'a str,
    pub queue_id: Option<&'a str>,
    pub task_type: &'static str,
    pub agent: &'a str,
    pub app: &'a str,
    pub func: &'a str,
    pub param: &'a str,
    pub timeout_s: i64,
    pub proxy: &'a str,
    pub mode: &'static str,
    pub depend_task_id: Option<&'a str>,
    pub status: &'static str,
    pub dispatched_by: Option<&'a str>,
    pub dispatched_at: Option<i64>,
    pub deadline: Option<i64>,
    pub created_at: i64,
}

impl<'a> NewTaskRecord<'a> {
    /// A task that waits to be claimed.
    pub(super) fn pending(task: &'a NewTask) -> NewTaskRecord<'a> {
        NewTaskRecord {
            id: task.id.as_str(),
            queue_id: task.queue_id.as_ref().map(TaskId::as_str),
            task_type: task.task_type.as_str(),
            agent: task.agent.as_str(),
            app: &task.app,
            func: &task.func,
            param: &task.param,
            timeout_s: i64::from(task.timeout_s),
            proxy: &task.proxy,
            mode: task.mode.as_str(),
            depend_task_id: task.depend_task_id.as_ref().map(TaskId::as_str),
            status: TaskStatus::Pending.as_str(),
            dispatched_by: None,
            dispatched_at: None,
            deadline: None,
            created_at: db_time(task.created_at),
        }
    }

    /// A task already sent by `dispatch.center_instance`.
    pub(super) fn executing(task: &'a NewTask, dispatch: &'a Dispatch) -> NewTaskRecord<'a> {
        NewTaskRecord {
            status: TaskStatus::Executing.as_str(),
            dispatched_by: Some(&dispatch.center_instance),
            dispatched_at: Some(db_time(dispatch.dispatched_at)),
            deadline: Some(db_time(dispatch.deadline)),
            ..NewTaskRecord::pending(task)
        }
    }
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = audit_log)]
pub(super) struct AuditRecord {
    pub id: i64,
    pub at: i64,
    pub auth_id: String,
    pub action: String,
    pub target: String,
    pub agent: Option<String>,
    pub outcome: String,
}

impl From<AuditRecord> for AuditRow {
    fn from(record: AuditRecord) -> AuditRow {
        AuditRow {
            id: record.id,
            entry: AuditEntry {
                at: unix_ms(record.at),
                auth_id: record.auth_id,
                action: record.action,
                target: record.target,
                agent: record.agent,
                outcome: record.outcome,
            },
        }
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = audit_log)]
pub(super) struct NewAuditRecord<'a> {
    pub at: i64,
    pub auth_id: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub agent: Option<&'a str>,
    pub outcome: &'a str,
}

impl<'a> From<&'a AuditEntry> for NewAuditRecord<'a> {
    fn from(entry: &'a AuditEntry) -> NewAuditRecord<'a> {
        NewAuditRecord {
            at: db_time(entry.at),
            auth_id: &entry.auth_id,
            action: &entry.action,
            target: &entry.target,
            agent: entry.agent.as_deref(),
            outcome: &entry.outcome,
        }
    }
}

#[derive(Debug, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = agents)]
pub(super) struct AgentRecord {
    pub id: String,
    pub ip: String,
    pub asset: String,
    pub version: String,
    /// A JSON object: app name → version.
    pub apps: String,
    pub last_heartbeat_at: i64,
    pub interval_ms: i64,
    /// A JSON object: label → value.
    pub labels: String,
}

impl TryFrom<&AgentRow> for AgentRecord {
    type Error = StoreError;

    fn try_from(row: &AgentRow) -> Result<AgentRecord, StoreError> {
        let apps = serde_json::to_string(&row.apps)
            .map_err(|err| StoreError::Corrupt(format!("agent {}: apps: {err}", row.id)))?;
        let labels = serde_json::to_string(&row.labels)
            .map_err(|err| StoreError::Corrupt(format!("agent {}: labels: {err}", row.id)))?;
        Ok(AgentRecord {
            id: row.id.as_str().to_string(),
            ip: row.ip.clone(),
            asset: row.asset.clone(),
            version: row.version.clone(),
            apps,
            last_heartbeat_at: db_time(row.last_heartbeat_at),
            interval_ms: db_time(row.interval_ms),
            labels,
        })
    }
}

impl TryFrom<AgentRecord> for AgentRow {
    type Error = StoreError;

    fn try_from(record: AgentRecord) -> Result<AgentRow, StoreError> {
        let id = AgentId::parse(&record.id)
            .map_err(|_| StoreError::Corrupt(format!("agent id {:?} is not valid", record.id)))?;
        let apps = serde_json::from_str(&record.apps).map_err(|err| {
            StoreError::Corrupt(format!("agent {id}: apps are not a JSON object: {err}"))
        })?;
        let labels = serde_json::from_str(&record.labels).map_err(|err| {
            StoreError::Corrupt(format!("agent {id}: labels are not a JSON object: {err}"))
        })?;
        Ok(AgentRow {
            id,
            ip: record.ip,
            asset: record.asset,
            version: record.version,
            apps,
            last_heartbeat_at: unix_ms(record.last_heartbeat_at),
            interval_ms: unix_ms(record.interval_ms),
            labels,
        })
    }
}
