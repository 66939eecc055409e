//! The center's signing keys (`elves keys …`): `keys/list`, and the steps of a rotation,
//! `keys/add id=`, `keys/use id=`, `keys/retire id=` (see `dispatch::keyring`). Admin role
//! only; audited. Private keys never leave the center: answers carry public keys.

use super::ApiState;
use super::{admin_call, AuditedAnswer};
use crate::dispatch::keyring::{KeyRing, RingError, RingKey};
use crate::error::ApiError;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use std::sync::Arc;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v2/keys/list", web::route().to(list))
        .route("/api/v2/keys/add", web::route().to(add))
        .route("/api/v2/keys/use", web::route().to(use_key))
        .route("/api/v2/keys/retire", web::route().to(retire));
}

fn described(key: &RingKey) -> Value {
    json!({"key_id": key.id, "public_key": key.public_key, "state": key.state.as_str()})
}

fn ring_error(err: RingError) -> ApiError {
    match err {
        RingError::Refused(why) => ApiError::BadParam(why),
        other => ApiError::Internal(other.to_string()),
    }
}

/// Runs one ring step (file writes) on the blocking pool and answers the key it changed with
/// the whole ring.
async fn step(
    state: web::Data<ApiState>,
    id: String,
    change: fn(&KeyRing, &str) -> Result<RingKey, RingError>,
) -> Result<(String, Value), ApiError> {
    if id.is_empty() {
        return Err(ApiError::BadParam("id is required: the key id".to_string()));
    }
    let ring: Arc<KeyRing> = state.keyring.clone();
    let target = id.clone();
    let changed = tokio::task::spawn_blocking(move || change(&ring, &target))
        .await
        .map_err(|err| ApiError::Internal(format!("key ring: {err}")))?
        .map_err(ring_error)?;
    let keys: Vec<Value> = state.keyring.keys().iter().map(described).collect();
    Ok((id, json!({"key": described(&changed), "keys": keys})))
}

/// `keys/list`: every key with its state (`staged`, `signing`, `trusted`, `retired`).
#[utoipa::path(
    method(get, post),
    path = "/api/v2/keys/list",
    tag = "keys",
    extensions(("x-error-codes" = json!([]))),
)]
pub async fn list(req: HttpRequest, body: web::Bytes, state: web::Data<ApiState>) -> HttpResponse {
    admin_call(
        req,
        body,
        state,
        "keys/list",
        AuditedAnswer::OutcomeOnly,
        |state, _| async move {
            let keys: Vec<Value> = state.keyring.keys().iter().map(described).collect();
            Ok((String::new(), json!({"keys": keys})))
        },
    )
    .await
}

/// `keys/add id=`: a new key beside the others, trusted but not signing yet.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/keys/add",
    tag = "keys",
    params(("id" = String, Query, description = "The new key's id")),
    extensions(("x-error-codes" = json!(["403.2"]))),
)]
pub async fn add(req: HttpRequest, body: web::Bytes, state: web::Data<ApiState>) -> HttpResponse {
    admin_call(
        req,
        body,
        state,
        "keys/add",
        AuditedAnswer::OutcomeOnly,
        |state, params| async move {
            let id = params.get_or_empty("id").to_string();
            step(state, id, KeyRing::add).await
        },
    )
    .await
}

/// `keys/use id=`: sign with `id` from now on; the previous key stays trusted.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/keys/use",
    tag = "keys",
    params(("id" = String, Query, description = "The key to sign with")),
    extensions(("x-error-codes" = json!(["403.2"]))),
)]
pub async fn use_key(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    admin_call(
        req,
        body,
        state,
        "keys/use",
        AuditedAnswer::OutcomeOnly,
        |state, params| async move {
            let id = params.get_or_empty("id").to_string();
            step(state, id, KeyRing::use_key).await
        },
    )
    .await
}

/// `keys/retire id=`: the key is trusted and accepted no more.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/keys/retire",
    tag = "keys",
    params(("id" = String, Query, description = "The key to retire")),
    extensions(("x-error-codes" = json!(["403.2"]))),
)]
pub async fn retire(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    admin_call(
        req,
        body,
        state,
        "keys/retire",
        AuditedAnswer::OutcomeOnly,
        |state, params| async move {
            let id = params.get_or_empty("id").to_string();
            step(state, id, KeyRing::retire).await
        },
    )
    .await
}
