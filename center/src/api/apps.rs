//! App administration (SPEC §5, §7.4, §11 "Packages"): package uploads, the online version,
//! agent bindings, and the package downloads of agents.
//!
//! An upload is streamed to a temporary file (hashing as it goes, stopping at the size limit),
//! checked whole by `elves_shared::package::validate`, and only then moved to its
//! content-addressed place `<package_dir>/<sha256[..2]>/<sha256>.zip` and recorded. A refused
//! package leaves nothing behind. After every change the AppStore reloads, which pushes the new
//! app sets to the agents.
//!
//! Downloads are for agents: the link in an app set carries an expiring token signed by the
//! center (see `actors::app_store::DownloadTokens`); the package's hash alone is not enough.

use super::access::{require_admin, require_supervisor};
use super::openapi;
use super::request::{self, Caller};
use super::{
    admin_call, audit, resolve_agent, respond, AgentStatus, ApiState, AuditedAnswer, V2Call,
};
use crate::actors::app_store::Reload;
use crate::error::ApiError;
use crate::store::blocking::blocking;
use crate::store::{NewAppVersion, VersionAdded};
use actix_web::{web, HttpRequest, HttpResponse};
use elves_shared::package::{self, PackageName};
use elves_shared::time::now_unix_ms;
use futures::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v2/app/upload", web::post().to(upload))
        .route("/api/v2/app/create", web::route().to(create))
        .route("/api/v2/app/online", web::route().to(online))
        .route("/api/v2/app/versions", web::route().to(versions))
        .route("/api/v2/app/list", web::route().to(list))
        .route("/api/v2/app/bind", web::route().to(bind))
        .route("/api/v2/app/unbind", web::route().to(unbind))
        .route("/api/v2/app/download/{sha256}", web::get().to(download));
}

/// Where the package with this hash lives.
pub fn package_path(package_dir: &Path, sha256: &str) -> PathBuf {
    package_dir
        .join(&sha256[..2.min(sha256.len())])
        .join(format!("{sha256}.zip"))
}

/// Makes the AppStore reload and push; the change is visible to the API when this returns.
async fn reload(state: &ApiState) -> Result<(), ApiError> {
    state
        .children
        .app_store
        .send(Reload)
        .await
        .map_err(|err| ApiError::Internal(format!("app store: {err}")))?
        .map_err(|err| ApiError::Internal(format!("app store: {err}")))
}

/// A package being received: a temporary file removed on drop unless kept.
struct Incoming {
    path: PathBuf,
    kept: bool,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

struct Received {
    incoming: Incoming,
    name: PackageName,
    sha256: String,
    size: u64,
}

/// Uploads a package `<app>_<version>.zip` (admin; multipart field `file`, auth parameters in the
/// query string): `{app, version, sha256, size}`.
#[utoipa::path(
    post,
    path = "/api/v2/app/upload",
    tag = "app",
    params(
        ("sha256" = Option<String>, Query, description = "Expected sha256 of the package (signed)"),
        ("online" = Option<bool>, Query, description = "false: do not make this version online"),
    ),
    request_body(content_type = "multipart/form-data", description = "Field `file`: the package `<app>_<version>.zip`"),
    extensions(("x-error-codes" = json!(["403.2", "403.3", "413.2", "415.1", "415.2"]))),
)]
pub async fn upload(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<ApiState>,
) -> HttpResponse {
    let outcome = async {
        // The auth parameters are in the query string; the body is not signed.
        let call = V2Call::authenticate(&req, &[], &state)?;
        let outcome = store_upload(&req, payload, &state, &call.caller, &call.params).await;
        let target = outcome
            .as_ref()
            .map(|result| {
                format!(
                    "{}_{}",
                    result["app"].as_str().unwrap_or(""),
                    result["version"].as_str().unwrap_or("")
                )
            })
            .unwrap_or_default();
        audit(&state, &call.caller, "app/upload", &target, None, &outcome);
        outcome
    }
    .await;
    respond(&state, "app/upload", outcome)
}

/// Receives, checks and stores an uploaded package (admin only); the dashboard's upload form
/// runs this too.
pub(crate) async fn store_upload(
    req: &HttpRequest,
    payload: web::Payload,
    state: &ApiState,
    caller: &Caller,
    params: &request::Params,
) -> Result<Value, ApiError> {
    require_admin(state, caller)?;
    let make_online = !params.get_or_empty("online").eq_ignore_ascii_case("false");
    let expected_sha = params.get_or_empty("sha256").to_ascii_lowercase();
    let limits = state.config.apps.limits;
    let package_dir = state.config.package_dir();
    let received = receive(req, payload, &package_dir, limits.max_compressed_bytes).await?;
    if !expected_sha.is_empty() && expected_sha != received.sha256 {
        return Err(ApiError::PackageRefused(format!(
            "sha256 of the body is {}, the sha256 parameter says {expected_sha}",
            received.sha256
        )));
    }
    let check_path = received.incoming.path.clone();
    let size = received.size;
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&check_path)
            .map_err(|err| package::PackageError::Io(err.to_string()))?;
        package::validate(std::io::BufReader::new(file), size, &limits)
    })
    .await
    .map_err(|err| ApiError::Internal(format!("package check: {err}")))?
    .map_err(|err| ApiError::PackageRefused(err.to_string()))?;

    let Received {
        mut incoming,
        name,
        sha256,
        size,
    } = received;
    // The same version with other content is refused before anything is stored.
    let store = state.store.clone();
    let (app, version) = (name.app.clone(), name.version.clone());
    let existing = blocking(move || match store.get_app(&app)? {
        Some(_) => store.app_versions(&app),
        None => Ok(Vec::new()),
    })
    .await?;
    if let Some(existing) = existing.iter().find(|row| row.version == version) {
        if existing.sha256 != sha256 {
            return Err(ApiError::VersionConflict(format!(
                "app {} version {} exists with different content (sha256 {})",
                name.app, name.version, existing.sha256
            )));
        }
        return Ok(
            json!({"app": name.app, "version": name.version, "sha256": sha256, "size": size}),
        );
    }

    let final_path = package_path(&package_dir, &sha256);
    let from = incoming.path.clone();
    let to = final_path.clone();
    let placed_here = blocking(move || place(&from, &to)).await?;
    incoming.kept = true;
    let new_version = NewAppVersion {
        app: name.app.clone(),
        version: name.version.clone(),
        sha256: sha256.clone(),
        size,
        uploaded_by: caller.auth_id.clone(),
        uploaded_at: now_unix_ms(),
        make_online,
    };
    let store = state.store.clone();
    let added = blocking(move || store.add_app_version(&new_version)).await;
    let added = match added {
        Ok(added) => added,
        Err(err) => {
            // A concurrent upload of the same version won: do not leave an unreferenced file.
            if placed_here {
                let store = state.store.clone();
                let hash = sha256.clone();
                let referenced = blocking(move || store.version_by_sha256(&hash))
                    .await
                    .map(|row| row.is_some())
                    .unwrap_or(true);
                if !referenced {
                    let _ = std::fs::remove_file(&final_path);
                }
            }
            return Err(err.into());
        }
    };
    if added == VersionAdded::Added {
        log::info!(
            "app {} version {}: stored as {sha256} ({size} bytes){}",
            name.app,
            name.version,
            if make_online { ", online" } else { "" }
        );
    }
    reload(state).await?;
    Ok(json!({"app": name.app, "version": name.version, "sha256": sha256, "size": size}))
}

/// Moves the received file to its content-addressed place; true when this call created it
/// (false when the same content was already stored).
fn place(from: &Path, to: &Path) -> Result<bool, crate::store::StoreError> {
    let io =
        |err: std::io::Error| crate::store::StoreError::Corrupt(format!("package store: {err}"));
    if to.exists() {
        std::fs::remove_file(from).map_err(io)?;
        return Ok(false);
    }
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::rename(from, to).map_err(io)?;
    Ok(true)
}

/// Streams the multipart field `file` to a temporary file, hashing it and stopping at `limit`.
async fn receive(
    req: &HttpRequest,
    payload: web::Payload,
    package_dir: &Path,
    limit: u64,
) -> Result<Received, ApiError> {
    let refused = |why: String| ApiError::PackageRefused(why);
    let mut multipart = actix_multipart::Multipart::new(req.headers(), payload);
    let incoming_dir = package_dir.join(".incoming");
    tokio::fs::create_dir_all(&incoming_dir)
        .await
        .map_err(|err| ApiError::Internal(format!("package store: {err}")))?;
    while let Some(field) = multipart.next().await {
        let mut field = field.map_err(|err| refused(format!("bad multipart body: {err}")))?;
        if field.name() != Some("file") {
            // Drain other fields; they carry nothing we use.
            while let Some(chunk) = field.next().await {
                chunk.map_err(|err| refused(format!("bad multipart body: {err}")))?;
            }
            continue;
        }
        let file_name = field
            .content_disposition()
            .and_then(|disposition| disposition.get_filename())
            .map(str::to_string)
            .unwrap_or_default();
        // Only the last path component counts (some clients send a full path).
        let base_name = file_name.rsplit(['/', '\\']).next().unwrap_or_default();
        let name = PackageName::parse(base_name).map_err(|err| refused(err.to_string()))?;
        let incoming = Incoming {
            path: incoming_dir.join(format!("{:016x}.part", rand::random::<u64>())),
            kept: false,
        };
        let mut out = tokio::fs::File::create(&incoming.path)
            .await
            .map_err(|err| ApiError::Internal(format!("package store: {err}")))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = field.next().await {
            let chunk = chunk.map_err(|err| refused(format!("upload interrupted: {err}")))?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(refused(format!(
                    "package is over the limit of {limit} bytes"
                )));
            }
            hasher.update(&chunk);
            out.write_all(&chunk)
                .await
                .map_err(|err| ApiError::Internal(format!("package store: {err}")))?;
        }
        out.flush()
            .await
            .map_err(|err| ApiError::Internal(format!("package store: {err}")))?;
        return Ok(Received {
            incoming,
            name,
            sha256: hex::encode(hasher.finalize()),
            size,
        });
    }
    Err(refused("no multipart field named file".to_string()))
}

/// Parameters of the download link.
#[derive(serde::Deserialize)]
pub struct DownloadQuery {
    agent: String,
    expires: u64,
    token: String,
}

/// `GET /api/v2/app/download/<sha256>?agent=&expires=&token=`: the package bytes, streamed.
/// Plain HTTP statuses (not the v2 envelope): 403 for a bad or expired token, 404 for an
/// unknown package.
#[utoipa::path(
    get,
    path = "/api/v2/app/download/{sha256}",
    tag = "app",
    security(()),
    params(
        ("sha256" = String, Path, description = "The package's sha256"),
        ("agent" = String, Query, description = "The agent the link was made for"),
        ("expires" = u64, Query, description = "Unix seconds the link is good until"),
        ("token" = String, Query, description = "The center's token for agent, package and expiry"),
    ),
    responses(
        (status = 200, description = "The package bytes", content_type = "application/zip"),
        (status = 403, description = "Bad or expired token"),
        (status = 404, description = "Unknown package"),
    ),
)]
pub async fn download(
    path: web::Path<String>,
    query: web::Query<DownloadQuery>,
    state: web::Data<ApiState>,
) -> HttpResponse {
    let sha256 = path.into_inner();
    let now_s = now_unix_ms() / 1000;
    if !package::is_valid_sha256(&sha256) {
        return HttpResponse::NotFound().body("unknown package");
    }
    let tokens = state.children.apps.tokens.clone();
    if !tokens.verify(&sha256, &query.agent, query.expires, &query.token, now_s) {
        state.metrics.record_call("app/download", "403");
        return HttpResponse::Forbidden().body("bad or expired download token");
    }
    let file_path = package_path(&state.config.package_dir(), &sha256);
    let file = match tokio::fs::File::open(&file_path).await {
        Ok(file) => file,
        Err(err) => {
            log::warn!("package {sha256}: not served to {}: {err}", query.agent);
            state.metrics.record_call("app/download", "404");
            return HttpResponse::NotFound().body("unknown package");
        }
    };
    let length = file.metadata().await.map(|meta| meta.len()).ok();
    state.metrics.record_call("app/download", "ok");
    let body = futures::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buffer = vec![0u8; 64 * 1024];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(n) => {
                buffer.truncate(n);
                Some((Ok::<_, std::io::Error>(web::Bytes::from(buffer)), file))
            }
            Err(err) => Some((Err(err), file)),
        }
    });
    let mut response = HttpResponse::Ok();
    response.content_type("application/zip");
    if let Some(length) = length {
        response.insert_header((actix_web::http::header::CONTENT_LENGTH, length));
    }
    response.streaming(body)
}

fn version_param(params: &request::Params) -> Result<String, ApiError> {
    let version = params.get_or_empty("version");
    if !elves_shared::names::is_valid_version(version) {
        return Err(ApiError::BadParam(format!("bad version {version:?}")));
    }
    Ok(version.to_string())
}

/// `app/create app=<name> [name=<display name>]`: an app without versions yet.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/app/create",
    tag = "app",
    params(openapi::AppParam, ("name" = Option<String>, Query, description = "Display name")),
    extensions(("x-error-codes" = json!(["403.3", "402.1"]))),
)]
pub async fn create(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    admin_call(
        req,
        body,
        state,
        "app/create",
        AuditedAnswer::Whole,
        |state, params| async move {
            let app = request::app_name(&params)?;
            let display_name = params.get_or_empty("name").to_string();
            let store = state.store.clone();
            let name = app.clone();
            let created =
                blocking(move || store.create_app(&name, &display_name, now_unix_ms())).await?;
            reload(&state).await?;
            Ok((app.clone(), json!({"app": app, "created": created})))
        },
    )
    .await
}

/// `app/online app= version=`: the version agents should have (an older one rolls back).
#[utoipa::path(
    method(get, post),
    path = "/api/v2/app/online",
    tag = "app",
    params(openapi::AppParam, ("version" = String, Query)),
    extensions(("x-error-codes" = json!(["403.3", "403.2", "413.2", "402.1"]))),
)]
pub async fn online(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    admin_call(
        req,
        body,
        state,
        "app/online",
        AuditedAnswer::Whole,
        |state, params| async move { set_online(&state, &params).await },
    )
    .await
}

/// `app/versions app=`: every uploaded version, and which one is online.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/app/versions",
    tag = "app",
    params(openapi::AppParam),
    extensions(("x-error-codes" = json!(["403.3", "413.2"]))),
)]
pub async fn versions(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    let outcome = async {
        let call = V2Call::authenticate(&req, &body, &state)?;
        require_admin(&state, &call.caller)?;
        let app = request::app_name(&call.params)?;
        let store = state.store.clone();
        let name = app.clone();
        let (row, versions) = blocking(move || {
            let row = store
                .get_app(&name)?
                .ok_or_else(|| crate::store::StoreError::AppNotFound(name.clone()))?;
            Ok((row, store.app_versions(&name)?))
        })
        .await?;
        let zone = state.config.cron.zone();
        let list: Vec<Value> = versions
            .iter()
            .map(|version| {
                json!({
                    "version": version.version,
                    "sha256": version.sha256,
                    "size": version.size,
                    "uploaded_by": version.uploaded_by,
                    "uploaded_at": elves_shared::quartz::format_time(version.uploaded_at, zone),
                    "online": row.online_version.as_deref() == Some(version.version.as_str()),
                })
            })
            .collect();
        Ok(json!({"app": app, "online_version": row.online_version, "versions": list}))
    }
    .await;
    respond(&state, "app/versions", outcome)
}

/// `app/list`: every app with its online version and bound agents.
#[utoipa::path(method(get, post), path = "/api/v2/app/list", tag = "app")]
pub async fn list(req: HttpRequest, body: web::Bytes, state: web::Data<ApiState>) -> HttpResponse {
    let outcome = async {
        let call = V2Call::authenticate(&req, &body, &state)?;
        require_admin(&state, &call.caller)?;
        let store = state.store.clone();
        let apps = blocking(move || store.list_apps()).await?;
        let snapshot = state.children.apps.read();
        let list: Vec<Value> = apps
            .iter()
            .map(|app| {
                let agents: Vec<String> = snapshot
                    .app(&app.name)
                    .map(|entry| entry.agents.iter().cloned().collect())
                    .unwrap_or_default();
                json!({
                    "app": app.name,
                    "app_name": app.display_name,
                    "online_version": app.online_version,
                    "agents": agents,
                })
            })
            .collect();
        Ok(Value::Array(list))
    }
    .await;
    respond(&state, "app/list", outcome)
}

/// The agent id for a binding: a known agent's id (an ip resolves to it); an unknown address
/// must already be a valid agent id (an agent may be bound before it first beats).
async fn binding_agent(state: &ApiState, address: String) -> Result<String, ApiError> {
    match resolve_agent(state, &address).await {
        Ok(AgentStatus::Online(agent)) | Ok(AgentStatus::Offline { agent, .. }) => {
            Ok(agent.to_string())
        }
        Err(ApiError::AgentNotFound(_)) => Ok(address),
        Err(err) => Err(err),
    }
}

/// `app/bind app= ip=`: the app may run on that agent (supervisor mode).
#[utoipa::path(
    method(get, post),
    path = "/api/v2/app/bind",
    tag = "app",
    params(openapi::AppParam, openapi::AgentParam),
    extensions(("x-error-codes" = json!(["403.1", "403.3", "402.1", "413.2"]))),
)]
pub async fn bind(req: HttpRequest, body: web::Bytes, state: web::Data<ApiState>) -> HttpResponse {
    admin_call(
        req,
        body,
        state,
        "app/bind",
        AuditedAnswer::Whole,
        |state, params| async move { bind_app(&state, &params).await },
    )
    .await
}

/// `app/unbind app= ip=`.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/app/unbind",
    tag = "app",
    params(openapi::AppParam, openapi::AgentParam),
    extensions(("x-error-codes" = json!(["403.1", "403.3", "402.1", "413.2"]))),
)]
pub async fn unbind(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    admin_call(
        req,
        body,
        state,
        "app/unbind",
        AuditedAnswer::Whole,
        |state, params| async move { unbind_app(&state, &params).await },
    )
    .await
}

/// The body of `app/online` (the caller is an admin): also the dashboard's "make online".
pub(crate) async fn set_online(
    state: &ApiState,
    params: &request::Params,
) -> Result<(String, Value), ApiError> {
    // Table order: 403.2 (version) before 403.3 (app).
    let version = version_param(params)?;
    let app = request::app_name(params)?;
    let store = state.store.clone();
    let (name, chosen) = (app.clone(), version.clone());
    blocking(move || store.set_online_version(&name, &chosen, now_unix_ms())).await?;
    reload(state).await?;
    log::info!("app {app}: version {version} is online");
    Ok((
        format!("{app}_{version}"),
        json!({"app": app, "version": version}),
    ))
}

/// The body of `app/bind` (the caller is an admin): also the dashboard's binding form.
pub(crate) async fn bind_app(
    state: &ApiState,
    params: &request::Params,
) -> Result<(String, Value), ApiError> {
    // Parameters in table order (403.1 ip, 403.3 app), then the component (402.1).
    let address = request::agent_address(params)?;
    let app = request::app_name(params)?;
    require_supervisor(state, "app/bind")?;
    let agent = binding_agent(state, address).await?;
    let store = state.store.clone();
    let (name, id) = (app.clone(), agent.clone());
    let added = blocking(move || store.bind_agent(&name, &id)).await?;
    reload(state).await?;
    Ok((
        format!("{app}@{agent}"),
        json!({"app": app, "agent": agent, "added": added}),
    ))
}

/// The body of `app/unbind` (the caller is an admin).
pub(crate) async fn unbind_app(
    state: &ApiState,
    params: &request::Params,
) -> Result<(String, Value), ApiError> {
    // Parameters in table order (403.1 ip, 403.3 app), then the component (402.1).
    let address = request::agent_address(params)?;
    let app = request::app_name(params)?;
    require_supervisor(state, "app/unbind")?;
    let agent = binding_agent(state, address).await?;
    let store = state.store.clone();
    let (name, id) = (app.clone(), agent.clone());
    let removed = blocking(move || store.unbind_agent(&name, &id)).await?;
    reload(state).await?;
    Ok((
        format!("{app}@{agent}"),
        json!({"app": app, "agent": agent, "removed": removed}),
    ))
}
