//! The README's first command: `elves up` serves the API with a local agent over the
//! in-process bus, and the call it prints, run from the same directory, runs apptest.

use crate::harness::wait_until;
use std::io::{BufRead, BufReader};
use std::path::Path;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elves_up_serves_the_call_it_prints() {
    let dir = tempfile::tempdir().unwrap();
    let apps = Path::new(env!("CARGO_MANIFEST_DIR")).join("apps");
    let mut up = Up(Command::new(env!("CARGO_BIN_EXE_elves"))
        .args(["up", "--listen", "127.0.0.1:0", "--apps-dir"])
        .arg(&apps)
        .current_dir(dir.path())
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
    assert!(printed
        .iter()
        .any(|line| line.starts_with("  api:      http://127.0.0.1:")));
    let call_line = printed
        .iter()
        .find(|line| {
            line.trim_start()
                .starts_with("cargo run -q -- call rt/exec")
        })
        .unwrap_or_else(|| panic!("no call to paste in {printed:#?}"));
    assert!(
        call_line.contains("'param={\"my\":\"hello elves\"}'"),
        "{call_line}"
    );

    // The printed call, as a user pastes it (the `cargo run -q --` part is the binary itself).
    let call = || {
        let output = Command::new(env!("CARGO_BIN_EXE_elves"))
            .args([
                "call",
                "rt/exec",
                "ip=127.0.0.1",
                "app=apptest",
                "func=helloword",
                r#"param={"my":"hello elves"}"#,
            ])
            .current_dir(dir.path())
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap_or_default()
    };
    // The local agent is online after its first heartbeat.
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

    // ctrl-c stops it cleanly.
    let pid = libc::pid_t::try_from(up.0.id()).unwrap();
    // SAFETY: kill(2) with a pid we own and a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let status = tokio::task::spawn_blocking(move || up.0.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
}
