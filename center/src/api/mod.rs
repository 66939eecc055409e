//! The HTTP API: v2 endpoints (compatible with the original ELVES), and the ops endpoints.
//! Handlers authenticate, validate in the order of the error-code table, then ask an actor.
//! They never block: anything slow is an actor message or a bus call.

pub mod access;
pub mod agent_admin;
pub mod apps;
pub mod auth_ids;
pub mod batch;
mod broker_admin;
pub mod cron;
mod info;
mod info_apps;
pub mod keys;
pub mod openapi;
pub mod ops;
pub mod queue;
pub mod request;
pub(crate) mod rt;
pub(crate) mod task;

use crate::actors::root::Children;
use crate::config::CenterConfig;
use crate::error::ApiError;
use crate::metrics::Metrics;
use actix_web::{web, HttpRequest, HttpResponse};
use elves_shared::wire::Envelope;
use request::{Caller, Params};
use std::sync::Arc;

/// What every handler can reach.
pub struct ApiState {
    /// Held so that root lives as long as the API does.
    pub root: actix::Addr<crate::actors::root::Root>,
    pub config: CenterConfig,
    pub children: Children,
    pub metrics: Arc<Metrics>,
    pub store: crate::store::Store,
    pub bus: elves_shared::bus::SharedBus,
    /// The signing keys: `keys/*` rotates them, `agent/enroll` hands out the trusted ones.
    pub keyring: Arc<crate::dispatch::keyring::KeyRing>,
}

impl ApiState {
    /// Verifies a signed call to `path`: keys come from the configuration (simple mode) or the
    /// AppStore's registry (supervisor mode, where revoked ids are unknown).
    pub fn authenticate(
        &self,
        path: &str,
        params: &Params,
        now_unix_s: i64,
    ) -> Result<Caller, ApiError> {
        let registry = self.children.apps.clone();
        request::authenticate_with(
            |auth_id| registry.read().key_of(auth_id),
            self.config.auth.timestamp_window_s,
            path,
            params,
            now_unix_s,
        )
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cron::routes(cfg);
    info::routes(cfg);
    apps::routes(cfg);
    auth_ids::routes(cfg);
    batch::routes(cfg);
    info_apps::routes(cfg);
    task::routes(cfg);
    agent_admin::routes(cfg);
    keys::routes(cfg);
    cfg.route("/api/v2/rt/exec", web::route().to(rt::exec))
        .route("/api/v2/queue/create", web::route().to(queue::create))
        .route("/api/v2/queue/addtask", web::route().to(queue::add_task))
        .route("/api/v2/queue/addtasks", web::route().to(queue::add_tasks))
        .route("/api/v2/queue/commit", web::route().to(queue::commit))
        .route("/api/v2/queue/stop", web::route().to(queue::stop))
        .route("/api/v2/queue/result", web::route().to(queue::result))
        .route(
            "/api/v2/queue/qksqueue",
            web::route().to(queue::quick_queue),
        )
        .route("/api/v2/openapi.json", web::get().to(openapi::openapi_json))
        .route("/healthz", web::get().to(ops::healthz))
        .route("/metrics", web::get().to(ops::metrics));
}

/// The largest request body a v2 call may send (actix-web's default for the `Bytes` the
/// handlers take). Uploads stream their body and have their own limit.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Answers a v2 request whose body the HTTP layer refused as too large (413) with the
/// HTTP-200 envelope every v2 answer has, and a 403.2 naming the limit.
pub fn envelope_errors<B: 'static>() -> actix_web::middleware::ErrorHandlers<B> {
    use actix_web::dev::ServiceResponse;
    use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers};
    ErrorHandlers::new().handler(
        actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
        |response: ServiceResponse<B>| {
            if !response.request().path().starts_with("/api/v2/") {
                return Ok(ErrorHandlerResponse::Response(
                    response.map_into_left_body(),
                ));
            }
            let refused = ApiError::BadParam(format!(
                "request body over the limit of {MAX_BODY_BYTES} bytes"
            ));
            let (request, _) = response.into_parts();
            let answer = HttpResponse::Ok().json(refused.envelope());
            Ok(ErrorHandlerResponse::Response(
                ServiceResponse::new(request, answer).map_into_right_body(),
            ))
        },
    )
}

/// A v2 call's parameters and its verified caller.
pub struct V2Call {
    pub params: Params,
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
        let caller = state.authenticate(req.path(), &params, now_s)?;
        Ok(V2Call { params, caller })
    }
}

/// What the audit entry of an admin call keeps of its answer.
#[derive(Clone, Copy)]
pub(crate) enum AuditedAnswer {
    Whole,
    /// The outcome only: the answer holds a secret (an enrolled agent's password).
    OutcomeOnly,
}

/// Runs an admin call: authenticate, require the admin role, run `run` (which answers its
/// audit target and its result), audit, answer.
pub(crate) async fn admin_call<F, Fut>(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
    action: &'static str,
    audited: AuditedAnswer,
    run: F,
) -> HttpResponse
where
    F: FnOnce(web::Data<ApiState>, request::Params) -> Fut,
    Fut: std::future::Future<Output = Result<(String, serde_json::Value), ApiError>>,
{
    let outcome = async {
        let call = V2Call::authenticate(&req, &body, &state)?;
        access::require_admin(&state, &call.caller)?;
        let (target, outcome) = match run(state.clone(), call.params).await {
            Ok((target, value)) => (target, Ok(value)),
            Err(err) => (String::new(), Err(err)),
        };
        let logged = match audited {
            AuditedAnswer::Whole => outcome.clone(),
            AuditedAnswer::OutcomeOnly => outcome
                .as_ref()
                .map(|_| serde_json::Value::Null)
                .map_err(Clone::clone),
        };
        audit(&state, &call.caller, action, &target, None, &logged);
        outcome
    }
    .await;
    respond(&state, action, outcome)
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

/// Where work for `address` (an agent ip or id) can go. The heartbeat registry answers for the
/// agents whose heartbeats this center consumed; the database for those another center saw.
pub async fn resolve_agent(state: &ApiState, address: &str) -> Result<AgentStatus, ApiError> {
    use crate::actors::heartbeat::{is_online, AgentLookup, LookupAgent};
    let now = elves_shared::time::now_unix_ms();
    let lookup = state
        .children
        .heartbeat
        .send(LookupAgent {
            address: address.to_string(),
            now,
        })
        .await
        .map_err(|err| ApiError::Internal(format!("heartbeat registry: {err}")))?;
    if let AgentLookup::Online { agent } = lookup {
        return Ok(AgentStatus::Online(agent));
    }
    let store = state.store.clone();
    let text = address.to_string();
    let stored =
        crate::store::blocking::blocking(move || store.get_agent_by_ip_or_id(&text)).await?;
    let missed_beats = state.config.heartbeat.offline_after_missed_beats;
    match stored {
        Some(row) if is_online(row.last_heartbeat_at, row.interval_ms, missed_beats, now) => {
            Ok(AgentStatus::Online(row.id))
        }
        Some(row) => Ok(AgentStatus::Offline {
            agent: row.id,
            last_seen: row.last_heartbeat_at,
        }),
        None => match lookup {
            AgentLookup::Offline { agent, last_seen } => {
                Ok(AgentStatus::Offline { agent, last_seen })
            }
            _ => Err(ApiError::AgentNotFound(address.to_string())),
        },
    }
}

#[derive(Debug, Clone)]
pub enum AgentStatus {
    Online(elves_shared::wire::AgentId),
    Offline {
        agent: elves_shared::wire::AgentId,
        last_seen: u64,
    },
}

impl AgentStatus {
    /// For work that must run now: offline is 410.1.
    pub fn online(self) -> Result<elves_shared::wire::AgentId, ApiError> {
        match self {
            AgentStatus::Online(agent) => Ok(agent),
            AgentStatus::Offline { agent, last_seen } => Err(ApiError::AgentUnreachable(format!(
                "agent {agent} is offline (last heartbeat {} s ago)",
                elves_shared::time::now_unix_ms().saturating_sub(last_seen) / 1000
            ))),
        }
    }
}

/// Writes an audit entry for a call that ran or changed something; never fails the call.
pub fn audit(
    state: &ApiState,
    caller: &Caller,
    action: &str,
    target: &str,
    agent: Option<&str>,
    outcome: &Result<serde_json::Value, ApiError>,
) {
    let entry = crate::store::AuditEntry {
        at: elves_shared::time::now_unix_ms(),
        auth_id: caller.auth_id.clone(),
        action: action.to_string(),
        target: target.to_string(),
        agent: agent.map(str::to_string),
        outcome: match outcome {
            Ok(_) => "ok".to_string(),
            Err(err) => err.to_string(),
        },
    };
    let store = state.store.clone();
    actix_rt::spawn(async move {
        let outcome = crate::store::blocking::blocking(move || store.audit(&entry)).await;
        if let Err(err) = outcome {
            log::error!("audit log: {err}");
        }
    });
}
