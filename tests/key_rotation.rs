//! Issue 20, item 3: the center's signing key is rotated with `elves keys rotate` while a
//! queue runs: `add` a second key, the agent (a real `elves agent` process) gets both in its
//! config and reloads them on SIGHUP, `use` the new one, `retire` the old one. Every task runs
//! once and ends well across the rotation; afterwards an instruction signed with the retired
//! key is refused by the agent, and one signed with the new key runs.

use crate::harness::{
    amqp_url, center_config, install_test_apps, start_center, unix_now_s, wait_until, BusKind,
    AUTH_ID, AUTH_KEY,
};
use elves_shared::bus::{self, BusMessage, Destination};
use elves_shared::crypto::InstructionSigner;
use elves_shared::sign::{self, SignType};
use elves_shared::time::now_unix_ms;
use elves_shared::wire::{self, kind, routing, AgentId, Instruction, Mode, TaskId, TaskType};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

const TASKS: usize = 30;

async fn call(base_url: &str, endpoint: &str, params: &[(&str, &str)]) -> Value {
    let path = format!("/api/v2/{endpoint}");
    let mut pairs: Vec<(String, String)> = params
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    pairs.push(("auth_id".into(), AUTH_ID.into()));
    pairs.push(("timestamp".into(), unix_now_s().to_string()));
    let form = sign::sign_params(&path, pairs, SignType::HmacSha256, AUTH_KEY);
    reqwest::Client::new()
        .post(format!("{base_url}{path}"))
        .form(&form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `elves keys …` against the center; its stdout.
async fn elves_keys(base_url: &str, args: &[&str]) -> String {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_elves"))
        .arg("keys")
        .args(args)
        .env("ELVES_URL", base_url)
        .env("ELVES_AUTH_ID", AUTH_ID)
        .env("ELVES_AUTH_KEY", AUTH_KEY)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "elves keys {args:?}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

struct AgentProcess {
    child: tokio::process::Child,
    config_path: PathBuf,
    log_path: PathBuf,
    base: String,
}

/// Writes the agent's config: `base` with `keys` as its trusted center keys.
fn write_config(path: &Path, base: &str, keys: &BTreeMap<String, String>) {
    let mut text = base.to_string();
    text.push_str("[center.keys]\n");
    for (id, public_key) in keys {
        text.push_str(&format!("{id:?} = {public_key:?}\n"));
    }
    std::fs::write(path, text).unwrap();
}

impl AgentProcess {
    fn write_keys(&self, keys: &BTreeMap<String, String>) {
        write_config(&self.config_path, &self.base, keys);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends SIGHUP and waits for the agent to say it trusts exactly `ids`.
    async fn reload(&self, ids: &[&str]) {
        let before = self.log().matches("SIGHUP: trusting").count();
        let pid = i32::try_from(self.child.id().unwrap()).unwrap();
        // SAFETY: signals the agent process this test started and has not reaped.
        unsafe { libc::kill(pid, libc::SIGHUP) };
        let expected = format!("SIGHUP: trusting center keys {ids:?}");
        wait_until(
            "the agent reloading its keys",
            Duration::from_secs(20),
            || {
                let log = self.log();
                let reloaded =
                    log.matches("SIGHUP: trusting").count() > before && log.contains(&expected);
                async move { reloaded }
            },
        )
        .await;
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: as above; SIGTERM lets it close its bus cleanly.
            unsafe { libc::kill(i32::try_from(pid).unwrap(), libc::SIGTERM) };
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
        let _ = self.child.kill().await;
    }
}

fn count_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// An instruction for agent r1 to run `count` into `file`, signed by `signer`.
fn signed_instruction(signer: &InstructionSigner, file: &Path) -> BusMessage {
    let now = now_unix_ms();
    let instruction = Instruction {
        id: TaskId::random(),
        agent: AgentId::parse("r1").unwrap(),
        task_type: TaskType::Queue,
        mode: Mode::NP,
        app: "elvestest".to_string(),
        func: "count".to_string(),
        param: json!({"file": file, "seconds": "0"}).to_string(),
        timeout: 30,
        proxy: String::new(),
        issued_at: now,
        deadline: now + 60_000,
    };
    let mut message = BusMessage::msgpack(kind::INSTRUCTION, wire::encode(&instruction));
    let (key_id, signature) = signer.sign_with_key_id(&message.body);
    message.sig = Some(signature);
    message.key_id = Some(key_id);
    message.message_id = Some(instruction.id.to_string());
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_keep_running_across_a_key_rotation_and_the_retired_key_is_refused() {
    let namespace = format!("elves-test-{:016x}", rand::random::<u64>());
    let dir = tempfile::tempdir().unwrap();
    let database = elves_center::store::testing::TestDatabase::sqlite().unwrap();
    let config = center_config(dir.path(), &BusKind::Rabbit, &namespace, &database.url);
    let center = start_center(config, bus::open(&amqp_url(), &namespace).unwrap()).await;
    let base_url = format!("http://{}", center.http_addr);
    let old_key = (center.key_id.clone(), center.public_key_hex.clone());

    let apps = dir.path().join("apps-r1");
    install_test_apps(&apps);
    let base = format!(
        "id = \"r1\"\nip = \"ip-r1\"\napps_dir = {:?}\nspool_dir = {:?}\n\
         heartbeat_interval_ms = 200\nmax_concurrent = 2\n\
         [bus]\nurl = {:?}\nnamespace = {:?}\n",
        apps.display().to_string(),
        dir.path().join("spool-r1").display().to_string(),
        amqp_url(),
        namespace
    );
    let log_path = dir.path().join("agent.log");
    let config_path = dir.path().join("agent.toml");
    write_config(&config_path, &base, &[old_key.clone()].into());
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_elves"))
        .args(["agent", "--config", config_path.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let agent = AgentProcess {
        child,
        config_path,
        log_path,
        base,
    };
    let http = reqwest::Client::new();
    wait_until("agent r1 online", Duration::from_secs(30), || {
        let (http, base_url) = (http.clone(), base_url.clone());
        async move {
            let health: Value = http
                .get(format!("{base_url}/healthz"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            health["heartbeat"]["online"].get("r1").is_some()
        }
    })
    .await;

    // A queue signed with the old key, running through the whole rotation.
    let counted = dir.path().join("counted");
    let param = json!({"file": counted, "seconds": "0.4"}).to_string();
    let queue = call(&base_url, "queue/create", &[("app", "elvestest")]).await["result"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    for _ in 0..TASKS {
        let added = call(
            &base_url,
            "queue/addtask",
            &[
                ("queue_id", &queue),
                ("ip", "ip-r1"),
                ("func", "count"),
                ("param", &param),
            ],
        )
        .await;
        assert_eq!(added["flag"], "true", "{added}");
    }
    call(&base_url, "queue/commit", &[("queue_id", &queue)]).await;
    wait_until("the queue running", Duration::from_secs(20), || async {
        count_lines(&counted).len() >= 2
    })
    .await;

    // add: a second key; the agent is given both and reloads them.
    let listed = elves_keys(&base_url, &["rotate", "add", "k2"]).await;
    assert!(
        listed.contains("staged") && listed.contains("k2"),
        "{listed}"
    );
    assert!(listed.contains("elves keys rotate use k2"), "{listed}");
    let keys = call(&base_url, "keys/list", &[]).await;
    let new_public = keys["result"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|key| key["key_id"] == "k2")
        .unwrap()["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    // Wrong steps are refused and change nothing.
    let before = call(&base_url, "keys/list", &[]).await["result"].clone();
    for (endpoint, id) in [
        ("keys/use", "nope"),
        ("keys/retire", old_key.0.as_str()),
        ("keys/add", "k2"),
        ("keys/add", "bad id"),
    ] {
        let answer = call(&base_url, endpoint, &[("id", id)]).await;
        assert_eq!(
            crate::harness::error_code(&answer),
            "403.2",
            "{endpoint} {id}: {answer}"
        );
    }
    assert_eq!(call(&base_url, "keys/list", &[]).await["result"], before);
    let both: BTreeMap<String, String> =
        [old_key.clone(), ("k2".to_string(), new_public.clone())].into();
    agent.write_keys(&both);
    agent.reload(&[&old_key.0, "k2"]).await;

    // use: the center signs with k2; what is queued signed with the old key still runs.
    let listed = elves_keys(&base_url, &["rotate", "use", "k2"]).await;
    assert!(listed.contains("signing  k2"), "{listed}");
    let ran_before_use = count_lines(&counted).len();
    let switched = std::time::Instant::now();
    assert!(
        ran_before_use < TASKS,
        "the queue ended before the switch ({ran_before_use} tasks): it must run across it"
    );
    let answer = call(
        &base_url,
        "rt/exec",
        &[
            ("ip", "ip-r1"),
            ("app", "apptest"),
            ("func", "helloword"),
            ("param", r#"{"my":"signed by k2"}"#),
        ],
    )
    .await;
    assert_eq!(
        answer["result"]["worker_message"], "signed by k2",
        "{answer}"
    );
    wait_until("the queue finishing", Duration::from_secs(90), || async {
        let answer = call(&base_url, "queue/result", &[("queue_id", &queue)]).await;
        answer["result"]
            .as_object()
            .is_some_and(|rows| rows.values().all(|row| row["status"] == "finish"))
    })
    .await;
    eprintln!(
        "key rotation: {ran_before_use} of {TASKS} tasks had run when the center switched keys; \
         the rest ended {} ms later",
        switched.elapsed().as_millis()
    );
    let rows = call(&base_url, "queue/result", &[("queue_id", &queue)]).await;
    let rows = rows["result"].as_object().unwrap();
    assert_eq!(rows.len(), TASKS);
    for (task, row) in rows {
        assert_eq!(row["worker_flag"], "1", "task {task}: {row}");
    }
    let lines = count_lines(&counted);
    let distinct: BTreeSet<&String> = lines.iter().collect();
    assert_eq!(
        (lines.len(), distinct.len()),
        (TASKS, TASKS),
        "each task ran once"
    );

    // retire: the old key is dropped by the center and, after a reload, by the agent.
    let listed = elves_keys(&base_url, &["rotate", "retire", &old_key.0]).await;
    assert!(listed.contains("retired"), "{listed}");
    assert!(listed.contains("no rotation under way"), "{listed}");
    agent.write_keys(&[("k2".to_string(), new_public.clone())].into());
    agent.reload(&["k2"]).await;

    let old_seed = std::fs::read_to_string(dir.path().join("center.key")).unwrap();
    let old_signer = InstructionSigner::from_seed_hex(&old_key.0, &old_seed).unwrap();
    let new_seed = std::fs::read_to_string(dir.path().join("keys/k2.key")).unwrap();
    let new_signer = InstructionSigner::from_seed_hex("k2", &new_seed).unwrap();
    let by_old = dir.path().join("by-old");
    let by_new = dir.path().join("by-new");
    let publisher = bus::open(&amqp_url(), &namespace).unwrap();
    let to_agent = Destination::Topic(routing::agent(&AgentId::parse("r1").unwrap()));
    let refused_before = agent.log().matches("instruction refused").count();
    for message in [
        signed_instruction(&old_signer, &by_old),
        signed_instruction(&new_signer, &by_new),
    ] {
        publisher.publish(&to_agent, message).await.unwrap();
    }
    wait_until(
        "the new key's instruction run",
        Duration::from_secs(20),
        || async { !count_lines(&by_new).is_empty() },
    )
    .await;
    let log = agent.log();
    assert!(
        log.matches("instruction refused").count() > refused_before
            && log.contains(&format!("unknown key id {:?}", old_key.0)),
        "the retired key's instruction was not refused:\n{log}"
    );
    assert!(
        count_lines(&by_old).is_empty(),
        "an instruction signed with the retired key ran"
    );

    publisher.close().await;
    agent.stop().await;
    tokio::task::spawn_blocking(move || center.stop())
        .await
        .unwrap();
    elves_shared::bus::testing::delete_namespace(&amqp_url(), &namespace, &["r1".to_string()])
        .await;
}
