//! `/api/v2/cron/*`: crons defined through the API (add, start, stop, delete, detail, list)
//! and `cron/reload` of the definition files. The handlers write the database and tell the
//! Cron actor, which fires.

use super::openapi;
use super::request::{self, Params};
use super::{audit, resolve_agent, respond, ApiState, V2Call};
use crate::actors::cron::{CronChanged, ReloadDefinitions};
use crate::error::ApiError;
use crate::store::blocking::blocking;
use crate::store::{CronDefinition, CronRow, CronSource};
use actix_web::{web, HttpRequest, HttpResponse};
use chrono_tz::Tz;
use elves_shared::quartz::{format_time, QuartzRule};
use elves_shared::time::now_unix_ms;
use elves_shared::wire::TaskId;
use serde_json::{json, Value};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v2/cron/add", web::route().to(add))
        .route("/api/v2/cron/start", web::route().to(start))
        .route("/api/v2/cron/stop", web::route().to(stop))
        .route("/api/v2/cron/delete", web::route().to(delete))
        .route("/api/v2/cron/detail", web::route().to(detail))
        .route("/api/v2/cron/info", web::route().to(detail))
        .route("/api/v2/cron/list", web::route().to(list))
        .route("/api/v2/cron/reload", web::route().to(reload));
}

/// A rule: 6 or 7 Quartz fields that fire at least once more (403.5 otherwise).
pub fn cron_rule(params: &Params, zone: Tz) -> Result<String, ApiError> {
    let text = params
        .required("rule")
        .ok_or_else(|| ApiError::BadCronRule("missing rule".to_string()))?;
    let rule = QuartzRule::parse(text).map_err(|err| ApiError::BadCronRule(err.to_string()))?;
    if rule.next_after_ms(now_unix_ms(), zone).is_none() {
        return Err(ApiError::BadCronRule(format!(
            "bad cron rule {text:?}: it never fires after now"
        )));
    }
    Ok(rule.as_str().to_string())
}

/// The cron `id` (411.1 when unknown), if the caller holds its app (401.6 otherwise).
async fn authorize_cron(
    state: &ApiState,
    caller: &super::request::Caller,
    id: &TaskId,
) -> Result<CronRow, ApiError> {
    let store = state.store.clone();
    let target = id.clone();
    let row = blocking(move || store.get_cron(&target))
        .await?
        .ok_or_else(|| ApiError::CronNotFound(id.to_string()))?;
    super::access::require_app(state, caller, &row.definition.app)?;
    Ok(row)
}

fn cron_id(params: &Params) -> Result<TaskId, ApiError> {
    request::task_id(params, "cron_id", ApiError::BadCronId)
}

/// 402.2 when this center runs no cron component; checked after the parameters (SPEC §11).
fn cron_enabled(state: &ApiState) -> Result<(), ApiError> {
    if state.config.cron.enabled {
        Ok(())
    } else {
        Err(ApiError::CronDisabled)
    }
}

/// A `cron/add` definition from its parameters, each checked in the table's order (403.1 ip,
/// 403.2 param, 403.3 app, 403.4 mode, 403.5 rule, 403.7 func, 403.8 timeout). The dashboard's
/// cron form checks with this too.
pub(crate) fn cron_definition(
    params: &Params,
    state: &ApiState,
) -> Result<CronDefinition, ApiError> {
    let address = request::agent_address(params)?;
    let param = request::json_param(params)?;
    let proxy = request::proxy(params)?;
    let app = request::app_name(params)?;
    let mode = request::mode(params)?;
    let rule = cron_rule(params, state.config.cron.zone())?;
    let func = request::func_name(params)?;
    let timeout_s = request::timeout_s(params, state.config.rt.default_timeout_s)?;
    Ok(CronDefinition {
        ip: address,
        app,
        func,
        param,
        rule,
        mode,
        timeout_s,
        proxy,
    })
}

/// Stores a checked definition as a new API cron of `caller` (who holds its app) and tells the
/// Cron actor: `{"id": …}`. A never-seen agent is 414.1; an offline one may be back by the next
/// firing.
pub(crate) async fn create_cron(
    state: &ApiState,
    caller: &super::request::Caller,
    definition: CronDefinition,
) -> Result<Value, ApiError> {
    let agent = match resolve_agent(state, &definition.ip).await? {
        super::AgentStatus::Online(agent) | super::AgentStatus::Offline { agent, .. } => agent,
    };
    super::access::require_bound(state, &definition.app, &agent)?;
    let id = TaskId::random();
    let store = state.store.clone();
    let (new_id, auth_id) = (id.clone(), caller.auth_id.clone());
    blocking(move || {
        store.create_cron(
            &new_id,
            &definition,
            &CronSource::Api,
            true,
            &auth_id,
            now_unix_ms(),
        )
    })
    .await?;
    state.children.cron.do_send(CronChanged(id.clone()));
    Ok(json!({ "id": id }))
}

/// Adds a cron, enabled at once: `{id}`.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/cron/add",
    tag = "cron",
    params(openapi::AgentParam, openapi::AppParam, openapi::TaskSpec, ("rule" = String, Query, description = "Quartz rule, 6 or 7 fields")),
    extensions(("x-error-codes" = json!(["403.1", "403.2", "403.3", "403.4", "403.5", "403.7", "403.8", "413.2", "402.2", "414.1"]))),
    responses((status = 200, description = "The v2 envelope", body = openapi::CreatedAnswer)),
)]
pub async fn add(req: HttpRequest, body: web::Bytes, state: web::Data<ApiState>) -> HttpResponse {
    let outcome = async {
        let call = V2Call::authenticate(&req, &body, &state)?;
        let definition = cron_definition(&call.params, &state)?;
        super::access::require_app(&state, &call.caller, &definition.app)?;
        cron_enabled(&state)?;
        let address = definition.ip.clone();
        let added = create_cron(&state, &call.caller, definition).await;
        let target = added
            .as_ref()
            .ok()
            .and_then(|result| result["id"].as_str())
            .unwrap_or_default()
            .to_string();
        audit(
            &state,
            &call.caller,
            "cron/add",
            &target,
            Some(&address),
            &added,
        );
        added
    }
    .await;
    respond(&state, "cron/add", outcome)
}

/// Enables a cron.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/cron/start",
    tag = "cron",
    params(openapi::CronIdParam),
    extensions(("x-error-codes" = json!(["403.9", "402.2", "411.1", "413.2"]))),
)]
pub async fn start(req: HttpRequest, body: web::Bytes, state: web::Data<ApiState>) -> HttpResponse {
    set_enabled(req, body, state, true).await
}

/// Disables a cron.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/cron/stop",
    tag = "cron",
    params(openapi::CronIdParam),
    extensions(("x-error-codes" = json!(["403.9", "402.2", "411.1", "413.2"]))),
)]
pub async fn stop(req: HttpRequest, body: web::Bytes, state: web::Data<ApiState>) -> HttpResponse {
    set_enabled(req, body, state, false).await
}

async fn set_enabled(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
    enabled: bool,
) -> HttpResponse {
    let endpoint = if enabled { "cron/start" } else { "cron/stop" };
    let outcome = async {
        let call = V2Call::authenticate(&req, &body, &state)?;
        let id = cron_id(&call.params)?;
        cron_enabled(&state)?;
        authorize_cron(&state, &call.caller, &id).await?;
        let store = state.store.clone();
        let target = id.clone();
        let changed = blocking(move || store.set_cron_enabled(&target, enabled, now_unix_ms()))
            .await
            .map_err(ApiError::from);
        if changed.is_ok() {
            state.children.cron.do_send(CronChanged(id.clone()));
        }
        let agent = changed.as_ref().ok().map(|row| row.definition.ip.clone());
        let changed = changed.map(|_| Value::Null);
        audit(
            &state,
            &call.caller,
            endpoint,
            id.as_str(),
            agent.as_deref(),
            &changed,
        );
        changed
    }
    .await;
    respond(&state, endpoint, outcome)
}

/// Deletes a cron.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/cron/delete",
    tag = "cron",
    params(openapi::CronIdParam),
    extensions(("x-error-codes" = json!(["403.9", "402.2", "411.1", "413.2"]))),
)]
pub async fn delete(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    let outcome = async {
        let call = V2Call::authenticate(&req, &body, &state)?;
        let id = cron_id(&call.params)?;
        cron_enabled(&state)?;
        authorize_cron(&state, &call.caller, &id).await?;
        let store = state.store.clone();
        let target = id.clone();
        let deleted = blocking(move || store.delete_cron(&target))
            .await
            .map_err(ApiError::from)
            .map(|()| Value::Null);
        if deleted.is_ok() {
            state.children.cron.do_send(CronChanged(id.clone()));
        }
        audit(
            &state,
            &call.caller,
            "cron/delete",
            id.as_str(),
            None,
            &deleted,
        );
        deleted
    }
    .await;
    respond(&state, "cron/delete", outcome)
}

/// `cron/detail` and its alias `cron/info`.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/cron/detail",
    tag = "cron",
    params(openapi::CronIdParam),
    extensions(("x-error-codes" = json!(["403.9", "402.2", "411.1", "413.2"]))),
)]
pub async fn detail(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    let outcome = async {
        let call = V2Call::authenticate(&req, &body, &state)?;
        let id = cron_id(&call.params)?;
        cron_enabled(&state)?;
        let row = authorize_cron(&state, &call.caller, &id).await?;
        Ok(cron_detail(&row, state.config.cron.zone()))
    }
    .await;
    respond(&state, "cron/detail", outcome)
}

/// The ids of the crons this auth id may see, those of one agent with `ip`.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/cron/list",
    tag = "cron",
    params(("ip" = Option<String>, Query, description = "Only the crons of this agent")),
    extensions(("x-error-codes" = json!(["403.1", "402.2"]))),
)]
pub async fn list(req: HttpRequest, body: web::Bytes, state: web::Data<ApiState>) -> HttpResponse {
    let outcome = async {
        let call = V2Call::authenticate(&req, &body, &state)?;
        let address = match call.params.get_or_empty("ip") {
            "" => None,
            _ => Some(request::agent_address(&call.params)?),
        };
        cron_enabled(&state)?;
        let rows = match address {
            None => {
                let store = state.store.clone();
                blocking(move || store.list_crons()).await?
            }
            Some(address) => crons_of_agent(&state, &address).await?,
        };
        // Only the crons of apps this auth id holds.
        let ids: Vec<Value> = rows
            .iter()
            .filter(|row| {
                super::access::require_app(&state, &call.caller, &row.definition.app).is_ok()
            })
            .map(|row| json!(row.id))
            .collect();
        Ok(Value::Array(ids))
    }
    .await;
    respond(&state, "cron/list", outcome)
}

/// The crons that name this agent by the address given, its ip or its id.
pub async fn crons_of_agent(state: &ApiState, address: &str) -> Result<Vec<CronRow>, ApiError> {
    let store = state.store.clone();
    let address = address.to_string();
    let rows = blocking(move || {
        let mut addresses = vec![address.clone()];
        if let Some(agent) = store.get_agent_by_ip_or_id(&address)? {
            addresses.push(agent.ip);
            addresses.push(agent.id.to_string());
        }
        addresses.sort();
        addresses.dedup();
        store.crons_of(&addresses)
    })
    .await?;
    Ok(rows)
}

/// Re-reads the cron files (admin): `{dir, created, updated, removed, unchanged, errors}`.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/cron/reload",
    tag = "cron",
    extensions(("x-error-codes" = json!(["402.2", "403.9"]))),
)]
pub async fn reload(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    let outcome = async {
        let call = V2Call::authenticate(&req, &body, &state)?;
        super::access::require_admin(&state, &call.caller)?;
        cron_enabled(&state)?;
        let reloaded = state
            .children
            .cron
            .send(ReloadDefinitions)
            .await
            .map_err(|err| ApiError::Internal(format!("cron actor: {err}")))
            .and_then(|report| report.map_err(ApiError::from))
            .and_then(|report| {
                crate::actors::cron::log_report(&report);
                serde_json::to_value(&report).map_err(|err| ApiError::Internal(err.to_string()))
            });
        let target = state.config.cron.dir.display().to_string();
        audit(
            &state,
            &call.caller,
            "cron/reload",
            &target,
            None,
            &reloaded,
        );
        reloaded
    }
    .await;
    respond(&state, "cron/reload", outcome)
}

/// A cron in the `cron/detail` shape (SPEC §8, §11 "Cron"), plus its id and where it was
/// defined.
pub fn cron_detail(row: &CronRow, zone: Tz) -> Value {
    let definition = &row.definition;
    let last_exec_result = row
        .last_exec_result
        .as_deref()
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
        .unwrap_or_else(|| {
            json!({
                "flag": "",
                "error": "",
                "result": { "worker_flag": "", "worker_message": "", "worker_costtime": 0 },
            })
        });
    let (source, file, entry) = match &row.source {
        CronSource::Api => ("api", "", ""),
        CronSource::File { file, entry } => ("file", file.as_str(), entry.as_str()),
    };
    json!({
        "id": row.id,
        "ip": definition.ip,
        "app": definition.app,
        "func": definition.func,
        "param": definition.param,
        "mode": definition.mode.as_str(),
        "proxy": definition.proxy,
        "timeout": definition.timeout_s,
        "rule": definition.rule,
        "cron_flag": i32::from(row.enabled),
        "last_exec_time": row.last_exec_time.map(|at| format_time(at, zone)).unwrap_or_default(),
        "last_exec_result": last_exec_result,
        "last_fire_time": row.last_fire_time.map(|at| format_time(at, zone)).unwrap_or_default(),
        "source": source,
        "file": file,
        "entry": entry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_checked_with_403_5() {
        let ok = Params::from_pairs(&[("rule", "0/1 * * * * ?")]);
        assert_eq!(cron_rule(&ok, Tz::UTC).unwrap(), "0/1 * * * * ?");
        for bad in ["", "* * * * *", "0 0 0 ? * ?", "0 0 0 1 1 ? 2001"] {
            let err = cron_rule(&Params::from_pairs(&[("rule", bad)]), Tz::UTC).unwrap_err();
            assert_eq!(err.code(), "403.5", "{bad}: {err}");
        }
    }
}
