//! The dashboard's pages over a large history (not a test: it prints figures).
//!
//! A center in this process (in-process bus) on a fresh PostgreSQL database
//! (`ELVES_TEST_PG_URL`) filled with `ELVES_BENCH_TASKS` (default 1,000,000) settled RT tasks
//! and `ELVES_BENCH_AGENTS` (default 10,000) agents. Signed in like a browser, each page is
//! fetched `ELVES_BENCH_ROUNDS` (default 30) times over HTTP on loopback; reported per page:
//! the server time as the client sees it (request sent to body read), p50, p95 (target
//! ≤ 300 ms) and max.
//!
//! Run: `cargo bench --bench dashboard`.

mod support;

use elves_center::store::testing::TestDatabase;
use elves_center::store::{AgentRow, Store};
use elves_shared::wire::AgentId;
use std::collections::BTreeMap;
use std::time::Instant;

fn main() {
    if support::listing_only() {
        return;
    }
    support::init_logging();
    let tasks = support::env_number("ELVES_BENCH_TASKS", 1_000_000);
    let agents = support::env_number("ELVES_BENCH_AGENTS", 10_000);
    let rounds = support::env_count("ELVES_BENCH_ROUNDS", 30);
    let runtime = support::runtime(2);
    runtime.block_on(run(tasks, agents, rounds));
}

fn fill(store: &Store, tasks: u64, agents: u64) {
    let now = elves_shared::time::now_unix_ms();
    let started = Instant::now();
    let rows: Vec<AgentRow> = (0..agents)
        .map(|n| AgentRow {
            id: AgentId::parse(&format!("bench-agent-{n}")).expect("agent id"),
            ip: format!("10.{}.{}.{}", n / 65_536, (n / 256) % 256, n % 256),
            asset: String::new(),
            version: "bench".to_string(),
            apps: BTreeMap::from([("app1".to_string(), "1.0".to_string())]),
            // Half of them online.
            last_heartbeat_at: if n % 2 == 0 { now } else { now - 3_600_000 },
            interval_ms: 60_000,
            labels: BTreeMap::from([("role".to_string(), format!("r{}", n % 7))]),
        })
        .collect();
    store.upsert_agents(&rows).expect("agents");
    store.fill_bench_tasks(tasks, agents, now).expect("tasks");
    println!(
        "filled {tasks} tasks and {agents} agents in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

async fn run(tasks: u64, agents: u64, rounds: usize) {
    let database = TestDatabase::postgres(&support::pg_url()).expect("database");
    {
        let store = Store::open(&database.url).expect("store");
        fill(&store, tasks, agents);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let namespace = support::namespace("dashboard-bench");
    let mut env = support::center_env(dir.path(), &namespace);
    env.push(("ELVES_DATABASE__URL".to_string(), database.url.clone()));
    let bus = elves_shared::bus::open("inproc", &namespace).expect("bus");
    let center = support::start_center(support::center_config(env), bus);
    let base = format!("http://{}", center.http_addr);

    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let signed_in = http
        .post(format!("{base}/ui/login"))
        .form(&[
            ("auth_id", support::AUTH_ID),
            ("auth_key", support::AUTH_KEY),
        ])
        .send()
        .await
        .expect("sign in");
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .expect("cookie value")
        .to_string();

    let pages = [
        ("overview", "/ui/".to_string()),
        ("agents", "/ui/agents".to_string()),
        (
            "agents, online, label",
            "/ui/agents?online=online&label=r3".to_string(),
        ),
        ("agents, page 100", "/ui/agents?page=100".to_string()),
        ("agent", "/ui/agents/bench-agent-4242".to_string()),
        ("tasks", "/ui/tasks".to_string()),
        (
            "tasks, app + failed",
            "/ui/tasks?app=app3&outcome=failed".to_string(),
        ),
        ("tasks, agent", "/ui/tasks?agent=bench-agent-17".to_string()),
        ("tasks, page 200", "/ui/tasks?page=200".to_string()),
        ("task", format!("/ui/tasks/{:016x}", 12_345)),
        (
            "tasks, auth id",
            format!("/ui/tasks?auth_id={}", support::AUTH_ID),
        ),
        ("tasks, batch type", "/ui/tasks?type=batch".to_string()),
        ("crons", "/ui/crons".to_string()),
        ("cron form", "/ui/crons/edit".to_string()),
        ("queues", "/ui/queues".to_string()),
        ("batches", "/ui/batches".to_string()),
        ("apps", "/ui/apps".to_string()),
        ("admin", "/ui/admin".to_string()),
    ];
    println!(
        "{:<24} {:>9} {:>9} {:>9}   (ms, {rounds} rounds, {tasks} tasks, {agents} agents, PostgreSQL)",
        "page", "p50", "p95", "max"
    );
    let mut worst_p95: f64 = 0.0;
    for (name, path) in &pages {
        let mut samples = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let started = Instant::now();
            let answer = http
                .get(format!("{base}{path}"))
                .header("cookie", &cookie)
                .send()
                .await
                .expect("page");
            let status = answer.status();
            let body = answer.text().await.expect("body");
            samples.push(support::elapsed_ms(started));
            assert_eq!(status, 200, "{name}: {body}");
        }
        let p95 = support::percentile(&samples, 95.0);
        worst_p95 = worst_p95.max(p95);
        println!(
            "{name:<24} {:>9.1} {:>9.1} {:>9.1}",
            support::percentile(&samples, 50.0),
            p95,
            samples.iter().copied().fold(0.0, f64::max)
        );
    }
    let verdict = if worst_p95 <= 300.0 { "met" } else { "MISSED" };
    println!("worst page p95 {worst_p95:.1} ms (target <= 300: {verdict})");
    center.stop();
}
