//! `/api/v2/queue/*`: queues of tasks with dependencies, run asynchronously; poll the result.
//! The handlers write the queue and its tasks; the TaskQueue actor dispatches and records.

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
async fn authorize_queue(
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

pub async fn stop(req: HttpRequest, body: web::Bytes, state: web::Data<ApiState>) -> HttpResponse {
    let outcome = async {
        let call = V2Call::authenticate(&req, &body, &state)?;
        let queue_id = request::task_id(&call.params, "queue_id", ApiError::BadQueueId)?;
        authorize_queue(&state, &call.caller, &queue_id).await?;
        let stopped = async {
            state
                .children
                .task_queue
                .send(StopQueue {
                    queue_id: queue_id.clone(),
                })
                .await
                .map_err(|err| ApiError::StopFailed(format!("queue actor unavailable: {err}")))??;
            let tasks = queue_tasks(&state, &queue_id).await?;
            let statuses: Map<String, Value> = tasks
                .iter()
                .map(|task| (task.id.to_string(), json!(task.status.as_str())))
                .collect();
            Ok(Value::Object(statuses))
        }
        .await;
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
