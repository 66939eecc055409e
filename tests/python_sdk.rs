//! The Python client SDK (`apps/sdk/python`, package `elves_client`) against a running center:
//! pip-installed into a fresh venv (from a copy, so the build leaves nothing in the source
//! tree; `--no-index --no-build-isolation`, so no network: the venv sees the site packages of
//! a Python that has setuptools and wheel, e.g. Debian's python3-wheel), then its unittest suite
//! (`apps/sdk/python/tests`) runs with that venv's Python: signing, an RT call, a queue with
//! dependencies waited to its end, typed error codes, live output followed, and every route of
//! the center's OpenAPI document having an SDK method.

use crate::harness::{copy_dir, repo_root, BusKind, TestEnv, AUTH_ID, AUTH_KEY};
use std::path::Path;
use std::process::Output;
use std::time::Duration;
use tokio::process::Command;

/// Runs `command` to its end (at most `limit`), failing the test with its output otherwise.
async fn run(what: &str, command: &mut Command, limit: Duration) -> Output {
    let output = tokio::time::timeout(limit, command.kill_on_drop(true).output())
        .await
        .unwrap_or_else(|_| panic!("{what}: still running after {limit:?}"))
        .unwrap_or_else(|err| panic!("{what}: could not start: {err}"));
    assert!(
        output.status.success(),
        "{what}: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Pythons that may build the package offline: the first with setuptools and wheel is used.
const BUILD_PYTHONS: [&str; 2] = ["python3", "/usr/bin/python3"];

async fn python_that_builds_wheels() -> &'static str {
    for python in BUILD_PYTHONS {
        let probe = Command::new(python)
            .args(["-c", "import setuptools, wheel"])
            .kill_on_drop(true)
            .output()
            .await;
        if probe.is_ok_and(|output| output.status.success()) {
            return python;
        }
    }
    panic!(
        "none of {BUILD_PYTHONS:?} has setuptools and wheel, which installing the SDK without \
         network needs: apt-get install python3-wheel (or pip install wheel)"
    );
}

/// A venv under `dir` with the SDK installed from a copy of `apps/sdk/python`; its python.
async fn venv_with_the_sdk(dir: &Path) -> std::path::PathBuf {
    let source = dir.join("sdk-source");
    copy_dir(&repo_root().join("apps/sdk/python"), &source);
    let venv = dir.join("venv");
    run(
        "python3 -m venv",
        Command::new(python_that_builds_wheels().await)
            .args(["-m", "venv", "--system-site-packages"])
            .arg(&venv),
        Duration::from_secs(120),
    )
    .await;
    let python = venv.join("bin/python");
    run(
        "pip install apps/sdk/python",
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-index",
                "--no-build-isolation",
                "--disable-pip-version-check",
            ])
            .arg(&source)
            .env("PIP_NO_INPUT", "1"),
        Duration::from_secs(180),
    )
    .await;
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_works_against_a_running_center() {
    let mut env = TestEnv::start(BusKind::Rabbit).await;
    env.start_agent("a1").await;
    let python = venv_with_the_sdk(env.dir.path()).await;

    let tests = repo_root().join("apps/sdk/python/tests");
    let output = run(
        "the SDK's unittest suite",
        Command::new(&python)
            .args(["-m", "unittest", "discover", "-v", "-s"])
            .arg(&tests)
            .arg("-t")
            .arg(&tests)
            // Outside the source tree, so that `import elves_client` is the installed package.
            .current_dir(env.dir.path())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("ELVES_URL", &env.base_url)
            .env("ELVES_AUTH_ID", AUTH_ID)
            .env("ELVES_AUTH_KEY", AUTH_KEY)
            .env("ELVES_TEST_AGENT", "ip-a1"),
        Duration::from_secs(300),
    )
    .await;
    let report = String::from_utf8_lossy(&output.stderr);
    println!("{report}");
    let ran: usize = report
        .lines()
        .find_map(|line| line.strip_prefix("Ran "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no unittest summary in:\n{report}"));
    assert!(ran >= 17, "only {ran} SDK tests ran:\n{report}");
    assert!(
        !report.contains("skipped"),
        "an SDK test was skipped:\n{report}"
    );
}
