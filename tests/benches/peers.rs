//! elves against its peers (not a test: it prints figures, the project's published benchmark).
//!
//! Systems, each with the same tiny shell worker (`WORKER`, an elves app `app-worker`; the
//! floor's responder and Celery's task spawn the same script):
//! - `floor`: a bare lapin request/reply on the same RabbitMQ, in this process, whose
//!   responder spawns the worker per request (`peers/floor.rs`);
//! - `elves`: the release `elves-center` and one `elves-agent` as processes on RabbitMQ and a
//!   fresh PostgreSQL database, called over HTTP with keep-alive from a Rust client (reqwest)
//!   and from a plain Python client (`peers/client.py`, http.client), MD5-signed;
//! - `elves-sqlite`: the same center and agent on RabbitMQ with SQLite: it prices the database;
//! - `elves-up`: the release `elves` binary's `elves up` (one process, in-process bus, SQLite)
//!   on a free port with a temp data dir, from the Rust client;
//! - `celery-c2`, `celery-c8`: Celery 5 on the same broker (its own queue), a prefork worker of
//!   concurrency 2 and 8, rpc:// results, called from Python (`peers/celery_app.py`); the
//!   virtual environment is `target/peers-venv`, made once.
//!
//! Two measures each: RT, one call at a time (p50/p90/p99 of `ELVES_PEERS_CALLS`, default 300,
//! after 10 warm-up calls); and queue drain of `ELVES_PEERS_TASKS` (default 5,000) tasks on one
//! agent: the floor with 8 in flight, from the responder's start to the last answer (the
//! requests queued first); elves from `queue/commit` to the last stored finish time (filled
//! with `queue/addtasks` when the center has it, else `queue/addtask`); Celery from the first
//! `delay()` to the last result.
//!
//! `ELVES_PEERS_REPS` repetitions (default 3) each measure every system in turn, so that drift
//! on the machine hits all alike; a table per repetition, then the medians with the ratios the
//! project is judged on, and the versions. `ELVES_PEERS_ONLY=floor,elves` runs some systems.
//! Smoke run: `ELVES_PEERS_CALLS=5 ELVES_PEERS_TASKS=20 ELVES_PEERS_REPS=1`.
//!
//! Run: `scripts/bench peers` (builds the release binaries first).

#[path = "peers/celery.rs"]
mod celery;
#[path = "peers/elves.rs"]
mod elves;
#[path = "peers/floor.rs"]
mod floor;
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// The worker every system runs: an elves app's native entry.
const WORKER: &str =
    "#!/bin/sh\necho '<ElvesWFlag>true</ElvesWFlag><ElvesWResult>ok</ElvesWResult>'\n";
/// What the worker prints: the floor's bare round trips answer it without running anything.
pub const WORKER_OUTPUT: &[u8] = b"<ElvesWFlag>true</ElvesWFlag><ElvesWResult>ok</ElvesWResult>\n";
/// The param of every call; the worker gets it base64-encoded, as an agent passes it.
pub const PARAM: &str = "{}";
const WARMUP: usize = 10;

const SYSTEMS: [&str; 6] = [
    "floor",
    "elves",
    "elves-sqlite",
    "elves-up",
    "celery-c2",
    "celery-c8",
];

/// The rows of a table, in the order they are printed.
const FLOOR: &str = "floor: bare lapin request/reply";
const ELVES_RUST: &str = "elves distributed, Rust client";
const ELVES_PYTHON: &str = "elves distributed, Python client";
/// The distributed system with SQLite instead of PostgreSQL: the cut that prices the database.
const ELVES_SQLITE: &str = "elves on RabbitMQ + SQLite, Rust";
const ELVES_UP: &str = "elves up, Rust client";
const CELERY_C2: &str = "Celery 5, prefork -c 2";
const CELERY_C8: &str = "Celery 5, prefork -c 8";
/// Cuts of the RT path (RT figures only), measured with the systems they cut.
const CUT_HOPS: &str = "cut: two broker hops, no worker";
const CUT_SPAWN: &str = "cut: worker spawn alone";
const CUT_HTTP: &str = "cut: elves HTTP call, refused";
const ROWS: [&str; 10] = [
    FLOOR,
    ELVES_RUST,
    ELVES_PYTHON,
    ELVES_SQLITE,
    ELVES_UP,
    CELERY_C2,
    CELERY_C8,
    CUT_HOPS,
    CUT_SPAWN,
    CUT_HTTP,
];

pub struct Settings {
    calls: usize,
    tasks: usize,
    reps: usize,
    only: Vec<String>,
    pub amqp: String,
    pub pg_url: String,
    pub root: PathBuf,
    pub center_bin: PathBuf,
    pub agent_bin: PathBuf,
    elves_bin: PathBuf,
}

/// RT latencies in ms, in call order.
pub struct RtSamples(pub Vec<f64>);

/// A queue drain: `tasks` done in `seconds`.
pub struct Drain {
    pub tasks: usize,
    pub seconds: f64,
}

impl Drain {
    fn rate(&self) -> f64 {
        self.tasks as f64 / self.seconds.max(1e-6)
    }
}

/// What one row of a table holds.
#[derive(Default, Clone, Copy)]
struct Figures {
    p50: Option<f64>,
    p90: Option<f64>,
    p99: Option<f64>,
    drain: Option<f64>,
}

impl Figures {
    fn rt(mut self, samples: &RtSamples) -> Figures {
        assert!(!samples.0.is_empty(), "an RT run gave no samples");
        self.p50 = Some(support::percentile(&samples.0, 50.0));
        self.p90 = Some(support::percentile(&samples.0, 90.0));
        self.p99 = Some(support::percentile(&samples.0, 99.0));
        self
    }

    fn drain(mut self, drain: &Drain) -> Figures {
        self.drain = Some(drain.rate());
        self
    }
}

type Table = BTreeMap<&'static str, Figures>;

/// The worker script, as the no-op elves app `noop` in `apps_dir`.
pub fn install_worker(apps_dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let app_dir = apps_dir.join("noop");
    std::fs::create_dir_all(&app_dir).expect("app dir");
    let worker = app_dir.join("app-worker");
    std::fs::write(&worker, WORKER).expect("worker file");
    std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o755)).expect("worker mode");
    worker
}

/// The worker as the floor's responder runs it: as an agent would, in its directory, with the
/// app, the func and the base64 param.
#[derive(Clone)]
pub struct Worker {
    path: PathBuf,
}

impl Worker {
    pub async fn run(&self) -> Vec<u8> {
        use base64::Engine;
        let param = base64::engine::general_purpose::STANDARD.encode(PARAM);
        let output = tokio::process::Command::new(&self.path)
            .args(["noop", "run", &param])
            .current_dir(self.path.parent().unwrap_or(Path::new(".")))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await;
        output.map(|output| output.stdout).unwrap_or_default()
    }

    /// `calls` runs one at a time after `warmup`, each timed from the spawn to the exit.
    pub async fn spawn_times(&self, warmup: usize, calls: usize) -> RtSamples {
        let mut samples = Vec::with_capacity(calls);
        for n in 0..warmup + calls {
            let started = std::time::Instant::now();
            let output = self.run().await;
            let elapsed = support::elapsed_ms(started);
            assert!(Worker::succeeded(&output), "the worker failed alone");
            if n >= warmup {
                samples.push(elapsed);
            }
        }
        RtSamples(samples)
    }

    pub fn succeeded(output: &[u8]) -> bool {
        String::from_utf8_lossy(output)
            .contains("<ElvesWFlag>true</ElvesWFlag><ElvesWResult>ok</ElvesWResult>")
    }
}

fn main() {
    if support::listing_only() {
        return;
    }
    support::init_logging();
    let missing = "missing: run scripts/bench peers, which builds the binaries";
    let settings = Settings {
        calls: support::env_count("ELVES_PEERS_CALLS", 300),
        tasks: support::env_count("ELVES_PEERS_TASKS", 5000),
        reps: support::env_count("ELVES_PEERS_REPS", 3),
        only: std::env::var("ELVES_PEERS_ONLY")
            .unwrap_or_default()
            .split(',')
            .map(|name| name.trim().to_string())
            .filter(|name| !name.is_empty())
            .collect(),
        amqp: support::amqp_url(),
        pg_url: std::env::var("ELVES_BENCH_PG_URL").unwrap_or_else(|_| support::pg_url()),
        root: support::repo_root(),
        center_bin: support::release_binary("elves-center")
            .unwrap_or_else(|| panic!("elves-center {missing}")),
        agent_bin: support::release_binary("elves-agent")
            .unwrap_or_else(|| panic!("elves-agent {missing}")),
        elves_bin: support::release_binary("elves").unwrap_or_else(|| panic!("elves {missing}")),
    };
    for name in &settings.only {
        assert!(
            SYSTEMS.contains(&name.as_str()),
            "ELVES_PEERS_ONLY names {name:?}; the systems are {SYSTEMS:?}"
        );
    }
    let runtime = support::runtime(2);
    runtime.block_on(run(settings));
}

impl Settings {
    fn runs(&self, system: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|name| name == system)
    }
}

async fn run(settings: Settings) {
    let celery_wanted = settings.runs("celery-c2") || settings.runs("celery-c8");
    // The Python client calls elves too; only the floor and `elves up` go without it.
    let needs_python = celery_wanted || settings.runs("elves");
    let python = if needs_python {
        celery::ensure_venv(&settings.root).await
    } else {
        PathBuf::from("python3")
    };
    let worker_dir = tempfile::tempdir().expect("temp dir");
    let worker_path = install_worker(worker_dir.path());
    let namespace = support::namespace("elves-peers");
    let celery_queue = format!("{namespace}.celery");
    let python = celery::Python {
        python,
        scripts: celery::scripts_dir(&settings.root),
        env: vec![
            (
                "PEERS_BROKER".to_string(),
                celery_broker_url(&settings.amqp),
            ),
            ("PEERS_QUEUE".to_string(), celery_queue.clone()),
            (
                "PEERS_WORKER".to_string(),
                worker_path.display().to_string(),
            ),
            ("PEERS_PARAM".to_string(), PARAM.to_string()),
        ],
    };
    let versions = versions(&settings, needs_python.then_some(&python)).await;
    println!(
        "elves against its peers: RT {} calls one at a time (after {WARMUP} warm-up), queue \
         drain of {} tasks on one agent, {} repetition(s) interleaved, {} cpu(s)",
        settings.calls,
        settings.tasks,
        settings.reps,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "load average at start: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    for line in &versions {
        println!("  {line}");
    }

    let mut tables = Vec::new();
    let mut fill_methods = Vec::new();
    for rep in 1..=settings.reps {
        let mut table = Table::new();
        if settings.runs("floor") {
            eprintln!("[rep {rep}] floor");
            let mut floor = floor::Floor::start(
                &settings.amqp,
                &namespace,
                Worker {
                    path: worker_path.clone(),
                },
            )
            .await;
            let rt = floor.rt(WARMUP, settings.calls).await;
            let hops = floor.bare_round_trips(WARMUP, settings.calls).await;
            let drain = floor.drain(settings.tasks).await;
            floor.stop().await;
            let worker = Worker {
                path: worker_path.clone(),
            };
            let spawn = worker.spawn_times(WARMUP, settings.calls).await;
            table.insert(FLOOR, Figures::default().rt(&rt).drain(&drain));
            table.insert(CUT_HOPS, Figures::default().rt(&hops));
            table.insert(CUT_SPAWN, Figures::default().rt(&spawn));
        }
        if settings.runs("elves") {
            eprintln!("[rep {rep}] elves distributed");
            let system = elves::Distributed::start(&settings, elves::Database::Postgres).await;
            let ip = system.agent_ip();
            let rt = system.client.rt(ip, WARMUP, settings.calls).await;
            let python_rt = python
                .rt(&[
                    "elves-rt",
                    "--url",
                    &system.client.base_url,
                    "--auth-id",
                    &system.client.auth_id,
                    "--auth-key",
                    &system.client.auth_key,
                    "--ip",
                    ip,
                    "--param",
                    PARAM,
                    "--warmup",
                    &WARMUP.to_string(),
                    "--calls",
                    &settings.calls.to_string(),
                ])
                .await;
            let refused = system.client.refused_rt(WARMUP, settings.calls).await;
            let (drain, how) = system.client.drain(&system.store, ip, settings.tasks).await;
            fill_methods.push(how);
            system.stop().await;
            table.insert(ELVES_RUST, Figures::default().rt(&rt).drain(&drain));
            table.insert(CUT_HTTP, Figures::default().rt(&refused));
            table.insert(ELVES_PYTHON, Figures::default().rt(&python_rt));
        }
        if settings.runs("elves-sqlite") {
            eprintln!("[rep {rep}] elves on RabbitMQ + SQLite");
            let system = elves::Distributed::start(&settings, elves::Database::Sqlite).await;
            let ip = system.agent_ip();
            let rt = system.client.rt(ip, WARMUP, settings.calls).await;
            let (drain, how) = system.client.drain(&system.store, ip, settings.tasks).await;
            fill_methods.push(how);
            system.stop().await;
            table.insert(ELVES_SQLITE, Figures::default().rt(&rt).drain(&drain));
        }
        if settings.runs("elves-up") {
            eprintln!("[rep {rep}] elves up");
            let system = elves::Up::start(&settings.elves_bin).await;
            let ip = system.agent_ip();
            let rt = system.client.rt(ip, WARMUP, settings.calls).await;
            let (drain, how) = system.client.drain(&system.store, ip, settings.tasks).await;
            fill_methods.push(how);
            system.stop().await;
            table.insert(ELVES_UP, Figures::default().rt(&rt).drain(&drain));
        }
        for (system, row, concurrency) in [("celery-c2", CELERY_C2, 2), ("celery-c8", CELERY_C8, 8)]
        {
            if !settings.runs(system) {
                continue;
            }
            eprintln!("[rep {rep}] {system}");
            let mut worker = celery::CeleryWorker::start(&python, concurrency, &celery_queue);
            let rt = celery::rt(&python, WARMUP, settings.calls).await;
            let drain = celery::drain(&python, settings.tasks).await;
            if let Err(gone) = worker.alive() {
                panic!("{system}: {gone}");
            }
            worker.stop().await;
            table.insert(row, Figures::default().rt(&rt).drain(&drain));
        }
        println!("\nrepetition {rep} of {}:", settings.reps);
        print_table(&table);
        tables.push(table);
    }
    if celery_wanted {
        delete_celery_objects(&settings.amqp, &celery_queue).await;
    }

    let summary = median_table(&tables);
    println!(
        "\nsummary: medians of {} repetition(s); RT over {} calls each, drain of {} tasks",
        settings.reps, settings.calls, settings.tasks
    );
    print_table(&summary);
    fill_methods.dedup();
    if !fill_methods.is_empty() {
        println!(
            "(elves queues filled with {} before the commit)",
            fill_methods.join(" / ")
        );
    }
    print_ratios(&summary);
    print_breakdown(&summary);
    let incomplete = incomplete_rows(&settings, &summary);
    println!("versions:");
    for line in &versions {
        println!("  {line}");
    }
    // The smoke run in `.ci/run` relies on this: a system that ran but left a figure out fails.
    assert!(
        incomplete.is_empty(),
        "systems without their figures: {incomplete:?}"
    );
}

/// The rows of the systems that ran whose RT or drain figure is missing from `summary`.
fn incomplete_rows(settings: &Settings, summary: &Table) -> Vec<&'static str> {
    let expected: [(&str, &'static str, bool); 7] = [
        ("floor", FLOOR, true),
        ("elves", ELVES_RUST, true),
        ("elves", ELVES_PYTHON, false),
        ("elves-sqlite", ELVES_SQLITE, true),
        ("elves-up", ELVES_UP, true),
        ("celery-c2", CELERY_C2, true),
        ("celery-c8", CELERY_C8, true),
    ];
    expected
        .into_iter()
        .filter(|(system, _, _)| settings.runs(system))
        .filter(|(_, row, drains)| {
            summary
                .get(row)
                .is_none_or(|figures| figures.p50.is_none() || (*drains && figures.drain.is_none()))
        })
        .map(|(_, row, _)| row)
        .collect()
}

/// Celery's broker URL: kombu reads the vhost `/` as `//`, not as `/%2f`.
fn celery_broker_url(amqp: &str) -> String {
    match amqp
        .strip_suffix("/%2f")
        .or_else(|| amqp.strip_suffix("/%2F"))
    {
        Some(base) => format!("{base}//"),
        None => amqp.to_string(),
    }
}

/// The queue and exchange the Celery runs declared (their reply queues go with their clients).
async fn delete_celery_objects(amqp: &str, queue: &str) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let properties = lapin::ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    let Ok(connection) = lapin::Connection::connect(amqp, properties).await else {
        eprintln!("could not connect to delete {queue}");
        return;
    };
    if let Ok(channel) = connection.create_channel().await {
        let _ = channel
            .queue_delete(queue, QueueDeleteOptions::default())
            .await;
        let _ = channel
            .exchange_delete(queue, ExchangeDeleteOptions::default())
            .await;
        let _ = channel.close(200, "bench done").await;
    }
    let _ = connection.close(200, "bench done").await;
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// Each figure of each row: the median over the repetitions that have it.
fn median_table(tables: &[Table]) -> Table {
    let mut summary = Table::new();
    for row in ROWS {
        let of = |figure: fn(&Figures) -> Option<f64>| {
            median(
                tables
                    .iter()
                    .filter_map(|table| table.get(row).and_then(figure))
                    .collect(),
            )
        };
        let figures = Figures {
            p50: of(|f| f.p50),
            p90: of(|f| f.p90),
            p99: of(|f| f.p99),
            drain: of(|f| f.drain),
        };
        if figures.p50.is_some() || figures.drain.is_some() {
            summary.insert(row, figures);
        }
    }
    summary
}

fn print_table(table: &Table) {
    let cell = |value: Option<f64>, digits: usize| {
        value.map_or_else(|| "-".to_string(), |value| format!("{value:.digits$}"))
    };
    println!(
        "| {:<34} | {:>10} | {:>10} | {:>10} | {:>13} |",
        "system", "RT p50 ms", "RT p90 ms", "RT p99 ms", "drain tasks/s"
    );
    println!(
        "|{:-<36}|{:->12}|{:->12}|{:->12}|{:->15}|",
        "", ":", ":", ":", ":"
    );
    for row in ROWS {
        if let Some(figures) = table.get(row) {
            println!(
                "| {:<34} | {:>10} | {:>10} | {:>10} | {:>13} |",
                row,
                cell(figures.p50, 2),
                cell(figures.p90, 2),
                cell(figures.p99, 2),
                cell(figures.drain, 0)
            );
        }
    }
}

/// The ratios the project is judged on, each with its target and verdict.
fn print_ratios(summary: &Table) {
    let p50 = |row: &str| summary.get(row).and_then(|figures| figures.p50);
    let drain = |row: &str| summary.get(row).and_then(|figures| figures.drain);
    let best = |values: [Option<f64>; 2], pick: fn(f64, f64) -> f64| {
        values.into_iter().flatten().reduce(pick)
    };
    let celery_p50 = best([p50(CELERY_C2), p50(CELERY_C8)], f64::min);
    let celery_drain = best([drain(CELERY_C2), drain(CELERY_C8)], f64::max);
    println!("ratios (targets):");
    let ratio = |what: &str, value: Option<f64>, target: &str, met: fn(f64) -> bool| match value {
        Some(value) => println!(
            "  {what:<62} {value:>6.2}x  (target {target}: {})",
            if met(value) { "met" } else { "MISSED" }
        ),
        None => println!("  {what:<62}      -   (target {target}: not measured)"),
    };
    let over = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b.max(1e-9));
    ratio(
        "elves distributed RT p50 / floor (Rust client)",
        over(p50(ELVES_RUST), p50(FLOOR)),
        "<= 1.5",
        |x| x <= 1.5,
    );
    ratio(
        "Celery best RT p50 / elves distributed (Rust client)",
        over(celery_p50, p50(ELVES_RUST)),
        ">= 1.75",
        |x| x >= 1.75,
    );
    ratio(
        "Celery best RT p50 / elves distributed (Python client)",
        over(celery_p50, p50(ELVES_PYTHON)),
        ">= 1.75",
        |x| x >= 1.75,
    );
    ratio(
        "elves distributed drain / floor",
        over(drain(ELVES_RUST), drain(FLOOR)),
        ">= 0.9",
        |x| x >= 0.9,
    );
    ratio(
        "elves distributed drain / Celery best",
        over(drain(ELVES_RUST), celery_drain),
        ">= 2",
        |x| x >= 2.0,
    );
    ratio(
        "elves up RT p50 / floor",
        over(p50(ELVES_UP), p50(FLOOR)),
        "<= 1.2",
        |x| x <= 1.2,
    );
}

/// Where an elves distributed RT call's p50 goes, from the cuts: each part is a cut's p50 or the
/// difference of two systems' p50s, and the rest is the center's and the agent's own handling
/// (dispatch, signing, verifying, the agent's bookkeeping around the spawn, result intake).
fn print_breakdown(summary: &Table) {
    let p50 = |row: &str| summary.get(row).and_then(|figures| figures.p50);
    let (Some(total), Some(http), Some(hops), Some(spawn), Some(sqlite)) = (
        p50(ELVES_RUST),
        p50(CUT_HTTP),
        p50(CUT_HOPS),
        p50(CUT_SPAWN),
        p50(ELVES_SQLITE),
    ) else {
        println!("RT breakdown: needs floor, elves and elves-sqlite in the run");
        return;
    };
    let database = total - sqlite;
    let rest = total - http - hops - spawn - database;
    println!("RT breakdown of elves distributed, p50 {total:.2} ms:");
    for (part, ms) in [
        ("HTTP call, signature, auth, presence (refused call)", http),
        ("two broker hops (bare round trip)", hops),
        ("worker spawn (alone)", spawn),
        ("PostgreSQL instead of SQLite", database),
        (
            "rest: center dispatch and result intake, agent handling",
            rest,
        ),
    ] {
        println!("  {part:<58} {ms:>6.2} ms  {:>4.0} %", 100.0 * ms / total);
    }
}

/// rustc, lapin, RabbitMQ, PostgreSQL, Python and Celery, and this checkout's commit.
async fn versions(settings: &Settings, python: Option<&celery::Python>) -> Vec<String> {
    let rustc = command_line(
        &std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string()),
        &["--version"],
    )
    .await;
    let rabbitmq = command_line("rabbitmqctl", &["version"]).await;
    let postgres = command_line(
        "psql",
        &[settings.pg_url.as_str(), "-tAc", "SELECT version()"],
    )
    .await;
    let commit = command_line("git", &["rev-parse", "--short", "HEAD"]).await;
    vec![
        format!("elves commit {commit}"),
        rustc,
        format!("lapin {}", lapin_version(&settings.root)),
        format!("RabbitMQ {rabbitmq}"),
        postgres,
        match python {
            Some(python) => python.versions().await,
            None => "Python and Celery: not run".to_string(),
        },
    ]
}

/// The first line `program args` prints, or `?` (10 s at most).
async fn command_line(program: &str, args: &[&str]) -> String {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(std::time::Duration::from_secs(10), command.output()).await {
        Ok(Ok(output)) if output.status.success() => String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .unwrap_or("?")
            .trim()
            .to_string(),
        _ => "?".to_string(),
    }
}

/// lapin's version in `Cargo.lock`: the one this bench and elves are built with.
fn lapin_version(root: &Path) -> String {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap_or_default();
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "name = \"lapin\"" {
            if let Some(version) = lines
                .next()
                .and_then(|line| line.trim().strip_prefix("version = "))
            {
                return version.trim_matches('"').to_string();
            }
        }
    }
    "?".to_string()
}
