//! Finding again what the workers of interrupted tasks left running.
//!
//! A worker dies with its agent (`exec` asks the kernel for that), but a process it started
//! does not, and may be in another process group or session. Every process of a task carries
//! its `ELVES_TASK_ID` in its environment unless it replaced it: at start, the agent kills the
//! processes of this user whose environment names a task it had started and never finished, so
//! that nothing of a task it reports lost is still at work.

use elves_shared::wire::TaskId;
use std::collections::HashSet;

/// Sends SIGKILL to every process whose environment holds `ELVES_TASK_ID=<id>` for one of
/// `tasks`; returns how many were signalled.
pub(super) fn kill(tasks: &[TaskId]) -> usize {
    let wanted: HashSet<Vec<u8>> = tasks
        .iter()
        .map(|id| format!("ELVES_TASK_ID={id}").into_bytes())
        .collect();
    let own_pid = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        log::warn!("cannot read /proc: processes of interrupted tasks are not looked for");
        return 0;
    };
    let mut n_killed = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own_pid {
            continue;
        }
        // Other users' environments are unreadable, and not ours to end.
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if let Some(variable) = environ
            .split(|&byte| byte == 0)
            .find(|variable| wanted.contains(*variable))
        {
            let Ok(raw_pid) = libc::pid_t::try_from(pid) else {
                continue;
            };
            log::warn!(
                "pid {pid} ({}): left by an interrupted task, killed",
                String::from_utf8_lossy(variable)
            );
            // SAFETY: kill has no memory-safety preconditions; a process gone meanwhile is
            // ESRCH, which needs no handling.
            unsafe {
                libc::kill(raw_pid, libc::SIGKILL);
            }
            n_killed += 1;
        }
    }
    n_killed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    #[test]
    fn kills_the_processes_of_the_named_tasks_only() {
        let task = TaskId::parse("00000000000fa17e").unwrap();
        let other = TaskId::parse("00000000000fa17f").unwrap();
        let spawn = |id: &TaskId| {
            Command::new("sleep")
                .arg("300")
                .env("ELVES_TASK_ID", id.to_string())
                .spawn()
                .unwrap()
        };
        let mut ours = spawn(&task);
        let mut theirs = spawn(&other);
        // The environment is readable once the child has exec'd.
        let deadline = Instant::now() + Duration::from_secs(10);
        let marker = format!("ELVES_TASK_ID={task}").into_bytes();
        while !std::fs::read(format!("/proc/{}/environ", ours.id()))
            .unwrap_or_default()
            .windows(marker.len())
            .any(|window| window == marker)
        {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(kill(std::slice::from_ref(&task)), 1);
        let status = ours.wait().unwrap();
        assert!(!status.success());
        assert!(
            theirs.try_wait().unwrap().is_none(),
            "another task's process lives"
        );
        theirs.kill().unwrap();
        theirs.wait().unwrap();
    }
}
