//! Adding and editing a cron: the form checks its fields with `cron/add`'s own validation and
//! shows the rule's next five firings; saving is only possible once the rule being saved has
//! been previewed. An edit saves the new definition as a new cron (paused if the old one was)
//! and deletes the old one (the store has no in-place update; the Cron actor is told about
//! both).

use super::html::{self, esc, Section};
use super::pages::{crons_answer, refusal_status, State, Ui};
use super::{html as respond_html, signed_in, signed_post, Form, Signed};
use crate::actors::cron::CronChanged;
use crate::api::request::Params;
use crate::api::{audit, ApiState};
use crate::error::ApiError;
use crate::store::blocking::blocking;
use crate::store::{CronRow, CronSource};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use chrono_tz::Tz;
use elves_shared::quartz::QuartzRule;
use elves_shared::wire::TaskId;
use serde_json::Value;
use std::fmt::Write as _;

/// How many firings the preview shows.
const PREVIEW_FIRINGS: usize = 5;

/// The form's fields, as typed.
#[derive(Debug, Clone, Default)]
struct CronFields {
    /// The cron being edited; empty for a new one.
    edit: String,
    ip: String,
    app: String,
    func: String,
    param: String,
    rule: String,
    timeout: String,
    mode: String,
}

impl CronFields {
    fn from_form(form: &Form) -> CronFields {
        CronFields {
            edit: form.get("edit").trim().to_string(),
            ip: form.get("ip").trim().to_string(),
            app: form.get("app").trim().to_string(),
            func: form.get("func").trim().to_string(),
            param: form.get("param").trim().to_string(),
            rule: form.get("rule").trim().to_string(),
            timeout: form.get("timeout").trim().to_string(),
            mode: form.get("mode").to_string(),
        }
    }

    fn of_row(row: &CronRow) -> CronFields {
        CronFields {
            edit: row.id.to_string(),
            ip: row.definition.ip.clone(),
            app: row.definition.app.clone(),
            func: row.definition.func.clone(),
            param: row.definition.param.clone(),
            rule: row.definition.rule.clone(),
            timeout: row.definition.timeout_s.to_string(),
            mode: row.definition.mode.to_string(),
        }
    }

    /// The fields as `cron/add` parameters.
    fn params(&self) -> Params {
        let mut pairs = vec![
            ("ip".to_string(), self.ip.clone()),
            ("app".to_string(), self.app.clone()),
            ("func".to_string(), self.func.clone()),
            ("param".to_string(), self.param.clone()),
            ("rule".to_string(), self.rule.clone()),
            ("mode".to_string(), self.mode.clone()),
        ];
        if !self.timeout.is_empty() {
            pairs.push(("timeout".to_string(), self.timeout.clone()));
        }
        Params::from_owned(pairs)
    }
}

/// The next `PREVIEW_FIRINGS` firings of a valid rule after `now`.
fn next_firings(rule: &str, now: u64, zone: Tz) -> Vec<u64> {
    let Ok(rule) = QuartzRule::parse(rule) else {
        return Vec::new();
    };
    let mut firings = Vec::with_capacity(PREVIEW_FIRINGS);
    let mut after = now;
    while firings.len() < PREVIEW_FIRINGS {
        match rule.next_after_ms(after, zone) {
            Some(next) => {
                firings.push(next);
                after = next;
            }
            None => break,
        }
    }
    firings
}

/// What the form shows above itself: nothing yet, a refusal, or the checked rule's firings.
enum Shown<'a> {
    Nothing,
    Refused(&'a ApiError),
    Preview(&'a [u64]),
}

fn form_page(state: &ApiState, signed: &Signed, fields: &CronFields, shown: Shown<'_>) -> String {
    let zone = state.config.cron.zone();
    let editing = !fields.edit.is_empty();
    let mut body = if editing {
        format!(
            "<h1>Edit cron <span class=\"mono\">{}</span></h1>",
            esc(&fields.edit)
        )
    } else {
        "<h1>Add a cron</h1>".to_string()
    };
    // Saving needs a preview of exactly the rule being saved.
    let mut previewed = String::new();
    match shown {
        Shown::Nothing => {}
        Shown::Refused(err) => body.push_str(&html::notice(false, &format!("Not saved: {err}"))),
        Shown::Preview(firings) => {
            previewed = fields.rule.clone();
            let _ = write!(
                body,
                "<div class=\"panel\" id=\"preview\"><h2>The next {} firings ({zone})</h2>\
                 <ol class=\"preview\">",
                firings.len()
            );
            for at in firings {
                let _ = write!(body, "<li>{}</li>", html::time(*at, zone));
            }
            body.push_str(
                "</ol><p class=\"muted\">The definition is valid. Save it, or change it and \
                 preview again.</p></div>",
            );
        }
    }
    let apps: Vec<String> = state
        .children
        .apps
        .read()
        .apps_of(&signed.session.auth_id)
        .into_iter()
        .map(|app| format!("<option value=\"{}\">", esc(&app.name)))
        .collect();
    let save = if previewed.is_empty() {
        "<span class=\"muted\">Preview first: the next five firings are shown before \
         anything is saved.</span>"
            .to_string()
    } else {
        "<button type=\"submit\" name=\"action\" value=\"save\" id=\"cron-save\">Save</button>"
            .to_string()
    };
    let _ = write!(
        body,
        "<div class=\"panel\"><form class=\"stack\" method=\"post\" action=\"/ui/crons/edit\">{}\
         <input type=\"hidden\" name=\"edit\" value=\"{}\">\
         <input type=\"hidden\" name=\"previewed\" value=\"{}\">\
         <label>Agent (ip or id)<input name=\"ip\" id=\"cron-ip\" required value=\"{}\"></label>\
         <label>App<input name=\"app\" id=\"cron-app\" list=\"apps\" required value=\"{}\"></label>\
         <datalist id=\"apps\">{}</datalist>\
         <label>Func<input name=\"func\" id=\"cron-func\" required value=\"{}\"></label>\
         <label>Rule (Quartz: sec min hour day month weekday [year], in {zone})\
         <input name=\"rule\" id=\"cron-rule\" required value=\"{}\" placeholder=\"0 0 3 * * ?\"></label>\
         <label>Param (JSON, may be empty)<textarea name=\"param\" id=\"cron-param\">{}</textarea></label>\
         <label>Timeout (s, empty for the default)<input name=\"timeout\" id=\"cron-timeout\" \
         type=\"number\" min=\"1\" value=\"{}\"></label><label>Mode{}</label>\
         <div class=\"actions\"><button type=\"submit\" name=\"action\" value=\"preview\" \
         id=\"cron-preview\" class=\"secondary\">Check and preview</button>{save}\
         <a class=\"button secondary\" href=\"/ui/crons\">Cancel</a></div></form></div>",
        html::csrf_field(&signed.csrf),
        esc(&fields.edit),
        esc(&previewed),
        esc(&fields.ip),
        esc(&fields.app),
        apps.join(""),
        esc(&fields.func),
        esc(&fields.rule),
        esc(&fields.param),
        esc(&fields.timeout),
        html::select("mode", &[("NP", "NP"), ("P", "P")], &fields.mode),
    );
    body
}

/// The API cron `id` the signed-in auth id may change.
async fn editable_cron(state: &ApiState, signed: &Signed, id: &str) -> Result<CronRow, ApiError> {
    let id = TaskId::parse(id).map_err(|_| ApiError::BadCronId(format!("bad cron id {id:?}")))?;
    let store = state.store.clone();
    let target = id.clone();
    let row = blocking(move || store.get_cron(&target))
        .await?
        .ok_or_else(|| ApiError::CronNotFound(id.to_string()))?;
    crate::api::access::require_app(state, &signed.caller, &row.definition.app)?;
    if row.source != CronSource::Api {
        return Err(ApiError::BadParam(format!(
            "cron {id} comes from a definition file: change the file and reload"
        )));
    }
    Ok(row)
}

/// `GET /ui/crons/edit[?id=<cron>]`: the empty form, or an API cron's definition to edit.
pub async fn edit_form(req: HttpRequest, state: State, ui: Ui) -> HttpResponse {
    let signed = match signed_in(&req, &state, &ui) {
        Ok(signed) => signed,
        Err(answer) => return *answer,
    };
    let query = Form::parse(req.query_string().as_bytes());
    let id = query.get("id");
    let (fields, shown_err) = if id.is_empty() {
        (CronFields::default(), None)
    } else {
        match editable_cron(&state, &signed, id).await {
            Ok(row) => (CronFields::of_row(&row), None),
            Err(err) => (CronFields::default(), Some(err)),
        }
    };
    let shown = shown_err.as_ref().map_or(Shown::Nothing, Shown::Refused);
    respond_html(
        if shown_err.is_some() {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        },
        html::page(
            "Cron",
            Section::Crons,
            &signed.viewer(&state),
            &form_page(&state, &signed, &fields, shown),
        ),
    )
}

/// Checks the fields as `cron/add` would; on success the rule's next firings.
fn check(state: &ApiState, signed: &Signed, fields: &CronFields) -> Result<Vec<u64>, ApiError> {
    let definition = crate::api::cron::cron_definition(&fields.params(), state)?;
    crate::api::access::require_app(state, &signed.caller, &definition.app)?;
    if !state.config.cron.enabled {
        return Err(ApiError::CronDisabled);
    }
    Ok(next_firings(
        &definition.rule,
        super::now_ms(),
        state.config.cron.zone(),
    ))
}

/// Saves the checked fields: a new cron, and for an edit the old one deleted. Both audited.
async fn save(state: &ApiState, signed: &Signed, fields: &CronFields) -> Result<String, ApiError> {
    let old = if fields.edit.is_empty() {
        None
    } else {
        Some(editable_cron(state, signed, &fields.edit).await?)
    };
    let definition = crate::api::cron::cron_definition(&fields.params(), state)?;
    let address = definition.ip.clone();
    let added = crate::api::cron::create_cron(state, &signed.caller, definition).await;
    let new_id = added
        .as_ref()
        .ok()
        .and_then(|result| result["id"].as_str())
        .unwrap_or_default()
        .to_string();
    audit(
        state,
        &signed.caller,
        "ui/cron/add",
        &new_id,
        Some(&address),
        &added,
    );
    added?;
    if let Some(old) = old {
        // A paused cron stays paused through an edit.
        if !old.enabled {
            let new_cron = TaskId::parse(&new_id)
                .map_err(|_| ApiError::Internal(format!("cron/add gave the id {new_id:?}")))?;
            let store = state.store.clone();
            let target = new_cron.clone();
            blocking(move || store.set_cron_enabled(&target, false, super::now_ms())).await?;
            state.children.cron.do_send(CronChanged(new_cron));
        }
        let store = state.store.clone();
        let target = old.id.clone();
        let deleted = blocking(move || store.delete_cron(&target))
            .await
            .map_err(ApiError::from)
            .map(|()| Value::Null);
        if deleted.is_ok() {
            state.children.cron.do_send(CronChanged(old.id.clone()));
        }
        audit(
            state,
            &signed.caller,
            "ui/cron/delete",
            old.id.as_str(),
            Some(&old.definition.ip),
            &deleted,
        );
        deleted?;
    }
    Ok(new_id)
}

/// `POST /ui/crons/edit`: `action=preview` checks and shows the next firings; `action=save`
/// saves a definition whose rule was previewed (otherwise it previews first).
pub async fn edit(
    req: HttpRequest,
    body: actix_web::web::Bytes,
    state: State,
    ui: Ui,
) -> HttpResponse {
    let (signed, form) = match signed_post(&req, &body, &state, &ui) {
        Ok(signed) => signed,
        Err(answer) => return *answer,
    };
    let fields = CronFields::from_form(&form);
    let page = |status: StatusCode, shown: Shown<'_>| {
        respond_html(
            status,
            html::page(
                "Cron",
                Section::Crons,
                &signed.viewer(&state),
                &form_page(&state, &signed, &fields, shown),
            ),
        )
    };
    let firings = match check(&state, &signed, &fields) {
        Ok(firings) => firings,
        Err(err) => return page(refusal_status(&err), Shown::Refused(&err)),
    };
    let wants_save = form.get("action") == "save";
    if !wants_save || form.get("previewed") != fields.rule {
        return page(StatusCode::OK, Shown::Preview(&firings));
    }
    match save(&state, &signed, &fields).await {
        Ok(new_id) => {
            let verb = if fields.edit.is_empty() {
                "Added"
            } else {
                "Saved"
            };
            crons_answer(&state, &signed, (true, format!("{verb} cron {new_id}."))).await
        }
        Err(err) => page(refusal_status(&err), Shown::Refused(&err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preview_lists_the_next_five_firings_in_order() {
        // Every day at 03:00 in Paris, from 2026-01-01 00:00 UTC.
        let firings = next_firings("0 0 3 * * ?", 1_767_225_600_000, Tz::Europe__Paris);
        let shown: Vec<String> = firings
            .iter()
            .map(|at| html::time(*at, Tz::Europe__Paris))
            .collect();
        assert_eq!(
            shown,
            [
                "2026-01-01 03:00:00 CET",
                "2026-01-02 03:00:00 CET",
                "2026-01-03 03:00:00 CET",
                "2026-01-04 03:00:00 CET",
                "2026-01-05 03:00:00 CET",
            ]
        );
        assert!(next_firings("not a rule", 0, Tz::UTC).is_empty());
    }
}
