//! Queue throughput and the center's peak memory (not a test: it prints figures).
//!
//! One queue of `ELVES_BENCH_TASKS` (default 10,000) tasks of a no-op app, spread round-robin
//! over `ELVES_BENCH_AGENTS` (default 100) agents, over RabbitMQ (`ELVES_TEST_AMQP_URL`), in four
//! runs: {SQLite, PostgreSQL (`ELVES_TEST_PG_URL`)} × {real agents, simulated agents}.
//!
//! - Real agents: one `elves-agent` process each (`support::agent_processes`), the release
//!   binary next to this bench (`scripts/bench` builds it), each with its own TOML configuration in the run's temp dir
//!   (the same settings as the in-process agents, checked by loading the file back), `RUST_LOG`
//!   passed through (default `warn`) and its stderr forwarded with its id; each spawns the shell
//!   worker `noop/app-worker` for every task. A real host runs one agent with a few dozen file
//!   descriptors: 100 agents in this process made every worker spawn copy and close ~2,400
//!   of them, about a quarter of the machine. The agents' own counters are out of reach in
//!   their processes, so for them the report gives the stored results that carry the worker's
//!   "ok" and the agents' RSS summed once the queue is done, not what the agents ran and
//!   published. When the binary is missing, or with `ELVES_BENCH_AGENTS=inproc` (`=50,inproc`
//!   with a count), they run in this process instead: `elves_agent::run`, one bus connection
//!   each, and their counters (`AgentStats`) are reported.
//! - Simulated agents: light agents in this process that speak the real protocol without
//!   spawning (`elves_shared::sim`: consume `<ns>.agent.<id>`, verify the Ed25519 signature,
//!   decode the instruction or the pack of them, publish their results to `center.result` in
//!   one message, ack; heartbeat every second), ten agents per bus connection. They measure the
//!   center, not the host's fork/exec rate.
//!
//! Tasks are added through the signed HTTP API (`queue/create`, `queue/addtask` with 16 calls
//! in flight), then `queue/commit` once every agent is online; the clock starts just before the
//! commit is sent and stops at the last task's `finished_at` as stored by the center. Completion
//! is polled every 500 ms straight from the database (`Store::queue_tasks`), which also gives the
//! dispatch times.
//!
//! The center is the release binary `elves-center` as a child process when it exists next to
//! this bench (`scripts/bench` builds it), so that its peak RSS (VmHWM) is its own; otherwise,
//! or with `ELVES_BENCH_CENTER=inproc`, it runs in this process (`elves_center::start`) and the
//! peak is this whole process's (the center, and the agents unless they are processes),
//! reported next to the baseline before the center started; `ELVES_BENCH_CENTER=<path>` runs
//! another build of the center (e.g. one with debug info, for `perf`). `ELVES_QUEUE__*`,
//! `ELVES_HTTP__*` and `ELVES_RT__*` variables reach the center (never the agents).
//!
//! Run: `scripts/bench` (or `cargo bench --bench queue_throughput`); extra arguments select
//! runs by name, e.g. `cargo bench --bench queue_throughput -- sqlite-simulated`.
//! Diagnostics run only when named: `-- timings` times the center's store calls (add, claim,
//! record a result; alone and from 8 threads) on both databases and its bus publishes (signed,
//! one at a time and 500 at once, as a dispatch round sends them).

mod support;

use elves_agent::{AgentConfig, AgentStats};
use elves_center::store::testing::TestDatabase;
use elves_center::store::{Store, TaskRow, TaskStatus};
use elves_shared::bus::{self, BusMessage, Destination, QueueSpec};
use elves_shared::sim::{SimConfig, SimFleet};
use elves_shared::time::now_unix_ms;
use elves_shared::wire::{self, kind, routing, AgentId, Instruction, JobResult, TaskId};
use futures::StreamExt;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::agent_processes::{AgentProcesses, AgentsRss};
use support::{Api, CenterProcess, InProcessAgent, AUTH_ID};

/// `queue/addtask` calls in flight while the queue is filled.
const ADD_CONCURRENCY: usize = 16;
/// How often the database is asked whether the queue is done.
const POLL: Duration = Duration::from_millis(500);
/// The run fails when no task settles for this long.
const STALL: Duration = Duration::from_secs(60);
const HEARTBEAT_MS: u64 = 1000;

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
    /// The release `elves-agent` to run each real agent as a child process; `None` runs them
    /// in-process.
    agent_bin: Option<PathBuf>,
}

fn main() {
    if support::listing_only() {
        return;
    }
    support::init_logging();
    let (agents, agents_inproc) = agents_setting();
    let settings = Settings {
        tasks: support::env_count("ELVES_BENCH_TASKS", 10_000),
        agents,
        amqp: support::amqp_url(),
        pg_url: support::pg_url(),
        root: support::repo_root(),
        center_bin: center_binary(),
        agent_bin: if agents_inproc {
            None
        } else {
            support::release_binary("elves-agent")
        },
    };
    // Arguments that are not flags select runs by name, as `cargo bench -- <filter>` does.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let runtime = support::runtime(2);

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
            support::built_ago(bin)
        ),
        None => println!(
            "center: in-process (elves_center::start; peak RSS = this whole process's VmHWM, \
             in-process agents included)"
        ),
    }
    match &settings.agent_bin {
        Some(bin) => println!(
            "real agents: one child process each, {} (built {} ago; agents' RSS = their VmRSS \
             summed once the queue is done)",
            bin.display(),
            support::built_ago(bin)
        ),
        None if agents_inproc => {
            println!("real agents: in-process (elves_agent::run; ELVES_BENCH_AGENTS=inproc)")
        }
        None => println!(
            "real agents: in-process (elves_agent::run), as there is no elves-agent next to this \
             bench (scripts/bench builds it)"
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
    let mut diagnostics = 0;
    for db in [Db::Sqlite, Db::Postgres] {
        let name = format!("{}-store-timings", db.name());
        if filters
            .iter()
            .any(|filter| filter.contains("timings") && name.contains(filter.as_str()))
        {
            runtime.block_on(store_timings(&settings, db));
            diagnostics += 1;
        }
    }
    if filters
        .iter()
        .any(|filter| "bus-timings".contains(filter.as_str()))
    {
        runtime.block_on(bus_timings(&settings));
        diagnostics += 1;
    }
    // A filter that selects nothing would otherwise end the bench silently, as if it had passed.
    assert!(
        !lines.is_empty() || diagnostics > 0,
        "no run matches {filters:?}: the runs are sqlite-real, sqlite-simulated, postgres-real \
         and postgres-simulated; the diagnostics sqlite-store-timings, postgres-store-timings \
         and bus-timings"
    );
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
    support::release_binary("elves-center")
}

/// `ELVES_BENCH_AGENTS`: the number of agents and/or `inproc`, comma-separated (`100`,
/// `inproc`, `50,inproc`). A word that is neither fails the bench: a typo must not silently
/// change what is measured.
fn agents_setting() -> (usize, bool) {
    let (mut count, mut inproc) = (100, false);
    let Ok(value) = std::env::var("ELVES_BENCH_AGENTS") else {
        return (count, inproc);
    };
    for word in value
        .split(',')
        .map(str::trim)
        .filter(|word| !word.is_empty())
    {
        if word == "inproc" {
            inproc = true;
            continue;
        }
        match word.parse::<usize>() {
            Ok(n) if n > 0 => count = n,
            _ => panic!(
                "ELVES_BENCH_AGENTS={value:?}: expected a number of agents and/or `inproc`, \
                 e.g. `50,inproc`"
            ),
        }
    }
    (count, inproc)
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
    /// Commit → the agents had published every result; `None` when not seen or not counted.
    agents_done_ms: Option<u64>,
    /// Commit → the poll that saw the queue done.
    observed_ms: u64,
    /// Results the center applied (`elves_tasks_total`), and what the agents ran and published
    /// (`None`: agents in their own processes, whose counters this bench cannot read).
    center_results: u64,
    ran: Option<u64>,
    published: Option<u64>,
    /// Stored results that carry the noop worker's "ok": proof from the database that an agent
    /// ran the worker and its result arrived, whatever the agents' mode.
    worker_ok: u64,
    rss: Rss,
    /// The agents' memory when they are child processes.
    agents_rss: Option<AgentsRss>,
    /// Lines the agent processes wrote on stderr (forwarded as they came).
    agent_log_lines: Option<u64>,
    /// What the checks found wrong; empty when every task ran once and succeeded.
    problems: Vec<String>,
}

enum Rss {
    Process {
        peak_kib: u64,
    },
    InProcess {
        baseline_kib: u64,
        peak_kib: u64,
        /// False when the agents of the run are child processes.
        agents_included: bool,
    },
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
                agents_included,
            } => format!(
                "process peak RSS {:6.1} MiB, baseline {:.1} MiB ({}; in-process, {})",
                mib(peak_kib),
                mib(baseline_kib),
                verdict(mib(peak_kib) < TARGET_CENTER_RSS_MIB),
                if agents_included {
                    "agents included"
                } else {
                    "agent processes not included"
                }
            ),
        };
        let agents_rss = self.agents_rss.as_ref().map_or_else(String::new, |agents| {
            format!(
                "  agents' RSS {:.1} MiB ({} processes, summed)",
                mib(agents.rss_kib),
                agents.processes
            )
        });
        format!(
            "{:<8} {:<9} agents: tasks {:>6}  agents {:>4}  {:>7.2} s  {:>7.0} tasks/s \
             (target >= {target:.0}: {})  {rss}{agents_rss}",
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
        let agents_done = match (self.published, self.agents_done_ms) {
            (None, _) => "not counted".to_string(),
            (Some(_), None) => "-".to_string(),
            (Some(_), Some(ms)) => format!("+{:.2} s", ms as f64 / 1000.0),
        };
        let agents = match (self.ran, self.published) {
            (Some(ran), Some(published)) => format!("agents ran {ran} and published {published}"),
            _ => "the agents' own counts are not read (agent processes)".to_string(),
        };
        let mut text = format!(
            "adding the tasks took {:.2} s ({:.0}/s); after commit: first claim +{:.3} s, last \
             claim +{:.2} s, agents published every result {agents_done}, last result stored \
             +{:.2} s, seen by the poll +{:.2} s; center applied {} results, {agents}; stored \
             results with the worker's \"ok\": {}",
            self.add_seconds,
            self.tasks as f64 / self.add_seconds.max(1e-6),
            self.first_dispatch_ms as f64 / 1000.0,
            self.last_dispatch_ms as f64 / 1000.0,
            self.seconds,
            self.observed_ms as f64 / 1000.0,
            self.center_results,
            self.worker_ok,
        );
        if let Some(agents) = &self.agents_rss {
            text.push_str(&format!(
                "; agents' RSS summed {:.1} MiB, of which anonymous (their own) {:.1} MiB, the \
                 rest shared pages counted once per process; their peaks summed {:.1} MiB (each \
                 its own peak)",
                mib(agents.rss_kib),
                mib(agents.anon_kib),
                mib(agents.peaks_kib)
            ));
        }
        if let Some(lines) = self.agent_log_lines {
            text.push_str(&format!("; agents' stderr lines {lines}"));
        }
        text
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
    let namespace = support::namespace("elves-bench-q");
    let pg_url = settings.pg_url.clone();
    let database = tokio::task::spawn_blocking(move || fresh_database(db, &pg_url))
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
    let api = Api::new(center.base_url.clone());

    let agent_ids: Vec<AgentId> = (0..settings.agents)
        .map(|n| AgentId::parse(&format!("bench-{n:04}")).expect("agent id"))
        .collect();
    let mut agents = match (agents_kind, &settings.agent_bin) {
        (AgentKind::Real, bin) => {
            let configs: Vec<AgentConfig> = agent_ids
                .iter()
                .map(|id| {
                    let config =
                        real_agent_config(id, dir.path(), &center, &settings.amqp, &namespace);
                    support::install_noop_app(&config.apps_dir);
                    config
                })
                .collect();
            match bin {
                Some(bin) => Agents::Processes(AgentProcesses::start(bin, dir.path(), &configs)),
                None => Agents::start_real(configs),
            }
        }
        (AgentKind::Simulated, _) => {
            Agents::start_simulated(settings, &center, &namespace, &agent_ids)
        }
    };
    wait_online(&api, settings.agents, || agents.alive()).await;
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
    let expected = settings.tasks as u64;
    let agents_done_at = Arc::new(AtomicU64::new(0));
    let sampler = agents.published_counter().map(|published| {
        let agents_done_at = agents_done_at.clone();
        tokio::spawn(async move {
            while published() < expected {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            agents_done_at.store(now_unix_ms(), Ordering::Relaxed);
        })
    });

    let committed_at = now_unix_ms();
    let commit_clock = Instant::now();
    api.ok("queue/commit", &[("queue_id", &queue_id)]).await;
    let rows = wait_queue_done(&name, &store, &queue, settings.tasks, || agents.alive()).await;
    let observed_ms = u64::try_from(commit_clock.elapsed().as_millis()).unwrap_or(u64::MAX);
    // The last results may have been published a few ms before the sampler looked.
    if let Some(sampler) = sampler {
        let _ = tokio::time::timeout(Duration::from_secs(2), sampler).await;
    }
    let peak = center.peak_rss(agents.in_this_process());
    let agents_rss = agents.rss();
    let center_results = settled_tasks(&api).await;

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
    let worker_ok = rows
        .iter()
        .filter(|row| row.worker_flag == Some(1) && row.worker_message.as_deref() == Some("ok"))
        .count() as u64;
    let mut figures = Figures {
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
        worker_ok,
        rss: peak,
        agents_rss,
        agent_log_lines: None,
        problems,
    };

    let log_lines = agents.log_lines();
    agents.stop().await;
    // Read after the stop, so that what the agents logged while stopping counts too.
    figures.agent_log_lines = log_lines.map(|lines| lines.load(Ordering::Relaxed));
    drop(store);
    tokio::task::spawn_blocking(move || center.stop())
        .await
        .expect("center stops");
    support::delete_broker_objects(&settings.amqp, &namespace, &agent_ids).await;
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
    if let Some(ran) = counts.ran {
        count_is("instructions the agents ran", ran);
    }
    if let Some(published) = counts.published {
        count_is("results the agents published", published);
    }
    if let Some(anomalies) = counts.anomalies.filter(|n| *n != 0) {
        problems.push(format!(
            "{anomalies} instruction(s) refused, expired, replayed or received twice"
        ));
    }
    problems
}

/// Polls the database until every task of the queue is settled; fails on a stall, or at once
/// when `alive` reports an agent gone (its tasks would only stall).
async fn wait_queue_done(
    name: &str,
    store: &Store,
    queue: &TaskId,
    tasks: usize,
    mut alive: impl FnMut() -> Result<(), String>,
) -> Vec<TaskRow> {
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
        if let Err(gone) = alive() {
            panic!("[{name}] {gone} with {by_status:?}");
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

/// Polls `/healthz` until `agents` agents are online; fails after a minute, or at once when
/// `alive` reports an agent gone (one that exited will never come online).
async fn wait_online(api: &Api, agents: usize, mut alive: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Err(gone) = alive() {
            panic!("waiting for the agents to come online: {gone}");
        }
        let health: Value = api.get("/healthz").await.json().await.expect("healthz");
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

/// The sum of `elves_tasks_total{outcome=…}`: results the center stored and counted, whatever
/// their outcome.
async fn settled_tasks(api: &Api) -> u64 {
    let text = api.get("/metrics").await.text().await.expect("metrics");
    text.lines()
        .filter(|line| line.starts_with("elves_tasks_total{"))
        .filter_map(|line| line.rsplit_once(' '))
        .filter_map(|(_, count)| count.trim().parse::<u64>().ok())
        .sum()
}

/// The center under test: a child process or in this process.
struct RunningCenter {
    base_url: String,
    key_id: String,
    public_key_hex: String,
    kind: CenterKind,
}

enum CenterKind {
    Process(CenterProcess),
    InProcess {
        handle: elves_center::CenterHandle,
        baseline_kib: u64,
    },
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
        let mut env = support::center_env(data_dir, namespace);
        env.push(("ELVES_BUS__URL".to_string(), amqp.to_string()));
        env.push(("ELVES_DATABASE__URL".to_string(), database_url.to_string()));
        match bin {
            Some(bin) => {
                let process = CenterProcess::start(&bin, root, env);
                RunningCenter {
                    base_url: process.base_url.clone(),
                    key_id: process.key_id.clone(),
                    public_key_hex: process.public_key_hex.clone(),
                    kind: CenterKind::Process(process),
                }
            }
            None => Self::start_in_process(env),
        }
    }

    fn start_in_process(mut env: Vec<(String, String)>) -> RunningCenter {
        // Tuning knobs of the center pass through, as they would reach the binary.
        env.extend(std::env::vars().filter(|(name, _)| is_center_knob(name)));
        let config = support::center_config(env);
        config.validate().expect("valid center config");
        // VmHWM is the peak since the last reset: start this run's peak from here.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let baseline_kib = support::status_kib(std::process::id(), "VmHWM:").unwrap_or(0);
        let bus = bus::open(&config.bus.url, &config.bus.namespace).expect("center bus");
        let handle = support::start_center(config, bus);
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

    /// The center's peak; in-process, this whole process's, which holds the agents too when
    /// `agents_included`.
    fn peak_rss(&self, agents_included: bool) -> Rss {
        match &self.kind {
            CenterKind::Process(process) => Rss::Process {
                peak_kib: support::status_kib(process.pid(), "VmHWM:").unwrap_or(0),
            },
            CenterKind::InProcess { baseline_kib, .. } => Rss::InProcess {
                baseline_kib: *baseline_kib,
                peak_kib: support::status_kib(std::process::id(), "VmHWM:").unwrap_or(0),
                agents_included,
            },
        }
    }

    /// Stops the center (SIGINT for the process, as Ctrl-C would) and waits for it.
    fn stop(self) {
        match self.kind {
            CenterKind::Process(process) => process.stop(),
            CenterKind::InProcess { handle, .. } => handle.stop(),
        }
    }
}

fn is_center_knob(name: &str) -> bool {
    ["ELVES_QUEUE__", "ELVES_HTTP__", "ELVES_RT__"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

/// A fresh database of the kind `db`; PostgreSQL's on the server of `pg_url`.
fn fresh_database(db: Db, pg_url: &str) -> Result<TestDatabase, String> {
    match db {
        Db::Sqlite => TestDatabase::sqlite(),
        Db::Postgres => TestDatabase::postgres(pg_url),
    }
}

/// What the agents of a run counted; `None` where this bench cannot see it (agent processes).
struct Counts {
    /// Instructions accepted and run (real: the worker was started).
    ran: Option<u64>,
    /// Results published to `center.result`.
    published: Option<u64>,
    /// Refused, expired or replayed (real) / refused or duplicate (simulated) instructions.
    anomalies: Option<u64>,
}

enum Agents {
    /// Real agents in this process.
    Real {
        agents: Vec<InProcessAgent>,
    },
    /// Real agents, one `elves-agent` process each.
    Processes(AgentProcesses),
    Simulated(SimFleet),
}

/// The configuration of one real agent, the same whether it runs in this process or reads it
/// from a file: the two modes differ only in where the agent runs.
fn real_agent_config(
    id: &AgentId,
    dir: &Path,
    center: &RunningCenter,
    amqp: &str,
    namespace: &str,
) -> AgentConfig {
    let mut config = support::agent_config(
        id,
        dir.join(format!("apps-{id}")),
        dir.join(format!("spool-{id}")),
        HEARTBEAT_MS,
        &center.key_id,
        &center.public_key_hex,
    );
    config.bus.url = amqp.to_string();
    config.bus.namespace = namespace.to_string();
    // The noop worker is a native entry and needs no interpreter; the default allow-list would
    // make 100 agents starting at once probe pyenv's python shims together, which on 2 cores
    // outlasts the probe timeout and fills the log with warnings that have nothing to measure.
    config.interpreters = [("sh".to_string(), "/bin/sh".to_string())].into();
    config
}

impl Agents {
    /// The agents of `configs` in this process, one bus connection each.
    fn start_real(configs: Vec<AgentConfig>) -> Agents {
        let agents = configs
            .into_iter()
            .map(|config| {
                // Opened as the `elves-agent` binary opens it, frame size included.
                let url = bus::with_frame_max(&config.bus.url, config.bus.frame_max);
                let bus = bus::open(&url, &config.bus.namespace).expect("agent bus");
                InProcessAgent::spawn(config, bus)
            })
            .collect();
        Agents::Real { agents }
    }

    fn start_simulated(
        settings: &Settings,
        center: &RunningCenter,
        namespace: &str,
        ids: &[AgentId],
    ) -> Agents {
        let mut config = SimConfig::new(
            &settings.amqp,
            namespace,
            &center.key_id,
            &center.public_key_hex,
            ids.to_vec(),
        );
        config.heartbeat_interval_ms = HEARTBEAT_MS;
        Agents::Simulated(SimFleet::start(config).expect("simulated agents start"))
    }

    /// Whether the agents live in this process (and so in its RSS).
    fn in_this_process(&self) -> bool {
        !matches!(self, Agents::Processes(_))
    }

    /// `Err` naming the first agent process that has exited; in-process agents are not checked.
    fn alive(&mut self) -> Result<(), String> {
        match self {
            Agents::Processes(processes) => processes.alive(),
            _ => Ok(()),
        }
    }

    /// The agent processes' VmRSS and VmHWM now, summed.
    fn rss(&self) -> Option<AgentsRss> {
        match self {
            Agents::Processes(processes) => Some(processes.rss()),
            _ => None,
        }
    }

    /// Lines the agent processes write on stderr, readable after [`Agents::stop`].
    fn log_lines(&self) -> Option<Arc<AtomicU64>> {
        match self {
            Agents::Processes(processes) => Some(processes.log_lines()),
            _ => None,
        }
    }

    /// Results published so far, readable from another task; `None` for agent processes.
    fn published_counter(&self) -> Option<Box<dyn Fn() -> u64 + Send + Sync>> {
        match self {
            Agents::Real { agents } => {
                let stats: Vec<Arc<AgentStats>> =
                    agents.iter().map(|agent| agent.stats.clone()).collect();
                Some(Box::new(move || {
                    stats
                        .iter()
                        .map(|stats| stats.results_published.load(Ordering::Relaxed))
                        .sum()
                }))
            }
            Agents::Processes(_) => None,
            Agents::Simulated(fleet) => {
                let counters = fleet.counters();
                Some(Box::new(move || counters.published()))
            }
        }
    }

    fn counts(&self) -> Counts {
        match self {
            Agents::Real { agents } => {
                let (mut ran, mut published, mut anomalies) = (0, 0, 0);
                for agent in agents {
                    let snapshot = agent.stats.snapshot();
                    ran += snapshot.ran;
                    published += snapshot.results_published + snapshot.results_spooled;
                    anomalies += snapshot.refused_signature
                        + snapshot.expired
                        + snapshot.replayed
                        + snapshot.undecodable;
                }
                Counts {
                    ran: Some(ran),
                    published: Some(published),
                    anomalies: Some(anomalies),
                }
            }
            Agents::Processes(_) => Counts {
                ran: None,
                published: None,
                anomalies: None,
            },
            Agents::Simulated(fleet) => {
                let counters = fleet.counters();
                Counts {
                    ran: Some(counters.answered()),
                    published: Some(counters.published()),
                    anomalies: Some(counters.refused() + counters.duplicates()),
                }
            }
        }
    }

    async fn stop(self) {
        match self {
            Agents::Real { agents } => support::stop_agents(agents).await,
            Agents::Processes(processes) => processes.stop().await,
            Agents::Simulated(fleet) => fleet.stop().await,
        }
    }
}

/// The store calls of the queue path, timed on a fresh database: what one task costs the
/// center in its database, without HTTP or the bus.
async fn store_timings(settings: &Settings, db: Db) {
    let (tasks, agents, pg_url) = (settings.tasks, settings.agents, settings.pg_url.clone());
    tokio::task::spawn_blocking(move || {
        let database = fresh_database(db, &pg_url).expect("fresh database");
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
        let summary = support::Summary::of(&latencies);
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
            summary.mean,
            summary.p50,
            summary.p99,
            support::mean(&latencies[..tenth]),
            support::mean(&latencies[latencies.len() - tenth..]),
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
    let namespace = support::namespace("elves-bench-bus");
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
    support::delete_broker_objects(&settings.amqp, &namespace, std::slice::from_ref(&agent)).await;
}
