//! A fleet of 200 simulated agents (`elves_shared::sim`, what `elves sim` runs) against a real
//! center: every agent comes online in the center's view, `info/agents` lists them all a page
//! at a time, an RT call to one of them is answered, and a queue spread over all of them
//! finishes with every task run exactly once.
//! On RabbitMQ + PostgreSQL and on the in-process bus + SQLite. The large fleets are the
//! `fleet_scale` benchmark.

use crate::harness::{amqp_url, wait_until, BusKind, DbKind, Setup, TestEnv};
use crate::queue::{commit, create_queue, ok_result, wait_finished};
use elves_shared::sim::{self, SimConfig, SimFleet};
use elves_shared::wire::AgentId;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

const AGENTS: usize = 200;
const TASKS_PER_AGENT: usize = 3;

/// One fleet at a time: two fleets of 200 on the machine's two cores starve each other's
/// centers and measure the machine rather than the center.
static ONE_FLEET_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbit_postgres_fleet_of_200_comes_online_and_runs_a_queue_once() {
    fleet_of_200(Setup {
        bus: BusKind::Rabbit,
        db: DbKind::Postgres,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inproc_sqlite_fleet_of_200_comes_online_and_runs_a_queue_once() {
    fleet_of_200(Setup {
        bus: BusKind::InProc,
        db: DbKind::Sqlite,
    })
    .await;
}

async fn fleet_of_200(setup: Setup) {
    let _turn = ONE_FLEET_AT_A_TIME.lock().await;
    let env = TestEnv::start_with(setup).await;
    let ids = sim::agent_ids("sim", AGENTS).unwrap();
    let bus_url = match setup.bus {
        BusKind::Rabbit => amqp_url(),
        BusKind::InProc => "inproc".to_string(),
    };
    let mut config = SimConfig::new(
        &bus_url,
        &env.namespace,
        &env.key_id,
        &env.public_key_hex,
        ids.clone(),
    );
    config.heartbeat_interval_ms = 500;
    config.start_jitter_ms = 1_000;
    config.labels = [("fleet".to_string(), "test".to_string())].into();
    let fleet = match setup.bus {
        BusKind::Rabbit => SimFleet::start(config).unwrap(),
        BusKind::InProc => SimFleet::start_on_bus(config, env.bus.clone()).unwrap(),
    };
    let counters = fleet.counters();

    let expected: BTreeSet<String> = ids.iter().map(AgentId::to_string).collect();
    wait_until(
        "every simulated agent online in the center's view",
        Duration::from_secs(60),
        || async {
            let health = env.healthz().await;
            let online: BTreeSet<String> = health["heartbeat"]["online"]
                .as_object()
                .map(|online| online.keys().cloned().collect())
                .unwrap_or_default();
            expected.is_subset(&online)
        },
    )
    .await;
    assert_eq!(counters.connected(), AGENTS as u64);

    // Listed a page at a time: every agent once, and a short page ends the list. The listing
    // reads the agents' rows, which follow presence within a flush (`heartbeat.flush_ms`).
    wait_until(
        "every agent's row written",
        Duration::from_secs(10),
        || async { list_by_pages(&env).await.len() == AGENTS },
    )
    .await;
    let listed = list_by_pages(&env).await;
    assert_eq!(listed.len(), AGENTS);
    assert_eq!(listed.iter().cloned().collect::<BTreeSet<_>>(), expected);

    // An RT call to one of them comes back from it.
    let answer = env
        .call(
            "rt/exec",
            &[("ip", "sim-123"), ("app", "noop"), ("func", "run")],
        )
        .await;
    assert_eq!(ok_result(&answer)["worker_flag"], "1", "{answer}");
    assert_eq!(ok_result(&answer)["worker_message"], sim::RESULT_MESSAGE);

    // One queue spread over every agent: each task finishes once, each agent answers its share.
    let queue_id = create_queue(&env).await;
    let tasks: Vec<Value> = (0..TASKS_PER_AGENT)
        .flat_map(|round| {
            ids.iter()
                .map(move |id| json!({ "ip": id.to_string(), "func": "run", "param": round.to_string() }))
        })
        .collect();
    let answer = env
        .call(
            "queue/addtasks",
            &[
                ("queue_id", queue_id.as_str()),
                ("tasks", &Value::Array(tasks).to_string()),
            ],
        )
        .await;
    ok_result(&answer);
    commit(&env, &queue_id).await;
    let results = wait_finished(&env, &queue_id).await;
    assert_eq!(results.len(), AGENTS * TASKS_PER_AGENT);
    for (task_id, task) in &results {
        assert_eq!(task["status"], "finish", "task {task_id}: {task}");
        assert_eq!(task["worker_flag"], "1", "task {task_id}: {task}");
        assert_eq!(task["worker_message"], sim::RESULT_MESSAGE);
    }
    // The queue's tasks, and the one RT call.
    assert_eq!(counters.answered(), (AGENTS * TASKS_PER_AGENT + 1) as u64);
    assert_eq!(counters.published(), (AGENTS * TASKS_PER_AGENT + 1) as u64);
    assert_eq!(counters.duplicates(), 0);
    assert_eq!(counters.refused(), 0);
    let by_agent = counters.published_by_agent();
    assert_eq!(by_agent.len(), AGENTS);
    for (agent, count) in &by_agent {
        let expected = TASKS_PER_AGENT as u64 + u64::from(agent.as_str() == "sim-123");
        assert_eq!(*count, expected, "results of {agent}");
    }

    fleet.stop().await;
    assert_eq!(counters.connected(), 0);
}

/// `info/agents` read a page of 64 at a time until a short page.
async fn list_by_pages(env: &TestEnv) -> Vec<String> {
    let mut listed = Vec::new();
    for page in 1..=10 {
        let page_text = page.to_string();
        let answer = env
            .call(
                "info/agents",
                &[("page", page_text.as_str()), ("page_size", "64")],
            )
            .await;
        let ips: Vec<String> = ok_result(&answer)
            .as_array()
            .unwrap()
            .iter()
            .map(|ip| ip.as_str().unwrap().to_string())
            .collect();
        let last = ips.len() < 64;
        listed.extend(ips);
        if last {
            return listed;
        }
    }
    panic!("more pages than agents: {listed:?}");
}
