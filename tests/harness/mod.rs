//! `TestEnv`: a center and agents started in-process, each test in its own bus namespace and
//! temp directory, so tests run in parallel on one broker.

#![allow(dead_code)] // not every test module uses every helper

pub mod browser;
pub mod rabbit_node;

use elves_agent::{AgentConfig, AgentStats};
use elves_center::config::CenterConfig;
use elves_center::CenterHandle;
use elves_shared::bus::{self, SharedBus};
use elves_shared::sign::{self, SignType};
use elves_shared::wire::AgentId;
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const AUTH_ID: &str = "tester";
pub const AUTH_KEY: &str = "test-key-0123456789";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusKind {
    InProc,
    Rabbit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    Postgres,
}

/// Which bus and which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    pub bus: BusKind,
    pub db: DbKind,
}

/// The PostgreSQL server of the PostgreSQL runs; required like the broker.
pub fn pg_url() -> String {
    std::env::var("ELVES_TEST_PG_URL").unwrap_or_else(|_| {
        panic!("ELVES_TEST_PG_URL must be set for the PostgreSQL runs (scripts/test sets it)")
    })
}

/// Generates one test per setup (in-process bus + SQLite, RabbitMQ + SQLite,
/// RabbitMQ + PostgreSQL) for each async fn `name(Setup)` listed.
#[macro_export]
macro_rules! on_every_setup {
    ($($name:ident),* $(,)?) => {
        mod inproc_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    use $crate::harness::{BusKind, DbKind, Setup};
                    super::$name(Setup { bus: BusKind::InProc, db: DbKind::Sqlite }).await
                }
            )*
        }
        mod rabbit_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    use $crate::harness::{BusKind, DbKind, Setup};
                    super::$name(Setup { bus: BusKind::Rabbit, db: DbKind::Sqlite }).await
                }
            )*
        }
        mod rabbit_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    use $crate::harness::{BusKind, DbKind, Setup};
                    super::$name(Setup { bus: BusKind::Rabbit, db: DbKind::Postgres }).await
                }
            )*
        }
    };
}

/// The broker of the RabbitMQ runs. Required: a run that cannot reach RabbitMQ fails loudly
/// rather than skipping (`scripts/test` sets it).
pub fn amqp_url() -> String {
    std::env::var("ELVES_TEST_AMQP_URL").unwrap_or_else(|_| {
        panic!("ELVES_TEST_AMQP_URL must be set for the RabbitMQ runs (scripts/test sets it)")
    })
}

/// Generates one test per bus for each async fn `name(BusKind)` listed.
#[macro_export]
macro_rules! on_both_buses {
    ($($name:ident),* $(,)?) => {
        mod inproc {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::harness::BusKind::InProc).await
                }
            )*
        }
        mod rabbit {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::harness::BusKind::Rabbit).await
                }
            )*
        }
    };
}

/// An agent run in this process until stopped: a TestEnv's, or one of a test's own on a bus
/// of its own (a private broker node).
pub struct TestAgent {
    pub stats: Arc<AgentStats>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestAgent {
    pub fn spawn(config: AgentConfig, bus: SharedBus) -> TestAgent {
        let stats = Arc::new(AgentStats::new());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(elves_agent::run(config, bus, stats.clone(), async move {
            let _ = stopped.await;
        }));
        TestAgent {
            stats,
            stop: Some(stop),
            task,
        }
    }

    /// Asks it to stop and waits until it has, cleanly, within `within`.
    pub async fn stop(mut self, within: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(within, &mut self.task)
            .await
            .expect("the agent stops in time")
            .unwrap()
            .unwrap();
    }
}

pub struct TestEnv {
    pub kind: BusKind,
    pub setup: Setup,
    pub namespace: String,
    pub bus: SharedBus,
    pub center: Option<CenterHandle>,
    pub base_url: String,
    pub dir: tempfile::TempDir,
    pub agents: BTreeMap<String, TestAgent>,
    http: reqwest::Client,
    pub key_id: String,
    pub public_key_hex: String,
    /// A center running as a child process (the durability tests), instead of `center`.
    pub child_center: Option<std::process::Child>,
    /// The database the center was configured with (`database` unless a test moved it, e.g.
    /// to a private PostgreSQL cluster).
    pub center_database_url: String,
    /// Dropped after the center (field order): the database outlives its users.
    pub database: elves_center::store::testing::TestDatabase,
}

impl TestEnv {
    pub async fn start(kind: BusKind) -> TestEnv {
        Self::start_with(Setup {
            bus: kind,
            db: DbKind::Sqlite,
        })
        .await
    }

    pub async fn start_with(setup: Setup) -> TestEnv {
        Self::start_configured(setup, |_| {}).await
    }

    /// Like `start_with`, with the center's configuration adjusted by `configure` first.
    pub async fn start_configured(
        setup: Setup,
        configure: impl FnOnce(&mut CenterConfig),
    ) -> TestEnv {
        let kind = setup.bus;
        let namespace = format!("elves-test-{:016x}", rand::random::<u64>());
        let bus = Self::open_bus(kind, &namespace);
        let dir = tempfile::tempdir().unwrap();
        let database = match setup.db {
            DbKind::Sqlite => elves_center::store::testing::TestDatabase::sqlite().unwrap(),
            DbKind::Postgres => {
                elves_center::store::testing::TestDatabase::postgres(&pg_url()).unwrap()
            }
        };
        let mut config = center_config(dir.path(), &kind, &namespace, &database.url);
        configure(&mut config);
        let center_database_url = config.database.url.clone();
        let center = start_center(config, bus.clone()).await;
        let base_url = format!("http://{}", center.http_addr);
        let (key_id, public_key_hex) = (center.key_id.clone(), center.public_key_hex.clone());
        TestEnv {
            kind,
            setup,
            namespace,
            bus,
            center: Some(center),
            base_url,
            dir,
            agents: BTreeMap::new(),
            http: reqwest::Client::new(),
            key_id,
            public_key_hex,
            child_center: None,
            center_database_url,
            database,
        }
    }

    /// Like `start_with`, but the center is the `elves center` binary in a child process, so
    /// that a test can kill it with SIGKILL. RabbitMQ only: the in-process bus dies with its
    /// process.
    pub async fn start_with_child_center(setup: Setup) -> TestEnv {
        assert_eq!(setup.bus, BusKind::Rabbit);
        let namespace = format!("elves-test-{:016x}", rand::random::<u64>());
        let bus = Self::open_bus(setup.bus, &namespace);
        let dir = tempfile::tempdir().unwrap();
        let database = match setup.db {
            DbKind::Sqlite => elves_center::store::testing::TestDatabase::sqlite().unwrap(),
            DbKind::Postgres => {
                elves_center::store::testing::TestDatabase::postgres(&pg_url()).unwrap()
            }
        };
        // The key exists before the center starts, so that agents can be configured from it.
        let signer = elves_shared::crypto::InstructionSigner::load_or_create(
            "center",
            &dir.path().join("center.key"),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut env = TestEnv {
            kind: setup.bus,
            setup,
            namespace,
            bus,
            center: None,
            base_url: format!("http://127.0.0.1:{port}"),
            dir,
            agents: BTreeMap::new(),
            http: reqwest::Client::new(),
            key_id: signer.key_id().to_string(),
            public_key_hex: signer.public_key_hex(),
            child_center: None,
            center_database_url: database.url.clone(),
            database,
        };
        env.start_child_center().await;
        env
    }

    /// (Re)starts the child center on the same port, data directory, bus and database.
    pub async fn start_child_center(&mut self) {
        let port = self.base_url.rsplit(':').next().unwrap().to_string();
        let config_path = self.dir.path().join("center.toml");
        let toml = format!(
            "data_dir = {data:?}\n[http]\nlisten = \"127.0.0.1:{port}\"\nworkers = 1\n\
             [bus]\nurl = {bus:?}\nnamespace = {ns:?}\n[auth]\nauth_id = {id:?}\nauth_key = {key:?}\n\
             [database]\nurl = {db:?}\n[queue]\ntick_ms = 100\nresult_grace_ms = 500\n[rt]\ndispatch_allowance_s = 5\n\
             [cron]\ndir = {cron_dir:?}\n",
            data = self.dir.path().display().to_string(),
            cron_dir = self.dir.path().join("cron.d").display().to_string(),
            bus = amqp_url(),
            ns = self.namespace,
            id = AUTH_ID,
            key = AUTH_KEY,
            db = self.database.url,
        );
        std::fs::write(&config_path, toml).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_elves"))
            .arg("center")
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child_center = Some(child);
        wait_until("child center answers", Duration::from_secs(30), || async {
            self.http
                .get(format!("{}/healthz", self.base_url))
                .send()
                .await
                .is_ok()
        })
        .await;
    }

    /// SIGKILL: no shutdown code of the center runs.
    pub fn kill_child_center(&mut self) {
        let mut child = self.child_center.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// The configuration of this env's center (same bus namespace, database and key), for a
    /// second center or a restart.
    pub fn config(&self) -> CenterConfig {
        center_config(
            self.dir.path(),
            &self.kind,
            &self.namespace,
            &self.database.url,
        )
    }

    fn open_bus(kind: BusKind, namespace: &str) -> SharedBus {
        match kind {
            BusKind::InProc => bus::open("inproc", namespace).unwrap(),
            BusKind::Rabbit => bus::open(&amqp_url(), namespace).unwrap(),
        }
    }

    /// A bus for another process-like participant: the same one in-process, a new connection
    /// on RabbitMQ with the small frames an agent process asks for.
    pub fn participant_bus(&self) -> SharedBus {
        match self.kind {
            BusKind::InProc => self.bus.clone(),
            BusKind::Rabbit => {
                let url = bus::with_frame_max(&amqp_url(), elves_agent::config::DEFAULT_FRAME_MAX);
                bus::open(&url, &self.namespace).unwrap()
            }
        }
    }

    pub fn center(&self) -> &CenterHandle {
        self.center.as_ref().unwrap()
    }

    /// The default agent config of the tests: fast heartbeats, the repo's apptest and the test
    /// app `elvestest` installed in a private apps dir.
    pub fn agent_config(&self, id: &str) -> AgentConfig {
        let mut config = AgentConfig::new(AgentId::parse(id).unwrap());
        config.ip = format!("ip-{id}");
        let apps_dir = self.dir.path().join(format!("apps-{id}"));
        install_test_apps(&apps_dir);
        config.apps_dir = apps_dir;
        config.spool_dir = self.dir.path().join(format!("spool-{id}"));
        config.heartbeat_interval_ms = 200;
        config.exec.kill_grace_ms = 500;
        config.center.key_id = self.key_id.clone();
        config.center.public_key = self.public_key_hex.clone();
        config
    }

    pub async fn start_agent(&mut self, id: &str) {
        let config = self.agent_config(id);
        self.start_agent_with(config).await;
    }

    pub async fn start_agent_with(&mut self, config: AgentConfig) {
        let id = config.id.to_string();
        let agent = TestAgent::spawn(config, self.participant_bus());
        self.agents.insert(id.clone(), agent);
        self.wait_online(&id).await;
    }

    pub async fn stop_agent(&mut self, id: &str) {
        let agent = self.agents.remove(id).unwrap();
        agent.stop(Duration::from_secs(20)).await;
    }

    pub fn stats(&self, id: &str) -> elves_agent::stats::StatsSnapshot {
        self.agents[id].stats.snapshot()
    }

    pub async fn healthz(&self) -> Value {
        self.http
            .get(format!("{}/healthz", self.base_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base_url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn is_online(&self, id: &str) -> bool {
        let health = self.healthz().await;
        health["heartbeat"]["online"].get(id).is_some()
    }

    /// Waits until the center counts agent `id` online and has written its row: presence is
    /// in memory at once, the row follows within `heartbeat.flush_ms`, and the cron API still
    /// resolves an agent's ip from the table (FIXME: issue 15, resolve from presence).
    pub async fn wait_online(&self, id: &str) {
        wait_until(
            &format!("agent {id} online"),
            Duration::from_secs(20),
            || async { self.is_online(id).await },
        )
        .await;
        let store = elves_center::store::Store::open(&self.center_database_url).unwrap();
        wait_until(
            &format!("agent {id}'s row written"),
            Duration::from_secs(20),
            || {
                let stored = store.get_agent_by_ip_or_id(id).unwrap().is_some();
                async move { stored }
            },
        )
        .await;
    }

    pub async fn wait_offline(&self, id: &str) {
        wait_until(
            &format!("agent {id} offline"),
            Duration::from_secs(20),
            || async { !self.is_online(id).await },
        )
        .await;
    }

    /// Waits until the center has stored `count` heartbeats of agent `id` that arrived after
    /// this call. The center hands a heartbeat on (to compare the agent's apps with what it
    /// should have) before its row is written.
    pub async fn wait_heartbeats(&self, id: &str, count: usize) {
        let store = elves_center::store::Store::open(&self.database.url).unwrap();
        let since = elves_shared::time::now_unix_ms();
        let mut seen = std::collections::BTreeSet::new();
        wait_until(
            &format!("{count} heartbeats of agent {id}"),
            Duration::from_secs(20),
            || {
                let stored = store.get_agent_by_ip_or_id(id).unwrap();
                if let Some(at) = stored.map(|row| row.last_heartbeat_at) {
                    if at > since {
                        seen.insert(at);
                    }
                }
                let n_seen = seen.len();
                async move { n_seen >= count }
            },
        )
        .await;
    }

    /// A v2 call signed with MD5, as an ordinary client makes it.
    pub async fn call(&self, endpoint: &str, params: &[(&str, &str)]) -> Value {
        self.call_signed(endpoint, params, SignType::Md5).await
    }

    pub async fn call_signed(
        &self,
        endpoint: &str,
        params: &[(&str, &str)],
        sign_type: SignType,
    ) -> Value {
        let path = format!("/api/v2/{endpoint}");
        let mut pairs: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        pairs.push(("auth_id".into(), AUTH_ID.into()));
        pairs.push(("timestamp".into(), unix_now_s().to_string()));
        let signed = sign::sign_params(&path, pairs, sign_type, AUTH_KEY);
        self.post_form(&path, &signed).await
    }

    /// Sends exactly these parameters (no signing added), by POST form.
    pub async fn post_form(&self, path: &str, pairs: &[(String, String)]) -> Value {
        self.http
            .post(format!("{}{path}", self.base_url))
            .form(pairs)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Sends exactly these parameters in the query string of a GET.
    pub async fn get_query(&self, path: &str, pairs: &[(String, String)]) -> Value {
        self.http
            .get(format!("{}{path}", self.base_url))
            .query(pairs)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        for agent in self.agents.values_mut() {
            if let Some(stop) = agent.stop.take() {
                let _ = stop.send(());
            }
        }
        if let Some(mut child) = self.child_center.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(center) = self.center.take() {
            // Stopping blocks on the center's own thread; keep it off the test's runtime.
            let _ = std::thread::spawn(move || center.stop()).join();
        }
        if matches!(self.kind, BusKind::Rabbit) {
            let namespace = self.namespace.clone();
            let agents: Vec<String> = self.agents.keys().cloned().collect();
            let _ = std::thread::spawn(move || delete_broker_objects(&namespace, &agents)).join();
        }
    }
}

/// Removes the durable queues a test's center and agents declared, and the namespace's
/// exchange, so that repeated runs do not pile them up on the shared broker. Best effort: a
/// queue a test declared under another name stays.
fn delete_broker_objects(namespace: &str, agents: &[String]) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    runtime.block_on(elves_shared::bus::testing::delete_namespace(
        &amqp_url(),
        namespace,
        agents,
    ));
}

/// Starts a center on its own thread (its start blocks briefly).
pub async fn start_center(config: CenterConfig, bus: SharedBus) -> CenterHandle {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    tokio::task::spawn_blocking(move || elves_center::start(config, listener, bus))
        .await
        .unwrap()
        .unwrap()
}

pub fn center_config(
    data_dir: &Path,
    kind: &BusKind,
    namespace: &str,
    database_url: &str,
) -> CenterConfig {
    let url = match kind {
        BusKind::InProc => "inproc".to_string(),
        BusKind::Rabbit => amqp_url(),
    };
    let env = vec![
        ("ELVES_DATA_DIR".to_string(), data_dir.display().to_string()),
        ("ELVES_AUTH__AUTH_ID".to_string(), AUTH_ID.to_string()),
        ("ELVES_AUTH__AUTH_KEY".to_string(), AUTH_KEY.to_string()),
        ("ELVES_BUS__URL".to_string(), url),
        ("ELVES_BUS__NAMESPACE".to_string(), namespace.to_string()),
        ("ELVES_HTTP__WORKERS".to_string(), "1".to_string()),
        ("ELVES_DATABASE__URL".to_string(), database_url.to_string()),
        // Fast rounds keep the tests quick; production uses the defaults.
        ("ELVES_QUEUE__TICK_MS".to_string(), "100".to_string()),
        // Short deadlines so that the lost-task tests finish in seconds.
        (
            "ELVES_RT__DISPATCH_ALLOWANCE_S".to_string(),
            "5".to_string(),
        ),
        (
            "ELVES_QUEUE__RESULT_GRACE_MS".to_string(),
            "500".to_string(),
        ),
        // Each test's own cron definition files; quick refreshes for the multi-center tests.
        (
            "ELVES_CRON__DIR".to_string(),
            data_dir.join("cron.d").display().to_string(),
        ),
        ("ELVES_CRON__REFRESH_MS".to_string(), "300".to_string()),
        // Agent rows written soon after each heartbeat, for the tests that read them.
        ("ELVES_HEARTBEAT__FLUSH_MS".to_string(), "50".to_string()),
    ];
    let config: CenterConfig = elves_shared::config::load(None, env).unwrap();
    config.validate().unwrap();
    config
}

pub fn unix_now_s() -> i64 {
    chrono::Utc::now().timestamp()
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Copies `apps/apptest` and `tests/apps/elvestest` into `apps_dir` (permissions kept).
pub fn install_test_apps(apps_dir: &Path) {
    let root = repo_root();
    copy_dir(&root.join("apps/apptest"), &apps_dir.join("apptest"));
    copy_dir(
        &root.join("tests/apps/elvestest"),
        &apps_dir.join("elvestest"),
    );
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            if entry.file_name() != "__pycache__" {
                copy_dir(&entry.path(), &target);
            }
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Polls `condition` until it holds; fails the test naming `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if condition().await {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `error` code of a v2 answer: `[414.1]…` → `414.1`, or "" on success.
pub fn error_code(answer: &Value) -> String {
    let error = answer["error"].as_str().unwrap_or_default();
    error
        .strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .map(|(code, _)| code.to_string())
        .unwrap_or_default()
}
