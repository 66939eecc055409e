//! Crons end to end: a rule that really fires every second, start/stop/delete, the detail and
//! info shapes, two centers on one database firing each second exactly once, definition files
//! (reload through the API and `elves cron reload`), a center that was down (misfire), and the
//! agent-local cron.json.

use crate::harness::{error_code, wait_until, Setup, TestEnv, AUTH_ID, AUTH_KEY};
use crate::on_every_setup;
use crate::queue::{log_param, ok_result, read_lines};
use elves_center::store::Store;
use elves_shared::bus::QueueSpec;
use elves_shared::wire::{self, routing, JobResult, TaskId, TaskType};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

on_every_setup!(
    a_cron_fires_every_second_and_obeys_stop_start_delete,
    two_centers_fire_each_second_exactly_once,
    definition_files_are_loaded_and_reloaded,
    a_firing_missed_while_no_center_ran_runs_once,
    agent_local_crons_run_and_report,
    a_firing_nobody_answers_is_noted_as_failed,
);

const EVERY_SECOND: &str = "0/1 * * * * ?";

async fn add_cron(env: &TestEnv, ip: &str, param: &str, rule: &str) -> String {
    let answer = env
        .call(
            "cron/add",
            &[
                ("ip", ip),
                ("app", "elvestest"),
                ("func", "log"),
                ("param", param),
                ("rule", rule),
                ("timeout", "10"),
            ],
        )
        .await;
    ok_result(&answer)["id"].as_str().unwrap().to_string()
}

async fn detail(env: &TestEnv, cron_id: &str) -> Value {
    let answer = env.call("cron/detail", &[("cron_id", cron_id)]).await;
    ok_result(&answer).clone()
}

async fn list(env: &TestEnv, params: &[(&str, &str)]) -> Vec<String> {
    let answer = env.call("cron/list", params).await;
    ok_result(&answer)
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_string())
        .collect()
}

/// Waits until a firing of `witness` (a cron firing every second on a running agent) after
/// `instant` (unix ms) has run and its result is stored; returns its fire time. By then the
/// center has fired every every-second cron it had scheduled at that time, and their firings
/// before it were published a second or more earlier.
async fn witness_ran_after(store: &Store, witness: &TaskId, instant: u64) -> u64 {
    let ran_after = || {
        store
            .cron_firings(witness)
            .unwrap()
            .into_iter()
            .filter(|(at, _, _)| *at > instant)
            .find(|(_, task, _)| {
                store
                    .get_task(task)
                    .unwrap()
                    .is_some_and(|task| task.worker_flag.is_some())
            })
            .map(|(at, _, _)| at)
    };
    wait_until(
        &format!("a firing of the witness cron after {instant} ran"),
        Duration::from_secs(20),
        || async { ran_after().is_some() },
    )
    .await;
    ran_after().unwrap()
}

/// Asserts that the cron logging to `file` no longer fires once the stop or delete answered at
/// `changed_at` (unix ms) has taken effect, and returns its line count then. The firings it had
/// prepared (up to `prepare_ahead_ms` ahead) still run; after them, it must stay silent through
/// a further second in which the witness fired, as it would have.
async fn assert_fires_no_more(
    env: &TestEnv,
    store: &Store,
    witness: &TaskId,
    file: &std::path::Path,
    changed_at: u64,
    what: &str,
) -> usize {
    let prepared_until = changed_at + env.config().cron.prepare_ahead_ms;
    let settled = witness_ran_after(store, witness, prepared_until).await;
    let count = read_lines(file).len();
    witness_ran_after(store, witness, settled).await;
    assert_eq!(read_lines(file).len(), count, "{what}");
    count
}

async fn a_cron_fires_every_second_and_obeys_stop_start_delete(setup: Setup) {
    let mut env = TestEnv::start_with(setup).await;
    env.start_agent("a1").await;
    let file = env.dir.path().join("cron.log");
    let param = log_param(&file, "tick");

    // Refusals first, in the table's order and with messages that say why.
    for (params, code) in [
        (
            vec![
                ("ip", "ip-a1"),
                ("app", "elvestest"),
                ("func", "log"),
                ("rule", "* * * * *"),
            ],
            "403.5",
        ),
        (
            vec![
                ("ip", "ip-a1"),
                ("app", "elvestest"),
                ("func", "log"),
                ("rule", "0 0 0 ? * 0"),
            ],
            "403.5",
        ),
        (
            vec![("ip", "ip-a1"), ("app", "elvestest"), ("func", "log")],
            "403.5",
        ),
        (
            vec![
                ("ip", "ip-a1"),
                ("app", "bad app"),
                ("func", "log"),
                ("rule", "* * * * *"),
            ],
            "403.3",
        ),
        (
            vec![
                ("ip", "nobody"),
                ("app", "elvestest"),
                ("func", "log"),
                ("rule", EVERY_SECOND),
            ],
            "414.1",
        ),
    ] {
        let answer = env.call("cron/add", &params).await;
        assert_eq!(error_code(&answer), code, "{params:?}: {answer}");
    }
    let answer = env
        .call(
            "cron/add",
            &[
                ("ip", "ip-a1"),
                ("app", "elvestest"),
                ("func", "log"),
                ("rule", "0 0 0 ? * 0"),
            ],
        )
        .await;
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("day-of-week values are 1-7"),
        "{answer}"
    );
    for endpoint in [
        "cron/detail",
        "cron/info",
        "cron/start",
        "cron/stop",
        "cron/delete",
    ] {
        let answer = env.call(endpoint, &[("cron_id", "nothex")]).await;
        assert_eq!(error_code(&answer), "403.9", "{endpoint}: {answer}");
        let answer = env.call(endpoint, &[("cron_id", "00000000000000ff")]).await;
        assert_eq!(error_code(&answer), "411.1", "{endpoint}: {answer}");
    }

    let cron_id = add_cron(&env, "ip-a1", &param, EVERY_SECOND).await;
    assert_eq!(list(&env, &[]).await, vec![cron_id.clone()]);
    assert_eq!(list(&env, &[("ip", "ip-a1")]).await, vec![cron_id.clone()]);
    assert_eq!(
        list(&env, &[("ip", "a1")]).await,
        vec![cron_id.clone()],
        "by agent id too"
    );
    assert!(list(&env, &[("ip", "ip-a2")]).await.is_empty());
    wait_until(
        "the cron fired three times",
        Duration::from_secs(20),
        || async { read_lines(&file).len() >= 3 },
    )
    .await;
    wait_until(
        "its last result is noted",
        Duration::from_secs(10),
        || async {
            detail(&env, &cron_id).await["last_exec_result"]["result"]["worker_flag"] == "1"
        },
    )
    .await;
    let shown = detail(&env, &cron_id).await;
    assert_eq!(shown["ip"], "ip-a1");
    assert_eq!(shown["app"], "elvestest");
    assert_eq!(shown["func"], "log");
    assert_eq!(shown["param"], param.as_str());
    assert_eq!(shown["mode"], "NP");
    assert_eq!(shown["timeout"], 10);
    assert_eq!(shown["rule"], EVERY_SECOND);
    assert_eq!(shown["cron_flag"], 1);
    assert_eq!(shown["source"], "api");
    assert_eq!(shown["last_exec_result"]["flag"], "true");
    assert_eq!(shown["last_exec_result"]["error"], "");
    assert_eq!(
        shown["last_exec_result"]["result"]["worker_message"],
        "tick"
    );
    let last_exec_time = shown["last_exec_time"].as_str().unwrap();
    assert_eq!(last_exec_time.len(), "yyyy-mm-dd hh:mm:ss".len(), "{shown}");
    assert_eq!(
        env.call("cron/info", &[("cron_id", &cron_id)]).await["result"]["rule"],
        EVERY_SECOND
    );

    // The agent's detail lists its crons on request.
    let answer = env
        .call(
            "info/agents/detail",
            &[("ip", "ip-a1"), ("showcron", "true")],
        )
        .await;
    let agent = ok_result(&answer);
    assert_eq!(agent["ip"], "ip-a1");
    assert_eq!(agent["online"], true);
    assert!(agent["apps"]["elvestest"].is_string(), "{agent}");
    assert_eq!(agent["last_hb_time"].as_str().unwrap().len(), 19);
    assert_eq!(agent["cron_list"][0]["id"], cron_id.as_str());
    let answer = env.call("info/agents/detail", &[("ip", "ip-a1")]).await;
    assert!(ok_result(&answer).get("cron_list").is_none());
    let answer = env.call("info/agents/detail", &[("ip", "nobody")]).await;
    assert_eq!(error_code(&answer), "414.1");

    // A second cron on the agent, firing every second like the first: its firings show when the
    // center has been firing through a stretch of time in which the first would have fired.
    let store = Store::open(&env.database.url).unwrap();
    let witness_file = env.dir.path().join("witness.log");
    let witness = add_cron(
        &env,
        "ip-a1",
        &log_param(&witness_file, "witness"),
        EVERY_SECOND,
    )
    .await;
    let witness = TaskId::parse(&witness).unwrap();

    // Stopped: at most the firings already prepared still run, then nothing.
    ok_result(&env.call("cron/stop", &[("cron_id", &cron_id)]).await);
    let stopped = elves_shared::time::now_unix_ms();
    assert_eq!(detail(&env, &cron_id).await["cron_flag"], 0);
    let stopped_at = assert_fires_no_more(
        &env,
        &store,
        &witness,
        &file,
        stopped,
        "a stopped cron does not fire",
    )
    .await;

    ok_result(&env.call("cron/start", &[("cron_id", &cron_id)]).await);
    wait_until("it fires again", Duration::from_secs(20), || async {
        read_lines(&file).len() >= stopped_at + 2
    })
    .await;

    ok_result(&env.call("cron/delete", &[("cron_id", &cron_id)]).await);
    let deleted = elves_shared::time::now_unix_ms();
    let answer = env.call("cron/detail", &[("cron_id", &cron_id)]).await;
    assert_eq!(error_code(&answer), "411.1");
    assert_eq!(list(&env, &[]).await, vec![witness.to_string()]);
    assert_fires_no_more(
        &env,
        &store,
        &witness,
        &file,
        deleted,
        "a deleted cron does not fire",
    )
    .await;

    // Every change is in the audit log.
    wait_until("audit entries", Duration::from_secs(10), || async {
        store
            .recent_audit(50)
            .unwrap()
            .iter()
            .any(|row| row.entry.action == "cron/delete")
    })
    .await;
    let actions: BTreeSet<String> = store
        .recent_audit(50)
        .unwrap()
        .into_iter()
        .filter(|row| row.entry.target == cron_id)
        .map(|row| row.entry.action)
        .collect();
    for action in ["cron/add", "cron/stop", "cron/start", "cron/delete"] {
        assert!(
            actions.contains(action),
            "{action} missing from {actions:?}"
        );
    }
}

async fn two_centers_fire_each_second_exactly_once(setup: Setup) {
    let mut env = TestEnv::start_with(setup).await;
    let second_dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        env.dir.path().join("center.key"),
        second_dir.path().join("center.key"),
    )
    .unwrap();
    let mut config = env.config();
    config.data_dir = second_dir.path().to_path_buf();
    let second = crate::harness::start_center(config, env.participant_bus()).await;
    env.start_agent("a1").await;
    let file = env.dir.path().join("twice.log");
    let cron_id = add_cron(&env, "ip-a1", &log_param(&file, "tick"), EVERY_SECOND).await;
    let store = Store::open(&env.database.url).unwrap();
    let cron = TaskId::parse(&cron_id).unwrap();
    wait_until(
        "ten firings claimed between the two centers",
        Duration::from_secs(20),
        || async { store.cron_firings(&cron).unwrap().len() >= 10 },
    )
    .await;
    ok_result(&env.call("cron/stop", &[("cron_id", &cron_id)]).await);
    // Settled: the firings prepared before the stop (up to `prepare_ahead_ms` ahead) are due, and
    // each has its result.
    let prepared_until = elves_shared::time::now_unix_ms() + env.config().cron.prepare_ahead_ms;
    wait_until(
        "the results of the firings before the stop",
        Duration::from_secs(20),
        || async {
            elves_shared::time::now_unix_ms() > prepared_until
                && store
                    .cron_firings(&cron)
                    .unwrap()
                    .iter()
                    .all(|(_, task, _)| {
                        store
                            .get_task(task)
                            .unwrap()
                            .is_some_and(|task| task.worker_flag.is_some())
                    })
        },
    )
    .await;
    let n_lines = read_lines(&file).len();

    let firings = store.cron_firings(&cron).unwrap();
    let fire_times: Vec<u64> = firings.iter().map(|(at, _, _)| *at).collect();
    // One firing per second, none missing, none twice.
    for pair in fire_times.windows(2) {
        assert_eq!(pair[1] - pair[0], 1_000, "{fire_times:?}");
    }
    let tasks: Vec<String> = firings
        .iter()
        .map(|(at, task_id, center)| {
            let task = store.get_task(task_id).unwrap().unwrap();
            format!(
                "{at} {center} {} {:?} {:?} {}",
                task.status, task.worker_flag, task.worker_message, task.error
            )
        })
        .collect();
    assert_eq!(
        n_lines,
        fire_times.len(),
        "each firing ran exactly once: {tasks:#?}"
    );
    assert_eq!(env.stats("a1").ran as usize, fire_times.len());
    let task_ids: BTreeSet<&TaskId> = firings.iter().map(|(_, task, _)| task).collect();
    assert_eq!(task_ids.len(), firings.len());
    for task_id in task_ids {
        let task = store.get_task(task_id).unwrap().unwrap();
        assert_eq!(task.task_type, TaskType::Cron);
    }
    std::thread::spawn(move || second.stop()).join().unwrap();
}

async fn definition_files_are_loaded_and_reloaded(setup: Setup) {
    let mut env = TestEnv::start_with(setup).await;
    env.start_agent("a1").await;
    let dir = env.dir.path().join("cron.d");
    std::fs::create_dir_all(&dir).unwrap();
    let file = env.dir.path().join("files.log");
    let entry = |id: &str, rule: &str, line: &str| {
        format!(
            "[[cron]]\nid = \"{id}\"\nagent = \"ip-a1\"\napp = \"elvestest\"\nfunc = \"log\"\n\
             param = '{}'\nrule = \"{rule}\"\ntimeout = 10\n\n",
            log_param(&file, line)
        )
    };
    std::fs::write(
        dir.join("a.toml"),
        entry("every-second", EVERY_SECOND, "file") + &entry("hourly", "0 0 * * * ?", "hourly"),
    )
    .unwrap();
    let answer = env.call("cron/reload", &[]).await;
    let report = ok_result(&answer);
    assert_eq!(report["created"].as_array().unwrap().len(), 2, "{report}");
    assert!(report["errors"].as_array().unwrap().is_empty(), "{report}");
    let every_second = elves_center::cron_files::cron_id_of("every-second").to_string();
    let hourly = elves_center::cron_files::cron_id_of("hourly").to_string();
    let mut ids = list(&env, &[]).await;
    ids.sort();
    let mut expected = vec![every_second.clone(), hourly.clone()];
    expected.sort();
    assert_eq!(ids, expected);
    let shown = detail(&env, &every_second).await;
    assert_eq!(
        (
            shown["source"].as_str(),
            shown["file"].as_str(),
            shown["entry"].as_str()
        ),
        (Some("file"), Some("a.toml"), Some("every-second"))
    );
    wait_until("the file cron fires", Duration::from_secs(20), || async {
        read_lines(&file)
            .iter()
            .filter(|line| *line == "file")
            .count()
            >= 2
    })
    .await;
    let answer = env.call("cron/delete", &[("cron_id", &hourly)]).await;
    assert_eq!(error_code(&answer), "403.9", "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("a.toml"),
        "{answer}"
    );

    // Change one, drop one, add one; a broken entry and a broken file are named, the rest loads.
    std::fs::write(
        dir.join("a.toml"),
        entry("every-second", "0/2 * * * * ?", "file") + &entry("daily", "0 0 3 * * ?", "daily")
            + "[[cron]]\nid = \"broken\"\nagent = \"ip-a1\"\napp = \"elvestest\"\nfunc = \"log\"\nrule = \"0 0 3 * *\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("b.toml"), "[[cron]\nnot toml").unwrap();
    // `elves cron reload`, as an operator would run it against this center.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_elves"))
        .args([
            "cron",
            "reload",
            "--url",
            &env.base_url,
            "--auth-id",
            AUTH_ID,
            "--auth-key",
            AUTH_KEY,
        ])
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    let report = ok_result(&printed);
    let daily = elves_center::cron_files::cron_id_of("daily").to_string();
    assert_eq!(report["created"], serde_json::json!([daily]), "{report}");
    assert_eq!(
        report["updated"],
        serde_json::json!([every_second]),
        "{report}"
    );
    assert_eq!(report["removed"], serde_json::json!([hourly]), "{report}");
    let errors = report["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{report}");
    assert_eq!(
        (errors[0]["file"].as_str(), errors[0]["entry"].as_str()),
        (Some("a.toml"), Some("broken"))
    );
    assert!(
        errors[0]["error"]
            .as_str()
            .unwrap()
            .contains("6 or 7 fields"),
        "{report}"
    );
    assert_eq!(errors[1]["file"], "b.toml");
    assert_eq!(detail(&env, &every_second).await["rule"], "0/2 * * * * ?");
    let answer = env.call("cron/detail", &[("cron_id", &hourly)]).await;
    assert_eq!(error_code(&answer), "411.1");

    // A center starting with these files loads them itself.
    std::fs::write(
        dir.join("c.toml"),
        entry("at-start", "0 0 4 * * ?", "start"),
    )
    .unwrap();
    let mut config = env.config();
    let second_dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        env.dir.path().join("center.key"),
        second_dir.path().join("center.key"),
    )
    .unwrap();
    config.data_dir = second_dir.path().to_path_buf();
    let second = crate::harness::start_center(config, env.participant_bus()).await;
    let at_start = elves_center::cron_files::cron_id_of("at-start").to_string();
    wait_until(
        "the new file's cron exists",
        Duration::from_secs(20),
        || async { list(&env, &[]).await.contains(&at_start) },
    )
    .await;
    std::thread::spawn(move || second.stop()).join().unwrap();
}

async fn a_firing_missed_while_no_center_ran_runs_once(setup: Setup) {
    let mut env = TestEnv::start_with(setup).await;
    env.start_agent("a1").await;
    let file = env.dir.path().join("missed.log");
    // Four firings at chosen seconds (the rule repeats them each minute; the test is over
    // before): the first 2 to 3 s from now, then gaps that leave a center time to stop after one
    // firing, or to restart and stop again, before the next is prepared.
    let first = (elves_shared::time::now_unix_ms() / 1_000 + 3) * 1_000;
    let (second, third, fourth) = (first + 5_000, first + 14_000, first + 20_000);
    let mut seconds: Vec<u64> = [first, second, third, fourth]
        .iter()
        .map(|at| at / 1_000 % 60)
        .collect();
    seconds.sort_unstable();
    let seconds: Vec<String> = seconds.iter().map(u64::to_string).collect();
    let rule = format!("{} * * * * ?", seconds.join(","));
    let cron_id = add_cron(&env, "ip-a1", &log_param(&file, "tick"), &rule).await;
    let store = Store::open(&env.database.url).unwrap();
    let cron = TaskId::parse(&cron_id).unwrap();
    let firings = || store.cron_firings(&cron).unwrap();
    wait_until("it fires", Duration::from_secs(20), || async {
        !read_lines(&file).is_empty()
    })
    .await;
    assert_eq!(firings()[0].0, first);

    // Down over the second firing, back 3 s after it: within the 60 s threshold, it runs late.
    stop_center(&mut env).await;
    sleep_until_unix_ms(second + 3_000).await;
    restart_center(&mut env, 60).await;
    wait_until(
        "the missed firing runs",
        Duration::from_secs(20),
        || async { firings().iter().any(|(at, _, _)| *at == second) },
    )
    .await;
    let (_, late_task, _) = firings()
        .into_iter()
        .find(|(at, _, _)| *at == second)
        .unwrap();
    let late = store.get_task(&late_task).unwrap().unwrap();
    assert!(
        late.created_at >= second + 2_000,
        "it ran late, as a misfire"
    );
    wait_until("it ran", Duration::from_secs(20), || async {
        read_lines(&file).len() == 2
    })
    .await;

    // Down over the third firing, back 4 s after it with a 2 s threshold: skipped.
    stop_center(&mut env).await;
    sleep_until_unix_ms(third + 4_000).await;
    restart_center(&mut env, 2).await;
    wait_until("the fourth firing", Duration::from_secs(20), || async {
        firings().iter().any(|(at, _, _)| *at == fourth)
    })
    .await;
    let fire_times: Vec<u64> = firings().iter().map(|(at, _, _)| *at).collect();
    assert_eq!(
        fire_times,
        vec![first, second, fourth],
        "the third was skipped"
    );
}

async fn stop_center(env: &mut TestEnv) {
    let center = env.center.take().unwrap();
    tokio::task::spawn_blocking(move || center.stop())
        .await
        .unwrap();
}

async fn restart_center(env: &mut TestEnv, misfire_threshold_s: u64) {
    let mut config = env.config();
    config.cron.misfire_threshold_s = misfire_threshold_s;
    let center = crate::harness::start_center(config, env.bus.clone()).await;
    env.base_url = format!("http://{}", center.http_addr);
    env.center = Some(center);
}

/// The center reads the wall clock (nothing to inject): a firing is missed only once the real
/// time has passed it with no center running.
async fn sleep_until_unix_ms(at: u64) {
    let now = elves_shared::time::now_unix_ms();
    tokio::time::sleep(Duration::from_millis(at.saturating_sub(now))).await;
}

async fn agent_local_crons_run_and_report(setup: Setup) {
    let mut env = TestEnv::start_with(setup).await;
    let file = env.dir.path().join("local.log");
    let processor_bus = env.participant_bus();
    let mut processor = processor_bus
        .consume(
            QueueSpec {
                name: processor_bus.queue_name("processor.elvestest"),
                bindings: vec![routing::processor("elvestest")],
                durable: false,
            },
            16,
        )
        .await
        .unwrap();
    let mut config = env.agent_config("a1");
    let cron_file = env.dir.path().join("cron.json");
    let entries = serde_json::json!({
        "np-tick": {"Flag": 1, "Comment": "every second", "App": "elvestest", "Func": "log",
                    "Param": log_param(&file, "np"), "Timeout": 10, "Proxy": "", "Mode": "NP",
                    "Rule": EVERY_SECOND},
        "p-tick": {"Flag": "1", "App": "elvestest", "Func": "log", "Param": log_param(&file, "p"),
                   "Mode": "P", "Rule": EVERY_SECOND},
        "off": {"Flag": 0, "App": "elvestest", "Func": "log", "Param": log_param(&file, "off"),
                "Rule": EVERY_SECOND}
    });
    std::fs::write(&cron_file, entries.to_string()).unwrap();
    config.cron_file = cron_file;
    env.start_agent_with(config).await;
    wait_until(
        "both local crons ran twice",
        Duration::from_secs(20),
        || async {
            let lines = read_lines(&file);
            lines.iter().filter(|line| *line == "np").count() >= 2
                && lines.iter().filter(|line| *line == "p").count() >= 2
        },
    )
    .await;
    assert!(!read_lines(&file).iter().any(|line| line == "off"));
    let delivery = tokio::time::timeout(Duration::from_secs(10), processor.next())
        .await
        .unwrap()
        .unwrap();
    let result: JobResult = wire::decode(&delivery.message.body).unwrap();
    delivery.ack().await;
    assert_eq!(result.task_type, TaskType::Cron);
    assert_eq!(result.app, "elvestest");
    assert_eq!(result.worker_flag, 1);
    assert_eq!(result.worker_message, "p");
    let stats = env.stats("a1");
    assert!(stats.cron_runs >= 4, "{stats:?}");
    assert_eq!(stats.cron_failures, 0);
    // The center took the results of tasks it never sent (center.result drains, nothing spools).
    wait_until("results published", Duration::from_secs(10), || async {
        env.stats("a1").results_published >= 4
    })
    .await;
    assert_eq!(env.stats("a1").results_spooled, 0);
    let _ = error_code(&Value::Null);
}

async fn a_firing_nobody_answers_is_noted_as_failed(setup: Setup) {
    let mut env = TestEnv::start_with(setup).await;
    env.start_agent("a1").await;
    // Its queue stays: the firings are delivered, and nothing answers them.
    env.stop_agent("a1").await;
    let answer = env
        .call(
            "cron/add",
            &[
                ("ip", "ip-a1"),
                ("app", "elvestest"),
                ("func", "ok"),
                ("rule", EVERY_SECOND),
                ("timeout", "1"),
            ],
        )
        .await;
    let cron_id = ok_result(&answer)["id"].as_str().unwrap().to_string();
    // A firing's deadline is 1 s of timeout plus the (test-shortened) kill grace and dispatch
    // allowance; the queue's tick then settles it.
    wait_until(
        "a firing past its deadline is the cron's last result",
        Duration::from_secs(60),
        || async {
            detail(&env, &cron_id).await["last_exec_result"]["result"]["worker_flag"] == "-1"
        },
    )
    .await;
    let shown = detail(&env, &cron_id).await;
    assert_eq!(shown["last_exec_result"]["flag"], "false", "{shown}");
    assert!(
        shown["last_exec_result"]["error"]
            .as_str()
            .unwrap()
            .contains("deadline"),
        "{shown}"
    );
    let answer = env.call("cron/stop", &[("cron_id", &cron_id)]).await;
    ok_result(&answer);
}
