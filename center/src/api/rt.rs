//! `/api/v2/rt/exec`: run an app function on one agent and wait for its result.

use super::openapi;
use super::{request, respond, ApiState, V2Call};
use crate::actors::scheduler::{DispatchError, RunInstant};
use crate::error::ApiError;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;
use std::time::Duration;

/// Runs an app function on one agent and waits for its result: `{id, worker_flag, worker_message,
/// worker_costtime}`; with `wait_s`, `{id, state: "running"}` when the wait ran out first.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/rt/exec",
    tag = "rt",
    params(openapi::AgentParam, openapi::AppParam, openapi::TaskSpec, ("wait_s" = Option<u32>, Query, description = "Seconds to wait for the result, 1 to the timeout; past it the answer is {id, state: running} and the task goes on")),
    extensions(("x-error-codes" = json!(["403.1", "403.2", "403.3", "403.4", "403.7", "403.8", "413.2", "414.1", "410.1"]))),
    responses((status = 200, description = "The v2 envelope", body = openapi::RtAnswer)),
)]
pub async fn exec(req: HttpRequest, body: web::Bytes, state: web::Data<ApiState>) -> HttpResponse {
    let outcome = run(&req, &body, &state).await;
    respond(&state, "rt/exec", outcome)
}

async fn run(
    req: &HttpRequest,
    body: &[u8],
    state: &ApiState,
) -> Result<serde_json::Value, ApiError> {
    let call = V2Call::authenticate(req, body, state)?;
    let outcome = run_authenticated(&call, state).await;
    let task_id = outcome
        .as_ref()
        .ok()
        .and_then(|result| result["id"].as_str())
        .unwrap_or_default()
        .to_string();
    let agent = call.params.get("ip").map(str::to_string);
    super::audit(
        state,
        &call.caller,
        "rt/exec",
        &task_id,
        agent.as_deref(),
        &outcome,
    );
    outcome
}

pub(crate) async fn run_authenticated(
    call: &V2Call,
    state: &ApiState,
) -> Result<serde_json::Value, ApiError> {
    let params = &call.params;
    // Validation order follows the error-code table: 403.1 ip, 403.2 param, 403.3 app, 403.4 mode,
    // 403.7 func, 403.8 timeout.
    let address = request::agent_address(params)?;
    let param = request::json_param(params)?;
    let proxy = request::proxy(params)?;
    let app = request::app_name(params)?;
    let mode = request::mode(params)?;
    let func = request::func_name(params)?;
    let timeout_s = request::timeout_s(params, state.config.rt.default_timeout_s)?;
    let wait = wait_s(params, timeout_s)?;

    super::access::require_app(state, &call.caller, &app)?;

    let agent = super::resolve_agent(state, &address).await?.online()?;
    super::access::require_bound(state, &app, &agent)?;

    let result = state
        .children
        .scheduler
        .send(RunInstant {
            agent,
            app,
            func,
            param,
            timeout_s,
            proxy,
            mode,
            wait: wait.map(|seconds| Duration::from_secs(u64::from(seconds))),
        })
        .await
        .map_err(|err| ApiError::Internal(format!("scheduler: {err}")))?
        .map_err(|err| match err {
            DispatchError::StillRunning(id) => Running(id),
            DispatchError::Unroutable(agent) => Failed(ApiError::AgentUnreachable(format!(
                "could not send the job to agent {agent}"
            ))),
            other => Failed(ApiError::Internal(other.to_string())),
        });
    let result = match result {
        Ok(result) => result,
        // SPEC §12: the caller's patience ran out, the task goes on.
        Err(Running(id)) => return Ok(json!({ "id": id, "state": "running" })),
        Err(Failed(err)) => return Err(err),
    };
    if !result.error.is_empty() {
        return Err(ApiError::AgentUnreachable(format!(
            "agent {} did not run the job: {}",
            result.agent, result.error
        )));
    }
    Ok(json!({
        "id": result.id,
        "worker_flag": result.worker_flag.to_string(),
        "worker_message": result.worker_message,
        "worker_costtime": result.worker_costtime,
    }))
}

/// Why an rt call has no result to answer with.
enum NoResult {
    Running(elves_shared::wire::TaskId),
    Failed(ApiError),
}
use NoResult::{Failed, Running};

/// `wait_s` (SPEC §12): empty means wait for the result; else whole seconds from 1 to the
/// task's timeout (403.8 otherwise, like the timeout itself).
fn wait_s(params: &request::Params, timeout_s: u32) -> Result<Option<u32>, ApiError> {
    let text = params.get_or_empty("wait_s");
    if text.is_empty() {
        return Ok(None);
    }
    match text.parse::<u32>() {
        Ok(seconds)
            if text.bytes().all(|b| b.is_ascii_digit()) && (1..=timeout_s).contains(&seconds) =>
        {
            Ok(Some(seconds))
        }
        _ => Err(ApiError::BadTimeout(format!(
            "wait_s must be whole seconds from 1 to the timeout ({timeout_s}), got {text:?}"
        ))),
    }
}
