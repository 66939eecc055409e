//! The center's configuration (`config/center.toml`, every key overridable by `ELVES_…`).

use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CenterConfig {
    /// Where the center keeps its signing key (and, later, its database).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub bus: BusConfig,
    pub auth: AuthConfig,
    #[serde(default)]
    pub keys: KeysConfig,
    #[serde(default)]
    pub heartbeat: HeartbeatConfig,
    #[serde(default)]
    pub rt: RtConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub queue: QueueConfig,
    #[serde(default)]
    pub apps: AppsConfig,
    #[serde(default)]
    pub cron: CronConfig,
    #[serde(default)]
    pub inventory: InventoryConfig,
    #[serde(default)]
    pub output: OutputConfig,
}

/// Labels from outside the agents (SPEC §12): a CMDB export or endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryConfig {
    /// A JSON or TOML file (by extension: `.toml` is TOML, anything else JSON), or an
    /// `http://`/`https://` URL answering JSON; empty means no inventory.
    #[serde(default)]
    pub source: String,
    /// How often the source is read again (it is also read on `inventory/reload`).
    #[serde(default = "default_inventory_refresh_ms")]
    pub refresh_ms: u64,
}

impl Default for InventoryConfig {
    fn default() -> Self {
        InventoryConfig {
            source: String::new(),
            refresh_ms: default_inventory_refresh_ms(),
        }
    }
}

/// `[output]`: the live output of tasks (SPEC §12), stored in the database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Output is deleted this long after it was stored (default 7 days).
    #[serde(default = "default_output_retention_s")]
    pub retention_s: u64,
    /// Per task and stream, the most kept: the first half and the last half (default 4 MiB).
    #[serde(default = "default_output_max_bytes")]
    pub max_bytes_per_stream: u64,
    /// How often old output is looked for.
    #[serde(default = "default_output_sweep_ms")]
    pub sweep_ms: u64,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            retention_s: default_output_retention_s(),
            max_bytes_per_stream: default_output_max_bytes(),
            sweep_ms: default_output_sweep_ms(),
        }
    }
}

fn default_inventory_refresh_ms() -> u64 {
    60_000
}

fn default_output_retention_s() -> u64 {
    7 * 24 * 3600
}

fn default_output_max_bytes() -> u64 {
    4 * 1024 * 1024
}

fn default_output_sweep_ms() -> u64 {
    60_000
}

/// App packages and their distribution (SPEC §5, §11 "Packages").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppsConfig {
    /// Packages by SHA-256; relative paths are under `data_dir`. Centers that share a database
    /// must share this directory too (any center may be asked for any package).
    #[serde(default = "default_package_dir")]
    pub package_dir: PathBuf,
    /// The base URL agents download packages from; empty means the HTTP listener's address,
    /// `https://` when `http.tls_cert` is set.
    #[serde(default)]
    pub public_url: String,
    /// How long a download link in an app set stays valid.
    #[serde(default = "default_download_ttl_s")]
    pub download_ttl_s: u64,
    /// How often apps, auth ids and bindings are reloaded from the database, so that changes
    /// made through another center apply here too.
    #[serde(default = "default_refresh_ms")]
    pub refresh_ms: u64,
    /// An agent whose packages still differ gets the app set again after this long.
    #[serde(default = "default_resend_ms")]
    pub resend_ms: u64,
    #[serde(default)]
    pub limits: elves_shared::package::Limits,
}

impl Default for AppsConfig {
    fn default() -> Self {
        AppsConfig {
            package_dir: default_package_dir(),
            public_url: String::new(),
            download_ttl_s: default_download_ttl_s(),
            refresh_ms: default_refresh_ms(),
            resend_ms: default_resend_ms(),
            limits: elves_shared::package::Limits::default(),
        }
    }
}

fn default_package_dir() -> PathBuf {
    PathBuf::from("packages")
}
fn default_download_ttl_s() -> u64 {
    600
}
fn default_refresh_ms() -> u64 {
    2_000
}
fn default_resend_ms() -> u64 {
    10_000
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://<path>`, a file path, or `postgres://…`; empty means `<data_dir>/elves.db`.
    #[serde(default)]
    pub url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// How often the queue actor looks for ready tasks and overdue ones even without a trigger
    /// (work committed through another center, a center restart).
    #[serde(default = "default_queue_tick_ms")]
    pub tick_ms: u64,
    /// Tasks claimed per round; bounds one round's memory and database transaction.
    #[serde(default = "default_queue_batch")]
    pub batch: usize,
    /// Extra time after a task's deadline before it is failed as lost: the agent's result may
    /// still be on its way.
    #[serde(default = "default_queue_grace_ms")]
    pub result_grace_ms: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            tick_ms: default_queue_tick_ms(),
            batch: default_queue_batch(),
            result_grace_ms: default_queue_grace_ms(),
        }
    }
}

fn default_queue_tick_ms() -> u64 {
    500
}
fn default_queue_batch() -> usize {
    500
}
fn default_queue_grace_ms() -> u64 {
    5_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    /// actix-web worker threads; the API is I/O bound, two are plenty on small machines.
    #[serde(default = "default_http_workers")]
    pub workers: usize,
    /// With `tls_key`: serve HTTPS with this certificate chain (PEM) instead of HTTP.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
            workers: default_http_workers(),
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl HttpConfig {
    /// The certificate and key to serve HTTPS with; `None` for plain HTTP.
    pub fn tls(&self) -> Option<(&std::path::Path, &std::path::Path)> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            _ => None,
        }
    }

    /// `https` when the API is served over TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls().is_some() {
            "https"
        } else {
            "http"
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    /// `inproc` for the embedded bus, or an `amqp://` URL; the nodes of a RabbitMQ cluster as
    /// URLs separated by commas (connects to the first that answers, fails over to the others).
    #[serde(default = "default_bus_url")]
    pub url: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Every agent connects to the broker as a user of its own, named after its agent id:
    /// results are then taken only from the agent they name (RabbitMQ validates the
    /// `user-id` of each message). Off by default: agents sharing one broker user is the
    /// simple setup.
    #[serde(default)]
    pub agent_accounts: bool,
    /// The RabbitMQ management API (`http://user:password@host:15672`), as an administrator:
    /// `agent/enroll` creates each agent's broker user there and `agent/revoke` deletes it.
    /// Empty: enrolling is off.
    #[serde(default)]
    pub management_url: String,
    /// The broker address written into enrolled agents' configs (their own user and password
    /// replace the URL's); empty means `url`.
    #[serde(default)]
    pub agent_url: String,
    /// How the queues all centers share (results, submissions, heartbeats, output) are
    /// declared on RabbitMQ: `classic` (one node) or `quorum` (replicated over a cluster's
    /// nodes, to survive losing one). A queue keeps the type it was first declared with.
    #[serde(default)]
    pub queue_type: elves_shared::bus::QueueType,
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

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            url: default_bus_url(),
            namespace: default_namespace(),
            agent_accounts: false,
            management_url: String::new(),
            agent_url: String::new(),
            queue_type: elves_shared::bus::QueueType::default(),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// One auth id with all rights, from this file.
    Simple,
    /// Auth ids, apps and bindings from the database; the auth id of this file is the
    /// bootstrap admin.
    Supervisor,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default = "default_auth_mode")]
    pub mode: AuthMode,
    pub auth_id: String,
    pub auth_key: String,
    /// Requests whose timestamp is further than this from the center's clock are refused.
    #[serde(default = "default_timestamp_window")]
    pub timestamp_window_s: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// Ed25519 seed (hex); created on first start when missing.
    /// Relative paths are under `data_dir`.
    #[serde(default = "default_signing_key")]
    pub signing_key: PathBuf,
    #[serde(default = "default_key_id")]
    pub key_id: String,
    /// The key ring of a rotation (`elves keys rotate`): which key signs, which are trusted or
    /// retired. Written by the center; while it exists it wins over `signing_key`/`key_id`.
    /// Relative paths are under `data_dir`.
    #[serde(default = "default_key_ring")]
    pub ring: PathBuf,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            signing_key: default_signing_key(),
            key_id: default_key_id(),
            ring: default_key_ring(),
        }
    }
}

fn default_key_ring() -> PathBuf {
    PathBuf::from("keyring.toml")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// An agent is offline when it missed this many of its own heartbeat intervals.
    #[serde(default = "default_missed_beats")]
    pub offline_after_missed_beats: u32,
    /// How often the agents heard from are written to the database, all in one transaction.
    /// Presence is decided in memory; the rows are for other centers and restarts.
    #[serde(default = "default_heartbeat_flush_ms")]
    pub flush_ms: u64,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            offline_after_missed_beats: default_missed_beats(),
            flush_ms: default_heartbeat_flush_ms(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtConfig {
    #[serde(default = "default_timeout")]
    pub default_timeout_s: u32,
    /// Time between SIGTERM and SIGKILL on the agent; part of every deadline.
    #[serde(default = "default_kill_grace")]
    pub kill_grace_s: u32,
    /// How long an instruction may wait (in the broker, for a worker slot) before it expires.
    #[serde(default = "default_dispatch_allowance")]
    pub dispatch_allowance_s: u32,
}

impl Default for RtConfig {
    fn default() -> Self {
        RtConfig {
            default_timeout_s: default_timeout(),
            kill_grace_s: default_kill_grace(),
            dispatch_allowance_s: default_dispatch_allowance(),
        }
    }
}

impl CenterConfig {
    pub fn load(path: Option<&std::path::Path>) -> Result<Self, elves_shared::config::ConfigError> {
        let config: CenterConfig = elves_shared::config::load(path, std::env::vars())?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), elves_shared::config::ConfigError> {
        let bad = |key: &str, message: &str| elves_shared::config::ConfigError::Parse {
            path: "center config".to_string(),
            message: format!("key `{key}`: {message}"),
        };
        if self.auth.auth_id.is_empty() {
            return Err(bad("auth.auth_id", "must not be empty"));
        }
        if self.auth.auth_key.len() < 8 {
            return Err(bad("auth.auth_key", "must be at least 8 characters"));
        }
        if self.http.workers == 0 {
            return Err(bad("http.workers", "must be at least 1"));
        }
        match (&self.http.tls_cert, &self.http.tls_key) {
            (Some(_), None) => return Err(bad("http.tls_key", "is needed with http.tls_cert")),
            (None, Some(_)) => return Err(bad("http.tls_cert", "is needed with http.tls_key")),
            _ => {}
        }
        if self.heartbeat.offline_after_missed_beats == 0 {
            return Err(bad(
                "heartbeat.offline_after_missed_beats",
                "must be at least 1",
            ));
        }
        if !(10..=60_000).contains(&self.heartbeat.flush_ms) {
            return Err(bad("heartbeat.flush_ms", "must be between 10 and 60000"));
        }
        if self.rt.default_timeout_s == 0 || self.rt.default_timeout_s > 86_400 {
            return Err(bad("rt.default_timeout_s", "must be between 1 and 86400"));
        }
        if let Err(why) = elves_shared::quartz::parse_time_zone(&self.cron.time_zone) {
            return Err(bad("cron.time_zone", &why));
        }
        if self.cron.refresh_ms < 100 {
            return Err(bad("cron.refresh_ms", "must be at least 100"));
        }
        if self.output.retention_s == 0 {
            return Err(bad("output.retention_s", "must be at least 1"));
        }
        if self.output.max_bytes_per_stream < 2 {
            return Err(bad("output.max_bytes_per_stream", "must be at least 2"));
        }
        if self.output.sweep_ms < 100 {
            return Err(bad("output.sweep_ms", "must be at least 100"));
        }
        if self.cron.prepare_ahead_ms < 50 || self.cron.prepare_ahead_ms > 60_000 {
            return Err(bad("cron.prepare_ahead_ms", "must be between 50 and 60000"));
        }
        Ok(())
    }

    /// The database URL, defaulting to a SQLite file in the data directory.
    pub fn database_url(&self) -> String {
        if self.database.url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("elves.db").display())
        } else {
            self.database.url.clone()
        }
    }

    pub fn package_dir(&self) -> PathBuf {
        if self.apps.package_dir.is_absolute() {
            self.apps.package_dir.clone()
        } else {
            self.data_dir.join(&self.apps.package_dir)
        }
    }

    pub fn key_ring_path(&self) -> PathBuf {
        if self.keys.ring.is_absolute() {
            self.keys.ring.clone()
        } else {
            self.data_dir.join(&self.keys.ring)
        }
    }

    pub fn signing_key_path(&self) -> PathBuf {
        if self.keys.signing_key.is_absolute() {
            self.keys.signing_key.clone()
        } else {
            self.data_dir.join(&self.keys.signing_key)
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_listen() -> String {
    "127.0.0.1:8080".to_string()
}
fn default_http_workers() -> usize {
    2
}
fn default_bus_url() -> String {
    "inproc".to_string()
}
fn default_namespace() -> String {
    "elves".to_string()
}
fn default_auth_mode() -> AuthMode {
    AuthMode::Simple
}
fn default_timestamp_window() -> i64 {
    180
}
fn default_signing_key() -> PathBuf {
    PathBuf::from("center.key")
}
fn default_key_id() -> String {
    "center".to_string()
}
fn default_missed_beats() -> u32 {
    3
}
fn default_heartbeat_flush_ms() -> u64 {
    1_000
}
fn default_timeout() -> u32 {
    90
}
fn default_kill_grace() -> u32 {
    5
}
fn default_dispatch_allowance() -> u32 {
    60
}

/// `[cron]`: center-defined crons (API and definition files).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CronConfig {
    /// When false the cron endpoints answer 402.2 and nothing fires.
    #[serde(default = "default_cron_enabled")]
    pub enabled: bool,
    /// Definition files `*.toml`; a relative path is taken as given (from the working directory).
    #[serde(default = "default_cron_dir")]
    pub dir: PathBuf,
    /// The zone rules are read in and API times are shown in (IANA name).
    #[serde(default = "default_cron_time_zone")]
    pub time_zone: String,
    /// A firing missed (no center running) by less than this still runs, once; older ones are
    /// skipped and logged.
    #[serde(default = "default_cron_misfire_threshold_s")]
    pub misfire_threshold_s: u64,
    /// How often each center reloads the crons from the database (changes made through other
    /// centers, firings they claimed).
    #[serde(default = "default_cron_refresh_ms")]
    pub refresh_ms: u64,
    /// Firings are claimed, stored and signed this long before their time, then published on
    /// time.
    #[serde(default = "default_cron_prepare_ahead_ms")]
    pub prepare_ahead_ms: u64,
}

impl Default for CronConfig {
    fn default() -> Self {
        CronConfig {
            enabled: default_cron_enabled(),
            dir: default_cron_dir(),
            time_zone: default_cron_time_zone(),
            misfire_threshold_s: default_cron_misfire_threshold_s(),
            refresh_ms: default_cron_refresh_ms(),
            prepare_ahead_ms: default_cron_prepare_ahead_ms(),
        }
    }
}

impl CronConfig {
    /// The configured zone (`validate` has checked the name).
    pub fn zone(&self) -> chrono_tz::Tz {
        elves_shared::quartz::parse_time_zone(&self.time_zone).unwrap_or(chrono_tz::Tz::UTC)
    }
}

fn default_cron_enabled() -> bool {
    true
}
fn default_cron_dir() -> PathBuf {
    PathBuf::from("config/cron.d")
}
fn default_cron_time_zone() -> String {
    "UTC".to_string()
}
fn default_cron_misfire_threshold_s() -> u64 {
    60
}
fn default_cron_refresh_ms() -> u64 {
    2_000
}
fn default_cron_prepare_ahead_ms() -> u64 {
    1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let env = vec![
            ("ELVES_AUTH__AUTH_ID".to_string(), "admin".to_string()),
            ("ELVES_AUTH__AUTH_KEY".to_string(), "0123456789".to_string()),
        ];
        let config: CenterConfig = elves_shared::config::load(None, env).unwrap();
        config.validate().unwrap();
        assert_eq!(config.rt.default_timeout_s, 90);
        assert_eq!(config.bus.url, "inproc");
        assert_eq!(config.signing_key_path(), PathBuf::from("data/center.key"));
        assert_eq!(config.cron.dir, PathBuf::from("config/cron.d"));
        assert_eq!(config.cron.zone(), chrono_tz::Tz::UTC);
        assert_eq!(config.cron.misfire_threshold_s, 60);
    }

    #[test]
    fn https_needs_both_certificate_and_key_and_sets_the_scheme() {
        let load = |extra: &[(&str, &str)]| {
            let mut env = vec![
                ("ELVES_AUTH__AUTH_ID".to_string(), "admin".to_string()),
                ("ELVES_AUTH__AUTH_KEY".to_string(), "0123456789".to_string()),
            ];
            env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            let config: CenterConfig = elves_shared::config::load(None, env).unwrap();
            config.validate().map(|()| config)
        };
        assert_eq!(load(&[]).unwrap().http.scheme(), "http");
        let https = load(&[
            ("ELVES_HTTP__TLS_CERT", "/etc/elves/center.pem"),
            ("ELVES_HTTP__TLS_KEY", "/etc/elves/center.key"),
        ])
        .unwrap();
        assert_eq!(https.http.scheme(), "https");
        let err = load(&[("ELVES_HTTP__TLS_CERT", "/etc/elves/center.pem")]).unwrap_err();
        assert!(err.to_string().contains("http.tls_key"), "{err}");
        let err = load(&[("ELVES_HTTP__TLS_KEY", "/etc/elves/center.key")]).unwrap_err();
        assert!(err.to_string().contains("http.tls_cert"), "{err}");
    }

    #[test]
    fn the_example_config_at_the_repo_root_parses() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/center.toml");
        let config = CenterConfig::load(Some(&path)).unwrap();
        assert_eq!(config.apps.limits, elves_shared::package::Limits::default());
        assert_eq!(config.auth.mode, AuthMode::Simple);
        let supervisor: CenterConfig = elves_shared::config::load(
            Some(&path),
            vec![("ELVES_AUTH__MODE".to_string(), "supervisor".to_string())],
        )
        .unwrap();
        assert_eq!(supervisor.auth.mode, AuthMode::Supervisor);
    }

    #[test]
    fn the_queue_type_is_classic_unless_set_and_a_wrong_one_is_named() {
        let auth = vec![
            ("ELVES_AUTH__AUTH_ID".to_string(), "admin".to_string()),
            ("ELVES_AUTH__AUTH_KEY".to_string(), "0123456789".to_string()),
        ];
        let default: CenterConfig = elves_shared::config::load(None, auth.clone()).unwrap();
        assert_eq!(
            default.bus.queue_type,
            elves_shared::bus::QueueType::Classic
        );
        let with = |value: &str| {
            let mut env = auth.clone();
            env.push(("ELVES_BUS__QUEUE_TYPE".to_string(), value.to_string()));
            elves_shared::config::load::<CenterConfig, _>(None, env)
        };
        assert_eq!(
            with("quorum").unwrap().bus.queue_type,
            elves_shared::bus::QueueType::Quorum
        );
        let err = with("mirrored").unwrap_err().to_string();
        assert!(err.contains("queue_type"), "{err}");
    }

    #[test]
    fn missing_auth_is_named() {
        let err = elves_shared::config::load::<CenterConfig, _>(None, Vec::new()).unwrap_err();
        assert!(err.to_string().contains("auth"), "{err}");
    }

    #[test]
    fn bad_cron_time_zone_is_named() {
        let env = vec![
            ("ELVES_AUTH__AUTH_ID".to_string(), "admin".to_string()),
            ("ELVES_AUTH__AUTH_KEY".to_string(), "0123456789".to_string()),
            (
                "ELVES_CRON__TIME_ZONE".to_string(),
                "Nowhere/Land".to_string(),
            ),
        ];
        let config: CenterConfig = elves_shared::config::load(None, env).unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("cron.time_zone"), "{err}");
    }

    #[test]
    fn short_key_is_refused() {
        let env = vec![
            ("ELVES_AUTH__AUTH_ID".to_string(), "admin".to_string()),
            ("ELVES_AUTH__AUTH_KEY".to_string(), "short".to_string()),
        ];
        let config: CenterConfig = elves_shared::config::load(None, env).unwrap();
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("auth.auth_key"));
    }

    /// A shell that exported the `elves` client's variables can start a center: they are not
    /// its configuration and change nothing.
    #[test]
    fn the_client_variables_are_ignored() {
        let own = vec![
            ("ELVES_AUTH__AUTH_ID".to_string(), "admin".to_string()),
            ("ELVES_AUTH__AUTH_KEY".to_string(), "0123456789".to_string()),
            ("ELVES_DATA_DIR".to_string(), "/srv/elves".to_string()),
        ];
        let mut with_client = own.clone();
        for name in elves_shared::config::CLIENT_VARIABLES {
            with_client.push((name.to_string(), "http://127.0.0.1:8080".to_string()));
        }
        let expected: CenterConfig = elves_shared::config::load(None, own).unwrap();
        let config: CenterConfig = elves_shared::config::load(None, with_client).unwrap();
        config.validate().unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/srv/elves"));
        assert_eq!(format!("{config:?}"), format!("{expected:?}"));
    }
}
