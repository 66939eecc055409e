//! `/api/v2/queue/*`: queues of tasks with dependencies, run asynchronously; poll the result.
//! The handlers write the queue and its tasks; the TaskQueue actor dispatches and records.

use super::openapi;
use super::request::{self, Caller, Params};
use super::{audit, resolve_agent, respond, ApiState, V2Call};
use crate::actors::task_queue::{DispatchReady, StopQueue};
use crate::error::ApiError;
use crate::store::blocking::blocking;
use crate::store::{NewTask, ReplyAddress, TaskRow};
use actix_web::{web, HttpRequest, HttpResponse};
use elves_shared::time::now_unix_ms;
use elves_shared::wire::{AgentId, Mode, TaskId, TaskType};
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// Creates an empty queue for an app: `{id}`.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/queue/create",
    tag = "queue",
    params(openapi::AppParam),
    extensions(("x-error-codes" = json!(["403.3", "413.2"]))),
    responses((status = 200, description = "The v2 envelope", body = openapi::CreatedAnswer)),
)]
pub async fn create(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    let outcome = async {
        let call = V2Call::authenticate(&req, &body, &state)?;
        let app = request::app_name(&call.params)?;
        super::access::require_app(&state, &call.caller, &app)?;
        let queue_id = TaskId::random();
        let store = state.store.clone();
        let (id, auth_id) = (queue_id.clone(), call.caller.auth_id.clone());
        let created = blocking(move || store.create_queue(&id, &app, &auth_id, now_unix_ms()))
            .await
            .map_err(ApiError::from)
            .map(|()| json!({ "id": queue_id }));
        audit(
            &state,
            &call.caller,
            "queue/create",
            queue_id.as_str(),
            None,
            &created,
        );
        created
    }
    .await;
    respond(&state, "queue/create", outcome)
}

/// A task as the caller described it, validated but not yet stored.
pub struct TaskRequest {
    pub address: String,
    pub func: String,
    pub param: String,
    pub timeout_s: u32,
    pub proxy: String,
    pub mode: Mode,
}

impl TaskRequest {
    fn into_new_task(
        self,
        queue_id: &TaskId,
        agent: AgentId,
        app: &str,
        depend: Option<TaskId>,
    ) -> NewTask {
        NewTask {
            id: TaskId::random(),
            queue_id: Some(queue_id.clone()),
            task_type: TaskType::Queue,
            agent,
            app: app.to_string(),
            func: self.func,
            param: self.param,
            timeout_s: self.timeout_s,
            proxy: self.proxy,
            mode: self.mode,
            depend_task_id: depend,
            created_at: now_unix_ms(),
        }
    }
}

/// Adds a task to an uncommitted queue: `{id}`. `depend_task_id` makes it wait for that task.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/queue/addtask",
    tag = "queue",
    params(openapi::QueueIdParam, openapi::AgentParam, openapi::TaskSpec, ("depend_task_id" = Option<String>, Query, description = "A task of the same queue that must finish with worker_flag 1 first")),
    extensions(("x-error-codes" = json!(["403.6", "403.1", "403.2", "403.4", "403.7", "403.8", "412.4", "412.1", "412.2", "413.2", "414.1"]))),
    responses((status = 200, description = "The v2 envelope", body = openapi::CreatedAnswer)),
)]
pub async fn add_task(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    let outcome = async {
        let call = V2Call::authenticate(&req, &body, &state)?;
        let params = &call.params;
        // Table order (SPEC §11): 403.1 ip, 403.2 param and proxy, 403.4 mode, 403.6 queue_id,
        // 403.7 func, 403.8 timeout.
        let address = request::agent_address(params)?;
        let param = request::json_param(params)?;
        let proxy = request::proxy(params)?;
        let mode = request::mode(params)?;
        let queue_id = request::task_id(params, "queue_id", ApiError::BadQueueId)?;
        let func = request::func_name(params)?;
        let timeout_s = request::timeout_s(params, state.config.rt.default_timeout_s)?;
        let task = TaskRequest {
            address,
            func,
            param,
            timeout_s,
            proxy,
            mode,
        };
        let depend = match params.get_or_empty("depend_task_id") {
            "" => None,
            text => Some(TaskId::parse(text).map_err(|_| {
                ApiError::DependencyNotFound(format!("dependency task {text:?} not found"))
            })?),
        };
        let agent = match resolve_agent(&state, &task.address).await? {
            // An offline agent's durable queue keeps the instruction until it is back or expired.
            super::AgentStatus::Online(agent) | super::AgentStatus::Offline { agent, .. } => agent,
        };
        let store = state.store.clone();
        let lookup_id = queue_id.clone();
        let queue = blocking(move || store.get_queue(&lookup_id))
            .await?
            .ok_or_else(|| ApiError::QueueNotFound(queue_id.to_string()))?;
        super::access::require_task(&state, &call.caller, &queue.app, &agent)?;
        let new_task = task.into_new_task(&queue_id, agent.clone(), &queue.app, depend);
        let task_id = new_task.id.clone();
        let store = state.store.clone();
        let added = blocking(move || store.add_task(&new_task))
            .await
            .map_err(ApiError::from)
            .map(|()| json!({ "id": task_id }));
        audit(
            &state,
            &call.caller,
            "queue/addtask",
            queue_id.as_str(),
            Some(agent.as_str()),
            &added,
        );
        added
    }
    .await;
    respond(&state, "queue/addtask", outcome)
}

/// The most tasks one `queue/addtasks` call adds; more is refused (403.2), not cut.
pub const MAX_BATCH_TASKS: usize = 10_000;
/// The largest `queue/addtasks` request body: room for [`MAX_BATCH_TASKS`] form-encoded tasks
/// with params of about 2 KiB each. A larger body is refused (403.2) before it is read whole.
pub const MAX_BATCH_BODY_BYTES: usize = 32 * 1024 * 1024;

/// The fields a `tasks` element may have: those of `addtask` (whose values are strings; a
/// number is taken as its decimal text), plus `app` (optional, must be the queue's) and
/// `depends_on_index`.
const TASK_FIELDS: [&str; 9] = [
    "ip",
    "app",
    "func",
    "param",
    "timeout",
    "proxy",
    "mode",
    "depend_task_id",
    "depends_on_index",
];

/// What a task of a batch depends on.
enum BatchDependency {
    None,
    /// A task already in the queue (`depend_task_id`).
    Stored(TaskId),
    /// An earlier element of the same batch (`depends_on_index`).
    Earlier(usize),
}

/// One element of `tasks`, its parameters checked.
struct BatchTask {
    request: TaskRequest,
    app: Option<String>,
    dependency: BatchDependency,
}

/// `queue/addtasks`: `queue_id` and `tasks`, a JSON array of up to [`MAX_BATCH_TASKS`] tasks,
/// added in one transaction, all or none, answered with their ids in order. Errors name the
/// first bad element (`tasks[17]: …`) with the code `addtask` would give it. Checks run in
/// this order: the `tasks` text itself (403.2), `queue_id` (403.6), every element's
/// parameters in element order, each element's in table order as for `addtask` (403.x, then
/// 412.4 for a malformed dependency); then the queue (412.1) and the caller's hold on its app;
/// then per element in order: `app` is the queue's (403.3), the agent (414.1), the app is
/// bound to it (401.6); finally, in the transaction, the queue is open (412.2) and the
/// `depend_task_id`s are tasks of the queue (412.4). One audit row records the call.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/queue/addtasks",
    tag = "queue",
    params(openapi::QueueIdParam, ("tasks" = String, Query, description = "JSON array of task objects {ip, func, param, timeout, proxy, mode, app, depend_task_id | depends_on_index}; send it as a form body")),
    extensions(("x-error-codes" = json!(["403.2", "403.6", "403.1", "403.3", "403.4", "403.7", "403.8", "412.4", "412.1", "412.2", "413.2", "414.1"]))),
    responses((status = 200, description = "The v2 envelope", body = openapi::CreatedTasksAnswer)),
)]
pub async fn add_tasks(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<ApiState>,
) -> HttpResponse {
    let outcome = async {
        let body = read_body(payload, MAX_BATCH_BODY_BYTES).await?;
        let call = V2Call::authenticate(&req, &body, &state)?;
        let elements = batch_elements(&call.params)?;
        let queue_id = request::task_id(&call.params, "queue_id", ApiError::BadQueueId)?;
        let default_timeout_s = state.config.rt.default_timeout_s;
        let batch = elements
            .iter()
            .enumerate()
            .map(|(index, element)| {
                batch_task(index, element, default_timeout_s)
                    .map_err(|err| err.within(place(index)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let store = state.store.clone();
        let lookup_id = queue_id.clone();
        let queue = blocking(move || store.get_queue(&lookup_id))
            .await?
            .ok_or_else(|| ApiError::QueueNotFound(queue_id.to_string()))?;
        super::access::require_app(&state, &call.caller, &queue.app)?;
        let mut agents: HashMap<String, AgentId> = HashMap::new();
        let mut new_tasks: Vec<NewTask> = Vec::with_capacity(batch.len());
        // (element, task) of every `depend_task_id`: the store says which one it missed.
        let mut stored_dependencies: Vec<(usize, TaskId)> = Vec::new();
        for (index, task) in batch.into_iter().enumerate() {
            let within = |err: ApiError| err.within(place(index));
            if let Some(app) = task.app.as_deref().filter(|app| *app != queue.app) {
                return Err(within(ApiError::BadApp(format!(
                    "app {app} is not the app of queue {queue_id} ({})",
                    queue.app
                ))));
            }
            let agent = match agents.get(&task.request.address) {
                Some(agent) => agent.clone(),
                None => {
                    let agent = match resolve_agent(&state, &task.request.address)
                        .await
                        .map_err(within)?
                    {
                        // As for addtask: an offline agent's queue keeps the instruction.
                        super::AgentStatus::Online(agent)
                        | super::AgentStatus::Offline { agent, .. } => agent,
                    };
                    agents.insert(task.request.address.clone(), agent.clone());
                    agent
                }
            };
            super::access::require_bound(&state, &queue.app, &agent).map_err(within)?;
            let depend = match task.dependency {
                BatchDependency::None => None,
                BatchDependency::Stored(task_id) => {
                    stored_dependencies.push((index, task_id.clone()));
                    Some(task_id)
                }
                // `earlier` < `index`, so its task is already made.
                BatchDependency::Earlier(earlier) => {
                    new_tasks.get(earlier).map(|earlier| earlier.id.clone())
                }
            };
            new_tasks.push(
                task.request
                    .into_new_task(&queue_id, agent, &queue.app, depend),
            );
        }
        let ids: Vec<TaskId> = new_tasks.iter().map(|task| task.id.clone()).collect();
        let store = state.store.clone();
        let store_queue_id = queue_id.clone();
        let added = blocking(move || store.add_tasks(&store_queue_id, &new_tasks))
            .await
            .map_err(|err| name_failed_element(err, &stored_dependencies))
            .map(|()| json!({ "ids": ids }));
        audit(
            &state,
            &call.caller,
            "queue/addtasks",
            queue_id.as_str(),
            None,
            &added,
        );
        added
    }
    .await;
    respond(&state, "queue/addtasks", outcome)
}

fn place(index: usize) -> String {
    format!("tasks[{index}]")
}

/// Reads a request body of at most `limit` bytes; a larger one is 403.2 (an envelope, like
/// every v2 answer, rather than HTTP 413).
async fn read_body(mut payload: web::Payload, limit: usize) -> Result<web::Bytes, ApiError> {
    use futures::StreamExt as _;
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|err| ApiError::BadParam(format!("reading the request body: {err}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::BadParam(format!(
                "request body over {limit} bytes: send fewer tasks per call"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The `tasks` parameter: a JSON array of 1 to [`MAX_BATCH_TASKS`] elements (403.2 otherwise).
fn batch_elements(params: &Params) -> Result<Vec<Value>, ApiError> {
    let text = params
        .required("tasks")
        .ok_or_else(|| ApiError::BadParam("missing tasks (a JSON array of tasks)".to_string()))?;
    let elements: Vec<Value> = serde_json::from_str(text)
        .map_err(|err| ApiError::BadParam(format!("tasks is not a JSON array: {err}")))?;
    if elements.is_empty() {
        return Err(ApiError::BadParam("tasks is empty".to_string()));
    }
    if elements.len() > MAX_BATCH_TASKS {
        return Err(ApiError::BadParam(format!(
            "tasks has {} elements, more than the {MAX_BATCH_TASKS} of one call: split it",
            elements.len()
        )));
    }
    Ok(elements)
}

/// Checks one element with the rules and in the order of `addtask`.
fn batch_task(
    index: usize,
    element: &Value,
    default_timeout_s: u32,
) -> Result<BatchTask, ApiError> {
    let object = element
        .as_object()
        .ok_or_else(|| ApiError::BadParam("a task is a JSON object".to_string()))?;
    let mut pairs = Vec::with_capacity(object.len());
    let mut depends_on_index = None;
    for (key, value) in object {
        let Some(field) = TASK_FIELDS.iter().find(|field| *field == key) else {
            return Err(ApiError::BadParam(format!(
                "unknown field {key:?} (fields: {})",
                TASK_FIELDS.join(", ")
            )));
        };
        if *field == "depends_on_index" {
            depends_on_index = Some(value);
            continue;
        }
        let text = match value {
            Value::Null => continue,
            Value::String(text) => text.clone(),
            Value::Number(number) => number.to_string(),
            // `param` is JSON: any JSON value stands for its own (compact) text.
            other if *field == "param" => other.to_string(),
            _ => return Err(field_error(field, format!("{field} must be a string"))),
        };
        pairs.push((field.to_string(), text));
    }
    let params = Params::from_owned(pairs);
    // Table order (SPEC §11), as addtask (with app, which addtask takes from the queue).
    let address = request::agent_address(&params)?;
    let param = request::json_param(&params)?;
    let proxy = request::proxy(&params)?;
    let app = match params.required("app") {
        Some(_) => Some(request::app_name(&params)?),
        None => None,
    };
    let mode = request::mode(&params)?;
    let func = request::func_name(&params)?;
    let timeout_s = request::timeout_s(&params, default_timeout_s)?;
    let dependency = match (params.get_or_empty("depend_task_id"), depends_on_index) {
        ("", None) => BatchDependency::None,
        (text, None) => BatchDependency::Stored(TaskId::parse(text).map_err(|_| {
            ApiError::DependencyNotFound(format!("dependency task {text:?} not found"))
        })?),
        ("", Some(earlier)) => match earlier.as_u64().and_then(|n| usize::try_from(n).ok()) {
            Some(earlier) if earlier < index => BatchDependency::Earlier(earlier),
            _ => {
                return Err(ApiError::DependencyNotFound(format!(
                    "depends_on_index must be the index of an earlier task, got {earlier}"
                )))
            }
        },
        (_, Some(_)) => {
            return Err(ApiError::DependencyNotFound(
                "give depend_task_id or depends_on_index, not both".to_string(),
            ))
        }
    };
    Ok(BatchTask {
        request: TaskRequest {
            address,
            func,
            param,
            timeout_s,
            proxy,
            mode,
        },
        app,
        dependency,
    })
}

/// The error of a field given as neither a string nor a number, with that field's code.
fn field_error(field: &str, why: String) -> ApiError {
    match field {
        "ip" => ApiError::BadIp(why),
        "app" => ApiError::BadApp(why),
        "mode" => ApiError::BadMode(why),
        "func" => ApiError::BadFunc(why),
        "timeout" => ApiError::BadTimeout(why),
        "depend_task_id" => ApiError::DependencyNotFound(why),
        _ => ApiError::BadParam(why),
    }
}

/// A store refusal of a batch, naming the element it is about where there is one.
fn name_failed_element(
    err: crate::store::StoreError,
    stored_dependencies: &[(usize, TaskId)],
) -> ApiError {
    let index = match &err {
        crate::store::StoreError::DependencyNotFound { depend_task_id, .. } => stored_dependencies
            .iter()
            .find(|(_, task_id)| task_id == depend_task_id)
            .map(|(index, _)| *index),
        _ => None,
    };
    let err = ApiError::from(err);
    match index {
        Some(index) => err.within(place(index)),
        None => err,
    }
}

/// Starts a queue's tasks (those without a pending dependency at once).
#[utoipa::path(
    method(get, post),
    path = "/api/v2/queue/commit",
    tag = "queue",
    params(openapi::QueueIdParam),
    extensions(("x-error-codes" = json!(["403.6", "412.1", "412.2", "413.2"]))),
)]
pub async fn commit(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    let outcome = async {
        let call = V2Call::authenticate(&req, &body, &state)?;
        let queue_id = request::task_id(&call.params, "queue_id", ApiError::BadQueueId)?;
        authorize_queue(&state, &call.caller, &queue_id).await?;
        let committed = commit_queue(&state, &queue_id).await.map(|()| Value::Null);
        audit(
            &state,
            &call.caller,
            "queue/commit",
            queue_id.as_str(),
            None,
            &committed,
        );
        committed
    }
    .await;
    respond(&state, "queue/commit", outcome)
}

/// The caller holds the app of the queue (supervisor mode); an unknown queue is 412.1.
pub(crate) async fn authorize_queue(
    state: &ApiState,
    caller: &Caller,
    queue_id: &TaskId,
) -> Result<(), ApiError> {
    if state.children.apps.read().mode() == crate::config::AuthMode::Simple {
        return Ok(());
    }
    let store = state.store.clone();
    let id = queue_id.clone();
    let queue = blocking(move || store.get_queue(&id))
        .await?
        .ok_or_else(|| ApiError::QueueNotFound(queue_id.to_string()))?;
    super::access::require_app(state, caller, &queue.app)
}

async fn commit_queue(state: &ApiState, queue_id: &TaskId) -> Result<(), ApiError> {
    let store = state.store.clone();
    let id = queue_id.clone();
    blocking(move || store.commit_queue(&id, now_unix_ms())).await?;
    state.children.task_queue.do_send(DispatchReady);
    Ok(())
}

/// Stops a queue: running tasks are cancelled; answers `{task_id: status}` after the stop.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/queue/stop",
    tag = "queue",
    params(openapi::QueueIdParam),
    extensions(("x-error-codes" = json!(["403.6", "412.1", "412.3", "413.2"]))),
)]
pub async fn stop(req: HttpRequest, body: web::Bytes, state: web::Data<ApiState>) -> HttpResponse {
    let outcome = async {
        let call = V2Call::authenticate(&req, &body, &state)?;
        let queue_id = request::task_id(&call.params, "queue_id", ApiError::BadQueueId)?;
        authorize_queue(&state, &call.caller, &queue_id).await?;
        let stopped = stop_queue(&state, &queue_id).await;
        audit(
            &state,
            &call.caller,
            "queue/stop",
            queue_id.as_str(),
            None,
            &stopped,
        );
        stopped
    }
    .await;
    respond(&state, "queue/stop", outcome)
}

/// Stops an authorized queue (its pending tasks become `stoped`): the statuses of its tasks
/// afterwards. The dashboard's stop runs this too.
pub(crate) async fn stop_queue(state: &ApiState, queue_id: &TaskId) -> Result<Value, ApiError> {
    state
        .children
        .task_queue
        .send(StopQueue {
            queue_id: queue_id.clone(),
        })
        .await
        .map_err(|err| ApiError::StopFailed(format!("queue actor unavailable: {err}")))??;
    let tasks = queue_tasks(state, queue_id).await?;
    let statuses: Map<String, Value> = tasks
        .iter()
        .map(|task| (task.id.to_string(), json!(task.status.as_str())))
        .collect();
    Ok(Value::Object(statuses))
}

async fn queue_tasks(state: &ApiState, queue_id: &TaskId) -> Result<Vec<TaskRow>, ApiError> {
    let store = state.store.clone();
    let id = queue_id.clone();
    let tasks = blocking(move || {
        if store.get_queue(&id)?.is_none() {
            return Err(crate::store::StoreError::QueueNotFound(id));
        }
        store.queue_tasks(&id)
    })
    .await?;
    Ok(tasks)
}

/// A queue's tasks: `{task_id: {id, status, depend_task_id, flag, error, worker_flag,
/// worker_message, worker_costtime}}`; status `pendding`, `execing`, `finish`, `stoped` or `skipped`.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/queue/result",
    tag = "queue",
    params(openapi::QueueIdParam),
    extensions(("x-error-codes" = json!(["403.6", "412.1", "413.2"]))),
    responses((status = 200, description = "The v2 envelope", body = openapi::QueueResultAnswer)),
)]
pub async fn result(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    let outcome = async {
        let call = V2Call::authenticate(&req, &body, &state)?;
        let queue_id = request::task_id(&call.params, "queue_id", ApiError::BadQueueId)?;
        authorize_queue(&state, &call.caller, &queue_id).await?;
        let tasks = queue_tasks(&state, &queue_id).await?;
        let results: Map<String, Value> = tasks
            .iter()
            .map(|task| (task.id.to_string(), task_result(task)))
            .collect();
        Ok(Value::Object(results))
    }
    .await;
    respond(&state, "queue/result", outcome)
}

/// One task in the original result shape: a task without a result shows empty strings and 0.
pub fn task_result(task: &TaskRow) -> Value {
    json!({
        "id": task.id,
        "status": task.status.as_str(),
        "depend_task_id": task.depend_task_id.as_ref().map(TaskId::to_string).unwrap_or_default(),
        "flag": task.flag,
        "error": task.error,
        "worker_flag": task.worker_flag.map(|flag| flag.to_string()).unwrap_or_default(),
        "worker_message": task.worker_message.clone().unwrap_or_default(),
        "worker_costtime": task.worker_costtime.unwrap_or(0),
    })
}

/// A one-task queue, committed at once: `{id, task_id}`.
#[utoipa::path(
    method(get, post),
    path = "/api/v2/queue/qksqueue",
    tag = "queue",
    params(openapi::AgentParam, openapi::AppParam, openapi::TaskSpec),
    extensions(("x-error-codes" = json!(["403.1", "403.2", "403.3", "403.4", "403.7", "403.8", "413.2", "414.1"]))),
    responses((status = 200, description = "The v2 envelope", body = openapi::QuickQueueAnswer)),
)]
pub async fn quick_queue(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    let outcome = async {
        let call = V2Call::authenticate(&req, &body, &state)?;
        let (queue_id, task_id) =
            run_single_task_queue(&state, &call.caller, &call.params, None).await?;
        Ok(json!({ "id": queue_id, "task_id": task_id }))
    }
    .await;
    respond(&state, "queue/qksqueue", outcome)
}

/// A one-task queue, committed at once: `qksqueue` and bus submissions. A submission's
/// `reply` address is stored with the task, so the reply survives a center restart.
pub async fn run_single_task_queue(
    state: &ApiState,
    caller: &Caller,
    params: &Params,
    reply: Option<ReplyAddress>,
) -> Result<(TaskId, TaskId), ApiError> {
    let outcome = async {
        // Table order (SPEC §11): 403.1 ip, 403.2 param and proxy, 403.3 app, 403.4 mode,
        // 403.7 func, 403.8 timeout.
        let address = request::agent_address(params)?;
        let param = request::json_param(params)?;
        let proxy = request::proxy(params)?;
        let app = request::app_name(params)?;
        let mode = request::mode(params)?;
        let func = request::func_name(params)?;
        let timeout_s = request::timeout_s(params, state.config.rt.default_timeout_s)?;
        let task = TaskRequest {
            address,
            func,
            param,
            timeout_s,
            proxy,
            mode,
        };
        super::access::require_app(state, caller, &app)?;
        let agent = match resolve_agent(state, &task.address).await? {
            super::AgentStatus::Online(agent) | super::AgentStatus::Offline { agent, .. } => agent,
        };
        super::access::require_bound(state, &app, &agent)?;
        let queue_id = TaskId::random();
        let new_task = task.into_new_task(&queue_id, agent.clone(), &app, None);
        let task_id = new_task.id.clone();
        let store = state.store.clone();
        let (id, auth_id) = (queue_id.clone(), caller.auth_id.clone());
        let reply_task_id = task_id.clone();
        blocking(move || {
            let now = now_unix_ms();
            store.create_queue(&id, &app, &auth_id, now)?;
            store.add_task(&new_task)?;
            // Before the commit, so that the task cannot be settled before its reply is owed.
            match reply {
                Some(address) => store.save_submit_reply(&reply_task_id, &address, now),
                None => Ok(()),
            }
        })
        .await?;
        commit_queue(state, &queue_id).await?;
        Ok((queue_id, task_id, agent))
    }
    .await;
    let logged = outcome
        .as_ref()
        .map(|(queue_id, task_id, _)| json!({ "id": queue_id, "task_id": task_id }))
        .map_err(Clone::clone);
    let agent = outcome.as_ref().ok().map(|(_, _, agent)| agent.to_string());
    audit(
        state,
        caller,
        "queue/qksqueue",
        "",
        agent.as_deref(),
        &logged,
    );
    outcome.map(|(queue_id, task_id, _)| (queue_id, task_id))
}
