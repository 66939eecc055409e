//! `/api/v2/target/resolve` and `/api/v2/batch/*` (SPEC §12), and `inventory/reload`.
//!
//! The handlers resolve targets against the agents the database knows (with the inventory's
//! labels merged in), check that the caller may run the app on every matched agent, and store
//! the batch; the BatchRunner actor rolls it out and TaskQueue sends its tasks.

use super::openapi;
use super::request::{self, Caller, Params};
use super::{audit, respond, ApiState, V2Call};
use crate::actors::batch::AdvanceBatches;
use crate::actors::heartbeat::is_online;
use crate::actors::inventory::ReloadInventory;
use crate::actors::task_queue::StopQueue;
use crate::error::ApiError;
use crate::store::blocking::blocking;
use crate::store::rollout::{AgentState, Rollout};
use crate::store::{AgentRow, BatchMember, BatchRow, NewBatch, StoreError, TaskRow};
use actix_web::{web, HttpRequest, HttpResponse};
use elves_shared::quartz::format_time;
use elves_shared::target::{AgentFacts, Target};
use elves_shared::time::now_unix_ms;
use elves_shared::wire::TaskId;
use serde_json::{json, Value};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v2/target/resolve", web::route().to(resolve))
        .route("/api/v2/batch/create", web::route().to(create))
        .route("/api/v2/batch/status", web::route().to(status))
        .route("/api/v2/batch/result", web::route().to(result))
        .route("/api/v2/batch/stop", web::route().to(stop))
        .route("/api/v2/batch/retry", web::route().to(retry))
        .route(
            "/api/v2/inventory/reload",
            web::route().to(reload_inventory),
        );
}

/// Agents named in a refusal at most; the message says how many more there are.
const NAMED_IN_REFUSAL: usize = 50;

const DEFAULT_PAGE_SIZE: u64 = 100;
const MAX_PAGE_SIZE: u64 = 10_000;

/// An agent a target matched.
struct Matched {
    row: AgentRow,
    online: bool,
}

fn parse_target(params: &Params) -> Result<(String, Target), ApiError> {
    let text = params.get_or_empty("target").to_string();
    let target = Target::parse(&text).map_err(|err| ApiError::BadTarget(err.to_string()))?;
    Ok((text, target))
}

/// The agents that `target` matches, by id, with the inventory merged in: the database's rows
/// with what the Heartbeat registry holds in memory laid over them, so that an agent counts
/// from its first heartbeat, not from the next flush of its row.
async fn matched_agents(state: &ApiState, target: Target) -> Result<Vec<Matched>, ApiError> {
    let store = state.store.clone();
    let stored = blocking(move || store.list_agents()).await?;
    let mut rows: std::collections::BTreeMap<String, AgentRow> = stored
        .into_iter()
        .map(|row| (row.id.to_string(), row))
        .collect();
    for row in state.children.presence.rows() {
        rows.insert(row.id.to_string(), row);
    }
    let inventory = state.children.inventory_labels.clone();
    let missed_beats = state.config.heartbeat.offline_after_missed_beats;
    let now = now_unix_ms();
    Ok(rows
        .into_values()
        .filter_map(|row| {
            let labels = inventory.merged(row.id.as_str(), &row.ip, &row.labels);
            let facts = AgentFacts {
                id: row.id.as_str(),
                ip: &row.ip,
                labels: &labels,
            };
            if !target.matches(&facts) {
                return None;
            }
            let online = is_online(row.last_heartbeat_at, row.interval_ms, missed_beats, now);
            Some(Matched { row, online })
        })
        .collect())
}

fn page_params(params: &Params) -> Result<(u64, u64), ApiError> {
    let number = |key: &str, default: u64, max: u64| -> Result<u64, ApiError> {
        match params.get_or_empty(key) {
            "" => Ok(default),
            text => text
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| {
                    ApiError::BadParam(format!(
                        "{key} must be a whole number 1-{max}, got {text:?}"
                    ))
                }),
        }
    };
    Ok((
        number("page", 1, u64::MAX)?,
        number("page_size", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?,
    ))
}

/// The agents a target expression matches, a page at a time.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/target/resolve",
    tag = "batch",
    params(("target" = String, Query, description = "Target expression (SPEC §12)"), openapi::PageParams),
    extensions(("x-error-codes" = json!(["403.10", "403.2"]))),
)]
pub async fn resolve(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    let outcome = async {
        let call = V2Call::authenticate(&req, &body, &state)?;
        let (_, target) = parse_target(&call.params)?;
        let (page, page_size) = page_params(&call.params)?;
        let visible: Vec<Matched> = matched_agents(&state, target)
            .await?
            .into_iter()
            .filter(|agent| {
                super::access::require_agent(&state, &call.caller, &agent.row.id).is_ok()
            })
            .collect();
        let skip = usize::try_from((page - 1).saturating_mul(page_size)).unwrap_or(usize::MAX);
        let agents: Vec<Value> = visible
            .iter()
            .skip(skip)
            .take(usize::try_from(page_size).unwrap_or(usize::MAX))
            .map(|agent| json!({"id": agent.row.id, "ip": agent.row.ip, "online": agent.online}))
            .collect();
        Ok(json!({ "count": visible.len(), "agents": agents }))
    }
    .await;
    respond(&state, "target/resolve", outcome)
}

/// Refuses the whole batch unless `app` may run on every agent: 401.6 naming those it may not.
fn require_every_agent(
    state: &ApiState,
    caller: &Caller,
    app: &str,
    agents: &[BatchMember],
) -> Result<(), ApiError> {
    super::access::require_app(state, caller, app)?;
    let refused: Vec<&str> = agents
        .iter()
        .filter(|member| super::access::require_bound(state, app, &member.agent).is_err())
        .map(|member| member.agent.as_str())
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    let mut names = refused
        .iter()
        .take(NAMED_IN_REFUSAL)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if refused.len() > NAMED_IN_REFUSAL {
        names.push_str(&format!(" and {} more", refused.len() - NAMED_IN_REFUSAL));
    }
    Err(ApiError::Forbidden(format!(
        "app {app} may not run on {} of the {} matched agents: {names}",
        refused.len(),
        agents.len()
    )))
}

/// Starts a batch: one task per agent the target matches, rolled out in steps: `{id, count}`.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/batch/create",
    tag = "batch",
    params(openapi::AppParam, openapi::TaskSpec, ("target" = String, Query, description = "Target expression (SPEC §12)"), ("size" = Option<String>, Query), ("window" = Option<String>, Query), ("max_fail" = Option<String>, Query), ("wait_s" = Option<String>, Query), ("offline" = Option<String>, Query)),
    extensions(("x-error-codes" = json!(["403.2", "403.3", "403.4", "403.7", "403.8", "403.10", "403.11", "413.2"]))),
)]
pub async fn create(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    let outcome = async {
        let call = V2Call::authenticate(&req, &body, &state)?;
        let outcome = create_authenticated(&call, &state).await;
        let id = outcome
            .as_ref()
            .ok()
            .and_then(|result| result["id"].as_str())
            .unwrap_or_default()
            .to_string();
        audit(&state, &call.caller, "batch/create", &id, None, &outcome);
        outcome
    }
    .await;
    respond(&state, "batch/create", outcome)
}

async fn create_authenticated(call: &V2Call, state: &ApiState) -> Result<Value, ApiError> {
    let params = &call.params;
    // Table order: 403.2 param and proxy, 403.3 app, 403.4 mode, 403.7 func, 403.8 timeout,
    // 403.10 target, 403.11 rollout.
    let param = request::json_param(params)?;
    let proxy = request::proxy(params)?;
    let app = request::app_name(params)?;
    let mode = request::mode(params)?;
    let func = request::func_name(params)?;
    let timeout_s = request::timeout_s(params, state.config.rt.default_timeout_s)?;
    let (target_text, target) = parse_target(params)?;
    let rollout = Rollout::parse(
        params.get_or_empty("size"),
        params.get_or_empty("window"),
        params.get_or_empty("max_fail"),
        params.get_or_empty("wait_s"),
        params.get_or_empty("offline"),
    )
    .map_err(ApiError::BadRollout)?;
    super::access::require_app(state, &call.caller, &app)?;
    let members: Vec<BatchMember> = matched_agents(state, target)
        .await?
        .into_iter()
        .map(|agent| BatchMember {
            agent: agent.row.id,
            ip: agent.row.ip,
        })
        .collect();
    require_every_agent(state, &call.caller, &app, &members)?;
    let batch = NewBatch {
        id: TaskId::random(),
        auth_id: call.caller.auth_id.clone(),
        app,
        func,
        param,
        timeout_s,
        proxy,
        mode,
        target: target_text,
        rollout,
        retry_of: None,
        created_at: now_unix_ms(),
    };
    store_batch(state, batch, members).await
}

async fn store_batch(
    state: &ApiState,
    batch: NewBatch,
    members: Vec<BatchMember>,
) -> Result<Value, ApiError> {
    let (id, count) = (batch.id.clone(), members.len());
    let store = state.store.clone();
    blocking(move || store.create_batch(&batch, &members)).await?;
    state.children.batch.do_send(AdvanceBatches);
    Ok(json!({ "id": id, "count": count }))
}

/// The batch named by `id`, if the caller holds its app. A malformed id cannot name a batch:
/// 416.1 as for an unknown one.
async fn caller_batch(state: &ApiState, call: &V2Call) -> Result<BatchRow, ApiError> {
    let text = call.params.get_or_empty("id").to_string();
    let id = TaskId::parse(&text).map_err(|_| ApiError::BatchNotFound(text.clone()))?;
    let store = state.store.clone();
    let batch = blocking(move || store.get_batch(&id))
        .await?
        .ok_or(ApiError::BatchNotFound(text))?;
    super::access::require_app(state, &call.caller, &batch.app)?;
    Ok(batch)
}

async fn status_of(state: &ApiState, batch: &BatchRow) -> Result<Value, ApiError> {
    let store = state.store.clone();
    let id = batch.id.clone();
    let counts = blocking(move || store.batch_counts(&id)).await?;
    let zone = state.config.cron.zone();
    let counts: serde_json::Map<String, Value> = counts
        .into_iter()
        .map(|(agent_state, n)| (agent_state.as_str().to_string(), json!(n)))
        .collect();
    let count_of = |state: &str| counts.get(state).and_then(Value::as_u64).unwrap_or(0);
    let settled = batch
        .count
        .saturating_sub(count_of("pending"))
        .saturating_sub(count_of("running"));
    Ok(json!({
        "id": batch.id,
        "state": batch.state.as_str(),
        "count": batch.count,
        "counts": counts,
        "progress": settled,
        "started_at": format_time(batch.created_at, zone),
        "finished_at": batch.finished_at.map(|at| format_time(at, zone)).unwrap_or_default(),
        "retry_of": batch.retry_of.as_ref().map(TaskId::to_string).unwrap_or_default(),
        "stop_reason": batch.stop_reason,
        "target": batch.target,
        "app": batch.app,
        "func": batch.func,
        "size": batch.rollout.size_text(),
        "window": batch.rollout.window.as_str(),
        "max_fail": batch.rollout.max_fail.map(|amount| amount.to_string()).unwrap_or_default(),
        "offline": batch.rollout.offline.to_string(),
    }))
}

/// A batch's state and its agents counted by state.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/batch/status",
    tag = "batch",
    params(openapi::IdParam),
    extensions(("x-error-codes" = json!(["416.1"]))),
)]
pub async fn status(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    let outcome = async {
        let call = V2Call::authenticate(&req, &body, &state)?;
        let batch = caller_batch(&state, &call).await?;
        status_of(&state, &batch).await
    }
    .await;
    respond(&state, "batch/status", outcome)
}

fn parse_states(text: &str, default: &[AgentState]) -> Result<Vec<AgentState>, ApiError> {
    if text.trim().is_empty() {
        return Ok(default.to_vec());
    }
    text.split(',')
        .map(|name| {
            AgentState::parse(name.trim()).ok_or_else(|| {
                ApiError::BadParam(format!(
                    "unknown state {name:?}: use pending, running, ok, failed, timeout, offline, skipped or stopped"
                ))
            })
        })
        .collect()
}

/// The worker fields of SPEC §11: empty strings and 0 while the agent has no result.
fn worker_fields(task: Option<&TaskRow>) -> (String, String, u64) {
    match task {
        Some(task) if task.worker_flag.is_some() => (
            task.worker_flag
                .map(|flag| flag.to_string())
                .unwrap_or_default(),
            task.worker_message.clone().unwrap_or_default(),
            task.worker_costtime.unwrap_or(0),
        ),
        _ => (String::new(), String::new(), 0),
    }
}

/// A batch's agents with their results, a page at a time, optionally of some states only.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/batch/result",
    tag = "batch",
    params(openapi::IdParam, openapi::PageParams, ("state" = Option<String>, Query, description = "Comma-separated agent states to list")),
    extensions(("x-error-codes" = json!(["403.2", "416.1"]))),
)]
pub async fn result(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    let outcome = async {
        let call = V2Call::authenticate(&req, &body, &state)?;
        let (page, page_size) = page_params(&call.params)?;
        let states = parse_states(call.params.get_or_empty("state"), &[])?;
        let batch = caller_batch(&state, &call).await?;
        let store = state.store.clone();
        let offset = (page - 1).saturating_mul(page_size);
        let (count, rows) =
            blocking(move || store.batch_agents(&batch.id, &states, offset, page_size)).await?;
        let items: Vec<Value> = rows
            .iter()
            .map(|row| {
                let (worker_flag, worker_message, worker_costtime) = worker_fields(row.task.as_ref());
                json!({
                    "agent": row.agent,
                    "ip": row.ip,
                    "state": row.state.as_str(),
                    "task_id": row.task.as_ref().map(|task| task.id.to_string()).unwrap_or_default(),
                    "worker_flag": worker_flag,
                    "worker_message": worker_message,
                    "worker_costtime": worker_costtime,
                })
            })
            .collect();
        Ok(json!({ "count": count, "items": items }))
    }
    .await;
    respond(&state, "batch/result", outcome)
}

/// Stops a batch: no more steps, running tasks cancelled.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/batch/stop",
    tag = "batch",
    params(openapi::IdParam),
    extensions(("x-error-codes" = json!(["416.1", "416.2"]))),
)]
pub async fn stop(req: HttpRequest, body: web::Bytes, state: web::Data<ApiState>) -> HttpResponse {
    let outcome = async {
        let call = V2Call::authenticate(&req, &body, &state)?;
        let batch = caller_batch(&state, &call).await?;
        let outcome = stop_batch(&state, &call.caller, &batch).await;
        audit(
            &state,
            &call.caller,
            "batch/stop",
            batch.id.as_str(),
            None,
            &outcome,
        );
        outcome
    }
    .await;
    respond(&state, "batch/stop", outcome)
}

async fn stop_batch(
    state: &ApiState,
    caller: &Caller,
    batch: &BatchRow,
) -> Result<Value, ApiError> {
    let store = state.store.clone();
    let id = batch.id.clone();
    let reason = format!("stopped by {}", caller.auth_id);
    blocking(move || store.stop_batch(&id, &reason, now_unix_ms())).await?;
    // The batch's queue: running tasks are cancelled on their agents and become `stoped`.
    let stopped = state
        .children
        .task_queue
        .send(StopQueue {
            queue_id: batch.id.clone(),
        })
        .await
        .map_err(|err| ApiError::Internal(format!("task queue: {err}")))?;
    match stopped {
        // A queue with nothing left to run had finished between two steps.
        Ok(_) | Err(StoreError::QueueStatusDoesNotAllow { .. }) => {}
        Err(err) => return Err(err.into()),
    }
    // The stopped tasks become `stopped` agents at the next step; take it now.
    state.children.batch.do_send(AdvanceBatches);
    let store = state.store.clone();
    let id = batch.id.clone();
    let stopped = blocking(move || store.get_batch(&id))
        .await?
        .ok_or_else(|| ApiError::BatchNotFound(batch.id.to_string()))?;
    status_of(state, &stopped).await
}

/// A new batch of the agents of this one in the given states (default failed, timeout and
/// offline): `{id, count}`.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/batch/retry",
    tag = "batch",
    params(openapi::IdParam, ("states" = Option<String>, Query, description = "Comma-separated agent states to retry")),
    extensions(("x-error-codes" = json!(["403.2", "416.1", "416.2"]))),
)]
pub async fn retry(req: HttpRequest, body: web::Bytes, state: web::Data<ApiState>) -> HttpResponse {
    let outcome = async {
        let call = V2Call::authenticate(&req, &body, &state)?;
        let states = parse_states(
            call.params.get_or_empty("states"),
            &[AgentState::Failed, AgentState::Timeout, AgentState::Offline],
        )?;
        let origin = caller_batch(&state, &call).await?;
        let outcome = retry_batch(&state, &call.caller, &origin, states).await;
        let id = outcome
            .as_ref()
            .ok()
            .and_then(|result| result["id"].as_str())
            .unwrap_or_default()
            .to_string();
        audit(&state, &call.caller, "batch/retry", &id, None, &outcome);
        outcome
    }
    .await;
    respond(&state, "batch/retry", outcome)
}

/// A new batch of `origin`'s agents in `states` (the failed subset): `batch/retry`, and the
/// dashboard's re-run of a batch's failed agents.
pub(crate) async fn retry_batch(
    state: &ApiState,
    caller: &Caller,
    origin: &BatchRow,
    states: Vec<AgentState>,
) -> Result<Value, ApiError> {
    if origin.state == crate::store::BatchState::Running {
        return Err(ApiError::BatchState(format!(
            "batch {} is running: retry it once it has finished or been stopped",
            origin.id
        )));
    }
    let store = state.store.clone();
    let id = origin.id.clone();
    let wanted = states.clone();
    let (_, rows) = blocking(move || store.batch_agents(&id, &wanted, 0, u64::MAX >> 1)).await?;
    if rows.is_empty() {
        let names: Vec<&str> = states.iter().map(|state| state.as_str()).collect();
        return Err(ApiError::BatchState(format!(
            "batch {} has no agent in state {} to retry",
            origin.id,
            names.join(", ")
        )));
    }
    let members: Vec<BatchMember> = rows
        .into_iter()
        .map(|row| BatchMember {
            agent: row.agent,
            ip: row.ip,
        })
        .collect();
    require_every_agent(state, caller, &origin.app, &members)?;
    let batch = NewBatch {
        id: TaskId::random(),
        auth_id: caller.auth_id.clone(),
        app: origin.app.clone(),
        func: origin.func.clone(),
        param: origin.param.clone(),
        timeout_s: origin.timeout_s,
        proxy: origin.proxy.clone(),
        mode: origin.mode,
        target: origin.target.clone(),
        rollout: origin.rollout.clone(),
        retry_of: Some(origin.id.clone()),
        created_at: now_unix_ms(),
    };
    store_batch(state, batch, members).await
}

/// Re-reads the agents' labels from the inventory (admin).
#[utoipa::path(method(get, post), path = "/api/v2/inventory/reload", tag = "batch")]
pub async fn reload_inventory(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    let outcome = async {
        let call = V2Call::authenticate(&req, &body, &state)?;
        super::access::require_admin(&state, &call.caller)?;
        let status = state
            .children
            .inventory
            .send(ReloadInventory)
            .await
            .map_err(|err| ApiError::Internal(format!("inventory: {err}")))?;
        let outcome = serde_json::to_value(&status)
            .map_err(|err| ApiError::Internal(format!("inventory status: {err}")));
        audit(
            &state,
            &call.caller,
            "inventory/reload",
            &status.source,
            None,
            &outcome,
        );
        outcome
    }
    .await;
    respond(&state, "inventory/reload", outcome)
}
