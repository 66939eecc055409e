//! `queue/addtasks` (many tasks in one call, all or none) and `elves queue`, on every setup.

use crate::harness::{error_code, Setup, TestEnv, AUTH_ID, AUTH_KEY};
use crate::on_every_setup;
use crate::queue::{
    add_task, commit, create_queue, log_param, ok_result, read_lines, results, wait_finished,
};
use elves_center::api::queue::MAX_BATCH_TASKS;
use serde_json::{json, Value};

on_every_setup!(
    batch_with_in_batch_dependencies_runs_dependents_after_their_dependency,
    a_bad_element_stores_nothing_and_is_named_with_its_code,
    a_batch_over_the_limit_is_refused,
    elves_queue_run_runs_a_toml_file_end_to_end,
);

async fn env_with_agents(setup: Setup, agents: &[&str]) -> TestEnv {
    let mut env = TestEnv::start_with(setup).await;
    for agent in agents {
        env.start_agent(agent).await;
    }
    env
}

async fn add_tasks(env: &TestEnv, queue_id: &str, tasks: &Value) -> Value {
    env.call(
        "queue/addtasks",
        &[("queue_id", queue_id), ("tasks", &tasks.to_string())],
    )
    .await
}

fn error_text(answer: &Value) -> &str {
    answer["error"].as_str().unwrap_or_default()
}

async fn batch_with_in_batch_dependencies_runs_dependents_after_their_dependency(setup: Setup) {
    let env = env_with_agents(setup, &["a1", "a2"]).await;
    let file = env.dir.path().join("batch.log");
    let q = create_queue(&env).await;
    // A task added before the batch, which the batch depends on by id.
    let before = add_task(&env, &q, "ip-a1", "log", &log_param(&file, "before"), "").await;
    let tasks = json!([
        { "ip": "ip-a1", "func": "log", "param": log_param(&file, "root"),
          "depend_task_id": before },
        { "ip": "ip-a2", "func": "log", "param": log_param(&file, "two"), "depends_on_index": 0 },
        { "ip": "ip-a1", "func": "log", "param": log_param(&file, "three"),
          "depends_on_index": 1, "timeout": 30, "mode": "np", "app": "elvestest" },
        // `param` may be given as JSON itself rather than as its text.
        { "ip": "ip-a2", "func": "log", "param": { "file": file, "line": "leaf" },
          "depends_on_index": 0 },
    ]);
    let answer = add_tasks(&env, &q, &tasks).await;
    let ids: Vec<String> = ok_result(&answer)["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 4, "{answer}");
    commit(&env, &q).await;
    let done = wait_finished(&env, &q).await;
    assert_eq!(done.len(), 5);
    for (id, line) in ids.iter().zip(["root", "two", "three", "leaf"]) {
        assert_eq!(done[id]["status"], "finish", "{}", done[id]);
        assert_eq!(done[id]["worker_message"], line);
    }
    assert_eq!(done[&ids[0]]["depend_task_id"], before.as_str());
    assert_eq!(done[&ids[1]]["depend_task_id"], ids[0].as_str());
    assert_eq!(done[&ids[2]]["depend_task_id"], ids[1].as_str());
    assert_eq!(done[&ids[3]]["depend_task_id"], ids[0].as_str());
    let lines = read_lines(&file);
    assert_eq!(lines.len(), 5, "each task ran once: {lines:?}");
    let position = |line: &str| lines.iter().position(|l| l == line).unwrap();
    assert_eq!(&lines[..2], ["before", "root"]);
    assert!(position("two") < position("three"), "{lines:?}");
}

async fn a_bad_element_stores_nothing_and_is_named_with_its_code(setup: Setup) {
    let env = env_with_agents(setup, &["a1"]).await;
    let q = create_queue(&env).await;
    let good = json!({ "ip": "ip-a1", "func": "ok" });
    // Four good tasks, the fourth (index 3) replaced by `bad`.
    let batch_with = |bad: Value| json!([good, good, good, bad, good]);
    let cases = [
        (
            json!({ "ip": "ip-a1", "func": "ok", "app": "bad app" }),
            "403.3",
        ),
        (
            json!({ "ip": "ip-a1", "func": "ok", "app": "otherapp" }),
            "403.3",
        ),
        (
            json!({ "ip": "ip-a1", "func": "ok", "param": "{oops" }),
            "403.2",
        ),
        (
            json!({ "ip": "ip-a1", "func": "ok", "colour": "red" }),
            "403.2",
        ),
        (
            json!({ "ip": "ip-a1", "func": "ok", "timeout": 1.5 }),
            "403.8",
        ),
        // Several bad fields: the first in table order, as addtask answers.
        (
            json!({ "ip": "bad ip", "func": "bad func", "mode": "Q" }),
            "403.1",
        ),
        (
            json!({ "ip": "ip-a1", "func": "bad func", "mode": "Q" }),
            "403.4",
        ),
        (json!({ "ip": "nobody", "func": "ok" }), "414.1"),
        (
            json!({ "ip": "ip-a1", "func": "ok", "depends_on_index": 3 }),
            "412.4",
        ),
        (
            json!({ "ip": "ip-a1", "func": "ok", "depends_on_index": 7 }),
            "412.4",
        ),
        (
            json!({ "ip": "ip-a1", "func": "ok", "depend_task_id": "nothex" }),
            "412.4",
        ),
        // Well formed but not a task of this queue: found missing inside the transaction.
        (
            json!({ "ip": "ip-a1", "func": "ok", "depend_task_id": "00000000000000aa" }),
            "412.4",
        ),
    ];
    for (bad, expected) in cases {
        let answer = add_tasks(&env, &q, &batch_with(bad.clone())).await;
        assert_eq!(error_code(&answer), expected, "{bad}: {answer}");
        assert!(
            error_text(&answer).contains("tasks[3]: "),
            "{bad}: the error names the element: {answer}"
        );
    }
    assert!(
        results(&env, &q).await.is_empty(),
        "no refused batch stored a task"
    );
    // Errors of the call itself name no element.
    let answer = add_tasks(&env, "00000000000000aa", &batch_with(good.clone())).await;
    assert_eq!(error_code(&answer), "412.1", "{answer}");
    let answer = env
        .call("queue/addtasks", &[("queue_id", &q), ("tasks", "{}")])
        .await;
    assert_eq!(error_code(&answer), "403.2", "{answer}");
    let answer = add_tasks(&env, &q, &json!([])).await;
    assert_eq!(error_code(&answer), "403.2", "{answer}");

    // A good batch goes in whole; after commit the queue takes no more (412.2).
    let answer = add_tasks(&env, &q, &batch_with(good.clone())).await;
    assert_eq!(ok_result(&answer)["ids"].as_array().unwrap().len(), 5);
    commit(&env, &q).await;
    let answer = add_tasks(&env, &q, &batch_with(good.clone())).await;
    assert_eq!(error_code(&answer), "412.2", "{answer}");
    assert_eq!(wait_finished(&env, &q).await.len(), 5);
}

async fn a_batch_over_the_limit_is_refused(setup: Setup) {
    let env = env_with_agents(setup, &["a1"]).await;
    let q = create_queue(&env).await;
    let too_many = Value::Array(vec![
        json!({ "ip": "ip-a1", "func": "ok" });
        MAX_BATCH_TASKS + 1
    ]);
    let answer = add_tasks(&env, &q, &too_many).await;
    assert_eq!(error_code(&answer), "403.2", "{answer}");
    assert!(
        error_text(&answer).contains(&MAX_BATCH_TASKS.to_string()),
        "the error says the limit: {answer}"
    );
    assert!(results(&env, &q).await.is_empty());
    // The limit itself is accepted, in one transaction.
    let at_limit = Value::Array(vec![
        json!({ "ip": "ip-a1", "func": "ok" });
        MAX_BATCH_TASKS
    ]);
    let answer = add_tasks(&env, &q, &at_limit).await;
    let ids = ok_result(&answer)["ids"].as_array().unwrap();
    assert_eq!(ids.len(), MAX_BATCH_TASKS);
    assert_eq!(results(&env, &q).await.len(), MAX_BATCH_TASKS);
}

/// Runs `elves <args>` against the test center; returns (success, stdout, stderr).
pub(crate) async fn elves(env: &TestEnv, args: &[String]) -> (bool, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_elves"));
    command
        .args(args)
        .args([
            "--url",
            &env.base_url,
            "--auth-id",
            AUTH_ID,
            "--auth-key",
            AUTH_KEY,
        ])
        .arg("--data-dir")
        .arg(env.dir.path().join("no-client-file"))
        .env("RUST_LOG", "warn");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn elves_queue_run_runs_a_toml_file_end_to_end(setup: Setup) {
    let env = env_with_agents(setup, &["a1", "a2"]).await;
    let log = env.dir.path().join("cli.log");
    let log_text = log.display().to_string();
    let file = env.dir.path().join("queue.toml");
    std::fs::write(
        &file,
        format!(
            "app = \"elvestest\"\n\
             [[tasks]]\nname = \"one\"\nip = \"ip-a1\"\nfunc = \"log\"\n\
             param = {{ file = {log_text:?}, line = \"one\" }}\n\
             [[tasks]]\nname = \"two\"\nip = \"ip-a2\"\nfunc = \"log\"\ndepends_on = \"one\"\n\
             param = '{{\"file\": {log_text:?}, \"line\": \"two\"}}'\n\
             [[tasks]]\nip = \"ip-a1\"\nfunc = \"log\"\ndepends_on = \"two\"\ntimeout = 30\n\
             param = {{ file = {log_text:?}, line = \"three\" }}\n"
        ),
    )
    .unwrap();
    let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (ok, stdout, stderr) = elves(
        &env,
        &[
            args(&["queue", "run"]),
            vec![file.display().to_string()],
            args(&["--interval-ms", "100", "--timeout", "60"]),
        ]
        .concat(),
    )
    .await;
    assert!(ok, "elves queue run failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("3 tasks, 3 succeeded, 0 did not"),
        "{stdout}\n{stderr}"
    );
    assert_eq!(read_lines(&log), ["one", "two", "three"]);

    // The steps one by one; a bad task in the file refuses the whole file.
    let (ok, stdout, stderr) = elves(&env, &args(&["queue", "create", "elvestest"])).await;
    assert!(ok, "{stdout}\n{stderr}");
    let queue_id = stdout.trim().to_string();
    let bad_file = env.dir.path().join("bad.json");
    std::fs::write(
        &bad_file,
        r#"{"tasks": [{"ip": "ip-a1", "func": "ok"}, {"ip": "ip-a1", "func": "bad func"}]}"#,
    )
    .unwrap();
    let bad_path = bad_file.display().to_string();
    let (ok, _, stderr) = elves(&env, &args(&["queue", "add", &queue_id, &bad_path])).await;
    assert!(!ok && stderr.contains("[403.7]tasks[1]: "), "{stderr}");
    assert!(results(&env, &queue_id).await.is_empty());
    let good_file = env.dir.path().join("good.json");
    std::fs::write(
        &good_file,
        r#"[{"ip": "ip-a1", "func": "ok"}, {"ip": "ip-a2", "func": "false"}]"#,
    )
    .unwrap();
    let good_path = good_file.display().to_string();
    let (ok, stdout, stderr) = elves(&env, &args(&["queue", "add", &queue_id, &good_path])).await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout.lines().count(), 2, "one id a line: {stdout}");
    let (ok, _, stderr) = elves(&env, &args(&["queue", "commit", &queue_id])).await;
    assert!(ok, "{stderr}");
    // The `false` task settles as not succeeded: watch reports it and fails.
    let (ok, stdout, stderr) = elves(
        &env,
        &args(&[
            "queue",
            "watch",
            &queue_id,
            "--interval-ms",
            "100",
            "--timeout",
            "60",
        ]),
    )
    .await;
    assert!(!ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("2 tasks, 1 succeeded, 1 did not"),
        "{stdout}"
    );
    let done = results(&env, &queue_id).await;
    assert_eq!(done.len(), 2);
    assert!(done.values().all(|task| task["status"] == "finish"));
}
