//! The Apps page: every app the auth id holds, its versions and the online one, which agents
//! have which version installed; for admins the upload form (multipart, the API's own package
//! checks and storage) and "make online" on any version, which rolls back to an older one.

use super::html::{self, badge, esc, url_part, Section, Tone};
use super::pages::{failed, not_admin, refusal_status, State, Ui};
use super::{html as respond_html, signed_in, Signed};
use crate::api::request::Params;
use crate::api::{audit, ApiState};
use crate::error::ApiError;
use crate::store::blocking::blocking;
use crate::store::AppVersionRow;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Agent ids listed by name under each installed version; the rest are counted.
const AGENTS_NAMED: usize = 10;

struct AppView {
    name: String,
    online: Option<String>,
    bound: usize,
    versions: Vec<AppVersionRow>,
    /// Installed version → agent ids that report it.
    installed: BTreeMap<String, Vec<String>>,
}

async fn read_apps(state: &ApiState, signed: &Signed) -> Result<Vec<AppView>, ApiError> {
    let apps: Vec<(String, Option<String>, usize)> = state
        .children
        .apps
        .read()
        .apps_of(&signed.session.auth_id)
        .into_iter()
        .map(|app| {
            (
                app.name.clone(),
                app.online.as_ref().map(|version| version.version.clone()),
                app.agents.len(),
            )
        })
        .collect();
    let store = state.store.clone();
    let views = blocking(move || {
        let mut views = Vec::with_capacity(apps.len());
        for (name, online, bound) in apps {
            let versions = store.app_versions(&name)?;
            let mut installed: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (agent, version) in store.dashboard_app_installs(&name)? {
                installed.entry(version).or_default().push(agent);
            }
            views.push(AppView {
                name,
                online,
                bound,
                versions,
                installed,
            });
        }
        Ok::<_, crate::store::StoreError>(views)
    })
    .await?;
    Ok(views)
}

fn version_actions(signed: &Signed, app: &AppView, version: &AppVersionRow) -> String {
    if !signed.is_admin {
        return String::new();
    }
    if app.online.as_deref() == Some(version.version.as_str()) {
        return badge(Tone::Ok, "online");
    }
    let online_uploaded = app
        .online
        .as_ref()
        .and_then(|online| app.versions.iter().find(|row| &row.version == online))
        .map(|row| row.uploaded_at);
    let label = match online_uploaded {
        Some(at) if version.uploaded_at < at => "Roll back to this version",
        _ => "Make online",
    };
    format!(
        "<form class=\"inline-form\" method=\"post\" action=\"/ui/apps/online\">{}\
         <input type=\"hidden\" name=\"app\" value=\"{}\"><input type=\"hidden\" name=\"version\" value=\"{}\">\
         <button type=\"submit\" class=\"secondary\" id=\"online-{}-{}\">{label}</button></form>",
        html::csrf_field(&signed.csrf),
        esc(&app.name),
        esc(&version.version),
        esc(&app.name),
        esc(&version.version).replace('.', "_"),
    )
}

fn apps_body(
    state: &ApiState,
    signed: &Signed,
    apps: &[AppView],
    notice: Option<(bool, String)>,
) -> String {
    let zone = state.config.cron.zone();
    let mut body = String::from("<h1>Apps</h1>");
    if let Some((ok, text)) = notice {
        body.push_str(&html::notice(ok, &text));
    }
    if signed.is_admin {
        // A multipart body cannot be read before the upload is streamed to disk (and the
        // API's upload reads only its file), so the session's CSRF token and the online
        // choice travel in the query string of each button's action.
        let csrf = url_part(&signed.csrf);
        let _ = write!(
            body,
            "<div class=\"panel\"><h2>Upload a package</h2><form class=\"stack\" method=\"post\" \
             enctype=\"multipart/form-data\" action=\"/ui/apps/upload?csrf={csrf}&amp;online=true\">\
             <label><span>Package (<code>&lt;app&gt;_&lt;version&gt;.zip</code>)</span><input type=\"file\" \
             name=\"file\" id=\"package\" accept=\".zip\" required></label>\
             <div class=\"actions\"><button type=\"submit\" id=\"upload\">Upload and make it online</button>\
             <button type=\"submit\" class=\"secondary\" id=\"upload-only\" \
             formaction=\"/ui/apps/upload?csrf={csrf}&amp;online=false\">Upload only</button></div>\
             <p class=\"muted\">Agents install the online version within a heartbeat.</p></form></div>"
        );
    }
    if apps.is_empty() {
        body.push_str(if signed.is_admin {
            "<div class=\"table-wrap\"><p class=\"empty\" id=\"no-apps\">No app uploaded yet. \
             Upload a package above (or with <code>elves app upload</code>).</p></div>"
        } else {
            "<div class=\"table-wrap\"><p class=\"empty\" id=\"no-apps\">No app you may use. An \
             admin uploads one with <code>elves app upload</code> (or on this page) and grants \
             it to your auth id.</p></div>"
        });
        return body;
    }
    body.push_str(
        "<div class=\"table-wrap\"><table id=\"apps\"><thead><tr><th>App</th><th>Online version</th>\
         <th>Versions</th><th>Installed on agents</th><th class=\"hide-narrow\">Bound agents</th>\
         </tr></thead><tbody>",
    );
    for app in apps {
        let versions: Vec<String> = app
            .versions
            .iter()
            .map(|version| {
                format!(
                    "<div class=\"version\" data-version=\"{}\">{} <span class=\"muted\">({}, by {})</span> {}</div>",
                    esc(&version.version),
                    esc(&version.version),
                    html::time(version.uploaded_at, zone),
                    esc(&version.uploaded_by),
                    version_actions(signed, app, version),
                )
            })
            .collect();
        let installed: Vec<String> = app
            .installed
            .iter()
            .map(|(version, agents)| {
                let named: Vec<String> = agents
                    .iter()
                    .take(AGENTS_NAMED)
                    .map(|agent| {
                        format!(
                            "<a class=\"mono\" href=\"/ui/agents/{id}\">{id}</a>",
                            id = esc(agent)
                        )
                    })
                    .collect();
                let more = agents.len().saturating_sub(AGENTS_NAMED);
                let more = if more > 0 {
                    format!(
                        " and <a href=\"/ui/agents?app={}\">{more} more</a>",
                        url_part(&app.name)
                    )
                } else {
                    String::new()
                };
                format!(
                    "<div class=\"installed\" data-version=\"{}\">{}: {} agent(s): {}{more}</div>",
                    esc(version),
                    esc(version),
                    agents.len(),
                    named.join(", ")
                )
            })
            .collect();
        let online = match &app.online {
            Some(version) => badge(Tone::Ok, version),
            None => badge(Tone::Idle, "none online"),
        };
        let _ = write!(
            body,
            "<tr data-app=\"{}\"><td><a href=\"/ui/tasks?app={}\">{}</a></td><td class=\"app-online\">{online}</td>\
             <td>{}</td><td class=\"app-installed\">{}</td><td class=\"hide-narrow\">{}</td></tr>",
            esc(&app.name),
            url_part(&app.name),
            esc(&app.name),
            if versions.is_empty() {
                "<span class=\"muted\">no version yet</span>".to_string()
            } else {
                versions.join("")
            },
            if installed.is_empty() {
                "<span class=\"muted\">no agent reports it yet</span>".to_string()
            } else {
                installed.join("")
            },
            app.bound,
        );
    }
    body.push_str("</tbody></table></div>");
    body
}

async fn apps_answer(
    state: &ApiState,
    signed: &Signed,
    status: StatusCode,
    notice: Option<(bool, String)>,
) -> HttpResponse {
    match read_apps(state, signed).await {
        Ok(apps) => respond_html(
            status,
            html::page(
                "Apps",
                Section::Apps,
                &signed.viewer(state),
                &apps_body(state, signed, &apps, notice),
            ),
        ),
        Err(err) => failed(state, signed, Section::Apps, &err),
    }
}

pub async fn apps(req: HttpRequest, state: State, ui: Ui) -> HttpResponse {
    let signed = match signed_in(&req, &state, &ui) {
        Ok(signed) => signed,
        Err(answer) => return *answer,
    };
    apps_answer(&state, &signed, StatusCode::OK, None).await
}

/// `POST /ui/apps/upload?csrf=…` (multipart, field `file`, optional `online`): the package
/// stored as `app/upload` stores it; admins only; audited as `ui/app/upload`.
pub async fn upload(req: HttpRequest, payload: web::Payload, state: State, ui: Ui) -> HttpResponse {
    let signed = match signed_in(&req, &state, &ui) {
        Ok(signed) => signed,
        Err(answer) => return *answer,
    };
    let query = super::Form::parse(req.query_string().as_bytes());
    if !ui.keys.csrf_ok(&signed.session, query.get("csrf")) {
        return *super::csrf_refused(&state, &signed);
    }
    if !signed.is_admin {
        let refused = Err(ApiError::Forbidden("admin role required".to_string()));
        audit(&state, &signed.caller, "ui/app/upload", "", None, &refused);
        return not_admin(&state, &signed);
    }
    let online = if query.get("online") == "false" {
        "false"
    } else {
        "true"
    };
    let params = Params::from_owned(vec![("online".to_string(), online.to_string())]);
    let outcome =
        crate::api::apps::store_upload(&req, payload, &state, &signed.caller, &params).await;
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
    audit(
        &state,
        &signed.caller,
        "ui/app/upload",
        &target,
        None,
        &outcome,
    );
    match outcome {
        Ok(result) => {
            let notice = format!(
                "Uploaded {} version {} (sha256 {}).",
                result["app"].as_str().unwrap_or(""),
                result["version"].as_str().unwrap_or(""),
                result["sha256"].as_str().unwrap_or("")
            );
            apps_answer(&state, &signed, StatusCode::OK, Some((true, notice))).await
        }
        Err(err) => {
            let status = refusal_status(&err);
            apps_answer(
                &state,
                &signed,
                status,
                Some((false, format!("Not uploaded: {err}"))),
            )
            .await
        }
    }
}

/// `POST /ui/apps/online` (`app`, `version`): the version agents should have, as `app/online`
/// sets it (an older one rolls back); admins only; audited as `ui/app/online`.
pub async fn online(req: HttpRequest, body: web::Bytes, state: State, ui: Ui) -> HttpResponse {
    let (signed, form) = match super::signed_post(&req, &body, &state, &ui) {
        Ok(signed) => signed,
        Err(answer) => return *answer,
    };
    let target = format!("{}_{}", form.get("app"), form.get("version"));
    if !signed.is_admin {
        let refused = Err(ApiError::Forbidden("admin role required".to_string()));
        audit(
            &state,
            &signed.caller,
            "ui/app/online",
            &target,
            None,
            &refused,
        );
        return not_admin(&state, &signed);
    }
    let params = Params::from_owned(vec![
        ("app".to_string(), form.get("app").to_string()),
        ("version".to_string(), form.get("version").to_string()),
    ]);
    let outcome = crate::api::apps::set_online(&state, &params)
        .await
        .map(|(_, value)| value);
    audit(
        &state,
        &signed.caller,
        "ui/app/online",
        &target,
        None,
        &outcome,
    );
    match outcome {
        Ok(_) => {
            let notice = format!(
                "{} version {} is online: agents install it within a heartbeat.",
                form.get("app"),
                form.get("version")
            );
            apps_answer(&state, &signed, StatusCode::OK, Some((true, notice))).await
        }
        Err(err) => {
            let status = refusal_status(&err);
            let notice = Some((false, format!("Not changed: {err}")));
            apps_answer(&state, &signed, status, notice).await
        }
    }
}
