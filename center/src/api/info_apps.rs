//! `/api/v2/info/apps` (alias `info/app`) and `/api/v2/info/agents` (SPEC §8, §11 "Info"):
//! what the caller may use. Answered from the AppStore's registry and the agents table;
//! `info/agents/detail` lives in `info.rs`.

use super::{respond, ApiState, V2Call};
use crate::store::blocking::blocking;
use actix_web::{web, HttpRequest, HttpResponse};
use elves_shared::quartz::format_time;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v2/info/apps", web::route().to(apps))
        .route("/api/v2/info/app", web::route().to(apps))
        .route("/api/v2/info/agents", web::route().to(agents));
}

/// A list of `{app, app_name, app_ver, last_update_time}`: the apps this auth id holds (every
/// app for an admin, and in simple mode). In simple mode, apps that agents have installed by
/// hand are listed too, with the version they report.
pub async fn apps(req: HttpRequest, body: web::Bytes, state: web::Data<ApiState>) -> HttpResponse {
    let outcome = async {
        let call = V2Call::authenticate(&req, &body, &state)?;
        let zone = state.config.cron.zone();
        let mut listed: BTreeMap<String, Value> = {
            let snapshot = state.children.apps.read();
            snapshot
                .apps_of(&call.caller.auth_id)
                .into_iter()
                .map(|app| {
                    let version = app
                        .online
                        .as_ref()
                        .map(|online| online.version.clone())
                        .unwrap_or_default();
                    let name = if app.display_name.is_empty() {
                        app.name.clone()
                    } else {
                        app.display_name.clone()
                    };
                    let entry = json!({
                        "app": app.name,
                        "app_name": name,
                        "app_ver": version,
                        "last_update_time": format_time(app.updated_at, zone),
                    });
                    (app.name.clone(), entry)
                })
                .collect()
        };
        if state.children.apps.read().mode() == crate::config::AuthMode::Simple {
            let store = state.store.clone();
            let agents = blocking(move || store.list_agents()).await?;
            for agent in agents {
                for (app, version) in agent.apps {
                    listed.entry(app.clone()).or_insert_with(|| {
                        json!({
                            "app": app,
                            "app_name": app,
                            "app_ver": version,
                            "last_update_time": format_time(agent.last_heartbeat_at, zone),
                        })
                    });
                }
            }
        }
        Ok(Value::Array(listed.into_values().collect()))
    }
    .await;
    respond(&state, "info/apps", outcome)
}

/// The ips of the agents this auth id may send work to: every known agent in simple mode (and
/// for admins), the agents bound to its apps in supervisor mode.
pub async fn agents(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    let outcome = async {
        let call = V2Call::authenticate(&req, &body, &state)?;
        let allowed = {
            let snapshot = state.children.apps.read();
            match snapshot.role_of(&call.caller.auth_id) {
                Some(crate::store::Role::Admin) => None,
                _ => snapshot.agents_of(&call.caller.auth_id),
            }
        };
        let store = state.store.clone();
        let known = blocking(move || store.list_agents()).await?;
        let ips: BTreeSet<String> = match allowed {
            None => known.into_iter().map(|agent| agent.ip).collect(),
            Some(allowed) => allowed
                .iter()
                .map(|id| {
                    known
                        .iter()
                        .find(|agent| agent.id.as_str() == id)
                        .map(|agent| agent.ip.clone())
                        .unwrap_or_else(|| id.clone())
                })
                .collect(),
        };
        Ok(json!(ips))
    }
    .await;
    respond(&state, "info/agents", outcome)
}
