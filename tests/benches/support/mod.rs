//! What the benches share: settings from the environment, summary statistics, starting a
//! center (in this process or as the release binary) and in-process agents, the signed v2
//! API, figures read from `/proc` and the broker's clean-up; agents as processes
//! ([`agent_processes`]); simulated agents are `elves_shared::sim`. Each bench includes it with
//! `mod support;`.
//!
//! A bench fails loudly on anything unexpected (`expect`, `assert!`): it measures a setup it
//! made itself, and a figure from a broken run is worse than none.

// Each bench uses a part of this module; what one bench leaves unused is not dead.
#![allow(dead_code)]

pub mod agent_processes;
pub mod release_pair;

use elves_agent::{AgentConfig, AgentStats};
use elves_center::config::CenterConfig;
use elves_center::CenterHandle;
use elves_shared::bus::SharedBus;
use elves_shared::sign::{self, SignType};
use elves_shared::time::now_unix_ms;
use elves_shared::wire::AgentId;
use serde_json::Value;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The API credentials every bench's center is configured with.
pub const AUTH_ID: &str = "bench";
pub const AUTH_KEY: &str = "bench-key-0123456789";

/// A shell worker that succeeds with "ok" at once: the platform's own cost without a
/// worker's.
pub const NOOP_WORKER: &str =
    "#!/bin/sh\nprintf '<ElvesWFlag>true</ElvesWFlag><ElvesWResult>ok</ElvesWResult>'\n";

// ---------------------------------------------------------------------------------------------
// Settings

/// True when the bench was only asked to list its tests (`cargo test --benches` does): a bench
/// has none, and must not start measuring.
pub fn listing_only() -> bool {
    std::env::args().any(|arg| arg == "--list")
}

/// `env_logger` at `warn` unless `RUST_LOG` says otherwise; lapin's spans reach `log` as ERROR
/// lines, and `RUST_LOG` must not bring them back.
pub fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .filter_module("tracing::span", log::LevelFilter::Off)
        .init();
}

/// A multi-threaded Tokio runtime with `worker_threads` workers (the machine has 2 cores).
pub fn runtime(worker_threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The number in the variable `name`, or `default` when it is unset or not a number.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

/// As [`env_number`], and `default` for 0 too: for counts that a run cannot do without.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|text| text.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// `ELVES_TEST_AMQP_URL`, by default the local broker.
pub fn amqp_url() -> String {
    std::env::var("ELVES_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

/// `ELVES_TEST_PG_URL`, by default the local server's `test` database.
pub fn pg_url() -> String {
    std::env::var("ELVES_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// The repository's root (its `config/` and `apps/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh bus namespace, so that runs never share queues: `<prefix>-<8 hex digits>`.
pub fn namespace(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

// ---------------------------------------------------------------------------------------------
// Statistics

/// The nearest-rank percentile `pct` (0–100) of `samples`, in any order; 0 when there are none.
pub fn percentile(samples: &[f64], pct: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile_of_sorted(&sorted, pct)
}

fn percentile_of_sorted(sorted: &[f64], pct: f64) -> f64 {
    let rank = ((pct / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted
        .get(rank.min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0)
}

/// The mean of `samples`; 0 when there are none.
pub fn mean(samples: &[f64]) -> f64 {
    samples.iter().sum::<f64>() / samples.len().max(1) as f64
}

/// The figures the benches print of a series of samples.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub count: usize,
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// Summarises `samples`, in any order; all figures are 0 when there are none.
    pub fn of(samples: &[f64]) -> Summary {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Summary {
            count: sorted.len(),
            mean: mean(&sorted),
            p50: percentile_of_sorted(&sorted, 50.0),
            p99: percentile_of_sorted(&sorted, 99.0),
            max: sorted.last().copied().unwrap_or(0.0),
        }
    }
}

/// Milliseconds since `started`, as a sample.
pub fn elapsed_ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------------------
// Center

/// The configuration every bench gives its center, as `ELVES_…` pairs: its data directory,
/// the API credentials and the bus namespace. A bench adds its own (bus URL, database, …).
pub fn center_env(data_dir: &Path, namespace: &str) -> Vec<(String, String)> {
    vec![
        ("ELVES_DATA_DIR".to_string(), data_dir.display().to_string()),
        ("ELVES_AUTH__AUTH_ID".to_string(), AUTH_ID.to_string()),
        ("ELVES_AUTH__AUTH_KEY".to_string(), AUTH_KEY.to_string()),
        ("ELVES_BUS__NAMESPACE".to_string(), namespace.to_string()),
    ]
}

/// The center's configuration from `env` alone (no file), as the binary would read it.
pub fn center_config(env: Vec<(String, String)>) -> CenterConfig {
    elves_shared::config::load(None, env).expect("center config")
}

/// Starts a center in this process on `bus`, listening on a free local port.
pub fn start_center(config: CenterConfig, bus: SharedBus) -> CenterHandle {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    elves_center::start(config, listener, bus).expect("center starts")
}

/// A free local TCP port, for a process that binds it itself.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("free port")
}

/// `name` (`elves-center`, `elves-agent`) in `target/release/` next to this bench
/// (`target/release/deps/…`), when it was built (`scripts/bench` builds them).
pub fn release_binary(name: &str) -> Option<PathBuf> {
    let bin = std::env::current_exe().ok()?.parent()?.parent()?.join(name);
    bin.exists().then_some(bin)
}

/// How long ago `bin` was built: a stale binary measures old code.
pub fn built_ago(bin: &Path) -> String {
    std::fs::metadata(bin)
        .and_then(|meta| meta.modified())
        .ok()
        .and_then(|built| built.elapsed().ok())
        .map_or_else(|| "?".to_string(), |age| format!("{} s", age.as_secs()))
}

/// A child process, killed and reaped when dropped while still running (a bench that
/// panicked), so that nothing outlives the bench.
pub struct ChildProcess(pub std::process::Child);

impl ChildProcess {
    /// True while the process has not exited.
    pub fn running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The release `elves-center` as a child process, its stderr forwarded as `[center] …` lines.
pub struct CenterProcess {
    pub base_url: String,
    pub key_id: String,
    pub public_key_hex: String,
    child: ChildProcess,
    log_forwarder: std::thread::JoinHandle<()>,
}

impl CenterProcess {
    /// Starts `bin --config <root>/config/center.toml` listening on a free port, with `env` on
    /// top of `RUST_LOG` (the bench's own, by default `warn`), and returns once the center
    /// printed its instruction key (it does once it is ready). The bench's own `ELVES_BENCH_…`
    /// variables are removed: the center reads every `ELVES_…` variable as configuration.
    pub fn start(bin: &Path, root: &Path, env: Vec<(String, String)>) -> CenterProcess {
        let port = free_port();
        let mut command = std::process::Command::new(bin);
        command
            .arg("--config")
            .arg(root.join("config/center.toml"))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_string()),
            )
            .envs(env)
            .env("ELVES_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, _) in std::env::vars() {
            if name.starts_with("ELVES_BENCH_") {
                command.env_remove(name);
            }
        }
        let mut child = ChildProcess(command.spawn().expect("elves-center starts"));
        let stderr = child.0.stderr.take().expect("center stderr");
        let mut lines = std::io::BufReader::new(stderr).lines();
        let mut key = None;
        for line in lines.by_ref().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("elves-center: instruction key ") {
                let mut words = rest.split_whitespace();
                key = words
                    .next()
                    .zip(words.next())
                    .map(|(id, hex)| (id.to_string(), hex.to_string()));
                break;
            }
            eprintln!("[center] {line}");
        }
        let (key_id, public_key_hex) = key.expect("the center printed its instruction key");
        // Keep draining stderr: a full pipe would block the center's logging.
        let log_forwarder = std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                eprintln!("[center] {line}");
            }
        });
        CenterProcess {
            base_url: format!("http://127.0.0.1:{port}"),
            key_id,
            public_key_hex,
            child,
            log_forwarder,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// The exit status, when the center has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.0.try_wait().ok().flatten()
    }

    /// Stops the center with SIGINT, as Ctrl-C would, and waits for it (20 s, then SIGKILL).
    pub fn stop(mut self) {
        let pid = i32::try_from(self.child.0.id()).expect("pid");
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.running() {
            if Instant::now() >= deadline {
                eprintln!("center did not stop within 20 s; killing it");
                let _ = self.child.0.kill();
                let _ = self.child.0.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.log_forwarder.join();
    }
}

// ---------------------------------------------------------------------------------------------
// Agents

/// The settings every in-process agent of the benches has: its id, its directories, its
/// heartbeat and the center's key. A bench sets the rest on the result.
pub fn agent_config(
    id: &AgentId,
    apps_dir: PathBuf,
    spool_dir: PathBuf,
    heartbeat_interval_ms: u64,
    center_key_id: &str,
    center_public_key_hex: &str,
) -> AgentConfig {
    let mut config = AgentConfig::new(id.clone());
    config.apps_dir = apps_dir;
    config.spool_dir = spool_dir;
    config.heartbeat_interval_ms = heartbeat_interval_ms;
    config.center.key_id = center_key_id.to_string();
    config.center.public_key = center_public_key_hex.to_string();
    config
}

/// A real agent (`elves_agent::run`) in this process.
pub struct InProcessAgent {
    pub stats: Arc<AgentStats>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcessAgent {
    /// Starts the agent on `bus`, on the current Tokio runtime.
    pub fn spawn(config: AgentConfig, bus: SharedBus) -> InProcessAgent {
        let stats = Arc::new(AgentStats::new());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(elves_agent::run(config, bus, stats.clone(), async move {
            let _ = stopped.await;
        }));
        InProcessAgent { stats, stop, task }
    }
}

/// Asks every agent to stop, then waits for each (40 s at most), saying how one ended badly.
pub async fn stop_agents(agents: Vec<InProcessAgent>) {
    let mut tasks = Vec::with_capacity(agents.len());
    for agent in agents {
        let _ = agent.stop.send(());
        tasks.push(agent.task);
    }
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(40), task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => eprintln!("agent ended with an error: {err:#}"),
            Ok(Err(err)) => eprintln!("agent task failed: {err}"),
            Err(_) => eprintln!("agent did not stop within 40 s"),
        }
    }
}

/// `<apps_dir>/noop/app-worker`: the [`NOOP_WORKER`].
pub fn install_noop_app(apps_dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let app_dir = apps_dir.join("noop");
    std::fs::create_dir_all(&app_dir).expect("app dir");
    let worker = app_dir.join("app-worker");
    std::fs::write(&worker, NOOP_WORKER).expect("worker file");
    std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o755)).expect("worker mode");
}

// ---------------------------------------------------------------------------------------------
// The broker

/// Removes what a run left on the broker: the durable queues of the center and the agents, and
/// the namespace's exchange.
pub async fn delete_broker_objects(amqp: &str, namespace: &str, agents: &[AgentId]) {
    let agents: Vec<String> = agents.iter().map(ToString::to_string).collect();
    elves_shared::bus::testing::delete_namespace(amqp, namespace, &agents).await;
}

// ---------------------------------------------------------------------------------------------
// The signed API

/// The signed v2 API of a center under test, as an ordinary client calls it.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base_url: String,
    sign_type: SignType,
}

impl Api {
    /// Calls signed with MD5, as most clients sign them.
    pub fn new(base_url: String) -> Api {
        Api {
            http: reqwest::Client::new(),
            base_url,
            sign_type: SignType::Md5,
        }
    }

    pub fn with_sign_type(mut self, sign_type: SignType) -> Api {
        self.sign_type = sign_type;
        self
    }

    /// `params` with `auth_id`, `timestamp` and the signature for `path` added.
    pub fn signed(&self, path: &str, params: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = params
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        pairs.push(("auth_id".to_string(), AUTH_ID.to_string()));
        pairs.push(("timestamp".to_string(), (now_unix_ms() / 1000).to_string()));
        sign::sign_params(path, pairs, self.sign_type, AUTH_KEY)
    }

    /// `POST /api/v2/<endpoint>` with `params` signed as a form; the whole answer.
    pub async fn call(&self, endpoint: &str, params: &[(&str, &str)]) -> Value {
        let path = format!("/api/v2/{endpoint}");
        let signed = self.signed(&path, params);
        self.http
            .post(format!("{}{path}", self.base_url))
            .form(&signed)
            .send()
            .await
            .expect("http call")
            .json()
            .await
            .expect("json answer")
    }

    /// As [`Api::call`], and fails the bench unless the call succeeded; its `result`.
    pub async fn ok(&self, endpoint: &str, params: &[(&str, &str)]) -> Value {
        let answer = self.call(endpoint, params).await;
        assert_eq!(answer["flag"], "true", "{endpoint} failed: {answer}");
        answer["result"].clone()
    }

    /// `GET <path>` (unsigned: `/healthz`, `/metrics`).
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base_url))
            .send()
            .await
            .expect("http call")
    }
}

// ---------------------------------------------------------------------------------------------
// /proc

/// A `kB` figure of `/proc/<pid>/status`, e.g. `VmRSS:`, `VmHWM:`, `RssAnon:`.
/// Until each agent answers an RT call of the no-op app (at most 30 s).
pub async fn wait_answering(api: &Api, agents: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for agent in agents {
        loop {
            let answer = api
                .call(
                    "rt/exec",
                    &[("ip", agent), ("app", "noop"), ("func", "run")],
                )
                .await;
            if answer["flag"] == "true" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "agent {agent} never answered: {answer}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|line| line.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of this process so far, in clock ticks.
pub fn process_cpu_ticks() -> u64 {
    stat_ticks(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default())
}

/// utime + stime of this process's threads whose name starts with `prefix`, in clock ticks.
pub fn thread_cpu_ticks(prefix: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .map(|name| name.trim().starts_with(prefix))
                .unwrap_or(false)
        })
        .map(|task| {
            stat_ticks(&std::fs::read_to_string(task.path().join("stat")).unwrap_or_default())
        })
        .sum()
}

/// Clock ticks per second (`_SC_CLK_TCK`), the unit of the CPU figures above.
pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// utime + stime (fields 14 and 15) of a `stat` file, in clock ticks.
fn stat_ticks(text: &str) -> u64 {
    // The command name (field 2) may hold spaces; fields are counted after its ')'.
    let after = text.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(14) + field(15)
}
