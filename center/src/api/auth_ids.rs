//! Auth id administration (supervisor mode, SPEC §5): create, list and revoke auth ids, and
//! grant or take back apps. Admin role only; every call is audited.
//!
//! A new auth id gets a random key, returned once by `auth/create` and by `auth/list` to
//! admins (the signing scheme is symmetric, so the center must keep it anyway).

use super::access::{require_admin, require_supervisor};
use super::openapi;
use super::request::{self, Params};
use super::{audit, respond, ApiState, V2Call};
use crate::actors::app_store::Reload;
use crate::error::ApiError;
use crate::store::blocking::blocking;
use crate::store::{AuthIdRow, Role};
use actix_web::{web, HttpRequest, HttpResponse};
use elves_shared::time::now_unix_ms;
use serde_json::{json, Value};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v2/auth/create", web::route().to(create))
        .route("/api/v2/auth/list", web::route().to(list))
        .route("/api/v2/auth/revoke", web::route().to(revoke))
        .route("/api/v2/auth/grant", web::route().to(grant))
        .route("/api/v2/auth/ungrant", web::route().to(ungrant));
}

/// The auth id a call is about: parameter `id` (`auth_id` is the caller).
fn target_id(params: &Params) -> Result<String, ApiError> {
    let id = params.get_or_empty("id");
    if !elves_shared::names::is_valid_name(id) {
        return Err(ApiError::BadParam(format!(
            "id must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,63}}, got {id:?}"
        )));
    }
    Ok(id.to_string())
}

async fn reload(state: &ApiState) -> Result<(), ApiError> {
    state
        .children
        .app_store
        .send(Reload)
        .await
        .map_err(|err| ApiError::Internal(format!("app store: {err}")))?
        .map_err(|err| ApiError::Internal(format!("app store: {err}")))
}

/// Runs an admin call: authenticate, require admin, run `body_fn`, audit, answer. `body_fn`
/// validates its parameters, then checks the component (`require_supervisor`): parameter errors
/// win over component errors (SPEC §11).
async fn run<F, Fut>(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
    action: &'static str,
    audited: bool,
    body_fn: F,
) -> HttpResponse
where
    F: FnOnce(web::Data<ApiState>, Params) -> Fut,
    Fut: std::future::Future<Output = Result<(String, Value), ApiError>>,
{
    let outcome = async {
        let call = V2Call::authenticate(&req, &body, &state)?;
        require_admin(&state, &call.caller)?;
        let done = body_fn(state.clone(), call.params).await;
        let (target, outcome) = match done {
            Ok((target, value)) => (target, Ok(value)),
            Err(err) => (String::new(), Err(err)),
        };
        if audited {
            // The new key never goes to the audit log.
            let logged = outcome.as_ref().map(|_| Value::Null).map_err(Clone::clone);
            audit(&state, &call.caller, action, &target, None, &logged);
        }
        outcome
    }
    .await;
    respond(&state, action, outcome)
}

/// `auth/create id= [role=admin|normal] [comment=] [apps=a,b]`: answers `{auth_id, auth_key, role}`.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/auth/create",
    tag = "auth",
    params(openapi::IdParam, ("role" = Option<String>, Query, description = "admin or normal (default)"), ("comment" = Option<String>, Query), ("apps" = Option<String>, Query, description = "Comma-separated apps to grant")),
    extensions(("x-error-codes" = json!(["403.2", "402.1"]))),
)]
pub async fn create(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    run(
        req,
        body,
        state,
        "auth/create",
        true,
        |state, params| async move {
            let id = target_id(&params)?;
            let role_text = params.get_or_empty("role");
            let role = Role::parse(role_text).ok_or_else(|| {
                ApiError::BadParam(format!("role must be admin or normal, got {role_text:?}"))
            })?;
            require_supervisor(&state, "auth/create")?;
            if id == state.config.auth.auth_id {
                return Err(ApiError::BadParam(format!("auth id {id} already exists")));
            }
            let row = AuthIdRow {
                auth_id: id.clone(),
                auth_key: format!("{:032x}", rand::random::<u128>()),
                role,
                comment: params.get_or_empty("comment").to_string(),
                created_at: now_unix_ms(),
                revoked_at: None,
            };
            let store = state.store.clone();
            let stored = row.clone();
            blocking(move || store.create_auth_id(&stored)).await?;
            reload(&state).await?;
            Ok((
                id,
                json!({"auth_id": row.auth_id, "auth_key": row.auth_key, "role": role.as_str()}),
            ))
        },
    )
    .await
}

/// `auth/list`: every auth id with its role, apps and state.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/auth/list",
    tag = "auth",
    extensions(("x-error-codes" = json!(["402.1"]))),
)]
pub async fn list(req: HttpRequest, body: web::Bytes, state: web::Data<ApiState>) -> HttpResponse {
    run(
        req,
        body,
        state,
        "auth/list",
        false,
        |state, _| async move {
            require_supervisor(&state, "auth/list")?;
            let store = state.store.clone();
            let registry = blocking(move || store.load_registry()).await?;
            let zone = state.config.cron.zone();
            let list: Vec<Value> = registry
                .auth_ids
                .iter()
                .map(|row| {
                    let apps: Vec<&str> = registry
                        .grants
                        .iter()
                        .filter(|(_, auth_id)| *auth_id == row.auth_id)
                        .map(|(app, _)| app.as_str())
                        .collect();
                    json!({
                        "auth_id": row.auth_id,
                        "auth_key": row.auth_key,
                        "role": row.role.as_str(),
                        "comment": row.comment,
                        "apps": apps,
                        "created_at": elves_shared::quartz::format_time(row.created_at, zone),
                        "revoked": row.revoked_at.is_some(),
                    })
                })
                .collect();
            Ok((String::new(), Value::Array(list)))
        },
    )
    .await
}

/// `auth/revoke id=`: the id and its key stop working at once on this center, and within
/// `apps.refresh_ms` on the others.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/auth/revoke",
    tag = "auth",
    params(openapi::IdParam),
    extensions(("x-error-codes" = json!(["403.2", "402.1", "413.1"]))),
)]
pub async fn revoke(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    run(
        req,
        body,
        state,
        "auth/revoke",
        true,
        |state, params| async move {
            let id = target_id(&params)?;
            require_supervisor(&state, "auth/revoke")?;
            let store = state.store.clone();
            let target = id.clone();
            blocking(move || store.revoke_auth_id(&target, now_unix_ms())).await?;
            reload(&state).await?;
            Ok((id.clone(), json!({"auth_id": id, "revoked": true})))
        },
    )
    .await
}

/// `auth/grant id= app=`: the auth id may call the app.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/auth/grant",
    tag = "auth",
    params(openapi::IdParam, openapi::AppParam),
    extensions(("x-error-codes" = json!(["403.2", "403.3", "402.1", "413.1", "413.2"]))),
)]
pub async fn grant(req: HttpRequest, body: web::Bytes, state: web::Data<ApiState>) -> HttpResponse {
    run(
        req,
        body,
        state,
        "auth/grant",
        true,
        |state, params| async move { grant_app(&state, &params).await },
    )
    .await
}

/// `auth/ungrant id= app=`.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/auth/ungrant",
    tag = "auth",
    params(openapi::IdParam, openapi::AppParam),
    extensions(("x-error-codes" = json!(["403.2", "403.3", "402.1", "413.1"]))),
)]
pub async fn ungrant(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    run(
        req,
        body,
        state,
        "auth/ungrant",
        true,
        |state, params| async move { ungrant_app(&state, &params).await },
    )
    .await
}

/// The body of `auth/grant` (the caller is an admin): also the dashboard's grant form.
pub(crate) async fn grant_app(
    state: &ApiState,
    params: &Params,
) -> Result<(String, Value), ApiError> {
    let id = target_id(params)?;
    let app = request::app_name(params)?;
    require_supervisor(state, "auth/grant")?;
    let store = state.store.clone();
    let (target, name) = (id.clone(), app.clone());
    let added = blocking(move || store.grant_app(&target, &name)).await?;
    reload(state).await?;
    Ok((
        format!("{id}:{app}"),
        json!({"auth_id": id, "app": app, "added": added}),
    ))
}

/// The body of `auth/ungrant` (the caller is an admin).
pub(crate) async fn ungrant_app(
    state: &ApiState,
    params: &Params,
) -> Result<(String, Value), ApiError> {
    let id = target_id(params)?;
    let app = request::app_name(params)?;
    require_supervisor(state, "auth/ungrant")?;
    let store = state.store.clone();
    let (target, name) = (id.clone(), app.clone());
    let removed = blocking(move || store.ungrant_app(&target, &name)).await?;
    reload(state).await?;
    Ok((
        format!("{id}:{app}"),
        json!({"auth_id": id, "app": app, "removed": removed}),
    ))
}
