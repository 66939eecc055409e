//! Authorization (SPEC §5): may this caller use this app, on this agent, or act as an admin?
//! Every answer comes from the AppStore's in-memory registry, so it never waits on the
//! database. Simple mode allows everything to its one auth id.
//!
//! Authentication (is the signature right) is `request.rs`; this file assumes a verified caller.

use super::request::Caller;
use super::ApiState;
use crate::actors::app_store::Denied;
use crate::config::AuthMode;
use crate::error::ApiError;
use elves_shared::wire::AgentId;

fn refused(denied: Denied) -> ApiError {
    match denied {
        Denied::NotAdmin => ApiError::Forbidden("admin role required".to_string()),
        Denied::AppUnknown(app) => ApiError::AppNotFound(format!("app {app} not found")),
        Denied::AppNotHeld(app) => ApiError::Forbidden(format!("app {app} is not granted")),
        Denied::AppNotBound { app, agent } => {
            ApiError::Forbidden(format!("app {app} is not bound to agent {agent}"))
        }
    }
}

/// Admin operations: uploads, versions, bindings, auth ids (401.6 otherwise).
pub fn require_admin(state: &ApiState, caller: &Caller) -> Result<(), ApiError> {
    state
        .children
        .apps
        .read()
        .require_admin(&caller.auth_id)
        .map_err(refused)
}

/// The caller holds `app` (401.6), which the center knows in supervisor mode (413.2).
pub fn require_app(state: &ApiState, caller: &Caller, app: &str) -> Result<(), ApiError> {
    state
        .children
        .apps
        .read()
        .require_app(&caller.auth_id, app)
        .map_err(refused)
}

/// `app` may run on `agent` (401.6 otherwise).
pub fn require_bound(state: &ApiState, app: &str, agent: &AgentId) -> Result<(), ApiError> {
    state
        .children
        .apps
        .read()
        .require_bound(app, agent)
        .map_err(refused)
}

/// Both checks of a task: the caller holds the app and the app is bound to the agent.
pub fn require_task(
    state: &ApiState,
    caller: &Caller,
    app: &str,
    agent: &AgentId,
) -> Result<(), ApiError> {
    require_app(state, caller, app)?;
    require_bound(state, app, agent)
}

/// Operations that only exist in supervisor mode (auth ids, grants, bindings): 402.1.
pub fn require_supervisor(state: &ApiState, what: &str) -> Result<(), ApiError> {
    if state.children.apps.read().mode() == AuthMode::Supervisor {
        Ok(())
    } else {
        Err(ApiError::SupervisorDisabled(what.to_string()))
    }
}

/// The caller may send work to `agent`: in supervisor mode one of its apps is bound to it
/// (admins may use every agent). 401.6 otherwise.
pub fn require_agent(state: &ApiState, caller: &Caller, agent: &AgentId) -> Result<(), ApiError> {
    let snapshot = state.children.apps.read();
    if snapshot.role_of(&caller.auth_id) == Some(crate::store::Role::Admin) {
        return Ok(());
    }
    match snapshot.agents_of(&caller.auth_id) {
        Some(allowed) if !allowed.contains(agent.as_str()) => Err(ApiError::Forbidden(format!(
            "no app of this auth id is bound to agent {agent}"
        ))),
        _ => Ok(()),
    }
}
