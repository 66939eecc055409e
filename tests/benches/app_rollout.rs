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

mod support;

use elves_shared::package::testing::{zip_of, Entry};
use elves_shared::wire::AgentId;
use serde_json::Value;
use std::ops::Deref;
use std::time::{Duration, Instant};
use support::{Api, InProcessAgent};

fn main() {
    if support::listing_only() {
        return;
    }
    let n_agents = support::env_number("ELVES_BENCH_AGENTS", 100) as usize;
    let package_mb = support::env_number("ELVES_BENCH_PACKAGE_MB", 1);
    let heartbeat_ms = support::env_number("ELVES_BENCH_HEARTBEAT_MS", 1000);
    support::runtime(2).block_on(rollout(n_agents, package_mb, heartbeat_ms));
}

/// The center's API, with the two requests of this bench that are not plain signed calls.
struct Bench(Api);

impl Deref for Bench {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.0
    }
}

impl Bench {
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
    let namespace = support::namespace("bench");
    let mut env = support::center_env(dir.path(), &namespace);
    env.push((
        "ELVES_APPS__LIMITS__MAX_COMPRESSED_BYTES".to_string(),
        (1u64 << 30).to_string(),
    ));
    env.push((
        "ELVES_APPS__LIMITS__MAX_UNCOMPRESSED_BYTES".to_string(),
        (1u64 << 31).to_string(),
    ));
    let config = support::center_config(env);
    let bus = elves_shared::bus::open("inproc", &namespace).expect("bus");
    let center_bus = bus.clone();
    let center = tokio::task::spawn_blocking(move || support::start_center(config, center_bus))
        .await
        .expect("center thread");
    let bench = Bench(Api::new(format!("http://{}", center.http_addr)));

    let mut agents = Vec::new();
    for n in 0..n_agents {
        let id = AgentId::parse(&format!("agent-{n:03}")).expect("id");
        let mut config = support::agent_config(
            &id,
            dir.path().join(format!("apps-{n:03}")),
            dir.path().join(format!("spool-{n:03}")),
            heartbeat_ms,
            &center.key_id,
            &center.public_key_hex,
        );
        std::fs::create_dir_all(&config.apps_dir).expect("apps dir");
        config.cron_file = dir.path().join("no-cron.json");
        config.interpreters = [("sh".to_string(), "/bin/sh".to_string())].into();
        config.package_limits.max_compressed_bytes = 1 << 30;
        config.package_limits.max_uncompressed_bytes = 1 << 31;
        agents.push(InProcessAgent::spawn(config, bus.clone()));
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

    support::stop_agents(agents).await;
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
