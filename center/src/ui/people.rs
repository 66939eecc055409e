//! The Admin page's grants (which apps an auth id may call) and bindings (which agents an app
//! may run on), shown from the registry the API authorizes with and changed as `auth/grant`,
//! `auth/ungrant`, `app/bind` and `app/unbind` change them. Admins only, supervisor mode.

use super::html::{self, esc};
use super::pages::{admin_answer, not_admin, refusal_status, State, Ui};
use super::{signed_post, Signed};
use crate::api::request::Params;
use crate::api::{audit, ApiState};
use crate::error::ApiError;
use crate::store::{AuthIdRow, Role};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use std::fmt::Write as _;

/// Grants per active auth id, with the form that grants or takes back an app.
pub(super) fn grants_section(state: &ApiState, signed: &Signed, auth_ids: &[AuthIdRow]) -> String {
    let registry = state.children.apps.read();
    let mut out = String::from(
        "<h2>Grants</h2><div class=\"table-wrap\"><table id=\"grants\"><thead><tr><th>Auth id</th>\
         <th>Apps it may call</th></tr></thead><tbody>",
    );
    for row in auth_ids.iter().filter(|row| row.revoked_at.is_none()) {
        let apps = if row.role == Role::Admin {
            "<span class=\"muted\">every app (admin)</span>".to_string()
        } else {
            let names: Vec<String> = registry
                .apps_of(&row.auth_id)
                .into_iter()
                .map(|app| esc(&app.name))
                .collect();
            if names.is_empty() {
                "<span class=\"muted\">none yet</span>".to_string()
            } else {
                names.join(", ")
            }
        };
        let _ = write!(
            out,
            "<tr><td class=\"mono\">{}</td><td>{apps}</td></tr>",
            esc(&row.auth_id)
        );
    }
    let _ = write!(
        out,
        "</tbody></table></div><form class=\"filters\" method=\"post\" action=\"/ui/admin/grant\">{}\
         <label>Auth id<input name=\"id\" id=\"grant-id\" required></label>\
         <label>App<input name=\"app\" id=\"grant-app\" required></label>\
         <button type=\"submit\" name=\"action\" value=\"grant\" id=\"grant\">Grant</button>\
         <button type=\"submit\" name=\"action\" value=\"ungrant\" id=\"ungrant\" class=\"secondary\">Take back</button></form>",
        html::csrf_field(&signed.csrf)
    );
    out
}

/// Bindings per app, with the form that binds or unbinds an agent.
pub(super) fn bindings_section(state: &ApiState, signed: &Signed) -> String {
    let registry = state.children.apps.read();
    let apps = registry.apps_of(&signed.session.auth_id);
    let mut out = String::from("<h2>Bindings</h2>");
    if apps.is_empty() {
        out.push_str(
            "<div class=\"table-wrap\"><p class=\"empty\">No app yet: upload one on the \
             <a href=\"/ui/apps\">Apps</a> page, then bind it to the agents it may run on.</p></div>",
        );
    } else {
        out.push_str(
            "<div class=\"table-wrap\"><table id=\"bindings\"><thead><tr><th>App</th>\
             <th>Agents it may run on</th></tr></thead><tbody>",
        );
        for app in apps {
            let agents: Vec<String> = app
                .agents
                .iter()
                .map(|agent| format!("<span class=\"mono\">{}</span>", esc(agent)))
                .collect();
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td></tr>",
                esc(&app.name),
                if agents.is_empty() {
                    "<span class=\"muted\">none: it runs nowhere yet</span>".to_string()
                } else {
                    agents.join(", ")
                }
            );
        }
        out.push_str("</tbody></table></div>");
    }
    let _ = write!(
        out,
        "<form class=\"filters\" method=\"post\" action=\"/ui/admin/bind\">{}\
         <label>App<input name=\"app\" id=\"bind-app\" required></label>\
         <label>Agent (ip or id)<input name=\"ip\" id=\"bind-ip\" required></label>\
         <button type=\"submit\" name=\"action\" value=\"bind\" id=\"bind\">Bind</button>\
         <button type=\"submit\" name=\"action\" value=\"unbind\" id=\"unbind\" class=\"secondary\">Unbind</button></form>",
        html::csrf_field(&signed.csrf)
    );
    out
}

/// Runs an admin change from a form: refused (and audited) for a non-admin, else `change`
/// with the form's `fields` as its parameters, audited as `action`; the Admin page after.
async fn admin_change<F, Fut>(
    req: HttpRequest,
    body: web::Bytes,
    state: State,
    ui: Ui,
    fields: &[&str],
    actions: [(&str, &'static str); 2],
    change: F,
) -> HttpResponse
where
    F: FnOnce(State, Params, bool) -> Fut,
    Fut: std::future::Future<Output = Result<(String, serde_json::Value), ApiError>>,
{
    let (signed, form) = match signed_post(&req, &body, &state, &ui) {
        Ok(signed) => signed,
        Err(answer) => return *answer,
    };
    let first = form.get("action") == actions[0].0;
    let action = if first { actions[0].1 } else { actions[1].1 };
    let target = fields
        .iter()
        .map(|field| form.get(field))
        .collect::<Vec<_>>()
        .join(":");
    if !signed.is_admin {
        let refused = Err(ApiError::Forbidden("admin role required".to_string()));
        audit(&state, &signed.caller, action, &target, None, &refused);
        return not_admin(&state, &signed);
    }
    if !first && form.get("action") != actions[1].0 {
        let err = ApiError::BadParam(format!(
            "unknown action {:?}: {} or {}",
            form.get("action"),
            actions[0].0,
            actions[1].0
        ));
        let notice = Some((false, format!("Nothing changed: {err}")));
        return admin_answer(&state, &signed, 0, StatusCode::BAD_REQUEST, notice).await;
    }
    let params = Params::from_owned(
        fields
            .iter()
            .map(|field| (field.to_string(), form.get(field).trim().to_string()))
            .collect(),
    );
    let outcome = change(state.clone(), params, first).await;
    let (target, logged) = match outcome {
        Ok((target, value)) => (target, Ok(value)),
        Err(err) => (target, Err(err)),
    };
    audit(&state, &signed.caller, action, &target, None, &logged);
    match logged {
        Ok(_) => {
            let notice = Some((
                true,
                format!("Done: {} {target}.", action.trim_start_matches("ui/")),
            ));
            admin_answer(&state, &signed, 0, StatusCode::OK, notice).await
        }
        Err(err) => {
            let notice = Some((false, format!("Nothing changed: {err}")));
            admin_answer(&state, &signed, 0, refusal_status(&err), notice).await
        }
    }
}

/// `POST /ui/admin/grant` (`id`, `app`, `action` grant or ungrant).
pub async fn grant(req: HttpRequest, body: web::Bytes, state: State, ui: Ui) -> HttpResponse {
    admin_change(
        req,
        body,
        state,
        ui,
        &["id", "app"],
        [("grant", "ui/auth/grant"), ("ungrant", "ui/auth/ungrant")],
        |state, params, grant| async move {
            if grant {
                crate::api::auth_ids::grant_app(&state, &params).await
            } else {
                crate::api::auth_ids::ungrant_app(&state, &params).await
            }
        },
    )
    .await
}

/// `POST /ui/admin/bind` (`app`, `ip`, `action` bind or unbind).
pub async fn bind(req: HttpRequest, body: web::Bytes, state: State, ui: Ui) -> HttpResponse {
    admin_change(
        req,
        body,
        state,
        ui,
        &["app", "ip"],
        [("bind", "ui/app/bind"), ("unbind", "ui/app/unbind")],
        |state, params, bind| async move {
            if bind {
                crate::api::apps::bind_app(&state, &params).await
            } else {
                crate::api::apps::unbind_app(&state, &params).await
            }
        },
    )
    .await
}
