//! The ELVES worker protocol (SPEC §3, §11): which program runs for a job, with which
//! arguments and environment, and how its output becomes `worker_flag` and
//! `worker_message`.
//!
//! It also bounds how many workers run at once and resolves the interpreter allow-list at
//! start.
//! Process handling (groups, timeouts, output caps) belongs to `exec.rs`; receiving jobs and
//! reporting results belongs to the caller.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use tokio::sync::Semaphore;

use crate::exec::{self, ExecLimits, ExecSpec, ExitKind};
use crate::output::OutputForwarder;
use elves_shared::wire::TaskId;

const FLAG_OPEN: &str = "<ElvesWFlag>";
const FLAG_CLOSE: &str = "</ElvesWFlag>";
const RESULT_OPEN: &str = "<ElvesWResult>";
const RESULT_CLOSE: &str = "</ElvesWResult>";

/// How much of stdout a flag error quotes, in characters.
const OUTPUT_TAIL_CHARS: usize = 200;

/// The executable entry used when no proxy is given.
const NATIVE_WORKER: &str = "app-worker";
/// The Python SDK entry, run with the `python3` interpreter when there is no native entry.
const PYTHON_WORKER: &str = "app-worker.py";
const PYTHON_INTERPRETER: &str = "python3";

/// Start-up probes run once, so this can be generous; it only guards against a hung shim.
const INTERPRETER_PROBE_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_INTERPRETERS: [&str; 4] = ["python3", "python", "bash", "sh"];

/// Why a job could not be turned into a process. Each message is the `worker_message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerError {
    #[error("bad app name {0:?}")]
    BadAppName(String),
    #[error("bad func name {0:?}")]
    BadFuncName(String),
    #[error("app [{0}] not installed")]
    NotInstalled(String),
    #[error("bad proxy {0:?}")]
    BadProxy(String),
    #[error("interpreter [{0}] is not in the allow-list")]
    InterpreterNotAllowed(String),
    #[error("app file [{0}] is outside the app directory")]
    FileEscapes(String),
    #[error("app file [{0}] not found")]
    FileNotFound(String),
    #[error("app [{0}] has no worker: neither an executable app-worker nor app-worker.py")]
    NoWorker(String),
    #[error("no python3 interpreter configured to run app-worker.py")]
    NoPython,
    #[error("agent is shutting down")]
    ShuttingDown,
    /// The start could not be written down; a task whose start is not on record could run a
    /// second time after a crash, so it does not run at all.
    #[error("task not started: {0}")]
    NotRecorded(String),
    #[error("param is {0} bytes, over the limit of {max} bytes (a worker gets it as one command-line argument)", max = elves_shared::wire::MAX_PARAM_BYTES)]
    ParamTooLarge(usize),
}

/// One job for a worker, as the agent received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerJob {
    pub task_id: String,
    pub app: String,
    pub func: String,
    /// The caller's JSON text (or empty), passed on byte for byte.
    pub param: String,
    /// `rt`, `queue` or `cron`; becomes `ELVES_TYPE`.
    pub kind: String,
    /// `P` or `NP`; becomes `ELVES_MODE`.
    pub mode: String,
    /// Zero means the runner's default.
    pub timeout: Duration,
    /// `interp|file`, `file`, or empty for the default entry.
    pub proxy: String,
}

/// The outcome of one job, in the terms of the result the center stores.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// 1 (the worker said true), 0 (it said false) or -1 (no usable answer).
    pub worker_flag: i8,
    pub worker_message: String,
    pub costtime_ms: u64,
    /// Unix milliseconds.
    pub started_at: u64,
    /// Unix milliseconds.
    pub finished_at: u64,
    /// Why the runner refused the job before starting anything; `None` once a process was
    /// started. Decisions read this, never `worker_message`, which an app could write too.
    pub not_started: Option<WorkerError>,
}

impl WorkerReport {
    /// True when the job was refused because the runner was closed for shutdown: nothing ran,
    /// so the task should come again rather than be reported as failed.
    pub fn is_shutdown_refusal(&self) -> bool {
        self.not_started == Some(WorkerError::ShuttingDown)
    }
}

/// The program to start for a job, before the `<app> <func> <b64>` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The canonical app directory; the worker's working directory.
    pub app_dir: PathBuf,
    pub program: PathBuf,
    pub leading_args: Vec<OsString>,
}

/// Runs workers, at most `max_concurrent` at once, plus a share kept for RT jobs
/// ([`rt_share`]): an RT job takes a shared slot or one of its share, whichever frees first,
/// so that an interactive caller never waits behind hundreds of queued tasks. Later jobs wait
/// in arrival order.
#[derive(Debug, Clone)]
pub struct WorkerRunner {
    apps_dir: PathBuf,
    interpreters: BTreeMap<String, PathBuf>,
    limits: ExecLimits,
    concurrency: Arc<Semaphore>,
    rt_concurrency: Arc<Semaphore>,
    max_concurrent: usize,
    /// Where running workers' output goes live; none in tests that do not look at it.
    output: Option<Arc<OutputForwarder>>,
}

/// The worker slots RT jobs have besides `max_concurrent`: a quarter of it, at least one.
pub fn rt_share(max_concurrent: usize) -> usize {
    max_concurrent.div_ceil(4).max(1)
}

impl WorkerRunner {
    /// `interpreters` should come from [`resolve_interpreters`]. A `max_concurrent` of 0 is
    /// taken as 1, since it would otherwise block every job forever.
    pub fn new(
        apps_dir: PathBuf,
        interpreters: BTreeMap<String, PathBuf>,
        limits: ExecLimits,
        max_concurrent: usize,
    ) -> Self {
        let max_concurrent = max_concurrent.clamp(1, Semaphore::MAX_PERMITS);
        WorkerRunner {
            apps_dir,
            interpreters,
            limits,
            concurrency: Arc::new(Semaphore::new(max_concurrent)),
            rt_concurrency: Arc::new(Semaphore::new(rt_share(max_concurrent))),
            max_concurrent,
            output: None,
        }
    }

    /// Sends every worker's output live through `forwarder`.
    pub fn with_output(mut self, forwarder: Arc<OutputForwarder>) -> Self {
        self.output = Some(forwarder);
        self
    }

    pub fn apps_dir(&self) -> &Path {
        &self.apps_dir
    }

    pub fn interpreters(&self) -> &BTreeMap<String, PathBuf> {
        &self.interpreters
    }

    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }

    /// Workers running right now, RT ones included.
    pub fn n_running(&self) -> usize {
        let queue = self
            .max_concurrent
            .saturating_sub(self.concurrency.available_permits());
        let rt =
            rt_share(self.max_concurrent).saturating_sub(self.rt_concurrency.available_permits());
        queue + rt
    }

    /// Makes waiting and future jobs end at once with "agent is shutting down"; running
    /// workers are not touched.
    pub fn close(&self) {
        self.concurrency.close();
        self.rt_concurrency.close();
    }

    /// Runs one job to its end. Never fails: every problem becomes `worker_flag` -1.
    /// Dropping the future kills the worker's process group.
    pub async fn run(&self, job: WorkerJob) -> WorkerReport {
        self.run_recorded(job, || Ok(())).await
    }

    /// Like [`WorkerRunner::run`], calling `record_start` once a worker slot is free and just
    /// before the process is spawned; when it fails, nothing is spawned and its message is
    /// the report's (a [`WorkerError::NotRecorded`]).
    pub async fn run_recorded(
        &self,
        job: WorkerJob,
        record_start: impl FnOnce() -> Result<(), String>,
    ) -> WorkerReport {
        let task_id = &job.task_id;
        let entry = match self.entry_for(&job) {
            Ok(entry) => entry,
            Err(err) => {
                log::info!("task {task_id}: app {} func {}: {err}", job.app, job.func);
                return refused(err);
            }
        };
        // An RT job takes whichever frees first: a shared slot or one of its own share.
        let permit = if job.kind == "rt" {
            tokio::select! {
                biased;
                permit = self.concurrency.acquire() => permit,
                permit = self.rt_concurrency.acquire() => permit,
            }
        } else {
            self.concurrency.acquire().await
        };
        let Ok(_permit) = permit else {
            return refused(WorkerError::ShuttingDown);
        };

        let limits = ExecLimits {
            timeout: if job.timeout.is_zero() {
                self.limits.timeout
            } else {
                job.timeout
            },
            ..self.limits.clone()
        };
        if let Err(err) = record_start() {
            log::error!("task {task_id}: {err}");
            return refused(WorkerError::NotRecorded(err));
        }
        let spec = exec_spec(entry, &job);
        log::debug!(
            "task {task_id}: starting {} for app {} func {}",
            spec.program.display(),
            job.app,
            job.func
        );
        let started_at = elves_shared::time::now_unix_ms();
        let tap = self
            .output
            .as_ref()
            .and_then(|forwarder| Some(forwarder.open(TaskId::parse(task_id).ok()?)));
        // Dropped with this future: the forwarder sends the rest and ends the streams.
        let outcome = exec::run_tapped(spec, &limits, tap).await;
        let finished_at = elves_shared::time::now_unix_ms();

        let mut stderr = outcome.stderr;
        if outcome.stderr_dropped > 0 {
            stderr = without_partial_char(&stderr).to_vec();
            stderr.extend_from_slice(truncation_marker(outcome.stderr_dropped).as_bytes());
        }
        let mut report = parse_output(
            &outcome.stdout,
            outcome.stdout_dropped,
            &outcome.exit,
            &stderr,
        );
        report.costtime_ms = outcome.costtime_ms;
        report.started_at = started_at;
        report.finished_at = finished_at;
        log::info!(
            "task {task_id}: app {} func {} finished with worker_flag {} in {} ms",
            job.app,
            job.func,
            report.worker_flag,
            report.costtime_ms
        );
        report
    }

    fn entry_for(&self, job: &WorkerJob) -> Result<Entry, WorkerError> {
        if job.param.len() > elves_shared::wire::MAX_PARAM_BYTES {
            return Err(WorkerError::ParamTooLarge(job.param.len()));
        }
        if !is_valid_name(&job.app) {
            return Err(WorkerError::BadAppName(job.app.clone()));
        }
        if !is_valid_name(&job.func) {
            return Err(WorkerError::BadFuncName(job.func.clone()));
        }
        select_entry(&self.apps_dir, &job.app, &job.proxy, &self.interpreters)
    }
}

fn refused(err: WorkerError) -> WorkerReport {
    let now = elves_shared::time::now_unix_ms();
    WorkerReport {
        worker_flag: -1,
        worker_message: err.to_string(),
        costtime_ms: 0,
        started_at: now,
        finished_at: now,
        not_started: Some(err),
    }
}

fn exec_spec(entry: Entry, job: &WorkerJob) -> ExecSpec {
    let mut args = entry.leading_args;
    args.extend([
        OsString::from(&job.app),
        OsString::from(&job.func),
        OsString::from(encode_param(job.param.as_bytes())),
    ]);
    ExecSpec {
        program: entry.program,
        args,
        cwd: entry.app_dir,
        env: worker_env(job),
    }
}

/// The variables a worker can rely on.
pub fn worker_env(job: &WorkerJob) -> Vec<(String, String)> {
    vec![
        ("ELVES_TASK_ID".to_owned(), job.task_id.clone()),
        ("ELVES_APP".to_owned(), job.app.clone()),
        ("ELVES_FUNC".to_owned(), job.func.clone()),
        ("ELVES_TYPE".to_owned(), job.kind.clone()),
        ("ELVES_MODE".to_owned(), job.mode.clone()),
    ]
}

/// Standard base64 (with padding) of the exact param bytes: the worker's third argument.
pub fn encode_param(param: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(param)
}

use elves_shared::names::is_valid_name;

/// Chooses the program for `app` following SPEC §3: `interp|file`, `file`, or the default
/// `app-worker` / `app-worker.py`. `app` must already be a valid name.
pub fn select_entry(
    apps_dir: &Path,
    app: &str,
    proxy: &str,
    interpreters: &BTreeMap<String, PathBuf>,
) -> Result<Entry, WorkerError> {
    let app_dir = apps_dir
        .join(app)
        .canonicalize()
        .ok()
        .filter(|dir| dir.is_dir())
        .ok_or_else(|| WorkerError::NotInstalled(app.to_owned()))?;
    let proxy = proxy.trim();

    if let Some((interp, file)) = proxy.split_once('|') {
        let (interp, file) = (interp.trim(), file.trim());
        if interp.is_empty() || file.is_empty() {
            return Err(WorkerError::BadProxy(proxy.to_owned()));
        }
        let interp_path = interpreters
            .get(interp)
            .ok_or_else(|| WorkerError::InterpreterNotAllowed(interp.to_owned()))?;
        let file = contained_file(&app_dir, file)?;
        return Ok(Entry {
            program: interp_path.clone(),
            leading_args: vec![file.into_os_string()],
            app_dir,
        });
    }
    if !proxy.is_empty() {
        let program = contained_file(&app_dir, proxy)?;
        return Ok(Entry {
            program,
            leading_args: Vec::new(),
            app_dir,
        });
    }

    match contained_file(&app_dir, NATIVE_WORKER) {
        Ok(program) if is_executable(&program) => {
            return Ok(Entry {
                program,
                leading_args: Vec::new(),
                app_dir,
            })
        }
        Ok(_) | Err(WorkerError::FileNotFound(_)) => {}
        Err(err) => return Err(err),
    }
    let script = match contained_file(&app_dir, PYTHON_WORKER) {
        Ok(script) => script,
        Err(WorkerError::FileNotFound(_)) => return Err(WorkerError::NoWorker(app.to_owned())),
        Err(err) => return Err(err),
    };
    let python = interpreters
        .get(PYTHON_INTERPRETER)
        .ok_or(WorkerError::NoPython)?;
    Ok(Entry {
        program: python.clone(),
        leading_args: vec![script.into_os_string()],
        app_dir,
    })
}

/// Resolves `file` (relative, from a proxy) inside the canonical `app_dir`, refusing
/// absolute paths, `..` and symlinks that lead out. Returns the canonical path, so that
/// what was checked is what runs.
pub fn contained_file(app_dir: &Path, file: &str) -> Result<PathBuf, WorkerError> {
    let relative = Path::new(file);
    let escapes = relative.has_root()
        || relative
            .components()
            .any(|component| !matches!(component, Component::Normal(_) | Component::CurDir));
    if escapes {
        return Err(WorkerError::FileEscapes(file.to_owned()));
    }
    let real = app_dir
        .join(relative)
        .canonicalize()
        .map_err(|_| WorkerError::FileNotFound(file.to_owned()))?;
    if !real.starts_with(app_dir) {
        return Err(WorkerError::FileEscapes(file.to_owned()));
    }
    if !real.is_file() {
        return Err(WorkerError::FileNotFound(file.to_owned()));
    }
    Ok(real)
}

/// True when `app_dir` has the entry program used without a proxy (SPEC §3): an executable
/// `app-worker` or an `app-worker.py`, inside the directory.
pub fn has_default_entry(app_dir: &Path) -> bool {
    let Ok(app_dir) = app_dir.canonicalize() else {
        return false;
    };
    contained_file(&app_dir, NATIVE_WORKER).is_ok_and(|program| is_executable(&program))
        || contained_file(&app_dir, PYTHON_WORKER).is_ok()
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Turns a worker's output into its flag and message (times are left at 0).
///
/// `dropped` is the number of stdout bytes cut off by the cap; `stderr` is only quoted when
/// the flag is -1.
pub fn parse_output(stdout: &[u8], dropped: u64, exit: &ExitKind, stderr: &[u8]) -> WorkerReport {
    let (worker_flag, mut worker_message) = flag_and_message(stdout, dropped, exit);
    if worker_flag == -1 {
        let stderr = String::from_utf8_lossy(stderr);
        let stderr = stderr.trim_end();
        if !stderr.is_empty() {
            worker_message.push_str("\nstderr: ");
            worker_message.push_str(stderr);
        }
    }
    WorkerReport {
        worker_flag,
        worker_message,
        ..WorkerReport::default()
    }
}

fn flag_and_message(stdout: &[u8], dropped: u64, exit: &ExitKind) -> (i8, String) {
    match exit {
        ExitKind::SpawnFailed(reason) => {
            return (-1, format!("app worker could not start: {reason}"))
        }
        ExitKind::TimedOut => return (-1, "app exec timeout".to_owned()),
        ExitKind::Exited(_) | ExitKind::Signaled(_) => {}
    }
    let captured = if dropped > 0 {
        without_partial_char(stdout)
    } else {
        stdout
    };
    let text = String::from_utf8_lossy(captured);
    // A worker that answered is believed, whatever its exit status.
    if let Some(answer) = tagged_answer(&text, dropped) {
        return answer;
    }
    let tail = tail_chars(text.trim_end(), OUTPUT_TAIL_CHARS);
    match exit {
        ExitKind::Exited(0) => (-1, format!("app output flag error: {tail}")),
        ExitKind::Exited(code) => (
            -1,
            with_output(format!("app exited with code {code}"), tail),
        ),
        ExitKind::Signaled(signal) => (
            -1,
            with_output(format!("app killed by signal {signal}"), tail),
        ),
        // Handled above; kept total without a panic.
        ExitKind::TimedOut | ExitKind::SpawnFailed(_) => (-1, "app exec failed".to_owned()),
    }
}

fn with_output(message: String, tail: &str) -> String {
    if tail.is_empty() {
        message
    } else {
        format!("{message}, output: {tail}")
    }
}

/// The flag and result from the tags, or `None` when they are missing or malformed.
fn tagged_answer(text: &str, dropped: u64) -> Option<(i8, String)> {
    let flag_start = text.find(FLAG_OPEN)? + FLAG_OPEN.len();
    let flag_len = text.get(flag_start..)?.find(FLAG_CLOSE)?;
    let flag_text = text.get(flag_start..flag_start + flag_len)?.trim();
    // Python SDKs that print `str(True)` are common enough to accept any case.
    let flag = if flag_text.eq_ignore_ascii_case("true") {
        1
    } else if flag_text.eq_ignore_ascii_case("false") {
        0
    } else {
        return None;
    };

    let result_start = text.find(RESULT_OPEN)? + RESULT_OPEN.len();
    let after_open = text.get(result_start..)?;
    let mut result = match after_open.find(RESULT_CLOSE) {
        Some(result_len) => after_open.get(..result_len)?.to_owned(),
        // The cap cut the closing tag off: what was captured is the result.
        None if dropped > 0 => after_open.to_owned(),
        None => return None,
    };
    if dropped > 0 {
        result.push_str(&truncation_marker(dropped));
    }
    Some((flag, result))
}

fn truncation_marker(dropped: u64) -> String {
    format!("\u{2026}[truncated {dropped} bytes]")
}

/// Cuts a UTF-8 sequence that the cap split, so that it does not show up as U+FFFD.
fn without_partial_char(bytes: &[u8]) -> &[u8] {
    let len = bytes.len();
    for back in 1..=len.min(3) {
        let byte = bytes[len - back];
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue;
        }
        let needed = match byte {
            0xF0..=0xFF => 4,
            0xE0..=0xEF => 3,
            0xC0..=0xDF => 2,
            _ => 1,
        };
        return if needed > back {
            &bytes[..len - back]
        } else {
            bytes
        };
    }
    bytes
}

fn tail_chars(text: &str, n_chars: usize) -> &str {
    match text.char_indices().rev().nth(n_chars.saturating_sub(1)) {
        Some((start, _)) if n_chars > 0 => &text[start..],
        Some(_) => "",
        None => text,
    }
}

/// Resolves the interpreter allow-list once, at agent start, to absolute paths.
///
/// `configured` maps an allow-list name to a path or a command name; an empty value means
/// the name itself; an empty map means `python3`, `python`, `bash` and `sh`.
/// An absolute path is kept as is. A command is looked up on `PATH`; a Python is then asked
/// for `sys.executable`, because a version-manager shim (pyenv) on `PATH` costs a start of
/// its own on every job. Interpreters that cannot be found are left out, with a warning.
///
/// Blocks for the Python probes (tens of milliseconds each).
pub fn resolve_interpreters(configured: &BTreeMap<String, String>) -> BTreeMap<String, PathBuf> {
    let defaults;
    let configured = if configured.is_empty() {
        defaults = DEFAULT_INTERPRETERS
            .iter()
            .map(|name| ((*name).to_owned(), String::new()))
            .collect::<BTreeMap<_, _>>();
        &defaults
    } else {
        configured
    };
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let mut resolved = BTreeMap::new();
    for (name, value) in configured {
        let wanted = if value.trim().is_empty() {
            name.as_str()
        } else {
            value.trim()
        };
        match resolve_interpreter(name, wanted, &path_var) {
            Ok(path) => {
                log::info!("interpreter {name}: {}", path.display());
                resolved.insert(name.clone(), path);
            }
            Err(reason) => log::warn!("interpreter {name}: {reason}; left out of the allow-list"),
        }
    }
    resolved
}

fn resolve_interpreter(name: &str, wanted: &str, path_var: &OsStr) -> Result<PathBuf, String> {
    let wanted_path = Path::new(wanted);
    if wanted_path.is_absolute() {
        if !is_executable(wanted_path) {
            log::warn!("interpreter {name}: {wanted} is not an executable file");
        }
        return Ok(wanted_path.to_path_buf());
    }
    let found = if wanted.contains('/') {
        std::path::absolute(wanted_path).map_err(|err| format!("{wanted}: {err}"))?
    } else {
        find_on_path(wanted, path_var).ok_or_else(|| format!("{wanted} not found on PATH"))?
    };
    if !is_executable(&found) {
        return Err(format!("{} is not an executable file", found.display()));
    }
    let is_python = name.starts_with("python")
        || found
            .file_name()
            .is_some_and(|file| file.as_encoded_bytes().starts_with(b"python"));
    if is_python {
        return python_executable(&found);
    }
    Ok(real_directory(&found))
}

/// Asks a Python for its own path, which bypasses any shim in front of it.
fn python_executable(found: &Path) -> Result<PathBuf, String> {
    let stdout = exec::probe_blocking(
        found,
        &["-c", "import sys; print(sys.executable)"],
        INTERPRETER_PROBE_TIMEOUT,
    )
    .map_err(|err| err.to_string())?;
    let text = String::from_utf8_lossy(&stdout);
    let executable = PathBuf::from(text.trim());
    // Not canonicalized: a virtualenv's python is a symlink that must keep its own path.
    if executable.is_absolute() && is_executable(&executable) {
        Ok(executable)
    } else {
        Err(format!(
            "{} reported an unusable sys.executable {:?}",
            found.display(),
            text.trim()
        ))
    }
}

/// Canonicalizes the directory but keeps the file name: busybox applets and `bash` run as
/// `sh` behave by the name they are started with.
fn real_directory(found: &Path) -> PathBuf {
    match (found.parent(), found.file_name()) {
        (Some(dir), Some(file)) => dir
            .canonicalize()
            .map(|dir| dir.join(file))
            .unwrap_or_else(|_| found.to_path_buf()),
        _ => found.to_path_buf(),
    }
}

/// The first executable `name` in the absolute directories of `path_var`. Relative and
/// empty entries are skipped: they would depend on the agent's working directory.
fn find_on_path(name: &str, path_var: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path_var)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn write_file(path: &Path, text: &str, mode: u32) {
        fs::write(path, text).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn exited(code: i32) -> ExitKind {
        ExitKind::Exited(code)
    }

    // ---- names and params ----

    #[test]
    fn param_base64_is_exact() {
        assert_eq!(encode_param(b""), "");
        assert_eq!(encode_param(br#"{"my":"hi"}"#), "eyJteSI6ImhpIn0=");
        let tricky = "{\"a\": \"é \\u0000 \u{1F600}\"}\n ";
        let encoded = encode_param(tricky.as_bytes());
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        assert_eq!(decoded, tricky.as_bytes());
    }

    // ---- containment and entry selection ----

    struct AppFixture {
        _root: tempfile::TempDir,
        apps_dir: PathBuf,
        app_dir: PathBuf,
    }

    fn app_fixture() -> AppFixture {
        let root = tempfile::tempdir().unwrap();
        let apps_dir = root.path().join("apps");
        let app_dir = apps_dir.join("demo");
        fs::create_dir_all(app_dir.join("bin")).unwrap();
        write_file(&app_dir.join("bin/run.sh"), "#!/bin/sh\n", 0o755);
        write_file(&root.path().join("secret.sh"), "#!/bin/sh\n", 0o755);
        let app_dir = app_dir.canonicalize().unwrap();
        AppFixture {
            _root: root,
            apps_dir,
            app_dir,
        }
    }

    #[test]
    fn containment() {
        let fixture = app_fixture();
        let app_dir = &fixture.app_dir;
        assert_eq!(
            contained_file(app_dir, "bin/run.sh").unwrap(),
            app_dir.join("bin/run.sh")
        );
        assert_eq!(
            contained_file(app_dir, "./bin/run.sh").unwrap(),
            app_dir.join("bin/run.sh")
        );
        for escaping in [
            "../secret.sh",
            "bin/../../secret.sh",
            "bin/../run.sh",
            "/bin/sh",
        ] {
            assert_eq!(
                contained_file(app_dir, escaping),
                Err(WorkerError::FileEscapes(escaping.to_owned())),
                "{escaping}"
            );
        }
        assert_eq!(
            contained_file(app_dir, "missing.sh"),
            Err(WorkerError::FileNotFound("missing.sh".to_owned()))
        );
        assert_eq!(
            contained_file(app_dir, "bin"),
            Err(WorkerError::FileNotFound("bin".to_owned()))
        );
    }

    #[test]
    fn symlink_escape_is_refused() {
        let fixture = app_fixture();
        let app_dir = &fixture.app_dir;
        let outside = app_dir
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("secret.sh");
        std::os::unix::fs::symlink(&outside, app_dir.join("link.sh")).unwrap();
        std::os::unix::fs::symlink("/bin", app_dir.join("sysbin")).unwrap();
        std::os::unix::fs::symlink("bin/run.sh", app_dir.join("inside.sh")).unwrap();
        assert_eq!(
            contained_file(app_dir, "link.sh"),
            Err(WorkerError::FileEscapes("link.sh".to_owned()))
        );
        assert_eq!(
            contained_file(app_dir, "sysbin/sh"),
            Err(WorkerError::FileEscapes("sysbin/sh".to_owned()))
        );
        assert_eq!(
            contained_file(app_dir, "inside.sh").unwrap(),
            app_dir.join("bin/run.sh")
        );
    }

    #[test]
    fn entry_selection() {
        let fixture = app_fixture();
        let (apps_dir, app_dir) = (&fixture.apps_dir, &fixture.app_dir);
        let interpreters: BTreeMap<String, PathBuf> = [
            ("sh".to_owned(), PathBuf::from("/bin/sh")),
            ("python3".to_owned(), PathBuf::from("/usr/bin/python3")),
        ]
        .into();

        let entry = select_entry(apps_dir, "demo", " sh | bin/run.sh ", &interpreters).unwrap();
        assert_eq!(entry.program, PathBuf::from("/bin/sh"));
        assert_eq!(
            entry.leading_args,
            vec![app_dir.join("bin/run.sh").into_os_string()]
        );
        assert_eq!(&entry.app_dir, app_dir);

        let entry = select_entry(apps_dir, "demo", "bin/run.sh", &interpreters).unwrap();
        assert_eq!(entry.program, app_dir.join("bin/run.sh"));
        assert!(entry.leading_args.is_empty());

        assert_eq!(
            select_entry(apps_dir, "demo", "perl|bin/run.sh", &interpreters),
            Err(WorkerError::InterpreterNotAllowed("perl".to_owned()))
        );
        assert_eq!(
            select_entry(apps_dir, "demo", "sh|", &interpreters),
            Err(WorkerError::BadProxy("sh|".to_owned()))
        );
        assert_eq!(
            select_entry(apps_dir, "demo", "sh|../secret.sh", &interpreters),
            Err(WorkerError::FileEscapes("../secret.sh".to_owned()))
        );
        assert_eq!(
            select_entry(apps_dir, "absent", "", &interpreters)
                .unwrap_err()
                .to_string(),
            "app [absent] not installed"
        );

        // No proxy: nothing, then app-worker.py, then a non-executable app-worker (still
        // the Python entry), then an executable app-worker.
        assert_eq!(
            select_entry(apps_dir, "demo", "", &interpreters),
            Err(WorkerError::NoWorker("demo".to_owned()))
        );
        write_file(&app_dir.join("app-worker.py"), "", 0o644);
        let python = select_entry(apps_dir, "demo", "", &interpreters).unwrap();
        assert_eq!(python.program, PathBuf::from("/usr/bin/python3"));
        assert_eq!(
            python.leading_args,
            vec![app_dir.join("app-worker.py").into_os_string()]
        );
        assert_eq!(
            select_entry(apps_dir, "demo", "", &BTreeMap::new()),
            Err(WorkerError::NoPython)
        );
        write_file(&app_dir.join("app-worker"), "#!/bin/sh\n", 0o644);
        let still_python = select_entry(apps_dir, "demo", "", &interpreters).unwrap();
        assert_eq!(still_python.program, PathBuf::from("/usr/bin/python3"));
        fs::set_permissions(
            app_dir.join("app-worker"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let native = select_entry(apps_dir, "demo", "", &interpreters).unwrap();
        assert_eq!(native.program, app_dir.join("app-worker"));
        assert!(native.leading_args.is_empty());
    }

    #[test]
    fn app_dir_reached_through_a_symlink_is_fine() {
        let fixture = app_fixture();
        std::os::unix::fs::symlink(&fixture.app_dir, fixture.apps_dir.join("alias")).unwrap();
        let entry =
            select_entry(&fixture.apps_dir, "alias", "bin/run.sh", &BTreeMap::new()).unwrap();
        assert_eq!(entry.program, fixture.app_dir.join("bin/run.sh"));
    }

    // ---- output parsing ----

    /// Name, stdout, dropped bytes, exit, expected flag, expected message.
    type ParseCase<'a> = (&'a str, &'a [u8], u64, ExitKind, i8, String);

    #[test]
    fn output_parsing_table() {
        let marker = |n: u64| truncation_marker(n);
        // "ab" and the first two bytes of a three-byte character.
        let split_char = [
            b"<ElvesWFlag>false</ElvesWFlag><ElvesWResult>ab".as_slice(),
            &[0xE4, 0xB8],
        ]
        .concat();
        let cases: Vec<ParseCase> = vec![
            (
                "true",
                b"<ElvesWFlag>true</ElvesWFlag><ElvesWResult>hello</ElvesWResult>",
                0,
                exited(0),
                1,
                "hello".into(),
            ),
            (
                "false",
                b"<ElvesWFlag>false</ElvesWFlag> <ElvesWResult>nope</ElvesWResult>\n",
                0,
                exited(0),
                0,
                "nope".into(),
            ),
            (
                "python str(True)",
                b"<ElvesWFlag>True</ElvesWFlag><ElvesWResult></ElvesWResult>",
                0,
                exited(0),
                1,
                String::new(),
            ),
            (
                "garbage around and result first",
                b"log line\n<ElvesWResult>a\nb</ElvesWResult>junk<ElvesWFlag> true </ElvesWFlag>tail",
                0,
                exited(0),
                1,
                "a\nb".into(),
            ),
            (
                "tags win over a non-zero exit",
                b"<ElvesWFlag>false</ElvesWFlag><ElvesWResult>partial</ElvesWResult>",
                0,
                exited(2),
                0,
                "partial".into(),
            ),
            (
                "unicode",
                "<ElvesWFlag>true</ElvesWFlag><ElvesWResult>主机 ✓ 😀</ElvesWResult>".as_bytes(),
                0,
                exited(0),
                1,
                "主机 ✓ 😀".into(),
            ),
            (
                "cap cut the closing tag",
                b"<ElvesWFlag>true</ElvesWFlag><ElvesWResult>xxxx",
                1000,
                exited(0),
                1,
                format!("xxxx{}", marker(1000)),
            ),
            (
                "cap cut a multi-byte char",
                &split_char,
                5,
                exited(0),
                0,
                format!("ab{}", marker(5)),
            ),
            (
                "closing tag present but bytes dropped",
                b"<ElvesWFlag>true</ElvesWFlag><ElvesWResult>r</ElvesWResult>noise",
                7,
                exited(0),
                1,
                format!("r{}", marker(7)),
            ),
            (
                "missing tags",
                b"just text\n",
                0,
                exited(0),
                -1,
                "app output flag error: just text".into(),
            ),
            (
                "bad flag",
                b"<ElvesWFlag>maybe</ElvesWFlag><ElvesWResult>r</ElvesWResult>",
                0,
                exited(0),
                -1,
                "app output flag error: <ElvesWFlag>maybe</ElvesWFlag><ElvesWResult>r</ElvesWResult>"
                    .into(),
            ),
            (
                "result never closed without truncation",
                b"<ElvesWFlag>true</ElvesWFlag><ElvesWResult>r",
                0,
                exited(0),
                -1,
                "app output flag error: <ElvesWFlag>true</ElvesWFlag><ElvesWResult>r".into(),
            ),
            (
                "flag tag cut off by the cap",
                b"<ElvesWResult>r</ElvesWResult><ElvesWFl",
                9,
                exited(0),
                -1,
                "app output flag error: <ElvesWResult>r</ElvesWResult><ElvesWFl".into(),
            ),
            (
                "non-zero exit without tags",
                b"",
                0,
                exited(3),
                -1,
                "app exited with code 3".into(),
            ),
            (
                "non-zero exit with some output",
                b"oops",
                0,
                exited(1),
                -1,
                "app exited with code 1, output: oops".into(),
            ),
            (
                "killed by a signal",
                b"",
                0,
                ExitKind::Signaled(9),
                -1,
                "app killed by signal 9".into(),
            ),
            (
                "timeout ignores the output",
                b"<ElvesWFlag>true</ElvesWFlag><ElvesWResult>r</ElvesWResult>",
                0,
                ExitKind::TimedOut,
                -1,
                "app exec timeout".into(),
            ),
            (
                "spawn failure",
                b"",
                0,
                ExitKind::SpawnFailed("/x: Permission denied".into()),
                -1,
                "app worker could not start: /x: Permission denied".into(),
            ),
        ];
        for (name, stdout, dropped, exit, flag, message) in cases {
            let report = parse_output(stdout, dropped, &exit, b"");
            assert_eq!(report.worker_flag, flag, "{name}");
            assert_eq!(report.worker_message, message, "{name}");
        }
    }

    #[test]
    fn flag_error_quotes_the_last_200_chars() {
        let stdout = format!("{}{}", "a".repeat(300), "é".repeat(200));
        let report = parse_output(stdout.as_bytes(), 0, &exited(0), b"");
        assert_eq!(
            report.worker_message,
            format!("app output flag error: {}", "é".repeat(200))
        );
    }

    #[test]
    fn stderr_only_joins_a_failed_report() {
        let failed = parse_output(b"", 0, &exited(3), b"boom\n");
        assert_eq!(
            failed.worker_message,
            "app exited with code 3\nstderr: boom"
        );
        let answered = parse_output(
            b"<ElvesWFlag>false</ElvesWFlag><ElvesWResult>no</ElvesWResult>",
            0,
            &exited(0),
            b"warning\n",
        );
        assert_eq!(answered.worker_message, "no");
        let quiet = parse_output(b"", 0, &exited(3), b" \n");
        assert_eq!(quiet.worker_message, "app exited with code 3");
    }

    #[test]
    fn partial_char_trimming() {
        assert_eq!(without_partial_char(b"abc"), b"abc");
        assert_eq!(without_partial_char("aé".as_bytes()), "aé".as_bytes());
        assert_eq!(without_partial_char(&[b'a', 0xC3]), b"a");
        assert_eq!(without_partial_char(&[b'a', 0xF0, 0x9F, 0x98]), b"a");
        assert_eq!(without_partial_char("😀".as_bytes()), "😀".as_bytes());
        assert_eq!(without_partial_char(b""), b"");
    }

    // ---- interpreters ----

    #[test]
    fn path_lookup_skips_relative_entries() {
        let dir = tempfile::tempdir().unwrap();
        write_file(&dir.path().join("tool"), "#!/bin/sh\n", 0o755);
        write_file(&dir.path().join("plain"), "", 0o644);
        let path_var = std::env::join_paths(["relative", dir.path().to_str().unwrap()]).unwrap();
        assert_eq!(
            find_on_path("tool", &path_var),
            Some(dir.path().join("tool"))
        );
        assert_eq!(find_on_path("plain", &path_var), None);
        assert_eq!(find_on_path("absent", &path_var), None);
    }

    #[test]
    fn interpreters_resolve_to_absolute_paths() {
        let configured: BTreeMap<String, String> = [
            ("sh".to_owned(), String::new()),
            ("fixed".to_owned(), "/bin/sh".to_owned()),
            ("missing".to_owned(), "elves-no-such-interpreter".to_owned()),
        ]
        .into();
        let resolved = resolve_interpreters(&configured);
        assert_eq!(resolved.get("fixed"), Some(&PathBuf::from("/bin/sh")));
        let sh = resolved.get("sh").unwrap();
        assert!(sh.is_absolute());
        assert_eq!(sh.file_name(), Some(OsStr::new("sh")));
        assert!(!resolved.contains_key("missing"));
    }

    #[test]
    fn python_resolves_past_shims() {
        let dir = tempfile::tempdir().unwrap();
        // A stand-in shim: a shell script that answers the probe with the real path.
        write_file(
            &dir.path().join("python3"),
            "#!/bin/sh\necho /bin/sh\n",
            0o755,
        );
        let path_var = dir.path().as_os_str();
        assert_eq!(
            resolve_interpreter("python3", "python3", path_var),
            Ok(PathBuf::from("/bin/sh"))
        );
        write_file(
            &dir.path().join("python3"),
            "#!/bin/sh\necho relative\n",
            0o755,
        );
        assert!(resolve_interpreter("python3", "python3", path_var).is_err());
    }

    // ---- end to end ----

    fn sh_app(apps_dir: &Path, app: &str, script: &str) {
        let app_dir = apps_dir.join(app);
        fs::create_dir_all(&app_dir).unwrap();
        write_file(&app_dir.join("app-worker"), script, 0o755);
    }

    fn job(app: &str, func: &str, param: &str) -> WorkerJob {
        WorkerJob {
            task_id: "00112233aabbccdd".into(),
            app: app.into(),
            func: func.into(),
            param: param.into(),
            kind: "rt".into(),
            mode: "NP".into(),
            timeout: Duration::ZERO,
            proxy: String::new(),
        }
    }

    fn runner(apps_dir: &Path, max_concurrent: usize) -> WorkerRunner {
        let interpreters = [("sh".to_owned(), PathBuf::from("/bin/sh"))].into();
        let limits = ExecLimits {
            kill_grace: Duration::from_millis(200),
            ..ExecLimits::default()
        };
        WorkerRunner::new(apps_dir.to_path_buf(), interpreters, limits, max_concurrent)
    }

    const DEMO_WORKER: &str = r#"#!/bin/sh
case "$2" in
  hello) printf 'noise<ElvesWFlag>true</ElvesWFlag><ElvesWResult>%s|' "$1"
         printf '%s' "$3" | base64 -d
         printf '|%s %s %s</ElvesWResult>\n' "$ELVES_TASK_ID" "$ELVES_TYPE" "$ELVES_MODE" ;;
  hang) sleep 1000 & sleep 1000 ;;
  crash) echo boom >&2; exit 3 ;;
  mark) echo + >> marks; sleep 0.2; echo - >> marks
        printf '<ElvesWFlag>true</ElvesWFlag><ElvesWResult></ElvesWResult>' ;;
esac
"#;

    #[tokio::test]
    async fn runs_a_worker_end_to_end() {
        let root = tempfile::tempdir().unwrap();
        sh_app(root.path(), "demo", DEMO_WORKER);
        let runner = runner(root.path(), 2);

        let param = r#"{"my": "hi é"}"#;
        let report = runner.run(job("demo", "hello", param)).await;
        assert_eq!(report.worker_flag, 1, "{report:?}");
        assert_eq!(
            report.worker_message,
            format!("demo|{param}|00112233aabbccdd rt NP")
        );
        assert!(report.started_at > 0 && report.finished_at >= report.started_at);

        let crashed = runner.run(job("demo", "crash", "")).await;
        assert_eq!(crashed.worker_flag, -1);
        assert_eq!(
            crashed.worker_message,
            "app exited with code 3\nstderr: boom"
        );

        let mut slow = job("demo", "hang", "");
        slow.timeout = Duration::from_millis(300);
        let timed_out = runner.run(slow).await;
        assert_eq!(timed_out.worker_flag, -1);
        assert_eq!(timed_out.worker_message, "app exec timeout");
        assert!(timed_out.costtime_ms >= 300);

        // The largest param runs; one byte more is refused before anything starts.
        let largest = "x".repeat(elves_shared::wire::MAX_PARAM_BYTES);
        let report = runner.run(job("demo", "hello", &largest)).await;
        assert_eq!(report.worker_flag, 1, "{}", report.worker_message.len());
        let too_large = runner
            .run(job("demo", "hello", &format!("{largest}x")))
            .await;
        assert_eq!(too_large.worker_flag, -1);
        assert_eq!(
            too_large.not_started,
            Some(WorkerError::ParamTooLarge(
                elves_shared::wire::MAX_PARAM_BYTES + 1
            ))
        );
        assert!(too_large
            .worker_message
            .contains("over the limit of 96000 bytes"));

        let absent = runner.run(job("absent", "hello", "")).await;
        assert_eq!(absent.worker_flag, -1);
        assert_eq!(absent.worker_message, "app [absent] not installed");

        let bad = runner.run(job("demo", "../x", "")).await;
        assert_eq!(bad.worker_flag, -1);
        assert_eq!(bad.worker_message, r#"bad func name "../x""#);

        let mut proxied = job("demo", "hello", "");
        proxied.proxy = "sh|app-worker".into();
        assert_eq!(runner.run(proxied).await.worker_flag, 1);
        assert_eq!(runner.n_running(), 0);
    }

    #[tokio::test]
    async fn concurrency_is_bounded() {
        let root = tempfile::tempdir().unwrap();
        sh_app(root.path(), "demo", DEMO_WORKER);
        let runner = Arc::new(runner(root.path(), 2));
        let jobs = (0..6).map(|n_job| {
            let runner = Arc::clone(&runner);
            let mut marked = job("demo", "mark", "");
            marked.task_id = format!("job{n_job}");
            marked.kind = "queue".to_string();
            tokio::spawn(async move { runner.run(marked).await })
        });
        for handle in jobs.collect::<Vec<_>>() {
            assert_eq!(handle.await.unwrap().worker_flag, 1);
        }
        // Each worker logged "+" when it started and "-" before it ended.
        let log = fs::read_to_string(root.path().join("demo/marks")).unwrap();
        let mut n_running = 0;
        let mut peak = 0;
        for mark in log.lines() {
            n_running += if mark == "+" { 1 } else { -1 };
            peak = peak.max(n_running);
        }
        assert!(peak <= 2, "{log}");
        assert_eq!((log.lines().count(), n_running), (12, 0), "{log}");
    }

    #[tokio::test]
    async fn an_rt_job_does_not_wait_behind_queued_work() {
        let root = tempfile::tempdir().unwrap();
        sh_app(root.path(), "demo", DEMO_WORKER);
        let runner = Arc::new(runner(root.path(), 1));
        let mut queued = Vec::new();
        for n_job in 0..3 {
            let runner = Arc::clone(&runner);
            let mut hang = job("demo", "hang", "");
            hang.task_id = format!("queued{n_job}");
            hang.kind = "queue".to_string();
            hang.timeout = Duration::from_secs(30);
            queued.push(tokio::spawn(async move { runner.run(hang).await }));
        }
        // The only queue slot is taken and two queue jobs wait for it; the RT call runs now.
        let report = runner.run(job("demo", "hello", "")).await;
        assert_eq!(report.worker_flag, 1, "{report:?}");
        assert!(queued.iter().all(|job| !job.is_finished()));
        for job in queued {
            job.abort();
        }
    }

    #[tokio::test]
    async fn closed_runner_refuses_jobs() {
        let root = tempfile::tempdir().unwrap();
        sh_app(root.path(), "demo", DEMO_WORKER);
        let runner = runner(root.path(), 1);
        runner.close();
        let refused = runner.run(job("demo", "hello", "")).await;
        assert_eq!(
            (refused.worker_flag, refused.worker_message.as_str()),
            (-1, "agent is shutting down")
        );
        assert!(refused.is_shutdown_refusal());
    }

    #[test]
    fn a_report_that_only_says_shutting_down_is_not_a_shutdown_refusal() {
        // Say an app printed exactly the runner's words: it ran, so it must be reported, not
        // requeued as if it never started.
        let said_by_the_app = WorkerReport {
            worker_flag: -1,
            worker_message: WorkerError::ShuttingDown.to_string(),
            ..WorkerReport::default()
        };
        assert!(!said_by_the_app.is_shutdown_refusal());
    }

    // The shipped apps, run through the same path as on an agent.

    fn repo_path(relative: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(relative)
    }

    #[tokio::test]
    async fn shipped_test_app_answers() {
        let runner = runner(&repo_path("tests/apps"), 4);
        let ok = runner.run(job("elvestest", "ok", "")).await;
        assert_eq!((ok.worker_flag, ok.worker_message.as_str()), (1, "ok"));
        let param = "{\"k\": \"v é\\n\"}  ";
        let echo = runner.run(job("elvestest", "echo", param)).await;
        assert_eq!((echo.worker_flag, echo.worker_message.as_str()), (1, param));
        let no = runner.run(job("elvestest", "false", "")).await;
        assert_eq!((no.worker_flag, no.worker_message.as_str()), (0, "nope"));
        let crash = runner.run(job("elvestest", "crash", "")).await;
        assert_eq!(crash.worker_flag, -1);
        assert!(crash.worker_message.ends_with("stderr: boom"), "{crash:?}");
        let env = runner.run(job("elvestest", "env", "")).await;
        assert_eq!(env.worker_message, "00112233aabbccdd elvestest env rt NP");
        let big = runner.run(job("elvestest", "big", "")).await;
        assert_eq!(big.worker_flag, 1);
        let expected = format!(
            "{}{}",
            "x".repeat(1024 * 1024 - 43),
            truncation_marker(1024 * 1024 + 43 + 16)
        );
        assert_eq!(big.worker_message.len(), expected.len());
        assert_eq!(big.worker_message, expected);
    }

    #[tokio::test]
    async fn shipped_test_app_sleep_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("grandchild.pid");
        let param = serde_json::json!({ "pidfile": pid_file }).to_string();
        let mut sleepy = job("elvestest", "sleep", &param);
        sleepy.timeout = Duration::from_millis(500);
        let report = runner(&repo_path("tests/apps"), 1).run(sleepy).await;
        assert_eq!(report.worker_message, "app exec timeout");
        let pid: libc::pid_t = fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Killed orphans stay zombies until init reaps them, which can take seconds.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        // SAFETY: signal 0 only checks for existence.
        while unsafe { libc::kill(pid, 0) } == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "grandchild {pid} survived"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn python_sdk_app_answers() {
        let interpreters = resolve_interpreters(&BTreeMap::new());
        assert!(
            interpreters.contains_key("python3"),
            "python3 is needed to test the Python SDK"
        );
        let runner = WorkerRunner::new(repo_path("apps"), interpreters, ExecLimits::default(), 4);
        let hello = runner
            .run(job("apptest", "helloword", r#"{"my": "hello elves"}"#))
            .await;
        assert_eq!(
            (hello.worker_flag, hello.worker_message.as_str()),
            (1, "hello elves"),
            "{hello:?}"
        );
        let missing_key = runner.run(job("apptest", "helloword", "")).await;
        assert_eq!(missing_key.worker_flag, 0);
        assert_eq!(missing_key.worker_message, "KeyError: 'my'");
        let unknown = runner.run(job("apptest", "nosuchfunc", "")).await;
        assert_eq!(unknown.worker_flag, 0);
        assert!(unknown.worker_message.contains("nosuchfunc"), "{unknown:?}");
        let module_level = runner.run(job("apptest", "ping", "")).await;
        assert_eq!(
            (
                module_level.worker_flag,
                module_level.worker_message.as_str()
            ),
            (1, "pong")
        );
    }

    #[test]
    fn sdk_copies_are_identical() {
        let canonical = fs::read(repo_path("apps/sdk/python/app-worker.py")).unwrap();
        let in_app = fs::read(repo_path("apps/apptest/app-worker.py")).unwrap();
        assert!(
            canonical == in_app,
            "apps/apptest/app-worker.py differs from the SDK copy"
        );
    }
}
