//! A center started before its broker waits for it: it serves `/healthz` (503, "waiting for
//! the broker") and refuses v2 calls at once, retries with backoff, and starts for real once
//! the broker is up. The broker is a private node on a port of its own.

use crate::harness::rabbit_node::{free_port, RabbitNode};
use crate::harness::{
    center_config, error_code, install_test_apps, start_center, unix_now_s, wait_until, BusKind,
    AUTH_ID, AUTH_KEY,
};
use elves_agent::AgentConfig;
use elves_center::store::testing::TestDatabase;
use elves_shared::bus;
use elves_shared::sign::{self, SignType};
use elves_shared::wire::AgentId;
use serde_json::Value;
use std::time::Duration;

/// `/healthz`'s status and body. A kept-alive connection the server closed just as it was
/// reused fails the request before it is sent (hyper's `IncompleteMessage`): asked again on a
/// fresh one, a bounded number of times.
async fn get_healthz(http: &reqwest::Client, base_url: &str) -> (u16, Value) {
    let mut attempts = 0;
    let response = loop {
        attempts += 1;
        match http.get(format!("{base_url}/healthz")).send().await {
            Ok(response) => break response,
            Err(err) if attempts < 3 && err.is_request() => continue,
            Err(err) => panic!("healthz: {err}"),
        }
    };
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn rt_exec(http: &reqwest::Client, base_url: &str, ip: &str) -> Value {
    let path = "/api/v2/rt/exec";
    let pairs = vec![
        ("ip".to_string(), ip.to_string()),
        ("app".to_string(), "apptest".to_string()),
        ("func".to_string(), "helloword".to_string()),
        (
            "param".to_string(),
            r#"{"my":"after the broker"}"#.to_string(),
        ),
        ("auth_id".to_string(), AUTH_ID.to_string()),
        ("timestamp".to_string(), unix_now_s().to_string()),
    ];
    let signed = sign::sign_params(path, pairs, SignType::Md5, AUTH_KEY);
    http.post(format!("{base_url}{path}"))
        .form(&signed)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_center_started_before_its_broker_waits_then_serves() {
    let port = free_port();
    let amqp = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let namespace = format!("elves-test-{:016x}", rand::random::<u64>());
    let dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::sqlite().unwrap();
    let mut config = center_config(dir.path(), &BusKind::InProc, &namespace, &database.url);
    config.bus.url = amqp.clone();
    let center_bus = bus::open(&amqp, &namespace).unwrap();
    // Nothing listens on the port yet: the center still starts, and serves HTTP.
    let center = start_center(config, center_bus).await;
    let base_url = format!("http://{}", center.http_addr);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    let (status, health) = get_healthz(&http, &base_url).await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["status"], "waiting for the broker", "{health}");
    // Alive and retrying: the count of failed attempts grows.
    wait_until(
        "three failed attempts to reach the broker",
        Duration::from_secs(20),
        || async {
            let (status, health) = get_healthz(&http, &base_url).await;
            assert_eq!(status, 503, "{health}");
            health["broker"]["failed_attempts"].as_u64().unwrap() >= 3
        },
    )
    .await;
    let (_, health) = get_healthz(&http, &base_url).await;
    assert!(
        health["broker"]["last_error"]
            .as_str()
            .unwrap()
            .contains("bus unavailable"),
        "{health}"
    );

    // A v2 call gets a clear answer at once instead of hanging.
    let refused = rt_exec(&http, &base_url, "ip-a1").await;
    assert_eq!(refused["flag"], "false", "{refused}");
    assert_eq!(error_code(&refused), "500", "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("waiting for the broker"),
        "{refused}"
    );

    let node = RabbitNode::start_on(port).await;
    wait_until(
        "the center to be ready",
        Duration::from_secs(30),
        || async {
            let (status, health) = get_healthz(&http, &base_url).await;
            status == 200 && health["status"] == "ok"
        },
    )
    .await;

    // An agent on the same broker runs an RT call through the center.
    let mut agent_config = AgentConfig::new(AgentId::parse("a1").unwrap());
    agent_config.ip = "ip-a1".to_string();
    agent_config.apps_dir = dir.path().join("apps-a1");
    install_test_apps(&agent_config.apps_dir);
    agent_config.spool_dir = dir.path().join("spool-a1");
    agent_config.heartbeat_interval_ms = 200;
    agent_config.center.key_id = center.key_id.clone();
    agent_config.center.public_key = center.public_key_hex.clone();
    let agent_bus = bus::open(
        &bus::with_frame_max(&node.url(), elves_agent::config::DEFAULT_FRAME_MAX),
        &namespace,
    )
    .unwrap();
    let agent = crate::harness::TestAgent::spawn(agent_config, agent_bus.clone());
    wait_until("agent a1 online", Duration::from_secs(20), || async {
        let (_, health) = get_healthz(&http, &base_url).await;
        health["heartbeat"]["online"].get("a1").is_some()
    })
    .await;
    let answer = rt_exec(&http, &base_url, "ip-a1").await;
    assert_eq!(answer["flag"], "true", "{answer}");
    assert_eq!(answer["result"]["worker_flag"], "1", "{answer}");
    assert_eq!(
        answer["result"]["worker_message"], "after the broker",
        "{answer}"
    );

    agent.stop(Duration::from_secs(20)).await;
    agent_bus.close().await;
    // Stopping blocks on the center's own thread; keep it off the test's runtime.
    tokio::task::spawn_blocking(move || center.stop())
        .await
        .unwrap();
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_center_waiting_for_its_broker_stops_promptly() {
    let amqp = format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port());
    let namespace = format!("elves-test-{:016x}", rand::random::<u64>());
    let dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::sqlite().unwrap();
    let mut config = center_config(dir.path(), &BusKind::InProc, &namespace, &database.url);
    config.bus.url = amqp.clone();
    let center = start_center(config, bus::open(&amqp, &namespace).unwrap()).await;
    let base_url = format!("http://{}", center.http_addr);
    let (status, health) = get_healthz(&reqwest::Client::new(), &base_url).await;
    assert_eq!(status, 503, "{health}");
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || center.stop()),
    )
    .await
    .expect("a waiting center stops within 10 s")
    .unwrap();
    assert!(reqwest::get(format!("{base_url}/healthz")).await.is_err());
}

/// Kills the center process if the test fails before it ends.
struct CenterProcess(std::process::Child);

impl Drop for CenterProcess {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// An operator's `kill -HUP` (reload the cron files) reaching a center process that still
/// waits for its broker must not end it: SIGHUP's default action would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_center_process_waiting_for_its_broker_survives_a_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, broker_port) = (free_port(), free_port());
    let base_url = format!("http://127.0.0.1:{http_port}");
    let config_path = dir.path().join("center.toml");
    let toml = format!(
        "data_dir = {data:?}\n[http]\nlisten = \"127.0.0.1:{http_port}\"\nworkers = 1\n\
         [bus]\nurl = \"amqp://guest:guest@127.0.0.1:{broker_port}/%2f\"\n\
         [auth]\nauth_id = {id:?}\nauth_key = {key:?}\n[cron]\ndir = {cron_dir:?}\n",
        data = dir.path().display().to_string(),
        cron_dir = dir.path().join("cron.d").display().to_string(),
        id = AUTH_ID,
        key = AUTH_KEY,
    );
    std::fs::write(&config_path, toml).unwrap();
    let mut center = CenterProcess(
        std::process::Command::new(env!("CARGO_BIN_EXE_elves"))
            .arg("center")
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::new();
    let waiting = || async {
        match http.get(format!("{base_url}/healthz")).send().await {
            Ok(response) => response.status().as_u16() == 503,
            Err(_) => false,
        }
    };
    wait_until(
        "the center process waits for its broker",
        Duration::from_secs(30),
        waiting,
    )
    .await;

    let pid = libc::pid_t::try_from(center.0.id()).unwrap();
    // SAFETY: kill(2) with a pid we own and a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    // A process-directed signal is handled before any of its threads answers again, so an
    // answer after the kill means the signal was taken.
    assert!(waiting().await, "the center still waits for its broker");
    assert!(
        center.0.try_wait().unwrap().is_none(),
        "SIGHUP ended the center"
    );
}
