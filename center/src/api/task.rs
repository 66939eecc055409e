//! `task/output`, `task/follow` and `task/result` (SPEC §12): a task's live output and its
//! result, for any task type, authorized as for the task's app. Reads only: nothing is audited.

use super::openapi;
use super::{respond, ApiState, V2Call};
use crate::error::ApiError;
use crate::store::blocking::blocking;
use crate::store::{OutputRead, TaskRow, TaskStatus};
use actix_web::{web, HttpRequest, HttpResponse};
use elves_shared::time::now_unix_ms;
use elves_shared::wire::{OutputStream, TaskId};
use serde_json::{json, Value};
use std::time::Duration;

/// The most output one `task/output` answer or one `chunk` event carries (bytes).
const READ_BYTES: usize = 256 * 1024;
/// A follower looks again this often for output another center stored.
const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// A comment line goes out after this much silence, so that proxies keep the stream open.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Once a task has ended, how long its last output may still be on its way. Output the agent
/// never sent (a task that never ran, an agent from before live output) ends a follow then.
const LAST_OUTPUT_GRACE_MS: u64 = 3_000;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v2/task/output", web::route().to(output))
        .route("/api/v2/task/follow", web::route().to(follow))
        .route("/api/v2/task/result", web::route().to(result));
}

/// What a task's stream is asked for.
struct StreamRequest {
    task: TaskRow,
    stream: OutputStream,
    offset: u64,
}

async fn stream_request(
    call: &V2Call,
    state: &ApiState,
    resume_from: Option<u64>,
) -> Result<StreamRequest, ApiError> {
    let task = authorized_task(call, state).await?;
    let stream = match call.params.get_or_empty("stream") {
        "" => OutputStream::Stdout,
        text => OutputStream::parse(text).ok_or_else(|| {
            ApiError::BadParam(format!("stream must be stdout or stderr, got {text:?}"))
        })?,
    };
    let offset = match (resume_from, call.params.get_or_empty("offset")) {
        (Some(offset), _) => offset,
        (None, "") => 0,
        (None, text) => text
            .parse::<u64>()
            .ok()
            .filter(|_| text.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| {
                ApiError::BadParam(format!(
                    "offset must be a whole number of bytes, got {text:?}"
                ))
            })?,
    };
    Ok(StreamRequest {
        task,
        stream,
        offset,
    })
}

/// The task named by `id`, if the caller may see its app: 417.1 when there is none.
async fn authorized_task(call: &V2Call, state: &ApiState) -> Result<TaskRow, ApiError> {
    let text = call.params.get_or_empty("id");
    let id = TaskId::parse(text).map_err(|_| {
        ApiError::BadParam(format!(
            "id must be 16 lowercase hex characters, got {text:?}"
        ))
    })?;
    let store = state.store.clone();
    let wanted = id.clone();
    let task = blocking(move || store.get_task(&wanted))
        .await?
        .ok_or_else(|| ApiError::TaskNotFound(id.to_string()))?;
    super::access::require_app(state, &call.caller, &task.app)?;
    Ok(task)
}

async fn read(
    state: &ApiState,
    request: &StreamRequest,
    offset: u64,
) -> Result<OutputRead, ApiError> {
    let store = state.store.clone();
    let (task, stream) = (request.task.id.clone(), request.stream);
    let mut read = blocking(move || store.read_output(&task, stream, offset, READ_BYTES)).await?;
    if !read.eof {
        // A character cut between two chunks waits for the rest, rather than showing up as two
        // replacement characters.
        let cut = incomplete_utf8_tail(&read.data);
        read.data.truncate(read.data.len() - cut);
        read.next -= cut as u64;
    }
    Ok(read)
}

/// Bytes at the end of `data` that start a UTF-8 character without finishing it.
fn incomplete_utf8_tail(data: &[u8]) -> usize {
    for back in 1..=data.len().min(3) {
        let byte = data[data.len() - back];
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue;
        }
        let width = match byte {
            0b1100_0000..=0b1101_1111 => 2,
            0b1110_0000..=0b1110_1111 => 3,
            0b1111_0000..=0b1111_0111 => 4,
            _ => return 0,
        };
        return if width > back { back } else { 0 };
    }
    0
}

fn is_ended(task: &TaskRow) -> bool {
    !matches!(task.status, TaskStatus::Pending | TaskStatus::Executing)
}

/// A task's state in SPEC §12 words.
fn state_of(task: &TaskRow) -> &'static str {
    match task.status {
        TaskStatus::Pending => "pending",
        TaskStatus::Executing => "running",
        TaskStatus::Finished => "finished",
        TaskStatus::Stopped => "stopped",
        TaskStatus::Skipped => "skipped",
    }
}

/// One read of a task's stdout or stderr: `{offset, data, next, ended, truncated}`.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/task/output",
    tag = "task",
    params(openapi::IdParam, ("stream" = Option<String>, Query, description = "stdout (default) or stderr"), ("offset" = Option<u64>, Query, description = "Byte offset to read from")),
    extensions(("x-error-codes" = json!(["403.2", "417.1", "413.2"]))),
    responses((status = 200, description = "The v2 envelope", body = openapi::OutputAnswer)),
)]
async fn output(req: HttpRequest, body: web::Bytes, state: web::Data<ApiState>) -> HttpResponse {
    let outcome = async {
        let call = V2Call::authenticate(&req, &body, &state)?;
        let request = stream_request(&call, &state, None).await?;
        let read = read(&state, &request, request.offset).await?;
        Ok(json!({
            "offset": request.offset,
            "data": String::from_utf8_lossy(&read.data),
            "next": read.next,
            "ended": is_ended(&request.task),
            "truncated": read.truncated,
        }))
    }
    .await;
    respond(&state, "task/output", outcome)
}

/// A task's result: `{id, state, flag, error, worker_flag, worker_message, worker_costtime,
/// truncated}`; state `pending`, `running`, `finished`, `stopped` or `skipped`.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/task/result",
    tag = "task",
    params(openapi::IdParam),
    extensions(("x-error-codes" = json!(["403.2", "417.1", "413.2"]))),
    responses((status = 200, description = "The v2 envelope", body = openapi::TaskResultAnswer)),
)]
async fn result(req: HttpRequest, body: web::Bytes, state: web::Data<ApiState>) -> HttpResponse {
    let outcome = async {
        let call = V2Call::authenticate(&req, &body, &state)?;
        let task = authorized_task(&call, &state).await?;
        let store = state.store.clone();
        let id = task.id.clone();
        let truncated = blocking(move || store.output_truncated(&id)).await?;
        Ok(result_of(&task, truncated))
    }
    .await;
    respond(&state, "task/result", outcome)
}

/// An RT result's fields, plus `state`; empty strings and 0 while there is no result.
fn result_of(task: &TaskRow, truncated: bool) -> Value {
    json!({
        "id": task.id,
        "state": state_of(task),
        "flag": task.flag,
        "error": task.error,
        "worker_flag": task.worker_flag.map(|flag| flag.to_string()).unwrap_or_default(),
        "worker_message": task.worker_message.clone().unwrap_or_default(),
        "worker_costtime": task.worker_costtime.unwrap_or(0),
        "truncated": truncated,
    })
}

/// Server-sent events: `chunk` events from the offset (or `Last-Event-ID`), live ones as they
/// are stored, then `end`. Every event's `id` is the offset to resume from.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/task/follow",
    tag = "task",
    params(openapi::IdParam, ("stream" = Option<String>, Query, description = "stdout (default) or stderr"), ("offset" = Option<u64>, Query, description = "Byte offset to start from (or the Last-Event-ID header)")),
    extensions(("x-error-codes" = json!(["403.2", "417.1", "413.2"]))),
    responses((status = 200, description = "text/event-stream: `chunk` events {offset, data}, then one `end` event {state, worker_flag, worker_costtime, truncated}, or an `error` event with the envelope; each event id is the offset to resume from. A refused call answers the envelope (application/json) instead.", content_type = "text/event-stream")),
)]
async fn follow(req: HttpRequest, body: web::Bytes, state: web::Data<ApiState>) -> HttpResponse {
    let resume_from = req
        .headers()
        .get("Last-Event-ID")
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.trim().parse::<u64>().ok());
    let call = match V2Call::authenticate(&req, &body, &state) {
        Ok(call) => call,
        Err(err) => return respond(&state, "task/follow", Err(err)),
    };
    follow_call(&call, resume_from, state).await
}

/// The event stream of an authenticated follow (`id`, `stream`, `offset` in `call`'s
/// parameters): `task/follow`, and the dashboard's live output under its session.
pub(crate) async fn follow_call(
    call: &V2Call,
    resume_from: Option<u64>,
    state: web::Data<ApiState>,
) -> HttpResponse {
    let started = stream_request(call, &state, resume_from).await;
    let request = match started {
        Ok(request) => request,
        Err(err) => return respond(&state, "task/follow", Err(err)),
    };
    state.metrics.record_call("task/follow", "ok");
    let follower = Follower {
        next: request.offset,
        request,
        state: state.clone(),
        truncated: false,
        done: false,
    };
    let events = futures::stream::unfold(follower, |mut follower| async move {
        let event = follower.next_event().await?;
        Some((Ok::<_, actix_web::Error>(web::Bytes::from(event)), follower))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(events)
}

struct Follower {
    request: StreamRequest,
    state: web::Data<ApiState>,
    next: u64,
    truncated: bool,
    done: bool,
}

impl Follower {
    /// The next event to send, waiting for one; `None` after `end` (or an error event).
    async fn next_event(&mut self) -> Option<String> {
        if self.done {
            return None;
        }
        let silent_since = tokio::time::Instant::now();
        loop {
            // Asked for before reading, so that output stored during the read still wakes us.
            let signal = self.state.children.output_stored.clone();
            let stored = signal.notified();
            let read = match read(&self.state, &self.request, self.next).await {
                Ok(read) => read,
                Err(err) => return Some(self.fail(&err)),
            };
            self.truncated |= read.truncated;
            if !read.data.is_empty() {
                let offset = self.next;
                self.next = read.next;
                let chunk =
                    json!({ "offset": offset, "data": String::from_utf8_lossy(&read.data) });
                return Some(sse("chunk", self.next, &chunk));
            }
            self.next = read.next;
            let task = match self.reload_task().await {
                Ok(task) => task,
                Err(err) => return Some(self.fail(&err)),
            };
            if is_ended(&task) {
                let ended_ago = now_unix_ms().saturating_sub(task.finished_at.unwrap_or(0));
                // The agent's last output message ends every stream it wrote to.
                if read.eof || read.task_eof || ended_ago >= LAST_OUTPUT_GRACE_MS {
                    self.done = true;
                    let end = json!({
                        "state": state_of(&task),
                        "worker_flag": task.worker_flag.map(|flag| flag.to_string()).unwrap_or_default(),
                        "worker_costtime": task.worker_costtime.unwrap_or(0),
                        "truncated": self.truncated,
                    });
                    return Some(sse("end", self.next, &end));
                }
            }
            tokio::select! {
                () = stored => {}
                () = tokio::time::sleep(FOLLOW_POLL) => {}
            }
            if silent_since.elapsed() >= KEEPALIVE {
                return Some(": keepalive\n\n".to_string());
            }
        }
    }

    async fn reload_task(&self) -> Result<TaskRow, ApiError> {
        let store = self.state.store.clone();
        let id = self.request.task.id.clone();
        blocking(move || store.get_task(&id))
            .await?
            .ok_or_else(|| ApiError::TaskNotFound(self.request.task.id.to_string()))
    }

    fn fail(&mut self, err: &ApiError) -> String {
        self.done = true;
        let envelope = serde_json::to_value(err.envelope()).unwrap_or(Value::Null);
        sse("error", self.next, &envelope)
    }
}

fn sse(event: &str, id: u64, data: &Value) -> String {
    format!("id: {id}\nevent: {event}\ndata: {data}\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_cut_at_the_end_is_held_back() {
        let text = "é€😀".as_bytes();
        assert_eq!(incomplete_utf8_tail(text), 0);
        assert_eq!(incomplete_utf8_tail(&text[..text.len() - 1]), 3);
        assert_eq!(incomplete_utf8_tail(&text[..3]), 1);
        assert_eq!(incomplete_utf8_tail(b"plain"), 0);
        assert_eq!(incomplete_utf8_tail(&[0xff]), 0);
    }
}
