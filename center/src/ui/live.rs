//! A task's output on its page: followed live while the task runs (`live.js` reading the
//! session-authenticated event stream below, the same stream as `task/follow`), and read from
//! the database once it has ended.

use super::html::esc;
use super::pages::{State, Ui};
use super::signed_in;
use crate::api::request::Params;
use crate::api::{ApiState, V2Call};
use crate::store::blocking::blocking;
use crate::store::{TaskRow, TaskStatus};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use elves_shared::wire::OutputStream;

const SCRIPT: &str = include_str!("assets/live.js");

/// The most stored output a finished task's page shows per stream (bytes); the API's
/// `task/output` pages through the rest.
const SHOWN_BYTES: usize = 256 * 1024;

pub async fn script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "max-age=300"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(SCRIPT)
}

/// Whether the task may still write output: its page follows it live.
pub(super) fn is_live(task: &TaskRow) -> bool {
    matches!(task.status, TaskStatus::Pending | TaskStatus::Executing)
}

/// The task page's output section: the live view of a running task, or the stored output of
/// an ended one.
pub(super) async fn output_section(state: &ApiState, task: &TaskRow) -> String {
    if is_live(task) {
        return format!(
            "<h2>Output</h2><pre class=\"live\" id=\"live-output\" data-follow=\"/ui/tasks/{}/follow\"></pre>\
             <p class=\"muted\" id=\"live-state\">The task is running: its output shows here as \
             it is written.</p><script src=\"/ui/live.js\"></script>",
            esc(task.id.as_str())
        );
    }
    let store = state.store.clone();
    let id = task.id.clone();
    let read = blocking(move || {
        Ok::<_, crate::store::StoreError>((
            store.read_output(&id, OutputStream::Stdout, 0, SHOWN_BYTES)?,
            store.read_output(&id, OutputStream::Stderr, 0, SHOWN_BYTES)?,
        ))
    })
    .await;
    let (stdout, stderr) = match read {
        Ok(read) => read,
        Err(err) => {
            return format!(
                "<h2>Output</h2><p class=\"muted\">The output could not be read: {}</p>",
                esc(&err.to_string())
            )
        }
    };
    if stdout.data.is_empty() && stderr.data.is_empty() {
        return "<h2>Output</h2><p class=\"muted\" id=\"task-output-none\">No output was \
                stored for this task (it printed nothing besides its result, or its output has \
                passed the retention time).</p>"
            .to_string();
    }
    let mut out = String::from("<h2>Output</h2>");
    for (name, read) in [("stdout", &stdout), ("stderr", &stderr)] {
        if read.data.is_empty() {
            continue;
        }
        let more = if read.data.len() < SHOWN_BYTES {
            ""
        } else {
            " <span class=\"muted\">(first 256 KiB; task/output has the rest)</span>"
        };
        out.push_str(&format!(
            "<h3>{name}{more}</h3><pre id=\"task-{name}\">{}</pre>",
            esc(&String::from_utf8_lossy(&read.data))
        ));
    }
    out
}

/// `GET /ui/tasks/<id>/follow`: the task's stdout as server-sent events, authorized by the
/// session as `task/follow` is by a signature.
pub async fn follow(
    req: HttpRequest,
    path: web::Path<String>,
    state: State,
    ui: Ui,
) -> HttpResponse {
    let signed = match signed_in(&req, &state, &ui) {
        Ok(signed) => signed,
        Err(_) => return HttpResponse::Unauthorized().finish(),
    };
    let resume_from = req
        .headers()
        .get("Last-Event-ID")
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.trim().parse::<u64>().ok());
    let call = V2Call {
        params: Params::from_owned(vec![
            ("id".to_string(), path.into_inner()),
            ("stream".to_string(), "stdout".to_string()),
        ]),
        caller: signed.caller,
    };
    crate::api::task::follow_call(&call, resume_from, state).await
}
