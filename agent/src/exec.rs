//! Child process execution with bounded time, bounded output and no leftovers.
//!
//! Every child runs in its own process group, so that a timeout, a cancellation (dropping
//! the [`run`] future) or a normal exit can signal everything the child started.
//! Output beyond the caps is read and thrown away (a child never blocks on a full pipe) and
//! counted.
//! The child's environment is the agent's own minus every `ELVES_*` variable, because those
//! carry the agent's configuration (broker URL, keys), plus the variables of the job.
//!
//! Every child also dies with the agent: it asks the kernel for SIGKILL when its parent goes
//! (`PR_SET_PDEATHSIG`), so that an agent killed with SIGKILL leaves no worker running that a
//! restarted agent could not account for (the runtime finds any grandchild again by its
//! `ELVES_TASK_ID`).
//!
//! Time is the worker's own: the agent itself may be stopped (SIGSTOP, a frozen VM) while a
//! child runs. The kernel, not the clock, says whether a child ended, so a child that exited
//! while the agent was stopped is reported as exited with its output, never as timed out, and
//! its run time does not include the agent's stall (see [`run`]).
//!
//! This module knows nothing about the ELVES worker protocol; `worker.rs` does.
//! It does not reap orphans that the child re-parented to init: that is init's job.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use crate::output::OutputTap;
use elves_shared::wire::OutputStream;
use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Child;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long pipe reading may go on after the child exited and its group was killed.
/// Only a process that left the group (for example with `setsid`) can still hold a pipe
/// open by then, and it must not hold up the result.
const PIPE_DRAIN: Duration = Duration::from_millis(100);
/// After the stop, what is already in a pipe is read in at most this many chunks.
const MAX_READS_AFTER_STOP: usize = 64;

/// How long to wait for the kernel to deliver a SIGKILL before giving up on reaping.
/// Past this the child is in uninterruptible sleep; tokio reaps it later (`kill_on_drop`).
const REAP_AFTER_KILL: Duration = Duration::from_secs(5);

const READ_CHUNK: usize = 16 * 1024;

/// How often a running child is checked on. Besides the timeout, this is how a stall of the
/// agent is told apart from a long run: an exit seen much later than the last check found the
/// child alive means the agent was not running in between.
const LIVENESS_CHECK: Duration = Duration::from_millis(200);
/// A gap between checks longer than this is a stall of the agent, not scheduling noise.
const STALL: Duration = Duration::from_secs(1);

/// Limits applied to one execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecLimits {
    /// Counted from spawn.
    pub timeout: Duration,
    /// Time between SIGTERM and SIGKILL once the timeout is reached.
    pub kill_grace: Duration,
    pub stdout_cap: usize,
    pub stderr_cap: usize,
}

impl Default for ExecLimits {
    fn default() -> Self {
        ExecLimits {
            timeout: Duration::from_secs(90),
            kill_grace: Duration::from_secs(5),
            stdout_cap: 1024 * 1024,
            stderr_cap: 64 * 1024,
        }
    }
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub cwd: PathBuf,
    /// Added to the inherited environment (which has no `ELVES_*` variables left).
    pub env: Vec<(String, String)>,
}

/// How the child ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitKind {
    Exited(i32),
    Signaled(i32),
    /// The timeout was reached and the process group was killed.
    TimedOut,
    /// The child could not be started (or, very rarely, its status could not be obtained).
    SpawnFailed(String),
}

/// Everything known about one execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    pub exit: ExitKind,
    /// At most `stdout_cap` bytes.
    pub stdout: Vec<u8>,
    /// Bytes read beyond the cap and thrown away.
    pub stdout_dropped: u64,
    pub stderr: Vec<u8>,
    pub stderr_dropped: u64,
    /// From spawn to exit (or to the kill, on timeout). When the agent was stopped and found
    /// the child exited afterwards, from spawn to the last time it saw the child alive: the
    /// exit happened somewhere in the stall, and the stall is not the worker's time.
    pub costtime_ms: u64,
}

impl ExecOutcome {
    fn spawn_failed(reason: String) -> Self {
        ExecOutcome {
            exit: ExitKind::SpawnFailed(reason),
            stdout: Vec::new(),
            stdout_dropped: 0,
            stderr: Vec::new(),
            stderr_dropped: 0,
            costtime_ms: 0,
        }
    }
}

/// Errors of [`probe_blocking`]; [`run`] reports its failures in [`ExitKind`] instead.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} did not finish within {timeout:?}")]
    TimedOut { program: String, timeout: Duration },
    #[error("{program} failed: {status}")]
    Failed { program: String, status: ExitStatus },
}

/// A command for `program` that runs in `cwd` with `env` added, stdin empty, stdout and
/// stderr piped, in a process group of its own, and killed if the handle is dropped.
///
/// This is the only sanctioned way to build a child process in the agent.
pub fn command(program: &Path, cwd: &Path, env: &[(String, String)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for key in inherited_elves_vars() {
        cmd.env_remove(key);
    }
    cmd.envs(env.iter().map(|(key, value)| (key, value)));
    die_with_parent(cmd.as_std_mut());
    cmd
}

/// Makes the child get SIGKILL when the thread that started it ends (the agent's runtime
/// threads live as long as the agent).
fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid() before the fork; in the child only prctl, getppid and raise, which are
    // async-signal-safe system calls, and no allocation.
    let parent = unsafe { libc::getpid() };
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died between the fork and the prctl: nobody will ask for our result.
            if libc::getppid() != parent {
                libc::raise(libc::SIGKILL);
            }
            Ok(())
        });
    }
}

/// Runs `spec` to completion within `limits`.
///
/// Never fails: a failure to start is [`ExitKind::SpawnFailed`].
/// When it returns, no process of the child's group is left. Dropping the future kills the
/// whole group as well.
pub async fn run(spec: ExecSpec, limits: &ExecLimits) -> ExecOutcome {
    run_tapped(spec, limits, None).await
}

/// Like [`run`], also handing every byte read from the pipes to `tap` as it comes.
pub async fn run_tapped(
    spec: ExecSpec,
    limits: &ExecLimits,
    tap: Option<Arc<OutputTap>>,
) -> ExecOutcome {
    let mut cmd = command(&spec.program, &spec.cwd, &spec.env);
    cmd.args(&spec.args);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(err) => return ExecOutcome::spawn_failed(format!("{}: {err}", spec.program.display())),
    };
    let started = Instant::now();
    let mut group = GroupGuard::of(&child);

    // The sender lives until the end of this function: dropping it (also when this future
    // is dropped) makes the readers stop.
    let (stop_readers, stop_rx) = watch::channel(false);
    let stdout_reader = child.stdout.take().map(|pipe| {
        let tap = tap.clone().map(|tap| (tap, OutputStream::Stdout));
        tokio::spawn(read_capped(pipe, limits.stdout_cap, stop_rx.clone(), tap))
    });
    let stderr_reader = child.stderr.take().map(|pipe| {
        let tap = tap.map(|tap| (tap, OutputStream::Stderr));
        tokio::spawn(read_capped(pipe, limits.stderr_cap, stop_rx, tap))
    });

    let deadline = started + limits.timeout;
    // The last time this agent saw the child running.
    let mut seen_alive = started;
    let waited = |err: std::io::Error| {
        ExitKind::SpawnFailed(format!("waiting for {}: {err}", spec.program.display()))
    };
    let exit = loop {
        let check_at = (Instant::now() + LIVENESS_CHECK).min(deadline);
        match tokio::time::timeout_at(check_at, child.wait()).await {
            Ok(Ok(status)) => break exit_kind(status),
            Ok(Err(err)) => break waited(err),
            Err(_elapsed) => {}
        }
        // The clock says time is up; the kernel says whether the child is still running. After
        // a stall of the agent the timer can fire before the exit is noticed.
        match child.try_wait() {
            Ok(Some(status)) => break exit_kind(status),
            Ok(None) => {}
            Err(err) => break waited(err),
        }
        let now = Instant::now();
        if now >= deadline {
            terminate(&mut child, &group, limits.kill_grace).await;
            break ExitKind::TimedOut;
        }
        seen_alive = now;
    };
    let exited_seen = Instant::now();
    let costtime = if exit != ExitKind::TimedOut && exited_seen - seen_alive > STALL {
        seen_alive - started
    } else {
        exited_seen - started
    };
    // A background grandchild may still be alive and holding the pipes.
    group.kill_and_release();

    let (stdout, stderr) = drain(stdout_reader, stderr_reader, &stop_readers).await;
    ExecOutcome {
        exit,
        stdout: stdout.kept,
        stdout_dropped: stdout.dropped,
        stderr: stderr.kept,
        stderr_dropped: stderr.dropped,
        costtime_ms: millis(costtime),
    }
}

/// Runs a short-lived helper synchronously and returns its stdout (at most 64 KiB).
///
/// Meant for start-up probes (such as asking an interpreter for its real path) before the
/// agent serves jobs; it blocks the calling thread for up to `timeout` plus a few
/// milliseconds. The same group and environment rules as [`command`] apply.
#[allow(
    clippy::disallowed_methods,
    reason = "this is the one synchronous process start; it applies the rules of command()"
)]
pub fn probe_blocking(
    program: &Path,
    args: &[&str],
    timeout: Duration,
) -> Result<Vec<u8>, ExecError> {
    use std::os::unix::process::CommandExt;
    const PROBE_CAP: u64 = 64 * 1024;

    let program_name = program.display().to_string();
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    for key in inherited_elves_vars() {
        cmd.env_remove(key);
    }
    let mut child = cmd.spawn().map_err(|source| ExecError::Spawn {
        program: program_name.clone(),
        source,
    })?;
    let group = child
        .id()
        .try_into()
        .ok()
        .filter(|&pgid: &libc::pid_t| pgid > 1);

    // A thread, so that a chatty or stuck child cannot block the wait below.
    let (sender, receiver) = mpsc::channel();
    if let Some(pipe) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let _ = pipe.take(PROBE_CAP).read_to_end(&mut kept);
            let _ = sender.send(kept);
        });
    }

    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(None) | Err(_) => break None,
        }
    };
    if let Some(pgid) = group {
        signal_group(pgid, libc::SIGKILL);
    }
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(ExecError::TimedOut {
            program: program_name,
            timeout,
        });
    };
    if !status.success() {
        return Err(ExecError::Failed {
            program: program_name,
            status,
        });
    }
    Ok(receiver.recv_timeout(PIPE_DRAIN).unwrap_or_default())
}

/// Sends SIGTERM to the group, gives the child `grace` to exit, then SIGKILLs the group.
async fn terminate(child: &mut Child, group: &GroupGuard, grace: Duration) {
    group.signal(libc::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_ok() {
        return;
    }
    group.signal(libc::SIGKILL);
    // In case the child moved itself out of its group.
    let _ = child.start_kill();
    if tokio::time::timeout(REAP_AFTER_KILL, child.wait())
        .await
        .is_err()
    {
        log::error!(
            "pid {}: not reaped {REAP_AFTER_KILL:?} after SIGKILL",
            child.id().unwrap_or(0)
        );
    }
}

/// Waits for both readers, but stops them once [`PIPE_DRAIN`] has passed.
async fn drain(
    stdout_reader: Option<JoinHandle<Captured>>,
    stderr_reader: Option<JoinHandle<Captured>>,
    stop_readers: &watch::Sender<bool>,
) -> (Captured, Captured) {
    let both = async { (joined(stdout_reader).await, joined(stderr_reader).await) };
    tokio::pin!(both);
    tokio::select! {
        captured = &mut both => captured,
        () = tokio::time::sleep(PIPE_DRAIN) => {
            let _ = stop_readers.send(true);
            both.await
        }
    }
}

async fn joined(reader: Option<JoinHandle<Captured>>) -> Captured {
    match reader {
        Some(handle) => handle.await.unwrap_or_default(),
        None => Captured::default(),
    }
}

#[derive(Debug, Default)]
struct Captured {
    kept: Vec<u8>,
    dropped: u64,
}

/// Reads `pipe` to its end (or until told to stop), keeping the first `cap` bytes.
///
/// Told to stop, it still takes what the pipe already holds: a busy agent may first get to
/// this task after the stop, when the worker's whole answer is waiting in the pipe.
async fn read_capped<R: AsyncRead + Unpin>(
    mut pipe: R,
    cap: usize,
    mut stop: watch::Receiver<bool>,
    tap: Option<(Arc<OutputTap>, OutputStream)>,
) -> Captured {
    let keep = |captured: &mut Captured, bytes: &[u8]| {
        captured.keep(bytes, cap);
        if let Some((tap, stream)) = &tap {
            tap.write(*stream, bytes);
        }
    };
    let mut captured = Captured::default();
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        // Stop first: a process that escaped the group may write without end.
        let n_read = tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => break,
            res = pipe.read(&mut chunk) => match res {
                Ok(0) => break,
                Ok(n_read) => n_read,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            },
        };
        keep(&mut captured, &chunk[..n_read]);
    }
    // Bounded, because an escaped writer can refill the pipe as fast as it is read.
    for _ in 0..MAX_READS_AFTER_STOP {
        match pipe.read(&mut chunk).now_or_never() {
            Some(Ok(n_read)) if n_read > 0 => keep(&mut captured, &chunk[..n_read]),
            Some(Err(err)) if err.kind() == std::io::ErrorKind::Interrupted => {}
            _ => break,
        }
    }
    captured
}

impl Captured {
    fn keep(&mut self, bytes: &[u8], cap: usize) {
        let n_kept = cap.saturating_sub(self.kept.len()).min(bytes.len());
        self.kept.extend_from_slice(&bytes[..n_kept]);
        self.dropped += (bytes.len() - n_kept) as u64;
    }
}

/// Signals a child's process group; sends SIGKILL when dropped unless released first.
struct GroupGuard {
    pgid: Option<libc::pid_t>,
}

impl GroupGuard {
    fn of(child: &Child) -> Self {
        // `process_group(0)` makes the child's pid its group id. 0 and 1 would name our own
        // group or every process, so they are never used.
        let pgid = child
            .id()
            .and_then(|pid| libc::pid_t::try_from(pid).ok())
            .filter(|&pgid| pgid > 1);
        GroupGuard { pgid }
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(pgid) = self.pgid {
            signal_group(pgid, signal);
        }
    }

    /// Kills what is left of the group, once. Releasing it right away keeps the window in
    /// which the group id could be reused by an unrelated group as small as possible.
    fn kill_and_release(&mut self) {
        self.signal(libc::SIGKILL);
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

fn signal_group(pgid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: killpg has no memory-safety preconditions; ESRCH (group already gone) is the
    // expected outcome after a clean exit and needs no handling.
    unsafe {
        libc::killpg(pgid, signal);
    }
}

fn exit_kind(status: ExitStatus) -> ExitKind {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitKind::Exited(code),
        (None, Some(signal)) => ExitKind::Signaled(signal),
        // Neither code nor signal only happens for stopped children, which wait() skips.
        (None, None) => ExitKind::Exited(-1),
    }
}

fn inherited_elves_vars() -> impl Iterator<Item = OsString> {
    std::env::vars_os()
        .map(|(key, _)| key)
        .filter(|key| is_elves_var(key))
}

fn is_elves_var(key: &OsStr) -> bool {
    key.as_encoded_bytes().starts_with(b"ELVES_")
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> ExecSpec {
        ExecSpec {
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".into(), script.into()],
            cwd: std::env::temp_dir(),
            env: Vec::new(),
        }
    }

    fn quick_limits() -> ExecLimits {
        ExecLimits {
            timeout: Duration::from_millis(300),
            kill_grace: Duration::from_millis(200),
            ..ExecLimits::default()
        }
    }

    fn group_exists(pgid: libc::pid_t) -> bool {
        // SAFETY: signal 0 only checks for existence.
        let res = unsafe { libc::kill(-pgid, 0) };
        !(res == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH))
    }

    /// Killed orphans stay zombies until init reaps them, and `kill(-pgid, 0)` still finds
    /// zombies; some inits reap only every couple of seconds.
    async fn wait_until_group_gone(pgid: libc::pid_t) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while group_exists(pgid) {
            assert!(Instant::now() < deadline, "process group {pgid} survived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn first_pid(stdout: &[u8]) -> libc::pid_t {
        String::from_utf8_lossy(stdout)
            .split_whitespace()
            .next()
            .and_then(|word| word.parse().ok())
            .expect("the script prints its pid first")
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let spec = sh("echo $$; sleep 1000 & sleep 1000");
        let started = Instant::now();
        let outcome = run(spec, &quick_limits()).await;
        assert_eq!(outcome.exit, ExitKind::TimedOut);
        assert!(outcome.costtime_ms >= 300, "{}", outcome.costtime_ms);
        assert!(started.elapsed() < Duration::from_secs(5));
        wait_until_group_gone(first_pid(&outcome.stdout)).await;
    }

    /// The agent stopped while its worker ran (a runtime thread blocked stands for SIGSTOP):
    /// the worker that exited meanwhile reports its output and its own short run, not a timeout.
    #[test]
    fn a_child_that_exited_while_the_agent_was_stalled_is_not_a_timeout() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let outcome = runtime.block_on(async {
            let limits = ExecLimits {
                timeout: Duration::from_millis(500),
                ..quick_limits()
            };
            let script = sh("sleep 0.2; echo done");
            let running = tokio::spawn(async move { run(script, &limits).await });
            // Let the task spawn the child, then stall the only runtime thread past the timeout
            // while the child finishes.
            tokio::time::sleep(Duration::from_millis(50)).await;
            std::thread::sleep(Duration::from_millis(1_500));
            running.await.unwrap()
        });
        assert_eq!(outcome.exit, ExitKind::Exited(0));
        assert_eq!(outcome.stdout, b"done\n");
        assert!(outcome.costtime_ms < 1_000, "{}", outcome.costtime_ms);
    }

    #[test]
    fn a_child_dies_with_the_thread_that_started_it() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("echo $$ > {}; exec sleep 300", pid_file.display());
        let written = pid_file.clone();
        let starter = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut cmd = command(Path::new("/bin/sh"), &std::env::temp_dir(), &[]);
                cmd.args(["-c", &script]).kill_on_drop(false);
                let child = cmd.spawn().unwrap();
                // Leaked, so that only the thread's end can kill it.
                std::mem::forget(child);
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while std::fs::read_to_string(&written).map_or(true, |pid| !pid.ends_with('\n')) {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the child never started"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
        });
        starter.join().unwrap();
        let pid: libc::pid_t = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Gone, or a zombie nobody reaps yet (its parent is this process).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| stat.rsplit(')').next().map(|rest| rest.trim().to_owned()));
            match state {
                None => break,
                Some(state) if state.starts_with('Z') => break,
                Some(_) => {}
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the child outlived its starter"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[tokio::test]
    async fn term_is_ignored_then_kill_follows() {
        let spec = sh("trap '' TERM; echo $$; sleep 1000 & while :; do sleep 1; done");
        let outcome = run(spec, &quick_limits()).await;
        assert_eq!(outcome.exit, ExitKind::TimedOut);
        // 300 ms timeout plus 200 ms grace.
        assert!(outcome.costtime_ms >= 500, "{}", outcome.costtime_ms);
        wait_until_group_gone(first_pid(&outcome.stdout)).await;
    }

    #[tokio::test]
    async fn normal_exit_kills_background_grandchild() {
        // The grandchild keeps stdout open: without the group kill, reading would hang.
        let spec = sh("echo $$; sleep 1000 & exit 0");
        let started = Instant::now();
        let outcome = run(spec, &ExecLimits::default()).await;
        assert_eq!(outcome.exit, ExitKind::Exited(0));
        assert!(started.elapsed() < Duration::from_secs(5));
        wait_until_group_gone(first_pid(&outcome.stdout)).await;
    }

    #[tokio::test]
    async fn escaped_pipe_holder_does_not_block_the_result() {
        // `setsid` leaves the group, so the group kill misses it and it keeps stdout open.
        let spec = sh("setsid sleep 1000 & echo $!; echo done");
        let started = Instant::now();
        let outcome = run(spec, &ExecLimits::default()).await;
        let elapsed = started.elapsed();
        let escaped = first_pid(&outcome.stdout);
        // SAFETY: plain signal to the process the script reported.
        unsafe {
            libc::kill(escaped, libc::SIGKILL);
        }
        assert_eq!(outcome.exit, ExitKind::Exited(0));
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
        assert!(String::from_utf8_lossy(&outcome.stdout).contains("done"));
    }

    #[tokio::test]
    async fn dropping_the_future_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!(
            "sleep 1000 & echo $$ > {0}.tmp && mv {0}.tmp {0}; sleep 1000",
            pid_file.display()
        );
        let task = tokio::spawn(async move { run(sh(&script), &ExecLimits::default()).await });
        let deadline = Instant::now() + Duration::from_secs(5);
        let pgid = loop {
            if let Ok(text) = std::fs::read_to_string(&pid_file) {
                break first_pid(text.as_bytes());
            }
            assert!(Instant::now() < deadline, "the script never wrote its pid");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        wait_until_group_gone(pgid).await;
    }

    #[tokio::test]
    async fn output_waiting_in_the_pipe_is_kept_when_the_stop_came_first() {
        // What a saturated agent sees: the worker exited long ago, the stop is already set
        // when the reader first runs, and the whole answer sits in the pipe.
        let mut child = command(Path::new("/bin/sh"), Path::new("/"), &[])
            .args(["-c", "printf 'flag-line\\nresult-line'"])
            .spawn()
            .expect("sh starts");
        let pipe = child.stdout.take().expect("stdout piped");
        assert!(child.wait().await.expect("sh exits").success());
        let (_stop, stopped) = watch::channel(true);
        let captured = read_capped(pipe, 1024, stopped, None).await;
        assert_eq!(captured.kept, b"flag-line\nresult-line");
        assert_eq!(captured.dropped, 0);
    }

    #[tokio::test]
    async fn big_output_is_capped_and_counted() {
        let spec = sh("head -c 2097152 /dev/zero | tr '\\0' x");
        let outcome = run(spec, &ExecLimits::default()).await;
        assert_eq!(outcome.exit, ExitKind::Exited(0));
        assert_eq!(outcome.stdout.len(), 1024 * 1024);
        assert!(outcome.stdout.iter().all(|&byte| byte == b'x'));
        assert_eq!(outcome.stdout_dropped, 1024 * 1024);
        assert_eq!(outcome.stderr_dropped, 0);
    }

    #[tokio::test]
    async fn stderr_is_captured_separately_and_capped() {
        let spec = sh("echo out; echo err >&2; head -c 70000 /dev/zero >&2; exit 3");
        let outcome = run(spec, &ExecLimits::default()).await;
        assert_eq!(outcome.exit, ExitKind::Exited(3));
        assert_eq!(outcome.stdout, b"out\n");
        assert!(outcome.stderr.starts_with(b"err\n"));
        assert_eq!(outcome.stderr.len(), 64 * 1024);
        assert_eq!(outcome.stderr_dropped, 70004 - 64 * 1024);
    }

    #[tokio::test]
    async fn signal_is_reported() {
        let outcome = run(sh("kill -9 $$"), &ExecLimits::default()).await;
        assert_eq!(outcome.exit, ExitKind::Signaled(libc::SIGKILL));
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_failure() {
        let spec = ExecSpec {
            program: PathBuf::from("/nonexistent/elves-worker"),
            args: Vec::new(),
            cwd: std::env::temp_dir(),
            env: Vec::new(),
        };
        let outcome = run(spec, &ExecLimits::default()).await;
        match outcome.exit {
            ExitKind::SpawnFailed(reason) => {
                assert!(reason.contains("/nonexistent/elves-worker"), "{reason}")
            }
            other => panic!("expected a spawn failure, got {other:?}"),
        }
        assert_eq!(outcome.costtime_ms, 0);
    }

    #[tokio::test]
    async fn cwd_env_and_empty_stdin_are_set() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = sh("pwd; echo \"$ELVES_APP\"; cat; echo end");
        spec.cwd = dir.path().to_path_buf();
        spec.env = vec![("ELVES_APP".to_owned(), "demo".to_owned())];
        let outcome = run(spec, &ExecLimits::default()).await;
        let expected = format!(
            "{}\ndemo\nend\n",
            dir.path().canonicalize().unwrap().display()
        );
        assert_eq!(String::from_utf8_lossy(&outcome.stdout), expected);
    }

    #[test]
    fn only_elves_variables_are_stripped() {
        assert!(is_elves_var(OsStr::new("ELVES_BUS_URL")));
        assert!(!is_elves_var(OsStr::new("PATH")));
        assert!(!is_elves_var(OsStr::new("XELVES_A")));
    }

    #[test]
    fn probe_returns_stdout() {
        let out = probe_blocking(
            Path::new("/bin/sh"),
            &["-c", "echo hi"],
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(out, b"hi\n");
    }

    #[test]
    fn probe_reports_failure_and_timeout() {
        let failed = probe_blocking(
            Path::new("/bin/sh"),
            &["-c", "exit 2"],
            Duration::from_secs(5),
        );
        assert!(matches!(failed, Err(ExecError::Failed { .. })));
        let slow = probe_blocking(
            Path::new("/bin/sh"),
            &["-c", "sleep 1000"],
            Duration::from_millis(100),
        );
        assert!(matches!(slow, Err(ExecError::TimedOut { .. })));
        let missing = probe_blocking(Path::new("/nonexistent"), &[], Duration::from_secs(1));
        assert!(matches!(missing, Err(ExecError::Spawn { .. })));
    }
}
