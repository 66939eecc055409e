//! Enrolling agents (`elves agent enroll|revoke`): `agent/enroll id=` makes everything one
//! agent needs (its broker user, limited to its own queue and the namespace's exchange; see
//! `broker_admin`) and answers the agent's configuration; `agent/revoke id=` deletes the user,
//! which closes the agent's connection and refuses every reconnect. Admin role only; audited
//! (never with the password).

use super::broker_admin::{AdminError, BrokerAdmin};
use super::request::Params;
use super::{admin_call, ApiState, AuditedAnswer};
use crate::error::ApiError;
use actix_web::{web, HttpRequest, HttpResponse};
use elves_shared::wire::AgentId;
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v2/agent/enroll", web::route().to(enroll))
        .route("/api/v2/agent/revoke", web::route().to(revoke));
}

/// One enroll or revoke at a time on this center: checking that a user exists and creating it
/// are two broker calls, and two enrolls of one id must not both pass the check.
static ENROLLING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn agent_id(params: &Params) -> Result<AgentId, ApiError> {
    let text = params.get_or_empty("id");
    AgentId::parse(text).map_err(|_| {
        ApiError::BadParam(format!(
            "id must be an agent id ([A-Za-z0-9_] then [A-Za-z0-9_.:-], at most 128), got {text:?}"
        ))
    })
}

fn broker_admin(state: &ApiState) -> Result<BrokerAdmin, ApiError> {
    BrokerAdmin::new(&state.config.bus.management_url, &state.config.bus.url).map_err(admin_error)
}

fn admin_error(err: AdminError) -> ApiError {
    ApiError::Internal(err.to_string())
}

/// The agent's configuration file as `agent/enroll` answers it.
#[derive(Serialize)]
struct EnrolledConfig<'a> {
    id: &'a str,
    bus: EnrolledBus<'a>,
    center: EnrolledCenter<'a>,
}

#[derive(Serialize)]
struct EnrolledBus<'a> {
    url: &'a str,
    namespace: &'a str,
}

#[derive(Serialize)]
struct EnrolledCenter<'a> {
    keys: &'a BTreeMap<String, String>,
}

/// `url` (the center's `bus.agent_url`, else its `bus.url`; a cluster's addresses separated by
/// commas) with every address logging in as `user`/`password`.
fn agent_bus_url(url: &str, user: &str, password: &str) -> Result<String, ApiError> {
    let bad = |why: String| ApiError::Internal(format!("the bus URL for agents {why}"));
    let mut addresses = Vec::new();
    for address in elves_shared::bus::broker_urls(url) {
        let mut address =
            url::Url::parse(address).map_err(|err| bad(format!("does not parse: {err}")))?;
        if !matches!(address.scheme(), "amqp" | "amqps") {
            return Err(bad(
                "is not amqp:// (an in-process bus has no agents to enroll)".to_string(),
            ));
        }
        address
            .set_username(user)
            .map_err(|()| bad("takes no user".to_string()))?;
        address
            .set_password(Some(password))
            .map_err(|()| bad("takes no password".to_string()))?;
        addresses.push(address.to_string());
    }
    if addresses.is_empty() {
        return Err(bad("is empty".to_string()));
    }
    Ok(addresses.join(","))
}

/// `agent/enroll id=`: answers `{agent_id, bus_url, namespace, center_keys, config}`, where
/// `config` is a complete `agent.toml` and `bus_url` carries the new password (shown once).
#[utoipa::path(
    method(get, post),
    path = "/api/v2/agent/enroll",
    tag = "agent",
    params(("id" = String, Query, description = "The agent id to enroll")),
    extensions(("x-error-codes" = json!(["403.2"]))),
)]
pub async fn enroll(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    admin_call(
        req,
        body,
        state,
        "agent/enroll",
        AuditedAnswer::OutcomeOnly,
        |state, params| async move {
            let agent = agent_id(&params)?;
            let admin = broker_admin(&state)?;
            let base_url = if state.config.bus.agent_url.is_empty() {
                state.config.bus.url.clone()
            } else {
                state.config.bus.agent_url.clone()
            };
            let password = format!("{:032x}", rand::random::<u128>());
            let bus_url = agent_bus_url(&base_url, agent.as_str(), &password)?;
            let _one_at_a_time = ENROLLING.lock().await;
            if admin
                .user_exists(agent.as_str())
                .await
                .map_err(admin_error)?
            {
                return Err(ApiError::BadParam(format!(
                    "agent {agent} is enrolled already (a broker user of that name exists): \
                 revoke it first to enroll it again"
                )));
            }
            let namespace = state.config.bus.namespace.clone();
            admin
                .create_agent_user(&namespace, agent.as_str(), &password)
                .await
                .map_err(admin_error)?;
            let keys = state.keyring.trusted();
            let config = toml::to_string(&EnrolledConfig {
                id: agent.as_str(),
                bus: EnrolledBus {
                    url: &bus_url,
                    namespace: &namespace,
                },
                center: EnrolledCenter { keys: &keys },
            })
            .map_err(|err| ApiError::Internal(format!("writing the agent's config: {err}")))?;
            let mut note = String::new();
            if !state.config.bus.agent_accounts {
                note = "this center takes results from any broker user: set `[bus] agent_accounts \
                    = true` so that only this agent may answer for itself"
                    .to_string();
            }
            let header = format!(
            "# elves agent {agent}: made by `elves agent enroll`. The bus URL holds this agent's \
             broker password:\n# keep this file readable by the agent's user only.\n"
        );
            Ok((
                agent.to_string(),
                json!({
                    "agent_id": agent.as_str(),
                    "bus_url": bus_url,
                    "namespace": namespace,
                    "center_keys": keys,
                    "note": note,
                    "config": format!("{header}{config}"),
                }),
            ))
        },
    )
    .await
}

/// `agent/revoke id=`: the agent's broker user is deleted, its connections closed; with
/// `bus.agent_accounts` nothing published as that agent is taken from then on. 414.1 when no
/// such user exists.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/agent/revoke",
    tag = "agent",
    params(("id" = String, Query, description = "The enrolled agent id")),
    extensions(("x-error-codes" = json!(["403.2", "414.1"]))),
)]
pub async fn revoke(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    admin_call(
        req,
        body,
        state,
        "agent/revoke",
        AuditedAnswer::OutcomeOnly,
        |state, params| async move {
            let agent = agent_id(&params)?;
            let admin = broker_admin(&state)?;
            let _one_at_a_time = ENROLLING.lock().await;
            let existed = admin
                .delete_user(agent.as_str())
                .await
                .map_err(admin_error)?;
            if !existed {
                return Err(ApiError::AgentNotFound(format!(
                    "agent {agent} is not enrolled (no broker user of that name)"
                )));
            }
            Ok((
                agent.to_string(),
                json!({"agent_id": agent.as_str(), "revoked": true}),
            ))
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_bus_url_carries_its_own_credentials() {
        let url = agent_bus_url("amqp://guest:guest@10.0.0.1:5672/%2f", "web-1:a", "pw").unwrap();
        assert_eq!(url, "amqp://web-1%3Aa:pw@10.0.0.1:5672/%2f");
        let cluster = agent_bus_url(
            "amqp://guest:guest@n1:5672/%2f, amqp://guest:guest@n2:5672/%2f",
            "a1",
            "pw",
        )
        .unwrap();
        assert_eq!(cluster, "amqp://a1:pw@n1:5672/%2f,amqp://a1:pw@n2:5672/%2f");
        let err = agent_bus_url("inproc", "a", "pw").unwrap_err().to_string();
        assert!(err.contains("does not parse"), "{err}");
    }
}
