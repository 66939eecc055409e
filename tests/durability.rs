//! Nothing lost: a center killed with SIGKILL, two centers sharing the work, an agent that
//! never answers, and the task history and audit log. RabbitMQ only where a process dies.

use crate::harness::{error_code, wait_until, BusKind, DbKind, Setup, TestEnv};
use crate::queue::{
    add_task, commit, create_queue, log_param, next_reply, ok_result, read_lines, reply_queue,
    results, submit_message_with_param, wait_finished,
};
use elves_center::store::Store;
use std::time::Duration;

const RABBIT_SQLITE: Setup = Setup {
    bus: BusKind::Rabbit,
    db: DbKind::Sqlite,
};
const RABBIT_POSTGRES: Setup = Setup {
    bus: BusKind::Rabbit,
    db: DbKind::Postgres,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn center_killed_mid_queue_finishes_after_restart_sqlite() {
    center_killed_mid_queue_finishes_after_restart(RABBIT_SQLITE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn center_killed_mid_queue_finishes_after_restart_postgres() {
    center_killed_mid_queue_finishes_after_restart(RABBIT_POSTGRES).await;
}

async fn center_killed_mid_queue_finishes_after_restart(setup: Setup) {
    let mut env = TestEnv::start_with_child_center(setup).await;
    env.start_agent("a1").await;
    env.start_agent("a2").await;
    let file = env.dir.path().join("chain.log");
    let q = create_queue(&env).await;
    // A chain, alternating agents, next to independent tasks: the kill lands mid-way.
    let mut previous = String::new();
    let mut expected_chain = Vec::new();
    for n in 0..24 {
        let agent = if n % 2 == 0 { "ip-a1" } else { "ip-a2" };
        let line = format!("chain{n:02}");
        previous = add_task(&env, &q, agent, "log", &log_param(&file, &line), &previous).await;
        expected_chain.push(line);
    }
    let side_file = env.dir.path().join("side.log");
    for n in 0..16 {
        add_task(
            &env,
            &q,
            "ip-a2",
            "log",
            &log_param(&side_file, &format!("side{n:02}")),
            "",
        )
        .await;
    }
    commit(&env, &q).await;
    wait_until("part of the chain ran", Duration::from_secs(30), || async {
        read_lines(&file).len() >= 4
    })
    .await;
    env.kill_child_center();
    let at_kill = read_lines(&file).len();
    assert!(
        at_kill < expected_chain.len(),
        "the queue was still running when the center died"
    );

    env.start_child_center().await;
    let done = wait_finished(&env, &q).await;
    assert_eq!(done.len(), 40);
    for task in done.values() {
        assert_eq!(task["status"], "finish", "{task}");
        assert_eq!(task["worker_flag"], "1", "{task}");
    }
    assert_eq!(
        read_lines(&file),
        expected_chain,
        "every chain task ran once, in order"
    );
    let mut side = read_lines(&side_file);
    side.sort();
    let expected_side: Vec<String> = (0..16).map(|n| format!("side{n:02}")).collect();
    assert_eq!(
        side, expected_side,
        "every independent task ran exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_is_answered_after_its_center_restarts_sqlite() {
    a_submission_is_answered_after_its_center_restarts(RABBIT_SQLITE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_is_answered_after_its_center_restarts_postgres() {
    a_submission_is_answered_after_its_center_restarts(RABBIT_POSTGRES).await;
}

/// The reply address of a bus submission outlives the center that took it: the task finishes
/// while its center is down, and the restarted center answers.
async fn a_submission_is_answered_after_its_center_restarts(setup: Setup) {
    let mut env = TestEnv::start_with_child_center(setup).await;
    env.start_agent("a1").await;
    let (mut consumer, reply_to, bus) = reply_queue(&env).await;
    let gate = env.dir.path().join("gate");
    let param = serde_json::json!({ "file": gate.display().to_string() }).to_string();
    let mut message = submit_message_with_param("gate", &param, crate::harness::AUTH_KEY, false);
    message.reply_to = Some(reply_to);
    let destination =
        elves_shared::bus::Destination::Topic(elves_shared::wire::routing::CENTER_SUBMIT.into());
    bus.publish(&destination, message).await.unwrap();
    let started = gate.with_extension("started");
    wait_until(
        "the submitted task runs",
        Duration::from_secs(30),
        || async { started.exists() },
    )
    .await;

    env.kill_child_center();
    // The task finishes while no center is there to take its result.
    std::fs::write(&gate, b"").unwrap();
    wait_until(
        "the agent sent its result",
        Duration::from_secs(30),
        || async { env.stats("a1").results_published == 1 },
    )
    .await;
    env.start_child_center().await;

    let reply = next_reply(&mut consumer).await;
    assert_eq!(reply.correlation_id.as_deref(), Some("corr-1"));
    let envelope: elves_shared::wire::Envelope<elves_shared::wire::JobResult> =
        elves_shared::wire::decode(&reply.body).unwrap();
    assert_eq!(envelope.flag, "true", "{}", envelope.error);
    assert_eq!(envelope.result.worker_flag, 1);
    assert_eq!(envelope.result.worker_message, "opened");
    // The center forgets a reply right after publishing it: the reply can arrive first.
    let store = Store::open(&env.database.url).unwrap();
    wait_until(
        "the sent reply no longer owed",
        Duration::from_secs(10),
        || async { store.count_submit_replies().unwrap() == 0 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_centers_share_the_work_without_running_anything_twice_sqlite() {
    two_centers_share_the_work(RABBIT_SQLITE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_centers_share_the_work_without_running_anything_twice_postgres() {
    two_centers_share_the_work(RABBIT_POSTGRES).await;
}

async fn two_centers_share_the_work(setup: Setup) {
    let mut env = TestEnv::start_with(setup).await;
    // The second center shares bus, database and instruction key, not its data directory.
    let second_dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        env.dir.path().join("center.key"),
        second_dir.path().join("center.key"),
    )
    .unwrap();
    let mut config = env.config();
    config.data_dir = second_dir.path().to_path_buf();
    let second = crate::harness::start_center(config, env.participant_bus()).await;
    assert_eq!(second.public_key_hex, env.public_key_hex);
    let second_url = format!("http://{}", second.http_addr);
    env.start_agent("a1").await;
    env.start_agent("a2").await;

    let file = env.dir.path().join("shared.log");
    let q = create_queue(&env).await;
    for n in 0..40 {
        let agent = if n % 2 == 0 { "ip-a1" } else { "ip-a2" };
        add_task(
            &env,
            &q,
            agent,
            "log",
            &log_param(&file, &format!("t{n:02}")),
            "",
        )
        .await;
    }
    // Committed through the second center: both dispatch loops now race for the same tasks.
    let first_url = std::mem::replace(&mut env.base_url, second_url);
    commit(&env, &q).await;
    // An rt call through the second center finds the agents whose heartbeats the first took.
    let answer = env
        .call(
            "rt/exec",
            &[("ip", "ip-a1"), ("app", "elvestest"), ("func", "ok")],
        )
        .await;
    assert_eq!(ok_result(&answer)["worker_flag"], "1");
    env.base_url = first_url;
    let done = wait_finished(&env, &q).await;
    assert!(done
        .values()
        .all(|task| task["status"] == "finish" && task["worker_flag"] == "1"));
    let mut lines = read_lines(&file);
    lines.sort();
    let expected: Vec<String> = (0..40).map(|n| format!("t{n:02}")).collect();
    assert_eq!(lines, expected, "every task ran exactly once");
    let ran = env.stats("a1").ran + env.stats("a2").ran;
    assert_eq!(ran, 41, "40 queue tasks and one rt call, nothing twice");
    std::thread::spawn(move || second.stop()).join().unwrap();
}

crate::on_every_setup!(
    a_task_whose_agent_never_answers_fails_after_its_deadline,
    rt_calls_and_changes_are_recorded
);

async fn a_task_whose_agent_never_answers_fails_after_its_deadline(setup: Setup) {
    let mut env = TestEnv::start_with(setup).await;
    env.start_agent("a1").await;
    env.stop_agent("a1").await;
    let q = create_queue(&env).await;
    let answer = env
        .call(
            "queue/addtask",
            &[
                ("queue_id", &q),
                ("ip", "ip-a1"),
                ("func", "ok"),
                ("timeout", "1"),
            ],
        )
        .await;
    let task = ok_result(&answer)["id"].as_str().unwrap().to_string();
    let dependent = add_task(&env, &q, "ip-a1", "ok", "", &task).await;
    commit(&env, &q).await;
    wait_until("task dispatched", Duration::from_secs(10), || async {
        results(&env, &q).await[&task]["status"] == "execing"
    })
    .await;
    // Its deadline is 1 s of timeout plus the (test-shortened) kill grace and dispatch allowance.
    let done = wait_finished(&env, &q).await;
    assert_eq!(done[&task]["status"], "finish");
    assert_eq!(done[&task]["worker_flag"], "-1");
    assert_eq!(done[&task]["flag"], "false");
    assert!(
        done[&task]["error"].as_str().unwrap().contains("deadline"),
        "{}",
        done[&task]
    );
    assert_eq!(done[&dependent]["status"], "skipped");
}

async fn rt_calls_and_changes_are_recorded(setup: Setup) {
    let mut env = TestEnv::start_with(setup).await;
    env.start_agent("a1").await;
    let answer = env
        .call(
            "rt/exec",
            &[
                ("ip", "ip-a1"),
                ("app", "elvestest"),
                ("func", "echo"),
                ("param", "[1]"),
            ],
        )
        .await;
    let id = ok_result(&answer)["id"].as_str().unwrap().to_string();
    let refused = env.call("queue/create", &[("app", "bad app")]).await;
    assert_eq!(error_code(&refused), "403.3");
    let q = create_queue(&env).await;

    let store = Store::open(&env.database.url).unwrap();
    let task_id = elves_shared::wire::TaskId::parse(&id).unwrap();
    wait_until("rt result stored", Duration::from_secs(10), || async {
        store
            .get_task(&task_id)
            .unwrap()
            .is_some_and(|task| task.worker_flag == Some(1))
    })
    .await;
    let task = store.get_task(&task_id).unwrap().unwrap();
    assert_eq!(task.worker_message.as_deref(), Some("[1]"));
    assert_eq!(task.status.as_str(), "finish");
    wait_until("audit entries written", Duration::from_secs(10), || async {
        store.recent_audit(10).unwrap().len() >= 2
    })
    .await;
    let audit = store.recent_audit(10).unwrap();
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .map(|row| (row.entry.action.as_str(), row.entry.target.as_str()))
        .collect();
    assert!(
        actions.contains(&("queue/create", q.as_str())),
        "{actions:?}"
    );
    assert!(
        actions
            .iter()
            .any(|(action, target)| *action == "rt/exec" && *target == id),
        "{actions:?}"
    );
    assert!(audit
        .iter()
        .all(|row| row.entry.auth_id == crate::harness::AUTH_ID));
}
