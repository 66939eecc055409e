//! RT call latency and idle memory (not a test: it prints figures).
//!
//! Measures, for `apptest.helloword`:
//! - the worker run directly with the real python3 (the floor);
//! - an RT call over HTTP through the in-process bus;
//! - an RT call over HTTP through RabbitMQ (`ELVES_TEST_AMQP_URL`, default the local broker);
//! - the idle RSS of `elves-center` and `elves-agent` as separate processes over RabbitMQ
//!   (built by `scripts/bench` before this runs).
//!
//! Run: `scripts/bench` (or `cargo bench --bench rt_latency`). `ELVES_BENCH_CALLS` sets the count.

use elves_agent::{AgentConfig, AgentStats};
use elves_shared::sign::{self, SignType};
use elves_shared::wire::AgentId;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

const AUTH_ID: &str = "bench";
const AUTH_KEY: &str = "bench-key-0123456789";

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        // `cargo test --benches` lists benches; there is nothing to list as a test.
        return;
    }
    let calls: usize = std::env::var("ELVES_BENCH_CALLS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(300);
    let amqp = std::env::var("ELVES_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    let python = real_python();
    let direct = direct_worker_runs(&python, &root.join("apps/apptest"), calls / 3);
    report("worker run directly (python3)", &direct);
    let inproc = runtime.block_on(rt_calls("inproc", &root, calls));
    report("rt call, in-process bus", &inproc);
    let rabbit = runtime.block_on(rt_calls(&amqp, &root, calls));
    report("rt call, RabbitMQ", &rabbit);
    println!(
        "added by the platform (p50): in-process {:.2} ms, RabbitMQ {:.2} ms",
        percentile(&inproc, 50.0) - percentile(&direct, 50.0),
        percentile(&rabbit, 50.0) - percentile(&direct, 50.0)
    );
    idle_rss(&amqp, &root);
}

fn real_python() -> PathBuf {
    let output = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 on PATH");
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

fn direct_worker_runs(python: &Path, app_dir: &Path, runs: usize) -> Vec<f64> {
    let param = base64_of(r#"{"my":"bench"}"#);
    (0..runs.max(10))
        .map(|_| {
            let started = Instant::now();
            let output = std::process::Command::new(python)
                .current_dir(app_dir)
                .args(["app-worker.py", "apptest", "helloword", &param])
                .stdin(Stdio::null())
                .output()
                .expect("worker runs");
            assert!(String::from_utf8_lossy(&output.stdout).contains("<ElvesWFlag>true"));
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect()
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

async fn rt_calls(bus_url: &str, root: &Path, calls: usize) -> Vec<f64> {
    let dir = tempfile::tempdir().expect("temp dir");
    let namespace = format!("elves-bench-{:08x}", rand::random::<u32>());
    let env = vec![
        (
            "ELVES_DATA_DIR".to_string(),
            dir.path().display().to_string(),
        ),
        ("ELVES_AUTH__AUTH_ID".to_string(), AUTH_ID.to_string()),
        ("ELVES_AUTH__AUTH_KEY".to_string(), AUTH_KEY.to_string()),
        ("ELVES_BUS__URL".to_string(), bus_url.to_string()),
        ("ELVES_BUS__NAMESPACE".to_string(), namespace.clone()),
    ];
    let config: elves_center::config::CenterConfig =
        elves_shared::config::load(None, env).expect("center config");
    let bus = elves_shared::bus::open(bus_url, &namespace).expect("bus");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let center = elves_center::start(config, listener, bus.clone()).expect("center");
    let base = format!("http://{}", center.http_addr);

    let agent_bus = if bus_url == "inproc" {
        bus
    } else {
        elves_shared::bus::open(bus_url, &namespace).expect("agent bus")
    };
    let mut agent = AgentConfig::new(AgentId::parse("bench").expect("id"));
    agent.apps_dir = root.join("apps");
    agent.spool_dir = dir.path().join("spool");
    agent.heartbeat_interval_ms = 500;
    agent.center.key_id = center.key_id.clone();
    agent.center.public_key = center.public_key_hex.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent_task = tokio::spawn(elves_agent::run(
        agent,
        agent_bus,
        Arc::new(AgentStats::new()),
        async move {
            let _ = stopped.await;
        },
    ));

    let http = reqwest::Client::new();
    let call = || async {
        let path = "/api/v2/rt/exec";
        let pairs = vec![
            ("ip".to_string(), "bench".to_string()),
            ("app".to_string(), "apptest".to_string()),
            ("func".to_string(), "helloword".to_string()),
            ("param".to_string(), r#"{"my":"bench"}"#.to_string()),
            ("auth_id".to_string(), AUTH_ID.to_string()),
            (
                "timestamp".to_string(),
                chrono::Utc::now().timestamp().to_string(),
            ),
        ];
        let signed = sign::sign_params(path, pairs, SignType::HmacSha256, AUTH_KEY);
        let answer: serde_json::Value = http
            .post(format!("{base}{path}"))
            .form(&signed)
            .send()
            .await
            .expect("http")
            .json()
            .await
            .expect("json");
        answer
    };
    // Wait until the agent's first heartbeat made it online, then warm up.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = call().await;
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
        call().await;
    }
    let mut latencies = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        let answer = call().await;
        assert_eq!(answer["result"]["worker_flag"], "1", "{answer}");
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let _ = stop.send(());
    let _ = agent_task.await;
    tokio::task::spawn_blocking(move || center.stop())
        .await
        .expect("center stops");
    latencies
}

fn percentile(samples: &[f64], pct: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let rank = ((pct / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn report(name: &str, samples: &[f64]) {
    println!(
        "{name:<34} n={:<5} p50 {:>7.2} ms   p99 {:>7.2} ms",
        samples.len(),
        percentile(samples, 50.0),
        percentile(samples, 99.0)
    );
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Starts the release binaries next to this bench's own directory, lets them idle, reads RSS.
fn idle_rss(amqp: &str, root: &Path) {
    let Some(bin_dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().and_then(Path::parent).map(Path::to_path_buf))
    else {
        return;
    };
    let center_bin = bin_dir.join("elves-center");
    let agent_bin = bin_dir.join("elves-agent");
    if !center_bin.exists() || !agent_bin.exists() {
        println!("idle rss: build elves-center and elves-agent first (scripts/bench does)");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let namespace = format!("elves-bench-rss-{:08x}", rand::random::<u32>());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("free port");
    let mut center = std::process::Command::new(&center_bin)
        .arg("--config")
        .arg(root.join("config/center.toml"))
        .env("ELVES_DATA_DIR", dir.path())
        .env("ELVES_BUS__URL", amqp)
        .env("ELVES_BUS__NAMESPACE", &namespace)
        .env("ELVES_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("center starts");
    // The center prints its public key on stderr once it is ready.
    let public_key = {
        use std::io::BufRead;
        let stderr = center.stderr.take().expect("stderr");
        let mut key = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.strip_prefix("elves-center: instruction key ") {
                key = rest
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_string();
                break;
            }
        }
        key
    };
    let mut agent = std::process::Command::new(&agent_bin)
        .arg("--config")
        .arg(root.join("config/agent.toml"))
        .env("ELVES_ID", "rss-agent")
        .env("ELVES_APPS_DIR", root.join("apps"))
        .env("ELVES_SPOOL_DIR", dir.path().join("spool"))
        .env("ELVES_BUS__URL", amqp)
        .env("ELVES_BUS__NAMESPACE", &namespace)
        .env("ELVES_CENTER__PUBLIC_KEY", &public_key)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent starts");
    std::thread::sleep(Duration::from_secs(5));
    for (name, child) in [("center", &mut center), ("agent", &mut agent)] {
        if let Ok(Some(status)) = child.try_wait() {
            println!("idle rss: {name} exited early: {status}");
        }
    }
    println!(
        "idle rss: center {} KiB, agent {} KiB",
        rss_kib(center.id()).unwrap_or(0),
        rss_kib(agent.id()).unwrap_or(0)
    );
    let _ = agent.kill();
    let _ = center.kill();
    let _ = agent.wait();
    let _ = center.wait();
}
