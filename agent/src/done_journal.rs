//! The ids of the tasks this agent finished, on disk, until their deadline.
//!
//! The broker delivers an instruction again when the agent stopped or died before acking it.
//! For a single instruction that only happens before its result was safe, but a message of
//! several instructions is acked when the last of them is done, so the others may be
//! finished already: the journal lets the next run of the agent drop those as replays instead
//! of running them twice. An entry is written once the task's result is published or spooled.
//!
//! One line per task, `<id> <deadline>`, appended to `done.log` in the spool directory. Lines
//! are written, not synced: they survive the agent's process dying, not the host losing
//! power (after which a task may run again, as it would without the journal). Entries past
//! their deadline are useless (the guard refuses such an instruction as expired anyway): the
//! file is rewritten without them at open and whenever it has grown well past what is live.

use elves_shared::wire::TaskId;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

const FILE_NAME: &str = "done.log";
/// The file is rewritten once it holds this many lines more than were live at the last rewrite.
const REWRITE_SLACK_LINES: usize = 10_000;

#[derive(Debug, thiserror::Error)]
#[error("done journal {path}: {source}")]
pub struct JournalError {
    path: String,
    source: std::io::Error,
}

pub struct DoneJournal {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    file: File,
    /// Every entry written since the last rewrite, with its deadline.
    entries: Vec<(TaskId, u64)>,
    /// Entries live at the last rewrite.
    live_at_rewrite: usize,
}

impl DoneJournal {
    /// Opens (or creates) the journal in `dir` and returns it with the entries whose deadline
    /// is not before `now_ms`. Lines that cannot be read (a torn last line) are skipped.
    pub fn open(
        dir: &Path,
        now_ms: u64,
    ) -> Result<(DoneJournal, Vec<(TaskId, u64)>), JournalError> {
        let path = dir.join(FILE_NAME);
        let error = |source| JournalError {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(error)?;
        let mut live = Vec::new();
        match File::open(&path) {
            Ok(file) => {
                for line in BufReader::new(file).lines() {
                    let line = line.map_err(error)?;
                    if let Some((id, deadline)) = parse_line(&line) {
                        if deadline >= now_ms {
                            live.push((id, deadline));
                        }
                    }
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(error(err)),
        }
        let file = rewrite(&path, &live).map_err(error)?;
        let journal = DoneJournal {
            path: path.clone(),
            state: Mutex::new(State {
                file,
                entries: live.clone(),
                live_at_rewrite: live.len(),
            }),
        };
        Ok((journal, live))
    }

    /// Notes that task `id` (live until `deadline`) is done.
    pub fn record(&self, id: &TaskId, deadline: u64, now_ms: u64) -> Result<(), JournalError> {
        let error = |source| JournalError {
            path: self.path.display().to_string(),
            source,
        };
        let mut state = self.state();
        state
            .file
            .write_all(format!("{id} {deadline}\n").as_bytes())
            .map_err(error)?;
        state.entries.push((id.clone(), deadline));
        if state.entries.len() > state.live_at_rewrite + REWRITE_SLACK_LINES {
            state.entries.retain(|(_, deadline)| *deadline >= now_ms);
            state.file = rewrite(&self.path, &state.entries).map_err(error)?;
            state.live_at_rewrite = state.entries.len();
        }
        Ok(())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a writer panicked; the entries are still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn parse_line(line: &str) -> Option<(TaskId, u64)> {
    let (id, deadline) = line.split_once(' ')?;
    Some((TaskId::parse(id).ok()?, deadline.parse().ok()?))
}

/// Replaces the file with `entries` (through a temporary file and a rename, so that a crash
/// leaves the old or the new file, never half of one) and returns it open for appending.
fn rewrite(path: &Path, entries: &[(TaskId, u64)]) -> std::io::Result<File> {
    let temporary = path.with_extension("log.new");
    {
        let mut file = std::io::BufWriter::new(File::create(&temporary)?);
        for (id, deadline) in entries {
            writeln!(file, "{id} {deadline}")?;
        }
        file.flush()?;
    }
    std::fs::rename(&temporary, path)?;
    OpenOptions::new().append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> TaskId {
        TaskId::parse(&format!("{n:016x}")).unwrap()
    }

    #[test]
    fn entries_survive_a_reopen_until_their_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, live) = DoneJournal::open(dir.path(), 1_000).unwrap();
        assert!(live.is_empty());
        journal.record(&id(1), 5_000, 1_000).unwrap();
        journal.record(&id(2), 1_500, 1_000).unwrap();
        drop(journal);

        let (_, live) = DoneJournal::open(dir.path(), 1_200).unwrap();
        assert_eq!(live, vec![(id(1), 5_000), (id(2), 1_500)]);
        let (_, live) = DoneJournal::open(dir.path(), 2_000).unwrap();
        assert_eq!(live, vec![(id(1), 5_000)], "the passed entry is gone");
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert_eq!(text, format!("{} 5000\n", id(1)), "and rewritten away");
    }

    #[test]
    fn a_torn_or_foreign_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("{} 9000\nnot a line\n{} 90", id(1), id(2));
        std::fs::write(dir.path().join(FILE_NAME), text).unwrap();
        let (_, live) = DoneJournal::open(dir.path(), 50).unwrap();
        assert_eq!(live, vec![(id(1), 9_000), (id(2), 90)]);
        let (_, live) = DoneJournal::open(dir.path(), 100).unwrap();
        assert_eq!(live, vec![(id(1), 9_000)]);
    }

    #[test]
    fn the_file_does_not_grow_past_what_is_live_plus_the_slack() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = DoneJournal::open(dir.path(), 0).unwrap();
        // Every entry is already past its deadline when the next is written.
        for n in 0..(3 * REWRITE_SLACK_LINES as u64) {
            journal.record(&id(n), n, n + 1).unwrap();
        }
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(text.lines().count() <= REWRITE_SLACK_LINES + 1);
        journal.record(&id(u64::MAX), u64::MAX, 0).unwrap();
        drop(journal);
        let (_, live) = DoneJournal::open(dir.path(), 3 * REWRITE_SLACK_LINES as u64).unwrap();
        assert_eq!(live, vec![(id(u64::MAX), u64::MAX)]);
    }
}
