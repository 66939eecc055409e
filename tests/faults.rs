//! The fault suite: tasks submitted while a part of the system is broken on purpose, and one
//! checker ([`checker`]) that classifies every submitted task by what the center finally says
//! about it and how many times the app itself ran it (the `count` func of the test app appends
//! its task id to a file at each execution):
//!
//! - ended ok once: finished with `worker_flag` 1 and the app's own answer, run once;
//! - ended with a clear failure: a terminal state with a non-empty error or message;
//! - ran twice: the app counted the task more than once;
//! - never ended: no terminal state within the scenario's bound.
//!
//! A scenario fails on any "ran twice" or "never ended", and prints its row of the table
//! `scenario | tasks | ended ok | ended failed | ran twice | never ended`.
//!
//! Agents run as real processes (`elves agent`), so that they can be killed with SIGKILL or
//! stopped with SIGSTOP. Scenarios that restart the broker use a node of their own
//! (`harness::rabbit_node`); the others use the shared broker in a namespace of their own,
//! since nothing they do touches the broker itself.

use crate::harness::{BusKind, TestEnv};
use crate::queue::{commit, create_queue, ok_result, read_lines, results};
use elves_agent::AgentConfig;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

pub mod checker {
    use serde_json::{Map, Value};
    use std::collections::BTreeMap;

    const TERMINAL: [&str; 3] = ["finish", "skipped", "stoped"];

    /// One row of the table: how every task of a scenario ended.
    #[derive(Debug, Default)]
    pub struct Tally {
        pub scenario: String,
        pub tasks: usize,
        pub ended_ok: usize,
        /// Failure message → how many tasks ended with it.
        pub ended_failed: BTreeMap<String, usize>,
        pub ran_twice: Vec<String>,
        pub never_ended: Vec<String>,
    }

    impl Tally {
        pub fn n_failed(&self) -> usize {
            self.ended_failed.values().sum()
        }

        pub fn row(&self) -> String {
            let failures: Vec<String> = self
                .ended_failed
                .iter()
                .map(|(message, n)| format!("{n}× {message}"))
                .collect();
            format!(
                "| {} | {} | {} | {}{} | {} | {} |",
                self.scenario,
                self.tasks,
                self.ended_ok,
                self.n_failed(),
                if failures.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", failures.join("; "))
                },
                self.ran_twice.len(),
                self.never_ended.len()
            )
        }

        /// Prints the row and fails the test on any task that ran twice or never ended.
        pub fn report(&self) {
            println!(
                "| scenario | tasks | ended ok | ended failed | ran twice | never ended |\n\
                 |---|---|---|---|---|---|\n{}",
                self.row()
            );
            assert!(
                self.ran_twice.is_empty() && self.never_ended.is_empty(),
                "{}: ran twice {:?}, never ended {:?}",
                self.scenario,
                self.ran_twice,
                self.never_ended
            );
            assert_eq!(
                self.ended_ok + self.n_failed(),
                self.tasks,
                "{}: every task is counted once",
                self.scenario
            );
        }
    }

    /// Classifies each of `submitted` (task id → the answer its app gives when it runs to its
    /// end) from the center's `queue/result` rows and the ids the app wrote at each run.
    pub fn classify(
        scenario: &str,
        submitted: &BTreeMap<String, String>,
        rows: &Map<String, Value>,
        executions: &[String],
    ) -> Tally {
        let mut runs: BTreeMap<&str, usize> = BTreeMap::new();
        for id in executions {
            *runs.entry(id.as_str()).or_default() += 1;
        }
        let mut tally = Tally {
            scenario: scenario.to_string(),
            tasks: submitted.len(),
            ..Tally::default()
        };
        for (id, expected) in submitted {
            let n_runs = runs.get(id.as_str()).copied().unwrap_or(0);
            let row = rows.get(id);
            let status = row.and_then(|row| row["status"].as_str()).unwrap_or("");
            if n_runs > 1 {
                tally.ran_twice.push(id.clone());
                continue;
            }
            let Some(row) = row.filter(|_| TERMINAL.contains(&status)) else {
                tally.never_ended.push(id.clone());
                continue;
            };
            let message = row["worker_message"].as_str().unwrap_or("");
            let error = row["error"].as_str().unwrap_or("");
            if status == "finish" && row["worker_flag"] == "1" && message == expected && n_runs == 1
            {
                tally.ended_ok += 1;
                continue;
            }
            let failure = match (error, message) {
                ("", "") => format!("{status} with no message (ran {n_runs}×)"),
                ("", message) => message.to_string(),
                (error, "") => error.to_string(),
                (error, message) => format!("{error}: {message}"),
            };
            *tally.ended_failed.entry(failure).or_default() += 1;
        }
        tally
    }
}

/// An agent as its own process (`elves agent --config …`), killed when dropped.
struct AgentProcess {
    config_path: PathBuf,
    child: Option<Child>,
}

impl AgentProcess {
    fn start(dir: &Path, config: &AgentConfig) -> AgentProcess {
        let config_path = dir.join(format!("agent-{}.toml", config.id));
        std::fs::write(&config_path, agent_toml(config)).unwrap();
        let mut agent = AgentProcess {
            config_path,
            child: None,
        };
        agent.restart();
        agent
    }

    fn restart(&mut self) {
        assert!(self.child.is_none(), "the agent runs already");
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_elves"));
        command
            .arg("agent")
            .arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // The file alone is its configuration, whatever this test process was given.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ELVES_") {
                command.env_remove(name);
            }
        }
        self.child = Some(command.spawn().unwrap());
    }

    fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.as_ref().unwrap().id()).unwrap()
    }

    /// SIGKILL: none of the agent's shutdown code runs.
    fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill has no memory-safety preconditions.
        let sent = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(sent, 0, "signal {signal} to the agent");
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn agent_toml(config: &AgentConfig) -> String {
    let text = |path: &Path| path.to_str().unwrap().to_string();
    let file = json!({
        "id": config.id.to_string(),
        "ip": config.ip,
        "apps_dir": text(&config.apps_dir),
        "spool_dir": text(&config.spool_dir),
        "heartbeat_interval_ms": config.heartbeat_interval_ms,
        "max_concurrent": config.max_concurrent,
        "bus": { "url": config.bus.url, "namespace": config.bus.namespace },
        "center": { "key_id": config.center.key_id, "public_key": config.center.public_key },
        "exec": { "kill_grace_ms": config.exec.kill_grace_ms },
    });
    let table: toml::Table = serde_json::from_value(file).unwrap();
    toml::to_string(&table).unwrap()
}

fn process_agent_config(env: &TestEnv, id: &str, max_concurrent: usize) -> AgentConfig {
    let mut config = env.agent_config(id);
    config.bus.url = crate::harness::amqp_url();
    config.bus.namespace = env.namespace.clone();
    config.max_concurrent = max_concurrent;
    config
}

/// Adds one `count` task per entry of `seconds` to a new queue for agent `ip`; returns the
/// queue id and task id → the answer the app gives when it runs to its end.
async fn count_tasks(
    env: &TestEnv,
    ip: &str,
    file: &Path,
    seconds: &[&str],
    timeout_s: u32,
) -> (String, std::collections::BTreeMap<String, String>) {
    let queue = create_queue(env).await;
    let mut submitted = std::collections::BTreeMap::new();
    for seconds in seconds {
        let param = json!({ "file": file, "seconds": seconds }).to_string();
        let answer = env
            .call(
                "queue/addtask",
                &[
                    ("queue_id", &queue),
                    ("ip", ip),
                    ("func", "count"),
                    ("param", &param),
                    ("timeout", &timeout_s.to_string()),
                ],
            )
            .await;
        let id = ok_result(&answer)["id"].as_str().unwrap().to_string();
        submitted.insert(id.clone(), format!("counted {id}"));
    }
    (queue, submitted)
}

/// The queue's rows once every task is terminal, or as they are after `bound`: a task still
/// running then is what the checker calls "never ended".
async fn settled_results(env: &TestEnv, queue: &str, bound: Duration) -> Map<String, Value> {
    let started = Instant::now();
    loop {
        let rows = results(env, queue).await;
        let all_terminal = rows.values().all(|row| {
            ["finish", "skipped", "stoped"].contains(&row["status"].as_str().unwrap_or(""))
        });
        if all_terminal || started.elapsed() > bound {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The pids of the worker processes (`app-worker`) of `tasks`, from `/proc`.
fn workers_of(tasks: &[String]) -> Vec<u32> {
    let markers: Vec<Vec<u8>> = tasks
        .iter()
        .map(|id| format!("ELVES_TASK_ID={id}").into_bytes())
        .collect();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let is_worker = cmdline
            .split(|&byte| byte == 0)
            .any(|arg| arg.ends_with(b"app-worker"));
        let ours = environ
            .split(|&byte| byte == 0)
            .any(|variable| markers.iter().any(|marker| marker == variable));
        if is_worker && ours {
            pids.push(pid);
        }
    }
    pids
}

async fn wait_lines(file: &Path, n: usize, what: &str) {
    crate::harness::wait_until(what, Duration::from_secs(30), || async {
        read_lines(file).len() >= n
    })
    .await;
}

/// Issue 16, item 1: an agent killed mid-task and restarted 5 s later. Its workers die with it;
/// the tasks that were running come back from the broker and are reported lost, not run a
/// second time; the ones that had not started yet run once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_mid_task_runs_nothing_twice() {
    let env = TestEnv::start(BusKind::Rabbit).await;
    let config = process_agent_config(&env, "a1", 4);
    let mut agent = AgentProcess::start(env.dir.path(), &config);
    env.wait_online("a1").await;
    let file = env.dir.path().join("executions.log");
    let (queue, submitted) = count_tasks(&env, "ip-a1", &file, &["3"; 8], 30).await;
    commit(&env, &queue).await;
    wait_lines(&file, 4, "four tasks running").await;
    assert_eq!(workers_of(&read_lines(&file)).len(), 4, "four workers seen");

    agent.kill();
    let at_kill = read_lines(&file);
    assert_eq!(at_kill.len(), 4, "only four slots: {at_kill:?}");
    // The workers died with their agent (their `sleep`, a grandchild, is found again and
    // killed by the restarted agent).
    crate::harness::wait_until(
        "the workers to die with their agent",
        Duration::from_secs(5),
        || async { workers_of(&at_kill).is_empty() },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    agent.restart();

    let rows = settled_results(&env, &queue, Duration::from_secs(60)).await;
    let tally = checker::classify(
        "agent SIGKILL mid-task, restart after 5 s",
        &submitted,
        &rows,
        &read_lines(&file),
    );
    tally.report();
    assert_eq!(tally.ended_ok, 4, "{}", tally.row());
    let lost: usize = tally
        .ended_failed
        .iter()
        .filter(|(message, _)| {
            message.starts_with("lost: agent stopped while the task was running")
        })
        .map(|(_, n)| n)
        .sum();
    assert_eq!(lost, 4, "{}", tally.row());
    for id in &at_kill {
        assert_eq!(rows[id]["error"], "lost", "{}", rows[id]);
    }
    drop(agent);
    forget_agent_queue(&env, "a1").await;
}

/// The harness removes the queues of the agents it started; these ran as processes.
async fn forget_agent_queue(env: &TestEnv, id: &str) {
    elves_shared::bus::testing::delete_namespace(
        &crate::harness::amqp_url(),
        &env.namespace,
        &[id.to_string()],
    )
    .await;
}

/// Issue 16, item 2: an agent stopped (SIGSTOP) for longer than the offline threshold and the
/// tasks' timeout, while its workers finish. Once continued it reports what they printed and
/// their own short run, not timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_stopped_past_the_timeout_reports_finished_work() {
    let env = TestEnv::start(BusKind::Rabbit).await;
    let config = process_agent_config(&env, "a1", 2);
    let agent = AgentProcess::start(env.dir.path(), &config);
    env.wait_online("a1").await;
    let file = env.dir.path().join("executions.log");
    let (queue, submitted) = count_tasks(&env, "ip-a1", &file, &["0.2"; 6], 2).await;
    commit(&env, &queue).await;
    wait_lines(&file, 1, "a task running").await;

    agent.signal(libc::SIGSTOP);
    // Longer than the tasks' 2 s timeout and than the offline threshold (a few 200 ms beats).
    tokio::time::sleep(Duration::from_secs(4)).await;
    agent.signal(libc::SIGCONT);

    let rows = settled_results(&env, &queue, Duration::from_secs(60)).await;
    let tally = checker::classify(
        "agent SIGSTOP 4 s (past timeout and offline threshold)",
        &submitted,
        &rows,
        &read_lines(&file),
    );
    tally.report();
    assert!(
        tally
            .ended_failed
            .keys()
            .all(|message| !message.contains("timeout")),
        "{}",
        tally.row()
    );
    for id in read_lines(&file) {
        let costtime = rows[&id]["worker_costtime"].as_u64().unwrap();
        assert!(costtime < 2_000, "task {id} ran 0.2 s: {}", rows[&id]);
    }
    assert_eq!(tally.ended_ok, 6, "{}", tally.row());
    drop(agent);
    forget_agent_queue(&env, "a1").await;
}

/// A signed `rt/exec` of the test app's `count` func: appends the task id to `file`, sleeps.
async fn rt_count(
    http: &reqwest::Client,
    base_url: &str,
    ip: &str,
    file: &Path,
    seconds: &str,
) -> Value {
    use crate::harness::{unix_now_s, AUTH_ID, AUTH_KEY};
    use elves_shared::sign::{self, SignType};
    let path = "/api/v2/rt/exec";
    let param = json!({ "file": file, "seconds": seconds }).to_string();
    let pairs = vec![
        ("ip".to_string(), ip.to_string()),
        ("app".to_string(), "elvestest".to_string()),
        ("func".to_string(), "count".to_string()),
        ("param".to_string(), param),
        ("timeout".to_string(), "30".to_string()),
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

/// Issue 16, item 4: RT calls in flight when the broker restarts, one running on the agent, one
/// waiting for its only worker slot. Their callers get a clear answer once the broker
/// connection is lost, long before the deadline (30 s timeout + kill grace + allowance), and
/// nothing runs twice. The broker is a node of this test's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rt_calls_in_flight_when_the_broker_restarts_end_at_once() {
    use crate::harness::rabbit_node::{free_port, RabbitNode};
    use crate::harness::{center_config, install_test_apps, start_center, wait_until};
    use elves_shared::bus;
    use elves_shared::wire::AgentId;

    let node = RabbitNode::start_on(free_port()).await;
    let namespace = format!("elves-test-{:016x}", rand::random::<u64>());
    let dir = tempfile::tempdir().unwrap();
    let database = elves_center::store::testing::TestDatabase::sqlite().unwrap();
    let mut config = center_config(dir.path(), &BusKind::InProc, &namespace, &database.url);
    config.bus.url = node.url();
    let center = start_center(config, bus::open(&node.url(), &namespace).unwrap()).await;
    let base_url = format!("http://{}", center.http_addr);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();

    let mut agent_config = AgentConfig::new(AgentId::parse("a1").unwrap());
    agent_config.ip = "ip-a1".to_string();
    agent_config.apps_dir = dir.path().join("apps-a1");
    install_test_apps(&agent_config.apps_dir);
    agent_config.spool_dir = dir.path().join("spool-a1");
    agent_config.heartbeat_interval_ms = 200;
    agent_config.max_concurrent = 1;
    agent_config.exec.kill_grace_ms = 500;
    agent_config.center.key_id = center.key_id.clone();
    agent_config.center.public_key = center.public_key_hex.clone();
    let agent_bus = bus::open(
        &bus::with_frame_max(&node.url(), elves_agent::config::DEFAULT_FRAME_MAX),
        &namespace,
    )
    .unwrap();
    let agent = crate::harness::TestAgent::spawn(agent_config, agent_bus.clone());
    wait_until("agent a1 online", Duration::from_secs(20), || async {
        let health: Value = http
            .get(format!("{base_url}/healthz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        health["heartbeat"]["online"].get("a1").is_some()
    })
    .await;

    let file = dir.path().join("executions.log");
    let calls: Vec<_> = (0..2)
        .map(|_| {
            let (http, base_url, file) = (http.clone(), base_url.clone(), file.clone());
            tokio::spawn(async move { rt_count(&http, &base_url, "ip-a1", &file, "8").await })
        })
        .collect();
    wait_lines(&file, 1, "one rt call running").await;

    let stopped_at = Instant::now();
    // Off the runtime's threads: the in-process agent's workers die with the thread that
    // started them, and `block_in_place` can retire a runtime thread.
    let mut node = tokio::task::spawn_blocking(move || {
        let mut node = node;
        node.stop();
        node
    })
    .await
    .unwrap();
    node.start().await;
    let mut tally = checker::Tally {
        scenario: "broker restart with RT calls in flight".to_string(),
        tasks: calls.len(),
        ..checker::Tally::default()
    };
    for (n, call) in calls.into_iter().enumerate() {
        match tokio::time::timeout(Duration::from_secs(20), call).await {
            Ok(answer) => {
                let answer = answer.unwrap();
                if answer["flag"] == "true" {
                    tally.ended_ok += 1;
                } else {
                    let error = answer["error"].as_str().unwrap_or("").to_string();
                    assert!(!error.is_empty(), "{answer}");
                    let kind = error.split(" while task ").next().unwrap_or("").to_string();
                    *tally.ended_failed.entry(kind).or_default() += 1;
                }
            }
            Err(_) => tally.never_ended.push(format!("call {n}")),
        }
    }
    let waited = stopped_at.elapsed();
    let mut executions = read_lines(&file);
    executions.sort();
    let n_runs = executions.len();
    executions.dedup();
    if executions.len() != n_runs {
        tally.ran_twice = executions.clone();
    }
    tally.report();
    assert_eq!(tally.ended_ok, 0, "{}", tally.row());
    assert!(
        tally
            .ended_failed
            .keys()
            .all(|error| error.contains("the broker connection was lost")),
        "{}",
        tally.row()
    );
    // Well before the calls' deadline (over 40 s): the wait ended with the connection.
    assert!(
        waited < Duration::from_secs(30),
        "callers waited {waited:?}"
    );

    agent.stop(Duration::from_secs(40)).await;
    agent_bus.close().await;
    tokio::task::spawn_blocking(move || center.stop())
        .await
        .unwrap();
}

/// Issue 16, item 7: a body over the limit gets the HTTP-200 envelope with a code (not a bare
/// 413), and a param too large to hand to a worker is refused up front with 403.2 and the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_params_get_the_envelope_with_their_limit() {
    let env = TestEnv::start(BusKind::InProc).await;
    let http = reqwest::Client::new();
    let body = format!("param={}", "x".repeat(300 * 1024));
    let response = http
        .post(format!("{}/api/v2/rt/exec", env.base_url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(crate::harness::error_code(&answer), "403.2", "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("request body over the limit of 262144 bytes"),
        "{answer}"
    );

    let param = json!({ "data": "x".repeat(100_000) }).to_string();
    let answer = env
        .call(
            "rt/exec",
            &[
                ("ip", "ip-a1"),
                ("app", "elvestest"),
                ("func", "ok"),
                ("param", &param),
            ],
        )
        .await;
    assert_eq!(crate::harness::error_code(&answer), "403.2", "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("over the limit of 96000 bytes"),
        "{answer}"
    );
}

/// Issue 16, item 7: a query or a head too large for the HTTP parser gets the envelope too (a
/// v2 path) or a status with a reason (others), after the answers to the requests before it
/// on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_queries_and_heads_get_the_envelope_after_earlier_answers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = TestEnv::start(BusKind::InProc).await;
    let address = env.base_url.trim_start_matches("http://").to_string();
    let exchange = |requests: Vec<u8>| {
        let address = address.clone();
        async move {
            let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
            socket.write_all(&requests).await.unwrap();
            let mut answer = Vec::new();
            tokio::time::timeout(Duration::from_secs(30), socket.read_to_end(&mut answer))
                .await
                .expect("the center closes the connection after the refusal")
                .unwrap();
            String::from_utf8_lossy(&answer).into_owned()
        }
    };

    let mut requests = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n".to_vec();
    requests.extend_from_slice(b"GET /api/v2/rt/exec?ip=ip-a1&param=");
    requests.extend(std::iter::repeat_n(b'x', 70_000));
    requests.extend_from_slice(b" HTTP/1.1\r\nhost: x\r\n\r\n");
    let answer = exchange(requests).await;
    let answers: Vec<&str> = answer.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 2, "{answer}");
    assert!(answers[0].contains("\"status\""), "healthz first: {answer}");
    assert!(answers[1].starts_with("200 OK"), "{answer}");
    let body = answers[1].split("\r\n\r\n").nth(1).unwrap();
    let envelope: Value = serde_json::from_str(body).unwrap();
    assert_eq!(crate::harness::error_code(&envelope), "403.2", "{envelope}");
    assert!(
        envelope["error"].as_str().unwrap().contains("65534 bytes"),
        "{envelope}"
    );

    let mut fields = String::new();
    for n in 0..80 {
        fields.push_str(&format!("x-field-{n}: {}\r\n", "v".repeat(2_000)));
    }
    let answer = exchange(
        format!("GET /api/v2/info/agents HTTP/1.1\r\nhost: x\r\n{fields}\r\n").into_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(
        answer.contains("403.2") && answer.contains("request head over the limit"),
        "{answer}"
    );
    // Not the API: a status and the reason, no envelope.
    let answer =
        exchange(format!("GET /ui/tasks?q={} HTTP/1.1\r\n\r\n", "y".repeat(70_000)).into_bytes())
            .await;
    assert!(answer.starts_with("HTTP/1.1 414 URI Too Long"), "{answer}");
    // The center still serves.
    let health = reqwest::get(format!("{}/healthz", env.base_url))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

/// Issue 16, item 6: an RT call to an agent whose only queue slot is busy, with queued work
/// waiting behind it, runs at once in the RT share instead of waiting for the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rt_call_does_not_wait_behind_queued_work() {
    let mut env = TestEnv::start(BusKind::Rabbit).await;
    let mut config = env.agent_config("a1");
    config.max_concurrent = 1;
    env.start_agent_with(config).await;
    let file = env.dir.path().join("executions.log");
    let (queue, submitted) = count_tasks(&env, "ip-a1", &file, &["1"; 8], 30).await;
    commit(&env, &queue).await;
    wait_lines(&file, 1, "the queue running").await;

    let answer = env
        .call(
            "rt/exec",
            &[("ip", "ip-a1"), ("app", "elvestest"), ("func", "ok")],
        )
        .await;
    assert_eq!(ok_result(&answer)["worker_message"], "ok", "{answer}");
    let finished_by_then = read_lines(&file).len();
    assert!(
        finished_by_then < submitted.len(),
        "the RT call waited behind the queue: {finished_by_then} of its {} tasks had started",
        submitted.len()
    );
    let rows = settled_results(&env, &queue, Duration::from_secs(60)).await;
    let tally = checker::classify(
        "RT call with 8 queued tasks on a 1-slot agent",
        &submitted,
        &rows,
        &read_lines(&file),
    );
    tally.report();
    assert_eq!(tally.ended_ok, submitted.len(), "{}", tally.row());
}

/// A PostgreSQL cluster of this test's own (`initdb` + `pg_ctl` on a free port), so that an
/// outage never touches the shared server. As root, the server runs as the `postgres` user.
struct PgCluster {
    dir: tempfile::TempDir,
    port: u16,
}

impl PgCluster {
    fn start() -> PgCluster {
        let dir = tempfile::tempdir().unwrap();
        if Self::as_root() {
            let uid = Self::postgres_id("-u");
            let gid = Self::postgres_id("-g");
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let cluster = PgCluster {
            dir,
            port: crate::harness::rabbit_node::free_port(),
        };
        let data = cluster.data();
        cluster.run(
            "initdb",
            &["-D", &data, "-U", "postgres", "--auth=trust", "-N"],
        );
        cluster.up();
        cluster
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn up(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        );
    }

    fn down(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn as_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    fn postgres_id(flag: &str) -> u32 {
        let output = std::process::Command::new("id")
            .args([flag, "postgres"])
            .output()
            .unwrap();
        String::from_utf8(output.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn run(&self, program: &str, args: &[&str]) {
        let mut command = if Self::as_root() {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--", program]);
            command
        } else {
            std::process::Command::new(program)
        };
        let output = command
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|err| panic!("{program}: {err}"));
        assert!(
            output.status.success(),
            "{program} {args:?}: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data();
        let mut command = if Self::as_root() {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--", "pg_ctl"]);
            command
        } else {
            std::process::Command::new("pg_ctl")
        };
        let _ = command
            .args(["-D", &data, "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Issue 16, item 3 (the results and API side): the database stops for a while mid-queue.
/// Calls that need it answer within seconds with a clear `[500] … database unavailable`; the
/// results that come back meanwhile wait on the broker and are stored once it returns; every
/// task ends once. The database is a cluster of this test's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_mid_queue_loses_nothing_and_fails_calls_fast() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    let database_url = cluster.url();
    let setup = crate::harness::Setup {
        bus: BusKind::Rabbit,
        db: crate::harness::DbKind::Sqlite,
    };
    let mut env = TestEnv::start_configured(setup, |config| {
        config.database.url = database_url;
    })
    .await;
    env.start_agent("a1").await;
    let file = env.dir.path().join("executions.log");
    let (queue, submitted) = count_tasks(&env, "ip-a1", &file, &["2"; 6], 30).await;
    commit(&env, &queue).await;
    wait_lines(&file, 1, "the queue running").await;

    let cluster = tokio::task::spawn_blocking(move || {
        cluster.down();
        cluster
    })
    .await
    .unwrap();
    let asked = Instant::now();
    let answer = env.call("queue/result", &[("queue_id", &queue)]).await;
    let waited = asked.elapsed();
    assert_eq!(crate::harness::error_code(&answer), "500", "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("database unavailable"),
        "{answer}"
    );
    assert!(
        waited < Duration::from_secs(10),
        "answered after {waited:?}"
    );
    // Results of the tasks that finish now have nowhere to go but the broker.
    let agent_stats = env.agents["a1"].stats.clone();
    crate::harness::wait_until(
        "a result sent during the outage",
        Duration::from_secs(30),
        || async { agent_stats.snapshot().results_published >= 2 },
    )
    .await;
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.up();
        cluster
    })
    .await
    .unwrap();

    let rows = settled_results(&env, &queue, Duration::from_secs(90)).await;
    let tally = checker::classify(
        "database stopped mid-queue, then started",
        &submitted,
        &rows,
        &read_lines(&file),
    );
    tally.report();
    assert_eq!(tally.ended_ok, submitted.len(), "{}", tally.row());
    drop(env);
    drop(cluster);
}

/// `rabbitmqctl -n <node> …` for this test's own node.
fn rabbitmqctl(node: &crate::harness::rabbit_node::RabbitNode, args: &[&str]) {
    let direct = Path::new("/usr/lib/rabbitmq/bin/rabbitmqctl");
    let program = if direct.exists() {
        direct
    } else {
        Path::new("rabbitmqctl")
    };
    let output = std::process::Command::new(program)
        // The node's home holds its Erlang cookie.
        .env("HOME", node.dir())
        .arg("-n")
        .arg(&node.node_name)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Issue 16, item 5: with one broker user per agent (`bus.agent_accounts`), a result is taken
/// only from the agent the task was sent to. Another broker user forges a result naming the
/// real agent (refused: its validated user-id is not that agent's) and one naming itself
/// (refused: the task was not sent to it); the real result, arriving after both, is the one
/// stored. The broker is a node of this test's own, with users of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_results_from_another_broker_user_are_refused() {
    use crate::harness::rabbit_node::{free_port, RabbitNode};
    use crate::harness::{center_config, install_test_apps, start_center, wait_until};
    use elves_shared::bus::{self, Destination};
    use elves_shared::wire::{self, routing, AgentId, JobResult, Mode, TaskId, TaskType};

    let node = RabbitNode::start_on(free_port()).await;
    let port = node.port;
    let node = tokio::task::spawn_blocking(move || {
        for user in ["a1", "a3", "mallory"] {
            rabbitmqctl(&node, &["add_user", user, "pw"]);
            rabbitmqctl(
                &node,
                &["set_permissions", "-p", "/", user, ".*", ".*", ".*"],
            );
        }
        node
    })
    .await
    .unwrap();
    let url_of = |user: &str| format!("amqp://{user}:pw@127.0.0.1:{port}/%2f");
    let namespace = format!("elves-test-{:016x}", rand::random::<u64>());
    let dir = tempfile::tempdir().unwrap();
    let database = elves_center::store::testing::TestDatabase::sqlite().unwrap();
    let mut config = center_config(dir.path(), &BusKind::InProc, &namespace, &database.url);
    config.bus.url = node.url();
    config.bus.agent_accounts = true;
    let center = start_center(config, bus::open(&node.url(), &namespace).unwrap()).await;
    let base_url = format!("http://{}", center.http_addr);

    let mut agent_config = AgentConfig::new(AgentId::parse("a1").unwrap());
    agent_config.ip = "ip-a1".to_string();
    agent_config.apps_dir = dir.path().join("apps-a1");
    install_test_apps(&agent_config.apps_dir);
    agent_config.spool_dir = dir.path().join("spool-a1");
    agent_config.heartbeat_interval_ms = 200;
    agent_config.center.key_id = center.key_id.clone();
    agent_config.center.public_key = center.public_key_hex.clone();
    let agent_bus = bus::open(&url_of("a1"), &namespace).unwrap();
    let agent = crate::harness::TestAgent::spawn(agent_config, agent_bus.clone());
    let http = reqwest::Client::new();
    wait_until("agent a1 online", Duration::from_secs(20), || async {
        let health: Value = http
            .get(format!("{base_url}/healthz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        health["heartbeat"]["online"].get("a1").is_some()
    })
    .await;

    let signed = |endpoint: &str, params: &[(&str, &str)]| {
        use crate::harness::{unix_now_s, AUTH_ID, AUTH_KEY};
        use elves_shared::sign::{self, SignType};
        let path = format!("/api/v2/{endpoint}");
        let mut pairs: Vec<(String, String)> = params
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        pairs.push(("auth_id".into(), AUTH_ID.into()));
        pairs.push(("timestamp".into(), unix_now_s().to_string()));
        (
            path.clone(),
            sign::sign_params(&path, pairs, SignType::Md5, AUTH_KEY),
        )
    };
    let call = |endpoint: &str, params: &[(&str, &str)]| {
        let (path, form) = signed(endpoint, params);
        let (http, base_url) = (http.clone(), base_url.clone());
        async move {
            let answer: Value = http
                .post(format!("{base_url}{path}"))
                .form(&form)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            answer
        }
    };
    let queue = ok_result(&call("queue/create", &[("app", "elvestest")]).await)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let gate = dir.path().join("gate");
    let param = json!({ "file": gate }).to_string();
    let task = ok_result(
        &call(
            "queue/addtask",
            &[
                ("queue_id", &queue),
                ("ip", "ip-a1"),
                ("func", "gate"),
                ("param", &param),
            ],
        )
        .await,
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    ok_result(&call("queue/commit", &[("queue_id", &queue)]).await);
    let started = gate.with_extension("started");
    wait_until("the task running", Duration::from_secs(20), || async {
        started.exists()
    })
    .await;

    let forger = bus::open(&url_of("mallory"), &namespace).unwrap();
    let forged = |agent: &str, message: &str| JobResult {
        id: TaskId::parse(&task).unwrap(),
        agent: AgentId::parse(agent).unwrap(),
        task_type: TaskType::Queue,
        mode: Mode::NP,
        app: "elvestest".into(),
        func: "gate".into(),
        worker_flag: 1,
        worker_message: message.into(),
        worker_costtime: 1,
        started_at: 1,
        finished_at: 2,
        error: String::new(),
    };
    let to_center = Destination::Topic(routing::CENTER_RESULT.to_string());
    for (agent, message) in [("a1", "forged as a1"), ("mallory", "forged as mallory")] {
        let body = wire::encode(&forged(agent, message));
        forger
            .publish(
                &to_center,
                elves_shared::bus::BusMessage::msgpack(wire::kind::RESULT, body),
            )
            .await
            .unwrap();
    }
    std::fs::write(&gate, b"").unwrap();

    let asked = Instant::now();
    let rows = loop {
        let answer = call("queue/result", &[("queue_id", &queue)]).await;
        let rows = ok_result(&answer).as_object().unwrap().clone();
        if rows[&task]["status"] == "finish" || asked.elapsed() > Duration::from_secs(30) {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let submitted = [(task.clone(), "opened".to_string())].into_iter().collect();
    let mut tally = checker::classify(
        "forged results from another broker user",
        &submitted,
        &rows,
        std::slice::from_ref(&task),
    );
    // The app counts nothing here (gate); its one run is the one the center dispatched.
    tally.scenario.push_str(" (2 forgeries)");
    tally.report();
    assert_eq!(rows[&task]["worker_message"], "opened", "{}", rows[&task]);

    // Heartbeats: one naming a1 from mallory's account (it would take a1's presence and move
    // its ip), then mallory's own; from a3's account one with an oversized asset, then a3's
    // own. Each account's own beat follows on the same channel: once both are seen, the ones
    // before them have been judged.
    let to_heartbeats = Destination::Topic(routing::CENTER_HEARTBEAT.to_string());
    let beat = |agent: &str, ip: &str, asset: String| wire::Heartbeat {
        agent: AgentId::parse(agent).unwrap(),
        ip: ip.to_string(),
        asset,
        version: "forged".into(),
        apps: [("elvestest".to_string(), "1".to_string())].into(),
        sent_at: elves_shared::time::now_unix_ms(),
        interval_ms: 60_000,
        packages: Default::default(),
        labels: Default::default(),
    };
    let a3 = bus::open(&url_of("a3"), &namespace).unwrap();
    for (sender, heartbeat) in [
        (&forger, beat("a1", "ip-stolen", String::new())),
        (&forger, beat("mallory", "ip-mallory", String::new())),
        (&a3, beat("a3", "ip-huge", "x".repeat(300))),
        (&a3, beat("a3", "ip-a3", String::new())),
    ] {
        sender
            .publish(
                &to_heartbeats,
                elves_shared::bus::BusMessage::msgpack(
                    wire::kind::HEARTBEAT,
                    wire::encode(&heartbeat),
                ),
            )
            .await
            .unwrap();
    }
    wait_until(
        "mallory's and a3's own heartbeats taken",
        Duration::from_secs(20),
        || async {
            let health: Value = http
                .get(format!("{base_url}/healthz"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let online = &health["heartbeat"]["online"];
            online.get("mallory").is_some() && online.get("a3").is_some()
        },
    )
    .await;
    for ip in ["ip-stolen", "ip-huge"] {
        let answer = call(
            "rt/exec",
            &[("ip", ip), ("app", "elvestest"), ("func", "env")],
        )
        .await;
        assert!(
            answer["error"]
                .as_str()
                .is_some_and(|error| error.starts_with("[414.1]")),
            "a refused heartbeat registered {ip}: {answer}"
        );
    }
    let real = call(
        "rt/exec",
        &[("ip", "ip-a1"), ("app", "elvestest"), ("func", "env")],
    )
    .await;
    assert_eq!(
        real["flag"], "true",
        "a1 is still reached at its own ip: {real}"
    );
    a3.close().await;

    agent.stop(Duration::from_secs(20)).await;
    agent_bus.close().await;
    forger.close().await;
    tokio::task::spawn_blocking(move || center.stop())
        .await
        .unwrap();
    drop(node);
}

/// The center killed with SIGKILL mid-queue and restarted: claimed tasks are re-sent, agents
/// drop the ids they already ran, results wait on the broker. Every task ends once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn center_killed_mid_queue_runs_everything_once() {
    let setup = crate::harness::Setup {
        bus: BusKind::Rabbit,
        db: crate::harness::DbKind::Sqlite,
    };
    let mut env = TestEnv::start_with_child_center(setup).await;
    let mut config = env.agent_config("a1");
    config.max_concurrent = 4;
    env.start_agent_with(config).await;
    let file = env.dir.path().join("executions.log");
    let (queue, submitted) = count_tasks(&env, "ip-a1", &file, &["0.5"; 24], 30).await;
    commit(&env, &queue).await;
    wait_lines(&file, 6, "part of the queue ran").await;
    env.kill_child_center();
    env.start_child_center().await;

    let rows = settled_results(&env, &queue, Duration::from_secs(90)).await;
    let tally = checker::classify(
        "center SIGKILL mid-queue, restarted",
        &submitted,
        &rows,
        &read_lines(&file),
    );
    tally.report();
    assert_eq!(tally.ended_ok, submitted.len(), "{}", tally.row());
}

/// An agent killed mid-task and restarted a minute later: the tasks that were running are
/// still reported lost (their deadline is later), the others run once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_and_restarted_a_minute_later_runs_nothing_twice() {
    let env = TestEnv::start(BusKind::Rabbit).await;
    let config = process_agent_config(&env, "a1", 2);
    let mut agent = AgentProcess::start(env.dir.path(), &config);
    env.wait_online("a1").await;
    let file = env.dir.path().join("executions.log");
    let (queue, submitted) = count_tasks(&env, "ip-a1", &file, &["3"; 4], 120).await;
    commit(&env, &queue).await;
    wait_lines(&file, 2, "two tasks running").await;
    agent.kill();
    tokio::time::sleep(Duration::from_secs(60)).await;
    agent.restart();

    let rows = settled_results(&env, &queue, Duration::from_secs(60)).await;
    let tally = checker::classify(
        "agent SIGKILL mid-task, restart after 60 s",
        &submitted,
        &rows,
        &read_lines(&file),
    );
    tally.report();
    assert_eq!(tally.ended_ok, 2, "{}", tally.row());
    drop(agent);
    forget_agent_queue(&env, "a1").await;
}

/// 1,000 RT calls at once to one agent: every one ends once, through the RT share and the
/// agent's queue. Prints the latency percentiles (a figure, not a pass mark).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_rt_calls_each_end_once() {
    const N_CALLS: usize = 1_000;
    let mut env = TestEnv::start(BusKind::Rabbit).await;
    let mut config = env.agent_config("a1");
    // Presence is not under test here: beats that a loaded machine delays by a second must not
    // make the agent look offline.
    config.heartbeat_interval_ms = 2_000;
    env.start_agent_with(config).await;
    let file = env.dir.path().join("executions.log");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let started = Instant::now();
    let calls: Vec<_> = (0..N_CALLS)
        .map(|_| {
            let (http, base_url, file) = (http.clone(), env.base_url.clone(), file.clone());
            tokio::spawn(async move {
                let asked = Instant::now();
                let answer = rt_count(&http, &base_url, "ip-a1", &file, "0").await;
                (answer, asked.elapsed())
            })
        })
        .collect();
    let mut tally = checker::Tally {
        scenario: format!("{N_CALLS} concurrent RT calls"),
        tasks: N_CALLS,
        ..checker::Tally::default()
    };
    let mut latencies = Vec::with_capacity(N_CALLS);
    let mut answered_ids = Vec::new();
    for call in calls {
        let (answer, latency) = call.await.unwrap();
        latencies.push(latency);
        if answer["flag"] == "true" {
            let id = answer["result"]["id"].as_str().unwrap().to_string();
            assert_eq!(answer["result"]["worker_message"], format!("counted {id}"));
            answered_ids.push(id);
            tally.ended_ok += 1;
        } else {
            let error = answer["error"].as_str().unwrap_or("").to_string();
            assert!(!error.is_empty(), "{answer}");
            *tally.ended_failed.entry(error).or_default() += 1;
        }
    }
    let wall = started.elapsed();
    let mut executions = read_lines(&file);
    executions.sort();
    let mut counted = executions.clone();
    counted.dedup();
    if counted.len() != executions.len() {
        tally.ran_twice = executions;
    }
    latencies.sort();
    let percentile = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    println!(
        "{N_CALLS} concurrent RT calls: wall {wall:?}, p50 {:?}, p99 {:?}",
        percentile(50),
        percentile(99)
    );
    tally.report();
    // On a loaded machine some calls may pass their deadline in the agent's queue: those end
    // with a clear failure, and nothing else may.
    assert!(tally.ended_ok > 0, "{}", tally.row());
    for failure in tally.ended_failed.keys() {
        assert!(
            failure.contains("did not run the job: expired") || failure.contains("no result from"),
            "{}",
            tally.row()
        );
    }
}

/// A queue of `tasks` tasks of `seconds` each on one agent, a center and a RabbitMQ `node` of
/// the test's own; `disturb` acts on the node once two tasks run. Every task must end once
/// with its own result; the node is handed back for what the test still reads from it.
async fn queue_on_a_private_node(
    node: crate::harness::rabbit_node::RabbitNode,
    tasks: usize,
    seconds: &str,
    scenario: &str,
    disturb: impl AsyncFnOnce(
        crate::harness::rabbit_node::RabbitNode,
    ) -> crate::harness::rabbit_node::RabbitNode,
) -> crate::harness::rabbit_node::RabbitNode {
    use crate::harness::{center_config, install_test_apps, start_center, wait_until};
    use elves_shared::bus;
    use elves_shared::wire::AgentId;

    let namespace = format!("elves-test-{:016x}", rand::random::<u64>());
    let dir = tempfile::tempdir().unwrap();
    let database = elves_center::store::testing::TestDatabase::sqlite().unwrap();
    let mut config = center_config(dir.path(), &BusKind::InProc, &namespace, &database.url);
    config.bus.url = node.url();
    let center = start_center(config, bus::open(&node.url(), &namespace).unwrap()).await;
    let base_url = format!("http://{}", center.http_addr);
    let http = reqwest::Client::new();

    let mut agent_config = AgentConfig::new(AgentId::parse("a1").unwrap());
    agent_config.ip = "ip-a1".to_string();
    agent_config.apps_dir = dir.path().join("apps-a1");
    install_test_apps(&agent_config.apps_dir);
    agent_config.spool_dir = dir.path().join("spool-a1");
    agent_config.heartbeat_interval_ms = 200;
    agent_config.max_concurrent = 2;
    agent_config.center.key_id = center.key_id.clone();
    agent_config.center.public_key = center.public_key_hex.clone();
    let agent_bus = bus::open(
        &bus::with_frame_max(&node.url(), elves_agent::config::DEFAULT_FRAME_MAX),
        &namespace,
    )
    .unwrap();
    let agent = crate::harness::TestAgent::spawn(agent_config, agent_bus.clone());
    let call = |endpoint: &str, params: Vec<(String, String)>| {
        use crate::harness::{unix_now_s, AUTH_ID, AUTH_KEY};
        use elves_shared::sign::{self, SignType};
        let path = format!("/api/v2/{endpoint}");
        let mut pairs = params;
        pairs.push(("auth_id".into(), AUTH_ID.into()));
        pairs.push(("timestamp".into(), unix_now_s().to_string()));
        let form = sign::sign_params(&path, pairs, SignType::Md5, AUTH_KEY);
        let (http, url) = (http.clone(), format!("{base_url}{path}"));
        async move {
            let answer: Value = http
                .post(url)
                .form(&form)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            answer
        }
    };
    wait_until("agent a1 online", Duration::from_secs(20), || async {
        let health: Value = http
            .get(format!("{base_url}/healthz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        health["heartbeat"]["online"].get("a1").is_some()
    })
    .await;
    let pair = |key: &str, value: &str| (key.to_string(), value.to_string());
    let queue = ok_result(&call("queue/create", vec![pair("app", "elvestest")]).await)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let file = dir.path().join("executions.log");
    let mut submitted = std::collections::BTreeMap::new();
    for _ in 0..tasks {
        let param = json!({ "file": file, "seconds": seconds }).to_string();
        let answer = call(
            "queue/addtask",
            vec![
                pair("queue_id", &queue),
                pair("ip", "ip-a1"),
                pair("func", "count"),
                pair("param", &param),
                pair("timeout", "60"),
            ],
        )
        .await;
        let id = ok_result(&answer)["id"].as_str().unwrap().to_string();
        submitted.insert(id.clone(), format!("counted {id}"));
    }
    ok_result(&call("queue/commit", vec![pair("queue_id", &queue)]).await);
    wait_lines(&file, 2, "the queue running").await;

    let node = disturb(node).await;

    let asked = Instant::now();
    let rows = loop {
        let answer = call("queue/result", vec![pair("queue_id", &queue)]).await;
        let rows = ok_result(&answer).as_object().unwrap().clone();
        let all_terminal = rows.values().all(|row| {
            ["finish", "skipped", "stoped"].contains(&row["status"].as_str().unwrap_or(""))
        });
        if all_terminal || asked.elapsed() > Duration::from_secs(90) {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let tally = checker::classify(scenario, &submitted, &rows, &read_lines(&file));
    tally.report();
    assert_eq!(tally.ended_ok, submitted.len(), "{}", tally.row());

    agent.stop(Duration::from_secs(40)).await;
    agent_bus.close().await;
    tokio::task::spawn_blocking(move || center.stop())
        .await
        .unwrap();
    node
}

/// The broker stopped for a few seconds mid-queue and started again (a node of this test's
/// own): instructions and results are persistent or spooled, nothing is lost or run twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_queue_runs_everything_once() {
    use crate::harness::rabbit_node::{free_port, RabbitNode};
    let node = RabbitNode::start_on(free_port()).await;
    let node = queue_on_a_private_node(
        node,
        8,
        "1",
        "broker stop 3 s mid-queue, then start",
        async |node: RabbitNode| {
            let mut node = tokio::task::spawn_blocking(move || {
                let mut node = node;
                node.stop();
                node
            })
            .await
            .unwrap();
            // Long enough for the running tasks to finish while the broker is away.
            tokio::time::sleep(Duration::from_secs(3)).await;
            node.start().await;
            node
        },
    )
    .await;
    drop(node);
}

/// Two tasks of 6 s on a broker whose consumer timeout is 2 s: the broker takes the
/// deliveries back from the agent while the workers run and delivers them again; the agent
/// must not start them a second time, and each task ends once with its own result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_longer_than_the_consumer_timeout_runs_once() {
    use crate::harness::rabbit_node::{free_port, RabbitNode};
    // The broker gives up on an unacked delivery after 2 s (checked every second), closes the
    // agent's channel and requeues what it held, while the workers still run.
    let node = RabbitNode::start_with_advanced(
        free_port(),
        "",
        "[{rabbit, [{consumer_timeout, 2000}, {channel_tick_interval, 1000}]}].\n",
    )
    .await;
    let node = queue_on_a_private_node(
        node,
        2,
        "6",
        "tasks of 6 s past a consumer timeout of 2 s",
        async |node: RabbitNode| node,
    )
    .await;
    // The scenario happened: the broker did take the deliveries back.
    let log_dir = node.dir().join("log");
    let broker_log: String = std::fs::read_dir(&log_dir)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok())
                .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        broker_log.contains("acknowledgement") && broker_log.contains("timed out"),
        "the broker never timed a delivery out; its log: {}",
        broker_log
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );

    drop(node);
}
