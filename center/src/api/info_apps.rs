//! `/api/v2/info/apps` (alias `info/app`) and `/api/v2/info/agents` (SPEC §8, §11 "Info"):
//! what the caller may use. Answered from the AppStore's registry and the agents table
//! (`info/agents` a page at a time when asked);
//! `info/agents/detail` lives in `info.rs`.

use super::openapi;
use super::{respond, ApiState, V2Call};
use crate::error::ApiError;
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
#[utoipa::path(method(get, post), path = "/api/v2/info/apps", tag = "info")]
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

/// Ips a page of `info/agents` holds at most.
const MAX_PAGE_SIZE: u64 = 1_000;

/// The ips of the agents this auth id may send work to: every known agent in simple mode (and
/// for admins), the agents bound to its apps in supervisor mode; sorted, each once.
///
/// With `page` (from 1) and optionally `page_size` (1–1000, default 1000) it answers that page
/// only, read from the database with `LIMIT`/`OFFSET` over the ip index, so a client lists a
/// fleet of any size in bounded calls (a page shorter than `page_size` is the last). Without
/// `page` it answers the whole list, as SPEC §8 has it.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/info/agents",
    tag = "info",
    params(openapi::PageParams),
    extensions(("x-error-codes" = json!(["403.2"]))),
)]
pub async fn agents(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    let outcome = async {
        let call = V2Call::authenticate(&req, &body, &state)?;
        let page = page_of(call.params.get("page"), call.params.get("page_size"))?;
        let allowed = {
            let snapshot = state.children.apps.read();
            match snapshot.role_of(&call.caller.auth_id) {
                Some(crate::store::Role::Admin) => None,
                _ => snapshot.agents_of(&call.caller.auth_id),
            }
        };
        let store = state.store.clone();
        let ips: Vec<String> = match allowed {
            None => {
                let (offset, limit) = page.unwrap_or((0, u64::MAX));
                blocking(move || store.agent_ips_page(offset, limit)).await?
            }
            Some(allowed) => {
                // The bound ids come from memory; only their rows are read.
                let ids: Vec<String> = allowed.iter().cloned().collect();
                let rows = blocking(move || store.agents_by_ids(&ids)).await?;
                let ips: BTreeSet<String> = allowed
                    .iter()
                    .map(|id| {
                        rows.iter()
                            .find(|agent| agent.id.as_str() == id)
                            .map(|agent| agent.ip.clone())
                            .unwrap_or_else(|| id.clone())
                    })
                    .collect();
                let (offset, limit) = page.unwrap_or((0, u64::MAX));
                ips.into_iter()
                    .skip(usize::try_from(offset).unwrap_or(usize::MAX))
                    .take(usize::try_from(limit).unwrap_or(usize::MAX))
                    .collect()
            }
        };
        Ok(json!(ips))
    }
    .await;
    respond(&state, "info/agents", outcome)
}

/// `(offset, limit)` of the page asked for; `None` for the whole list (no `page`).
fn page_of(page: Option<&str>, page_size: Option<&str>) -> Result<Option<(u64, u64)>, ApiError> {
    let number = |name: &str, text: &str, max: u64| {
        text.parse::<u64>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ApiError::BadParam(format!("{name} must be between 1 and {max}, got {text:?}"))
            })
    };
    let size = page_size
        .filter(|text| !text.is_empty())
        .map(|text| number("page_size", text, MAX_PAGE_SIZE))
        .transpose()?;
    match page.filter(|text| !text.is_empty()) {
        None if size.is_some() => Err(ApiError::BadParam("page_size needs page".to_string())),
        None => Ok(None),
        Some(text) => {
            let page = number("page", text, u64::from(u32::MAX))?;
            let size = size.unwrap_or(MAX_PAGE_SIZE);
            Ok(Some(((page - 1) * size, size)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_checked_and_turned_into_offsets() {
        assert_eq!(page_of(None, None).unwrap(), None);
        assert_eq!(page_of(Some(""), None).unwrap(), None);
        assert_eq!(page_of(Some("1"), None).unwrap(), Some((0, 1_000)));
        assert_eq!(page_of(Some("3"), Some("50")).unwrap(), Some((100, 50)));
        for (page, size) in [
            (Some("0"), None),
            (Some("x"), None),
            (Some("1"), Some("0")),
            (Some("1"), Some("1001")),
            (None, Some("10")),
        ] {
            let err = page_of(page, size).unwrap_err();
            assert_eq!(err.code(), "403.2", "{page:?} {size:?}");
        }
    }
}
