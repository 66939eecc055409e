//! The ids of the tasks this agent started and finished, on disk, until their deadline.
//!
//! The broker delivers an instruction again when the agent stopped or died before acking it.
//! For a single instruction that only happens before its result was safe, but a message of
//! several instructions is acked when the last of them is done, so the others may be
//! finished already: the journal lets the next run of the agent drop those as replays instead
//! of running them twice. An entry is written once the task's result is published or spooled.
//!
//! A task is also written, as started, just before its worker is spawned. A task started but
//! never finished is one whose agent died (or was stopped) while the worker ran: its worker may
//! have done part of its work, or all of it, so the next run of the agent must not start it
//! again. [`DoneJournal::open`] returns those as `interrupted`; the runtime reports them as lost
//! when their instruction comes back.
//!
//! One line per task, `<id> <deadline>` when done, `<id> <deadline> started` when started,
//! appended to `done.log` in the spool directory. Lines
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

/// What the journal held when it was opened, without the entries past their deadline.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Opened {
    /// Tasks finished, with their deadline.
    pub done: Vec<(TaskId, u64)>,
    /// Tasks whose worker was started and that never finished, with their deadline.
    pub interrupted: Vec<(TaskId, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    Started,
    Done,
}

struct State {
    file: File,
    /// Every entry written since the last rewrite, with its deadline.
    entries: Vec<(TaskId, u64, Mark)>,
    /// Entries live at the last rewrite.
    live_at_rewrite: usize,
}

impl DoneJournal {
    /// Opens (or creates) the journal in `dir` and returns it with the entries whose deadline
    /// is not before `now_ms`. Lines that cannot be read (a torn last line) are skipped.
    pub fn open(dir: &Path, now_ms: u64) -> Result<(DoneJournal, Opened), JournalError> {
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
                    if let Some((id, deadline, mark)) = parse_line(&line) {
                        if deadline >= now_ms {
                            live.push((id, deadline, mark));
                        }
                    }
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(error(err)),
        }
        let opened = sort_out(&live);
        // Only the outcome is kept: an interrupted task stays marked as started until the
        // runtime settles it, a finished one as done.
        let mut kept: Vec<(TaskId, u64, Mark)> = opened
            .done
            .iter()
            .map(|(id, deadline)| (id.clone(), *deadline, Mark::Done))
            .collect();
        kept.extend(
            opened
                .interrupted
                .iter()
                .map(|(id, deadline)| (id.clone(), *deadline, Mark::Started)),
        );
        let file = rewrite(&path, &kept).map_err(error)?;
        let journal = DoneJournal {
            path: path.clone(),
            state: Mutex::new(State {
                file,
                live_at_rewrite: kept.len(),
                entries: kept,
            }),
        };
        Ok((journal, opened))
    }

    /// Notes that the worker of task `id` (live until `deadline`) is about to be spawned.
    pub fn record_started(
        &self,
        id: &TaskId,
        deadline: u64,
        now_ms: u64,
    ) -> Result<(), JournalError> {
        self.append(id, deadline, Mark::Started, now_ms)
    }

    /// Notes that task `id` (live until `deadline`) is done.
    pub fn record(&self, id: &TaskId, deadline: u64, now_ms: u64) -> Result<(), JournalError> {
        self.append(id, deadline, Mark::Done, now_ms)
    }

    fn append(
        &self,
        id: &TaskId,
        deadline: u64,
        mark: Mark,
        now_ms: u64,
    ) -> Result<(), JournalError> {
        let error = |source| JournalError {
            path: self.path.display().to_string(),
            source,
        };
        let mut state = self.state();
        state
            .file
            .write_all(line_of(id, deadline, mark).as_bytes())
            .map_err(error)?;
        state.entries.push((id.clone(), deadline, mark));
        if state.entries.len() > state.live_at_rewrite + REWRITE_SLACK_LINES {
            state.entries.retain(|(_, deadline, _)| *deadline >= now_ms);
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

/// Done tasks, and started tasks with no done entry.
fn sort_out(entries: &[(TaskId, u64, Mark)]) -> Opened {
    let done: std::collections::HashSet<&TaskId> = entries
        .iter()
        .filter(|(_, _, mark)| *mark == Mark::Done)
        .map(|(id, _, _)| id)
        .collect();
    let mut opened = Opened::default();
    let mut interrupted_seen = std::collections::HashSet::new();
    for (id, deadline, mark) in entries {
        match mark {
            Mark::Done => opened.done.push((id.clone(), *deadline)),
            Mark::Started if !done.contains(id) && interrupted_seen.insert(id) => {
                opened.interrupted.push((id.clone(), *deadline))
            }
            Mark::Started => {}
        }
    }
    opened
}

fn line_of(id: &TaskId, deadline: u64, mark: Mark) -> String {
    match mark {
        Mark::Done => format!("{id} {deadline}\n"),
        Mark::Started => format!("{id} {deadline} started\n"),
    }
}

fn parse_line(line: &str) -> Option<(TaskId, u64, Mark)> {
    let mut fields = line.split(' ');
    let id = TaskId::parse(fields.next()?).ok()?;
    let deadline = fields.next()?.parse().ok()?;
    let mark = match fields.next() {
        None => Mark::Done,
        Some("started") => Mark::Started,
        Some(_) => return None,
    };
    if fields.next().is_some() {
        return None;
    }
    Some((id, deadline, mark))
}

/// Replaces the file with `entries` (through a temporary file and a rename, so that a crash
/// leaves the old or the new file, never half of one) and returns it open for appending.
fn rewrite(path: &Path, entries: &[(TaskId, u64, Mark)]) -> std::io::Result<File> {
    let temporary = path.with_extension("log.new");
    {
        let mut file = std::io::BufWriter::new(File::create(&temporary)?);
        for (id, deadline, mark) in entries {
            file.write_all(line_of(id, *deadline, *mark).as_bytes())?;
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
        let (journal, opened) = DoneJournal::open(dir.path(), 1_000).unwrap();
        assert_eq!(opened, Opened::default());
        journal.record(&id(1), 5_000, 1_000).unwrap();
        journal.record(&id(2), 1_500, 1_000).unwrap();
        drop(journal);

        let (_, opened) = DoneJournal::open(dir.path(), 1_200).unwrap();
        assert_eq!(opened.done, vec![(id(1), 5_000), (id(2), 1_500)]);
        let (_, opened) = DoneJournal::open(dir.path(), 2_000).unwrap();
        assert_eq!(
            opened.done,
            vec![(id(1), 5_000)],
            "the passed entry is gone"
        );
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert_eq!(text, format!("{} 5000\n", id(1)), "and rewritten away");
    }

    #[test]
    fn a_torn_or_foreign_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("{} 9000\nnot a line\n{} 90", id(1), id(2));
        std::fs::write(dir.path().join(FILE_NAME), text).unwrap();
        let (_, opened) = DoneJournal::open(dir.path(), 50).unwrap();
        assert_eq!(opened.done, vec![(id(1), 9_000), (id(2), 90)]);
        let (_, opened) = DoneJournal::open(dir.path(), 100).unwrap();
        assert_eq!(opened.done, vec![(id(1), 9_000)]);
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
        let (_, opened) = DoneJournal::open(dir.path(), 3 * REWRITE_SLACK_LINES as u64).unwrap();
        assert_eq!(opened.done, vec![(id(u64::MAX), u64::MAX)]);
    }

    #[test]
    fn a_task_started_and_never_done_is_interrupted_until_it_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = DoneJournal::open(dir.path(), 0).unwrap();
        journal.record_started(&id(1), 9_000, 0).unwrap();
        journal.record_started(&id(2), 9_000, 0).unwrap();
        journal.record(&id(2), 9_000, 0).unwrap();
        drop(journal);

        let (journal, opened) = DoneJournal::open(dir.path(), 10).unwrap();
        assert_eq!(opened.done, vec![(id(2), 9_000)]);
        assert_eq!(opened.interrupted, vec![(id(1), 9_000)]);
        // Still interrupted at the next start if nothing settled it meanwhile.
        drop(journal);
        let (journal, opened) = DoneJournal::open(dir.path(), 20).unwrap();
        assert_eq!(opened.interrupted, vec![(id(1), 9_000)]);
        journal.record(&id(1), 9_000, 20).unwrap();
        drop(journal);
        let (_, opened) = DoneJournal::open(dir.path(), 30).unwrap();
        assert_eq!(opened.interrupted, vec![]);
        assert_eq!(opened.done, vec![(id(2), 9_000), (id(1), 9_000)]);
        // Past its deadline an interrupted task is forgotten: its instruction is expired anyway.
        let (_, opened) = DoneJournal::open(dir.path(), 9_001).unwrap();
        assert_eq!(opened, Opened::default());
    }
}
