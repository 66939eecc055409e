//! `/healthz` and `/metrics`: unsigned, and they show no secrets.
//!
//! A center that cannot reach the broker yet serves only [`configure_waiting`]'s routes: its
//! `/healthz` answers 503 with status `waiting for the broker` until it can start.

use super::ApiState;
use crate::actors::heartbeat::{is_online, GetState as HeartbeatGetState, HeartbeatState};
use crate::actors::scheduler::GetState as SchedulerGetState;
use crate::error::ApiError;
use actix_web::{web, HttpRequest, HttpResponse};
use elves_shared::bus::BusError;
use elves_shared::time::now_unix_ms;
use serde_json::json;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

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

/// Whether this center is ready, with its heartbeat and scheduler figures; no signature.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "ops",
    security(()),
    responses(
        (status = 200, description = "Ready: status, version, broker and heartbeat figures", content_type = "application/json"),
        (status = 503, description = "Not ready (e.g. waiting for the broker)", content_type = "application/json"),
    ),
)]
pub async fn healthz(state: web::Data<ApiState>) -> HttpResponse {
    let heartbeat = heartbeat_state(&state).await;
    let scheduler = state.children.scheduler.send(SchedulerGetState).await.ok();
    let healthy = heartbeat.is_some() && scheduler.is_some();
    let body = json!({
        "status": if healthy { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        // Public keys only: what agents must be configured with (`elves doctor` compares);
        // during a key rotation, every key not retired.
        "instruction_keys": state
            .keyring
            .trusted()
            .into_iter()
            .map(|(key_id, public_key)| json!({"key_id": key_id, "public_key": public_key}))
            .collect::<Vec<_>>(),
        "heartbeat": heartbeat,
        "scheduler": scheduler,
    });
    if healthy {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Counters in Prometheus text format; no signature.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    security(()),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")),
)]
pub async fn metrics(state: web::Data<ApiState>) -> HttpResponse {
    let (online, known) = heartbeat_state(&state)
        .await
        .map(|hb| (hb.agents_online, hb.agents_known))
        .unwrap_or((0, 0));
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render(online, known))
}

/// How a center that could not reach the broker yet is doing: what its waiting server shows.
pub struct BrokerWait {
    since_ms: u64,
    attempts: AtomicU32,
    last_error: Mutex<String>,
}

impl BrokerWait {
    /// Starts the wait after the first failed attempt.
    pub fn new(first_error: &BusError) -> Self {
        BrokerWait {
            since_ms: now_unix_ms(),
            attempts: AtomicU32::new(1),
            last_error: Mutex::new(first_error.to_string()),
        }
    }

    pub fn failed(&self, err: &BusError) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        *self.last_error() = err.to_string();
    }

    /// Failed attempts so far.
    pub fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::Relaxed)
    }

    fn last_error(&self) -> std::sync::MutexGuard<'_, String> {
        self.last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn describe(&self) -> String {
        format!(
            "the center is waiting for the broker ({} failed attempt(s) in {} s, last: {}); try again later",
            self.attempts(),
            now_unix_ms().saturating_sub(self.since_ms) / 1000,
            self.last_error()
        )
    }
}

/// The routes of a center waiting for the broker: `/healthz` answers 503 with status
/// `waiting for the broker`; a v2 call gets its envelope (HTTP 200, as every v2 answer) with
/// error `[500]` saying so; anything else is 503.
pub fn configure_waiting(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz_waiting))
        .default_service(web::to(refuse_while_waiting));
}

async fn healthz_waiting(waiting: web::Data<BrokerWait>) -> HttpResponse {
    HttpResponse::ServiceUnavailable().json(json!({
        "status": WAITING_FOR_THE_BROKER,
        "version": env!("CARGO_PKG_VERSION"),
        "broker": {
            "failed_attempts": waiting.attempts(),
            "waiting_s": now_unix_ms().saturating_sub(waiting.since_ms) / 1000,
            "last_error": *waiting.last_error(),
        },
    }))
}

async fn refuse_while_waiting(req: HttpRequest, waiting: web::Data<BrokerWait>) -> HttpResponse {
    if req.path().starts_with("/api/v2/") {
        HttpResponse::Ok().json(ApiError::Internal(waiting.describe()).envelope())
    } else {
        HttpResponse::ServiceUnavailable().body(waiting.describe())
    }
}

/// The `/healthz` status of a center waiting for the broker.
pub const WAITING_FOR_THE_BROKER: &str = "waiting for the broker";
