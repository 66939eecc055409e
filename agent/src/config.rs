//! The agent's configuration: one TOML file (`config/agent.toml`) with `ELVES_…` environment
//! overrides, loaded by [`elves_shared::config::load`] and then checked here.
//!
//! Only `id` is required in the file; everything else has the default an operator would expect.
//! `center.public_key` may be left out of the file (e.g. set by `ELVES_CENTER__PUBLIC_KEY`), but
//! [`AgentConfig::validate`] refuses to start an agent without it: such an agent could verify no
//! instruction and would silently refuse everything.
//! This module does not open the bus or touch the apps directory.

use elves_shared::crypto::InstructionVerifier;
use elves_shared::wire::AgentId;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The largest `max_concurrent` accepted: the consumer prefetch is twice this and must fit a u16,
/// and no host runs thousands of workers at once on purpose.
const MAX_CONCURRENT_LIMIT: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Load(#[from] elves_shared::config::ConfigError),
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// Everything the agent needs to know at start.
#[derive(Debug, Clone, Deserialize)]
pub struct AgentConfig {
    /// Names this agent's queue (`<ns>.agent.<id>`) and its results.
    pub id: AgentId,
    /// How callers address this agent; empty means "the id" (see [`AgentConfig::ip`]).
    #[serde(default)]
    pub ip: String,
    /// Free text reported in heartbeats (asset tag, rack).
    #[serde(default)]
    pub asset: String,
    #[serde(default = "default_apps_dir")]
    pub apps_dir: PathBuf,
    /// Results that could not be published wait here until the bus is back; the done journal
    /// (tasks finished lately, see `done_journal`) lives here too.
    #[serde(default = "default_spool_dir")]
    pub spool_dir: PathBuf,
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// Workers running at once on this host; more wait in order.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: usize,
    #[serde(default)]
    pub bus: BusConfig,
    #[serde(default)]
    pub center: CenterConfig,
    #[serde(default)]
    pub exec: ExecConfig,
    /// Interpreter allow-list, name → path; empty means the defaults (python3, python, bash, sh).
    #[serde(default)]
    pub interpreters: BTreeMap<String, String>,
    /// What an app package from the center may be (checked again when installing); keep it in
    /// step with the center's `[apps.limits]`.
    #[serde(default)]
    pub package_limits: elves_shared::package::Limits,
    /// Agent-local crons in the original ELVES `cron.json` format; a missing file means none.
    #[serde(default = "default_cron_file")]
    pub cron_file: PathBuf,
    /// The zone the local cron rules are read in (IANA name).
    #[serde(default = "default_cron_time_zone")]
    pub cron_time_zone: String,
    /// `labels = { role = "web", dc = "bj" }`: reported in heartbeats, selected on by targets
    /// (SPEC §12). Keys and values: 1-64 of `[A-Za-z0-9_.-]`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn default_cron_file() -> PathBuf {
    PathBuf::from("config/cron.json")
}

fn default_cron_time_zone() -> String {
    "UTC".to_string()
}

#[derive(Debug, Clone, Deserialize)]
pub struct BusConfig {
    /// `inproc` for the embedded bus, `amqp://…` for RabbitMQ; the nodes of a cluster as URLs
    /// separated by commas (connects to the first that answers, fails over to the others).
    #[serde(default = "default_bus_url")]
    pub url: String,
    /// Names the exchange and prefixes every queue.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The largest AMQP frame to ask the broker for, unless the URL names one (`0`: the
    /// broker's). Small frames keep the connection's buffers small: see
    /// `elves_shared::bus::with_frame_max`.
    #[serde(default = "default_frame_max")]
    pub frame_max: u32,
    /// `amqps://` only: the CA certificates (PEM) the broker's certificate must chain to;
    /// unset, the system's.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// `amqps://` only: a client certificate (PEM) to present, with `tls_key`.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

impl BusConfig {
    /// The TLS files of the broker link.
    pub fn tls(&self) -> elves_shared::tls::ClientTls {
        elves_shared::tls::ClientTls {
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct CenterConfig {
    /// The `key_id` header the center signs with (the single-key form, beside `keys`).
    #[serde(default = "default_key_id")]
    pub key_id: String,
    /// The center's Ed25519 public key, 64 hex characters (the single-key form).
    #[serde(default)]
    pub public_key: String,
    /// The center keys trusted, key id → public key (hex): `[center.keys]`, as
    /// `elves agent enroll` writes it. During a key rotation it holds the old key and the new
    /// one; instructions signed with any other key id are refused. Together with
    /// `key_id`/`public_key` when both are given.
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
    /// Where to download app packages from (`http://host:port`, or `https://…` for a center
    /// serving HTTPS), replacing scheme and address in the center's links; empty means use
    /// the links as they come (`https://` when the center serves HTTPS).
    #[serde(default)]
    pub download_url: String,
    /// The CA certificates (PEM) the center's HTTPS certificate must chain to, for package
    /// downloads from an `https://` center; unset, the system's.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ExecConfig {
    /// Used when an instruction carries no timeout.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
    /// Between SIGTERM and SIGKILL of a timed-out or cancelled worker's process group.
    #[serde(default = "default_kill_grace_ms")]
    pub kill_grace_ms: u64,
    #[serde(default = "default_stdout_cap")]
    pub stdout_cap: usize,
    #[serde(default = "default_stderr_cap")]
    pub stderr_cap: usize,
    /// Live output (SPEC §12): per task and stream, the bytes kept and sent to the center,
    /// the first half and the last half of what the worker wrote.
    #[serde(default = "default_output_cap")]
    pub output_cap: u64,
    /// Whether running workers' output goes to the center as it comes (SPEC §12).
    #[serde(default = "default_output_live")]
    pub output_live: bool,
    /// How often running workers' output is sent (one message for all of them).
    #[serde(default = "default_output_interval_ms")]
    pub output_interval_ms: u64,
}

fn default_output_cap() -> u64 {
    4 * 1024 * 1024
}

fn default_output_live() -> bool {
    true
}

fn default_output_interval_ms() -> u64 {
    200
}

fn default_apps_dir() -> PathBuf {
    PathBuf::from("apps")
}

fn default_spool_dir() -> PathBuf {
    PathBuf::from("data/agent-spool")
}

fn default_heartbeat_interval_ms() -> u64 {
    10_000
}

fn default_max_concurrent() -> usize {
    32
}

fn default_bus_url() -> String {
    "inproc".to_string()
}

/// Agents' messages are small; see `elves_shared::bus::with_frame_max` for why this matters.
pub const DEFAULT_FRAME_MAX: u32 = 16 * 1024;

fn default_frame_max() -> u32 {
    DEFAULT_FRAME_MAX
}

fn default_namespace() -> String {
    "elves".to_string()
}

fn default_key_id() -> String {
    "center".to_string()
}

fn default_timeout_s() -> u64 {
    90
}

fn default_kill_grace_ms() -> u64 {
    5_000
}

fn default_stdout_cap() -> usize {
    1024 * 1024
}

fn default_stderr_cap() -> usize {
    64 * 1024
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            url: default_bus_url(),
            namespace: default_namespace(),
            frame_max: default_frame_max(),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl Default for CenterConfig {
    fn default() -> Self {
        CenterConfig {
            key_id: default_key_id(),
            public_key: String::new(),
            keys: BTreeMap::new(),
            download_url: String::new(),
            tls_ca: None,
        }
    }
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            timeout_s: default_timeout_s(),
            kill_grace_ms: default_kill_grace_ms(),
            stdout_cap: default_stdout_cap(),
            stderr_cap: default_stderr_cap(),
            output_cap: default_output_cap(),
            output_live: default_output_live(),
            output_interval_ms: default_output_interval_ms(),
        }
    }
}

impl AgentConfig {
    /// A configuration with every default, for embedding the agent (`elves up`) and for tests.
    /// The caller still sets `center.public_key`.
    pub fn new(id: AgentId) -> Self {
        AgentConfig {
            id,
            ip: String::new(),
            asset: String::new(),
            apps_dir: default_apps_dir(),
            spool_dir: default_spool_dir(),
            heartbeat_interval_ms: default_heartbeat_interval_ms(),
            max_concurrent: default_max_concurrent(),
            bus: BusConfig::default(),
            center: CenterConfig::default(),
            exec: ExecConfig::default(),
            interpreters: BTreeMap::new(),
            package_limits: elves_shared::package::Limits::default(),
            cron_file: default_cron_file(),
            cron_time_zone: default_cron_time_zone(),
            labels: BTreeMap::new(),
        }
    }

    /// Reads `path` (or only the environment when `None`), applies `ELVES_…` overrides from
    /// `env` and validates the result.
    pub fn load<I>(path: Option<&Path>, env: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let config: AgentConfig = elves_shared::config::load(path, env)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: ranges, and that the center key is usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval_ms < 100 {
            return Err(invalid(
                "heartbeat_interval_ms",
                format!("must be at least 100, got {}", self.heartbeat_interval_ms),
            ));
        }
        if self.max_concurrent == 0 || self.max_concurrent > MAX_CONCURRENT_LIMIT {
            return Err(invalid(
                "max_concurrent",
                format!(
                    "must be between 1 and {MAX_CONCURRENT_LIMIT}, got {}",
                    self.max_concurrent
                ),
            ));
        }
        if self.apps_dir.as_os_str().is_empty() {
            return Err(invalid("apps_dir", "must not be empty"));
        }
        if self.spool_dir.as_os_str().is_empty() {
            return Err(invalid("spool_dir", "must not be empty"));
        }
        if self.bus.namespace.is_empty() {
            return Err(invalid("bus.namespace", "must not be empty"));
        }
        if let Some(ca) = &self.center.tls_ca {
            elves_shared::tls::read_certificates(ca, "CA file")
                .map_err(|err| invalid("center.tls_ca", err.to_string()))?;
        }
        if !(2..=1 << 30).contains(&self.exec.output_cap) {
            return Err(invalid(
                "exec.output_cap",
                format!(
                    "must be between 2 and 1073741824, got {}",
                    self.exec.output_cap
                ),
            ));
        }
        if !(10..=60_000).contains(&self.exec.output_interval_ms) {
            return Err(invalid(
                "exec.output_interval_ms",
                format!(
                    "must be between 10 and 60000, got {}",
                    self.exec.output_interval_ms
                ),
            ));
        }
        if self.exec.timeout_s == 0 || self.exec.timeout_s > 86_400 {
            return Err(invalid(
                "exec.timeout_s",
                format!("must be between 1 and 86400, got {}", self.exec.timeout_s),
            ));
        }
        if self.exec.stdout_cap == 0 {
            return Err(invalid("exec.stdout_cap", "must be greater than 0"));
        }
        if self.exec.stderr_cap == 0 {
            return Err(invalid("exec.stderr_cap", "must be greater than 0"));
        }
        for (name, path) in &self.interpreters {
            if name.is_empty() || path.trim().is_empty() {
                return Err(invalid(
                    "interpreters",
                    format!("entry {name:?} needs a name and a path"),
                ));
            }
        }
        if let Err(why) = elves_shared::target::validate_labels(&self.labels) {
            return Err(invalid("labels", why));
        }
        if let Err(why) = elves_shared::quartz::parse_time_zone(&self.cron_time_zone) {
            return Err(invalid("cron_time_zone", why));
        }
        if self.center.key_id.is_empty() {
            return Err(invalid("center.key_id", "must not be empty"));
        }
        self.center.verifier()?;
        Ok(())
    }

    /// The address callers use for this agent: the configured ip, else the id.
    pub fn ip(&self) -> String {
        if self.ip.is_empty() {
            self.id.to_string()
        } else {
            self.ip.clone()
        }
    }

    /// The consumer prefetch: enough to keep every worker slot busy and the next batch queued,
    /// without letting one agent hoard a whole backlog.
    pub fn prefetch(&self) -> u16 {
        u16::try_from(self.max_concurrent.saturating_mul(2)).unwrap_or(u16::MAX)
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }
}

impl CenterConfig {
    /// The verifier holding the center's public keys: `public_key` under `key_id`, and every
    /// entry of `keys`.
    pub fn verifier(&self) -> Result<InstructionVerifier, ConfigError> {
        if self.public_key.trim().is_empty() && self.keys.is_empty() {
            return Err(invalid(
                "center.public_key",
                "required (or `[center.keys]`): the center's hex public key (without it every \
                 instruction is refused)",
            ));
        }
        let mut verifier = InstructionVerifier::new();
        if !self.public_key.trim().is_empty() {
            verifier
                .add_public_key_hex(&self.key_id, &self.public_key)
                .map_err(|err| invalid("center.public_key", err.to_string()))?;
        }
        for (key_id, public_key) in &self.keys {
            if key_id.is_empty() {
                return Err(invalid("center.keys", "a key id must not be empty"));
            }
            verifier
                .add_public_key_hex(key_id, public_key)
                .map_err(|err| invalid("center.keys", err.to_string()))?;
        }
        Ok(verifier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use elves_shared::crypto::InstructionSigner;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    fn public_key() -> String {
        InstructionSigner::generate("center").public_key_hex()
    }

    #[test]
    fn defaults_apply_when_only_the_required_keys_are_set() {
        let key = public_key();
        let config = AgentConfig::load(
            None,
            env(&[("ELVES_ID", "host-1"), ("ELVES_CENTER__PUBLIC_KEY", &key)]),
        )
        .unwrap();
        assert_eq!(config.id.as_str(), "host-1");
        assert_eq!(config.ip(), "host-1");
        assert_eq!(config.asset, "");
        assert_eq!(config.apps_dir, PathBuf::from("apps"));
        assert_eq!(config.spool_dir, PathBuf::from("data/agent-spool"));
        assert_eq!(config.heartbeat_interval_ms, 10_000);
        assert_eq!(config.max_concurrent, 32);
        assert_eq!(config.prefetch(), 64);
        assert_eq!(config.bus.url, "inproc");
        assert_eq!(config.bus.namespace, "elves");
        assert_eq!(config.center.key_id, "center");
        assert_eq!(config.exec.timeout_s, 90);
        assert_eq!(config.exec.kill_grace_ms, 5_000);
        assert_eq!(config.exec.stdout_cap, 1024 * 1024);
        assert_eq!(config.exec.stderr_cap, 64 * 1024);
        assert!(config.interpreters.is_empty());
        assert_eq!(config.cron_file, PathBuf::from("config/cron.json"));
        assert_eq!(config.cron_time_zone, "UTC");
    }

    #[test]
    fn a_file_is_read_and_the_environment_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let text = format!(
            "id = \"10.0.0.7\"\nip = \"10.0.0.7\"\nmax_concurrent = 4\n\
             [bus]\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\n\
             [center]\npublic_key = \"{}\"\n\
             [exec]\ntimeout_s = 30\n\
             [interpreters]\npython3 = \"/usr/bin/python3\"\n",
            public_key()
        );
        std::fs::write(&path, text).unwrap();
        let config =
            AgentConfig::load(Some(&path), env(&[("ELVES_BUS__NAMESPACE", "tenant-a")])).unwrap();
        assert_eq!(config.ip(), "10.0.0.7");
        assert_eq!(config.max_concurrent, 4);
        assert_eq!(config.prefetch(), 8);
        assert!(config.bus.url.starts_with("amqp://"));
        assert_eq!(config.bus.namespace, "tenant-a");
        assert_eq!(config.exec.timeout_s, 30);
        assert_eq!(
            config.interpreters.get("python3").map(String::as_str),
            Some("/usr/bin/python3")
        );
    }

    #[test]
    fn labels_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let write = |labels: &str| {
            let text = format!(
                "id = \"web-1\"\nlabels = {labels}\n[center]\npublic_key = \"{}\"\n",
                public_key()
            );
            std::fs::write(&path, text).unwrap();
        };
        write(r#"{ role = "web", dc = "bj" }"#);
        let config = AgentConfig::load(Some(&path), env(&[])).unwrap();
        assert_eq!(config.labels.get("role").map(String::as_str), Some("web"));
        assert_eq!(config.labels.get("dc").map(String::as_str), Some("bj"));
        write(r#"{ role = "web server" }"#);
        let err = AgentConfig::load(Some(&path), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("labels") && err.contains("web server"),
            "{err}"
        );
        write(r#"{ "" = "x" }"#);
        let err = AgentConfig::load(Some(&path), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("labels"), "{err}");
    }

    #[test]
    fn errors_name_the_key() {
        let key = public_key();
        let cases: Vec<(Vec<(String, String)>, &str)> = vec![
            (env(&[("ELVES_CENTER__PUBLIC_KEY", &key)]), "id"),
            (
                env(&[("ELVES_ID", "a#b"), ("ELVES_CENTER__PUBLIC_KEY", &key)]),
                "id",
            ),
            (env(&[("ELVES_ID", "a")]), "center.public_key"),
            (
                env(&[("ELVES_ID", "a"), ("ELVES_CENTER__PUBLIC_KEY", "abcd")]),
                "center.public_key",
            ),
            (
                env(&[
                    ("ELVES_ID", "a"),
                    ("ELVES_CENTER__PUBLIC_KEY", &key),
                    ("ELVES_MAX_CONCURRENT", "0"),
                ]),
                "max_concurrent",
            ),
            (
                env(&[
                    ("ELVES_ID", "a"),
                    ("ELVES_CENTER__PUBLIC_KEY", &key),
                    ("ELVES_EXEC__TIMEOUT_S", "0"),
                ]),
                "exec.timeout_s",
            ),
            (
                env(&[
                    ("ELVES_ID", "a"),
                    ("ELVES_CENTER__PUBLIC_KEY", &key),
                    ("ELVES_HEARTBEAT_INTERVAL_MS", "many"),
                ]),
                "heartbeat_interval_ms",
            ),
            (
                env(&[
                    ("ELVES_ID", "a"),
                    ("ELVES_CENTER__PUBLIC_KEY", &key),
                    ("ELVES_CENTER__TLS_CA", "/nonexistent/ca.pem"),
                ]),
                "center.tls_ca",
            ),
        ];
        for (variables, key_name) in cases {
            let err = AgentConfig::load(None, variables).unwrap_err();
            assert!(
                err.to_string().contains(key_name),
                "{key_name} not named in: {err}"
            );
        }
    }

    #[test]
    fn a_set_of_center_keys_is_trusted_beside_the_single_form() {
        use elves_shared::crypto::VerifyError;
        let (old, new, other) = (
            InstructionSigner::generate("k1"),
            InstructionSigner::generate("k2"),
            InstructionSigner::generate("k3"),
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let text = format!(
            "id = \"a\"\n[center]\nkey_id = \"k3\"\npublic_key = \"{}\"\n\
             [center.keys]\nk1 = \"{}\"\n\"k2\" = \"{}\"\n",
            other.public_key_hex(),
            old.public_key_hex(),
            new.public_key_hex()
        );
        std::fs::write(&path, text).unwrap();
        let config = AgentConfig::load(Some(&path), env(&[])).unwrap();
        let verifier = config.center.verifier().unwrap();
        assert_eq!(verifier.key_ids(), vec!["k1", "k2", "k3"]);
        for signer in [&old, &new, &other] {
            let (key_id, signature) = signer.sign_with_key_id(b"x");
            assert_eq!(
                verifier.verify(b"x", Some(&key_id), Some(&signature)),
                Ok(())
            );
        }
        let only_keys = format!(
            "id = \"a\"\n[center.keys]\nk2 = \"{}\"\n",
            new.public_key_hex()
        );
        std::fs::write(&path, only_keys).unwrap();
        let verifier = AgentConfig::load(Some(&path), env(&[]))
            .unwrap()
            .center
            .verifier()
            .unwrap();
        assert_eq!(
            verifier.verify(b"x", Some("k1"), Some(&old.sign(b"x"))),
            Err(VerifyError::UnknownKey("k1".into()))
        );
        std::fs::write(&path, "id = \"a\"\n[center.keys]\nk2 = \"abcd\"\n").unwrap();
        let err = AgentConfig::load(Some(&path), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("center.keys"), "{err}");
    }

    #[test]
    fn the_example_config_at_the_repo_root_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/agent.toml");
        let config = AgentConfig::load(
            Some(&path),
            env(&[("ELVES_CENTER__PUBLIC_KEY", &public_key())]),
        )
        .unwrap();
        assert!(config.bus.url.starts_with("amqp://"));
    }

    /// A shell that exported the `elves` client's variables can start an agent: they are not
    /// its configuration and change nothing.
    #[test]
    fn the_client_variables_are_ignored() {
        let key = public_key();
        let own = env(&[
            ("ELVES_ID", "host-1"),
            ("ELVES_CENTER__PUBLIC_KEY", &key),
            ("ELVES_MAX_CONCURRENT", "3"),
        ]);
        let mut with_client = own.clone();
        for name in elves_shared::config::CLIENT_VARIABLES {
            with_client.push((name.to_string(), "http://127.0.0.1:8080".to_string()));
        }
        let expected = AgentConfig::load(None, own).unwrap();
        let config = AgentConfig::load(None, with_client).unwrap();
        assert_eq!(config.max_concurrent, 3);
        assert_eq!(format!("{config:?}"), format!("{expected:?}"));
    }
}
