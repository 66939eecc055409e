//! One batch over a fleet (not a test: it prints figures).
//!
//! `ELVES_BENCH_AGENTS` (default 1,000) simulated agents (`elves_shared::sim`: light agents in
//! this process speaking the real protocol, answering each instruction at once), beating every
//! `ELVES_BENCH_HEARTBEAT_MS` (default one ms per agent, at least 1 s: 1,000 beats a second), on RabbitMQ
//! (`ELVES_TEST_AMQP_URL`), a center in this process on SQLite, and one batch over all of them
//! at `ELVES_BENCH_BATCH_SIZE` (default `10%`, sliding window) created through the signed API.
//!
//! Reported: the time from `batch/create` to the batch's `finished` (polled every 100 ms from
//! `batch/status`), the sum of the tasks' run times as the center saw them (claim to stored
//! result, from the batch's queue in the database), their ratio (the parallelism the batch
//! achieved; the window allows at most the step size), and the center's peak RSS (VmHWM). The
//! center is the release `elves-center` as a child process when it was built (`scripts/bench`
//! builds it, or `cargo build --release -p elves-center`), so that the peak is its own;
//! otherwise it runs in this process and the peak printed is the whole process's, simulated
//! agents included (their 100 bus connections dominate it). Every agent must have run exactly
//! once.
//!
//! Run: `cargo bench --bench batch`.

mod support;

use elves_center::store::testing::TestDatabase;
use elves_center::store::Store;
use elves_shared::sim::{SimConfig, SimFleet};
use elves_shared::wire::{AgentId, TaskId};
use std::time::{Duration, Instant};

/// Bounds every wait of the bench: a run that takes longer is broken, not slow.
const WAIT_LIMIT: Duration = Duration::from_secs(600);

fn main() {
    if support::listing_only() {
        return;
    }
    support::init_logging();
    let n_agents = support::env_count("ELVES_BENCH_AGENTS", 1_000);
    let size = std::env::var("ELVES_BENCH_BATCH_SIZE").unwrap_or_else(|_| "10%".to_string());
    let amqp = support::amqp_url();
    let runtime = support::runtime(2);
    runtime.block_on(run(n_agents, &size, &amqp));
}

async fn run(n_agents: usize, size: &str, amqp: &str) {
    let namespace = support::namespace("bench-batch");
    let dir = tempfile::tempdir().expect("temp dir");
    let database = TestDatabase::sqlite().expect("database");
    let mut env = support::center_env(dir.path(), &namespace);
    env.push(("ELVES_BUS__URL".to_string(), amqp.to_string()));
    env.push(("ELVES_DATABASE__URL".to_string(), database.url.clone()));
    env.push(("ELVES_QUEUE__TICK_MS".to_string(), "100".to_string()));
    let center = match support::release_binary("elves-center") {
        Some(bin) => {
            println!(
                "batch: center = {} (built {} ago)",
                bin.display(),
                support::built_ago(&bin)
            );
            Center::Process(support::CenterProcess::start(
                &bin,
                &support::repo_root(),
                env,
            ))
        }
        None => {
            println!("batch: center in this process (no release elves-center next to the bench)");
            let config = support::center_config(env);
            let bus = elves_shared::bus::open(amqp, &namespace).expect("bus");
            Center::InProcess(support::start_center(config, bus))
        }
    };
    let (base_url, key_id, public_key_hex) = center.identity();
    let api = support::Api::new(base_url);

    let ids: Vec<AgentId> = (0..n_agents)
        .map(|n| AgentId::parse(&format!("sim-{n:05}")).expect("agent id"))
        .collect();
    let mut fleet_config = SimConfig::new(amqp, &namespace, &key_id, &public_key_hex, ids.clone());
    // The deployment guide's sizing rule (ARCHITECTURE "Scale"): at most about 1,000 beats a
    // second per center, so 10,000 agents beat every 10 s or slower.
    fleet_config.heartbeat_interval_ms = u64::try_from(support::env_count(
        "ELVES_BENCH_HEARTBEAT_MS",
        (n_agents as u64).max(1_000) as usize,
    ))
    .unwrap_or(10_000);
    let fleet = SimFleet::start(fleet_config).expect("simulated agents start");
    let page_size = n_agents.to_string();
    let started = Instant::now();
    loop {
        let resolved = api
            .ok(
                "target/resolve",
                &[("target", "sim-*"), ("page_size", &page_size)],
            )
            .await;
        let online = resolved["agents"].as_array().map_or(0, |agents| {
            agents.iter().filter(|a| a["online"] == true).count()
        });
        if online == n_agents {
            break;
        }
        assert!(
            started.elapsed() < WAIT_LIMIT,
            "{online} of {n_agents} agents online"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("batch: {n_agents} simulated agents online, size {size}, sliding window");

    let created_at = Instant::now();
    let created = api
        .ok(
            "batch/create",
            &[
                ("target", "sim-*"),
                ("app", "noop"),
                ("func", "run"),
                ("size", size),
            ],
        )
        .await;
    let id = created["id"].as_str().expect("batch id").to_string();
    assert_eq!(created["count"], n_agents);
    let status = loop {
        let status = api.ok("batch/status", &[("id", &id)]).await;
        if status["state"] != "running" {
            break status;
        }
        assert!(
            created_at.elapsed() < WAIT_LIMIT,
            "batch not done: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = created_at.elapsed();
    let peak_kib = support::status_kib(center.pid(), "VmHWM:").unwrap_or(0);
    assert_eq!(status["state"], "finished", "{status}");
    assert_eq!(status["counts"]["ok"], n_agents, "{status}");
    let counters = fleet.counters();
    assert_eq!(counters.answered(), n_agents as u64, "each agent ran once");
    assert_eq!(counters.duplicates(), 0, "no instruction came twice");

    let store = Store::open(&database.url).expect("store");
    let tasks = store
        .queue_tasks(&TaskId::parse(&id).expect("batch id"))
        .expect("batch tasks");
    assert_eq!(tasks.len(), n_agents);
    let run_ms: u64 = tasks
        .iter()
        .map(|task| {
            task.finished_at
                .unwrap_or(0)
                .saturating_sub(task.dispatched_at.unwrap_or(0))
        })
        .sum();
    let took_ms = took.as_secs_f64() * 1000.0;
    println!(
        "batch: {n_agents} agents done in {took_ms:.0} ms; tasks' run times (claim to stored result) sum to {run_ms} ms, \
         mean {:.1} ms; achieved parallelism {:.1}",
        run_ms as f64 / n_agents as f64,
        run_ms as f64 / took_ms
    );
    match &center {
        Center::Process(_) => println!("batch: center peak RSS (VmHWM) {} MiB", peak_kib / 1024),
        Center::InProcess(_) => println!(
            "batch: peak RSS of this process (VmHWM: center and simulated agents) {} MiB",
            peak_kib / 1024
        ),
    }

    fleet.stop().await;
    match center {
        Center::Process(process) => process.stop(),
        Center::InProcess(handle) => handle.stop(),
    }
    support::delete_broker_objects(amqp, &namespace, &ids).await;
}

enum Center {
    Process(support::CenterProcess),
    InProcess(elves_center::CenterHandle),
}

impl Center {
    /// (base URL, instruction key id, public key hex).
    fn identity(&self) -> (String, String, String) {
        match self {
            Center::Process(process) => (
                process.base_url.clone(),
                process.key_id.clone(),
                process.public_key_hex.clone(),
            ),
            Center::InProcess(handle) => (
                format!("http://{}", handle.http_addr),
                handle.key_id.clone(),
                handle.public_key_hex.clone(),
            ),
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Center::Process(process) => process.pid(),
            Center::InProcess(_) => std::process::id(),
        }
    }
}
