//! Issue 20, item 2: `elves agent enroll <id>` makes an agent's broker user (limited to its own
//! queue and the namespace's exchange) through the RabbitMQ management API and prints the
//! agent's config; an agent started from that config runs calls. `elves agent revoke <id>`
//! deletes the user: the agent's connection is closed, a reconnect is refused, and its
//! results reach the center no more. Against a private RabbitMQ node with the management
//! plugin (the shared broker has none), on ports of its own.

use crate::harness::rabbit_node::{free_port, RabbitNode};
use crate::harness::{
    center_config, error_code, install_test_apps, start_center, unix_now_s, wait_until, BusKind,
    AUTH_ID, AUTH_KEY,
};
use elves_agent::AgentConfig;
use elves_center::config::AuthMode;
use elves_shared::bus;
use elves_shared::sign::{self, SignType};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

/// Signed v2 calls to one center as one auth id.
struct Caller {
    http: reqwest::Client,
    base_url: String,
    auth_id: String,
    auth_key: String,
}

impl Caller {
    async fn call(&self, endpoint: &str, params: &[(&str, &str)]) -> Value {
        let path = format!("/api/v2/{endpoint}");
        let mut pairs: Vec<(String, String)> = params
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        pairs.push(("auth_id".into(), self.auth_id.clone()));
        pairs.push(("timestamp".into(), unix_now_s().to_string()));
        let form = sign::sign_params(&path, pairs, SignType::HmacSha256, &self.auth_key);
        self.http
            .post(format!("{}{path}", self.base_url))
            .form(&form)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// The management API of `node`, as its administrator.
struct Management {
    http: reqwest::Client,
    base: String,
}

impl Management {
    fn of(node: &RabbitNode) -> Management {
        Management {
            http: reqwest::Client::new(),
            base: format!("http://127.0.0.1:{}/api", node.management_port.unwrap()),
        }
    }

    async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}/{path}", self.base))
            .basic_auth("guest", Some("guest"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn users(&self) -> Vec<String> {
        let users = self.get("users").await;
        let mut names: Vec<String> = users
            .as_array()
            .unwrap()
            .iter()
            .map(|user| user["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    }

    async fn connections_of(&self, user: &str) -> usize {
        let connections = self.get("connections").await;
        connections
            .as_array()
            .unwrap()
            .iter()
            .filter(|connection| connection["user"] == user)
            .count()
    }
}

/// `elves <args>` against the center; answers (success, stdout, stderr).
async fn elves(args: &[&str], base_url: &str, auth: (&str, &str)) -> (bool, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_elves"))
        .args(args)
        .env("ELVES_URL", base_url)
        .env("ELVES_AUTH_ID", auth.0)
        .env("ELVES_AUTH_KEY", auth.1)
        .output()
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

/// Whether `url` may open a connection and declare `queue`; the broker's refusal otherwise.
async fn try_declare(url: &str, queue: &str) -> Result<(), String> {
    let properties = lapin::ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    let connection = lapin::Connection::connect(url, properties)
        .await
        .map_err(|err| err.to_string())?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|err| err.to_string())?;
    let declared = channel
        .queue_declare(
            queue,
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .map(|_| ())
        .map_err(|err| err.to_string());
    let _ = connection.close(200, "probe").await;
    declared
}

/// Publishes one message as `url` onto `exchange` with `key`, with a confirm; the broker's
/// refusal otherwise.
async fn try_publish(url: &str, exchange: &str, key: &str) -> Result<(), String> {
    let properties = lapin::ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    let connection = lapin::Connection::connect(url, properties)
        .await
        .map_err(|err| err.to_string())?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|err| err.to_string())?;
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .map_err(|err| err.to_string())?;
    let published = async {
        channel
            .basic_publish(
                exchange,
                key,
                lapin::options::BasicPublishOptions::default(),
                b"probe",
                lapin::BasicProperties::default(),
            )
            .await?
            .await
    }
    .await
    .map(|_| ())
    .map_err(|err| err.to_string());
    let _ = connection.close(200, "probe").await;
    published
}

/// The agent config an enroll wrote, with this test's directories and a quick heartbeat.
fn agent_config_from(path: &Path, dir: &Path) -> AgentConfig {
    let apps = dir.join("apps-a1");
    install_test_apps(&apps);
    let overrides = vec![
        ("ELVES_APPS_DIR".to_string(), apps.display().to_string()),
        (
            "ELVES_SPOOL_DIR".to_string(),
            dir.join("spool-a1").display().to_string(),
        ),
        ("ELVES_HEARTBEAT_INTERVAL_MS".to_string(), "200".to_string()),
        ("ELVES_IP".to_string(), "ip-a1".to_string()),
    ];
    AgentConfig::load(Some(path), overrides).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolled_agent_runs_calls_and_a_revoked_one_is_shut_out() {
    let node = RabbitNode::start_with_management(free_port(), free_port()).await;
    let management = Management::of(&node);
    let namespace = format!("elves-test-{:016x}", rand::random::<u64>());
    let dir = tempfile::tempdir().unwrap();
    let database = elves_center::store::testing::TestDatabase::sqlite().unwrap();
    let mut config = center_config(dir.path(), &BusKind::InProc, &namespace, &database.url);
    config.bus.url = node.url();
    config.bus.agent_accounts = true;
    config.bus.management_url = node.management_url();
    config.auth.mode = AuthMode::Supervisor;
    let center = start_center(config, bus::open(&node.url(), &namespace).unwrap()).await;
    let base_url = format!("http://{}", center.http_addr);
    let admin = Caller {
        http: reqwest::Client::new(),
        base_url: base_url.clone(),
        auth_id: AUTH_ID.to_string(),
        auth_key: AUTH_KEY.to_string(),
    };
    let users_before = management.users().await;

    // Refused, and nothing made: a bad id, a caller who is not an admin.
    let answer = admin.call("agent/enroll", &[("id", "bad id")]).await;
    assert_eq!(error_code(&answer), "403.2", "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("agent id"),
        "{answer}"
    );
    let (ok, _, stderr) = elves(&["agent", "enroll", "-x"], &base_url, (AUTH_ID, AUTH_KEY)).await;
    assert!(!ok, "{stderr}");
    let created = admin
        .call("auth/create", &[("id", "viewer"), ("role", "normal")])
        .await;
    let viewer = Caller {
        http: reqwest::Client::new(),
        base_url: base_url.clone(),
        auth_id: "viewer".to_string(),
        auth_key: created["result"]["auth_key"].as_str().unwrap().to_string(),
    };
    for endpoint in ["agent/enroll", "agent/revoke"] {
        let answer = viewer.call(endpoint, &[("id", "a1")]).await;
        assert_eq!(error_code(&answer), "401.6", "{endpoint}: {answer}");
    }
    let taken = dir.path().join("taken.toml");
    std::fs::write(&taken, "kept").unwrap();
    let (ok, _, stderr) = elves(
        &["agent", "enroll", "a9", "--out", taken.to_str().unwrap()],
        &base_url,
        (AUTH_ID, AUTH_KEY),
    )
    .await;
    assert!(!ok && stderr.contains("must not exist"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&taken).unwrap(), "kept");
    assert_eq!(management.users().await, users_before);

    // Enroll through the command; the config it wrote starts an agent that runs a call.
    let config_path = dir.path().join("a1.toml");
    let enrolling = std::time::Instant::now();
    let (ok, _, stderr) = elves(
        &[
            "agent",
            "enroll",
            "a1",
            "--out",
            config_path.to_str().unwrap(),
        ],
        &base_url,
        (AUTH_ID, AUTH_KEY),
    )
    .await;
    assert!(ok, "enroll failed: {stderr}");
    let enroll_took = enrolling.elapsed();
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&config_path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the config holds a password");
    let text = std::fs::read_to_string(&config_path).unwrap();
    assert!(text.contains(&center.public_key_hex), "{text}");
    let agent_config = agent_config_from(&config_path, dir.path());
    assert_eq!(agent_config.id.as_str(), "a1");
    assert!(
        agent_config.bus.url.starts_with("amqp://a1:"),
        "{}",
        agent_config.bus.url
    );
    let mut expected_users = users_before.clone();
    expected_users.push("a1".to_string());
    expected_users.sort();
    assert_eq!(management.users().await, expected_users);
    let again = admin.call("agent/enroll", &[("id", "a1")]).await;
    assert_eq!(error_code(&again), "403.2", "{again}");
    assert!(
        again["error"]
            .as_str()
            .unwrap()
            .contains("enrolled already"),
        "{again}"
    );

    // Its user may use its own queue and no other.
    let agent_url = agent_config.bus.url.clone();
    let other = try_declare(&agent_url, &format!("{namespace}.agent.a2")).await;
    assert!(
        other
            .as_ref()
            .is_err_and(|err| err.contains("ACCESS_REFUSED")),
        "{other:?}"
    );
    assert_eq!(
        try_declare(&agent_url, &format!("{namespace}.agent.a1")).await,
        Ok(())
    );
    // On the exchange it may publish what an agent sends, not an instruction to another agent.
    let forged = try_publish(&agent_url, &namespace, "agent.a2").await;
    assert!(
        forged
            .as_ref()
            .is_err_and(|err| err.contains("ACCESS_REFUSED")),
        "{forged:?}"
    );
    assert_eq!(
        try_publish(&agent_url, &namespace, "center.output").await,
        Ok(())
    );

    let agent_bus = bus::open(&agent_url, &namespace).unwrap();
    let agent = crate::harness::TestAgent::spawn(agent_config, agent_bus.clone());
    let http = reqwest::Client::new();
    let online = |http: reqwest::Client, base_url: String| async move {
        let health: Value = http
            .get(format!("{base_url}/healthz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        health["heartbeat"]["online"].get("a1").is_some()
    };
    wait_until("enrolled agent a1 online", Duration::from_secs(30), || {
        online(http.clone(), base_url.clone())
    })
    .await;
    // Supervisor mode (for the non-admin above): the apps are registered and bound.
    for app in ["apptest", "elvestest"] {
        let created = admin.call("app/create", &[("app", app)]).await;
        assert_eq!(created["flag"], "true", "{created}");
        let bound = admin
            .call("app/bind", &[("app", app), ("ip", "ip-a1")])
            .await;
        assert_eq!(bound["flag"], "true", "{bound}");
    }
    let answer = admin
        .call(
            "rt/exec",
            &[
                ("ip", "ip-a1"),
                ("app", "apptest"),
                ("func", "helloword"),
                ("param", r#"{"my":"enrolled"}"#),
            ],
        )
        .await;
    assert_eq!(answer["flag"], "true", "{answer}");
    assert_eq!(answer["result"]["worker_message"], "enrolled", "{answer}");

    // A queue task runs when the agent is revoked: its result is never taken.
    let queue = admin.call("queue/create", &[("app", "elvestest")]).await["result"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let gate = dir.path().join("gate");
    let param = json!({ "file": gate }).to_string();
    let added = admin
        .call(
            "queue/addtask",
            &[
                ("queue_id", &queue),
                ("ip", "ip-a1"),
                ("func", "gate"),
                ("param", &param),
            ],
        )
        .await;
    let task = added["result"]["id"].as_str().unwrap().to_string();
    admin.call("queue/commit", &[("queue_id", &queue)]).await;
    let started = gate.with_extension("started");
    wait_until(
        "the gated task running",
        Duration::from_secs(20),
        || async { started.exists() },
    )
    .await;
    wait_until(
        "a1's connection listed",
        Duration::from_secs(30),
        || async { management.connections_of("a1").await > 0 },
    )
    .await;

    let revoking = std::time::Instant::now();
    let (ok, _, stderr) = elves(&["agent", "revoke", "a1"], &base_url, (AUTH_ID, AUTH_KEY)).await;
    assert!(ok, "revoke failed: {stderr}");
    let revoke_took = revoking.elapsed();
    assert_eq!(management.users().await, users_before);
    wait_until(
        "a1's connection closed",
        Duration::from_secs(30),
        || async { management.connections_of("a1").await == 0 },
    )
    .await;
    let refused = try_declare(&agent_url, &format!("{namespace}.agent.a1")).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|err| err.contains("ACCESS_REFUSED")),
        "a revoked agent reconnected: {refused:?}"
    );
    std::fs::write(&gate, b"").unwrap();
    // The worker ends and the agent cannot publish its result: it goes to the spool.
    let spool = dir.path().join("spool-a1");
    wait_until("a1's result spooled", Duration::from_secs(30), || async {
        std::fs::read_dir(&spool).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|entry| entry.file_name().to_string_lossy().contains(&task))
        })
    })
    .await;
    let rows = admin.call("queue/result", &[("queue_id", &queue)]).await;
    assert_ne!(
        rows["result"][&task]["worker_message"], "opened",
        "a revoked agent's result was taken: {rows}"
    );
    let answer = admin.call("agent/revoke", &[("id", "a1")]).await;
    assert_eq!(error_code(&answer), "414.1", "{answer}");
    eprintln!(
        "enroll: `elves agent enroll` {} ms, `elves agent revoke` {} ms (each a process, a \
         signed call and the broker's management API)",
        enroll_took.as_millis(),
        revoke_took.as_millis()
    );

    agent.stop(Duration::from_secs(20)).await;
    agent_bus.close().await;
    tokio::task::spawn_blocking(move || center.stop())
        .await
        .unwrap();
    drop(node);
}
