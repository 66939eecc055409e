//! One shell holds the `elves` client's variables (`ELVES_URL`, `ELVES_AUTH_ID`,
//! `ELVES_AUTH_KEY`) and starts the services: they start, and `elves call` still reads them.

use crate::harness::rabbit_node::free_port;
use crate::harness::{install_test_apps, AUTH_ID, AUTH_KEY};
use elves_agent::AgentConfig;
use elves_shared::config::{CLIENT_AUTH_ID, CLIENT_AUTH_KEY, CLIENT_URL, CLIENT_VARIABLES};
use serde_json::Value;
use std::io::Read as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Kills the center if the test fails before stopping it.
struct Center(Child);

impl Drop for Center {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The client's variables as a user exports them for `elves call` against `url`.
fn client_variables(url: &str) -> Vec<(&'static str, String)> {
    vec![
        (CLIENT_URL, url.to_string()),
        (CLIENT_AUTH_ID, AUTH_ID.to_string()),
        (CLIENT_AUTH_KEY, AUTH_KEY.to_string()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_center_and_elves_call_share_one_shell() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let config_path = dir.path().join("center.toml");
    let toml = format!(
        "data_dir = {data:?}\n[http]\nlisten = \"127.0.0.1:{port}\"\nworkers = 1\n\
         [bus]\nurl = \"inproc\"\n[auth]\nauth_id = {id:?}\nauth_key = {key:?}\n\
         [cron]\ndir = {cron_dir:?}\n",
        data = dir.path().display().to_string(),
        cron_dir = dir.path().join("cron.d").display().to_string(),
        id = AUTH_ID,
        key = AUTH_KEY,
    );
    std::fs::write(&config_path, toml).unwrap();
    let variables = client_variables(&url);
    assert_eq!(variables.len(), CLIENT_VARIABLES.len());
    let mut center = Center(
        Command::new(env!("CARGO_BIN_EXE_elves"))
            .arg("center")
            .arg("--config")
            .arg(&config_path)
            .envs(variables.iter().map(|(name, value)| (*name, value)))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::new();
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = center.0.try_wait().unwrap() {
            let mut stderr = String::new();
            let _ = center.0.stderr.take().unwrap().read_to_string(&mut stderr);
            panic!("the center exited with {status}: {stderr}");
        }
        let answered = http
            .get(format!("{url}/healthz"))
            .send()
            .await
            .is_ok_and(|response| response.status().is_success());
        if answered {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the center did not answer within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The client finds the center and its credentials in the same variables.
    let call = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_elves"))
            .args(["call", "cron/list"])
            .envs(variables.iter().map(|(name, value)| (*name, value)))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(call.status.success(), "{call:?}");
    let answer: Value = serde_json::from_slice(&call.stdout).unwrap();
    assert_eq!(answer["flag"], "true", "{answer}");
    assert_eq!(answer["result"], serde_json::json!([]), "{answer}");
    assert!(
        matches!(center.0.try_wait(), Ok(None)),
        "the center still runs"
    );
}

#[test]
fn the_agent_loads_its_configuration_with_the_client_variables_set() {
    let dir = tempfile::tempdir().unwrap();
    let apps_dir = dir.path().join("apps");
    install_test_apps(&apps_dir);
    let public_key = elves_shared::crypto::InstructionSigner::generate("center").public_key_hex();
    let config_path = dir.path().join("agent.toml");
    std::fs::write(
        &config_path,
        format!(
            "id = \"host-1\"\napps_dir = {apps:?}\n[center]\npublic_key = {public_key:?}\n",
            apps = apps_dir.display().to_string()
        ),
    )
    .unwrap();
    let mut env: Vec<(String, String)> = client_variables("http://127.0.0.1:8080")
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
    env.push(("ELVES_BUS__NAMESPACE".to_string(), "tenant-a".to_string()));
    let config = AgentConfig::load(Some(&config_path), env).unwrap();
    assert_eq!(config.id.as_str(), "host-1");
    assert_eq!(config.apps_dir, apps_dir);
    assert_eq!(config.bus.namespace, "tenant-a");
}
