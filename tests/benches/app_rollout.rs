//! App rollout: time from `app/upload` to the app being runnable on N agents (not a test: it
//! prints figures).
//!
//! One center (in-process bus, SQLite in a temp dir) and N real agents in this process, each
//! installing for real into its own temporary apps directory over HTTP from the center.
//! Rounds: install 1.0, upgrade to 2.0, roll back to 1.0 (from the version kept aside).
//! "Runnable" means every agent answered an rt call with the new version's output.
//!
//! Run: `cargo bench --bench app_rollout`. `ELVES_BENCH_AGENTS` (default 100),
//! `ELVES_BENCH_PACKAGE_MB` (incompressible payload in the package, default 1) and
//! `ELVES_BENCH_HEARTBEAT_MS` (default 1000) change the setup.

use elves_agent::{AgentConfig, AgentStats};
use elves_shared::package::testing::{zip_of, Entry};
use elves_shared::sign::{self, SignType};
use elves_shared::wire::AgentId;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

const AUTH_ID: &str = "bench";
const AUTH_KEY: &str = "bench-key-0123456789";

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return;
    }
    let n_agents = env_number("ELVES_BENCH_AGENTS", 100) as usize;
    let package_mb = env_number("ELVES_BENCH_PACKAGE_MB", 1);
    let heartbeat_ms = env_number("ELVES_BENCH_HEARTBEAT_MS", 1000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(rollout(n_agents, package_mb, heartbeat_ms));
}

struct Bench {
    base_url: String,
    http: reqwest::Client,
}

impl Bench {
    fn signed(&self, path: &str, params: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        pairs.push(("auth_id".into(), AUTH_ID.into()));
        pairs.push((
            "timestamp".into(),
            (elves_shared::time::now_unix_ms() / 1000).to_string(),
        ));
        sign::sign_params(path, pairs, SignType::Md5, AUTH_KEY)
    }

    async fn call(&self, endpoint: &str, params: &[(&str, &str)]) -> Value {
        let path = format!("/api/v2/{endpoint}");
        let signed = self.signed(&path, params);
        self.http
            .post(format!("{}{path}", self.base_url))
            .form(&signed)
            .send()
            .await
            .expect("call")
            .json()
            .await
            .expect("json")
    }

    async fn upload(&self, file_name: &str, bytes: Vec<u8>) -> Value {
        let path = "/api/v2/app/upload";
        let signed = self.signed(path, &[]);
        let boundary = "elvesbenchboundary";
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(&bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        self.http
            .post(format!("{}{path}", self.base_url))
            .query(&signed)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body)
            .send()
            .await
            .expect("upload")
            .json()
            .await
            .expect("json")
    }

    async fn online_apps(&self) -> serde_json::Map<String, Value> {
        let response = self
            .http
            .get(format!("{}/healthz", self.base_url))
            .send()
            .await;
        let health: Value = match response {
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                match serde_json::from_str(&text) {
                    Ok(health) => health,
                    Err(err) => {
                        eprintln!("healthz: status {status}, {err}: {text:?}");
                        return serde_json::Map::new();
                    }
                }
            }
            Err(err) => {
                eprintln!("healthz: {err}");
                return serde_json::Map::new();
            }
        };
        health["heartbeat"]["online"]
            .as_object()
            .cloned()
            .unwrap_or_default()
    }
}

fn package(version: &str, payload: &[u8]) -> Vec<u8> {
    let script = format!(
        "#!/bin/sh\necho '<ElvesWFlag>true</ElvesWFlag><ElvesWResult>{version}</ElvesWResult>'\n"
    );
    zip_of(&[
        Entry::File("app-worker", script.as_bytes(), 0o755),
        Entry::Stored("payload.bin", payload),
    ])
}

async fn rollout(n_agents: usize, package_mb: u64, heartbeat_ms: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let namespace = format!("bench-{:016x}", rand::random::<u64>());
    let env = vec![
        (
            "ELVES_DATA_DIR".to_string(),
            dir.path().display().to_string(),
        ),
        ("ELVES_AUTH__AUTH_ID".to_string(), AUTH_ID.to_string()),
        ("ELVES_AUTH__AUTH_KEY".to_string(), AUTH_KEY.to_string()),
        ("ELVES_BUS__NAMESPACE".to_string(), namespace.clone()),
        (
            "ELVES_APPS__LIMITS__MAX_COMPRESSED_BYTES".to_string(),
            (1u64 << 30).to_string(),
        ),
        (
            "ELVES_APPS__LIMITS__MAX_UNCOMPRESSED_BYTES".to_string(),
            (1u64 << 31).to_string(),
        ),
    ];
    let config: elves_center::config::CenterConfig =
        elves_shared::config::load(None, env).expect("config");
    let bus = elves_shared::bus::open("inproc", &namespace).expect("bus");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let center_bus = bus.clone();
    let center = tokio::task::spawn_blocking(move || {
        elves_center::start(config, listener, center_bus).expect("center")
    })
    .await
    .expect("center thread");
    let bench = Bench {
        base_url: format!("http://{}", center.http_addr),
        http: reqwest::Client::new(),
    };

    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    for n in 0..n_agents {
        let id = format!("agent-{n:03}");
        let mut config = AgentConfig::new(AgentId::parse(&id).expect("id"));
        config.apps_dir = dir.path().join(format!("apps-{n:03}"));
        std::fs::create_dir_all(&config.apps_dir).expect("apps dir");
        config.spool_dir = dir.path().join(format!("spool-{n:03}"));
        config.heartbeat_interval_ms = heartbeat_ms;
        config.cron_file = dir.path().join("no-cron.json");
        config.center.key_id = center.key_id.clone();
        config.center.public_key = center.public_key_hex.clone();
        config.interpreters = [("sh".to_string(), "/bin/sh".to_string())].into();
        config.package_limits.max_compressed_bytes = 1 << 30;
        config.package_limits.max_uncompressed_bytes = 1 << 31;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        stops.push(stop);
        tasks.push(tokio::spawn(elves_agent::run(
            config,
            bus.clone(),
            Arc::new(AgentStats::new()),
            async move {
                let _ = stopped.await;
            },
        )));
    }
    let started = Instant::now();
    while bench.online_apps().await.len() < n_agents {
        assert!(started.elapsed() < Duration::from_secs(60), "agents online");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let payload: Vec<u8> = (0..package_mb * 1024 * 1024)
        .map(|_| rand::random::<u8>())
        .collect();
    println!(
        "app rollout: {n_agents} agents (in-process bus, real installs), heartbeat {heartbeat_ms} ms, package {} bytes",
        package("1.0", &payload).len()
    );

    round(&bench, n_agents, "install 1.0", "1.0", async {
        bench
            .upload("bench_1.0.zip", package("1.0", &payload))
            .await
    })
    .await;
    round(&bench, n_agents, "upgrade to 2.0", "2.0", async {
        bench
            .upload("bench_2.0.zip", package("2.0", &payload))
            .await
    })
    .await;
    round(&bench, n_agents, "rollback to 1.0", "1.0", async {
        bench
            .call("app/online", &[("app", "bench"), ("version", "1.0")])
            .await
    })
    .await;
    println!(
        "target: runnable everywhere within one heartbeat interval + 2 s = {} ms",
        heartbeat_ms + 2000
    );

    for stop in stops {
        let _ = stop.send(());
    }
    for task in tasks {
        let _ = task.await;
    }
    let _ = tokio::task::spawn_blocking(move || center.stop()).await;
}

/// Starts the change, then waits until every agent reports `version` and answers an rt call
/// with it.
async fn round(
    bench: &Bench,
    n_agents: usize,
    what: &str,
    version: &str,
    change: impl std::future::Future<Output = Value>,
) {
    let started = Instant::now();
    let answer = change.await;
    assert_eq!(answer["flag"], "true", "{answer}");
    let accepted = started.elapsed();
    loop {
        let online = bench.online_apps().await;
        let n_done = online
            .values()
            .filter(|apps| apps["bench"] == version)
            .count();
        if n_done >= n_agents {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{what}: only {n_done}/{n_agents} agents after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reported = started.elapsed();
    let mut calls = Vec::new();
    for n in 0..n_agents {
        let ip = format!("agent-{n:03}");
        calls.push(async move {
            let answer = bench
                .call("rt/exec", &[("ip", &ip), ("app", "bench"), ("func", "f")])
                .await;
            assert_eq!(
                answer["result"]["worker_message"], version,
                "{ip}: {answer}"
            );
        });
    }
    futures::future::join_all(calls).await;
    let runnable = started.elapsed();
    println!(
        "  {what:<16} accepted {:>7.0} ms, all agents report it {:>7.0} ms, all {n_agents} answered rt {:>7.0} ms",
        accepted.as_secs_f64() * 1000.0,
        reported.as_secs_f64() * 1000.0,
        runnable.as_secs_f64() * 1000.0
    );
}
