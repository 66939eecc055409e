//! One batch over a fleet (not a test: it prints figures).
//!
//! `ELVES_BENCH_AGENTS` (default 1,000) simulated agents (`support::sim_agent`: light agents in
//! this process speaking the real protocol, answering each instruction at once) on RabbitMQ
//! (`ELVES_TEST_AMQP_URL`), a center in this process on SQLite, and one batch over all of them
//! at `ELVES_BENCH_BATCH_SIZE` (default `10%`, sliding window) created through the signed API.
//!
//! Reported: the time from `batch/create` to the batch's `finished` (polled every 100 ms from
//! `batch/status`), the sum of the tasks' run times as the center saw them (claim to stored
//! result, from the batch's queue in the database), their ratio (the parallelism the batch
//! achieved; the window allows at most the step size), and this process's peak RSS (VmHWM:
//! the center and the simulated agents together, the agents being a small part) next to its
//! baseline before the center started. Every agent must have run exactly once.
//!
//! Run: `cargo bench --bench batch`.

mod support;

use elves_center::store::testing::TestDatabase;
use elves_center::store::Store;
use elves_shared::wire::{AgentId, TaskId};
use std::time::{Duration, Instant};
use support::sim_agent::{SimConfig, SimFleet};

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
    let baseline_kib = support::status_kib(std::process::id(), "VmHWM:").unwrap_or(0);
    let mut env = support::center_env(dir.path(), &namespace);
    env.push(("ELVES_BUS__URL".to_string(), amqp.to_string()));
    env.push(("ELVES_DATABASE__URL".to_string(), database.url.clone()));
    env.push(("ELVES_QUEUE__TICK_MS".to_string(), "100".to_string()));
    let config = support::center_config(env);
    let bus = elves_shared::bus::open(amqp, &namespace).expect("bus");
    let center = support::start_center(config, bus);
    let api = support::Api::new(format!("http://{}", center.http_addr));

    let ids: Vec<AgentId> = (0..n_agents)
        .map(|n| AgentId::parse(&format!("sim-{n:05}")).expect("agent id"))
        .collect();
    let fleet = SimFleet::start(SimConfig::new(
        amqp,
        &namespace,
        &center.key_id,
        &center.public_key_hex,
        ids.clone(),
    ))
    .expect("simulated agents start");
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
    let peak_kib = support::status_kib(std::process::id(), "VmHWM:").unwrap_or(0);
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
    println!(
        "batch: peak RSS (VmHWM, center and simulated agents) {} MiB; baseline before the center {} MiB",
        peak_kib / 1024,
        baseline_kib / 1024
    );

    fleet.stop().await;
    center.stop();
    support::delete_broker_objects(amqp, &namespace, &ids).await;
}
