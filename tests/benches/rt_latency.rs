//! RT call latency and idle memory (not a test: it prints figures).
//!
//! Measures, for `apptest.helloword`, over the in-process bus and over RabbitMQ
//! (`ELVES_TEST_AMQP_URL`, default the local broker):
//! - the worker run directly with the real python3 (the floor), once before each rt call, so
//!   that drift in python's start-up time hits both sides alike; the platform's cost is the
//!   median of the paired differences;
//! - the rt call over HTTP, the `worker_costtime` the agent reports, and the same worker run
//!   through the agent's `exec::run` (its process group, pipes and reaping);
//! - a no-op shell worker run directly and through an rt call: the platform's own cost
//!   without python's noise;
//! - the broker's own floor: a bare round trip over two RabbitMQ buses (a message out, its
//!   answer back: the two hops of an rt call, nothing else), idle between trips as long as a
//!   python worker runs, and back to back;
//! - the idle RSS of `elves-center` and `elves-agent` as separate processes over RabbitMQ
//!   (built by `scripts/bench` before this runs).
//!
//! Run: `scripts/bench` (or `cargo bench --bench rt_latency`). `ELVES_BENCH_CALLS` sets the count.

mod support;

use elves_agent::exec::{self, ExecLimits, ExecSpec};
use elves_shared::sign::SignType;
use elves_shared::wire::AgentId;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::{elapsed_ms, Api, CenterProcess, ChildProcess, InProcessAgent, Summary};

fn main() {
    if support::listing_only() {
        return;
    }
    let calls = support::env_number("ELVES_BENCH_CALLS", 300) as usize;
    let amqp = support::amqp_url();
    let root = support::repo_root();
    let runtime = support::runtime(2);

    let python = real_python();
    let app_dir = root.join("apps/apptest");
    // Each rt call is paired with a direct run just before it, so that drift in the machine's
    // speed (python start-up varies by several ms over a minute) hits both sides alike.
    let inproc = runtime.block_on(rt_calls("inproc", &root, calls, &python, &app_dir));
    let rabbit = runtime.block_on(rt_calls(&amqp, &root, calls, &python, &app_dir));
    for (bus, series) in [("in-process bus", &inproc), ("RabbitMQ", &rabbit)] {
        report(
            &format!("worker run directly, paired with {bus}"),
            &series.direct,
        );
        report(&format!("rt call, {bus}"), &series.rt);
        let added: Vec<f64> = series
            .rt
            .iter()
            .zip(&series.direct)
            .map(|(rt, direct)| rt - direct)
            .collect();
        println!(
            "added by the platform, {bus}: median of paired differences {:.2} ms, \
             difference of p50s {:.2} ms",
            support::percentile(&added, 50.0),
            support::percentile(&series.rt, 50.0) - support::percentile(&series.direct, 50.0)
        );
        report("  worker_costtime", &series.costtime);
        report("  worker through the agent's exec::run", &series.exec);
        report("  no-op shell worker run directly", &series.noop_direct);
        report(
            &format!("  rt call of the no-op worker, {bus}"),
            &series.noop_rt,
        );
    }
    runtime.block_on(bus_floor(&amqp));
    idle_rss(&amqp, &root);
}

/// Round trips over two RabbitMQ connections with nothing of the platform in between: what
/// the two broker hops of an rt call cost on this machine by themselves.
async fn bus_floor(amqp: &str) {
    use elves_shared::bus::{BusMessage, Destination, QueueSpec};
    let namespace = support::namespace("elves-bench-floor");
    let caller = elves_shared::bus::open(amqp, &namespace).expect("bus");
    let answerer = elves_shared::bus::open(amqp, &namespace).expect("bus");
    let queue = |bus: &elves_shared::bus::SharedBus, suffix: &str| QueueSpec {
        name: bus.queue_name(suffix),
        bindings: vec![suffix.to_string()],
        durable: false,
    };
    let mut replies = caller
        .consume(queue(&caller, "reply"), 10)
        .await
        .expect("reply queue");
    let mut requests = answerer
        .consume(queue(&answerer, "request"), 10)
        .await
        .expect("request queue");
    let echo = answerer.clone();
    let echoing = tokio::spawn(async move {
        while let Some(delivery) = requests.next().await {
            let mut answer = BusMessage::msgpack("answer", delivery.message.body.clone());
            answer.transient = true;
            if let Err(err) = echo
                .publish(&Destination::Topic("reply".to_string()), answer)
                .await
            {
                eprintln!("bus floor: answer not sent: {err}");
            }
            delivery.ack().await;
        }
    });
    for (name, gap) in [
        ("idle 50 ms between trips", Duration::from_millis(50)),
        ("back to back", Duration::ZERO),
    ] {
        let mut trips = Vec::new();
        for _ in 0..200 {
            tokio::time::sleep(gap).await;
            let started = Instant::now();
            let mut request = BusMessage::msgpack("request", vec![0; 64]);
            request.transient = true;
            caller
                .publish(&Destination::Topic("request".to_string()), request)
                .await
                .expect("publish");
            // A lost answer (the echo task's publish failed) ends the bench instead of hanging it.
            tokio::time::timeout(Duration::from_secs(10), replies.next())
                .await
                .expect("answer within 10 s")
                .expect("reply consumer open")
                .ack()
                .await;
            trips.push(elapsed_ms(started));
        }
        report(&format!("bare RabbitMQ round trip, {name}"), &trips);
    }
    echoing.abort();
    caller.close().await;
    answerer.close().await;
}

fn real_python() -> PathBuf {
    let output = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 on PATH");
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// One run of a worker started as `std::process::Command` would (the floor); in ms.
fn direct_run(spec: &ExecSpec) -> f64 {
    let started = Instant::now();
    let output = std::process::Command::new(&spec.program)
        .current_dir(&spec.cwd)
        .args(&spec.args)
        .stdin(Stdio::null())
        .output()
        .expect("worker runs");
    let elapsed = elapsed_ms(started);
    assert!(String::from_utf8_lossy(&output.stdout).contains("<ElvesWFlag>true"));
    elapsed
}

async fn direct_run_off_runtime(spec: &ExecSpec) -> f64 {
    let spec = spec.clone();
    tokio::task::spawn_blocking(move || direct_run(&spec))
        .await
        .expect("direct run")
}

/// The agent's apps: `apptest` from the repository, and `noop`, a shell worker that answers at
/// once, whose rt calls show the platform's own cost without python's start-up noise.
fn bench_apps(root: &Path, dir: &Path) -> PathBuf {
    let apps = dir.join("apps");
    let apptest = apps.join("apptest");
    std::fs::create_dir_all(&apptest).expect("apps dir");
    for entry in std::fs::read_dir(root.join("apps/apptest")).expect("apps/apptest") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("file type").is_file() {
            std::fs::copy(entry.path(), apptest.join(entry.file_name())).expect("copy");
        }
    }
    support::install_noop_app(&apps);
    apps
}

/// Latencies of rt calls and of the direct runs paired with them, in ms.
#[derive(Default)]
struct Series {
    rt: Vec<f64>,
    direct: Vec<f64>,
    noop_rt: Vec<f64>,
    noop_direct: Vec<f64>,
    costtime: Vec<f64>,
    exec: Vec<f64>,
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

async fn rt_calls(
    bus_url: &str,
    root: &Path,
    calls: usize,
    python: &Path,
    app_dir: &Path,
) -> Series {
    let dir = tempfile::tempdir().expect("temp dir");
    let namespace = support::namespace("elves-bench");
    let mut env = support::center_env(dir.path(), &namespace);
    env.push(("ELVES_BUS__URL".to_string(), bus_url.to_string()));
    let config = support::center_config(env);
    let bus = elves_shared::bus::open(bus_url, &namespace).expect("bus");
    let center = support::start_center(config, bus.clone());

    let agent_bus = if bus_url == "inproc" {
        bus
    } else {
        elves_shared::bus::open(bus_url, &namespace).expect("agent bus")
    };
    let agent_apps = bench_apps(root, dir.path());
    let agent = InProcessAgent::spawn(
        support::agent_config(
            &AgentId::parse("bench").expect("id"),
            agent_apps.clone(),
            dir.path().join("spool"),
            500,
            &center.key_id,
            &center.public_key_hex,
        ),
        agent_bus,
    );

    // Signed with HMAC-SHA256, unlike the MD5 of most clients.
    let api = Api::new(format!("http://{}", center.http_addr)).with_sign_type(SignType::HmacSha256);
    let api = &api;
    let call = |app: &'static str, func: &'static str| async move {
        let params = [
            ("ip", "bench"),
            ("app", app),
            ("func", func),
            ("param", r#"{"my":"bench"}"#),
        ];
        api.call("rt/exec", &params).await
    };
    // Wait until the agent's first heartbeat made it online, then warm up.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = call("apptest", "helloword").await;
        if answer["result"]["worker_flag"] == "1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agent never came online: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..10 {
        call("apptest", "helloword").await;
        call("noop", "noop").await;
    }
    let mut series = Series::default();
    let worker_args = |app: &str, func: &str| {
        [app, func, &base64_of(r#"{"my":"bench"}"#)]
            .map(std::ffi::OsString::from)
            .to_vec()
    };
    let python_worker = ExecSpec {
        program: python.to_path_buf(),
        args: [
            vec!["app-worker.py".into()],
            worker_args("apptest", "helloword"),
        ]
        .concat(),
        cwd: app_dir.to_path_buf(),
        env: Vec::new(),
    };
    let noop_worker = ExecSpec {
        program: agent_apps.join("noop/app-worker"),
        args: worker_args("noop", "noop"),
        cwd: agent_apps.join("noop"),
        env: Vec::new(),
    };
    for _ in 0..calls {
        series
            .direct
            .push(direct_run_off_runtime(&python_worker).await);
        let started = Instant::now();
        let answer = call("apptest", "helloword").await;
        assert_eq!(answer["result"]["worker_flag"], "1", "{answer}");
        series.rt.push(elapsed_ms(started));
        series
            .costtime
            .push(answer["result"]["worker_costtime"].as_f64().unwrap_or(0.0));
        let started = Instant::now();
        let outcome = exec::run(python_worker.clone(), &ExecLimits::default()).await;
        assert!(String::from_utf8_lossy(&outcome.stdout).contains("<ElvesWFlag>true"));
        series.exec.push(elapsed_ms(started));

        series
            .noop_direct
            .push(direct_run_off_runtime(&noop_worker).await);
        let started = Instant::now();
        let answer = call("noop", "noop").await;
        assert_eq!(answer["result"]["worker_flag"], "1", "{answer}");
        series.noop_rt.push(elapsed_ms(started));
    }
    support::stop_agents(vec![agent]).await;
    tokio::task::spawn_blocking(move || center.stop())
        .await
        .expect("center stops");
    series
}

fn report(name: &str, samples: &[f64]) {
    let summary = Summary::of(samples);
    println!(
        "{name:<44} n={:<5} p50 {:>7.2} ms   p99 {:>7.2} ms",
        summary.count, summary.p50, summary.p99
    );
}

/// Starts the release binaries next to this bench's own directory, lets them idle, reads RSS.
fn idle_rss(amqp: &str, root: &Path) {
    let (Some(center_bin), Some(agent_bin)) = (
        support::release_binary("elves-center"),
        support::release_binary("elves-agent"),
    ) else {
        println!("idle rss: build elves-center and elves-agent first (scripts/bench does)");
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let namespace = support::namespace("elves-bench-rss");
    let env = vec![
        (
            "ELVES_DATA_DIR".to_string(),
            dir.path().display().to_string(),
        ),
        ("ELVES_BUS__URL".to_string(), amqp.to_string()),
        ("ELVES_BUS__NAMESPACE".to_string(), namespace.clone()),
        ("RUST_LOG".to_string(), "warn".to_string()),
    ];
    let mut center = CenterProcess::start(&center_bin, root, env);
    let mut agent = ChildProcess(
        std::process::Command::new(&agent_bin)
            .arg("--config")
            .arg(root.join("config/agent.toml"))
            .env("ELVES_ID", "rss-agent")
            .env("ELVES_APPS_DIR", root.join("apps"))
            .env("ELVES_SPOOL_DIR", dir.path().join("spool"))
            .env("ELVES_BUS__URL", amqp)
            .env("ELVES_BUS__NAMESPACE", &namespace)
            .env("ELVES_CENTER__PUBLIC_KEY", &center.public_key_hex)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("agent starts"),
    );
    std::thread::sleep(Duration::from_secs(5));
    if let Some(status) = center.exited() {
        println!("idle rss: center exited early: {status}");
    }
    if let Ok(Some(status)) = agent.0.try_wait() {
        println!("idle rss: agent exited early: {status}");
    }
    println!(
        "idle rss: center {} KiB, agent {} KiB",
        support::status_kib(center.pid(), "VmRSS:").unwrap_or(0),
        support::status_kib(agent.0.id(), "VmRSS:").unwrap_or(0)
    );
    drop(agent);
    center.stop();
}
