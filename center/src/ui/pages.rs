//! The dashboard's pages and form actions.

use super::html::{self, badge, esc, url_part, Section, Tone};
use super::{html as respond_html, now_ms, redirect, session, signed_in, signed_post, Dashboard};
use super::{Form, Signed};
use crate::actors::cron::CronChanged;
use crate::api::request::Params;
use crate::api::{audit, ApiState, V2Call};
use crate::error::ApiError;
use crate::store::blocking::blocking;
use crate::store::{AgentFilter, AgentRow, CronRow, Role, TaskFilter, TaskRow, TaskStatus};
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use chrono_tz::Tz;
use elves_shared::quartz::QuartzRule;
use elves_shared::wire::TaskId;
use serde_json::Value;
use std::fmt::Write as _;

/// Rows per page of every list.
pub(super) const PAGE_SIZE: u64 = 50;

pub(super) type State = web::Data<ApiState>;
pub(super) type Ui = web::Data<Dashboard>;

pub(super) fn ok_page(body: String) -> HttpResponse {
    respond_html(StatusCode::OK, body)
}

/// A page that could not be read: the store's error, said plainly.
pub(super) fn failed(
    state: &ApiState,
    signed: &Signed,
    section: Section,
    err: &ApiError,
) -> HttpResponse {
    log::error!("dashboard: {err}");
    respond_html(
        StatusCode::INTERNAL_SERVER_ERROR,
        html::page(
            "Error",
            section,
            &signed.viewer(state),
            &html::notice(false, &format!("The page could not be read: {err}")),
        ),
    )
}

/// The status of a refused change: 403 when the auth id may not, 400 otherwise.
pub(super) fn refusal_status(err: &ApiError) -> StatusCode {
    match err {
        ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// A page saying there is no `what` `id` the auth id may see, with the way back.
pub(super) fn not_found(
    state: &ApiState,
    signed: &Signed,
    section: Section,
    what: &str,
    id: &str,
    back: &str,
) -> HttpResponse {
    respond_html(
        StatusCode::NOT_FOUND,
        html::page(
            "Not found",
            section,
            &signed.viewer(state),
            &format!(
                "<h1>No such {what}</h1><div class=\"panel\"><p class=\"empty\">No {what} {} \
                 that you may see. <a href=\"{back}\">Back to the list</a>.</p></div>",
                esc(id)
            ),
        ),
    )
}

pub(super) fn query_map(req: &HttpRequest) -> Form {
    Form::parse(req.query_string().as_bytes())
}

pub(super) fn page_number(query: &Form) -> u64 {
    query.get("page").parse().unwrap_or(0)
}

/// A task's state in words and colour.
pub(super) fn task_badge(task: &TaskRow) -> String {
    match task.status {
        TaskStatus::Pending => badge(Tone::Idle, "pending"),
        TaskStatus::Executing => badge(Tone::Warn, "running"),
        TaskStatus::Finished if task.worker_flag == Some(1) => badge(Tone::Ok, "ok"),
        TaskStatus::Finished => badge(
            Tone::Bad,
            &format!("failed ({})", task.worker_flag.unwrap_or(0)),
        ),
        TaskStatus::Stopped => badge(Tone::Idle, "stopped"),
        TaskStatus::Skipped => badge(Tone::Idle, "skipped"),
    }
}

pub(super) fn is_online(state: &ApiState, agent: &AgentRow, now: u64) -> bool {
    crate::actors::heartbeat::is_online(
        agent.last_heartbeat_at,
        agent.interval_ms,
        state.config.heartbeat.offline_after_missed_beats,
        now,
    )
}

pub(super) fn online_badge(online: bool) -> String {
    if online {
        badge(Tone::Ok, "online")
    } else {
        badge(Tone::Bad, "offline")
    }
}

/// The apps a non-admin may see (supervisor mode); `None`: every app.
pub(super) fn visible_apps(state: &ApiState, signed: &Signed) -> Option<Vec<String>> {
    let registry = state.children.apps.read();
    if signed.is_admin || registry.mode() == crate::config::AuthMode::Simple {
        return None;
    }
    Some(
        registry
            .apps_of(&signed.session.auth_id)
            .into_iter()
            .map(|app| app.name.clone())
            .collect(),
    )
}

/// The agents a non-admin may send work to; `None`: every agent.
pub(super) fn visible_agents(state: &ApiState, signed: &Signed) -> Option<Vec<String>> {
    if signed.is_admin {
        return None;
    }
    state
        .children
        .apps
        .read()
        .agents_of(&signed.session.auth_id)
        .map(|agents| agents.into_iter().collect())
}

pub(super) fn task_table(tasks: &[TaskRow], zone: Tz, empty: &str) -> String {
    if tasks.is_empty() {
        return format!("<div class=\"table-wrap\"><p class=\"empty\">{empty}</p></div>");
    }
    let mut out = String::from(
        "<div class=\"table-wrap\"><table id=\"tasks\"><thead><tr><th>Created</th><th>Task</th>\
         <th>Type</th><th>App.func</th><th class=\"hide-narrow\">Agent</th><th>State</th>\
         <th class=\"hide-narrow\">Took</th></tr></thead><tbody>",
    );
    for task in tasks {
        let took = task
            .worker_costtime
            .map_or_else(|| "-".to_string(), |ms| format!("{ms} ms"));
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"mono\"><a href=\"/ui/tasks/{id}\">{id}</a></td><td>{}</td>\
             <td>{}.{}</td><td class=\"mono hide-narrow\"><a href=\"/ui/agents/{agent}\">{agent}</a></td>\
             <td>{}</td><td class=\"hide-narrow\">{took}</td></tr>",
            html::time(task.created_at, zone),
            task.task_type,
            esc(&task.app),
            esc(&task.func),
            task_badge(task),
            id = esc(task.id.as_str()),
            agent = esc(task.agent.as_str()),
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

// ---------------------------------------------------------------- sign-in

fn login_page(error: Option<&str>, auth_id: &str) -> String {
    let notice = error
        .map(|text| html::notice(false, text))
        .unwrap_or_default();
    html::frame(
        "Sign in",
        &format!(
            "<main class=\"login\"><div class=\"panel\"><h1>Sign in to elves</h1>{notice}\
             <form class=\"stack\" method=\"post\" action=\"/ui/login\">\
             <label>Auth id<input name=\"auth_id\" id=\"auth_id\" autocomplete=\"username\" \
             required value=\"{}\"></label>\
             <label>Auth key<input name=\"auth_key\" id=\"auth_key\" type=\"password\" \
             autocomplete=\"current-password\" required></label>\
             <button type=\"submit\" id=\"sign-in\">Sign in</button></form>\
             <p class=\"muted\">The key is checked once and never kept by the browser; the \
             session lasts {} hours.</p></div></main>",
            esc(auth_id),
            session::SESSION_TTL_S / 3600
        ),
    )
}

pub async fn login_form() -> HttpResponse {
    ok_page(login_page(None, ""))
}

pub async fn login(body: web::Bytes, state: State, ui: Ui) -> HttpResponse {
    let form = Form::parse(&body);
    let auth_id = form.get("auth_id").trim();
    let given = form.get("auth_key");
    let key = state.children.apps.read().key_of(auth_id);
    let caller = crate::api::request::Caller {
        auth_id: auth_id.to_string(),
    };
    match key {
        Some(key) if !given.is_empty() && session::key_matches(&key, given) => {
            let cookie = ui.keys.issue(auth_id, &key, now_ms() / 1000);
            audit(&state, &caller, "ui/login", auth_id, None, &Ok(Value::Null));
            HttpResponse::SeeOther()
                .insert_header((header::LOCATION, "/ui/"))
                .insert_header((
                    header::SET_COOKIE,
                    format!(
                        "{}={cookie}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}",
                        session::COOKIE,
                        session::SESSION_TTL_S
                    ),
                ))
                .finish()
        }
        _ => {
            let refused = Err(ApiError::SignMismatch);
            audit(&state, &caller, "ui/login", auth_id, None, &refused);
            respond_html(
                StatusCode::UNAUTHORIZED,
                login_page(Some("Wrong auth id or key."), auth_id),
            )
        }
    }
}

pub async fn logout(req: HttpRequest, body: web::Bytes, state: State, ui: Ui) -> HttpResponse {
    let (signed, _) = match signed_post(&req, &body, &state, &ui) {
        Ok(signed) => signed,
        Err(answer) => return *answer,
    };
    audit(
        &state,
        &signed.caller,
        "ui/logout",
        &signed.session.auth_id,
        None,
        &Ok(Value::Null),
    );
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/ui/login"))
        .insert_header((
            header::SET_COOKIE,
            format!(
                "{}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0",
                session::COOKIE
            ),
        ))
        .finish()
}

// ---------------------------------------------------------------- overview

pub async fn overview(req: HttpRequest, state: State, ui: Ui) -> HttpResponse {
    let signed = match signed_in(&req, &state, &ui) {
        Ok(signed) => signed,
        Err(answer) => return *answer,
    };
    match overview_body(&state, &signed).await {
        Ok(body) => ok_page(html::page(
            "Overview",
            Section::Overview,
            &signed.viewer(&state),
            &body,
        )),
        Err(err) => failed(&state, &signed, Section::Overview, &err),
    }
}

/// The window the overview counts tasks in.
const OVERVIEW_WINDOW_MS: u64 = 60 * 60 * 1000;

async fn overview_body(state: &ApiState, signed: &Signed) -> Result<String, ApiError> {
    let zone = state.config.cron.zone();
    let now = now_ms();
    let missed = u64::from(state.config.heartbeat.offline_after_missed_beats);
    let store = state.store.clone();
    let only_apps = visible_apps(state, signed);
    let failures_filter = TaskFilter {
        outcome: "failed".to_string(),
        only_apps,
        ..TaskFilter::default()
    };
    let ((total, online), outcomes, failures, crons) = blocking(move || {
        Ok::<_, crate::store::StoreError>((
            store.dashboard_agent_counts(now, missed)?,
            store.dashboard_outcomes_since(now.saturating_sub(OVERVIEW_WINDOW_MS))?,
            store.dashboard_tasks(&failures_filter, 0, 8)?,
            store.list_crons()?,
        ))
    })
    .await?;
    let per_minute = |count: u64| format!("{:.1}", count as f64 / 60.0);
    let mut body = format!(
        "<h1>Overview</h1><div class=\"cards\">\
         <div class=\"card\"><div class=\"n\" id=\"agents-online\">{online}</div>\
         <div class=\"label\">{} agents online</div></div>\
         <div class=\"card\"><div class=\"n\">{}</div><div class=\"label\">{} offline</div></div>\
         <div class=\"card\"><div class=\"n\">{}</div><div class=\"label\">{} ok tasks / min \
         (last hour)</div></div>\
         <div class=\"card\"><div class=\"n\">{}</div><div class=\"label\">{} failed tasks / min \
         (last hour)</div></div></div>",
        badge(Tone::Ok, "online"),
        total - online.min(total),
        badge(Tone::Bad, "offline"),
        per_minute(outcomes.ok),
        badge(Tone::Ok, "ok"),
        per_minute(outcomes.failed),
        badge(Tone::Bad, "failed"),
    );
    if total == 0 {
        body.push_str(&html::notice(
            true,
            "No agent has sent a heartbeat yet. Start one (`elves-agent` with this center's \
             broker and public key) and it appears here within a heartbeat.",
        ));
    }
    body.push_str("<h2>Recent failures</h2>");
    body.push_str(&task_table(
        &failures.rows,
        zone,
        "No failed task. Tasks that end with a worker flag other than 1 show here.",
    ));
    body.push_str("<h2>Cron firings due next</h2>");
    let mut due: Vec<(u64, CronRow)> = crons
        .into_iter()
        .filter(|row| row.enabled)
        .filter(|row| {
            crate::api::access::require_app(state, &signed.caller, &row.definition.app).is_ok()
        })
        .filter_map(|row| {
            let next = QuartzRule::parse(&row.definition.rule)
                .ok()?
                .next_after_ms(now, zone)?;
            Some((next, row))
        })
        .collect();
    due.sort_by_key(|(next, _)| *next);
    if due.is_empty() {
        body.push_str(
            "<div class=\"table-wrap\"><p class=\"empty\">No active cron. \
             <a href=\"/ui/crons/edit\">Add one</a> (or use <code>cron/add</code> or a \
             definition file); paused crons are on the <a href=\"/ui/crons\">Crons</a> page.</p></div>",
        );
    } else {
        body.push_str(
            "<div class=\"table-wrap\"><table><thead><tr><th>Next firing</th><th>Cron</th>\
             <th>App.func</th><th>Agent</th></tr></thead><tbody>",
        );
        for (next, row) in due.iter().take(5) {
            let _ = write!(
                body,
                "<tr><td>{}</td><td class=\"mono\">{}</td><td>{}.{}</td><td class=\"mono\">{}</td></tr>",
                html::time(*next, zone),
                esc(row.id.as_str()),
                esc(&row.definition.app),
                esc(&row.definition.func),
                esc(&row.definition.ip),
            );
        }
        body.push_str("</tbody></table></div>");
    }
    Ok(body)
}

// ---------------------------------------------------------------- agents

pub async fn agents(req: HttpRequest, state: State, ui: Ui) -> HttpResponse {
    let signed = match signed_in(&req, &state, &ui) {
        Ok(signed) => signed,
        Err(answer) => return *answer,
    };
    let query = query_map(&req);
    let page = page_number(&query);
    let filter = AgentFilter {
        text: query.get("q").trim().to_string(),
        label: query.get("label").trim().to_string(),
        app: query.get("app").trim().to_string(),
        online: match query.get("online") {
            "online" => Some(true),
            "offline" => Some(false),
            _ => None,
        },
        only_ids: visible_agents(&state, &signed),
    };
    let now = now_ms();
    let missed = u64::from(state.config.heartbeat.offline_after_missed_beats);
    let store = state.store.clone();
    let read_filter = filter.clone();
    let read = blocking(move || {
        let page =
            store.dashboard_agents(&read_filter, now, missed, page * PAGE_SIZE, PAGE_SIZE)?;
        let mut last_ok = Vec::with_capacity(page.rows.len());
        for agent in &page.rows {
            last_ok.push(store.dashboard_last_success(agent.id.as_str())?);
        }
        Ok::<_, crate::store::StoreError>((page, last_ok))
    })
    .await;
    let (rows, last_ok) = match read {
        Ok(read) => read,
        Err(err) => return failed(&state, &signed, Section::Agents, &err.into()),
    };
    let zone = state.config.cron.zone();
    let mut body = format!(
        "<h1>Agents</h1><form class=\"filters\" method=\"get\" action=\"/ui/agents\">\
         <label>Id or ip<input name=\"q\" id=\"f-q\" value=\"{}\"></label>\
         <label>Label<input name=\"label\" id=\"f-label\" value=\"{}\" placeholder=\"role\"></label>\
         <label>App<input name=\"app\" id=\"f-app\" value=\"{}\"></label>\
         <label>State{}</label><button type=\"submit\" id=\"filter\">Filter</button>\
         <a class=\"button secondary\" href=\"/ui/agents\">Clear</a></form>",
        esc(&filter.text),
        esc(&filter.label),
        esc(&filter.app),
        html::select(
            "online",
            &[("", "any"), ("online", "online"), ("offline", "offline")],
            query.get("online")
        ),
    );
    if rows.rows.is_empty() {
        body.push_str(
            "<div class=\"table-wrap\"><p class=\"empty\" id=\"no-agents\">No agent matches. \
             Clear the filters, or start an agent: it appears after its first heartbeat.</p></div>",
        );
    } else {
        body.push_str(
            "<div class=\"table-wrap\"><table id=\"agents\"><thead><tr><th>Agent</th><th class=\"hide-narrow\">Ip</th>\
             <th>State</th><th>Last heartbeat</th><th>Last successful task</th>\
             <th class=\"hide-narrow\">Apps</th><th class=\"hide-narrow\">Labels</th></tr></thead><tbody>",
        );
        for (agent, last_ok) in rows.rows.iter().zip(&last_ok) {
            let apps: Vec<String> = agent
                .apps
                .iter()
                .map(|(app, version)| format!("{}@{}", esc(app), esc(version)))
                .collect();
            let labels: Vec<String> = agent
                .labels
                .iter()
                .map(|(key, value)| format!("{}={}", esc(key), esc(value)))
                .collect();
            let last_ok = match last_ok {
                Some(task) => format!(
                    "<a href=\"/ui/tasks/{}\">{}</a>",
                    esc(task.id.as_str()),
                    html::time(task.created_at, zone)
                ),
                None => "<span class=\"muted\">none yet</span>".to_string(),
            };
            let _ = write!(
                body,
                "<tr><td class=\"mono\"><a href=\"/ui/agents/{id}\">{id}</a></td><td class=\"mono hide-narrow\">{}</td>\
                 <td>{}</td><td>{}<br><span class=\"muted\">{}</span></td><td>{last_ok}</td>\
                 <td class=\"hide-narrow\">{}</td><td class=\"hide-narrow\">{}</td></tr>",
                esc(&agent.ip),
                online_badge(is_online(&state, agent, now)),
                html::time(agent.last_heartbeat_at, zone),
                html::ago(agent.last_heartbeat_at, now),
                apps.join(", "),
                labels.join(", "),
                id = esc(agent.id.as_str()),
            );
        }
        body.push_str("</tbody></table></div>");
    }
    let filters = format!(
        "q={}&label={}&app={}&online={}",
        url_part(&filter.text),
        url_part(&filter.label),
        url_part(&filter.app),
        url_part(query.get("online"))
    );
    body.push_str(&html::pager("/ui/agents", &filters, page, rows.has_more));
    ok_page(html::page(
        "Agents",
        Section::Agents,
        &signed.viewer(&state),
        &body,
    ))
}

pub async fn agent(
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
    let visible = visible_agents(&state, &signed).is_none_or(|ids| ids.contains(&id));
    let store = state.store.clone();
    let only_apps = visible_apps(&state, &signed);
    let agent_id = id.clone();
    let read = blocking(move || {
        let agent = store.get_agent_by_ip_or_id(&agent_id)?;
        let filter = TaskFilter {
            agent: agent.as_ref().map_or(agent_id, |row| row.id.to_string()),
            only_apps,
            ..TaskFilter::default()
        };
        let tasks = store.dashboard_tasks(&filter, 0, 20)?;
        Ok::<_, crate::store::StoreError>((agent, tasks))
    })
    .await;
    let (agent, tasks) = match read {
        Ok(read) => read,
        Err(err) => return failed(&state, &signed, Section::Agents, &err.into()),
    };
    let zone = state.config.cron.zone();
    let now = now_ms();
    let body = match agent.filter(|_| visible) {
        None => format!(
            "<h1>Agent not found</h1><div class=\"panel\"><p class=\"empty\">No agent {} that \
             you may use. <a href=\"/ui/agents\">Back to the agents</a>.</p></div>",
            esc(&id)
        ),
        Some(agent) => {
            let apps: Vec<String> = agent
                .apps
                .iter()
                .map(|(app, version)| format!("{}@{}", esc(app), esc(version)))
                .collect();
            let labels: Vec<String> = agent
                .labels
                .iter()
                .map(|(key, value)| format!("{}={}", esc(key), esc(value)))
                .collect();
            format!(
                "<h1>Agent <span class=\"mono\">{id}</span></h1><div class=\"panel\"><dl class=\"facts\">\
                 <dt>State</dt><dd>{}</dd><dt>Ip</dt><dd class=\"mono\">{}</dd>\
                 <dt>Last heartbeat</dt><dd>{} ({})</dd><dt>Heartbeat every</dt><dd>{} ms</dd>\
                 <dt>Agent version</dt><dd>{}</dd><dt>Asset</dt><dd>{}</dd>\
                 <dt>Apps</dt><dd>{}</dd><dt>Labels</dt><dd>{}</dd></dl>\
                 <div class=\"actions\"><a class=\"button\" href=\"/ui/run?ip={id}\">Run on this agent</a>\
                 <a class=\"button secondary\" href=\"/ui/tasks?agent={id}\">All its tasks</a></div></div>\
                 <h2>Recent tasks</h2>{}",
                online_badge(is_online(&state, &agent, now)),
                esc(&agent.ip),
                html::time(agent.last_heartbeat_at, zone),
                html::ago(agent.last_heartbeat_at, now),
                agent.interval_ms,
                esc(&agent.version),
                esc(&agent.asset),
                if apps.is_empty() { "none".to_string() } else { apps.join(", ") },
                if labels.is_empty() { "none".to_string() } else { labels.join(", ") },
                task_table(&tasks.rows, zone, "No task has run on this agent yet."),
                id = esc(agent.id.as_str()),
            )
        }
    };
    ok_page(html::page(
        "Agent",
        Section::Agents,
        &signed.viewer(&state),
        &body,
    ))
}

// ---------------------------------------------------------------- tasks

/// `datetime-local` text (`2026-01-02T03:04`) in the center's zone, to unix ms.
fn parse_local_time(text: &str, zone: Tz) -> Option<u64> {
    use chrono::TimeZone as _;
    let text = text.trim();
    let naive = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S"))
        .ok()?;
    let at = zone.from_local_datetime(&naive).earliest()?;
    u64::try_from(at.timestamp_millis()).ok()
}

pub async fn tasks(req: HttpRequest, state: State, ui: Ui) -> HttpResponse {
    let signed = match signed_in(&req, &state, &ui) {
        Ok(signed) => signed,
        Err(answer) => return *answer,
    };
    let zone = state.config.cron.zone();
    let query = query_map(&req);
    let page = page_number(&query);
    let filter = TaskFilter {
        app: query.get("app").trim().to_string(),
        func: query.get("func").trim().to_string(),
        agent: query.get("agent").trim().to_string(),
        status: query.get("status").to_string(),
        task_type: query.get("type").to_string(),
        outcome: query.get("outcome").to_string(),
        since: parse_local_time(query.get("since"), zone),
        until: parse_local_time(query.get("until"), zone),
        only_apps: visible_apps(&state, &signed),
        auth_id: query.get("auth_id").trim().to_string(),
    };
    let store = state.store.clone();
    let read_filter = filter.clone();
    let rows =
        match blocking(move || store.dashboard_tasks(&read_filter, page * PAGE_SIZE, PAGE_SIZE))
            .await
        {
            Ok(rows) => rows,
            Err(err) => return failed(&state, &signed, Section::Tasks, &err.into()),
        };
    let mut body = format!(
        "<h1>Tasks</h1><form class=\"filters\" method=\"get\" action=\"/ui/tasks\">\
         <label>App<input name=\"app\" id=\"f-app\" value=\"{}\"></label>\
         <label>Func<input name=\"func\" id=\"f-func\" value=\"{}\"></label>\
         <label>Agent id<input name=\"agent\" id=\"f-agent\" value=\"{}\"></label>\
         <label>Auth id<input name=\"auth_id\" id=\"f-auth-id\" value=\"{}\"></label>\
         <label>Status{}</label><label>Type{}</label><label>Outcome{}</label>\
         <label>From ({zone})<input type=\"datetime-local\" name=\"since\" value=\"{}\"></label>\
         <label>To ({zone})<input type=\"datetime-local\" name=\"until\" value=\"{}\"></label>\
         <button type=\"submit\" id=\"filter\">Filter</button>\
         <a class=\"button secondary\" href=\"/ui/tasks\">Clear</a></form>",
        esc(&filter.app),
        esc(&filter.func),
        esc(&filter.agent),
        esc(&filter.auth_id),
        html::select(
            "status",
            &[
                ("", "any"),
                ("pendding", "pending"),
                ("execing", "running"),
                ("finish", "finished"),
                ("stoped", "stopped"),
                ("skipped", "skipped"),
            ],
            &filter.status
        ),
        html::select(
            "type",
            &[
                ("", "any"),
                ("rt", "rt"),
                ("queue", "queue (batches too)"),
                ("batch", "batch"),
                ("cron", "cron")
            ],
            &filter.task_type
        ),
        html::select(
            "outcome",
            &[("", "any"), ("ok", "ok"), ("failed", "failed")],
            &filter.outcome
        ),
        esc(query.get("since")),
        esc(query.get("until")),
    );
    body.push_str(&task_table(
        &rows.rows,
        zone,
        "No task matches. Clear the filters, or run one from the <a href=\"/ui/run\">Run</a> page.",
    ));
    let filters = format!(
        "app={}&func={}&agent={}&auth_id={}&status={}&type={}&outcome={}&since={}&until={}",
        url_part(&filter.app),
        url_part(&filter.func),
        url_part(&filter.agent),
        url_part(&filter.auth_id),
        url_part(&filter.status),
        url_part(&filter.task_type),
        url_part(&filter.outcome),
        url_part(query.get("since")),
        url_part(query.get("until")),
    );
    body.push_str(&html::pager("/ui/tasks", &filters, page, rows.has_more));
    ok_page(html::page(
        "Tasks",
        Section::Tasks,
        &signed.viewer(&state),
        &body,
    ))
}

/// The task `id` if it exists and the signed-in auth id holds its app.
pub(super) async fn visible_task(
    state: &ApiState,
    signed: &Signed,
    id: &str,
) -> Result<Option<TaskRow>, ApiError> {
    let Ok(id) = TaskId::parse(id) else {
        return Ok(None);
    };
    let store = state.store.clone();
    let task = blocking(move || store.get_task(&id)).await?;
    Ok(task
        .filter(|task| crate::api::access::require_app(state, &signed.caller, &task.app).is_ok()))
}

pub(super) fn pretty_json(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|value| serde_json::to_string_pretty(&value).ok())
        .unwrap_or_else(|| text.to_string())
}

pub async fn task(req: HttpRequest, path: web::Path<String>, state: State, ui: Ui) -> HttpResponse {
    let signed = match signed_in(&req, &state, &ui) {
        Ok(signed) => signed,
        Err(answer) => return *answer,
    };
    let id = path.into_inner();
    let task = match visible_task(&state, &signed, &id).await {
        Ok(task) => task,
        Err(err) => return failed(&state, &signed, Section::Tasks, &err),
    };
    let zone = state.config.cron.zone();
    let live = task.as_ref().is_some_and(super::live::is_live);
    let output = match &task {
        Some(task) => super::live::output_section(&state, task).await,
        None => String::new(),
    };
    let body = match task {
        None => format!(
            "<h1>Task not found</h1><div class=\"panel\"><p class=\"empty\">No task {} of an \
             app you hold. <a href=\"/ui/tasks\">Back to the tasks</a>.</p></div>",
            esc(&id)
        ),
        Some(task) => {
            let took = task
                .worker_costtime
                .map_or_else(|| "-".to_string(), |ms| format!("{ms} ms"));
            let result = match &task.worker_message {
                Some(message) => format!("<pre id=\"task-result\">{}</pre>", esc(message)),
                None if task.error.is_empty() => {
                    "<p class=\"muted\">No result yet.</p>".to_string()
                }
                None => String::new(),
            };
            let error = if task.error.is_empty() {
                String::new()
            } else {
                html::notice(false, &task.error)
            };
            let queue = task.queue_id.as_ref().map_or_else(
                || "-".to_string(),
                |queue| format!("<span class=\"mono\">{}</span>", esc(queue.as_str())),
            );
            format!(
                "<h1>Task <span class=\"mono\">{id}</span></h1><div class=\"panel\"><dl class=\"facts\">\
                 <dt>State</dt><dd id=\"task-state\">{}</dd><dt>Type</dt><dd>{}</dd>\
                 <dt>App.func</dt><dd>{}.{}</dd>\
                 <dt>Agent</dt><dd class=\"mono\"><a href=\"/ui/agents/{agent}\">{agent}</a></dd>\
                 <dt>Queue</dt><dd>{queue}</dd><dt>Mode</dt><dd>{}</dd><dt>Timeout</dt><dd>{} s</dd>\
                 <dt>Created</dt><dd>{}</dd><dt>Sent</dt><dd>{}</dd><dt>Finished</dt><dd>{}</dd>\
                 <dt>Took</dt><dd>{took}</dd></dl>\
                 <div class=\"actions\"><form method=\"post\" action=\"/ui/tasks/{id}/rerun\">{}\
                 <button type=\"submit\" id=\"rerun\">Re-run as it was</button></form>\
                 <a class=\"button secondary\" id=\"rerun-edit\" href=\"/ui/run?from={id}\">Edit and re-run</a></div></div>\
                 <h2>Parameters</h2><pre id=\"task-param\">{}</pre><h2>Result</h2>{error}{result}{output}",
                task_badge(&task),
                task.task_type,
                esc(&task.app),
                esc(&task.func),
                task.mode,
                task.timeout_s,
                html::time(task.created_at, zone),
                html::opt_time(task.dispatched_at, zone),
                html::opt_time(task.finished_at, zone),
                html::csrf_field(&signed.csrf),
                esc(&pretty_json(&task.param)),
                id = esc(task.id.as_str()),
                agent = esc(task.agent.as_str()),
            )
        }
    };
    super::html_page(
        StatusCode::OK,
        live,
        html::page("Task", Section::Tasks, &signed.viewer(&state), &body),
    )
}

// ---------------------------------------------------------------- run

/// What the run form holds.
#[derive(Debug, Clone, Default)]
struct RunFields {
    ip: String,
    app: String,
    func: String,
    param: String,
    timeout: String,
    mode: String,
}

fn run_page(
    state: &ApiState,
    signed: &Signed,
    fields: &RunFields,
    outcome: Option<&Result<Value, ApiError>>,
) -> String {
    let apps: Vec<String> = state
        .children
        .apps
        .read()
        .apps_of(&signed.session.auth_id)
        .into_iter()
        .map(|app| format!("<option value=\"{}\">", esc(&app.name)))
        .collect();
    let result = match outcome {
        None => String::new(),
        Some(Ok(value)) => {
            let id = value["id"].as_str().unwrap_or_default();
            let flag = value["worker_flag"].as_str().unwrap_or_default();
            let message = value["worker_message"].as_str().unwrap_or_default();
            let took = value["worker_costtime"].as_u64().unwrap_or(0);
            let tone = if flag == "1" { Tone::Ok } else { Tone::Bad };
            let word = if flag == "1" { "ok" } else { "failed" };
            format!(
                "<div class=\"panel\" id=\"run-result\"><h2>Result {}</h2><dl class=\"facts\">\
                 <dt>Task</dt><dd class=\"mono\"><a id=\"run-task\" href=\"/ui/tasks/{id}\">{id}</a></dd>\
                 <dt>Worker flag</dt><dd>{}</dd><dt>Took</dt><dd>{took} ms</dd></dl>\
                 <pre id=\"run-output\">{}</pre></div>",
                badge(tone, word),
                esc(flag),
                esc(message),
                id = esc(id),
            )
        }
        Some(Err(err)) => format!(
            "<div id=\"run-result\">{}</div>",
            html::notice(false, &format!("Not run: {err}"))
        ),
    };
    let timeout = if fields.timeout.is_empty() {
        state.config.rt.default_timeout_s.to_string()
    } else {
        fields.timeout.clone()
    };
    format!(
        "<h1>Run</h1>{result}<div class=\"panel\"><form class=\"stack\" method=\"post\" action=\"/ui/run\">{}\
         <label>Agent (ip or id)<input name=\"ip\" id=\"run-ip\" required value=\"{}\"></label>\
         <label>App<input name=\"app\" id=\"run-app\" list=\"apps\" required value=\"{}\"></label>\
         <datalist id=\"apps\">{}</datalist>\
         <label>Func<input name=\"func\" id=\"run-func\" required value=\"{}\"></label>\
         <label>Param (JSON, may be empty)<textarea name=\"param\" id=\"run-param\">{}</textarea></label>\
         <label>Timeout (s)<input name=\"timeout\" id=\"run-timeout\" type=\"number\" min=\"1\" value=\"{}\"></label>\
         <label>Mode{}</label>\
         <button type=\"submit\" id=\"run-submit\">Run now and wait for the result</button></form></div>",
        html::csrf_field(&signed.csrf),
        esc(&fields.ip),
        esc(&fields.app),
        apps.join(""),
        esc(&fields.func),
        esc(&fields.param),
        esc(&timeout),
        html::select("mode", &[("NP", "NP"), ("P", "P")], &fields.mode),
    )
}

pub async fn run_form(req: HttpRequest, state: State, ui: Ui) -> HttpResponse {
    let signed = match signed_in(&req, &state, &ui) {
        Ok(signed) => signed,
        Err(answer) => return *answer,
    };
    let query = query_map(&req);
    let mut fields = RunFields {
        ip: query.get("ip").to_string(),
        app: query.get("app").to_string(),
        func: query.get("func").to_string(),
        ..RunFields::default()
    };
    // "Edit and re-run": the form starts as the task was.
    if !query.get("from").is_empty() {
        match visible_task(&state, &signed, query.get("from")).await {
            Ok(Some(task)) => fields = fields_of(&task),
            Ok(None) => {}
            Err(err) => return failed(&state, &signed, Section::Run, &err),
        }
    }
    ok_page(html::page(
        "Run",
        Section::Run,
        &signed.viewer(&state),
        &run_page(&state, &signed, &fields, None),
    ))
}

fn fields_of(task: &TaskRow) -> RunFields {
    RunFields {
        ip: task.agent.to_string(),
        app: task.app.clone(),
        func: task.func.clone(),
        param: task.param.clone(),
        timeout: task.timeout_s.to_string(),
        mode: task.mode.to_string(),
    }
}

/// Runs `fields` as an RT call of the signed-in auth id: the API's own validation,
/// authorization and dispatch; audited as `action`.
async fn run_fields(
    state: &ApiState,
    signed: &Signed,
    fields: &RunFields,
    action: &str,
) -> Result<Value, ApiError> {
    let mut pairs = vec![
        ("ip".to_string(), fields.ip.trim().to_string()),
        ("app".to_string(), fields.app.trim().to_string()),
        ("func".to_string(), fields.func.trim().to_string()),
        ("param".to_string(), fields.param.trim().to_string()),
        ("mode".to_string(), fields.mode.clone()),
    ];
    if !fields.timeout.trim().is_empty() {
        pairs.push(("timeout".to_string(), fields.timeout.trim().to_string()));
    }
    let call = V2Call {
        params: Params::from_owned(pairs),
        caller: signed.caller.clone(),
    };
    let outcome = crate::api::rt::run_authenticated(&call, state).await;
    let task_id = outcome
        .as_ref()
        .ok()
        .and_then(|result| result["id"].as_str())
        .unwrap_or_default()
        .to_string();
    audit(
        state,
        &signed.caller,
        action,
        &task_id,
        Some(fields.ip.trim()),
        &outcome,
    );
    outcome
}

pub async fn run(req: HttpRequest, body: web::Bytes, state: State, ui: Ui) -> HttpResponse {
    let (signed, form) = match signed_post(&req, &body, &state, &ui) {
        Ok(signed) => signed,
        Err(answer) => return *answer,
    };
    let fields = RunFields {
        ip: form.get("ip").to_string(),
        app: form.get("app").to_string(),
        func: form.get("func").to_string(),
        param: form.get("param").to_string(),
        timeout: form.get("timeout").to_string(),
        mode: form.get("mode").to_string(),
    };
    let outcome = run_fields(&state, &signed, &fields, "ui/rt/exec").await;
    ok_page(html::page(
        "Run",
        Section::Run,
        &signed.viewer(&state),
        &run_page(&state, &signed, &fields, Some(&outcome)),
    ))
}

pub async fn rerun(
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
    let task = match visible_task(&state, &signed, &path.into_inner()).await {
        Ok(Some(task)) => task,
        Ok(None) => return redirect("/ui/tasks"),
        Err(err) => return failed(&state, &signed, Section::Tasks, &err),
    };
    let fields = fields_of(&task);
    let outcome = run_fields(&state, &signed, &fields, "ui/rerun").await;
    ok_page(html::page(
        "Run",
        Section::Run,
        &signed.viewer(&state),
        &run_page(&state, &signed, &fields, Some(&outcome)),
    ))
}

// ---------------------------------------------------------------- crons

fn cron_last_result(row: &CronRow) -> String {
    let Some(text) = &row.last_exec_result else {
        return "<span class=\"muted\">not run yet</span>".to_string();
    };
    let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let flag = value["result"]["worker_flag"].as_i64();
    match flag {
        Some(1) => badge(Tone::Ok, "ok"),
        Some(flag) => badge(Tone::Bad, &format!("failed ({flag})")),
        None => badge(Tone::Bad, value["error"].as_str().unwrap_or("no result")),
    }
}

async fn crons_page(
    state: &ApiState,
    signed: &Signed,
    page: u64,
    notice: Option<(bool, String)>,
) -> Result<String, ApiError> {
    let zone = state.config.cron.zone();
    let now = now_ms();
    let store = state.store.clone();
    let rows: Vec<CronRow> = blocking(move || store.list_crons())
        .await?
        .into_iter()
        .filter(|row| {
            crate::api::access::require_app(state, &signed.caller, &row.definition.app).is_ok()
        })
        .collect();
    let start = usize::try_from(page * PAGE_SIZE).unwrap_or(usize::MAX);
    let has_more = rows.len() > start.saturating_add(PAGE_SIZE as usize);
    let mut body = String::from(
        "<h1>Crons</h1><div class=\"actions\"><a class=\"button\" id=\"add-cron\" \
         href=\"/ui/crons/edit\">Add a cron</a></div>",
    );
    if let Some((ok, text)) = notice {
        body.push_str(&html::notice(ok, &text));
    }
    if !state.config.cron.enabled {
        body.push_str(&html::notice(
            false,
            "This center runs no cron component ([cron] enabled = false).",
        ));
    }
    if rows.is_empty() {
        body.push_str(
            "<div class=\"table-wrap\"><p class=\"empty\">No cron yet. Add one with the button \
             above, the <code>cron/add</code> call or a definition file in the cron directory.</p></div>",
        );
        return Ok(body);
    }
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/ui/crons\">{}<div class=\"actions\">\
         <button type=\"submit\" name=\"action\" value=\"pause\" id=\"pause\">Pause selected</button>\
         <button type=\"submit\" name=\"action\" value=\"resume\" id=\"resume\" class=\"secondary\">Resume selected</button></div>\
         <div class=\"table-wrap\"><table id=\"crons\"><thead><tr><th></th><th>Cron</th><th>State</th>\
         <th>Rule ({zone})</th><th>App.func</th><th class=\"hide-narrow\">Agent</th><th>Next firing</th>\
         <th class=\"hide-narrow\">Last firing</th><th>Last result</th><th></th></tr></thead><tbody>",
        html::csrf_field(&signed.csrf)
    );
    for row in rows.iter().skip(start).take(PAGE_SIZE as usize) {
        let next = if row.enabled {
            QuartzRule::parse(&row.definition.rule)
                .ok()
                .and_then(|rule| rule.next_after_ms(now, zone))
                .map_or_else(|| "never".to_string(), |next| html::time(next, zone))
        } else {
            "-".to_string()
        };
        // A file's cron is changed in its file.
        let edit = if row.source == crate::store::CronSource::Api {
            format!(
                "<a href=\"/ui/crons/edit?id={id}\" id=\"edit-{id}\">Edit</a>",
                id = esc(row.id.as_str())
            )
        } else {
            "<span class=\"muted\">from a file</span>".to_string()
        };
        let state_badge = if row.enabled {
            badge(Tone::Ok, "active")
        } else {
            badge(Tone::Idle, "paused")
        };
        let _ = write!(
            body,
            "<tr><td><input type=\"checkbox\" name=\"id\" value=\"{id}\" id=\"pick-{id}\" \
             aria-label=\"select cron {id}\"></td><td class=\"mono\">{id}</td>\
             <td class=\"cron-state\">{state_badge}</td><td class=\"mono\">{}</td><td>{}.{}</td>\
             <td class=\"mono hide-narrow\">{}</td><td>{next}</td><td class=\"hide-narrow\">{}</td><td>{}</td><td>{edit}</td></tr>",
            esc(&row.definition.rule),
            esc(&row.definition.app),
            esc(&row.definition.func),
            esc(&row.definition.ip),
            html::opt_time(row.last_fire_time, zone),
            cron_last_result(row),
            id = esc(row.id.as_str()),
        );
    }
    body.push_str("</tbody></table></div></form>");
    body.push_str(&html::pager("/ui/crons", "", page, has_more));
    Ok(body)
}

pub async fn crons(req: HttpRequest, state: State, ui: Ui) -> HttpResponse {
    let signed = match signed_in(&req, &state, &ui) {
        Ok(signed) => signed,
        Err(answer) => return *answer,
    };
    let page = page_number(&query_map(&req));
    match crons_page(&state, &signed, page, None).await {
        Ok(body) => ok_page(html::page(
            "Crons",
            Section::Crons,
            &signed.viewer(&state),
            &body,
        )),
        Err(err) => failed(&state, &signed, Section::Crons, &err),
    }
}

/// Pauses or resumes one cron as `cron/stop` and `cron/start` do.
async fn set_cron_enabled(
    state: &ApiState,
    signed: &Signed,
    id: &str,
    enabled: bool,
) -> Result<(), ApiError> {
    let id = TaskId::parse(id).map_err(|_| ApiError::BadCronId(format!("bad cron id {id:?}")))?;
    if !state.config.cron.enabled {
        return Err(ApiError::CronDisabled);
    }
    let store = state.store.clone();
    let target = id.clone();
    let row = blocking(move || store.get_cron(&target))
        .await?
        .ok_or_else(|| ApiError::CronNotFound(id.to_string()))?;
    crate::api::access::require_app(state, &signed.caller, &row.definition.app)?;
    let store = state.store.clone();
    let target = id.clone();
    let changed = blocking(move || store.set_cron_enabled(&target, enabled, now_ms()))
        .await
        .map_err(ApiError::from);
    if changed.is_ok() {
        state.children.cron.do_send(CronChanged(id.clone()));
    }
    let outcome = changed.as_ref().map(|_| Value::Null).map_err(Clone::clone);
    audit(
        state,
        &signed.caller,
        if enabled {
            "ui/cron/start"
        } else {
            "ui/cron/stop"
        },
        id.as_str(),
        Some(&row.definition.ip),
        &outcome,
    );
    changed.map(|_| ())
}

pub async fn crons_change(
    req: HttpRequest,
    body: web::Bytes,
    state: State,
    ui: Ui,
) -> HttpResponse {
    let (signed, form) = match signed_post(&req, &body, &state, &ui) {
        Ok(signed) => signed,
        Err(answer) => return *answer,
    };
    let enabled = match form.get("action") {
        "pause" => false,
        "resume" => true,
        other => {
            let notice = (false, format!("Unknown action {other:?}: pause or resume."));
            return crons_answer(&state, &signed, notice).await;
        }
    };
    let ids = form.all("id");
    let notice = if ids.is_empty() {
        (false, "Select at least one cron first.".to_string())
    } else {
        let mut errors = Vec::new();
        for id in &ids {
            if let Err(err) = set_cron_enabled(&state, &signed, id, enabled).await {
                errors.push(format!("{id}: {err}"));
            }
        }
        let verb = if enabled { "Resumed" } else { "Paused" };
        if errors.is_empty() {
            (true, format!("{verb} {} cron(s).", ids.len()))
        } else {
            (
                false,
                format!(
                    "{verb} {} of {} cron(s); refused: {}",
                    ids.len() - errors.len(),
                    ids.len(),
                    errors.join("; ")
                ),
            )
        }
    };
    crons_answer(&state, &signed, notice).await
}

pub(super) async fn crons_answer(
    state: &ApiState,
    signed: &Signed,
    notice: (bool, String),
) -> HttpResponse {
    match crons_page(state, signed, 0, Some(notice)).await {
        Ok(body) => ok_page(html::page(
            "Crons",
            Section::Crons,
            &signed.viewer(state),
            &body,
        )),
        Err(err) => failed(state, signed, Section::Crons, &err),
    }
}

// ---------------------------------------------------------------- admin

pub(super) fn not_admin(state: &ApiState, signed: &Signed) -> HttpResponse {
    respond_html(
        StatusCode::FORBIDDEN,
        html::page(
            "Refused",
            Section::Overview,
            &signed.viewer(state),
            &format!(
                "<h1>Refused</h1>{}",
                html::notice(false, "This page needs the admin role.")
            ),
        ),
    )
}

pub async fn admin(req: HttpRequest, state: State, ui: Ui) -> HttpResponse {
    let signed = match signed_in(&req, &state, &ui) {
        Ok(signed) => signed,
        Err(answer) => return *answer,
    };
    if !signed.is_admin {
        return not_admin(&state, &signed);
    }
    let page = page_number(&query_map(&req));
    admin_answer(&state, &signed, page, StatusCode::OK, None).await
}

/// The Admin page (the caller checked the role), `notice` above it.
pub(super) async fn admin_answer(
    state: &ApiState,
    signed: &Signed,
    page: u64,
    status: StatusCode,
    notice: Option<(bool, String)>,
) -> HttpResponse {
    let zone = state.config.cron.zone();
    let store = state.store.clone();
    let read = blocking(move || {
        Ok::<_, crate::store::StoreError>((
            store.list_auth_ids()?,
            store.dashboard_audit("", page * PAGE_SIZE, PAGE_SIZE)?,
        ))
    })
    .await;
    let (auth_ids, audit_page) = match read {
        Ok(read) => read,
        Err(err) => return failed(state, signed, Section::Admin, &err.into()),
    };
    let supervisor = state.children.apps.read().mode() == crate::config::AuthMode::Supervisor;
    let mut body = String::from("<h1>Admin</h1>");
    if let Some((ok, text)) = notice {
        body.push_str(&html::notice(ok, &text));
    }
    body.push_str("<h2>Auth ids</h2>");
    if !supervisor {
        body.push_str(&html::notice(
            true,
            "Simple mode: the one auth id of the configuration may do everything. Set \
             [auth] mode = \"supervisor\" for auth ids, roles, grants and bindings.",
        ));
    } else if auth_ids.is_empty() {
        body.push_str(
            "<div class=\"table-wrap\"><p class=\"empty\">No auth id besides the bootstrap \
             admin. Create one with <code>auth/create</code>.</p></div>",
        );
    } else {
        let _ = write!(
            body,
            "<div class=\"table-wrap\"><table id=\"auth-ids\"><thead><tr><th>Auth id</th><th>Role</th>\
             <th>Comment</th><th>Created</th><th>State</th><th></th></tr></thead><tbody>"
        );
        for row in &auth_ids {
            let (state_badge, action) = match row.revoked_at {
                Some(at) => (
                    badge(Tone::Idle, &format!("revoked {}", html::time(at, zone))),
                    String::new(),
                ),
                None => (
                    badge(Tone::Ok, "active"),
                    format!(
                        "<form method=\"post\" action=\"/ui/admin/revoke\">{}\
                         <input type=\"hidden\" name=\"id\" value=\"{}\">\
                         <button type=\"submit\" class=\"secondary\">Revoke</button></form>",
                        html::csrf_field(&signed.csrf),
                        esc(&row.auth_id)
                    ),
                ),
            };
            let role = match row.role {
                Role::Admin => "admin",
                _ => "user",
            };
            let _ = write!(
                body,
                "<tr><td class=\"mono\">{}</td><td>{role}</td><td>{}</td><td>{}</td><td>{state_badge}</td><td>{action}</td></tr>",
                esc(&row.auth_id),
                esc(&row.comment),
                html::time(row.created_at, zone),
            );
        }
        body.push_str("</tbody></table></div>");
    }
    if supervisor {
        body.push_str(&super::people::grants_section(state, signed, &auth_ids));
        body.push_str(&super::people::bindings_section(state, signed));
    }
    body.push_str("<h2>Audit log</h2>");
    if audit_page.rows.is_empty() {
        body.push_str("<div class=\"table-wrap\"><p class=\"empty\">Nothing audited yet: changes made through the API or this dashboard show here.</p></div>");
    } else {
        body.push_str(
            "<div class=\"table-wrap\"><table id=\"audit\"><thead><tr><th>At</th><th>Auth id</th>\
             <th>Action</th><th>Target</th><th class=\"hide-narrow\">Agent</th><th>Outcome</th></tr></thead><tbody>",
        );
        for row in &audit_page.rows {
            let entry = &row.entry;
            let outcome = if entry.outcome == "ok" {
                badge(Tone::Ok, "ok")
            } else {
                badge(Tone::Bad, &entry.outcome)
            };
            let _ = write!(
                body,
                "<tr><td>{}</td><td class=\"mono\">{}</td><td>{}</td><td class=\"mono\">{}</td>\
                 <td class=\"mono hide-narrow\">{}</td><td>{outcome}</td></tr>",
                html::time(entry.at, zone),
                esc(&entry.auth_id),
                esc(&entry.action),
                esc(&entry.target),
                esc(entry.agent.as_deref().unwrap_or("-")),
            );
        }
        body.push_str("</tbody></table></div>");
    }
    body.push_str(&html::pager("/ui/admin", "", page, audit_page.has_more));
    respond_html(
        status,
        html::page("Admin", Section::Admin, &signed.viewer(state), &body),
    )
}

/// Revokes an auth id, as `auth/revoke` does (admin, supervisor mode).
pub async fn admin_revoke(
    req: HttpRequest,
    body: web::Bytes,
    state: State,
    ui: Ui,
) -> HttpResponse {
    let (signed, form) = match signed_post(&req, &body, &state, &ui) {
        Ok(signed) => signed,
        Err(answer) => return *answer,
    };
    let target = form.get("id").to_string();
    if !signed.is_admin {
        let refused = Err(ApiError::Forbidden("admin role required".to_string()));
        audit(
            &state,
            &signed.caller,
            "ui/auth/revoke",
            &target,
            None,
            &refused,
        );
        return not_admin(&state, &signed);
    }
    let outcome = async {
        if !elves_shared::names::is_valid_name(&target) {
            return Err(ApiError::BadParam(format!("bad auth id {target:?}")));
        }
        crate::api::access::require_supervisor(&state, "auth/revoke")?;
        let store = state.store.clone();
        let id = target.clone();
        blocking(move || store.revoke_auth_id(&id, now_ms())).await?;
        state
            .children
            .app_store
            .send(crate::actors::app_store::Reload)
            .await
            .map_err(|err| ApiError::Internal(format!("app store: {err}")))?
            .map_err(|err| ApiError::Internal(format!("app store: {err}")))?;
        Ok(Value::Null)
    }
    .await;
    audit(
        &state,
        &signed.caller,
        "ui/auth/revoke",
        &target,
        None,
        &outcome,
    );
    match outcome {
        Ok(_) => redirect("/ui/admin"),
        Err(err) => respond_html(
            StatusCode::BAD_REQUEST,
            html::page(
                "Admin",
                Section::Admin,
                &signed.viewer(&state),
                &html::notice(false, &format!("Not revoked: {err}")),
            ),
        ),
    }
}
