//! Id newtypes. Task ids are 16 lowercase hex characters; agent ids are plain names.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("id must be 16 lowercase hex characters, got {0:?}")]
    BadTaskId(String),
    #[error("agent id must match [A-Za-z0-9_][A-Za-z0-9_.:-]{{0,127}}, got {0:?}")]
    BadAgentId(String),
}

/// A queue, task, cron or rt id: 16 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskId(String);

impl TaskId {
    pub fn random() -> Self {
        TaskId(format!("{:016x}", rand::random::<u64>()))
    }

    pub fn parse(text: &str) -> Result<Self, IdError> {
        let well_formed = text.len() == 16
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if well_formed {
            Ok(TaskId(text.to_string()))
        } else {
            Err(IdError::BadTaskId(text.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for TaskId {
    type Error = IdError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        TaskId::parse(&text)
    }
}

impl From<TaskId> for String {
    fn from(id: TaskId) -> String {
        id.0
    }
}

/// An agent's id; it also names the agent's queue, so it is restricted to safe characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentId(String);

impl AgentId {
    pub fn parse(text: &str) -> Result<Self, IdError> {
        let mut bytes = text.bytes();
        let first_ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
        let rest_ok =
            bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        if first_ok && rest_ok && text.len() <= 128 {
            Ok(AgentId(text.to_string()))
        } else {
            Err(IdError::BadAgentId(text.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for AgentId {
    type Error = IdError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        AgentId::parse(&text)
    }
}

impl From<AgentId> for String {
    fn from(id: AgentId) -> String {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_are_sixteen_lowercase_hex() {
        assert!(TaskId::parse("0123456789abcdef").is_ok());
        assert!(TaskId::parse("0123456789ABCDEF").is_err());
        assert!(TaskId::parse("0123456789abcde").is_err());
        assert!(TaskId::parse("0123456789abcdeg").is_err());
        let random = TaskId::random();
        assert!(TaskId::parse(random.as_str()).is_ok());
    }

    #[test]
    fn agent_ids_refuse_routing_characters() {
        assert!(AgentId::parse("host-1.example").is_ok());
        assert!(AgentId::parse("10.0.0.7").is_ok());
        assert!(AgentId::parse("").is_err());
        assert!(AgentId::parse("a#b").is_err());
        assert!(AgentId::parse("a*").is_err());
        assert!(AgentId::parse(".a").is_err());
    }
}
