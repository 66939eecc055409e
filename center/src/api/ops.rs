//! `/healthz` and `/metrics`: unsigned, and they show no secrets.

use super::ApiState;
use crate::actors::heartbeat::{GetState as HeartbeatGetState, HeartbeatState};
use crate::actors::scheduler::GetState as SchedulerGetState;
use actix_web::{web, HttpResponse};
use elves_shared::time::now_unix_ms;
use serde_json::json;

async fn heartbeat_state(state: &ApiState) -> Option<HeartbeatState> {
    state
        .children
        .heartbeat
        .send(HeartbeatGetState { now: now_unix_ms() })
        .await
        .ok()
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
