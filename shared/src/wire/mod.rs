//! The messages that cross a process boundary, and their codec.
//!
//! Bodies are named-field MessagePack (`rmp_serde::to_vec_named`) so that a field can be added
//! later: every field added after the first release carries `#[serde(default)]`.
//! Legacy spellings of the original ELVES stay at this edge.

mod codec;
mod ids;
mod output;

pub use codec::{decode, decode_json, encode, DecodeError};
pub use ids::{AgentId, IdError, TaskId};
pub use output::{dropped_marker, OutputBatch, OutputChunk, OutputStream};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// AMQP `type` property values, one per message kind.
pub mod kind {
    pub const INSTRUCTION: &str = "instruction";
    /// Several [`super::InstructionBatch`] instructions for one agent in one signed message.
    pub const INSTRUCTIONS: &str = "instructions";
    pub const CANCEL: &str = "cancel";
    pub const APP_SET: &str = "app_set";
    pub const RESULT: &str = "result";
    /// Several [`super::ResultBatch`] results in one message, on `center.result` only.
    pub const RESULTS: &str = "results";
    pub const HEARTBEAT: &str = "heartbeat";
    pub const SUBMIT: &str = "submit";
    pub const SUBMIT_REPLY: &str = "submit_reply";
    /// A running worker's output: an [`super::OutputBatch`], on `center.output`.
    pub const OUTPUT: &str = "output";
}

/// Routing keys of the topic exchange; these are not namespaced, queue names are.
pub mod routing {
    use super::AgentId;

    pub const CENTER_RESULT: &str = "center.result";
    pub const CENTER_HEARTBEAT: &str = "center.heartbeat";
    pub const CENTER_SUBMIT: &str = "center.submit";
    pub const CENTER_OUTPUT: &str = "center.output";

    pub fn agent(agent_id: &AgentId) -> String {
        format!("agent.{agent_id}")
    }

    pub fn processor(app: &str) -> String {
        format!("processor.{app}")
    }
}

/// How a task was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskType {
    Rt,
    Queue,
    Cron,
}

impl TaskType {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskType::Rt => "rt",
            TaskType::Queue => "queue",
            TaskType::Cron => "cron",
        }
    }
}

impl fmt::Display for TaskType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the result also goes to the app's processor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Mode {
    #[default]
    NP,
    P,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::NP => "NP",
            Mode::P => "P",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;

    /// Case-insensitive; empty means the default, NP.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() || text.eq_ignore_ascii_case("np") {
            Ok(Mode::NP)
        } else if text.eq_ignore_ascii_case("p") {
            Ok(Mode::P)
        } else {
            Err(format!("mode must be P or NP, got {text:?}"))
        }
    }
}

/// Center → agent: instructions for one agent, claimed together, in one message (kind
/// [`kind::INSTRUCTIONS`]) signed once over its whole body, so that the broker carries one
/// message instead of many. Each instruction keeps its own id and deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstructionBatch {
    pub instructions: Vec<Instruction>,
}

/// The largest `param` a task may carry, in bytes. The worker gets it base64-encoded as one
/// argument, and Linux refuses a single argument of 128 KiB or more (`MAX_ARG_STRLEN`) with
/// "Argument list too long": 96,000 bytes encode to 128,000 characters, under that.
pub const MAX_PARAM_BYTES: usize = 96_000;

/// Center → agent: run one app function. Signed by the center (Ed25519 over the exact body bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instruction {
    pub id: TaskId,
    pub agent: AgentId,
    #[serde(rename = "type")]
    pub task_type: TaskType,
    pub mode: Mode,
    pub app: String,
    pub func: String,
    pub param: String,
    /// Seconds, counted from spawn.
    pub timeout: u32,
    pub proxy: String,
    pub issued_at: u64,
    /// After this instant (unix ms) the agent drops the instruction and reports it expired.
    pub deadline: u64,
}

/// Center → agent: kill the running task with this id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    pub id: TaskId,
}

/// Agent → center: the outcome of one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    pub id: TaskId,
    pub agent: AgentId,
    #[serde(rename = "type")]
    pub task_type: TaskType,
    pub mode: Mode,
    pub app: String,
    pub func: String,
    /// 1 the worker said true, 0 it said false, -1 the platform could not get an answer.
    pub worker_flag: i8,
    pub worker_message: String,
    pub worker_costtime: u64,
    pub started_at: u64,
    pub finished_at: u64,
    /// Empty when the agent ran the task; otherwise why it did not (e.g. `expired`).
    pub error: String,
}

/// Agent → center: the results an agent had ready at once, in one `center.result` message
/// (kind [`kind::RESULTS`]), so that the broker carries one message instead of many.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultBatch {
    pub results: Vec<JobResult>,
}

/// Agent → center: I am alive, and this is what I have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub agent: AgentId,
    pub ip: String,
    pub asset: String,
    pub version: String,
    /// Installed apps: name → version.
    pub apps: BTreeMap<String, String>,
    pub sent_at: u64,
    /// How often this agent beats, so the center can judge when it went quiet.
    pub interval_ms: u64,
    /// Apps installed from a center package: name → the package's SHA-256. The center compares
    /// it with what the agent should have and sends an [`AppSet`] when they differ.
    #[serde(default)]
    pub packages: BTreeMap<String, String>,
    /// The agent's labels (SPEC §12): keys and values of 1–64 of `[A-Za-z0-9_.-]`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Center → agent: the complete set of centrally managed apps this agent should have. Signed
/// by the center like an instruction. The agent installs what is missing or different, and
/// sets aside the center-installed apps that are no longer listed; apps installed by hand are
/// left alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSet {
    pub agent: AgentId,
    pub issued_at: u64,
    /// After this instant (unix ms) the agent ignores the set: a replayed old set cannot roll
    /// an agent back for long, and the next heartbeat brings a fresh one.
    pub deadline: u64,
    pub apps: Vec<AppPackage>,
}

/// One app of an [`AppSet`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppPackage {
    pub name: String,
    pub version: String,
    /// Lowercase hex SHA-256 of the zip; the agent refuses a download that does not match.
    pub sha256: String,
    pub size: u64,
    /// Where to download the zip (an absolute http(s) URL carrying an expiring token).
    pub url: String,
}

/// External producer → center: a signed job submission (SPEC §7.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submit {
    pub auth_id: String,
    pub timestamp: i64,
    pub sign_type: String,
    pub sign: String,
    pub agent: String,
    pub app: String,
    pub func: String,
    #[serde(default)]
    pub param: String,
    #[serde(default)]
    pub timeout: i64,
    #[serde(default)]
    pub proxy: String,
    #[serde(default)]
    pub mode: String,
}

/// The `{flag, error, result}` shape shared by HTTP responses and submit replies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub flag: String,
    pub error: String,
    pub result: T,
}

impl<T> Envelope<T> {
    pub fn ok(result: T) -> Self {
        Envelope {
            flag: "true".to_string(),
            error: String::new(),
            result,
        }
    }
}

impl Envelope<serde_json::Value> {
    pub fn failure(code: &str, message: &str) -> Self {
        Envelope {
            flag: "false".to_string(),
            error: format!("[{code}]{message}"),
            result: serde_json::Value::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_instruction() -> Instruction {
        Instruction {
            id: TaskId::parse("0123456789abcdef").unwrap(),
            agent: AgentId::parse("agent-1").unwrap(),
            task_type: TaskType::Rt,
            mode: Mode::NP,
            app: "apptest".into(),
            func: "helloword".into(),
            param: r#"{"my":"héllo \"x\"\n"}"#.into(),
            timeout: 90,
            proxy: String::new(),
            issued_at: 1_700_000_000_000,
            deadline: 1_700_000_155_000,
        }
    }

    #[test]
    fn instruction_round_trips_with_named_fields() {
        let instruction = sample_instruction();
        let bytes = encode(&instruction);
        let value: rmpv_like::Map = rmp_serde::from_slice(&bytes).unwrap();
        assert!(value.contains_key("deadline"));
        assert_eq!(value.get("type").and_then(|v| v.as_str()), Some("rt"));
        let decoded: Instruction = decode(&bytes).unwrap();
        assert_eq!(decoded, instruction);
    }

    /// A byte fixture pins the wire format: changing a field name or order breaks agents in the field.
    #[test]
    fn instruction_matches_checked_in_fixture() {
        let bytes = encode(&sample_instruction());
        let fixture = include_bytes!("fixtures/instruction.msgpack");
        assert_eq!(hex::encode(&bytes), hex::encode(fixture));
    }

    #[test]
    fn job_result_round_trips() {
        let result = JobResult {
            id: TaskId::parse("0123456789abcdef").unwrap(),
            agent: AgentId::parse("a").unwrap(),
            task_type: TaskType::Queue,
            mode: Mode::P,
            app: "x".into(),
            func: "y".into(),
            worker_flag: -1,
            worker_message: "app exec timeout".into(),
            worker_costtime: 12,
            started_at: 1,
            finished_at: 2,
            error: String::new(),
        };
        let decoded: JobResult = decode(&encode(&result)).unwrap();
        assert_eq!(decoded, result);
        let fixture = include_bytes!("fixtures/job_result.msgpack");
        assert_eq!(hex::encode(encode(&result)), hex::encode(fixture));
    }

    #[test]
    fn heartbeat_and_cancel_round_trip() {
        let heartbeat = Heartbeat {
            agent: AgentId::parse("a").unwrap(),
            ip: "10.0.0.1".into(),
            asset: "rack-1".into(),
            version: "0.1.0".into(),
            apps: [("apptest".to_string(), "1.0".to_string())].into(),
            sent_at: 5,
            interval_ms: 1000,
            packages: [("apptest".to_string(), "ab".repeat(32))].into(),
            labels: [("rack".to_string(), "r-7".to_string())].into(),
        };
        assert_eq!(decode::<Heartbeat>(&encode(&heartbeat)).unwrap(), heartbeat);
        let cancel = Cancel {
            id: TaskId::parse("00000000000000ff").unwrap(),
        };
        assert_eq!(decode::<Cancel>(&encode(&cancel)).unwrap(), cancel);
    }

    fn sample_app_set() -> AppSet {
        AppSet {
            agent: AgentId::parse("agent-1").unwrap(),
            issued_at: 1_700_000_000_000,
            deadline: 1_700_000_300_000,
            apps: vec![AppPackage {
                name: "apptest".into(),
                version: "1.0.2".into(),
                sha256: "0f".repeat(32),
                size: 1234,
                url: "http://center:8080/api/v2/app/download/0f?agent=agent-1".into(),
            }],
        }
    }

    #[test]
    fn app_set_round_trips_and_matches_its_fixture() {
        let set = sample_app_set();
        let bytes = encode(&set);
        assert_eq!(decode::<AppSet>(&bytes).unwrap(), set);
        let fixture = include_bytes!("fixtures/app_set.msgpack");
        assert_eq!(hex::encode(&bytes), hex::encode(fixture));
    }

    #[test]
    fn a_heartbeat_from_an_older_agent_has_no_packages_nor_labels() {
        #[derive(Serialize)]
        struct OldHeartbeat {
            agent: String,
            ip: String,
            asset: String,
            version: String,
            apps: BTreeMap<String, String>,
            sent_at: u64,
            interval_ms: u64,
        }
        let old = OldHeartbeat {
            agent: "a".into(),
            ip: "10.0.0.1".into(),
            asset: String::new(),
            version: "0.1.0".into(),
            apps: BTreeMap::new(),
            sent_at: 1,
            interval_ms: 1000,
        };
        let decoded: Heartbeat = decode(&encode(&old)).unwrap();
        assert!(decoded.packages.is_empty());
        assert!(decoded.labels.is_empty());
    }

    #[test]
    fn submit_accepts_json_with_missing_optional_fields() {
        let json = br#"{"auth_id":"a","timestamp":1,"sign_type":"MD5","sign":"s","agent":"x","app":"y","func":"z"}"#;
        let submit: Submit = decode_json(json).unwrap();
        assert_eq!(submit.param, "");
        assert_eq!(submit.timeout, 0);
    }

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        assert!(decode::<Instruction>(b"\xff\x00garbage").is_err());
        assert!(decode::<Instruction>(b"").is_err());
        assert!(decode_json::<Submit>(b"{").is_err());
    }

    #[test]
    fn mode_parses_case_insensitively() {
        assert_eq!("p".parse::<Mode>().unwrap(), Mode::P);
        assert_eq!("Np".parse::<Mode>().unwrap(), Mode::NP);
        assert_eq!("".parse::<Mode>().unwrap(), Mode::NP);
        assert!("X".parse::<Mode>().is_err());
    }

    /// Decoding into a plain map shows the body carries field names, not positions.
    mod rmpv_like {
        pub type Map = std::collections::BTreeMap<String, serde_json::Value>;
    }
}
