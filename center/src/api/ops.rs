//! `/healthz` and `/metrics`: unsigned, and they show no secrets.

use super::ApiState;
use crate::actors::heartbeat::{is_online, GetState as HeartbeatGetState, HeartbeatState};
use crate::actors::scheduler::GetState as SchedulerGetState;
use actix_web::{web, HttpResponse};
use elves_shared::time::now_unix_ms;
use serde_json::json;

/// This center's registry merged with the agents other centers recorded in the database
/// (each heartbeat reaches only one of the centers sharing a broker).
async fn heartbeat_state(state: &ApiState) -> Option<HeartbeatState> {
    let now = now_unix_ms();
    let mut merged = state
        .children
        .heartbeat
        .send(HeartbeatGetState { now })
        .await
        .ok()?;
    let store = state.store.clone();
    match crate::store::blocking::blocking(move || store.list_agents()).await {
        Ok(rows) => {
            let missed_beats = state.config.heartbeat.offline_after_missed_beats;
            for row in rows {
                if is_online(row.last_heartbeat_at, row.interval_ms, missed_beats, now) {
                    merged.online.entry(row.id.to_string()).or_insert(row.apps);
                }
            }
            merged.agents_online = merged.online.len();
            merged.agents_known = merged.agents_known.max(merged.online.len());
        }
        Err(err) => log::warn!("healthz: agents from the database: {err}"),
    }
    Some(merged)
}

pub async fn healthz(state: web::Data<ApiState>) -> HttpResponse {
    let heartbeat = heartbeat_state(&state).await;
    let scheduler = state.children.scheduler.send(SchedulerGetState).await.ok();
    let healthy = heartbeat.is_some() && scheduler.is_some();
    let body = json!({
        "status": if healthy { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "heartbeat": heartbeat,
        "scheduler": scheduler,
    });
    if healthy {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

pub async fn metrics(state: web::Data<ApiState>) -> HttpResponse {
    let (online, known) = heartbeat_state(&state)
        .await
        .map(|hb| (hb.agents_online, hb.agents_known))
        .unwrap_or((0, 0));
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render(online, known))
}
