//! Targets and batches end to end (SPEC §12): labels in heartbeats, target/resolve, each
//! window model with a count, a percentage and a ramp, the failure threshold, offline agents,
//! stop and retry, authorization, and a center restart in the middle of a batch.

use crate::harness::{error_code, wait_until, BusKind, DbKind, Setup, TestEnv};
use crate::on_both_buses;
use crate::queue::{log_param, ok_result, read_lines};
use crate::queue_batch::elves;
use elves_center::config::AuthMode;
use elves_center::store::{Store, TaskRow};
use serde_json::{json, Value};
use std::time::Duration;

on_both_buses!(
    labels_are_reported_and_targets_resolve,
    sliding_window_keeps_at_most_a_step_running,
    lockstep_window_starts_a_step_after_the_previous_settled,
    offline_agents_are_reported_and_never_hold_a_batch,
    authorization_refuses_the_whole_batch,
    elves_run_shows_a_summary_and_json,
    the_cmd_and_filecheck_apps_run_across_a_batch,
    elves_run_follow_shows_each_agents_lines_with_its_prefix,
);

// These two also on PostgreSQL, where steps lock the batch's row.
mod every_setup {
    use super::*;
    use crate::on_every_setup;

    async fn failure_threshold_stops_only_when_exceeded(setup: Setup) {
        super::failure_threshold_stops_only_when_exceeded(TestEnv::start_with(setup).await).await
    }

    async fn stop_cancels_and_retry_runs_the_rest(setup: Setup) {
        super::stop_cancels_and_retry_runs_the_rest(TestEnv::start_with(setup).await).await
    }

    on_every_setup!(
        failure_threshold_stops_only_when_exceeded,
        stop_cancels_and_retry_runs_the_rest,
    );
}

async fn start(kind: BusKind) -> TestEnv {
    TestEnv::start_with(Setup {
        bus: kind,
        db: DbKind::Sqlite,
    })
    .await
}

/// Starts agents `<prefix>0 …` with `labels`.
async fn start_agents(env: &mut TestEnv, ids: &[&str], labels: &[(&str, &str)]) {
    for id in ids {
        let mut config = env.agent_config(id);
        config.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.start_agent_with(config).await;
    }
}

/// An agent without the test app: every task of it fails (`app … not installed`).
async fn start_agent_without_app(env: &mut TestEnv, id: &str) {
    let config = env.agent_config(id);
    std::fs::remove_dir_all(config.apps_dir.join("elvestest")).unwrap();
    env.start_agent_with(config).await;
}

/// Agents that every test keeps running, but that a loaded machine may show as offline for a
/// moment (a late heartbeat): batches wait for them rather than skipping them, unless a test
/// says otherwise.
const OFFLINE_WAIT: (&str, &str) = ("offline", "wait:60");

async fn create(env: &TestEnv, params: &[(&str, &str)]) -> (String, u64) {
    let mut all = vec![("app", "elvestest")];
    if !params.iter().any(|(key, _)| *key == "offline") {
        all.push(OFFLINE_WAIT);
    }
    all.extend_from_slice(params);
    let answer = env.call("batch/create", &all).await;
    let result = ok_result(&answer);
    (
        result["id"].as_str().unwrap().to_string(),
        result["count"].as_u64().unwrap(),
    )
}

async fn status(env: &TestEnv, id: &str) -> Value {
    let answer = env.call("batch/status", &[("id", id)]).await;
    ok_result(&answer).clone()
}

/// Waits until the batch has ended and no agent of it is running any more.
async fn wait_ended(env: &TestEnv, id: &str) -> Value {
    wait_until("batch ended", Duration::from_secs(60), || async {
        let status = status(env, id).await;
        status["state"] != "running" && status["counts"]["running"] == 0
    })
    .await;
    status(env, id).await
}

async fn items(env: &TestEnv, id: &str) -> Vec<Value> {
    let answer = env
        .call("batch/result", &[("id", id), ("page_size", "1000")])
        .await;
    ok_result(&answer)["items"].as_array().unwrap().clone()
}

/// The batch's tasks as stored, oldest first (a batch's queue has the batch's id).
fn tasks_of(env: &TestEnv, id: &str) -> Vec<TaskRow> {
    let store = Store::open(&env.database.url).unwrap();
    let queue_id = elves_shared::wire::TaskId::parse(id).unwrap();
    store.queue_tasks(&queue_id).unwrap()
}

/// The `span` func's log: (`true` for a start, `false` for an end, unix ms), in the order the
/// agents wrote it.
fn spans(file: &std::path::Path) -> Vec<(bool, u64)> {
    read_lines(file)
        .iter()
        .map(|line| {
            let (sign, at) = line.split_once(' ').unwrap();
            (sign == "+", at.parse().unwrap())
        })
        .collect()
}

/// The most workers that ran at once, from the agents' own log.
fn max_in_flight(spans: &[(bool, u64)]) -> usize {
    let (mut now, mut most) = (0usize, 0usize);
    for &(start, _) in spans {
        if start {
            now += 1;
            most = most.max(now);
        } else {
            now -= 1;
        }
    }
    most
}

fn assert_counts(status: &Value, expected: &[(&str, u64)]) {
    for state in [
        "pending", "running", "ok", "failed", "timeout", "offline", "skipped", "stopped",
    ] {
        let want = expected
            .iter()
            .find(|(name, _)| *name == state)
            .map_or(0, |(_, n)| *n);
        assert_eq!(status["counts"][state], want, "{state}: {status}");
    }
}

async fn labels_are_reported_and_targets_resolve(kind: BusKind) {
    let mut env = start(kind).await;
    start_agents(
        &mut env,
        &["web-1", "web-2"],
        &[("role", "web"), ("dc", "bj")],
    )
    .await;
    start_agents(&mut env, &["db-1"], &[("role", "db"), ("dc", "sh")]).await;

    let detail = env.call("info/agents/detail", &[("ip", "web-1")]).await;
    assert_eq!(
        ok_result(&detail)["labels"],
        json!({"role": "web", "dc": "bj"})
    );

    let resolve = |target: &'static str| {
        let env = &env;
        async move {
            env.call("target/resolve", &[("target", target), ("page_size", "2")])
                .await
        }
    };
    let web = resolve("role=web").await;
    assert_eq!(ok_result(&web)["count"], 2, "{web}");
    let ids: Vec<&str> = ok_result(&web)["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|agent| agent["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["web-1", "web-2"]);
    assert_eq!(ok_result(&web)["agents"][0]["online"], true);
    assert_eq!(ok_result(&web)["agents"][0]["ip"], "ip-web-1");
    let all = resolve("*").await;
    assert_eq!(ok_result(&all)["count"], 3);
    assert_eq!(
        ok_result(&all)["agents"].as_array().unwrap().len(),
        2,
        "one page"
    );
    let mixed = resolve("dc in (sh) or ip-web-2").await;
    assert_eq!(ok_result(&mixed)["count"], 2);
    let none = resolve("not (role=web or role=db)").await;
    assert_eq!(ok_result(&none)["count"], 0);

    let bad = resolve("role=web and (dc=bj").await;
    assert_eq!(error_code(&bad), "403.10", "{bad}");
    assert!(
        bad["error"].as_str().unwrap().contains("position 20"),
        "{bad}"
    );
    let bad_size = env
        .call(
            "batch/create",
            &[
                ("app", "elvestest"),
                ("func", "ok"),
                ("target", "*"),
                ("size", "0%"),
            ],
        )
        .await;
    assert_eq!(error_code(&bad_size), "403.11", "{bad_size}");
    let bad_target = env
        .call(
            "batch/create",
            &[("app", "elvestest"), ("func", "ok"), ("target", "dc in bj")],
        )
        .await;
    assert_eq!(error_code(&bad_target), "403.10", "{bad_target}");
    let unknown = env
        .call("batch/status", &[("id", "00000000000000aa")])
        .await;
    assert_eq!(error_code(&unknown), "416.1", "{unknown}");
}

async fn sliding_window_keeps_at_most_a_step_running(kind: BusKind) {
    let mut env = start(kind).await;
    let ids = ["s0", "s1", "s2", "s3", "s4", "s5", "s6"];
    start_agents(&mut env, &ids, &[("role", "web")]).await;
    for (size, most) in [("2", 2), ("30%", 3), ("1,2,3", 3)] {
        let file = env.dir.path().join(format!("sliding-{size}.log"));
        let param = json!({ "file": file }).to_string();
        let (id, count) = create(
            &env,
            &[
                ("func", "span"),
                ("param", &param),
                ("target", "role=web"),
                ("size", size),
            ],
        )
        .await;
        assert_eq!(count, 7);
        let done = wait_ended(&env, &id).await;
        assert_eq!(done["state"], "finished", "{done}");
        assert_counts(&done, &[("ok", 7)]);
        assert_eq!(tasks_of(&env, &id).len(), 7, "each agent ran once");
        let log = spans(&file);
        assert_eq!(log.len(), 14, "{log:?}");
        let in_flight = max_in_flight(&log);
        assert!(
            in_flight <= most,
            "size {size}: {in_flight} at once: {log:?}"
        );
        assert!(in_flight >= 2, "size {size}: the window was used: {log:?}");
        if size == "1,2,3" {
            // The ramp's first step is one agent: it ends before any other starts.
            assert_eq!(
                &log[..3],
                &[(true, log[0].1), (false, log[1].1), (true, log[2].1)]
            );
        }
    }
}

async fn lockstep_window_starts_a_step_after_the_previous_settled(kind: BusKind) {
    let mut env = start(kind).await;
    let ids = ["l0", "l1", "l2", "l3", "l4"];
    start_agents(&mut env, &ids, &[]).await;
    // Sizes: 2 agents, 40% of 5 (2), and a ramp 1,3 (its last step repeats).
    for (size, steps) in [
        ("2", vec![2, 2, 1]),
        ("40%", vec![2, 2, 1]),
        ("1,3", vec![1, 3, 1]),
    ] {
        let file = env.dir.path().join(format!("lockstep-{size}.log"));
        let param = json!({ "file": file }).to_string();
        let (id, _) = create(
            &env,
            &[
                ("func", "span"),
                ("param", &param),
                ("target", "l*"),
                ("size", size),
                ("window", "lockstep"),
                ("wait_s", "1"),
            ],
        )
        .await;
        let done = wait_ended(&env, &id).await;
        assert_counts(&done, &[("ok", 5)]);
        // Each step is its starts then its ends, and starts at least wait_s after the
        // previous step's last end.
        let log = spans(&file);
        let mut at = 0;
        let mut previous_end: Option<u64> = None;
        for step in steps {
            let group = &log[at..at + 2 * step];
            assert!(
                group[..step].iter().all(|(start, _)| *start)
                    && group[step..].iter().all(|(start, _)| !*start),
                "size {size}: steps overlap: {log:?}"
            );
            if let Some(end) = previous_end {
                assert!(
                    group[0].1 >= end + 1_000,
                    "size {size}: a step started {} ms after the previous ended",
                    group[0].1 as i64 - end as i64
                );
            }
            previous_end = group.iter().map(|(_, at)| *at).max();
            at += 2 * step;
        }
        assert_eq!(at, log.len());
    }
}

async fn failure_threshold_stops_only_when_exceeded(mut env: TestEnv) {
    // Rollout order is by id: the two agents without the app go first.
    start_agent_without_app(&mut env, "f0").await;
    start_agent_without_app(&mut env, "f1").await;
    start_agents(&mut env, &["f2", "f3", "f4", "f5"], &[]).await;

    let (equal, _) = create(
        &env,
        &[
            ("func", "ok"),
            ("target", "f*"),
            ("size", "1"),
            ("max_fail", "2"),
        ],
    )
    .await;
    let done = wait_ended(&env, &equal).await;
    assert_eq!(
        done["state"], "finished",
        "2 failures equal max_fail 2: {done}"
    );
    assert_counts(&done, &[("ok", 4), ("failed", 2)]);

    let (over, _) = create(
        &env,
        &[
            ("func", "ok"),
            ("target", "f*"),
            ("size", "1"),
            ("max_fail", "25%"),
        ],
    )
    .await;
    let done = wait_ended(&env, &over).await;
    assert_eq!(done["state"], "stopped", "2 of 6 exceed 25%: {done}");
    assert!(
        done["stop_reason"].as_str().unwrap().contains("max_fail"),
        "{done}"
    );
    assert_counts(&done, &[("failed", 2), ("skipped", 4)]);
    assert_eq!(
        tasks_of(&env, &over).len(),
        2,
        "nobody started after the threshold"
    );
    let failed = items(&env, &over).await;
    assert_eq!(failed[0]["state"], "failed");
    assert_eq!(failed[0]["worker_flag"], "-1");
    assert!(
        failed[0]["worker_message"]
            .as_str()
            .unwrap()
            .contains("not installed"),
        "{}",
        failed[0]
    );
    assert_eq!(failed[2]["state"], "skipped");
    assert_eq!(failed[2]["task_id"], "");
}

async fn offline_agents_are_reported_and_never_hold_a_batch(kind: BusKind) {
    // `skip` is under test: the running agents must not look offline for a late heartbeat on a
    // loaded machine, so the center allows them 10 missed beats (2 s) instead of 3.
    let mut env = TestEnv::start_configured(
        Setup {
            bus: kind,
            db: DbKind::Sqlite,
        },
        |config| config.heartbeat.offline_after_missed_beats = 10,
    )
    .await;
    let ids = ["o0", "o1", "o2", "o3", "o4", "o5", "o6", "o7", "o8", "o9"];
    start_agents(&mut env, &ids, &[]).await;
    for gone in ["o2", "o5", "o8"] {
        env.stop_agent(gone).await;
        env.wait_offline(gone).await;
    }
    for offline in ["skip", "wait:1"] {
        let (id, count) = create(
            &env,
            &[
                ("func", "ok"),
                ("target", "o*"),
                ("size", "30%"),
                ("offline", offline),
            ],
        )
        .await;
        assert_eq!(count, 10);
        let done = wait_ended(&env, &id).await;
        assert_eq!(done["state"], "finished", "{offline}: {done}");
        assert_counts(&done, &[("ok", 7), ("offline", 3)]);
        let offline_agents: Vec<String> = items(&env, &id)
            .await
            .iter()
            .filter(|item| item["state"] == "offline")
            .map(|item| item["agent"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(offline_agents, ["o2", "o5", "o8"]);
        let only_offline = env
            .call("batch/result", &[("id", &id), ("state", "offline")])
            .await;
        assert_eq!(ok_result(&only_offline)["count"], 3);
    }
}

async fn stop_cancels_and_retry_runs_the_rest(mut env: TestEnv) {
    start_agents(&mut env, &["r0", "r1", "r2"], &[]).await;
    let gate = env.dir.path().join("gate");
    let param = json!({ "file": gate }).to_string();
    let (id, _) = create(
        &env,
        &[
            ("func", "gate"),
            ("param", &param),
            ("target", "r*"),
            ("size", "1"),
        ],
    )
    .await;
    let started = env.dir.path().join("gate.started");
    wait_until("the first agent runs", Duration::from_secs(20), || async {
        started.exists()
    })
    .await;
    let retry_running = env.call("batch/retry", &[("id", &id)]).await;
    assert_eq!(error_code(&retry_running), "416.2", "{retry_running}");

    let stopped = env.call("batch/stop", &[("id", &id)]).await;
    assert_eq!(ok_result(&stopped)["state"], "stopped", "{stopped}");
    let again = env.call("batch/stop", &[("id", &id)]).await;
    assert_eq!(error_code(&again), "416.2", "{again}");
    let done = wait_ended(&env, &id).await;
    assert_counts(&done, &[("stopped", 3)]);

    std::fs::write(&gate, "").unwrap();
    let retried = env
        .call("batch/retry", &[("id", &id), ("states", "stopped")])
        .await;
    let retry_id = ok_result(&retried)["id"].as_str().unwrap().to_string();
    assert_eq!(ok_result(&retried)["count"], 3);
    let done = wait_ended(&env, &retry_id).await;
    assert_eq!(done["retry_of"], id.as_str());
    assert_counts(&done, &[("ok", 3)]);
    let nothing_failed = env.call("batch/retry", &[("id", &retry_id)]).await;
    assert_eq!(error_code(&nothing_failed), "416.2", "{nothing_failed}");
}

async fn authorization_refuses_the_whole_batch(kind: BusKind) {
    let mut env = TestEnv::start_configured(
        Setup {
            bus: kind,
            db: DbKind::Sqlite,
        },
        |config| config.auth.mode = AuthMode::Supervisor,
    )
    .await;
    start_agents(&mut env, &["z1", "z2", "z3"], &[]).await;
    let created = env.call("app/create", &[("app", "demo")]).await;
    assert_eq!(created["flag"], "true", "{created}");
    let bound = env.call("app/bind", &[("app", "demo"), ("ip", "z1")]).await;
    assert_eq!(bound["flag"], "true", "{bound}");

    let refused = env
        .call(
            "batch/create",
            &[("app", "demo"), ("func", "f"), ("target", "z*")],
        )
        .await;
    assert_eq!(error_code(&refused), "401.6", "{refused}");
    let message = refused["error"].as_str().unwrap();
    assert!(
        message.contains("2 of the 3") && message.contains("z2, z3") && !message.contains("z1,"),
        "{message}"
    );
    let store = Store::open(&env.database.url).unwrap();
    assert!(
        store.active_batch_ids().unwrap().is_empty(),
        "nothing stored"
    );

    let allowed = env
        .call(
            "batch/create",
            &[("app", "demo"), ("func", "f"), ("target", "z1")],
        )
        .await;
    assert_eq!(ok_result(&allowed)["count"], 1, "{allowed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_resumes_after_a_center_restart_and_runs_no_agent_twice() {
    let setup = Setup {
        bus: BusKind::Rabbit,
        db: DbKind::Sqlite,
    };
    let mut env = TestEnv::start_with_child_center(setup).await;
    let ids: Vec<String> = (0..8).map(|n| format!("k{n}")).collect();
    for id in &ids {
        env.start_agent(id).await;
    }
    let file = env.dir.path().join("runs.log");
    let param = log_param(&file, "ran");
    let (id, count) = create(
        &env,
        &[
            ("func", "log"),
            ("param", &param),
            ("target", "k*"),
            ("size", "1"),
        ],
    )
    .await;
    assert_eq!(count, 8);
    wait_until("part of the batch ran", Duration::from_secs(30), || async {
        !read_lines(&file).is_empty()
    })
    .await;
    env.kill_child_center();
    let at_kill = read_lines(&file).len();
    assert!(
        at_kill < 8,
        "the batch was still running when the center died"
    );

    env.start_child_center().await;
    let done = wait_ended(&env, &id).await;
    assert_eq!(done["state"], "finished", "{done}");
    assert_counts(&done, &[("ok", 8)]);
    assert_eq!(read_lines(&file).len(), 8, "every agent ran exactly once");
    let tasks = tasks_of(&env, &id);
    assert_eq!(tasks.len(), 8);
    let mut agents: Vec<String> = tasks.iter().map(|task| task.agent.to_string()).collect();
    agents.sort();
    assert_eq!(agents, ids);
}

async fn elves_run_shows_a_summary_and_json(kind: BusKind) {
    let mut env = start(kind).await;
    start_agent_without_app(&mut env, "c0").await;
    start_agents(&mut env, &["c1", "c2", "c3"], &[("role", "web")]).await;
    let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let (ok, stdout, stderr) = elves(
        &env,
        &args(&[
            "run",
            "role=web",
            "elvestest",
            "echo",
            r#"{"x":1}"#,
            "--batch",
            "50%",
            "--offline",
            "wait:60",
            "--json",
        ]),
    )
    .await;
    assert!(ok, "{stdout}\n{stderr}");
    let answer: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(answer["status"]["state"], "finished", "{answer}");
    assert_eq!(answer["status"]["counts"]["ok"], 3, "{answer}");
    let items = answer["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert!(
        items
            .iter()
            .all(|item| item["worker_message"] == r#"{"x":1}"#),
        "{answer}"
    );

    let (ok, stdout, stderr) = elves(
        &env,
        &args(&[
            "run",
            "c*",
            "elvestest",
            "ok",
            "--batch",
            "1",
            "--max-fail",
            "0",
            "--offline",
            "wait:60",
        ]),
    )
    .await;
    assert!(!ok, "a failed agent fails the command: {stdout}");
    assert!(
        stdout.contains("stopped") && stdout.contains("max_fail 0 exceeded"),
        "{stdout}"
    );
    assert!(stdout.contains("failed           1"), "{stdout}");
    assert!(stdout.contains("skipped          3"), "{stdout}");
    assert!(stdout.contains("first failures:\n  c0"), "{stdout}");
    assert!(stderr.contains("0 of 4 agents succeeded"), "{stderr}");
}

async fn elves_run_follow_shows_each_agents_lines_with_its_prefix(kind: BusKind) {
    let mut env = start(kind).await;
    start_agents(&mut env, &["f1", "f2"], &[]).await;
    let args: Vec<String> = [
        "run",
        "f*",
        "elvestest",
        "ticks",
        r#"{"n":"3"}"#,
        "--follow",
        "--offline",
        "wait:60",
        "--interval-ms",
        "100",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (ok, stdout, stderr) = elves(&env, &args).await;
    assert!(ok, "{stdout}\n{stderr}");
    for agent in ["f1", "f2"] {
        let prefix = format!("{agent} | ");
        let lines: Vec<&str> = stdout
            .lines()
            .filter_map(|line| line.strip_prefix(&prefix))
            .collect();
        assert_eq!(
            lines,
            [
                "tick 1",
                "tick 2",
                "tick 3",
                "<ElvesWFlag>true</ElvesWFlag><ElvesWResult>ticked 3</ElvesWResult>"
            ],
            "{stdout}"
        );
    }
    let ok_row = format!("{:<10} {:>7}", "ok", 2);
    assert!(stdout.contains(&ok_row), "the summary follows: {stdout}");
}

/// Starts agents with the shipped practice apps `cmd` and `filecheck` installed.
async fn start_agents_with_practice_apps(env: &mut TestEnv, ids: &[&str]) {
    let root = crate::harness::repo_root();
    for id in ids {
        let config = env.agent_config(id);
        for app in ["cmd", "filecheck"] {
            crate::harness::copy_dir(&root.join("apps").join(app), &config.apps_dir.join(app));
        }
        env.start_agent_with(config).await;
    }
}

async fn run_practice(env: &TestEnv, app: &str, func: &str, param: &Value) -> Vec<Value> {
    let param = param.to_string();
    let answer = env
        .call(
            "batch/create",
            &[
                ("app", app),
                ("func", func),
                ("param", &param),
                ("target", "p*"),
                OFFLINE_WAIT,
            ],
        )
        .await;
    let id = ok_result(&answer)["id"].as_str().unwrap().to_string();
    wait_ended(env, &id).await;
    items(env, &id).await
}

async fn the_cmd_and_filecheck_apps_run_across_a_batch(kind: BusKind) {
    let mut env = start(kind).await;
    start_agents_with_practice_apps(&mut env, &["p1", "p2"]).await;

    let echoed = run_practice(
        &env,
        "cmd",
        "run",
        &json!({"command": "echo hello; echo oops >&2"}),
    )
    .await;
    for item in &echoed {
        assert_eq!(item["state"], "ok", "{item}");
        assert_eq!(item["worker_message"], "hello\n", "{item}");
    }
    let failed = run_practice(&env, "cmd", "run", &json!({"command": "echo out; exit 3"})).await;
    assert_eq!(failed[0]["state"], "failed");
    assert_eq!(failed[0]["worker_message"], "exit status 3\nout\n");
    let marker = env.dir.path().join("must-not-exist");
    let denied = run_practice(
        &env,
        "cmd",
        "run",
        &json!({"command": format!("touch {}; reboot", marker.display())}),
    )
    .await;
    assert_eq!(denied[0]["state"], "failed");
    assert!(
        denied[0]["worker_message"]
            .as_str()
            .unwrap()
            .contains("deny-list"),
        "{}",
        denied[0]
    );
    assert!(!marker.exists(), "a refused command runs nothing");
    let slow = run_practice(
        &env,
        "cmd",
        "run",
        &json!({"command": "sleep 30", "timeout": 0.5}),
    )
    .await;
    assert_eq!(slow[0]["state"], "failed");
    assert_eq!(slow[0]["worker_message"], "command timed out after 0.5 s");

    let file = env.dir.path().join("app.conf");
    std::fs::write(&file, "x").unwrap();
    let sha256 = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881";
    let path = file.display().to_string();
    let matching = run_practice(
        &env,
        "filecheck",
        "check",
        &json!({"expected": {&path: {"sha256": sha256, "size": 1}}}),
    )
    .await;
    for item in &matching {
        assert_eq!(item["state"], "ok", "{item}");
        let report: Value = serde_json::from_str(item["worker_message"].as_str().unwrap()).unwrap();
        assert_eq!(report[&path]["mismatches"], json!([]));
    }
    let differing = run_practice(
        &env,
        "filecheck",
        "check",
        &json!({"expected": {&path: {"sha256": "00", "size": 1}}}),
    )
    .await;
    assert_eq!(differing[0]["state"], "failed");
    let report: Value =
        serde_json::from_str(differing[0]["worker_message"].as_str().unwrap()).unwrap();
    assert_eq!(
        report[&path]["mismatches"],
        json!([format!("sha256: expected 00, found {sha256}")])
    );
    let hashed = run_practice(&env, "filecheck", "hash", &json!({"paths": [&path]})).await;
    let report: Value =
        serde_json::from_str(hashed[0]["worker_message"].as_str().unwrap()).unwrap();
    assert_eq!(report[&path]["sha256"], sha256);
    assert_eq!(report[&path]["size"], 1);
}
