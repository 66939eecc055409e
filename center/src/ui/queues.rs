//! The Queues pages: the list of queues, one queue's tasks as a dependency graph with their
//! states, and stop (as `queue/stop` does).

use super::html::{self, badge, esc, Section, Tone};
use super::pages::{
    failed, not_found, ok_page, page_number, query_map, refusal_status, task_badge, visible_apps,
    State, Ui, PAGE_SIZE,
};
use super::{html as respond_html, signed_in, signed_post, Signed};
use crate::api::{audit, ApiState};
use crate::error::ApiError;
use crate::store::blocking::blocking;
use crate::store::{QueueRow, QueueStatus, TaskRow, TaskStatus};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use elves_shared::wire::TaskId;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

fn queue_badge(status: QueueStatus) -> String {
    match status {
        QueueStatus::Open => badge(Tone::Idle, "open (not committed)"),
        QueueStatus::Committed => badge(Tone::Warn, "running"),
        QueueStatus::Finished => badge(Tone::Ok, "finished"),
        QueueStatus::Stopped => badge(Tone::Idle, "stopped"),
    }
}

pub async fn queues(req: HttpRequest, state: State, ui: Ui) -> HttpResponse {
    let signed = match signed_in(&req, &state, &ui) {
        Ok(signed) => signed,
        Err(answer) => return *answer,
    };
    let page = page_number(&query_map(&req));
    let only_apps = visible_apps(&state, &signed);
    let store = state.store.clone();
    let rows = match blocking(move || {
        store.dashboard_queues(only_apps.as_deref(), page * PAGE_SIZE, PAGE_SIZE)
    })
    .await
    {
        Ok(rows) => rows,
        Err(err) => return failed(&state, &signed, Section::Queues, &err.into()),
    };
    let zone = state.config.cron.zone();
    let mut body = String::from("<h1>Queues</h1>");
    if rows.rows.is_empty() {
        body.push_str(
            "<div class=\"table-wrap\"><p class=\"empty\" id=\"no-queues\">No queue yet. Create \
             one with <code>queue/create</code>, add tasks (each may depend on another) with \
             <code>queue/addtask</code> and start it with <code>queue/commit</code>.</p></div>",
        );
    } else {
        body.push_str(
            "<div class=\"table-wrap\"><table id=\"queues\"><thead><tr><th>Created</th>\
             <th>Queue</th><th>App</th><th>State</th><th class=\"hide-narrow\">Auth id</th>\
             <th class=\"hide-narrow\">Finished</th></tr></thead><tbody>",
        );
        for queue in &rows.rows {
            let _ = write!(
                body,
                "<tr><td>{}</td><td class=\"mono\"><a href=\"/ui/queues/{id}\">{id}</a></td>\
                 <td>{}</td><td>{}</td><td class=\"mono hide-narrow\">{}</td>\
                 <td class=\"hide-narrow\">{}</td></tr>",
                html::time(queue.created_at, zone),
                esc(&queue.app),
                queue_badge(queue.status),
                esc(&queue.auth_id),
                html::opt_time(queue.finished_at, zone),
                id = esc(queue.id.as_str()),
            );
        }
        body.push_str("</tbody></table></div>");
    }
    body.push_str(&html::pager("/ui/queues", "", page, rows.has_more));
    ok_page(html::page(
        "Queues",
        Section::Queues,
        &signed.viewer(&state),
        &body,
    ))
}

/// The queue `id` and its tasks, if it exists and the signed-in auth id holds its app.
async fn visible_queue(
    state: &ApiState,
    signed: &Signed,
    id: &str,
) -> Result<Option<(QueueRow, Vec<TaskRow>)>, ApiError> {
    let Ok(id) = TaskId::parse(id) else {
        return Ok(None);
    };
    let store = state.store.clone();
    let read = blocking(move || {
        let Some(queue) = store.get_queue(&id)? else {
            return Ok(None);
        };
        let tasks = store.queue_tasks(&id)?;
        Ok::<_, crate::store::StoreError>(Some((queue, tasks)))
    })
    .await?;
    Ok(read.filter(|(queue, _)| {
        crate::api::access::require_app(state, &signed.caller, &queue.app).is_ok()
    }))
}

/// The tasks as nested lists, each under the task it depends on (a queue's dependencies form
/// a forest: one dependency per task, always an earlier task of the same queue).
pub(super) fn dependency_graph(tasks: &[TaskRow]) -> String {
    let ids: HashSet<&str> = tasks.iter().map(|task| task.id.as_str()).collect();
    let mut children: HashMap<&str, Vec<&TaskRow>> = HashMap::new();
    let mut roots = Vec::new();
    for task in tasks {
        match task.depend_task_id.as_ref().map(TaskId::as_str) {
            Some(parent) if ids.contains(parent) && parent != task.id.as_str() => {
                children.entry(parent).or_default().push(task);
            }
            _ => roots.push(task),
        }
    }
    let mut out = String::from("<ul class=\"graph\" id=\"graph\">");
    // Depth-first without recursion: (task, whether its children are open).
    let mut stack: Vec<(&TaskRow, bool)> = roots.into_iter().rev().map(|t| (t, false)).collect();
    let mut seen = HashSet::new();
    while let Some((task, closing)) = stack.pop() {
        if closing {
            out.push_str("</ul></li>");
            continue;
        }
        if !seen.insert(task.id.as_str()) {
            continue;
        }
        let _ = write!(
            out,
            "<li data-task=\"{id}\"><span class=\"node\"><a class=\"mono\" href=\"/ui/tasks/{id}\">{id}</a>\
             <span>{}.{}</span><span class=\"mono muted\">{}</span>{}</span>",
            esc(&task.app),
            esc(&task.func),
            esc(task.agent.as_str()),
            task_badge(task),
            id = esc(task.id.as_str()),
        );
        match children.get(task.id.as_str()) {
            Some(kids) if !kids.is_empty() => {
                out.push_str("<ul>");
                stack.push((task, true));
                for kid in kids.iter().rev() {
                    stack.push((kid, false));
                }
            }
            _ => out.push_str("</li>"),
        }
    }
    out.push_str("</ul>");
    out
}

fn state_counts(tasks: &[TaskRow]) -> String {
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for task in tasks {
        let word = match task.status {
            TaskStatus::Pending => "pending",
            TaskStatus::Executing => "running",
            TaskStatus::Finished if task.worker_flag == Some(1) => "ok",
            TaskStatus::Finished => "failed",
            TaskStatus::Stopped => "stopped",
            TaskStatus::Skipped => "skipped",
        };
        *counts.entry(word).or_default() += 1;
    }
    counts
        .iter()
        .map(|(word, n)| format!("{n} {word}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn queue_body(
    state: &ApiState,
    signed: &Signed,
    queue: &QueueRow,
    tasks: &[TaskRow],
    notice: Option<(bool, String)>,
) -> String {
    let zone = state.config.cron.zone();
    let mut body = format!(
        "<h1>Queue <span class=\"mono\">{}</span></h1>",
        esc(queue.id.as_str())
    );
    if let Some((ok, text)) = notice {
        body.push_str(&html::notice(ok, &text));
    }
    let stoppable = matches!(queue.status, QueueStatus::Open | QueueStatus::Committed);
    let stop = if stoppable {
        format!(
            "<div class=\"actions\"><form method=\"post\" action=\"/ui/queues/{}/stop\">{}\
             <button type=\"submit\" id=\"stop-queue\">Stop this queue</button></form>\
             <span class=\"muted\">Every task not yet settled is stopped; running ones \
             are cancelled on their agents.</span></div>",
            esc(queue.id.as_str()),
            html::csrf_field(&signed.csrf),
        )
    } else {
        String::new()
    };
    let _ = write!(
        body,
        "<div class=\"panel\"><dl class=\"facts\"><dt>State</dt><dd id=\"queue-state\">{}</dd>\
         <dt>App</dt><dd>{}</dd><dt>Auth id</dt><dd class=\"mono\">{}</dd>\
         <dt>Created</dt><dd>{}</dd><dt>Committed</dt><dd>{}</dd><dt>Finished</dt><dd>{}</dd>\
         <dt>Tasks</dt><dd id=\"queue-counts\">{}</dd></dl>{stop}</div><h2>Tasks by dependency</h2>",
        queue_badge(queue.status),
        esc(&queue.app),
        esc(&queue.auth_id),
        html::time(queue.created_at, zone),
        html::opt_time(queue.committed_at, zone),
        html::opt_time(queue.finished_at, zone),
        if tasks.is_empty() {
            "none".to_string()
        } else {
            state_counts(tasks)
        },
    );
    if tasks.is_empty() {
        body.push_str(
            "<div class=\"table-wrap\"><p class=\"empty\">No task in this queue. Add tasks with \
             <code>queue/addtask</code> before committing it.</p></div>",
        );
    } else {
        body.push_str(
            "<p class=\"muted\">Each task is listed under the task it waits for; a task whose \
             dependency failed is skipped.</p>",
        );
        body.push_str(&format!(
            "<div class=\"panel\">{}</div>",
            dependency_graph(tasks)
        ));
    }
    body
}

pub async fn queue(
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
    match visible_queue(&state, &signed, &id).await {
        Ok(Some((queue, tasks))) => ok_page(html::page(
            "Queue",
            Section::Queues,
            &signed.viewer(&state),
            &queue_body(&state, &signed, &queue, &tasks, None),
        )),
        Ok(None) => not_found(&state, &signed, Section::Queues, "queue", &id, "/ui/queues"),
        Err(err) => failed(&state, &signed, Section::Queues, &err),
    }
}

/// Stops a queue as `queue/stop` does (the caller holds its app), audited as `ui/queue/stop`
/// whether it was done or refused.
pub async fn stop(
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
    let outcome = async {
        let queue_id = TaskId::parse(&text)
            .map_err(|_| ApiError::BadQueueId(format!("bad queue id {text:?}")))?;
        crate::api::queue::authorize_queue(&state, &signed.caller, &queue_id).await?;
        crate::api::queue::stop_queue(&state, &queue_id).await
    }
    .await;
    audit(
        &state,
        &signed.caller,
        "ui/queue/stop",
        &text,
        None,
        &outcome,
    );
    let notice = match &outcome {
        Ok(_) => (
            true,
            "Queue stopped: its unsettled tasks are stopped, running ones cancelled.".to_string(),
        ),
        Err(err) => (false, format!("Not stopped: {err}")),
    };
    let status = outcome
        .as_ref()
        .map_or_else(refusal_status, |_| StatusCode::OK);
    match visible_queue(&state, &signed, &text).await {
        Ok(Some((queue, tasks))) => respond_html(
            status,
            html::page(
                "Queue",
                Section::Queues,
                &signed.viewer(&state),
                &queue_body(&state, &signed, &queue, &tasks, Some(notice)),
            ),
        ),
        Ok(None) => respond_html(
            status,
            html::page(
                "Queue",
                Section::Queues,
                &signed.viewer(&state),
                &format!("<h1>Queue</h1>{}", html::notice(notice.0, &notice.1)),
            ),
        ),
        Err(err) => failed(&state, &signed, Section::Queues, &err),
    }
}
