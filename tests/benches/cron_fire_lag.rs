//! Cron fire lag and center CPU (not a test: it prints figures).
//!
//! 10,000 enabled crons (`ELVES_BENCH_CRONS`) with the rule `0/1 * * * * ?`, spread over 100
//! simulated agents on the in-process bus. The database is SQLite in a temp dir; when
//! `ELVES_BENCH_PG_URL` is set, the same run follows on a fresh PostgreSQL database of that
//! server, and both are reported. Each simulated agent only records when an instruction arrives
//! and acks it. Measured over `ELVES_BENCH_SECONDS` (default 20) after a 3 s warm-up:
//! - fire lag: arrival at the agent's queue minus the scheduled fire time (the instruction's
//!   `issued_at`), median, p99 and max;
//! - firings received against those expected (crons × seconds);
//! - center CPU: utime + stime of this process (`/proc/self/stat`) over the run, minus the
//!   simulated agents' threads (`/proc/self/task/*/stat`), as a share of one core. PostgreSQL's
//!   own processes are not counted.
//!
//! Run: `cargo bench --bench cron_fire_lag` (release). Target: p99 ≤ 50 ms.

mod support;

use elves_center::store::testing::TestDatabase;
use elves_center::store::{CronDefinition, CronSource, Store};
use elves_shared::bus::QueueSpec;
use elves_shared::time::now_unix_ms;
use elves_shared::wire::{self, routing, AgentId, Instruction, Mode, TaskId};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::Summary;

const AGENTS: usize = 100;
const AGENT_THREAD: &str = "bench-agents";

fn main() {
    if support::listing_only() {
        return;
    }
    support::init_logging();
    let n_crons = support::env_number("ELVES_BENCH_CRONS", 10_000) as usize;
    let seconds = support::env_number("ELVES_BENCH_SECONDS", 20);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(AGENT_THREAD)
        .enable_all()
        .build()
        .expect("runtime");

    let sqlite = TestDatabase::sqlite().expect("sqlite database");
    run(&runtime, "SQLite", &sqlite.url, n_crons, seconds);
    drop(sqlite);
    if let Some(pg_url) = std::env::var("ELVES_BENCH_PG_URL")
        .ok()
        .filter(|url| !url.is_empty())
    {
        let postgres = TestDatabase::postgres(&pg_url).expect("postgres database");
        run(&runtime, "PostgreSQL", &postgres.url, n_crons, seconds);
    }
}

/// One measured run on the database at `database_url`: creates the crons, starts a center and
/// the simulated agents, prints the figures.
fn run(
    runtime: &tokio::runtime::Runtime,
    backend: &str,
    database_url: &str,
    n_crons: usize,
    seconds: u64,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(database_url).expect("database");
    let now = now_unix_ms();
    // One transaction per cron: on PostgreSQL each waits for its commit to be flushed, so
    // several threads create them (their commits are flushed together); SQLite has one writer.
    let n_threads = if database_url.starts_with("postgres") {
        8
    } else {
        1
    };
    std::thread::scope(|scope| {
        for thread in 0..n_threads {
            let store = &store;
            scope.spawn(move || {
                for n in (thread..n_crons).step_by(n_threads) {
                    let definition = CronDefinition {
                        ip: format!("bench-{}", n % AGENTS),
                        app: "bench".to_string(),
                        func: "tick".to_string(),
                        param: String::new(),
                        rule: "0/1 * * * * ?".to_string(),
                        mode: Mode::NP,
                        timeout_s: 30,
                        proxy: String::new(),
                    };
                    store
                        .create_cron(
                            &TaskId::random(),
                            &definition,
                            &CronSource::Api,
                            true,
                            support::AUTH_ID,
                            now,
                        )
                        .expect("cron");
                }
            });
        }
    });
    drop(store);

    let namespace = support::namespace("bench");
    let bus = elves_shared::bus::open("inproc", &namespace).expect("bus");
    let lags: Arc<Mutex<Vec<(u64, u64)>>> = Arc::new(Mutex::new(Vec::new()));
    let consumers = runtime.block_on(async {
        let mut consumers = Vec::new();
        for n in 0..AGENTS {
            let agent = AgentId::parse(&format!("bench-{n}")).expect("agent id");
            let mut consumer = bus
                .consume(
                    QueueSpec {
                        name: bus.queue_name(&format!("agent.{agent}")),
                        bindings: vec![routing::agent(&agent)],
                        durable: true,
                    },
                    1024,
                )
                .await
                .expect("consume");
            let lags = lags.clone();
            consumers.push(tokio::spawn(async move {
                while let Some(delivery) = consumer.next().await {
                    let arrived = now_unix_ms();
                    if let Ok(instruction) = wire::decode::<Instruction>(&delivery.message.body) {
                        let lag = arrived.saturating_sub(instruction.issued_at);
                        lags.lock()
                            .expect("lags")
                            .push((instruction.issued_at, lag));
                    }
                    delivery.ack().await;
                }
            }));
        }
        consumers
    });

    let mut env = support::center_env(dir.path(), &namespace);
    env.push(("ELVES_DATABASE__URL".to_string(), database_url.to_string()));
    env.push((
        "ELVES_CRON__DIR".to_string(),
        dir.path().join("cron.d").display().to_string(),
    ));
    let center = support::start_center(support::center_config(env), bus);

    std::thread::sleep(Duration::from_secs(3));
    let cpu_before = support::process_cpu_ticks() - support::thread_cpu_ticks(AGENT_THREAD);
    let window_start = now_unix_ms();
    std::thread::sleep(Duration::from_secs(seconds));
    let window_end = now_unix_ms();
    let cpu_after = support::process_cpu_ticks() - support::thread_cpu_ticks(AGENT_THREAD);
    // Firings of the window that are still on their way get a moment to arrive.
    std::thread::sleep(Duration::from_secs(1));
    center.stop();
    for consumer in consumers {
        consumer.abort();
    }

    let ticks_per_second = support::clock_ticks_per_second();
    let center_cpu_s = cpu_after.saturating_sub(cpu_before) as f64 / ticks_per_second;
    let wall_s = (window_end - window_start) as f64 / 1000.0;
    let window: Vec<f64> = lags
        .lock()
        .expect("lags")
        .iter()
        .filter(|(fire_time, _)| *fire_time >= window_start && *fire_time < window_end)
        .map(|(_, lag)| *lag as f64)
        .collect();
    let fire_seconds = (window_start / 1000 + 1..=window_end.saturating_sub(1) / 1000).count();
    println!("cron fire lag: {n_crons} crons firing every second, {AGENTS} simulated agents, in-process bus, {backend}");
    println!(
        "  firings received: {} of {} expected over {wall_s:.1} s",
        window.len(),
        n_crons * fire_seconds
    );
    if !window.is_empty() {
        let lag = Summary::of(&window);
        println!(
            "  fire lag (ms): median {:.0}, p99 {:.0}, max {:.0}",
            lag.p50, lag.p99, lag.max
        );
    }
    println!(
        "  center CPU: {center_cpu_s:.2} s over {wall_s:.1} s = {:.0}% of one core",
        100.0 * center_cpu_s / wall_s
    );
}
