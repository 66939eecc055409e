//! Batches (SPEC §12): one call rolled out over the agents a target matched, step by step.
//!
//! A batch is stored as a `batches` row, one `batch_agents` row per matched agent (in rollout
//! order), and a queue with the batch's id. Agents are released into that queue as queue
//! tasks — so TaskQueue claims, sends, records, expires and cancels them like every other
//! queue task, through the one dispatch path — and each agent's row keeps its state and the
//! id of its one task. [`Store::advance_batch`] is the whole of a batch's life after creation:
//! in one transaction it brings the agent states up to date from their tasks and applies the
//! rollout's decision ([`super::rollout::plan`]).
//!
//! Nothing runs twice: an agent is released by a conditional update (`pending` → `running`,
//! with its task id) in the transaction that inserts its task, and the batch row is locked
//! first (PostgreSQL) or the transaction holds the write lock (SQLite), so two centers cannot
//! both release it. Lock order: the batch row, then the queue row, then task rows — the queue
//! and task order every other writer keeps.

use super::connection::DbConnection;
use super::models::{db_time, unix_ms, NewTaskRecord, TaskRecord};
use super::queues::{insert_task_records, lock_queue};
use super::rollout::{plan, AgentState, Progress, Rollout, Waiting, Window};
use super::schema::{agents, batch_agents, batches, queues, tasks};
use super::{NewTask, QueueStatus, Store, StoreError, TaskRow, TaskStatus};
use diesel::prelude::*;
use elves_shared::wire::{AgentId, Mode, TaskId, TaskType};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// An agent's stored `(last_heartbeat_at, interval_ms)`, when it has a row.
pub type StoredBeat = Option<(u64, u64)>;

/// The message an agent's worker returns when it killed a task at its timeout.
const AGENT_TIMEOUT_MESSAGE: &str = "app exec timeout";

/// Ids of one `IN (…)` list, under both backends' limits on bound parameters.
const IDS_PER_QUERY: usize = 5_000;

/// Columns of one `batch_agents` row, for multi-row inserts under the bound-parameter limit.
const MEMBER_ROWS_PER_INSERT: usize = 30_000 / 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchState {
    Running,
    Finished,
    Stopped,
}

impl BatchState {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchState::Running => "running",
            BatchState::Finished => "finished",
            BatchState::Stopped => "stopped",
        }
    }

    fn parse(text: &str) -> Option<BatchState> {
        [
            BatchState::Running,
            BatchState::Finished,
            BatchState::Stopped,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }
}

impl fmt::Display for BatchState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A batch to create.
#[derive(Debug, Clone)]
pub struct NewBatch {
    pub id: TaskId,
    pub auth_id: String,
    pub app: String,
    pub func: String,
    pub param: String,
    pub timeout_s: u32,
    pub proxy: String,
    pub mode: Mode,
    pub target: String,
    pub rollout: Rollout,
    pub retry_of: Option<TaskId>,
    pub created_at: u64,
}

/// An agent a batch matched, in rollout order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchMember {
    pub agent: AgentId,
    pub ip: String,
}

/// A stored batch.
#[derive(Debug, Clone)]
pub struct BatchRow {
    pub id: TaskId,
    pub auth_id: String,
    pub app: String,
    pub func: String,
    pub param: String,
    pub timeout_s: u32,
    pub proxy: String,
    pub mode: Mode,
    pub target: String,
    pub rollout: Rollout,
    pub state: BatchState,
    pub stop_reason: String,
    pub count: u64,
    pub retry_of: Option<TaskId>,
    pub created_at: u64,
    pub step_settled_at: Option<u64>,
    pub finished_at: Option<u64>,
}

/// One agent of a batch, with its task once it has one.
#[derive(Debug, Clone)]
pub struct BatchAgentRow {
    pub seq: u64,
    pub agent: AgentId,
    pub ip: String,
    pub state: AgentState,
    pub task: Option<TaskRow>,
}

/// What one [`Store::advance_batch`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchStep {
    /// Agents started now (their tasks wait in the queue for TaskQueue).
    pub released: usize,
    /// Agents given up on as offline now.
    pub offline: usize,
    /// Agents whose task settled since the last step, by the state it left them in.
    pub settled: Vec<AgentState>,
    /// The batch ended with this step (finished, or stopped by its failure threshold).
    pub ended: Option<BatchState>,
    /// Whether the batch still needs steps (running, or stopped with tasks still running).
    pub active: bool,
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = batches)]
pub(super) struct BatchRecord {
    id: String,
    auth_id: String,
    app: String,
    func: String,
    param: String,
    timeout_s: i64,
    proxy: String,
    mode: String,
    target: String,
    size: String,
    window_model: String,
    max_fail: String,
    wait_s: i64,
    offline: String,
    state: String,
    stop_reason: String,
    agent_count: i64,
    retry_of: Option<String>,
    created_at: i64,
    step_settled_at: Option<i64>,
    finished_at: Option<i64>,
}

impl TryFrom<BatchRecord> for BatchRow {
    type Error = StoreError;

    fn try_from(record: BatchRecord) -> Result<BatchRow, StoreError> {
        let corrupt = |what: String| StoreError::Corrupt(format!("batch {}: {what}", record.id));
        let rollout = Rollout::parse(
            &record.size,
            &record.window_model,
            &record.max_fail,
            &record.wait_s.to_string(),
            &record.offline,
        )
        .map_err(corrupt)?;
        let state = BatchState::parse(&record.state)
            .ok_or_else(|| corrupt(format!("unknown state {:?}", record.state)))?;
        let mode = record
            .mode
            .parse::<Mode>()
            .map_err(|_| corrupt(format!("unknown mode {:?}", record.mode)))?;
        let parse_id =
            |text: &str| TaskId::parse(text).map_err(|_| corrupt(format!("{text:?} is not an id")));
        Ok(BatchRow {
            id: parse_id(&record.id)?,
            retry_of: record.retry_of.as_deref().map(parse_id).transpose()?,
            auth_id: record.auth_id,
            app: record.app,
            func: record.func,
            param: record.param,
            timeout_s: u32::try_from(record.timeout_s).unwrap_or(u32::MAX),
            proxy: record.proxy,
            mode,
            target: record.target,
            rollout,
            state,
            stop_reason: record.stop_reason,
            count: u64::try_from(record.agent_count).unwrap_or(0),
            created_at: unix_ms(record.created_at),
            step_settled_at: record.step_settled_at.map(unix_ms),
            finished_at: record.finished_at.map(unix_ms),
        })
    }
}

#[derive(Insertable)]
#[diesel(table_name = batch_agents)]
struct NewMemberRecord<'a> {
    batch_id: &'a str,
    seq: i64,
    agent: &'a str,
    ip: &'a str,
    state: &'static str,
}

impl Store {
    /// Stores a batch, its agents (all `pending`, in the order given) and its queue (committed,
    /// empty until the first step releases agents into it).
    pub fn create_batch(
        &self,
        batch: &NewBatch,
        members: &[BatchMember],
    ) -> Result<(), StoreError> {
        let id = batch.id.as_str();
        let now = db_time(batch.created_at);
        let max_fail = batch
            .rollout
            .max_fail
            .map(|amount| amount.to_string())
            .unwrap_or_default();
        self.conn()?.write_transaction(|conn| {
            diesel::insert_into(batches::table)
                .values((
                    batches::id.eq(id),
                    batches::auth_id.eq(&batch.auth_id),
                    batches::app.eq(&batch.app),
                    batches::func.eq(&batch.func),
                    batches::param.eq(&batch.param),
                    batches::timeout_s.eq(i64::from(batch.timeout_s)),
                    batches::proxy.eq(&batch.proxy),
                    batches::mode.eq(batch.mode.as_str()),
                    batches::target.eq(&batch.target),
                    batches::size.eq(batch.rollout.size_text()),
                    batches::window_model.eq(batch.rollout.window.as_str()),
                    batches::max_fail.eq(&max_fail),
                    batches::wait_s.eq(db_time(batch.rollout.wait_s)),
                    batches::offline.eq(batch.rollout.offline.to_string()),
                    batches::state.eq(BatchState::Running.as_str()),
                    batches::agent_count.eq(i64::try_from(members.len()).unwrap_or(i64::MAX)),
                    batches::retry_of.eq(batch.retry_of.as_ref().map(TaskId::as_str)),
                    batches::created_at.eq(now),
                ))
                .execute(conn)
                .map_err(super::duplicate_id(&batch.id))?;
            diesel::insert_into(queues::table)
                .values((
                    queues::id.eq(id),
                    queues::app.eq(&batch.app),
                    queues::auth_id.eq(&batch.auth_id),
                    queues::status.eq(QueueStatus::Committed.as_str()),
                    queues::created_at.eq(now),
                    queues::committed_at.eq(Some(now)),
                ))
                .execute(conn)
                .map_err(super::duplicate_id(&batch.id))?;
            let records: Vec<NewMemberRecord> = members
                .iter()
                .enumerate()
                .map(|(seq, member)| NewMemberRecord {
                    batch_id: id,
                    seq: i64::try_from(seq).unwrap_or(i64::MAX),
                    agent: member.agent.as_str(),
                    ip: &member.ip,
                    state: AgentState::Pending.as_str(),
                })
                .collect();
            for chunk in records.chunks(MEMBER_ROWS_PER_INSERT) {
                let insert = diesel::insert_into(batch_agents::table).values(chunk);
                match conn {
                    DbConnection::Pg(pg) => insert.execute(pg)?,
                    DbConnection::Sqlite(sqlite) => insert.execute(sqlite)?,
                };
            }
            Ok(())
        })
    }

    pub fn get_batch(&self, id: &TaskId) -> Result<Option<BatchRow>, StoreError> {
        let record = batches::table
            .find(id.as_str())
            .select(BatchRecord::as_select())
            .first(&mut *self.conn()?)
            .optional()?;
        record.map(BatchRow::try_from).transpose()
    }

    /// Batches that still need steps: running ones, and stopped ones whose last tasks still
    /// run (their results are still to be recorded in the batch).
    pub fn active_batch_ids(&self) -> Result<Vec<TaskId>, StoreError> {
        let mut conn = self.conn()?;
        let mut ids: Vec<String> = batches::table
            .filter(batches::state.eq(BatchState::Running.as_str()))
            .select(batches::id)
            .load(&mut *conn)?;
        let with_running: Vec<String> = batch_agents::table
            .filter(batch_agents::state.eq(AgentState::Running.as_str()))
            .select(batch_agents::batch_id)
            .distinct()
            .load(&mut *conn)?;
        ids.extend(with_running);
        ids.sort_unstable();
        ids.dedup();
        ids.iter()
            .map(|id| TaskId::parse(id).map_err(|err| StoreError::Corrupt(err.to_string())))
            .collect()
    }

    /// How many of the batch's agents are in each state (every state present, 0 when none).
    pub fn batch_counts(&self, id: &TaskId) -> Result<BTreeMap<AgentState, u64>, StoreError> {
        let rows: Vec<(String, i64)> = batch_agents::table
            .filter(batch_agents::batch_id.eq(id.as_str()))
            .group_by(batch_agents::state)
            .select((batch_agents::state, diesel::dsl::count_star()))
            .load(&mut *self.conn()?)?;
        let mut counts: BTreeMap<AgentState, u64> = AgentState::ALL
            .into_iter()
            .map(|state| (state, 0))
            .collect();
        for (state, n) in rows {
            let state = AgentState::parse(&state).ok_or_else(|| {
                StoreError::Corrupt(format!("batch {id}: unknown agent state {state:?}"))
            })?;
            counts.insert(state, u64::try_from(n).unwrap_or(0));
        }
        Ok(counts)
    }

    /// One page of the batch's agents in rollout order, only those in `states` when it is not
    /// empty; and how many there are in all.
    pub fn batch_agents(
        &self,
        id: &TaskId,
        states: &[AgentState],
        offset: u64,
        limit: u64,
    ) -> Result<(u64, Vec<BatchAgentRow>), StoreError> {
        let state_texts: Vec<&str> = states.iter().map(|state| state.as_str()).collect();
        let mut conn = self.conn()?;
        let mut count_query = batch_agents::table
            .filter(batch_agents::batch_id.eq(id.as_str()))
            .into_boxed();
        let mut page_query = batch_agents::table
            .filter(batch_agents::batch_id.eq(id.as_str()))
            .into_boxed();
        if !state_texts.is_empty() {
            count_query = count_query.filter(batch_agents::state.eq_any(state_texts.clone()));
            page_query = page_query.filter(batch_agents::state.eq_any(state_texts));
        }
        let total: i64 = count_query.count().get_result(&mut *conn)?;
        let rows: Vec<(i64, String, String, String, Option<String>)> = page_query
            .order(batch_agents::seq)
            .offset(i64::try_from(offset).unwrap_or(i64::MAX))
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .select((
                batch_agents::seq,
                batch_agents::agent,
                batch_agents::ip,
                batch_agents::state,
                batch_agents::task_id,
            ))
            .load(&mut *conn)?;
        let task_ids: Vec<&str> = rows.iter().filter_map(|row| row.4.as_deref()).collect();
        let mut tasks_by_id: HashMap<String, TaskRow> = HashMap::new();
        for chunk in task_ids.chunks(IDS_PER_QUERY) {
            let records: Vec<TaskRecord> = tasks::table
                .filter(tasks::id.eq_any(chunk))
                .select(TaskRecord::as_select())
                .load(&mut *conn)?;
            for record in records {
                let task = TaskRow::try_from(record)?;
                tasks_by_id.insert(task.id.to_string(), task);
            }
        }
        let mut page = Vec::with_capacity(rows.len());
        for (seq, agent, ip, state, task_id) in rows {
            page.push(BatchAgentRow {
                seq: u64::try_from(seq).unwrap_or(0),
                agent: AgentId::parse(&agent).map_err(|_| {
                    StoreError::Corrupt(format!("batch {id}: agent id {agent:?} is not valid"))
                })?,
                ip,
                state: AgentState::parse(&state).ok_or_else(|| {
                    StoreError::Corrupt(format!("batch {id}: unknown agent state {state:?}"))
                })?,
                task: task_id.and_then(|task_id| tasks_by_id.remove(&task_id)),
            });
        }
        Ok((u64::try_from(total).unwrap_or(0), page))
    }

    /// Stops a running batch: no agent is started any more, and the agents still waiting
    /// become `stopped`. The caller then stops the batch's queue, which cancels the running
    /// tasks (and the next step records them as `stopped`).
    pub fn stop_batch(&self, id: &TaskId, reason: &str, now: u64) -> Result<(), StoreError> {
        self.conn()?.write_transaction(|conn| {
            let batch =
                lock_batch(conn, id)?.ok_or_else(|| StoreError::BatchNotFound(id.clone()))?;
            if batch.state != BatchState::Running {
                return Err(StoreError::BatchStateDoesNotAllow {
                    batch_id: id.clone(),
                    state: batch.state,
                    action: "stop",
                });
            }
            end_batch(
                conn,
                id,
                BatchState::Stopped,
                reason,
                AgentState::Stopped,
                now,
            )
        })
    }

    /// One step of a batch's life: settles the agents whose tasks ended, then, while the
    /// batch runs, stops it when failures exceed `max_fail`, starts the agents the rollout
    /// allows now, reports as offline those it gives up on, and finishes it when no agent is
    /// left waiting or running. `online(agent, its stored (last_heartbeat_at, interval_ms))`
    /// judges an agent at `now`.
    pub fn advance_batch(
        &self,
        id: &TaskId,
        now: u64,
        online: &dyn Fn(&str, StoredBeat) -> bool,
    ) -> Result<BatchStep, StoreError> {
        self.conn()?.write_transaction(|conn| {
            let batch =
                lock_batch(conn, id)?.ok_or_else(|| StoreError::BatchNotFound(id.clone()))?;
            let mut step = BatchStep {
                settled: settle_members(conn, id)?,
                ..BatchStep::default()
            };
            let counts = member_counts(conn, id)?;
            let count_of = |state| counts.get(&state).copied().unwrap_or(0);
            let running = count_of(AgentState::Running);
            if batch.state != BatchState::Running {
                step.active = running > 0;
                return Ok(step);
            }
            if lock_queue(conn, id.as_str())? == Some(QueueStatus::Stopped) {
                // Stopped through the queue API: nothing more can run in it.
                let reason = "its queue was stopped through queue/stop";
                end_batch(
                    conn,
                    id,
                    BatchState::Stopped,
                    reason,
                    AgentState::Stopped,
                    now,
                )?;
                step.ended = Some(BatchState::Stopped);
                step.active = running > 0;
                return Ok(step);
            }
            let failures = count_of(AgentState::Failed) + count_of(AgentState::Timeout);
            let waiting = waiting_members(conn, id, online)?;
            let started_steps = started_steps(conn, id, &batch)?;
            let lowest_running: Option<i64> = batch_agents::table
                .filter(batch_agents::batch_id.eq(id.as_str()))
                .filter(batch_agents::state.eq(AgentState::Running.as_str()))
                .select(diesel::dsl::min(batch_agents::seq))
                .first(conn)?;
            let started = |step: usize| started_steps.contains(&step);
            let decided = plan(
                &batch.rollout,
                &Progress {
                    count: batch.count,
                    running,
                    failures,
                    waiting: &waiting,
                    lowest_running: lowest_running.map(|seq| u64::try_from(seq).unwrap_or(0)),
                    started_steps: &started,
                    now,
                    created_at: batch.created_at,
                    step_settled_at: batch.step_settled_at,
                },
            );
            if decided.threshold_exceeded {
                let max_fail = batch.rollout.max_fail.map(|amount| amount.to_string());
                let reason = format!(
                    "max_fail {} exceeded: {failures} of {} agents failed",
                    max_fail.unwrap_or_default(),
                    batch.count
                );
                end_batch(
                    conn,
                    id,
                    BatchState::Stopped,
                    &reason,
                    AgentState::Skipped,
                    now,
                )?;
                step.ended = Some(BatchState::Stopped);
                step.active = running > 0;
                return Ok(step);
            }
            if decided.mark_step_settled {
                diesel::update(batches::table.find(id.as_str()))
                    .set(batches::step_settled_at.eq(Some(db_time(now))))
                    .execute(conn)?;
            }
            set_member_states(
                conn,
                id,
                &decided.offline,
                AgentState::Pending,
                AgentState::Offline,
            )?;
            step.offline = decided.offline.len();
            step.released = release(conn, &batch, &decided.release, now)?;
            if step.released > 0 && batch.step_settled_at.is_some() {
                // A new step started: the next pause counts from when it settles.
                diesel::update(batches::table.find(id.as_str()))
                    .set(batches::step_settled_at.eq(None::<i64>))
                    .execute(conn)?;
            }
            let waiting_left = waiting.len() - decided.release.len() - decided.offline.len();
            let running_now = running + u64::try_from(step.released).unwrap_or(0);
            if waiting_left == 0 && running_now == 0 {
                end_batch(conn, id, BatchState::Finished, "", AgentState::Skipped, now)?;
                step.ended = Some(BatchState::Finished);
            } else {
                step.active = true;
            }
            Ok(step)
        })
    }
}

/// Reads the batch's row and, on PostgreSQL, locks it until the transaction ends.
fn lock_batch(conn: &mut DbConnection, id: &TaskId) -> Result<Option<BatchRow>, StoreError> {
    let query = batches::table.find(id.as_str());
    let record = match conn {
        DbConnection::Pg(pg) => query
            .select(BatchRecord::as_select())
            .for_update()
            .first(pg)
            .optional()?,
        DbConnection::Sqlite(sqlite) => query
            .select(BatchRecord::as_select())
            .first(sqlite)
            .optional()?,
    };
    record.map(BatchRow::try_from).transpose()
}

/// Ends a batch in `state`; agents still waiting become `leftover`.
fn end_batch(
    conn: &mut DbConnection,
    id: &TaskId,
    state: BatchState,
    reason: &str,
    leftover: AgentState,
    now: u64,
) -> Result<(), StoreError> {
    diesel::update(batch_agents::table)
        .filter(batch_agents::batch_id.eq(id.as_str()))
        .filter(batch_agents::state.eq(AgentState::Pending.as_str()))
        .set(batch_agents::state.eq(leftover.as_str()))
        .execute(conn)?;
    diesel::update(batches::table.find(id.as_str()))
        .filter(batches::state.eq(BatchState::Running.as_str()))
        .set((
            batches::state.eq(state.as_str()),
            batches::stop_reason.eq(reason),
            batches::finished_at.eq(Some(db_time(now))),
        ))
        .execute(conn)?;
    Ok(())
}

/// The state an agent's settled task leaves it in; `None` while the task is not settled.
pub fn settled_state(
    status: TaskStatus,
    worker_flag: Option<i8>,
    message: &str,
) -> Option<AgentState> {
    match status {
        TaskStatus::Pending | TaskStatus::Executing => None,
        TaskStatus::Stopped => Some(AgentState::Stopped),
        TaskStatus::Skipped => Some(AgentState::Skipped),
        TaskStatus::Finished => Some(match worker_flag {
            Some(1) => AgentState::Ok,
            Some(-1) if message == AGENT_TIMEOUT_MESSAGE => AgentState::Timeout,
            // Including no result before the deadline (`DEADLINE_MESSAGE`): the agent was
            // online when its task was sent and never reported.
            _ => AgentState::Failed,
        }),
    }
}

/// Moves `running` agents whose task has settled to the state it left them in.
fn settle_members(conn: &mut DbConnection, id: &TaskId) -> Result<Vec<AgentState>, StoreError> {
    let running: Vec<(i64, Option<String>)> = batch_agents::table
        .filter(batch_agents::batch_id.eq(id.as_str()))
        .filter(batch_agents::state.eq(AgentState::Running.as_str()))
        .select((batch_agents::seq, batch_agents::task_id))
        .load(conn)?;
    let seq_of_task: HashMap<String, i64> = running
        .into_iter()
        .filter_map(|(seq, task_id)| task_id.map(|task_id| (task_id, seq)))
        .collect();
    let task_ids: Vec<&str> = seq_of_task.keys().map(String::as_str).collect();
    let mut by_state: BTreeMap<AgentState, Vec<i64>> = BTreeMap::new();
    for chunk in task_ids.chunks(IDS_PER_QUERY) {
        let settled: Vec<(String, String, Option<i32>, Option<String>)> = tasks::table
            .filter(tasks::id.eq_any(chunk))
            .filter(
                tasks::status
                    .ne_all([TaskStatus::Pending.as_str(), TaskStatus::Executing.as_str()]),
            )
            .select((
                tasks::id,
                tasks::status,
                tasks::worker_flag,
                tasks::worker_message,
            ))
            .load(conn)?;
        for (task_id, status, worker_flag, message) in settled {
            let status = TaskStatus::parse(&status).ok_or_else(|| {
                StoreError::Corrupt(format!("task {task_id}: unknown status {status:?}"))
            })?;
            let worker_flag = worker_flag.and_then(|flag| i8::try_from(flag).ok());
            if let (Some(state), Some(&seq)) = (
                settled_state(status, worker_flag, message.as_deref().unwrap_or("")),
                seq_of_task.get(&task_id),
            ) {
                by_state.entry(state).or_default().push(seq);
            }
        }
    }
    let mut settled = Vec::new();
    for (state, seqs) in by_state {
        for chunk in seqs.chunks(IDS_PER_QUERY) {
            diesel::update(batch_agents::table)
                .filter(batch_agents::batch_id.eq(id.as_str()))
                .filter(batch_agents::seq.eq_any(chunk))
                .filter(batch_agents::state.eq(AgentState::Running.as_str()))
                .set(batch_agents::state.eq(state.as_str()))
                .execute(conn)?;
        }
        settled.extend(std::iter::repeat_n(state, seqs.len()));
    }
    Ok(settled)
}

fn member_counts(
    conn: &mut DbConnection,
    id: &TaskId,
) -> Result<HashMap<AgentState, u64>, StoreError> {
    let rows: Vec<(String, i64)> = batch_agents::table
        .filter(batch_agents::batch_id.eq(id.as_str()))
        .group_by(batch_agents::state)
        .select((batch_agents::state, diesel::dsl::count_star()))
        .load(conn)?;
    rows.into_iter()
        .map(|(state, n)| {
            AgentState::parse(&state)
                .map(|state| (state, u64::try_from(n).unwrap_or(0)))
                .ok_or_else(|| StoreError::Corrupt(format!("batch {id}: unknown state {state:?}")))
        })
        .collect()
}

/// The agents still waiting for their turn, in rollout order, with whether each is online.
fn waiting_members(
    conn: &mut DbConnection,
    id: &TaskId,
    online: &dyn Fn(&str, StoredBeat) -> bool,
) -> Result<Vec<Waiting>, StoreError> {
    let pending: Vec<(i64, String)> = batch_agents::table
        .filter(batch_agents::batch_id.eq(id.as_str()))
        .filter(batch_agents::state.eq(AgentState::Pending.as_str()))
        .order(batch_agents::seq)
        .select((batch_agents::seq, batch_agents::agent))
        .load(conn)?;
    let agent_ids: Vec<&str> = pending.iter().map(|(_, agent)| agent.as_str()).collect();
    let mut beats: HashMap<String, (u64, u64)> = HashMap::new();
    for chunk in agent_ids.chunks(IDS_PER_QUERY) {
        let rows: Vec<(String, i64, i64)> = agents::table
            .filter(agents::id.eq_any(chunk))
            .select((agents::id, agents::last_heartbeat_at, agents::interval_ms))
            .load(conn)?;
        for (agent, last, interval) in rows {
            beats.insert(agent, (unix_ms(last), unix_ms(interval)));
        }
    }
    Ok(pending
        .into_iter()
        .map(|(seq, agent)| Waiting {
            seq: u64::try_from(seq).unwrap_or(0),
            online: online(&agent, beats.get(&agent).copied()),
        })
        .collect())
}

/// Lockstep: the steps in which some agent has left `pending`.
fn started_steps(
    conn: &mut DbConnection,
    id: &TaskId,
    batch: &BatchRow,
) -> Result<std::collections::HashSet<usize>, StoreError> {
    if batch.rollout.window != Window::Lockstep {
        return Ok(Default::default());
    }
    let seqs: Vec<i64> = batch_agents::table
        .filter(batch_agents::batch_id.eq(id.as_str()))
        .filter(batch_agents::state.ne(AgentState::Pending.as_str()))
        .select(batch_agents::seq)
        .load(conn)?;
    Ok(seqs
        .into_iter()
        .map(|seq| {
            batch
                .rollout
                .step_of(u64::try_from(seq).unwrap_or(0), batch.count)
                .0
        })
        .collect())
}

fn set_member_states(
    conn: &mut DbConnection,
    id: &TaskId,
    seqs: &[u64],
    from: AgentState,
    to: AgentState,
) -> Result<(), StoreError> {
    let seqs: Vec<i64> = seqs.iter().map(|&seq| db_time(seq)).collect();
    for chunk in seqs.chunks(IDS_PER_QUERY) {
        diesel::update(batch_agents::table)
            .filter(batch_agents::batch_id.eq(id.as_str()))
            .filter(batch_agents::seq.eq_any(chunk))
            .filter(batch_agents::state.eq(from.as_str()))
            .set(batch_agents::state.eq(to.as_str()))
            .execute(conn)?;
    }
    Ok(())
}

/// Starts the agents at `seqs`: one queue task each, in the batch's queue (reopened if it had
/// finished between steps), and the agent `running` with that task's id. Returns how many.
fn release(
    conn: &mut DbConnection,
    batch: &BatchRow,
    seqs: &[u64],
    now: u64,
) -> Result<usize, StoreError> {
    if seqs.is_empty() {
        return Ok(0);
    }
    let id = batch.id.as_str();
    match lock_queue(conn, id)? {
        Some(QueueStatus::Committed) => {}
        Some(QueueStatus::Finished) => {
            diesel::update(queues::table.find(id))
                .set((
                    queues::status.eq(QueueStatus::Committed.as_str()),
                    queues::finished_at.eq(None::<i64>),
                ))
                .execute(conn)?;
        }
        Some(status) => {
            return Err(StoreError::Corrupt(format!(
                "batch {id}: running while its queue is {status}"
            )))
        }
        None => {
            return Err(StoreError::Corrupt(format!(
                "batch {id}: its queue is missing"
            )))
        }
    }
    let seq_values: Vec<i64> = seqs.iter().map(|&seq| db_time(seq)).collect();
    let mut members: Vec<(i64, String)> = Vec::with_capacity(seqs.len());
    for chunk in seq_values.chunks(IDS_PER_QUERY) {
        members.extend(
            batch_agents::table
                .filter(batch_agents::batch_id.eq(id))
                .filter(batch_agents::seq.eq_any(chunk))
                .filter(batch_agents::state.eq(AgentState::Pending.as_str()))
                .select((batch_agents::seq, batch_agents::agent))
                .load::<(i64, String)>(conn)?,
        );
    }
    let mut new_tasks = Vec::with_capacity(members.len());
    for (seq, agent) in &members {
        let agent = AgentId::parse(agent)
            .map_err(|_| StoreError::Corrupt(format!("batch {id}: agent id {agent:?}")))?;
        new_tasks.push((
            *seq,
            NewTask {
                id: TaskId::random(),
                queue_id: Some(batch.id.clone()),
                task_type: TaskType::Queue,
                agent,
                app: batch.app.clone(),
                func: batch.func.clone(),
                param: batch.param.clone(),
                timeout_s: batch.timeout_s,
                proxy: batch.proxy.clone(),
                mode: batch.mode,
                depend_task_id: None,
                created_at: now,
            },
        ));
    }
    let mut released = 0;
    for (seq, task) in &new_tasks {
        let n_updated = diesel::update(batch_agents::table.find((id, *seq)))
            .filter(batch_agents::state.eq(AgentState::Pending.as_str()))
            .filter(batch_agents::task_id.is_null())
            .set((
                batch_agents::state.eq(AgentState::Running.as_str()),
                batch_agents::task_id.eq(Some(task.id.as_str())),
            ))
            .execute(conn)?;
        if n_updated != 1 {
            return Err(StoreError::Corrupt(format!(
                "batch {id}: agent {seq} changed while its step was decided"
            )));
        }
        released += 1;
    }
    let records: Vec<NewTaskRecord> = new_tasks
        .iter()
        .map(|(_, task)| NewTaskRecord::pending(task))
        .collect();
    for chunk in records.chunks(1_000) {
        insert_task_records(conn, chunk)?;
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    //! Run on SQLite always, and on PostgreSQL when `ELVES_TEST_PG_URL` is set.
    use super::*;
    use crate::store::testing::{pg_url, TestDatabase};
    use crate::store::AgentRow;
    use elves_shared::wire::JobResult;
    use std::time::Duration;

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

    const NOW: u64 = 1_000_000;

    fn always_online(_: &str, _: StoredBeat) -> bool {
        true
    }

    fn batch_over(store: &Store, n: usize, size: &str, max_fail: &str) -> TaskId {
        let members: Vec<BatchMember> = (0..n)
            .map(|i| {
                let agent = AgentId::parse(&format!("a{i}")).unwrap();
                store
                    .upsert_agent(&AgentRow {
                        id: agent.clone(),
                        ip: format!("10.0.0.{i}"),
                        asset: String::new(),
                        version: String::new(),
                        apps: BTreeMap::new(),
                        last_heartbeat_at: NOW,
                        interval_ms: 1_000,
                        labels: BTreeMap::new(),
                    })
                    .unwrap();
                BatchMember {
                    agent,
                    ip: format!("10.0.0.{i}"),
                }
            })
            .collect();
        let batch = NewBatch {
            id: TaskId::random(),
            auth_id: "ops".into(),
            app: "demo".into(),
            func: "run".into(),
            param: String::new(),
            timeout_s: 30,
            proxy: String::new(),
            mode: Mode::NP,
            target: "*".into(),
            rollout: Rollout::parse(size, "", max_fail, "", "").unwrap(),
            retry_of: None,
            created_at: NOW,
        };
        store.create_batch(&batch, &members).unwrap();
        batch.id
    }

    /// Claims what is ready and answers each task with `worker_flag`.
    fn run_ready(store: &Store, worker_flag: i8) -> usize {
        let claimed = store
            .claim_ready_tasks("center-1", NOW, 1_000, Duration::from_secs(5))
            .unwrap();
        let results: Vec<JobResult> = claimed
            .iter()
            .map(|task| JobResult {
                id: task.id.clone(),
                agent: task.agent.clone(),
                task_type: TaskType::Queue,
                mode: Mode::NP,
                app: task.app.clone(),
                func: task.func.clone(),
                worker_flag,
                worker_message: "done".into(),
                worker_costtime: 5,
                started_at: NOW,
                finished_at: NOW,
                error: String::new(),
            })
            .collect();
        store.record_results(&results, NOW).unwrap();
        claimed.len()
    }

    #[test]
    fn a_batch_rolls_out_step_by_step_and_releases_each_agent_once() {
        on_both_backends(|store| {
            let id = batch_over(store, 5, "2", "");
            let first = store.advance_batch(&id, NOW, &always_online).unwrap();
            assert_eq!(first.released, 2);
            // Nothing settled yet: a second step releases nobody, however often it runs.
            assert_eq!(
                store
                    .advance_batch(&id, NOW, &always_online)
                    .unwrap()
                    .released,
                0
            );
            assert_eq!(run_ready(store, 1), 2);
            let second = store.advance_batch(&id, NOW, &always_online).unwrap();
            assert_eq!(second.settled, [AgentState::Ok, AgentState::Ok]);
            assert_eq!(
                second.released, 2,
                "the queue reopened after it had finished"
            );
            assert_eq!(run_ready(store, 1), 2);
            assert_eq!(
                store
                    .advance_batch(&id, NOW, &always_online)
                    .unwrap()
                    .released,
                1
            );
            assert_eq!(run_ready(store, 1), 1);
            let last = store.advance_batch(&id, NOW, &always_online).unwrap();
            assert_eq!(last.ended, Some(BatchState::Finished));
            assert!(!last.active);
            assert_eq!(store.batch_counts(&id).unwrap()[&AgentState::Ok], 5);
            assert_eq!(
                store.queue_tasks(&id).unwrap().len(),
                5,
                "one task per agent"
            );
            assert!(store.active_batch_ids().unwrap().is_empty());
        });
    }

    #[test]
    fn failures_over_max_fail_stop_the_batch_and_skip_the_rest() {
        on_both_backends(|store| {
            let id = batch_over(store, 4, "2", "1");
            store.advance_batch(&id, NOW, &always_online).unwrap();
            run_ready(store, 0);
            let step = store.advance_batch(&id, NOW, &always_online).unwrap();
            assert_eq!(step.ended, Some(BatchState::Stopped));
            let batch = store.get_batch(&id).unwrap().unwrap();
            assert!(
                batch.stop_reason.contains("max_fail 1 exceeded"),
                "{}",
                batch.stop_reason
            );
            let counts = store.batch_counts(&id).unwrap();
            assert_eq!(counts[&AgentState::Failed], 2);
            assert_eq!(counts[&AgentState::Skipped], 2);
            assert!(matches!(
                store.stop_batch(&id, "again", NOW),
                Err(StoreError::BatchStateDoesNotAllow { .. })
            ));
        });
    }

    #[test]
    fn offline_agents_are_reported_without_a_task() {
        on_both_backends(|store| {
            let id = batch_over(store, 3, "100%", "");
            let nobody_online = |_: &str, _: StoredBeat| false;
            let step = store.advance_batch(&id, NOW, &nobody_online).unwrap();
            assert_eq!((step.released, step.offline), (0, 3));
            assert_eq!(step.ended, Some(BatchState::Finished));
            assert!(store.queue_tasks(&id).unwrap().is_empty());
        });
    }
}
