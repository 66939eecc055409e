//! The HTTP API: v2 endpoints (compatible with the original ELVES), and the ops endpoints.
//! Handlers authenticate, validate in the order of the error-code table, then ask an actor.
//! They never block: anything slow is an actor message or a bus call.

pub mod error;
mod ops;
pub mod request;
mod rt;

use crate::actors::root::Children;
use crate::config::CenterConfig;
use crate::metrics::Metrics;
use actix_web::{web, HttpRequest, HttpResponse};
use elves_shared::wire::Envelope;
use error::ApiError;
use request::{Caller, Params};
use std::sync::Arc;

/// What every handler can reach.
pub struct ApiState {
    /// Held so that root lives as long as the API does.
    pub root: actix::Addr<crate::actors::root::Root>,
    pub config: CenterConfig,
    pub children: Children,
    pub metrics: Arc<Metrics>,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v2/rt/exec", web::route().to(rt::exec))
        .route("/healthz", web::get().to(ops::healthz))
        .route("/metrics", web::get().to(ops::metrics));
}

/// A v2 call's parameters and its verified caller.
pub struct V2Call {
    pub params: Params,
    #[allow(dead_code)] // used by authorization in supervisor mode
    pub caller: Caller,
}

impl V2Call {
    pub fn authenticate(
        req: &HttpRequest,
        body: &[u8],
        state: &ApiState,
    ) -> Result<Self, ApiError> {
        let is_form = req
            .headers()
            .get(actix_web::http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
        let params = Params::from_request(req.query_string(), body, is_form);
        let now_s = i64::try_from(elves_shared::time::now_unix_ms() / 1000).unwrap_or(i64::MAX);
        let caller = request::authenticate(&state.config.auth, req.path(), &params, now_s)?;
        Ok(V2Call { params, caller })
    }
}

/// Turns a handler's outcome into the v2 envelope (always HTTP 200) and counts it.
pub fn respond(
    state: &ApiState,
    endpoint: &str,
    outcome: Result<serde_json::Value, ApiError>,
) -> HttpResponse {
    match outcome {
        Ok(result) => {
            state.metrics.record_call(endpoint, "ok");
            HttpResponse::Ok().json(Envelope::ok(result))
        }
        Err(err) => {
            state.metrics.record_call(endpoint, err.code());
            if err.code() == "500" {
                log::error!("{endpoint}: {err}");
            }
            HttpResponse::Ok().json(err.envelope())
        }
    }
}
