//! The README's first command: `elves up` serves the API with a local agent over the
//! in-process bus, and the call it prints, pasted into a shell in the same directory, runs
//! apptest with the binary already built. Uploaded apps go under the data directory, the
//! bundled examples stay as they are, and a cron due at start reaches the local agent.

use crate::harness::wait_until;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Kills `elves up` if the test fails before stopping it.
struct Up(std::process::Child);

impl Drop for Up {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("apps")
}

/// Starts `elves up` in `dir` with the checkout's examples and returns what it printed up to
/// "stop with".
async fn start_up(dir: &Path) -> (Up, Vec<String>) {
    let mut up = Up(Command::new(env!("CARGO_BIN_EXE_elves"))
        .args(["up", "--listen", "127.0.0.1:0", "--examples-dir"])
        .arg(examples_dir())
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap());
    let stdout = BufReader::new(up.0.stdout.take().unwrap());
    let printed: Vec<String> = tokio::task::spawn_blocking(move || {
        stdout
            .lines()
            .map_while(Result::ok)
            .take_while(|line| !line.starts_with("stop with"))
            .collect()
    })
    .await
    .unwrap();
    (up, printed)
}

/// Runs `elves <args>` in `dir` and parses its JSON answer (null when it printed none).
fn elves(dir: &Path, args: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_elves"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    serde_json::from_slice(&output.stdout).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elves_up_serves_the_call_it_prints() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, printed) = start_up(dir.path()).await;
    assert!(printed
        .iter()
        .any(|line| line.starts_with("  api:      http://127.0.0.1:")));
    let call_line = printed
        .iter()
        .skip_while(|line| !line.starts_with("try, from this directory"))
        .nth(1)
        .unwrap_or_else(|| panic!("no call to paste in {printed:#?}"));
    assert!(
        call_line.contains(" call rt/exec ip=127.0.0.1 app=apptest func=helloword")
            && call_line.ends_with("'param={\"my\":\"hello elves\"}'"),
        "{call_line}"
    );
    // Not a second build: the line runs the binary that is already running.
    assert!(!call_line.contains("cargo"), "{call_line}");

    // The printed call, pasted into a shell in the same directory. The local agent is
    // online after its first heartbeat.
    let call = || {
        let output = Command::new("sh")
            .args(["-c", call_line.trim()])
            .current_dir(dir.path())
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap_or_default()
    };
    wait_until(
        "the printed call runs apptest",
        Duration::from_secs(30),
        || async {
            let answer = call();
            answer["result"]["worker_message"] == "hello elves"
        },
    )
    .await;
    let answer = call();
    assert_eq!(answer["flag"], "true", "{answer}");
    assert_eq!(answer["result"]["worker_flag"], "1", "{answer}");

    // The printed dashboard URL serves the sign-in page, and the printed key signs in.
    let web = printed
        .iter()
        .find_map(|line| line.strip_prefix("  web:      "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no web line in {printed:#?}"))
        .to_string();
    let auth_key = printed
        .iter()
        .find_map(|line| line.strip_prefix("  auth_key: "))
        .unwrap()
        .to_string();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let sign_in_page = http.get(format!("{web}login")).send().await.unwrap();
    assert_eq!(sign_in_page.status(), 200);
    assert!(sign_in_page
        .text()
        .await
        .unwrap()
        .contains("Sign in to elves"));
    let signed_in = http
        .post(format!("{web}login"))
        .form(&[("auth_id", "admin"), ("auth_key", auth_key.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    assert_eq!(signed_in.headers()["location"], "/ui/");
    assert!(signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("HttpOnly"));

    // ctrl-c stops it cleanly.
    let pid = libc::pid_t::try_from(up.0.id()).unwrap();
    // SAFETY: kill(2) with a pid we own and a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let status = tokio::task::spawn_blocking(move || up.0.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_go_under_the_data_dir_and_the_examples_stay_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, _) = start_up(dir.path()).await;
    let app_dir = dir.path().join("source/uprelease");
    std::fs::create_dir_all(&app_dir).unwrap();
    std::fs::write(
        app_dir.join("app-worker"),
        "#!/bin/sh\necho '<ElvesWFlag>true</ElvesWFlag><ElvesWResult>up</ElvesWResult>'\n",
    )
    .unwrap();
    let mut permissions = std::fs::metadata(app_dir.join("app-worker"))
        .unwrap()
        .permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(app_dir.join("app-worker"), permissions).unwrap();
    let packed = Command::new(env!("CARGO_BIN_EXE_elves"))
        .args(["app", "pack"])
        .arg(&app_dir)
        .args(["--version", "1.0"])
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(packed.success());
    let pushed = elves(dir.path(), &["app", "push", "uprelease_1.0.zip"]);
    assert_eq!(pushed["flag"], "true", "{pushed}");

    let detail = || elves(dir.path(), &["call", "info/agents/detail", "ip=127.0.0.1"]);
    wait_until(
        "the local agent reports the uploaded app",
        Duration::from_secs(30),
        || async { detail()["result"]["apps"]["uprelease"] == "1.0" },
    )
    .await;
    let apps = detail()["result"]["apps"].clone();
    assert!(apps.get("apptest").is_some(), "the example runs: {apps}");
    assert!(
        apps.get("sdk").is_none(),
        "the SDK folder is no app: {apps}"
    );
    assert!(dir.path().join("data/apps/uprelease/app-worker").is_file());
    assert!(
        !examples_dir().join("uprelease").exists(),
        "nothing is installed into the checkout's apps/"
    );
    let ran = elves(
        dir.path(),
        &[
            "call",
            "rt/exec",
            "ip=127.0.0.1",
            "app=uprelease",
            "func=any",
        ],
    );
    assert_eq!(ran["result"]["worker_message"], "up", "{ran}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_due_at_start_reaches_the_local_agent() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("config/cron.d")).unwrap();
    std::fs::write(
        dir.path().join("config/cron.d/first.toml"),
        r#"
[[cron]]
id = "every-second"
agent = "127.0.0.1"
app = "apptest"
func = "helloword"
param = '{"my": "from cron"}'
rule = "* * * * * ?"
"#,
    )
    .unwrap();
    let (_up, _) = start_up(dir.path()).await;
    let store = elves_center::store::Store::open(&format!(
        "sqlite://{}",
        dir.path().join("data/elves.db").display()
    ))
    .unwrap();
    // The first firings after start, in fire order, once two of them are settled.
    let settled = || {
        let crons = store.list_crons().unwrap();
        let Some(cron) = crons.first() else {
            return Vec::new();
        };
        let mut firings = store.cron_firings(&cron.id).unwrap();
        firings.sort_by_key(|(fire_time, _, _)| *fire_time);
        firings
            .iter()
            .take(2)
            .filter_map(|(_, task_id, _)| store.get_task(task_id).unwrap())
            .filter(|task| task.worker_flag.is_some())
            .collect::<Vec<_>>()
    };
    wait_until(
        "two cron firings settled",
        Duration::from_secs(30),
        || async { settled().len() == 2 },
    )
    .await;
    for task in settled() {
        assert_eq!(task.worker_flag, Some(1), "{task:?}");
        assert_eq!(
            task.worker_message.as_deref(),
            Some("from cron"),
            "{task:?}"
        );
        assert!(task.error.is_empty(), "{task:?}");
    }
}
