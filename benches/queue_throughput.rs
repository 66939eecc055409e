//! Queue throughput and the center's peak memory (not a test: it prints figures).
//!
//! One queue of `ELVES_BENCH_TASKS` (default 10,000) tasks of a no-op app, spread round-robin
//! over `ELVES_BENCH_AGENTS` (default 100) agents, over RabbitMQ (`ELVES_TEST_AMQP_URL`), in four
//! runs: {SQLite, PostgreSQL (`ELVES_TEST_PG_URL`)} × {real agents, simulated agents}.
//!
//! - Real agents: `elves_agent::run` in this process, one bus connection each, each spawning
//!   the shell worker `noop/app-worker` for every task.
//! - Simulated agents: light agents in this process that speak the real protocol without
//!   spawning (consume `<ns>.agent.<id>`, verify the Ed25519 signature, decode the instruction,
//!   publish a `JobResult` to `center.result`, ack; heartbeat every second), ten agents per bus
//!   connection. They measure the center, not the host's fork/exec rate.
//!
//! Tasks are added through the signed HTTP API (`queue/create`, `queue/addtask` with 16 calls
//! in flight), then `queue/commit`; the clock starts just before the commit is sent and stops
//! at the last task's `finished_at` as stored by the center. Completion is polled every 500 ms
//! straight from the database (`Store::queue_tasks`), which also gives the dispatch times.
//!
//! The center is the release binary `elves-center` as a child process when it exists next to
//! this bench (`scripts/bench` builds it), so that its peak RSS (VmHWM) is its own; otherwise,
//! or with `ELVES_BENCH_CENTER=inproc`, it runs in this process (`elves_center::start`) and the
//! peak is this whole process's (center and agents), reported next to the baseline before the
//! center started; `ELVES_BENCH_CENTER=<path>` runs another build of the center (e.g. one with
//! debug info, for `perf`). `ELVES_QUEUE__*`, `ELVES_HTTP__*` and `ELVES_RT__*` variables reach
//! the center.
//!
//! Run: `scripts/bench` (or `cargo bench --bench queue_throughput`); extra arguments select
//! runs by name, e.g. `cargo bench --bench queue_throughput -- sqlite-simulated`.
//! Diagnostics run only when named: `-- timings` times the center's store calls (add, claim,
//! record a result; alone and from 8 threads) on both databases and its bus publishes (signed,
//! one at a time and 500 at once, as a dispatch round sends them).

use elves_agent::{AgentConfig, AgentStats};
use elves_center::store::testing::TestDatabase;
use elves_center::store::{Store, TaskRow, TaskStatus};
use elves_shared::bus::{self, BusMessage, Delivery, Destination, QueueSpec, SharedBus};
use elves_shared::crypto::InstructionVerifier;
use elves_shared::sign::{self, SignType};
use elves_shared::time::now_unix_ms;
use elves_shared::wire::{self, kind, routing, AgentId, Heartbeat, Instruction, JobResult, TaskId};
use futures::StreamExt;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;

const AUTH_ID: &str = "bench";
const AUTH_KEY: &str = "bench-key-0123456789";
/// `queue/addtask` calls in flight while the queue is filled.
const ADD_CONCURRENCY: usize = 16;
/// How often the database is asked whether the queue is done.
const POLL: Duration = Duration::from_millis(500);
/// The run fails when no task settles for this long.
const STALL: Duration = Duration::from_secs(60);
const HEARTBEAT_MS: u64 = 1000;
/// Simulated agents share bus connections, this many agents each.
const SIM_AGENTS_PER_CONNECTION: usize = 10;
/// The consumer prefetch of a simulated agent: the real agent's default (2 × 32 workers).
const SIM_PREFETCH: u16 = 64;
const NOOP_WORKER: &str =
    "#!/bin/sh\nprintf '<ElvesWFlag>true</ElvesWFlag><ElvesWResult>ok</ElvesWResult>'\n";

const TARGET_REAL_TASKS_S: f64 = 1500.0;
const TARGET_SIMULATED_TASKS_S: f64 = 5000.0;
const TARGET_CENTER_RSS_MIB: f64 = 200.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Db {
    Sqlite,
    Postgres,
}

impl Db {
    fn name(self) -> &'static str {
        match self {
            Db::Sqlite => "sqlite",
            Db::Postgres => "postgres",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AgentKind {
    Real,
    Simulated,
}

impl AgentKind {
    fn name(self) -> &'static str {
        match self {
            AgentKind::Real => "real",
            AgentKind::Simulated => "simulated",
        }
    }

    fn target(self) -> f64 {
        match self {
            AgentKind::Real => TARGET_REAL_TASKS_S,
            AgentKind::Simulated => TARGET_SIMULATED_TASKS_S,
        }
    }
}

struct Settings {
    tasks: usize,
    agents: usize,
    amqp: String,
    pg_url: String,
    root: PathBuf,
    /// The release `elves-center` to run as a child process; `None` runs it in-process.
    center_bin: Option<PathBuf>,
}

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        // `cargo test --benches` lists benches; there is nothing to list as a test.
        return;
    }
    // lapin's spans reach `log` as ERROR lines; RUST_LOG must not bring them back.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .filter_module("tracing::span", log::LevelFilter::Off)
        .init();
    let number = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|text| text.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(default)
    };
    let settings = Settings {
        tasks: number("ELVES_BENCH_TASKS", 10_000),
        agents: number("ELVES_BENCH_AGENTS", 100),
        amqp: std::env::var("ELVES_TEST_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string()),
        pg_url: std::env::var("ELVES_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string()),
        root: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        center_bin: center_binary(),
    };
    // Arguments that are not flags select runs by name, as `cargo bench -- <filter>` does.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    println!(
        "queue throughput: one queue of {} no-op tasks over {} agents, RabbitMQ, {} cpu(s)",
        settings.tasks,
        settings.agents,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    match &settings.center_bin {
        Some(bin) => println!(
            "center: child process {} (built {} ago; peak RSS = its VmHWM)",
            bin.display(),
            std::fs::metadata(bin)
                .and_then(|meta| meta.modified())
                .ok()
                .and_then(|built| built.elapsed().ok())
                .map_or_else(|| "?".to_string(), |age| format!("{} s", age.as_secs()))
        ),
        None => println!(
            "center: in-process (elves_center::start; peak RSS = this whole process's VmHWM, \
             agents included)"
        ),
    }
    println!(
        "targets: >= {TARGET_REAL_TASKS_S:.0} tasks/s real agents, >= \
         {TARGET_SIMULATED_TASKS_S:.0} tasks/s simulated, center peak RSS < \
         {TARGET_CENTER_RSS_MIB:.0} MiB"
    );
    let mut lines = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    for db in [Db::Sqlite, Db::Postgres] {
        for agents in [AgentKind::Real, AgentKind::Simulated] {
            let name = format!("{}-{}", db.name(), agents.name());
            if !filters.is_empty() && !filters.iter().any(|filter| name.contains(filter.as_str())) {
                continue;
            }
            let figures = runtime.block_on(run(&settings, db, agents));
            let line = figures.line();
            println!("{line}");
            println!("    {}", figures.details());
            for problem in &figures.problems {
                println!("    CHECK FAILED: {problem}");
                failed.push(format!("{name}: {problem}"));
            }
            lines.push(line);
        }
    }
    // Opt-in diagnostics, only when named (`-- timings`, `-- sqlite-store-timings`, …): where
    // the center's time goes, measured on its store and bus calls directly.
    for db in [Db::Sqlite, Db::Postgres] {
        let name = format!("{}-store-timings", db.name());
        if filters
            .iter()
            .any(|filter| filter.contains("timings") && name.contains(filter.as_str()))
        {
            runtime.block_on(store_timings(&settings, db));
        }
    }
    if filters
        .iter()
        .any(|filter| "bus-timings".contains(filter.as_str()))
    {
        runtime.block_on(bus_timings(&settings));
    }
    if lines.len() > 1 {
        println!("summary:");
        for line in &lines {
            println!("{line}");
        }
    }
    // The figures are printed first; then a run that lost, repeated or failed a task fails.
    assert!(failed.is_empty(), "checks failed:\n{}", failed.join("\n"));
}

/// `target/release/elves-center` next to this bench (`target/release/deps/…`);
/// `ELVES_BENCH_CENTER=inproc` runs the center in this process instead, and
/// `ELVES_BENCH_CENTER=<path>` runs that binary (e.g. a build with debug info, for `perf`).
fn center_binary() -> Option<PathBuf> {
    match std::env::var("ELVES_BENCH_CENTER") {
        Ok(mode) if mode == "inproc" => return None,
        Ok(path) if !path.is_empty() => return Some(PathBuf::from(path)),
        _ => {}
    }
    let bin = std::env::current_exe()
        .ok()?
        .parent()?
        .parent()?
        .join("elves-center");
    bin.exists().then_some(bin)
}

/// What one run measured.
struct Figures {
    db: Db,
    agents_kind: AgentKind,
    tasks: usize,
    agents: usize,
    /// Filling the queue through the API.
    add_seconds: f64,
    /// Commit → the last task's `finished_at`.
    seconds: f64,
    /// Commit → the first and the last claim (`dispatched_at`).
    first_dispatch_ms: u64,
    last_dispatch_ms: u64,
    /// Commit → the agents had published every result.
    agents_done_ms: Option<u64>,
    /// Commit → the poll that saw the queue done.
    observed_ms: u64,
    /// Results the center applied (`elves_tasks_total`), and what the agents ran and published.
    center_results: u64,
    ran: u64,
    published: u64,
    rss: Rss,
    /// What the checks found wrong; empty when every task ran once and succeeded.
    problems: Vec<String>,
}

enum Rss {
    Process { peak_kib: u64 },
    InProcess { baseline_kib: u64, peak_kib: u64 },
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl Figures {
    fn tasks_per_s(&self) -> f64 {
        self.tasks as f64 / self.seconds.max(1e-6)
    }

    fn line(&self) -> String {
        let target = self.agents_kind.target();
        let rate = self.tasks_per_s();
        let rss = match self.rss {
            Rss::Process { peak_kib } => format!(
                "center peak RSS {:6.1} MiB ({}; child process)",
                mib(peak_kib),
                verdict(mib(peak_kib) < TARGET_CENTER_RSS_MIB)
            ),
            Rss::InProcess {
                baseline_kib,
                peak_kib,
            } => format!(
                "process peak RSS {:6.1} MiB, baseline {:.1} MiB ({}; in-process, agents included)",
                mib(peak_kib),
                mib(baseline_kib),
                verdict(mib(peak_kib) < TARGET_CENTER_RSS_MIB)
            ),
        };
        format!(
            "{:<8} {:<9} agents: tasks {:>6}  agents {:>4}  {:>7.2} s  {:>7.0} tasks/s \
             (target >= {target:.0}: {})  {rss}",
            self.db.name(),
            self.agents_kind.name(),
            self.tasks,
            self.agents,
            self.seconds,
            rate,
            verdict(rate >= target),
        )
    }

    fn details(&self) -> String {
        let agents_done = self.agents_done_ms.map_or_else(
            || "-".to_string(),
            |ms| format!("+{:.2} s", ms as f64 / 1000.0),
        );
        format!(
            "adding the tasks took {:.2} s ({:.0}/s); after commit: first claim +{:.3} s, last \
             claim +{:.2} s, agents published every result {agents_done}, last result stored \
             +{:.2} s, seen by the poll +{:.2} s; center applied {} results, agents ran {} and \
             published {}",
            self.add_seconds,
            self.tasks as f64 / self.add_seconds.max(1e-6),
            self.first_dispatch_ms as f64 / 1000.0,
            self.last_dispatch_ms as f64 / 1000.0,
            self.seconds,
            self.observed_ms as f64 / 1000.0,
            self.center_results,
            self.ran,
            self.published,
        )
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

async fn run(settings: &Settings, db: Db, agents_kind: AgentKind) -> Figures {
    let name = format!("{}-{}", db.name(), agents_kind.name());
    eprintln!("[{name}] starting");
    let dir = tempfile::tempdir().expect("temp dir");
    let namespace = format!("elves-bench-q-{:08x}", rand::random::<u32>());
    let pg_url = settings.pg_url.clone();
    let database = tokio::task::spawn_blocking(move || match db {
        Db::Sqlite => TestDatabase::sqlite(),
        Db::Postgres => TestDatabase::postgres(&pg_url),
    })
    .await
    .expect("database task")
    .expect("fresh database (is PostgreSQL up? scripts/services.sh starts it)");

    let center = {
        let (amqp, namespace, url) = (
            settings.amqp.clone(),
            namespace.clone(),
            database.url.clone(),
        );
        let (data_dir, root, bin) = (
            dir.path().join("center"),
            settings.root.clone(),
            settings.center_bin.clone(),
        );
        tokio::task::spawn_blocking(move || {
            RunningCenter::start(bin, &root, &data_dir, &amqp, &namespace, &url)
        })
        .await
        .expect("center start task")
    };
    let api = Api {
        http: reqwest::Client::new(),
        base: center.base_url.clone(),
    };

    let agent_ids: Vec<AgentId> = (0..settings.agents)
        .map(|n| AgentId::parse(&format!("bench-{n:04}")).expect("agent id"))
        .collect();
    let agents = match agents_kind {
        AgentKind::Real => {
            Agents::start_real(settings, &center, &namespace, dir.path(), &agent_ids)
        }
        AgentKind::Simulated => {
            Agents::start_simulated(settings, &center, &namespace, &agent_ids).await
        }
    };
    api.wait_online(settings.agents).await;
    eprintln!("[{name}] {} agents online", settings.agents);

    // Fill the queue through the API.
    let queue_id = api
        .ok("queue/create", &[("app", "noop")])
        .await
        .get("id")
        .and_then(Value::as_str)
        .expect("queue id")
        .to_string();
    let add_started = Instant::now();
    let task_ids: HashSet<String> = futures::stream::iter(0..settings.tasks)
        .map(|n| {
            let (api, queue_id) = (&api, queue_id.as_str());
            let agent = agent_ids[n % agent_ids.len()].to_string();
            async move {
                let answer = api
                    .ok(
                        "queue/addtask",
                        &[("queue_id", queue_id), ("ip", &agent), ("func", "run")],
                    )
                    .await;
                answer["id"].as_str().expect("task id").to_string()
            }
        })
        .buffer_unordered(ADD_CONCURRENCY)
        .collect()
        .await;
    let add_seconds = add_started.elapsed().as_secs_f64();
    assert_eq!(
        task_ids.len(),
        settings.tasks,
        "every addtask gave a new id"
    );
    eprintln!(
        "[{name}] {} tasks added in {add_seconds:.2} s; committing",
        settings.tasks
    );

    let store = {
        let url = database.url.clone();
        tokio::task::spawn_blocking(move || Store::open(&url))
            .await
            .expect("store task")
            .expect("the bench's own store handle")
    };
    let queue = TaskId::parse(&queue_id).expect("queue id");
    let published = agents.published_counter();
    let expected = settings.tasks as u64;
    let agents_done_at = Arc::new(AtomicU64::new(0));
    let sampler = {
        let agents_done_at = agents_done_at.clone();
        tokio::spawn(async move {
            while published() < expected {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            agents_done_at.store(now_unix_ms(), Ordering::Relaxed);
        })
    };

    let committed_at = now_unix_ms();
    let commit_clock = Instant::now();
    api.ok("queue/commit", &[("queue_id", &queue_id)]).await;
    let rows = wait_queue_done(&name, &store, &queue, settings.tasks).await;
    let observed_ms = u64::try_from(commit_clock.elapsed().as_millis()).unwrap_or(u64::MAX);
    // The last results may have been published a few ms before the sampler looked.
    let _ = tokio::time::timeout(Duration::from_secs(2), sampler).await;
    let peak = center.peak_rss();
    let center_results = api.settled_tasks().await;

    let counts = agents.counts();
    let problems = check(&rows, &task_ids, expected, center_results, &counts);
    if !problems.is_empty() {
        eprintln!("[{name}] CHECKS FAILED: {}", problems.join("; "));
    }

    let first_dispatch = rows.iter().filter_map(|row| row.dispatched_at).min();
    let last_dispatch = rows.iter().filter_map(|row| row.dispatched_at).max();
    let last_finish = rows
        .iter()
        .filter_map(|row| row.finished_at)
        .max()
        .expect("finished tasks have a finish time");
    let since_commit = |at: u64| at.saturating_sub(committed_at);
    let agents_done = agents_done_at.load(Ordering::Relaxed);
    let figures = Figures {
        db,
        agents_kind,
        tasks: settings.tasks,
        agents: settings.agents,
        add_seconds,
        seconds: since_commit(last_finish) as f64 / 1000.0,
        first_dispatch_ms: first_dispatch.map_or(0, since_commit),
        last_dispatch_ms: last_dispatch.map_or(0, since_commit),
        agents_done_ms: (agents_done > 0).then(|| since_commit(agents_done)),
        observed_ms,
        center_results,
        ran: counts.ran,
        published: counts.published,
        rss: peak,
        problems,
    };

    agents.stop().await;
    drop(store);
    tokio::task::spawn_blocking(move || center.stop())
        .await
        .expect("center stops");
    delete_broker_objects(&settings.amqp, &namespace, &agent_ids).await;
    tokio::task::spawn_blocking(move || drop(database))
        .await
        .expect("database dropped");
    figures
}

/// Every task is in the queue, ran exactly once and succeeded: what is wrong, as text.
fn check(
    rows: &[TaskRow],
    task_ids: &HashSet<String>,
    expected: u64,
    center_results: u64,
    counts: &Counts,
) -> Vec<String> {
    let mut problems = Vec::new();
    let stored_ids: HashSet<String> = rows.iter().map(|row| row.id.to_string()).collect();
    if &stored_ids != task_ids {
        problems.push(format!(
            "the queue holds {} tasks, {} of them not added by this run; {} added tasks missing",
            stored_ids.len(),
            stored_ids.difference(task_ids).count(),
            task_ids.difference(&stored_ids).count()
        ));
    }
    // Failed tasks by what they said, with one example id each.
    let mut failures: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for row in rows {
        let succeeded = row.status == TaskStatus::Finished
            && row.worker_flag == Some(1)
            && row.flag == "true"
            && row.worker_message.as_deref() == Some("ok");
        if !succeeded {
            let what = format!(
                "status {} flag {:?} worker_flag {:?} message {:?} error {:?}",
                row.status.as_str(),
                row.flag,
                row.worker_flag,
                row.worker_message.as_deref().unwrap_or_default(),
                row.error
            );
            failures.entry(what).or_insert((0, row.id.to_string())).0 += 1;
        }
    }
    for (what, (count, example)) in failures {
        problems.push(format!(
            "{count} task(s) did not succeed: {what} (e.g. task {example})"
        ));
    }
    let mut count_is = |what: &str, actual: u64| {
        if actual != expected {
            problems.push(format!("{what}: {actual}, expected {expected}"));
        }
    };
    count_is("results the center applied", center_results);
    count_is("instructions the agents ran", counts.ran);
    count_is("results the agents published", counts.published);
    if counts.anomalies != 0 {
        problems.push(format!(
            "{} instruction(s) refused, expired, replayed or received twice",
            counts.anomalies
        ));
    }
    problems
}

/// Polls the database until every task of the queue is settled; fails on a stall.
async fn wait_queue_done(name: &str, store: &Store, queue: &TaskId, tasks: usize) -> Vec<TaskRow> {
    let started = Instant::now();
    let mut last_progress = (0usize, Instant::now());
    let mut last_report = Instant::now();
    loop {
        tokio::time::sleep(POLL).await;
        let (store, queue) = (store.clone(), queue.clone());
        let rows = tokio::task::spawn_blocking(move || store.queue_tasks(&queue))
            .await
            .expect("poll task")
            .expect("reading the queue's tasks");
        let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
        for row in &rows {
            *by_status.entry(row.status.as_str()).or_default() += 1;
        }
        let settled = rows
            .iter()
            .filter(|row| {
                matches!(
                    row.status,
                    TaskStatus::Finished | TaskStatus::Skipped | TaskStatus::Stopped
                )
            })
            .count();
        if settled == tasks {
            return rows;
        }
        if settled > last_progress.0 {
            last_progress = (settled, Instant::now());
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            eprintln!(
                "[{name}] +{:.1} s: {by_status:?}",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        assert!(
            last_progress.1.elapsed() < STALL,
            "[{name}] no task settled for {STALL:?}: {by_status:?}"
        );
    }
}

/// The signed v2 API of the center under test.
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    /// A v2 call signed with MD5, as an ordinary client makes it; fails the run unless it
    /// succeeded.
    async fn ok(&self, endpoint: &str, params: &[(&str, &str)]) -> Value {
        let path = format!("/api/v2/{endpoint}");
        let mut pairs: Vec<(String, String)> = params
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        pairs.push(("auth_id".to_string(), AUTH_ID.to_string()));
        pairs.push((
            "timestamp".to_string(),
            chrono::Utc::now().timestamp().to_string(),
        ));
        let signed = sign::sign_params(&path, pairs, SignType::Md5, AUTH_KEY);
        let answer: Value = self
            .http
            .post(format!("{}{path}", self.base))
            .form(&signed)
            .send()
            .await
            .expect("http call")
            .json()
            .await
            .expect("json answer");
        assert_eq!(answer["flag"], "true", "{endpoint} failed: {answer}");
        answer["result"].clone()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("http call")
    }

    async fn wait_online(&self, agents: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let health: Value = self.get("/healthz").await.json().await.expect("healthz");
            let online = health["heartbeat"]["agents_online"].as_u64().unwrap_or(0);
            if online >= agents as u64 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {online} of {agents} agents came online"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The sum of `elves_tasks_total{outcome=…}`: results the center stored and counted,
    /// whatever their outcome.
    async fn settled_tasks(&self) -> u64 {
        let text = self.get("/metrics").await.text().await.expect("metrics");
        text.lines()
            .filter(|line| line.starts_with("elves_tasks_total{"))
            .filter_map(|line| line.rsplit_once(' '))
            .filter_map(|(_, count)| count.trim().parse::<u64>().ok())
            .sum()
    }
}

/// The center under test: a child process or in this process.
struct RunningCenter {
    base_url: String,
    key_id: String,
    public_key_hex: String,
    kind: CenterKind,
}

enum CenterKind {
    Process {
        child: CenterChild,
        log_forwarder: std::thread::JoinHandle<()>,
    },
    InProcess {
        handle: elves_center::CenterHandle,
        baseline_kib: u64,
    },
}

/// The center's process, killed when dropped while still running (a run that panicked), so
/// that no center outlives the bench.
struct CenterChild(std::process::Child);

impl Drop for CenterChild {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl RunningCenter {
    fn start(
        bin: Option<PathBuf>,
        root: &Path,
        data_dir: &Path,
        amqp: &str,
        namespace: &str,
        database_url: &str,
    ) -> RunningCenter {
        let env = vec![
            ("ELVES_DATA_DIR".to_string(), data_dir.display().to_string()),
            ("ELVES_AUTH__AUTH_ID".to_string(), AUTH_ID.to_string()),
            ("ELVES_AUTH__AUTH_KEY".to_string(), AUTH_KEY.to_string()),
            ("ELVES_BUS__URL".to_string(), amqp.to_string()),
            ("ELVES_BUS__NAMESPACE".to_string(), namespace.to_string()),
            ("ELVES_DATABASE__URL".to_string(), database_url.to_string()),
        ];
        match bin {
            Some(bin) => Self::start_process(&bin, root, env),
            None => Self::start_in_process(env),
        }
    }

    fn start_in_process(mut env: Vec<(String, String)>) -> RunningCenter {
        // Tuning knobs of the center pass through, as they would reach the binary.
        env.extend(std::env::vars().filter(|(name, _)| is_center_knob(name)));
        let config: elves_center::config::CenterConfig =
            elves_shared::config::load(None, env).expect("center config");
        config.validate().expect("valid center config");
        // VmHWM is the peak since the last reset: start this run's peak from here.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let baseline_kib = status_kib(std::process::id(), "VmHWM:").unwrap_or(0);
        let bus = bus::open(&config.bus.url, &config.bus.namespace).expect("center bus");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
        let handle = elves_center::start(config, listener, bus).expect("center starts");
        RunningCenter {
            base_url: format!("http://{}", handle.http_addr),
            key_id: handle.key_id.clone(),
            public_key_hex: handle.public_key_hex.clone(),
            kind: CenterKind::InProcess {
                handle,
                baseline_kib,
            },
        }
    }

    fn start_process(bin: &Path, root: &Path, env: Vec<(String, String)>) -> RunningCenter {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("free port");
        let mut command = std::process::Command::new(bin);
        command
            .arg("--config")
            .arg(root.join("config/center.toml"))
            .envs(env)
            .env("ELVES_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_string()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // The center reads every `ELVES_…` variable as configuration: not the bench's own.
        for (name, _) in std::env::vars() {
            if name.starts_with("ELVES_BENCH_") {
                command.env_remove(name);
            }
        }
        let mut child = command.spawn().expect("elves-center starts");
        let stderr = child.stderr.take().expect("center stderr");
        let mut lines = std::io::BufReader::new(stderr).lines();
        // The center prints its public key on stderr once it is ready.
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
        RunningCenter {
            base_url: format!("http://127.0.0.1:{port}"),
            key_id,
            public_key_hex,
            kind: CenterKind::Process {
                child: CenterChild(child),
                log_forwarder,
            },
        }
    }

    fn peak_rss(&self) -> Rss {
        match &self.kind {
            CenterKind::Process { child, .. } => Rss::Process {
                peak_kib: status_kib(child.0.id(), "VmHWM:").unwrap_or(0),
            },
            CenterKind::InProcess { baseline_kib, .. } => Rss::InProcess {
                baseline_kib: *baseline_kib,
                peak_kib: status_kib(std::process::id(), "VmHWM:").unwrap_or(0),
            },
        }
    }

    /// Stops the center (SIGINT for the process, as Ctrl-C would) and waits for it.
    fn stop(self) {
        match self.kind {
            CenterKind::Process {
                mut child,
                log_forwarder,
            } => {
                let pid = i32::try_from(child.0.id()).expect("pid");
                // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
                unsafe {
                    libc::kill(pid, libc::SIGINT);
                }
                let deadline = Instant::now() + Duration::from_secs(20);
                while child.0.try_wait().ok().flatten().is_none() {
                    if Instant::now() >= deadline {
                        eprintln!("center did not stop within 20 s; killing it");
                        let _ = child.0.kill();
                        let _ = child.0.wait();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = log_forwarder.join();
            }
            CenterKind::InProcess { handle, .. } => handle.stop(),
        }
    }
}

fn is_center_knob(name: &str) -> bool {
    ["ELVES_QUEUE__", "ELVES_HTTP__", "ELVES_RT__"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

/// A `kB` figure of `/proc/<pid>/status`, e.g. `VmHWM:`.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|line| line.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// What the agents of a run counted.
struct Counts {
    /// Instructions accepted and run (real: the worker was started).
    ran: u64,
    /// Results published to `center.result`.
    published: u64,
    /// Refused, expired or replayed (real) / refused or duplicate (simulated) instructions.
    anomalies: u64,
}

enum Agents {
    Real {
        agents: Vec<RealAgent>,
    },
    Simulated {
        shared: Arc<SimShared>,
        stop: watch::Sender<bool>,
        tasks: JoinSet<()>,
    },
}

struct RealAgent {
    stats: Arc<AgentStats>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Agents {
    fn start_real(
        settings: &Settings,
        center: &RunningCenter,
        namespace: &str,
        dir: &Path,
        ids: &[AgentId],
    ) -> Agents {
        let agents = ids
            .iter()
            .map(|id| {
                let apps_dir = dir.join(format!("apps-{id}"));
                install_noop_app(&apps_dir);
                let mut config = AgentConfig::new(id.clone());
                config.apps_dir = apps_dir;
                config.spool_dir = dir.join(format!("spool-{id}"));
                config.heartbeat_interval_ms = HEARTBEAT_MS;
                config.center.key_id = center.key_id.clone();
                config.center.public_key = center.public_key_hex.clone();
                let stats = Arc::new(AgentStats::new());
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let bus = bus::open(&settings.amqp, namespace).expect("agent bus");
                let task = tokio::spawn(elves_agent::run(config, bus, stats.clone(), async move {
                    let _ = stopped.await;
                }));
                RealAgent { stats, stop, task }
            })
            .collect();
        Agents::Real { agents }
    }

    async fn start_simulated(
        settings: &Settings,
        center: &RunningCenter,
        namespace: &str,
        ids: &[AgentId],
    ) -> Agents {
        let mut verifier = InstructionVerifier::new();
        verifier
            .add_public_key_hex(&center.key_id, &center.public_key_hex)
            .expect("the center's public key");
        let shared = Arc::new(SimShared {
            verifier,
            seen: Mutex::new(HashSet::new()),
            published: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
        });
        let (stop, stopping) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for group in ids.chunks(SIM_AGENTS_PER_CONNECTION) {
            let bus = bus::open(&settings.amqp, namespace).expect("simulated agents' bus");
            for id in group {
                tasks.spawn(simulated_agent(
                    id.clone(),
                    bus.clone(),
                    shared.clone(),
                    stopping.clone(),
                ));
            }
        }
        Agents::Simulated {
            shared,
            stop,
            tasks,
        }
    }

    /// Results published so far, readable from another task.
    fn published_counter(&self) -> Box<dyn Fn() -> u64 + Send + Sync> {
        match self {
            Agents::Real { agents } => {
                let stats: Vec<Arc<AgentStats>> =
                    agents.iter().map(|agent| agent.stats.clone()).collect();
                Box::new(move || {
                    stats
                        .iter()
                        .map(|stats| stats.results_published.load(Ordering::Relaxed))
                        .sum()
                })
            }
            Agents::Simulated { shared, .. } => {
                let shared = shared.clone();
                Box::new(move || shared.published.load(Ordering::Relaxed))
            }
        }
    }

    fn counts(&self) -> Counts {
        match self {
            Agents::Real { agents } => {
                let mut counts = Counts {
                    ran: 0,
                    published: 0,
                    anomalies: 0,
                };
                for agent in agents {
                    let snapshot = agent.stats.snapshot();
                    counts.ran += snapshot.ran;
                    counts.published += snapshot.results_published + snapshot.results_spooled;
                    counts.anomalies += snapshot.refused_signature
                        + snapshot.expired
                        + snapshot.replayed
                        + snapshot.undecodable;
                }
                counts
            }
            Agents::Simulated { shared, .. } => Counts {
                ran: shared.seen.lock().expect("seen ids").len() as u64,
                published: shared.published.load(Ordering::Relaxed),
                anomalies: shared.refused.load(Ordering::Relaxed)
                    + shared.duplicates.load(Ordering::Relaxed),
            },
        }
    }

    async fn stop(self) {
        match self {
            Agents::Real { agents } => {
                for agent in agents {
                    let _ = agent.stop.send(());
                    match tokio::time::timeout(Duration::from_secs(40), agent.task).await {
                        Ok(Ok(Ok(()))) => {}
                        Ok(Ok(Err(err))) => eprintln!("agent ended with an error: {err:#}"),
                        Ok(Err(err)) => eprintln!("agent task failed: {err}"),
                        Err(_) => eprintln!("agent did not stop within 40 s"),
                    }
                }
            }
            Agents::Simulated {
                stop, mut tasks, ..
            } => {
                let _ = stop.send(true);
                while tasks.join_next().await.is_some() {}
            }
        }
    }
}

/// `<apps_dir>/noop/app-worker`: a shell worker that succeeds with "ok" at once.
fn install_noop_app(apps_dir: &Path) {
    let app_dir = apps_dir.join("noop");
    std::fs::create_dir_all(&app_dir).expect("app dir");
    let worker = app_dir.join("app-worker");
    std::fs::write(&worker, NOOP_WORKER).expect("worker file");
    std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o755)).expect("worker mode");
}

/// What the simulated agents share.
struct SimShared {
    verifier: InstructionVerifier,
    /// Task ids answered, to catch an instruction delivered twice.
    seen: Mutex<HashSet<TaskId>>,
    published: AtomicU64,
    refused: AtomicU64,
    duplicates: AtomicU64,
}

/// One light agent: heartbeats, and an immediate "ok" for every valid instruction.
async fn simulated_agent(
    id: AgentId,
    bus: SharedBus,
    shared: Arc<SimShared>,
    mut stopping: watch::Receiver<bool>,
) {
    let spec = QueueSpec {
        name: bus.queue_name(&format!("agent.{id}")),
        bindings: vec![routing::agent(&id)],
        durable: true,
    };
    let mut consumer = bus
        .consume(spec, SIM_PREFETCH)
        .await
        .expect("simulated agent consumes its queue");
    // Heartbeats only once the queue exists, as the real agent does.
    let beats = tokio::spawn(simulated_heartbeats(
        id.clone(),
        bus.clone(),
        stopping.clone(),
    ));
    let mut answering = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopping.wait_for(|stop| *stop) => break,
            delivery = consumer.next() => match delivery {
                Some(delivery) => {
                    answering.spawn(answer(id.clone(), bus.clone(), shared.clone(), delivery));
                }
                None => break,
            },
            Some(_) = answering.join_next(), if !answering.is_empty() => {}
        }
    }
    while answering.join_next().await.is_some() {}
    let _ = beats.await;
}

async fn answer(id: AgentId, bus: SharedBus, shared: Arc<SimShared>, delivery: Delivery) {
    let message = &delivery.message;
    let verified = message.kind == kind::INSTRUCTION
        && shared
            .verifier
            .verify(
                &message.body,
                message.key_id.as_deref(),
                message.sig.as_deref(),
            )
            .is_ok();
    let instruction = verified
        .then(|| wire::decode::<Instruction>(&message.body).ok())
        .flatten()
        .filter(|instruction| instruction.agent == id);
    let Some(instruction) = instruction else {
        shared.refused.fetch_add(1, Ordering::Relaxed);
        delivery.reject().await;
        return;
    };
    let first_time = shared
        .seen
        .lock()
        .expect("seen ids")
        .insert(instruction.id.clone());
    if !first_time {
        shared.duplicates.fetch_add(1, Ordering::Relaxed);
        delivery.ack().await;
        return;
    }
    let now = now_unix_ms();
    let result = JobResult {
        id: instruction.id.clone(),
        agent: id,
        task_type: instruction.task_type,
        mode: instruction.mode,
        app: instruction.app,
        func: instruction.func,
        worker_flag: 1,
        worker_message: "ok".to_string(),
        worker_costtime: 0,
        started_at: now,
        finished_at: now,
        error: String::new(),
    };
    let mut reply = BusMessage::msgpack(kind::RESULT, wire::encode(&result));
    reply.correlation_id = Some(
        message
            .correlation_id
            .clone()
            .unwrap_or_else(|| instruction.id.to_string()),
    );
    let destination = Destination::Topic(routing::CENTER_RESULT.to_string());
    match bus.publish(&destination, reply).await {
        Ok(()) => {
            shared.published.fetch_add(1, Ordering::Relaxed);
            delivery.ack().await;
        }
        Err(err) => {
            eprintln!(
                "simulated agent: result of {} not published: {err}",
                instruction.id
            );
            shared
                .seen
                .lock()
                .expect("seen ids")
                .remove(&instruction.id);
            delivery.requeue().await;
        }
    }
}

async fn simulated_heartbeats(id: AgentId, bus: SharedBus, mut stopping: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(Duration::from_millis(HEARTBEAT_MS));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let destination = Destination::Topic(routing::CENTER_HEARTBEAT.to_string());
    loop {
        tokio::select! {
            _ = stopping.wait_for(|stop| *stop) => return,
            _ = ticker.tick() => {}
        }
        let heartbeat = Heartbeat {
            agent: id.clone(),
            ip: id.to_string(),
            asset: "bench".to_string(),
            version: "simulated".to_string(),
            apps: [("noop".to_string(), "1".to_string())].into(),
            sent_at: now_unix_ms(),
            interval_ms: HEARTBEAT_MS,
            packages: Default::default(),
        };
        let mut message = BusMessage::msgpack(kind::HEARTBEAT, wire::encode(&heartbeat));
        message.expiration_ms = Some(HEARTBEAT_MS * 3);
        if let Err(err) = bus.publish(&destination, message).await {
            eprintln!("simulated agent {id}: heartbeat not sent: {err}");
        }
    }
}

/// Removes what a run left on the broker: the durable queues of the center and the agents, and
/// the namespace's exchange.
async fn delete_broker_objects(amqp: &str, namespace: &str, agents: &[AgentId]) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let properties = lapin::ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    let Ok(connection) = lapin::Connection::connect(amqp, properties).await else {
        eprintln!("could not connect to clean up namespace {namespace}");
        return;
    };
    let Ok(channel) = connection.create_channel().await else {
        return;
    };
    let mut queues: Vec<String> = ["center.result", "center.heartbeat", "center.submit"]
        .iter()
        .map(|suffix| format!("{namespace}.{suffix}"))
        .collect();
    queues.extend(agents.iter().map(|id| format!("{namespace}.agent.{id}")));
    for queue in &queues {
        let _ = channel
            .queue_delete(queue, QueueDeleteOptions::default())
            .await;
    }
    let _ = channel
        .exchange_delete(namespace, ExchangeDeleteOptions::default())
        .await;
    let _ = connection.close(200, "bench done").await;
}

/// The store calls of the queue path, timed on a fresh database: what one task costs the
/// center in its database, without HTTP or the bus.
async fn store_timings(settings: &Settings, db: Db) {
    let (tasks, agents, pg_url) = (settings.tasks, settings.agents, settings.pg_url.clone());
    tokio::task::spawn_blocking(move || {
        let database = match db {
            Db::Sqlite => TestDatabase::sqlite(),
            Db::Postgres => TestDatabase::postgres(&pg_url),
        }
        .expect("fresh database");
        let store = Store::open(&database.url).expect("store");
        let name = format!("{}-store-timings", db.name());
        let queue = TaskId::random();
        store
            .create_queue(&queue, "noop", AUTH_ID, now_unix_ms())
            .expect("create queue");
        let agent_ids: Vec<AgentId> = (0..agents)
            .map(|n| AgentId::parse(&format!("bench-{n:04}")).expect("agent id"))
            .collect();
        let started = Instant::now();
        for n in 0..tasks {
            let task = elves_center::store::NewTask {
                id: TaskId::random(),
                queue_id: Some(queue.clone()),
                task_type: wire::TaskType::Queue,
                agent: agent_ids[n % agent_ids.len()].clone(),
                app: "noop".to_string(),
                func: "run".to_string(),
                param: String::new(),
                timeout_s: 90,
                proxy: String::new(),
                mode: wire::Mode::NP,
                depend_task_id: None,
                created_at: now_unix_ms(),
            };
            store.add_task(&task).expect("add task");
        }
        let add = started.elapsed();
        store.commit_queue(&queue, now_unix_ms()).expect("commit");
        let allowance = Duration::from_secs(65);
        let mut claims = Vec::new();
        let mut claimed = Vec::with_capacity(tasks);
        loop {
            let started = Instant::now();
            let batch = store
                .claim_ready_tasks("bench", now_unix_ms(), 500, allowance)
                .expect("claim");
            claims.push(started.elapsed());
            if batch.is_empty() {
                break;
            }
            claimed.extend(batch);
        }
        let empty_claim = claims.pop().unwrap_or_default();
        let claim_total: Duration = claims.iter().sum();
        let result_of = |task: &TaskRow| JobResult {
            id: task.id.clone(),
            agent: task.agent.clone(),
            task_type: task.task_type,
            mode: task.mode,
            app: task.app.clone(),
            func: task.func.clone(),
            worker_flag: 1,
            worker_message: "ok".to_string(),
            worker_costtime: 1,
            started_at: now_unix_ms(),
            finished_at: now_unix_ms(),
            error: String::new(),
        };
        // Half one at a time (as one result after another), timing each call; the other half
        // from 8 threads, as the center's 8 pooled connections would.
        let (sequential, parallel) = claimed.split_at(claimed.len() / 2);
        let mut latencies = Vec::with_capacity(sequential.len());
        let started = Instant::now();
        for task in sequential {
            let call = Instant::now();
            let outcome = store
                .record_result(&result_of(task), now_unix_ms())
                .expect("record");
            assert!(outcome.applied);
            latencies.push(call.elapsed().as_secs_f64() * 1000.0);
        }
        let sequential_s = started.elapsed().as_secs_f64();
        let started = Instant::now();
        std::thread::scope(|scope| {
            for chunk in parallel.chunks(parallel.len().div_ceil(8).max(1)) {
                let store = &store;
                scope.spawn(move || {
                    for task in chunk {
                        store
                            .record_result(&result_of(task), now_unix_ms())
                            .expect("record");
                    }
                });
            }
        });
        let parallel_s = started.elapsed().as_secs_f64();
        let tenth = (latencies.len() / 10).max(1);
        let mean = |samples: &[f64]| samples.iter().sum::<f64>() / samples.len().max(1) as f64;
        println!(
            "{name}: add_task {:.3} ms/task ({:.0}/s, one at a time); claim_ready_tasks(500) \
             {:.1} ms/batch ({:.0} tasks/s), with nothing ready {:.2} ms",
            add.as_secs_f64() * 1000.0 / tasks as f64,
            tasks as f64 / add.as_secs_f64(),
            claim_total.as_secs_f64() * 1000.0 / claims.len().max(1) as f64,
            claimed.len() as f64 / claim_total.as_secs_f64().max(1e-9),
            empty_claim.as_secs_f64() * 1000.0
        );
        println!(
            "{name}: record_result one at a time {:.0}/s: mean {:.3} ms, p50 {:.3} ms, p99 {:.3} \
             ms; first tenth (most tasks unsettled) {:.3} ms, last tenth {:.3} ms; from 8 \
             threads {:.0}/s",
            sequential.len() as f64 / sequential_s,
            mean(&latencies),
            percentile(&latencies, 50.0),
            percentile(&latencies, 99.0),
            mean(&latencies[..tenth]),
            mean(&latencies[latencies.len() - tenth..]),
            parallel.len() as f64 / parallel_s
        );
        drop(store);
        drop(database);
    })
    .await
    .expect("store timings");
}

/// Signing and publishing instructions with publisher confirms, as a dispatch round does.
async fn bus_timings(settings: &Settings) {
    let namespace = format!("elves-bench-bus-{:08x}", rand::random::<u32>());
    let bus = bus::open(&settings.amqp, &namespace).expect("bus");
    let agent = AgentId::parse("bench-sink").expect("agent id");
    bus.declare(&QueueSpec {
        name: bus.queue_name(&format!("agent.{agent}")),
        bindings: vec![routing::agent(&agent)],
        durable: true,
    })
    .await
    .expect("declare sink queue");
    let signer = elves_shared::crypto::InstructionSigner::generate("bench");
    let n = settings.tasks.min(5000);
    let message = || {
        let now = now_unix_ms();
        let instruction = Instruction {
            id: TaskId::random(),
            agent: agent.clone(),
            task_type: wire::TaskType::Queue,
            mode: wire::Mode::NP,
            app: "noop".to_string(),
            func: "run".to_string(),
            param: String::new(),
            timeout: 90,
            proxy: String::new(),
            issued_at: now,
            deadline: now + 155_000,
        };
        let mut message = BusMessage::msgpack(kind::INSTRUCTION, wire::encode(&instruction));
        message.sig = Some(signer.sign(&message.body));
        message.key_id = Some(signer.key_id().to_string());
        message
    };
    let started = Instant::now();
    let messages: Vec<BusMessage> = (0..n).map(|_| message()).collect();
    let encode_sign = started.elapsed();
    let destination = Destination::Topic(routing::agent(&agent));
    let started = Instant::now();
    for message in messages.iter().take(n / 5) {
        bus.publish(&destination, message.clone())
            .await
            .expect("publish");
    }
    let one_at_a_time = (n / 5) as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for batch in messages[n / 5..].chunks(500) {
        futures::future::join_all(
            batch
                .iter()
                .map(|message| bus.publish(&destination, message.clone())),
        )
        .await
        .into_iter()
        .collect::<Result<Vec<()>, _>>()
        .expect("publish");
    }
    let batched = (n - n / 5) as f64 / started.elapsed().as_secs_f64();
    println!(
        "bus-timings: encode+sign {:.1} us/instruction; publish with confirm one at a time \
         {one_at_a_time:.0}/s, 500 in flight {batched:.0}/s",
        encode_sign.as_secs_f64() * 1e6 / n as f64
    );
    delete_broker_objects(&settings.amqp, &namespace, std::slice::from_ref(&agent)).await;
}

fn percentile(samples: &[f64], pct: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let rank = ((pct / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted
        .get(rank.min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0)
}
