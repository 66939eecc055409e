//! SIGHUP reloads the cron definition files of a center that runs as its own process (the
//! way operators run it), over RabbitMQ: an entry added to a file appears, a changed rule is
//! taken, a removed entry is deleted, and the center keeps serving throughout.

use crate::harness::{wait_until, BusKind, DbKind, Setup, TestEnv};
use crate::queue::ok_result;
use elves_center::cron_files::cron_id_of;
use serde_json::Value;
use std::time::Duration;

fn entry(id: &str, rule: &str) -> String {
    format!(
        "[[cron]]\nid = \"{id}\"\nagent = \"ip-a1\"\napp = \"elvestest\"\nfunc = \"log\"\n\
         param = '{{}}'\nrule = \"{rule}\"\ntimeout = 10\n\n"
    )
}

async fn cron_ids(env: &TestEnv) -> Vec<String> {
    let answer = env.call("cron/list", &[]).await;
    let mut ids: Vec<String> = ok_result(&answer)
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

async fn rule_of(env: &TestEnv, cron_id: &str) -> Option<String> {
    let answer: Value = env.call("cron/detail", &[("cron_id", cron_id)]).await;
    answer["result"]["rule"].as_str().map(str::to_string)
}

fn hang_up(env: &TestEnv) {
    let pid = env.child_center.as_ref().unwrap().id();
    let pid = libc::pid_t::try_from(pid).unwrap();
    // SAFETY: kill(2) with a pid we own and a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_definition_files() {
    let mut env = TestEnv::start_with_child_center(Setup {
        bus: BusKind::Rabbit,
        db: DbKind::Sqlite,
    })
    .await;
    env.start_agent("a1").await;
    let dir = env.dir.path().join("cron.d");
    std::fs::create_dir_all(&dir).unwrap();
    assert!(cron_ids(&env).await.is_empty());

    let nightly = cron_id_of("nightly").to_string();
    let hourly = cron_id_of("hourly").to_string();
    std::fs::write(
        dir.join("ops.toml"),
        entry("nightly", "0 0 2 * * ?") + &entry("hourly", "0 0 * * * ?"),
    )
    .unwrap();
    hang_up(&env);
    let mut both = vec![nightly.clone(), hourly.clone()];
    both.sort();
    wait_until(
        "SIGHUP loads both entries",
        Duration::from_secs(20),
        || async { cron_ids(&env).await == both },
    )
    .await;

    std::fs::write(dir.join("ops.toml"), entry("nightly", "0 30 3 * * ?")).unwrap();
    hang_up(&env);
    wait_until(
        "SIGHUP removes one entry and changes the other",
        Duration::from_secs(20),
        || async { cron_ids(&env).await == vec![nightly.clone()] },
    )
    .await;
    assert_eq!(
        rule_of(&env, &nightly).await.as_deref(),
        Some("0 30 3 * * ?")
    );
    assert!(
        env.child_center
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none(),
        "the center survived its SIGHUPs"
    );
}
