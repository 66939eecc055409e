//! `ApiError` owns the v2 error codes: the only place a code is written, and the only place an
//! error becomes HTTP. Every v2 response is HTTP 200 with `{flag, error, result}`; the code is in
//! `error`. Results the center makes up itself (an undelivered task) take their text from here too.

use actix_web::{HttpResponse, ResponseError};
use elves_shared::wire::Envelope;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    MissingSignParams(String),
    UnknownAuthId(String),
    BadSignType(String),
    BadSignLength,
    SignMismatch,
    Forbidden(String),
    TimestampOutOfWindow(i64),
    TimestampNotNumber(String),
    BadIp(String),
    BadParam(String),
    BadApp(String),
    BadMode(String),
    BadQueueId(String),
    BadFunc(String),
    BadTimeout(String),
    BadCronRule(String),
    BadCronId(String),
    CronDisabled,
    CronNotFound(String),
    SupervisorDisabled(String),
    AuthIdNotFound(String),
    AppNotFound(String),
    PackageRefused(String),
    VersionConflict(String),
    AgentUnreachable(String),
    QueueNotFound(String),
    QueueStatus(String),
    StopFailed(String),
    DependencyNotFound(String),
    AgentNotFound(String),
    /// A target expression that does not parse (the message names the position).
    BadTarget(String),
    /// A bad rollout parameter: size, window, max_fail, wait_s or offline.
    BadRollout(String),
    BatchNotFound(String),
    BatchState(String),
    TaskNotFound(String),
    Internal(String),
    /// Another error about one part of a request (an element of a batch): same code, the
    /// message prefixed with where, e.g. `tasks[17]: `.
    Within {
        place: String,
        error: Box<ApiError>,
    },
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MissingSignParams(_) => "401.1",
            ApiError::UnknownAuthId(_) => "401.2",
            ApiError::BadSignType(_) => "401.3",
            ApiError::BadSignLength => "401.4",
            ApiError::SignMismatch => "401.5",
            ApiError::Forbidden(_) => "401.6",
            ApiError::TimestampOutOfWindow(_) => "401.7",
            ApiError::TimestampNotNumber(_) => "401.8",
            ApiError::BadIp(_) => "403.1",
            ApiError::BadParam(_) => "403.2",
            ApiError::BadApp(_) => "403.3",
            ApiError::BadMode(_) => "403.4",
            ApiError::BadQueueId(_) => "403.6",
            ApiError::BadFunc(_) => "403.7",
            ApiError::BadTimeout(_) => "403.8",
            ApiError::BadCronRule(_) => "403.5",
            ApiError::BadCronId(_) => "403.9",
            ApiError::CronDisabled => "402.2",
            ApiError::CronNotFound(_) => "411.1",
            ApiError::SupervisorDisabled(_) => "402.1",
            ApiError::AuthIdNotFound(_) => "413.1",
            ApiError::AppNotFound(_) => "413.2",
            ApiError::PackageRefused(_) => "415.1",
            ApiError::VersionConflict(_) => "415.2",
            ApiError::AgentUnreachable(_) => "410.1",
            ApiError::QueueNotFound(_) => "412.1",
            ApiError::QueueStatus(_) => "412.2",
            ApiError::StopFailed(_) => "412.3",
            ApiError::DependencyNotFound(_) => "412.4",
            ApiError::AgentNotFound(_) => "414.1",
            ApiError::BadTarget(_) => "403.10",
            ApiError::BadRollout(_) => "403.11",
            ApiError::BatchNotFound(_) => "416.1",
            ApiError::BatchState(_) => "416.2",
            ApiError::TaskNotFound(_) => "417.1",
            ApiError::Internal(_) => "500",
            ApiError::Within { error, .. } => error.code(),
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::MissingSignParams(missing) => format!("missing sign parameter {missing}"),
            ApiError::UnknownAuthId(auth_id) => format!("unknown auth id {auth_id}"),
            ApiError::BadSignType(given) => {
                format!("sign_type must be MD5 or HMAC-SHA256, got {given:?}")
            }
            ApiError::BadSignLength => "sign has the wrong length for its sign_type".to_string(),
            ApiError::SignMismatch => "sign does not match".to_string(),
            ApiError::Forbidden(what) => format!("auth id lacks permission: {what}"),
            ApiError::TimestampOutOfWindow(skew) => {
                format!("timestamp is {skew} s away from the center's clock")
            }
            ApiError::TimestampNotNumber(given) => format!("timestamp is not a number: {given:?}"),
            ApiError::BadIp(why)
            | ApiError::BadParam(why)
            | ApiError::BadApp(why)
            | ApiError::BadMode(why)
            | ApiError::BadQueueId(why)
            | ApiError::BadFunc(why)
            | ApiError::BadTimeout(why)
            | ApiError::BadCronRule(why)
            | ApiError::BadCronId(why) => why.clone(),
            ApiError::CronDisabled => {
                "the cron component is not enabled on this center".to_string()
            }
            ApiError::CronNotFound(cron_id) => format!("cron {cron_id} not found"),
            ApiError::SupervisorDisabled(what) => {
                format!("{what} needs the supervisor component (auth.mode = \"supervisor\")")
            }
            ApiError::AuthIdNotFound(auth_id) => format!("auth id {auth_id} not found"),
            ApiError::AppNotFound(why) => why.clone(),
            ApiError::PackageRefused(why) => format!("package refused: {why}"),
            ApiError::VersionConflict(why) => why.clone(),
            ApiError::AgentUnreachable(why)
            | ApiError::QueueStatus(why)
            | ApiError::StopFailed(why)
            | ApiError::DependencyNotFound(why) => why.clone(),
            ApiError::QueueNotFound(queue_id) => format!("queue {queue_id} not found"),
            ApiError::AgentNotFound(agent) => format!("unknown agent {agent}"),
            ApiError::BadTarget(why) | ApiError::BadRollout(why) | ApiError::BatchState(why) => {
                why.clone()
            }
            ApiError::BatchNotFound(batch_id) => format!("batch {batch_id} not found"),
            ApiError::TaskNotFound(task) => format!("task {task} not found"),
            ApiError::Internal(why) => format!("internal error: {why}"),
            ApiError::Within { place, error } => format!("{place}: {}", error.message()),
        }
    }

    /// This error, said of `place` (same code).
    pub fn within(self, place: impl Into<String>) -> ApiError {
        ApiError::Within {
            place: place.into(),
            error: Box::new(self),
        }
    }

    pub fn envelope(&self) -> Envelope<serde_json::Value> {
        Envelope::failure(self.code(), &self.message())
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(err: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match err {
            StoreError::QueueNotFound(queue_id) => ApiError::QueueNotFound(queue_id.to_string()),
            StoreError::QueueStatusDoesNotAllow { .. } => ApiError::QueueStatus(err.to_string()),
            StoreError::DependencyNotFound { .. } => ApiError::DependencyNotFound(err.to_string()),
            StoreError::CronNotFound(cron_id) => ApiError::CronNotFound(cron_id.to_string()),
            StoreError::CronDefinedInFile { .. } => ApiError::BadCronId(err.to_string()),
            StoreError::AppNotFound(_) | StoreError::AppVersionNotFound { .. } => {
                ApiError::AppNotFound(err.to_string())
            }
            StoreError::VersionConflict { .. } => ApiError::VersionConflict(err.to_string()),
            StoreError::AuthIdNotFound(auth_id) => ApiError::AuthIdNotFound(auth_id),
            StoreError::AuthIdExists(_) => ApiError::BadParam(err.to_string()),
            StoreError::BatchNotFound(batch_id) => ApiError::BatchNotFound(batch_id.to_string()),
            StoreError::BatchStateDoesNotAllow { .. } => ApiError::BatchState(err.to_string()),
            other if other.is_unavailable() => {
                ApiError::Internal(format!("database unavailable: {other}"))
            }
            other => ApiError::Internal(format!("store: {other}")),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]{}", self.code(), self.message())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> actix_web::http::StatusCode {
        actix_web::http::StatusCode::OK
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::Ok().json(self.envelope())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_carries_code_in_brackets() {
        let envelope = ApiError::AgentNotFound("10.0.0.7".into()).envelope();
        assert_eq!(envelope.flag, "false");
        assert_eq!(envelope.error, "[414.1]unknown agent 10.0.0.7");
    }

    #[test]
    fn an_error_within_a_part_keeps_its_code() {
        let text = ApiError::BadApp("bad app name \"x y\"".into())
            .within("tasks[3]")
            .to_string();
        assert_eq!(text, "[403.3]tasks[3]: bad app name \"x y\"");
    }

    #[test]
    fn internal_errors_have_a_short_reason() {
        let text = ApiError::Internal("bus unavailable".into()).to_string();
        assert_eq!(text, "[500]internal error: bus unavailable");
    }
}
