//! Adding tasks to a queue: `queue/addtasks` (many tasks per call, one transaction) against
//! `queue/addtask` (one task per call), through the HTTP API of a center in this process
//! (in-process bus), on SQLite and on PostgreSQL. Not a test: it prints figures. The target
//! is 20,000 tasks/s with `addtasks` on PostgreSQL.
//!
//! The client (signing, JSON) runs in this process too, on the same cores as the center, so
//! the figures include a client's cost. Tasks are added and never committed: this measures
//! the adding alone.
//!
//! Run: `cargo bench --bench addtasks`. `ELVES_BENCH_TASKS` (default 50,000),
//! `ELVES_BENCH_BATCH` (tasks per `addtasks` call, default 5,000), `ELVES_BENCH_SINGLE_TASKS`
//! (tasks added one per call, default 2,000) and `ELVES_BENCH_PG_URL` (default
//! `ELVES_TEST_PG_URL`, else the local server's `test` database) change the setup.

mod support;

use elves_center::store::testing::TestDatabase;
use elves_shared::wire::AgentId;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::{Api, Summary};

const AGENT: &str = "bench-agent";

fn main() {
    if support::listing_only() {
        return;
    }
    support::init_logging();
    let n_tasks = support::env_count("ELVES_BENCH_TASKS", 50_000);
    let batch = support::env_count("ELVES_BENCH_BATCH", 5_000);
    let n_single = support::env_count("ELVES_BENCH_SINGLE_TASKS", 2_000);
    let pg_url = std::env::var("ELVES_BENCH_PG_URL").unwrap_or_else(|_| support::pg_url());
    println!(
        "adding tasks: {n_tasks} with addtasks ({batch} per call), {n_single} with addtask \
         (one per call, one call at a time); center in this process, in-process bus"
    );
    let runtime = support::runtime(2);
    for (backend, database) in [
        ("sqlite", TestDatabase::sqlite()),
        ("postgres", TestDatabase::postgres(&pg_url)),
    ] {
        let database = database.unwrap_or_else(|err| panic!("{backend} database: {err}"));
        runtime.block_on(measure(backend, &database, n_tasks, batch, n_single));
    }
}

async fn measure(
    backend: &str,
    database: &TestDatabase,
    n_tasks: usize,
    batch: usize,
    n_single: usize,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let namespace = support::namespace("bench");
    let mut env = support::center_env(dir.path(), &namespace);
    env.push(("ELVES_DATABASE__URL".to_string(), database.url.clone()));
    let config = support::center_config(env);
    let bus = elves_shared::bus::open("inproc", &namespace).expect("bus");
    let center_bus = bus.clone();
    let center = tokio::task::spawn_blocking(move || support::start_center(config, center_bus))
        .await
        .expect("center thread");
    let api = Api::new(format!("http://{}", center.http_addr));

    // One agent, so that the tasks' `ip` resolves; the tasks never run.
    let id = AgentId::parse(AGENT).expect("agent id");
    let mut agent_config = support::agent_config(
        &id,
        dir.path().join("apps"),
        dir.path().join("spool"),
        1000,
        &center.key_id,
        &center.public_key_hex,
    );
    agent_config.cron_file = dir.path().join("no-cron.json");
    support::install_noop_app(&agent_config.apps_dir);
    let agent = support::InProcessAgent::spawn(agent_config, bus.clone());
    let started = Instant::now();
    loop {
        let answer = api.call("info/agents/detail", &[("ip", AGENT)]).await;
        if answer["result"]["online"] == true {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "agent online: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let queue_id = create_queue(&api).await;
    let calls: Vec<String> = (0..n_tasks)
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(|chunk| {
            let tasks: Vec<Value> = chunk
                .iter()
                .map(|n| json!({ "ip": AGENT, "func": "run", "param": format!("{{\"n\":{n}}}") }))
                .collect();
            Value::Array(tasks).to_string()
        })
        .collect();
    let mut call_ms = Vec::with_capacity(calls.len());
    let started = Instant::now();
    for tasks in &calls {
        let call_started = Instant::now();
        let result = api
            .ok(
                "queue/addtasks",
                &[("queue_id", queue_id.as_str()), ("tasks", tasks.as_str())],
            )
            .await;
        call_ms.push(support::elapsed_ms(call_started));
        assert!(result["ids"].is_array(), "{result}");
    }
    let batch_s = started.elapsed().as_secs_f64();
    assert_eq!(
        count_tasks(&api, &queue_id).await,
        n_tasks,
        "every task stored"
    );
    let calls = Summary::of(&call_ms);
    println!(
        "{backend:<8} addtasks: {n_tasks} tasks in {:.2} s = {:>7.0} tasks/s \
         ({} calls of {batch}: p50 {:.0} ms, max {:.0} ms)",
        batch_s,
        n_tasks as f64 / batch_s,
        calls.count,
        calls.p50,
        calls.max
    );

    let queue_id = create_queue(&api).await;
    let param = r#"{"n":0}"#;
    let started = Instant::now();
    for _ in 0..n_single {
        api.ok(
            "queue/addtask",
            &[
                ("queue_id", queue_id.as_str()),
                ("ip", AGENT),
                ("func", "run"),
                ("param", param),
            ],
        )
        .await;
    }
    let single_s = started.elapsed().as_secs_f64();
    assert_eq!(count_tasks(&api, &queue_id).await, n_single);
    println!(
        "{backend:<8} addtask:  {n_single} tasks in {:.2} s = {:>7.0} tasks/s (one per call)",
        single_s,
        n_single as f64 / single_s
    );

    support::stop_agents(vec![agent]).await;
    let _ = tokio::task::spawn_blocking(move || center.stop()).await;
}

async fn create_queue(api: &Api) -> String {
    let result = api.ok("queue/create", &[("app", "noop")]).await;
    result["id"].as_str().expect("queue id").to_string()
}

async fn count_tasks(api: &Api, queue_id: &str) -> usize {
    let result = api.ok("queue/result", &[("queue_id", queue_id)]).await;
    result.as_object().expect("results").len()
}
