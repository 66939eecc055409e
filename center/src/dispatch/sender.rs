//! Whether a result or a heartbeat may be taken at all: its fields within bounds, and, when
//! agents have broker accounts of their own (`bus.agent_accounts`), published by the agent it
//! names.
//!
//! RabbitMQ refuses a message whose `user-id` is not the publishing connection's user, and
//! every elves bus stamps its own: with one broker user per agent, named after the agent id,
//! a result whose `user-id` is its `agent` came from that agent's connection. The store then
//! takes a result only for a task sent to that agent (`Store::record_results`), so an agent,
//! or anyone else who can publish, cannot settle another agent's task.

use elves_shared::bus::BusMessage;
use elves_shared::wire::{Heartbeat, JobResult};

/// The largest `worker_message` taken: the agent's default output caps (1 MiB of stdout,
/// 64 KiB of stderr) with room to spare.
pub const MAX_WORKER_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// The largest `error`, `app` or `func` taken.
pub const MAX_SHORT_FIELD_BYTES: usize = 1024;

/// Why `result`, as carried by `message`, is not taken; `None` when it is.
pub fn refusal(message: &BusMessage, result: &JobResult, agent_accounts: bool) -> Option<String> {
    if result.worker_message.len() > MAX_WORKER_MESSAGE_BYTES {
        return Some(format!(
            "worker_message of {} bytes, over {MAX_WORKER_MESSAGE_BYTES}",
            result.worker_message.len()
        ));
    }
    for (name, value) in [
        ("error", &result.error),
        ("app", &result.app),
        ("func", &result.func),
    ] {
        if value.len() > MAX_SHORT_FIELD_BYTES {
            return Some(format!(
                "{name} of {} bytes, over {MAX_SHORT_FIELD_BYTES}",
                value.len()
            ));
        }
    }
    if agent_accounts && message.user_id.as_deref() != Some(result.agent.as_str()) {
        return Some(format!(
            "result for agent {} published by broker user {:?}",
            result.agent,
            message.user_id.as_deref().unwrap_or("(none)")
        ));
    }
    None
}

/// The largest heartbeat body decoded at all: a fleet's real beats are a few KiB.
pub const MAX_HEARTBEAT_BYTES: usize = 256 * 1024;
/// The largest `ip`, `asset` or `version` a heartbeat may carry.
pub const MAX_HEARTBEAT_FIELD_BYTES: usize = 256;
/// The most apps, packages or labels a heartbeat may list, and the longest name or value.
pub const MAX_HEARTBEAT_ENTRIES: usize = 1024;
pub const MAX_HEARTBEAT_ENTRY_BYTES: usize = 128;

/// Why a heartbeat body of `body_len` bytes is not decoded; `None` when it may be.
pub fn heartbeat_body_refusal(body_len: usize) -> Option<String> {
    (body_len > MAX_HEARTBEAT_BYTES)
        .then(|| format!("heartbeat of {body_len} bytes, over {MAX_HEARTBEAT_BYTES}"))
}

/// Why `heartbeat`, as carried by `message`, is not taken; `None` when it is. A heartbeat is
/// kept in memory and stored for every agent, so each field has a bound; and with agent
/// accounts only the agent it names may send it, so that nobody takes over another agent's
/// ip or presence.
pub fn heartbeat_refusal(
    message: &BusMessage,
    heartbeat: &Heartbeat,
    agent_accounts: bool,
) -> Option<String> {
    for (name, value) in [
        ("ip", &heartbeat.ip),
        ("asset", &heartbeat.asset),
        ("version", &heartbeat.version),
    ] {
        if value.len() > MAX_HEARTBEAT_FIELD_BYTES {
            return Some(format!(
                "{name} of {} bytes, over {MAX_HEARTBEAT_FIELD_BYTES}",
                value.len()
            ));
        }
    }
    for (name, entries) in [
        ("apps", &heartbeat.apps),
        ("packages", &heartbeat.packages),
        ("labels", &heartbeat.labels),
    ] {
        if entries.len() > MAX_HEARTBEAT_ENTRIES {
            return Some(format!(
                "{} {name}, over {MAX_HEARTBEAT_ENTRIES}",
                entries.len()
            ));
        }
        if entries.iter().any(|(key, value)| {
            key.len() > MAX_HEARTBEAT_ENTRY_BYTES || value.len() > MAX_HEARTBEAT_ENTRY_BYTES
        }) {
            return Some(format!(
                "{name} with a name or value over {MAX_HEARTBEAT_ENTRY_BYTES} bytes"
            ));
        }
    }
    if agent_accounts && message.user_id.as_deref() != Some(heartbeat.agent.as_str()) {
        return Some(format!(
            "heartbeat of agent {} published by broker user {:?}",
            heartbeat.agent,
            message.user_id.as_deref().unwrap_or("(none)")
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use elves_shared::wire::{AgentId, Mode, TaskId, TaskType};

    fn result() -> JobResult {
        JobResult {
            id: TaskId::parse("00000000000000a1").unwrap(),
            agent: AgentId::parse("a1").unwrap(),
            task_type: TaskType::Queue,
            mode: Mode::NP,
            app: "demo".into(),
            func: "run".into(),
            worker_flag: 1,
            worker_message: "ok".into(),
            worker_costtime: 1,
            started_at: 1,
            finished_at: 2,
            error: String::new(),
        }
    }

    fn from(user: Option<&str>) -> BusMessage {
        BusMessage {
            user_id: user.map(str::to_string),
            ..BusMessage::default()
        }
    }

    #[test]
    fn only_the_named_agent_may_send_its_result_when_agents_have_accounts() {
        assert_eq!(refusal(&from(Some("a1")), &result(), true), None);
        assert!(refusal(&from(Some("a2")), &result(), true)
            .unwrap()
            .contains("published by broker user \"a2\""));
        assert!(refusal(&from(None), &result(), true).is_some());
        // Without accounts (one shared broker user, or the in-process bus) only sizes count.
        assert_eq!(refusal(&from(None), &result(), false), None);
    }

    #[test]
    fn oversized_fields_are_refused() {
        let mut huge = result();
        huge.worker_message = "x".repeat(MAX_WORKER_MESSAGE_BYTES + 1);
        assert!(refusal(&from(None), &huge, false)
            .unwrap()
            .starts_with("worker_message"));
        let mut long_error = result();
        long_error.error = "e".repeat(MAX_SHORT_FIELD_BYTES + 1);
        assert!(refusal(&from(None), &long_error, false)
            .unwrap()
            .starts_with("error"));
    }

    fn heartbeat() -> Heartbeat {
        Heartbeat {
            agent: AgentId::parse("a1").unwrap(),
            ip: "10.0.0.1".into(),
            asset: "rack 4".into(),
            version: "1.0".into(),
            apps: [("demo".to_string(), "1".to_string())].into(),
            sent_at: 1,
            interval_ms: 1000,
            packages: Default::default(),
            labels: [("role".to_string(), "web".to_string())].into(),
        }
    }

    #[test]
    fn only_the_named_agent_may_send_its_heartbeat_when_agents_have_accounts() {
        assert_eq!(
            heartbeat_refusal(&from(Some("a1")), &heartbeat(), true),
            None
        );
        assert!(heartbeat_refusal(&from(Some("a2")), &heartbeat(), true)
            .unwrap()
            .contains("published by broker user \"a2\""));
        assert!(heartbeat_refusal(&from(None), &heartbeat(), true).is_some());
        assert_eq!(heartbeat_refusal(&from(None), &heartbeat(), false), None);
    }

    #[test]
    fn oversized_heartbeats_are_refused() {
        assert!(heartbeat_body_refusal(MAX_HEARTBEAT_BYTES + 1).is_some());
        assert_eq!(heartbeat_body_refusal(MAX_HEARTBEAT_BYTES), None);
        let mut big_asset = heartbeat();
        big_asset.asset = "a".repeat(MAX_HEARTBEAT_FIELD_BYTES + 1);
        assert!(heartbeat_refusal(&from(None), &big_asset, false)
            .unwrap()
            .starts_with("asset"));
        let mut many_apps = heartbeat();
        many_apps.apps = (0..=MAX_HEARTBEAT_ENTRIES)
            .map(|n| (format!("app{n}"), "1".to_string()))
            .collect();
        assert!(heartbeat_refusal(&from(None), &many_apps, false)
            .unwrap()
            .contains("apps"));
        let mut long_label = heartbeat();
        long_label
            .labels
            .insert("k".to_string(), "v".repeat(MAX_HEARTBEAT_ENTRY_BYTES + 1));
        assert!(heartbeat_refusal(&from(None), &long_label, false)
            .unwrap()
            .starts_with("labels"));
    }
}
