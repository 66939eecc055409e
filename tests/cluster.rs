//! No single broker to lose (issue 20, point 8): a center whose shared queues are quorum
//! queues and an agent, both given every node of a three-node RabbitMQ cluster of the test's
//! own, lose the node the center is connected to in the middle of a queue; every task still
//! ends once. And a center that meets its queue declared in the other type refuses to start,
//! saying which queue and what to do.

use crate::faults::checker;
use crate::harness::rabbit_node::RabbitNode;
use crate::harness::{
    amqp_url, center_config, install_test_apps, start_center, unix_now_s, wait_until, BusKind,
    AUTH_ID, AUTH_KEY,
};
use crate::queue::{ok_result, read_lines};
use elves_agent::AgentConfig;
use elves_shared::bus::{self, QueueSpec, QueueType};
use elves_shared::sign::{self, SignType};
use elves_shared::wire::{routing, AgentId};
use serde_json::{json, Map, Value};
use std::time::{Duration, Instant};

/// Tasks in the chain: each depends on the one before, so that every task after the node
/// stop needs the center to take a result and publish an instruction through another node.
const CHAINED_TASKS: usize = 12;
/// Started tasks before the node the center is connected to stops.
const STARTED_BEFORE_STOP: usize = 4;

/// The v2 API of one center, signed with the test credentials.
struct Api {
    http: reqwest::Client,
    base_url: String,
}

impl Api {
    async fn call(&self, endpoint: &str, params: &[(&str, &str)]) -> Value {
        let path = format!("/api/v2/{endpoint}");
        let mut pairs: Vec<(String, String)> = params
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        pairs.push(("auth_id".into(), AUTH_ID.into()));
        pairs.push(("timestamp".into(), unix_now_s().to_string()));
        let form = sign::sign_params(&path, pairs, SignType::Md5, AUTH_KEY);
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

    async fn healthz(&self) -> Value {
        self.http
            .get(format!("{}/healthz", self.base_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// The queues `node` lists whose name starts with `prefix`: name → (type, leader, members).
async fn queues_on(node: &RabbitNode, prefix: &str) -> Map<String, Value> {
    let listed = node
        .ctl(vec![
            "list_queues",
            "name",
            "type",
            "leader",
            "members",
            "--formatter",
            "json",
            "--quiet",
        ])
        .await;
    let rows: Vec<Value> = serde_json::from_str(listed.trim())
        .unwrap_or_else(|err| panic!("list_queues output is not JSON ({err}): {listed}"));
    rows.into_iter()
        .filter(|row| row["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
        .map(|row| (row["name"].as_str().unwrap().to_string(), row))
        .collect()
}

/// When each line of the app's executions file appeared (polled every 10 ms).
struct StartWatch {
    done: tokio::sync::oneshot::Sender<()>,
    watcher: tokio::task::JoinHandle<Vec<Instant>>,
}

fn watch_starts(file: std::path::PathBuf) -> StartWatch {
    let (done, mut finished) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn(async move {
        let mut starts = Vec::new();
        while finished.try_recv().is_err() {
            let n_lines = read_lines(&file).len();
            starts.resize(n_lines.max(starts.len()), Instant::now());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        starts
    });
    StartWatch { done, watcher }
}

impl StartWatch {
    async fn finish(self) -> Vec<Instant> {
        let _ = self.done.send(());
        self.watcher.await.unwrap()
    }
}

/// How the node the center is connected to goes away.
#[derive(Debug, Clone, Copy)]
enum Loss {
    /// SIGTERM: RabbitMQ closes its connections and hands its quorum leaderships over.
    Stop,
    /// SIGKILL of the node's processes: connections reset, the survivors must elect leaders.
    Kill,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_center_s_broker_node_mid_queue_runs_every_task_once() {
    lose_the_center_s_node(Loss::Stop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_center_s_broker_node_mid_queue_runs_every_task_once() {
    lose_the_center_s_node(Loss::Kill).await;
}

/// A chain of dependent tasks on an agent, a center with quorum queues, three nodes; the
/// center's node goes away (`loss`) in the middle of the chain. Every task must end once.
async fn lose_the_center_s_node(loss: Loss) {
    let test_started = Instant::now();
    let mut nodes = RabbitNode::start_cluster(3).await;
    let cluster_ready = test_started.elapsed();
    let urls: Vec<String> = nodes.iter().map(RabbitNode::url).collect();
    let namespace = format!("elves-test-{:016x}", rand::random::<u64>());
    let dir = tempfile::tempdir().unwrap();
    let database = elves_center::store::testing::TestDatabase::sqlite().unwrap();

    // The center prefers node 0, the agent node 1: node 0 is the center's to lose.
    let mut config = center_config(dir.path(), &BusKind::InProc, &namespace, &database.url);
    config.bus.url = urls.join(",");
    config.bus.queue_type = QueueType::Quorum;
    let center_bus = bus::open_with(&config.bus.url, &namespace, config.bus.queue_type).unwrap();
    let center = start_center(config, center_bus.clone()).await;
    let api = Api {
        http: reqwest::Client::new(),
        base_url: format!("http://{}", center.http_addr),
    };

    let mut agent_config = AgentConfig::new(AgentId::parse("a1").unwrap());
    agent_config.ip = "ip-a1".to_string();
    agent_config.apps_dir = dir.path().join("apps-a1");
    install_test_apps(&agent_config.apps_dir);
    agent_config.spool_dir = dir.path().join("spool-a1");
    agent_config.heartbeat_interval_ms = 200;
    agent_config.center.key_id = center.key_id.clone();
    agent_config.center.public_key = center.public_key_hex.clone();
    agent_config.bus.url = [&urls[1], &urls[2], &urls[0]].map(String::as_str).join(",");
    agent_config.bus.namespace = namespace.clone();
    let agent_bus = bus::open(
        &bus::with_frame_max(&agent_config.bus.url, agent_config.bus.frame_max),
        &namespace,
    )
    .unwrap();
    let agent = crate::harness::TestAgent::spawn(agent_config, agent_bus.clone());
    wait_until("agent a1 online", Duration::from_secs(30), || async {
        api.healthz().await["heartbeat"]["online"]
            .get("a1")
            .is_some()
    })
    .await;

    // The center declared its shared queues as quorum queues on every node, through node 0.
    let shared_prefix = format!("{namespace}.center.");
    let before = queues_on(&nodes[1], &shared_prefix).await;
    for suffix in ["result", "submit", "heartbeat", "output"] {
        let row = before
            .get(&format!("{shared_prefix}{suffix}"))
            .unwrap_or_else(|| panic!("no queue center.{suffix} in {before:?}"));
        assert_eq!(row["type"], "quorum", "{row}");
        assert_eq!(row["members"].as_array().map(Vec::len), Some(3), "{row}");
        assert_eq!(row["leader"], nodes[0].node_name.as_str(), "{row}");
    }

    let queue = ok_result(&api.call("queue/create", &[("app", "elvestest")]).await)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let file = dir.path().join("executions.log");
    let param = json!({ "file": file, "seconds": "0.2" }).to_string();
    let mut submitted = std::collections::BTreeMap::new();
    let mut previous = String::new();
    for _ in 0..CHAINED_TASKS {
        let mut params = vec![
            ("queue_id", queue.as_str()),
            ("ip", "ip-a1"),
            ("func", "count"),
            ("param", param.as_str()),
            ("timeout", "60"),
        ];
        if !previous.is_empty() {
            params.push(("depend_task_id", previous.as_str()));
        }
        let answer = api.call("queue/addtask", &params).await;
        let id = ok_result(&answer)["id"].as_str().unwrap().to_string();
        submitted.insert(id.clone(), format!("counted {id}"));
        previous = id;
    }
    ok_result(&api.call("queue/commit", &[("queue_id", &queue)]).await);
    let starts = watch_starts(file.clone());
    wait_until("the chain running", Duration::from_secs(30), || async {
        read_lines(&file).len() >= STARTED_BEFORE_STOP
    })
    .await;

    let stop_asked = Instant::now();
    let mut lost = nodes.remove(0);
    let lost = tokio::task::spawn_blocking(move || {
        if let (Loss::Kill, Some(pid)) = (loss, lost.server_pid()) {
            let group = -libc::pid_t::try_from(pid).unwrap();
            // SAFETY: signals the process group this test's node was started in.
            let killed = unsafe { libc::kill(group, libc::SIGKILL) };
            assert_eq!(killed, 0, "SIGKILL to the node's process group");
        }
        // Reaps what the kill left, or stops the node cleanly.
        lost.stop();
        lost
    })
    .await
    .unwrap();
    let node_stopped = stop_asked.elapsed();

    let settled = Instant::now();
    let rows = loop {
        let answer = api.call("queue/result", &[("queue_id", &queue)]).await;
        let rows = ok_result(&answer).as_object().unwrap().clone();
        let all_terminal = rows.values().all(|row| {
            ["finish", "skipped", "stoped"].contains(&row["status"].as_str().unwrap_or(""))
        });
        if all_terminal || settled.elapsed() > Duration::from_secs(60) {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let scenario = format!("quorum queues, the center's node of three lost mid-queue ({loss:?})");
    let tally = checker::classify(&scenario, &submitted, &rows, &read_lines(&file));
    tally.report();
    assert_eq!(tally.ended_ok, submitted.len(), "{}", tally.row());
    let starts = starts.finish().await;
    assert!(
        starts
            .last()
            .is_some_and(|last| *last > stop_asked + node_stopped),
        "tasks ran after the node was gone"
    );

    // The queues lived on: a new leader on a surviving node, the same three members.
    let after = queues_on(&nodes[0], &shared_prefix).await;
    let result_queue = &after[&format!("{shared_prefix}result")];
    assert_eq!(result_queue["type"], "quorum", "{result_queue}");
    assert_ne!(
        result_queue["leader"],
        lost.node_name.as_str(),
        "{result_queue}"
    );
    // Each start needs the result of the task before it taken and the next instruction
    // published: the longest pause in the chain across the stop is what losing the node cost.
    let gaps: Vec<(Instant, Duration)> = starts
        .windows(2)
        .map(|pair| (pair[1], pair[1] - pair[0]))
        .collect();
    let mut usual: Vec<Duration> = gaps
        .iter()
        .filter(|(at, _)| *at < stop_asked)
        .map(|(_, gap)| *gap)
        .collect();
    usual.sort();
    let stall = gaps
        .iter()
        .filter(|(at, _)| *at > stop_asked)
        .map(|(_, gap)| *gap)
        .max()
        .unwrap_or_default();
    println!(
        "{loss:?}: cluster of 3 ready in {:.1} s; the node took {:.1} s to go; task to task \
         {:.2} s before (median), longest pause after {:.2} s; whole test {:.1} s",
        cluster_ready.as_secs_f64(),
        node_stopped.as_secs_f64(),
        usual
            .get(usual.len() / 2)
            .copied()
            .unwrap_or_default()
            .as_secs_f64(),
        stall.as_secs_f64(),
        test_started.elapsed().as_secs_f64()
    );

    agent.stop(Duration::from_secs(40)).await;
    agent_bus.close().await;
    tokio::task::spawn_blocking(move || center.stop())
        .await
        .unwrap();
    center_bus.close().await;
    drop(lost);
    drop(nodes);
}

/// A center configured for quorum queues on a broker where its result queue is classic (one
/// declared before the setting, say) cannot redeclare it: it refuses to start, naming the
/// queue and the fix, instead of retrying for ever. The shared broker, a namespace of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_center_queue_of_the_other_type_is_a_clear_startup_error() {
    let namespace = format!("elves-test-{:016x}", rand::random::<u64>());
    let dir = tempfile::tempdir().unwrap();
    let database = elves_center::store::testing::TestDatabase::sqlite().unwrap();
    let classic = bus::open(&amqp_url(), &namespace).unwrap();
    let result_queue = classic.queue_name("center.result");
    classic
        .declare(&QueueSpec {
            name: result_queue.clone(),
            bindings: vec![routing::CENTER_RESULT.to_string()],
            durable: true,
        })
        .await
        .unwrap();
    classic.close().await;

    let mut config = center_config(dir.path(), &BusKind::Rabbit, &namespace, &database.url);
    config.bus.queue_type = QueueType::Quorum;
    let quorum = bus::open_with(&config.bus.url, &namespace, config.bus.queue_type).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let center_bus = quorum.clone();
    let started = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || elves_center::start(config, listener, center_bus)),
    )
    .await
    .expect("the start ends within 30 s instead of waiting for the broker")
    .unwrap();
    let error = match started {
        Ok(center) => {
            tokio::task::spawn_blocking(move || center.stop())
                .await
                .unwrap();
            String::new()
        }
        Err(err) => format!("{err:#}"),
    };
    quorum.close().await;
    elves_shared::bus::testing::delete_namespace(&amqp_url(), &namespace, &[]).await;

    assert!(!error.is_empty(), "the center started on a classic queue");
    for needed in [
        result_queue.as_str(),
        "queue_type = \"classic\"",
        "rabbitmqctl delete_queue",
    ] {
        assert!(error.contains(needed), "{needed:?} missing from: {error}");
    }
}

/// A bus given a dead address first connects to the next one; given only dead addresses, it
/// says which it tried, without their credentials. The shared broker is the live one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_passes_over_a_dead_address_to_the_next() {
    use crate::harness::rabbit_node::free_port;
    let namespace = format!("elves-test-{:016x}", rand::random::<u64>());
    let dead = format!("amqp://guest:dead-secret@127.0.0.1:{}/%2f", free_port());
    let both = bus::open(&format!("{dead},{}", amqp_url()), &namespace).unwrap();
    let spec = QueueSpec {
        name: both.queue_name("center.result"),
        bindings: vec![routing::CENTER_RESULT.to_string()],
        durable: true,
    };
    let declared = both.declare(&spec).await;
    both.close().await;
    elves_shared::bus::testing::delete_namespace(&amqp_url(), &namespace, &[]).await;
    assert!(
        declared.is_ok(),
        "not declared through the second address: {declared:?}"
    );

    let other_port = free_port();
    let other_dead = format!("amqp://guest:dead-secret@127.0.0.1:{other_port}/%2f");
    let none = bus::open(&format!("{dead},{other_dead}"), &namespace).unwrap();
    let refused = none.declare(&spec).await.unwrap_err().to_string();
    none.close().await;
    assert!(
        refused.contains("none of the 2 brokers answered"),
        "{refused}"
    );
    assert!(
        refused.contains(&format!("127.0.0.1:{other_port}")),
        "{refused}"
    );
    assert!(!refused.contains("dead-secret"), "{refused}");
}
