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

use elves_center::store::testing::TestDatabase;
use elves_center::store::{CronDefinition, CronSource, Store};
use elves_shared::bus::QueueSpec;
use elves_shared::time::now_unix_ms;
use elves_shared::wire::{self, routing, AgentId, Instruction, Mode, TaskId};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const AGENTS: usize = 100;
const AGENT_THREAD: &str = "bench-agents";

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return;
    }
    // lapin's spans reach `log` as ERROR lines; RUST_LOG must not bring them back.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .filter_module("tracing::span", log::LevelFilter::Off)
        .init();
    let n_crons: usize = env_number("ELVES_BENCH_CRONS", 10_000);
    let seconds: u64 = env_number("ELVES_BENCH_SECONDS", 20) as u64;
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
                            "bench",
                            now,
                        )
                        .expect("cron");
                }
            });
        }
    });
    drop(store);

    let namespace = format!("bench-{:x}", rand::random::<u32>());
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

    let env = vec![
        (
            "ELVES_DATA_DIR".to_string(),
            dir.path().display().to_string(),
        ),
        ("ELVES_AUTH__AUTH_ID".to_string(), "bench".to_string()),
        (
            "ELVES_AUTH__AUTH_KEY".to_string(),
            "bench-key-0123456789".to_string(),
        ),
        ("ELVES_BUS__NAMESPACE".to_string(), namespace),
        ("ELVES_DATABASE__URL".to_string(), database_url.to_string()),
        (
            "ELVES_CRON__DIR".to_string(),
            dir.path().join("cron.d").display().to_string(),
        ),
    ];
    let config: elves_center::config::CenterConfig =
        elves_shared::config::load(None, env).expect("center config");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let center = elves_center::start(config, listener, bus).expect("center");

    std::thread::sleep(Duration::from_secs(3));
    let cpu_before = process_cpu_ticks() - agent_thread_ticks();
    let window_start = now_unix_ms();
    std::thread::sleep(Duration::from_secs(seconds));
    let window_end = now_unix_ms();
    let cpu_after = process_cpu_ticks() - agent_thread_ticks();
    // Firings of the window that are still on their way get a moment to arrive.
    std::thread::sleep(Duration::from_secs(1));
    center.stop();
    for consumer in consumers {
        consumer.abort();
    }

    let ticks_per_second = clock_ticks_per_second();
    let center_cpu_s = cpu_after.saturating_sub(cpu_before) as f64 / ticks_per_second;
    let wall_s = (window_end - window_start) as f64 / 1000.0;
    let mut window: Vec<f64> = lags
        .lock()
        .expect("lags")
        .iter()
        .filter(|(fire_time, _)| *fire_time >= window_start && *fire_time < window_end)
        .map(|(_, lag)| *lag as f64)
        .collect();
    window.sort_by(f64::total_cmp);
    let fire_seconds = (window_start / 1000 + 1..=window_end.saturating_sub(1) / 1000).count();
    println!("cron fire lag: {n_crons} crons firing every second, {AGENTS} simulated agents, in-process bus, {backend}");
    println!(
        "  firings received: {} of {} expected over {wall_s:.1} s",
        window.len(),
        n_crons * fire_seconds
    );
    if !window.is_empty() {
        println!(
            "  fire lag (ms): median {:.0}, p99 {:.0}, max {:.0}",
            percentile(&window, 50.0),
            percentile(&window, 99.0),
            window[window.len() - 1]
        );
    }
    println!(
        "  center CPU: {center_cpu_s:.2} s over {wall_s:.1} s = {:.0}% of one core",
        100.0 * center_cpu_s / wall_s
    );
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], pct: f64) -> f64 {
    let rank = ((pct / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
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

fn process_cpu_ticks() -> u64 {
    stat_ticks(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default())
}

/// CPU of the simulated agents' threads.
fn agent_thread_ticks() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .map(|name| name.trim().starts_with(AGENT_THREAD))
                .unwrap_or(false)
        })
        .map(|task| {
            stat_ticks(&std::fs::read_to_string(task.path().join("stat")).unwrap_or_default())
        })
        .sum()
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}
