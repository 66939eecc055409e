//! `/api/v2/info/agents/detail`: one agent as the center knows it (SPEC §8, §11 "Info"):
//! `{ip, asset, last_hb_time, online, apps, cron_list}`, `cron_list` only with `showcron=true`.
//! The other info endpoints live elsewhere.

use super::cron::{cron_detail, crons_of_agent};
use super::openapi;
use super::request;
use super::{resolve_agent, respond, AgentStatus, ApiState, V2Call};
use crate::error::ApiError;
use crate::store::blocking::blocking;
use actix_web::{web, HttpRequest, HttpResponse};
use elves_shared::quartz::format_time;
use serde_json::{json, Value};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v2/info/agents/detail", web::route().to(agent_detail));
}

/// One agent: `{ip, asset, last_hb_time, online, apps, cron_list}` (`cron_list` with
/// `showcron=true`).
#[utoipa::path(
    method(get, post),
    path = "/api/v2/info/agents/detail",
    tag = "info",
    params(openapi::AgentParam, ("showcron" = Option<bool>, Query, description = "true: include cron_list")),
    extensions(("x-error-codes" = json!(["403.1", "414.1"]))),
)]
pub async fn agent_detail(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    let outcome = async {
        let call = V2Call::authenticate(&req, &body, &state)?;
        let address = request::agent_address(&call.params)?;
        let show_cron = call
            .params
            .get_or_empty("showcron")
            .eq_ignore_ascii_case("true");
        let status = resolve_agent(&state, &address).await?;
        let (agent, online) = match status {
            AgentStatus::Online(agent) => (agent, true),
            AgentStatus::Offline { agent, .. } => (agent, false),
        };
        super::access::require_agent(&state, &call.caller, &agent)?;
        let store = state.store.clone();
        let id = agent.to_string();
        let row = blocking(move || store.get_agent_by_ip_or_id(&id))
            .await?
            .ok_or_else(|| ApiError::AgentNotFound(address.clone()))?;
        let zone = state.config.cron.zone();
        let mut detail = json!({
            "ip": row.ip,
            "id": row.id,
            "asset": row.asset,
            "version": row.version,
            "last_hb_time": format_time(row.last_heartbeat_at, zone),
            "online": online,
            "apps": row.apps,
            // The agent's own labels with the inventory's merged in (SPEC §12).
            "labels": state.children.inventory_labels.merged(row.id.as_str(), &row.ip, &row.labels),
        });
        if show_cron {
            let crons = crons_of_agent(&state, &address).await?;
            // Only the crons of apps this auth id holds.
            let list: Vec<Value> = crons
                .iter()
                .filter(|cron| {
                    super::access::require_app(&state, &call.caller, &cron.definition.app).is_ok()
                })
                .map(|cron| cron_detail(cron, zone))
                .collect();
            detail["cron_list"] = Value::Array(list);
        }
        Ok(detail)
    }
    .await;
    respond(&state, "info/agents/detail", outcome)
}
