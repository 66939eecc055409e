//! The Batches pages: the list of batches, one batch's agents by state, and the re-run of its
//! failed subset (as `batch/retry` does: a new batch of the agents that failed, timed out or
//! were offline).

use super::html::{self, badge, esc, Section, Tone};
use super::pages::{
    failed, not_found, ok_page, page_number, query_map, refusal_status, visible_apps, State, Ui,
    PAGE_SIZE,
};
use super::{html as respond_html, redirect, signed_in, signed_post, Signed};
use crate::api::{audit, ApiState};
use crate::error::ApiError;
use crate::store::blocking::blocking;
use crate::store::rollout::AgentState;
use crate::store::{BatchAgentRow, BatchRow, BatchState};
use actix_web::{web, HttpRequest, HttpResponse};
use elves_shared::wire::TaskId;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The agent states a re-run of the failed subset takes again (`batch/retry`'s default).
const FAILED_SUBSET: [AgentState; 3] =
    [AgentState::Failed, AgentState::Timeout, AgentState::Offline];

fn batch_badge(batch: &BatchRow) -> String {
    match batch.state {
        BatchState::Running => badge(Tone::Warn, "running"),
        BatchState::Finished => badge(Tone::Ok, "finished"),
        BatchState::Stopped => badge(
            Tone::Bad,
            &if batch.stop_reason.is_empty() {
                "stopped".to_string()
            } else {
                format!("stopped: {}", batch.stop_reason)
            },
        ),
    }
}

fn agent_state_badge(state: AgentState) -> String {
    let tone = match state {
        AgentState::Ok => Tone::Ok,
        AgentState::Failed | AgentState::Timeout | AgentState::Offline => Tone::Bad,
        AgentState::Running => Tone::Warn,
        AgentState::Pending | AgentState::Skipped | AgentState::Stopped => Tone::Idle,
    };
    badge(tone, state.as_str())
}

pub async fn batches(req: HttpRequest, state: State, ui: Ui) -> HttpResponse {
    let signed = match signed_in(&req, &state, &ui) {
        Ok(signed) => signed,
        Err(answer) => return *answer,
    };
    let page = page_number(&query_map(&req));
    let only_apps = visible_apps(&state, &signed);
    let store = state.store.clone();
    let rows = match blocking(move || {
        store.dashboard_batches(only_apps.as_deref(), page * PAGE_SIZE, PAGE_SIZE)
    })
    .await
    {
        Ok(rows) => rows,
        Err(err) => return failed(&state, &signed, Section::Batches, &err.into()),
    };
    let zone = state.config.cron.zone();
    let mut body = String::from("<h1>Batches</h1>");
    if rows.rows.is_empty() {
        body.push_str(
            "<div class=\"table-wrap\"><p class=\"empty\" id=\"no-batches\">No batch yet. Run an \
             app function on a target (labels, a list, every agent) in steps with \
             <code>batch/create</code>.</p></div>",
        );
    } else {
        body.push_str(
            "<div class=\"table-wrap\"><table id=\"batches\"><thead><tr><th>Created</th>\
             <th>Batch</th><th>App.func</th><th class=\"hide-narrow\">Target</th><th>Agents</th>\
             <th>State</th><th class=\"hide-narrow\">Auth id</th></tr></thead><tbody>",
        );
        for batch in &rows.rows {
            let _ = write!(
                body,
                "<tr><td>{}</td><td class=\"mono\"><a href=\"/ui/batches/{id}\">{id}</a></td>\
                 <td>{}.{}</td><td class=\"mono hide-narrow\">{}</td><td>{}</td><td>{}</td>\
                 <td class=\"mono hide-narrow\">{}</td></tr>",
                html::time(batch.created_at, zone),
                esc(&batch.app),
                esc(&batch.func),
                esc(&batch.target),
                batch.count,
                batch_badge(batch),
                esc(&batch.auth_id),
                id = esc(batch.id.as_str()),
            );
        }
        body.push_str("</tbody></table></div>");
    }
    body.push_str(&html::pager("/ui/batches", "", page, rows.has_more));
    ok_page(html::page(
        "Batches",
        Section::Batches,
        &signed.viewer(&state),
        &body,
    ))
}

/// The batch `id` if it exists and the signed-in auth id holds its app.
async fn visible_batch(
    state: &ApiState,
    signed: &Signed,
    id: &str,
) -> Result<Option<BatchRow>, ApiError> {
    let Ok(id) = TaskId::parse(id) else {
        return Ok(None);
    };
    let store = state.store.clone();
    let batch = blocking(move || store.get_batch(&id)).await?;
    Ok(batch
        .filter(|batch| crate::api::access::require_app(state, &signed.caller, &batch.app).is_ok()))
}

async fn batch_body(
    state: &ApiState,
    signed: &Signed,
    batch: &BatchRow,
    page: u64,
    notice: Option<(bool, String)>,
) -> Result<String, ApiError> {
    let zone = state.config.cron.zone();
    let store = state.store.clone();
    let id = batch.id.clone();
    let (counts, (_, agents)): (BTreeMap<AgentState, u64>, (u64, Vec<BatchAgentRow>)) =
        blocking(move || {
            Ok::<_, crate::store::StoreError>((
                store.batch_counts(&id)?,
                store.batch_agents(&id, &AgentState::ALL, page * PAGE_SIZE, PAGE_SIZE + 1)?,
            ))
        })
        .await?;
    let has_more = agents.len() as u64 > PAGE_SIZE;
    let failed_subset: u64 = FAILED_SUBSET
        .iter()
        .map(|state| counts.get(state).copied().unwrap_or(0))
        .sum();
    let mut body = format!(
        "<h1>Batch <span class=\"mono\">{}</span></h1>",
        esc(batch.id.as_str())
    );
    if let Some((ok, text)) = notice {
        body.push_str(&html::notice(ok, &text));
    }
    let counted: Vec<String> = counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(state, n)| format!("{n} {}", agent_state_badge(*state)))
        .collect();
    let retry_of = batch.retry_of.as_ref().map_or_else(
        || "-".to_string(),
        |origin| {
            format!(
                "<a class=\"mono\" href=\"/ui/batches/{id}\">{id}</a>",
                id = esc(origin.as_str())
            )
        },
    );
    let rerun = if batch.state == BatchState::Running {
        "<p class=\"muted\">A re-run of the failed agents is possible once the batch has \
         finished or been stopped.</p>"
            .to_string()
    } else if failed_subset == 0 {
        "<p class=\"muted\">No agent failed, timed out or was offline: nothing to re-run.</p>"
            .to_string()
    } else {
        format!(
            "<div class=\"actions\"><form method=\"post\" action=\"/ui/batches/{}/retry\">{}\
             <button type=\"submit\" id=\"retry-failed\">Re-run on the {failed_subset} failed \
             agent(s)</button></form><span class=\"muted\">A new batch of the agents that failed, \
             timed out or were offline, same function and parameters.</span></div>",
            esc(batch.id.as_str()),
            html::csrf_field(&signed.csrf),
        )
    };
    let _ = write!(
        body,
        "<div class=\"panel\"><dl class=\"facts\"><dt>State</dt><dd id=\"batch-state\">{}</dd>\
         <dt>App.func</dt><dd>{}.{}</dd><dt>Target</dt><dd class=\"mono\">{}</dd>\
         <dt>Agents</dt><dd id=\"batch-counts\">{} in all: {}</dd><dt>Auth id</dt><dd class=\"mono\">{}</dd>\
         <dt>Re-run of</dt><dd>{retry_of}</dd><dt>Created</dt><dd>{}</dd><dt>Finished</dt><dd>{}</dd></dl>\
         {rerun}</div><h2>Agents</h2>",
        batch_badge(batch),
        esc(&batch.app),
        esc(&batch.func),
        esc(&batch.target),
        batch.count,
        if counted.is_empty() {
            "none".to_string()
        } else {
            counted.join(", ")
        },
        esc(&batch.auth_id),
        html::time(batch.created_at, zone),
        html::opt_time(batch.finished_at, zone),
    );
    if agents.is_empty() {
        body.push_str(
            "<div class=\"table-wrap\"><p class=\"empty\">No agent in this batch.</p></div>",
        );
    } else {
        body.push_str(
            "<div class=\"table-wrap\"><table id=\"batch-agents\"><thead><tr><th>#</th>\
             <th>Agent</th><th class=\"hide-narrow\">Ip</th><th>State</th><th>Task</th>\
             </tr></thead><tbody>",
        );
        for agent in agents.iter().take(PAGE_SIZE as usize) {
            let task = agent.task.as_ref().map_or_else(
                || "-".to_string(),
                |task| {
                    format!(
                        "<a class=\"mono\" href=\"/ui/tasks/{id}\">{id}</a>",
                        id = esc(task.id.as_str())
                    )
                },
            );
            let _ = write!(
                body,
                "<tr><td>{}</td><td class=\"mono\"><a href=\"/ui/agents/{agent_id}\">{agent_id}</a></td>\
                 <td class=\"mono hide-narrow\">{}</td><td>{}</td><td>{task}</td></tr>",
                agent.seq,
                esc(&agent.ip),
                agent_state_badge(agent.state),
                agent_id = esc(agent.agent.as_str()),
            );
        }
        body.push_str("</tbody></table></div>");
    }
    body.push_str(&html::pager(
        &format!("/ui/batches/{}", esc(batch.id.as_str())),
        "",
        page,
        has_more,
    ));
    Ok(body)
}

pub async fn batch(
    req: HttpRequest,
    path: web::Path<String>,
    state: State,
    ui: Ui,
) -> HttpResponse {
    let signed = match signed_in(&req, &state, &ui) {
        Ok(signed) => signed,
        Err(answer) => return *answer,
    };
    let id = path.into_inner();
    let page = page_number(&query_map(&req));
    let batch = match visible_batch(&state, &signed, &id).await {
        Ok(Some(batch)) => batch,
        Ok(None) => {
            return not_found(
                &state,
                &signed,
                Section::Batches,
                "batch",
                &id,
                "/ui/batches",
            )
        }
        Err(err) => return failed(&state, &signed, Section::Batches, &err),
    };
    match batch_body(&state, &signed, &batch, page, None).await {
        Ok(body) => ok_page(html::page(
            "Batch",
            Section::Batches,
            &signed.viewer(&state),
            &body,
        )),
        Err(err) => failed(&state, &signed, Section::Batches, &err),
    }
}

/// Re-runs a batch's failed subset as `batch/retry` does, audited as `ui/batch/retry`; on
/// success the browser goes to the new batch.
pub async fn retry(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    state: State,
    ui: Ui,
) -> HttpResponse {
    let (signed, _) = match signed_post(&req, &body, &state, &ui) {
        Ok(signed) => signed,
        Err(answer) => return *answer,
    };
    let text = path.into_inner();
    let origin = async {
        let id = TaskId::parse(&text).map_err(|_| ApiError::BatchNotFound(text.clone()))?;
        let store = state.store.clone();
        let batch = blocking(move || store.get_batch(&id))
            .await?
            .ok_or_else(|| ApiError::BatchNotFound(text.clone()))?;
        crate::api::access::require_app(&state, &signed.caller, &batch.app)?;
        Ok::<_, ApiError>(batch)
    }
    .await;
    let outcome = match &origin {
        Ok(batch) => {
            crate::api::batch::retry_batch(&state, &signed.caller, batch, FAILED_SUBSET.to_vec())
                .await
        }
        Err(err) => Err(err.clone()),
    };
    let new_id = outcome
        .as_ref()
        .ok()
        .and_then(|result| result["id"].as_str())
        .unwrap_or_default()
        .to_string();
    audit(
        &state,
        &signed.caller,
        "ui/batch/retry",
        if new_id.is_empty() { &text } else { &new_id },
        None,
        &outcome,
    );
    let err = match (outcome, origin) {
        (Ok(_), _) if TaskId::parse(&new_id).is_ok() => {
            return redirect(&format!("/ui/batches/{new_id}"))
        }
        (Ok(_), _) => ApiError::Internal("batch/retry gave no batch id".to_string()),
        (Err(err), _) => err,
    };
    let status = refusal_status(&err);
    let notice = Some((false, format!("Not re-run: {err}")));
    let shown = match visible_batch(&state, &signed, &text).await {
        Ok(Some(batch)) => batch_body(&state, &signed, &batch, 0, notice).await,
        Ok(None) => Ok(format!(
            "<h1>Batch</h1>{}",
            html::notice(false, &format!("Not re-run: {err}"))
        )),
        Err(err) => Err(err),
    };
    match shown {
        Ok(body) => respond_html(
            status,
            html::page("Batch", Section::Batches, &signed.viewer(&state), &body),
        ),
        Err(err) => failed(&state, &signed, Section::Batches, &err),
    }
}
