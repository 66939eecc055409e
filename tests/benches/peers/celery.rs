//! Celery 5 on the same broker with the same worker, and the plain Python client: a virtual
//! environment in `target/peers-venv` (made once, Celery installed into it), a Celery worker
//! (prefork pool) as a child process in its own process group, and `peers/client.py` for the
//! calls, whose figures come back as JSON on its last line of output.

use super::{Drain, RtSamples};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// What one Python client run may take at most, beyond which it is killed.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(600);
/// Making the virtual environment and installing Celery.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(900);

/// The helper scripts' directory: `celery_app.py`, `client.py`.
pub fn scripts_dir(root: &Path) -> PathBuf {
    root.join("tests/benches/peers")
}

/// `target/peers-venv/bin/python` with Celery importable; makes the environment when missing.
pub async fn ensure_venv(root: &Path) -> PathBuf {
    let venv = root.join("target/peers-venv");
    let python = venv.join("bin/python");
    if python.exists() && run_ok(&python, &["-c", "import celery"], INSTALL_TIMEOUT).await {
        return python;
    }
    eprintln!("making {} and installing Celery 5 into it", venv.display());
    let venv_arg = venv.display().to_string();
    assert!(
        run_ok(
            Path::new("python3"),
            &["-m", "venv", &venv_arg],
            INSTALL_TIMEOUT
        )
        .await,
        "python3 -m venv {venv_arg} failed"
    );
    assert!(
        run_ok(
            &python,
            &["-m", "pip", "install", "--quiet", "celery>=5,<6"],
            INSTALL_TIMEOUT
        )
        .await,
        "installing Celery into {venv_arg} failed"
    );
    python
}

async fn run_ok(program: &Path, args: &[&str], timeout: Duration) -> bool {
    let mut command = tokio::process::Command::new(program);
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    matches!(
        tokio::time::timeout(timeout, command.status()).await,
        Ok(Ok(status)) if status.success()
    )
}

/// What the Python client runs against: the scripts, the interpreter and their environment.
#[derive(Clone)]
pub struct Python {
    pub python: PathBuf,
    pub scripts: PathBuf,
    /// `PEERS_*` variables: the broker, the Celery queue, the worker.
    pub env: Vec<(String, String)>,
}

impl Python {
    /// Runs `client.py <args>` to its end (bounded) and returns the JSON of its last line.
    pub async fn client(&self, args: &[&str]) -> Value {
        let mut command = tokio::process::Command::new(&self.python);
        command
            .arg(self.scripts.join("client.py"))
            .args(args)
            .current_dir(&self.scripts)
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let child = command.spawn().expect("the Python client starts");
        let output = tokio::time::timeout(CLIENT_TIMEOUT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("client.py {args:?} did not end within {CLIENT_TIMEOUT:?}"))
            .expect("the Python client's output");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "client.py {args:?} failed ({}): {stdout}",
            output.status
        );
        stdout
            .lines()
            .last()
            .and_then(|line| serde_json::from_str(line).ok())
            .unwrap_or_else(|| panic!("client.py {args:?} printed no JSON: {stdout}"))
    }

    /// The latencies a client run printed as `{"ms": [...]}`.
    pub async fn rt(&self, args: &[&str]) -> RtSamples {
        let answer = self.client(args).await;
        let samples: Vec<f64> = answer["ms"]
            .as_array()
            .map(|values| values.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        RtSamples(samples)
    }

    /// Interpreter and Celery versions, as `client.py versions` prints them.
    pub async fn versions(&self) -> String {
        let answer = self.client(&["versions"]).await;
        format!(
            "Python {}, Celery {}, kombu {}",
            answer["python"].as_str().unwrap_or("?"),
            answer["celery"].as_str().unwrap_or("?"),
            answer["kombu"].as_str().unwrap_or("?")
        )
    }
}

/// A Celery worker with a prefork pool of `concurrency`, in its own process group so that its
/// pool processes are killed with it.
pub struct CeleryWorker {
    child: Option<std::process::Child>,
}

impl CeleryWorker {
    pub fn start(python: &Python, concurrency: usize, queue: &str) -> CeleryWorker {
        use std::os::unix::process::CommandExt;
        let mut command = std::process::Command::new(&python.python);
        command
            .args([
                "-m",
                "celery",
                "-A",
                "celery_app",
                "worker",
                "--pool",
                "prefork",
            ])
            .arg("-c")
            .arg(concurrency.to_string())
            .args(["-Q", queue])
            .args([
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                "WARNING",
            ])
            .current_dir(&python.scripts)
            .envs(python.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0);
        CeleryWorker {
            child: Some(command.spawn().expect("the Celery worker starts")),
        }
    }

    /// `Err` when the worker has exited.
    pub fn alive(&mut self) -> Result<(), String> {
        match self.child.as_mut().map(std::process::Child::try_wait) {
            Some(Ok(None)) => Ok(()),
            Some(Ok(Some(status))) => Err(format!("the Celery worker exited ({status})")),
            _ => Err("the Celery worker is gone".to_string()),
        }
    }

    /// A warm shutdown (SIGTERM, as Celery expects), then SIGKILL to the group after 20 s.
    pub async fn stop(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(&child, libc::SIGTERM, false);
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if matches!(child.try_wait(), Ok(None)) {
            eprintln!("the Celery worker did not stop within 20 s; killing it");
        }
        // Pool processes left behind by a worker that died go with the group.
        signal(&child, libc::SIGKILL, true);
        let _ = child.wait();
    }
}

/// Sends `signal` to `child`, or to its whole process group, unless it was reaped.
fn signal(child: &std::process::Child, signal: i32, group: bool) {
    let Ok(pid) = i32::try_from(child.id()) else {
        return;
    };
    let target = if group { -pid } else { pid };
    // SAFETY: kill(2) on our own child (or its group, which it leads), not reaped yet: its pid
    // (and so its group id) cannot belong to another process.
    unsafe {
        libc::kill(target, signal);
    }
}

impl Drop for CeleryWorker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGKILL, true);
            let _ = child.wait();
        }
    }
}

/// `calls` Celery calls one at a time (`delay().get()`) after `warmup`; the first warm-up call
/// also waits for the worker to be ready.
pub async fn rt(python: &Python, warmup: usize, calls: usize) -> RtSamples {
    python
        .rt(&[
            "celery-rt",
            "--warmup",
            &warmup.to_string(),
            "--calls",
            &calls.to_string(),
        ])
        .await
}

/// `tasks` `delay()`s, then every result: from the first send to the last result.
pub async fn drain(python: &Python, tasks: usize) -> Drain {
    let answer = python
        .client(&["celery-drain", "--tasks", &tasks.to_string()])
        .await;
    let seconds = answer["seconds"]
        .as_f64()
        .expect("celery-drain printed its seconds");
    let ok = answer["ok"].as_u64().unwrap_or(0);
    assert_eq!(ok, tasks as u64, "every Celery task succeeded");
    Drain { tasks, seconds }
}
