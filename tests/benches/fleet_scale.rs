//! Fleet scale (not a test: it prints figures): what a fleet of simulated agents
//! (`elves_shared::sim`, what `elves sim` runs) costs a release center on RabbitMQ and
//! PostgreSQL, and how the center rides out a restart of itself and of the broker.
//!
//! For each fleet size of `ELVES_BENCH_FLEET_AGENTS` (default `1000,3000,10000`), on a fresh
//! private RabbitMQ node (its own port and data, started with this process's descriptor limit
//! raised to the hard limit and the memory watermark of `ELVES_BENCH_BROKER_WATERMARK`, default
//! 0.6) and a fresh PostgreSQL database (`ELVES_TEST_PG_URL`):
//! 1. RT calls to one lone simulated agent (`ELVES_BENCH_RT_CALLS`, default 200): the baseline;
//! 2. the fleet starts (heartbeat every `ELVES_BENCH_HEARTBEAT_MS`, default 30,000, spread over
//!    up to 10 s): time until the center has every agent online;
//! 3. at rest for `ELVES_BENCH_REST_S` (default 30) seconds: the center's CPU and RSS, the
//!    heartbeat intake lag (agent's send → presence recorded, p50/p99 over the latest 8,192
//!    beats), the broker's RSS and descriptors;
//! 4. RT calls to random agents of the fleet, against the baseline;
//! 5. one queue of `ELVES_BENCH_TASKS` (default 10,000) tasks round-robin over all agents:
//!    tasks/s from the commit until the last is settled in the database;
//! 6. the center restarted (SIGINT, then the same data and database): time until it has every
//!    agent online again;
//! 7. the broker restarted (SIGTERM, then the same data) while a second queue like 5 runs:
//!    time from the broker accepting connections again until every agent's heartbeat has
//!    reached the center, the fewest agents the center counted online meanwhile, and the
//!    queue's outcome (every task finished once, none lost).
//!
//! `cargo build --release -p elves-center && cargo bench --bench fleet_scale` (`scripts/bench`
//! builds the binary too).

mod support;

#[allow(clippy::unwrap_used, dead_code)]
#[path = "../harness/rabbit_node.rs"]
mod rabbit_node;

use elves_center::store::testing::TestDatabase;
use elves_center::store::{Store, TaskStatus};
use elves_shared::sim::{self, SimConfig, SimFleet};
use elves_shared::time::now_unix_ms;
use elves_shared::wire::{AgentId, TaskId};
use rabbit_node::RabbitNode;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Api, CenterProcess, Summary};

/// Tasks per `queue/addtasks` call (the API's limit).
const ADD_BATCH: usize = 10_000;
/// How long a step may take before the bench gives up on it.
const STEP_TIMEOUT: Duration = Duration::from_secs(300);

struct Settings {
    counts: Vec<usize>,
    heartbeat_ms: u64,
    tasks: usize,
    rt_calls: usize,
    rest_s: u64,
    watermark: String,
    pg_url: String,
}

fn main() {
    if support::listing_only() {
        return;
    }
    support::init_logging();
    let Some(bin) = support::release_binary("elves-center") else {
        panic!("build the center first: cargo build --release -p elves-center");
    };
    let descriptors = raise_descriptor_limit();
    let settings = Settings {
        counts: std::env::var("ELVES_BENCH_FLEET_AGENTS")
            .unwrap_or_else(|_| "1000,3000,10000".to_string())
            .split(',')
            .map(|count| {
                count
                    .trim()
                    .parse()
                    .expect("ELVES_BENCH_FLEET_AGENTS: numbers")
            })
            .collect(),
        heartbeat_ms: support::env_number("ELVES_BENCH_HEARTBEAT_MS", 30_000).max(100),
        tasks: support::env_count("ELVES_BENCH_TASKS", 10_000),
        rt_calls: support::env_count("ELVES_BENCH_RT_CALLS", 200),
        rest_s: support::env_number("ELVES_BENCH_REST_S", 30).max(1),
        watermark: std::env::var("ELVES_BENCH_BROKER_WATERMARK")
            .unwrap_or_else(|_| "0.6".to_string()),
        pg_url: support::pg_url(),
    };
    eprintln!(
        "fleet_scale: center {} (built {} ago), descriptors {descriptors}, heartbeat {} ms, {} tasks",
        bin.display(),
        support::built_ago(&bin),
        settings.heartbeat_ms,
        settings.tasks
    );
    let runtime = support::runtime(2);
    let mut reports = Vec::new();
    for &count in &settings.counts {
        let report = runtime.block_on(run(&bin, &settings, count));
        eprintln!("{}", report.line());
        reports.push(report);
    }
    println!();
    println!(
        "fleet_scale: heartbeat {} ms, {} tasks, RT calls {}, rest {} s",
        settings.heartbeat_ms, settings.tasks, settings.rt_calls, settings.rest_s
    );
    for report in &reports {
        println!("{}", report.line());
    }
}

/// Raises this process's soft descriptor limit to its hard limit, so that the broker node it
/// starts (which inherits it) can hold one descriptor per connection of a large fleet.
fn raise_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    limit.rlim_cur
}

#[derive(Default)]
struct Report {
    agents: usize,
    all_online_s: f64,
    center_rss_mib: f64,
    center_peak_rss_mib: f64,
    center_cpu_at_rest: f64,
    intake_lag: Value,
    broker_rss_mib: f64,
    broker_fds: usize,
    rt_one: Option<Summary>,
    rt_fleet: Option<Summary>,
    tasks_per_s: f64,
    center_restart_online_s: f64,
    broker_restart_online_s: f64,
    broker_restart_min_online: u64,
    broker_restart_queue: String,
    broker_rss_after_restart_mib: f64,
}

impl Report {
    fn line(&self) -> String {
        let rt = |summary: &Option<Summary>| {
            summary.map_or("-".to_string(), |s| {
                format!("p50 {:.2} p99 {:.2} ms", s.p50, s.p99)
            })
        };
        let ratio = match (self.rt_one, self.rt_fleet) {
            (Some(one), Some(fleet)) if one.p50 > 0.0 => format!("{:.2}×", fleet.p50 / one.p50),
            _ => "-".to_string(),
        };
        format!(
            "{} agents: all online {:.1} s | center at rest RSS {:.1} MiB (peak {:.1}), CPU {:.1}% of a core | intake lag {} | broker RSS {:.0} MiB, {} fds | RT one agent {}, random of fleet {} ({ratio}) | {} tasks/s | center restart → all online {:.1} s | broker restart → all heard {:.1} s, fewest online {}, queue {} , broker RSS after {:.0} MiB",
            self.agents,
            self.all_online_s,
            self.center_rss_mib,
            self.center_peak_rss_mib,
            self.center_cpu_at_rest * 100.0,
            self.intake_lag,
            self.broker_rss_mib,
            self.broker_fds,
            rt(&self.rt_one),
            rt(&self.rt_fleet),
            self.tasks_per_s.round(),
            self.center_restart_online_s,
            self.broker_restart_online_s,
            self.broker_restart_min_online,
            self.broker_restart_queue,
            self.broker_rss_after_restart_mib,
        )
    }
}

async fn run(bin: &Path, settings: &Settings, count: usize) -> Report {
    let mut report = Report {
        agents: count,
        ..Report::default()
    };
    let conf = format!(
        "vm_memory_high_watermark.relative = {}\n",
        settings.watermark
    );
    let mut node = RabbitNode::start_configured(rabbit_node::free_port(), &conf).await;
    let namespace = support::namespace("fleet");
    let database = TestDatabase::postgres(&settings.pg_url).expect("a fresh PostgreSQL database");
    let store = Store::open(&database.url).expect("the bench's own store handle");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut env = support::center_env(dir.path(), &namespace);
    env.push(("ELVES_BUS__URL".to_string(), node.url()));
    env.push(("ELVES_DATABASE__URL".to_string(), database.url.clone()));
    let root = support::repo_root();
    let mut center = CenterProcess::start(bin, &root, env.clone());
    let mut api = Api::new(center.base_url.clone());

    // 1. The baseline: one agent alone.
    let solo_ids = sim::agent_ids("solo", 1).expect("ids");
    let solo = start_fleet(
        &node,
        &namespace,
        &center,
        solo_ids.clone(),
        settings.heartbeat_ms,
        0,
    );
    wait_fleet_online(&api, "solo-", 1).await;
    report.rt_one = Some(rt_calls(&api, &solo_ids, settings.rt_calls).await);
    solo.stop().await;

    // 2. The fleet comes online.
    let ids = sim::agent_ids("fleet", count).expect("ids");
    let started = Instant::now();
    let fleet = start_fleet(
        &node,
        &namespace,
        &center,
        ids.clone(),
        settings.heartbeat_ms,
        (count as u64).min(10_000),
    );
    let counters = fleet.counters();
    wait_fleet_online(&api, "fleet-", count).await;
    report.all_online_s = started.elapsed().as_secs_f64();
    eprintln!("[{count}] all online after {:.1} s", report.all_online_s);

    // 3. At rest. Nothing polls the center meanwhile.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ticks_before = process_ticks(center.pid());
    let rest_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(settings.rest_s)).await;
    let ticks = process_ticks(center.pid()).saturating_sub(ticks_before);
    report.center_cpu_at_rest =
        ticks as f64 / support::clock_ticks_per_second() / rest_started.elapsed().as_secs_f64();
    report.center_rss_mib = kib_to_mib(support::status_kib(center.pid(), "VmRSS:"));
    report.center_peak_rss_mib = kib_to_mib(support::status_kib(center.pid(), "VmHWM:"));
    let health = healthz(&api).await;
    report.intake_lag = health["heartbeat"]["intake_lag_ms"].clone();
    (report.broker_rss_mib, report.broker_fds) = broker_usage(&node);
    eprintln!(
        "[{count}] at rest: center {:.1}% CPU, RSS {:.1} MiB; intake lag {}; broker {:.0} MiB, {} fds",
        report.center_cpu_at_rest * 100.0,
        report.center_rss_mib,
        report.intake_lag,
        report.broker_rss_mib,
        report.broker_fds
    );

    // 4. RT to random agents of the fleet.
    report.rt_fleet = Some(rt_calls(&api, &ids, settings.rt_calls).await);

    // 5. One queue over the whole fleet.
    let (queue_id, total) = fill_queue(&api, &ids, settings.tasks).await;
    let committed = Instant::now();
    api.ok("queue/commit", &[("queue_id", &queue_id)]).await;
    let outcome = wait_queue_settled(&store, &queue_id, total).await;
    report.tasks_per_s = total as f64 / committed.elapsed().as_secs_f64();
    assert_eq!(
        outcome.get("finish").copied().unwrap_or(0),
        total,
        "every task finished: {outcome:?}"
    );
    assert_eq!(counters.duplicates(), 0, "no task delivered twice");
    eprintln!("[{count}] {total} tasks at {:.0}/s", report.tasks_per_s);

    // 6. The center restarts.
    let key_id = center.key_id.clone();
    center.stop();
    let restarted = Instant::now();
    center = CenterProcess::start(bin, &root, env.clone());
    assert_eq!(center.key_id, key_id, "the restarted center keeps its key");
    api = Api::new(center.base_url.clone());
    wait_fleet_online(&api, "fleet-", count).await;
    report.center_restart_online_s = restarted.elapsed().as_secs_f64();
    eprintln!(
        "[{count}] center restart: all online after {:.1} s",
        report.center_restart_online_s
    );

    // 7. The broker restarts under the fleet while a queue runs.
    let answered_before = counters.answered();
    let duplicates_before = counters.duplicates();
    let (queue_id, total) = fill_queue(&api, &ids, settings.tasks).await;
    api.ok("queue/commit", &[("queue_id", &queue_id)]).await;
    let fewest = Arc::new(AtomicU64::new(count as u64));
    let watcher = tokio::spawn(watch_fewest_online(api.base_url.clone(), fewest.clone()));
    node.stop();
    node.start().await;
    let back = now_unix_ms();
    let back_at = Instant::now();
    wait_all_heard_since(&store, "fleet-", count, back).await;
    report.broker_restart_online_s = back_at.elapsed().as_secs_f64();
    let outcome = wait_queue_settled(&store, &queue_id, total).await;
    watcher.abort();
    report.broker_restart_min_online = fewest.load(Ordering::Relaxed);
    report.broker_restart_queue = format!(
        "{:?}, answered {} (redelivered, not rerun: {})",
        outcome,
        counters.answered() - answered_before,
        counters.duplicates() - duplicates_before
    );
    (report.broker_rss_after_restart_mib, _) = broker_usage(&node);
    eprintln!(
        "[{count}] broker restart: all heard {:.1} s after it accepted connections; queue {}",
        report.broker_restart_online_s, report.broker_restart_queue
    );

    fleet.stop().await;
    center.stop();
    node.stop();
    report
}

fn start_fleet(
    node: &RabbitNode,
    namespace: &str,
    center: &CenterProcess,
    ids: Vec<AgentId>,
    heartbeat_ms: u64,
    start_jitter_ms: u64,
) -> SimFleet {
    let mut config = SimConfig::new(
        &node.url(),
        namespace,
        &center.key_id,
        &center.public_key_hex,
        ids,
    );
    config.heartbeat_interval_ms = heartbeat_ms;
    config.start_jitter_ms = start_jitter_ms;
    SimFleet::start(config).expect("simulated agents start")
}

async fn healthz(api: &Api) -> Value {
    api.get("/healthz").await.json().await.expect("healthz")
}

/// Agents whose id starts with `prefix` that the center counts online.
async fn online_with_prefix(api: &Api, prefix: &str) -> u64 {
    let health = healthz(api).await;
    health["heartbeat"]["online"]
        .as_object()
        .map_or(0, |online| {
            online.keys().filter(|id| id.starts_with(prefix)).count() as u64
        })
}

async fn wait_fleet_online(api: &Api, prefix: &str, count: usize) {
    let started = Instant::now();
    let mut last_report = Instant::now();
    loop {
        let online = online_with_prefix(api, prefix).await;
        if online >= count as u64 {
            return;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  {online}/{count} online after {:.0} s",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        assert!(
            started.elapsed() < STEP_TIMEOUT,
            "only {online} of {count} agents came online"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `calls` RT calls one after another, each to a random agent of `ids`; their latencies (ms).
async fn rt_calls(api: &Api, ids: &[AgentId], calls: usize) -> Summary {
    let call = |id: &AgentId| {
        let ip = id.to_string();
        async move {
            let started = Instant::now();
            let answer = api
                .call(
                    "rt/exec",
                    &[
                        ("ip", &ip),
                        ("app", "noop"),
                        ("func", "run"),
                        ("param", "{}"),
                    ],
                )
                .await;
            assert_eq!(
                answer["result"]["worker_flag"], "1",
                "rt/exec to {ip}: {answer}"
            );
            support::elapsed_ms(started)
        }
    };
    for id in ids.iter().take(10) {
        call(id).await;
    }
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let id = &ids[rand::random::<usize>() % ids.len()];
        samples.push(call(id).await);
    }
    Summary::of(&samples)
}

/// A queue of `tasks` no-op tasks round-robin over `ids`, added but not committed.
async fn fill_queue(api: &Api, ids: &[AgentId], tasks: usize) -> (String, usize) {
    let queue = api.ok("queue/create", &[("app", "noop")]).await;
    let queue_id = queue["id"].as_str().expect("queue id").to_string();
    let all: Vec<Value> = (0..tasks)
        .map(|n| json!({ "ip": ids[n % ids.len()].to_string(), "func": "run", "param": n.to_string() }))
        .collect();
    for chunk in all.chunks(ADD_BATCH) {
        let text = Value::Array(chunk.to_vec()).to_string();
        api.ok(
            "queue/addtasks",
            &[("queue_id", &queue_id), ("tasks", &text)],
        )
        .await;
    }
    (queue_id, tasks)
}

/// Waits until every task of the queue is settled in the database; the count per status.
async fn wait_queue_settled(
    store: &Store,
    queue_id: &str,
    total: usize,
) -> BTreeMap<String, usize> {
    let queue = TaskId::parse(queue_id).expect("queue id");
    let started = Instant::now();
    loop {
        let (store, queue) = (store.clone(), queue.clone());
        let rows = tokio::task::spawn_blocking(move || store.queue_tasks(&queue))
            .await
            .expect("poll")
            .expect("the queue's tasks");
        let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
        for row in &rows {
            *by_status
                .entry(row.status.as_str().to_string())
                .or_default() += 1;
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
        if settled == total {
            return by_status;
        }
        assert!(
            started.elapsed() < STEP_TIMEOUT,
            "queue {queue_id} not settled: {by_status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every agent whose id starts with `prefix` has a heartbeat stored at `since` or
/// later (the center writes rows about a second after the beat).
async fn wait_all_heard_since(store: &Store, prefix: &str, count: usize, since: u64) {
    let started = Instant::now();
    loop {
        let reader = store.clone();
        let rows = tokio::task::spawn_blocking(move || reader.agents_seen_since(since))
            .await
            .expect("poll")
            .expect("agent rows");
        let heard = rows
            .iter()
            .filter(|row| row.id.as_str().starts_with(prefix))
            .count();
        if heard >= count {
            return;
        }
        assert!(
            started.elapsed() < STEP_TIMEOUT,
            "only {heard} of {count} agents heard after the broker restart"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Polls the fleet's online count every second until aborted, keeping the fewest in
/// `fewest`.
async fn watch_fewest_online(base_url: String, fewest: Arc<AtomicU64>) {
    let api = Api::new(base_url);
    loop {
        let online = online_with_prefix(&api, "fleet-").await;
        fewest.fetch_min(online, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn kib_to_mib(kib: Option<u64>) -> f64 {
    kib.unwrap_or(0) as f64 / 1024.0
}

/// utime + stime of process `pid`, in clock ticks.
fn process_ticks(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = text.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<u64> = after
        .split_whitespace()
        .map(|field| field.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15; the list starts at field 3.
    fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0)
}

/// The broker node's RSS (MiB, summed over its process group) and the descriptors its Erlang
/// VM holds.
fn broker_usage(node: &RabbitNode) -> (f64, usize) {
    let Some(group) = node.server_pid() else {
        return (0.0, 0);
    };
    let mut rss_kib = 0;
    let mut fds = 0;
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return (0.0, 0);
    };
    for process in processes.flatten() {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        // The process group is field 5; the list after ')' starts at field 3.
        let in_group = after.split_whitespace().nth(2) == Some(group.to_string().as_str());
        if !in_group {
            continue;
        }
        rss_kib += support::status_kib(pid, "VmRSS:").unwrap_or(0);
        if stat.contains("(beam.smp)") {
            fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
        }
    }
    (rss_kib as f64 / 1024.0, fds)
}
