//! The result spool: results that cannot be published now wait on disk and are sent later, so
//! that a broker outage loses no result (SPEC §4).
//!
//! One file per result in `spool_dir` (the encoded [`JobResult`] with its destination), written
//! to a temporary name, fsync'd, renamed into place and the directory fsync'd, so that a crash
//! leaves either a whole file or none; the instruction is acked only after that. A background
//! loop re-sends the files oldest first, with backoff while the bus is away, and deletes each one
//! only after the bus accepted it. Files that cannot be read back are moved aside (`.bad`) rather
//! than retried forever.
//!
//! This module also owns how a result is turned into a bus message and published, because the
//! live path and the spool must do exactly the same thing. It does not decide when to spool:
//! the runtime does.

use crate::stats::{bump, AgentStats};
use elves_shared::bus::{Bus, BusError, BusMessage, Destination};
use elves_shared::wire::{self, routing, JobResult};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

const FILE_SUFFIX: &str = ".result";
const TEMP_SUFFIX: &str = ".tmp";
const BAD_SUFFIX: &str = ".bad";

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Even with no news, look at the directory now and then: an operator may have put files back.
const IDLE_RESCAN: Duration = Duration::from_secs(60);

/// A result and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub destination: Destination,
    /// Echoes the request's correlation id (RT replies).
    pub correlation_id: Option<String>,
    pub result: JobResult,
}

impl Outgoing {
    /// True for results any center may take (not an RT reply that a center waits for).
    pub fn goes_to_center_result(&self) -> bool {
        matches!(&self.destination, Destination::Topic(key) if key == routing::CENTER_RESULT)
    }

    pub fn message(&self) -> BusMessage {
        let mut message = BusMessage::msgpack(wire::kind::RESULT, wire::encode(&self.result));
        message.message_id = Some(self.result.id.to_string());
        message.correlation_id = self.correlation_id.clone();
        message
    }
}

/// Publishes a result to its destination.
///
/// An RT reply whose reply queue is gone (the waiting center stopped or restarted) goes to
/// `center.result` instead, so that a center still stores it: nobody is waiting for the reply
/// any more, but the result must not be lost.
pub async fn publish(bus: &dyn Bus, outgoing: &Outgoing) -> Result<(), BusError> {
    match bus.publish(&outgoing.destination, outgoing.message()).await {
        Err(BusError::Unroutable(name))
            if matches!(outgoing.destination, Destination::Queue(_)) =>
        {
            log::warn!(
                "task {}: reply queue {name} is gone, sending the result to {}",
                outgoing.result.id,
                routing::CENTER_RESULT
            );
            let fallback = Destination::Topic(routing::CENTER_RESULT.to_string());
            bus.publish(&fallback, outgoing.message()).await
        }
        other => other,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("spool file {path}: {message}")]
    Corrupt { path: String, message: String },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What a spool file holds. Private: the file format is not a wire type.
#[derive(Serialize, Deserialize)]
struct Record {
    /// `topic` or `queue`.
    destination_kind: String,
    destination: String,
    #[serde(default)]
    correlation_id: Option<String>,
    result: JobResult,
}

impl Record {
    fn of(outgoing: &Outgoing) -> Self {
        let (destination_kind, destination) = match &outgoing.destination {
            Destination::Topic(key) => ("topic", key.clone()),
            Destination::Queue(name) => ("queue", name.clone()),
        };
        Record {
            destination_kind: destination_kind.to_string(),
            destination,
            correlation_id: outgoing.correlation_id.clone(),
            result: outgoing.result.clone(),
        }
    }

    fn into_outgoing(self) -> Result<Outgoing, String> {
        let destination = match self.destination_kind.as_str() {
            "topic" => Destination::Topic(self.destination),
            "queue" => Destination::Queue(self.destination),
            other => return Err(format!("unknown destination kind {other:?}")),
        };
        Ok(Outgoing {
            destination,
            correlation_id: self.correlation_id,
            result: self.result,
        })
    }
}

/// The spool directory. Its methods do blocking file I/O: call them from `spawn_blocking` (the
/// async helpers below do).
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    /// Makes names unique within one process; the time prefix separates processes.
    sequence: AtomicU64,
}

impl Spool {
    /// Creates the directory if needed and removes half-written files left by a crash: their
    /// instruction was never acked, so the broker delivers it again.
    pub fn open(dir: &Path) -> Result<Self, SpoolError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
            let path = entry.map_err(io_error(dir))?.path();
            if path.to_string_lossy().ends_with(TEMP_SUFFIX) {
                if let Err(err) = std::fs::remove_file(&path) {
                    log::warn!("spool: cannot remove {}: {err}", path.display());
                }
            }
        }
        Ok(Spool {
            dir: dir.to_path_buf(),
            sequence: AtomicU64::new(0),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes one result durably and returns its file.
    pub fn write(&self, outgoing: &Outgoing) -> Result<PathBuf, SpoolError> {
        let bytes = wire::encode(&Record::of(outgoing));
        if bytes.is_empty() {
            return Err(SpoolError::Corrupt {
                path: self.dir.display().to_string(),
                message: format!("task {}: result could not be encoded", outgoing.result.id),
            });
        }
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "{:013}-{}-{}-{sequence}{FILE_SUFFIX}",
            elves_shared::time::now_unix_ms(),
            outgoing.result.id,
            std::process::id(),
        );
        let path = self.dir.join(&name);
        let temp = self.dir.join(format!("{name}{TEMP_SUFFIX}"));
        let written = write_durably(&temp, &bytes)
            .and_then(|()| std::fs::rename(&temp, &path))
            .and_then(|()| sync_dir(&self.dir));
        if let Err(err) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(io_error(&path)(err));
        }
        Ok(path)
    }

    /// The spooled files, oldest first (names start with the spool time).
    pub fn pending(&self) -> Result<Vec<PathBuf>, SpoolError> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io_error(&self.dir))? {
            let path = entry.map_err(io_error(&self.dir))?.path();
            if path.to_string_lossy().ends_with(FILE_SUFFIX) {
                files.push(path);
            }
        }
        files.sort();
        Ok(files)
    }

    pub fn read(&self, path: &Path) -> Result<Outgoing, SpoolError> {
        let bytes = std::fs::read(path).map_err(io_error(path))?;
        let corrupt = |message: String| SpoolError::Corrupt {
            path: path.display().to_string(),
            message,
        };
        let record: Record = wire::decode(&bytes).map_err(|err| corrupt(err.to_string()))?;
        record.into_outgoing().map_err(corrupt)
    }

    pub fn remove(&self, path: &Path) -> Result<(), SpoolError> {
        std::fs::remove_file(path).map_err(io_error(path))
    }

    /// Moves an unreadable file aside so that it is kept for a human but never retried.
    pub fn quarantine(&self, path: &Path) -> Result<(), SpoolError> {
        let mut bad = path.as_os_str().to_owned();
        bad.push(BAD_SUFFIX);
        std::fs::rename(path, &bad).map_err(io_error(path))
    }
}

fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Makes a rename in `dir` survive a power loss.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Runs blocking spool work off the async threads.
async fn blocking<T, F>(spool: &Arc<Spool>, work: F) -> Result<T, SpoolError>
where
    T: Send + 'static,
    F: FnOnce(&Spool) -> Result<T, SpoolError> + Send + 'static,
{
    let spool = spool.clone();
    let dir = spool.dir.clone();
    tokio::task::spawn_blocking(move || work(&spool))
        .await
        .unwrap_or_else(|err| {
            Err(SpoolError::Io {
                path: dir.display().to_string(),
                source: std::io::Error::other(err.to_string()),
            })
        })
}

/// Writes a result to the spool and wakes the flusher.
pub async fn spool_result(
    spool: &Arc<Spool>,
    outgoing: Outgoing,
    wake: &Notify,
    stats: &AgentStats,
) -> Result<PathBuf, SpoolError> {
    let path = blocking(spool, move |spool| spool.write(&outgoing)).await?;
    bump(&stats.results_spooled);
    wake.notify_one();
    Ok(path)
}

/// How one pass over the spool ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushOutcome {
    /// Every file was sent (or there was none).
    Drained { n_sent: usize },
    /// The bus refused or was away; the rest waits for the next pass.
    Stalled { n_sent: usize },
}

/// Sends the spooled results oldest first, stopping at the first failure: when the bus is away,
/// trying the other files would only fail the same way.
pub async fn flush_once(spool: &Arc<Spool>, bus: &dyn Bus, stats: &AgentStats) -> FlushOutcome {
    let files = match blocking(spool, |spool| spool.pending()).await {
        Ok(files) => files,
        Err(err) => {
            log::error!("spool: cannot list: {err}");
            return FlushOutcome::Stalled { n_sent: 0 };
        }
    };
    let mut n_sent = 0;
    for path in files {
        let read_path = path.clone();
        let outgoing = match blocking(spool, move |spool| spool.read(&read_path)).await {
            Ok(outgoing) => outgoing,
            Err(SpoolError::Corrupt {
                path: name,
                message,
            }) => {
                log::error!("spool: {name} is unreadable, moving it aside: {message}");
                let bad = path.clone();
                if let Err(err) = blocking(spool, move |spool| spool.quarantine(&bad)).await {
                    log::error!("spool: {err}");
                    return FlushOutcome::Stalled { n_sent };
                }
                continue;
            }
            Err(err) => {
                log::error!("spool: {err}");
                return FlushOutcome::Stalled { n_sent };
            }
        };
        let task_id = outgoing.result.id.clone();
        if let Err(err) = publish(bus, &outgoing).await {
            log::warn!("task {task_id}: spooled result not sent yet: {err}");
            return FlushOutcome::Stalled { n_sent };
        }
        bump(&stats.results_published);
        n_sent += 1;
        log::info!("task {task_id}: spooled result sent");
        let sent = path.clone();
        if let Err(err) = blocking(spool, move |spool| spool.remove(&sent)).await {
            // Sending it again later is a duplicate, which the center tolerates; losing it is not.
            log::error!("task {task_id}: sent but not removed from the spool: {err}");
            return FlushOutcome::Stalled { n_sent };
        }
    }
    FlushOutcome::Drained { n_sent }
}

/// The background flusher: a pass at start (files left by a previous run), then one whenever a
/// result is spooled, retrying with exponential backoff while the bus stays away.
pub async fn run_flusher(
    spool: Arc<Spool>,
    bus: Arc<dyn Bus>,
    stats: Arc<AgentStats>,
    wake: Arc<Notify>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let pause = match flush_once(&spool, bus.as_ref(), &stats).await {
            FlushOutcome::Drained { .. } => {
                backoff = FIRST_BACKOFF;
                None
            }
            FlushOutcome::Stalled { .. } => {
                let pause = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                Some(pause)
            }
        };
        match pause {
            Some(pause) => tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(pause) => {}
            },
            None => tokio::select! {
                () = &mut shutdown => return,
                () = wake.notified() => {}
                () = tokio::time::sleep(IDLE_RESCAN) => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use elves_shared::bus::testing::PublishOutageBus;
    use elves_shared::bus::{Consumer, InProcBus, QueueSpec};
    use elves_shared::wire::{AgentId, Mode, TaskId, TaskType};

    fn result(id: &str) -> JobResult {
        JobResult {
            id: TaskId::parse(id).unwrap(),
            agent: AgentId::parse("host-1").unwrap(),
            task_type: TaskType::Queue,
            mode: Mode::NP,
            app: "apptest".into(),
            func: "hello".into(),
            worker_flag: 1,
            worker_message: "hi".into(),
            worker_costtime: 3,
            started_at: 10,
            finished_at: 13,
            error: String::new(),
        }
    }

    fn to_center(id: &str) -> Outgoing {
        Outgoing {
            destination: Destination::Topic(routing::CENTER_RESULT.into()),
            correlation_id: None,
            result: result(id),
        }
    }

    async fn center_results(bus: &dyn Bus) -> Consumer {
        let spec = QueueSpec {
            name: bus.queue_name("center.result"),
            bindings: vec![routing::CENTER_RESULT.into()],
            durable: true,
        };
        bus.consume(spec, 8).await.unwrap()
    }

    #[test]
    fn a_written_result_reads_back_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let outgoing = Outgoing {
            destination: Destination::Queue("elves.reply.x".into()),
            correlation_id: Some("c-1".into()),
            result: result("0000000000000001"),
        };
        let path = spool.write(&outgoing).unwrap();
        assert_eq!(spool.pending().unwrap(), vec![path.clone()]);
        assert_eq!(spool.read(&path).unwrap(), outgoing);
        spool.remove(&path).unwrap();
        assert!(spool.pending().unwrap().is_empty());
    }

    #[test]
    fn pending_is_oldest_first_and_leftover_temp_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.result.tmp"), b"half").unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        assert!(!dir.path().join("x.result.tmp").exists());
        let first = spool.write(&to_center("0000000000000001")).unwrap();
        let second = spool.write(&to_center("0000000000000002")).unwrap();
        assert_eq!(spool.pending().unwrap(), vec![first, second]);
    }

    #[tokio::test]
    async fn results_wait_while_the_bus_is_away_and_are_sent_when_it_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path()).unwrap());
        let stats = AgentStats::new();
        let bus = PublishOutageBus::new("spooltest", true);
        let mut consumer = center_results(&bus).await;
        spool_result(
            &spool,
            to_center("0000000000000001"),
            &Notify::new(),
            &stats,
        )
        .await
        .unwrap();
        spool_result(
            &spool,
            to_center("0000000000000002"),
            &Notify::new(),
            &stats,
        )
        .await
        .unwrap();
        assert_eq!(stats.snapshot().results_spooled, 2);

        let outcome = flush_once(&spool, &bus, &stats).await;
        assert_eq!(outcome, FlushOutcome::Stalled { n_sent: 0 });
        assert_eq!(spool.pending().unwrap().len(), 2);

        bus.set_down(false);
        let outcome = flush_once(&spool, &bus, &stats).await;
        assert_eq!(outcome, FlushOutcome::Drained { n_sent: 2 });
        assert!(spool.pending().unwrap().is_empty());
        assert_eq!(stats.snapshot().results_published, 2);
        for expected in ["0000000000000001", "0000000000000002"] {
            let delivery = consumer.next().await.unwrap();
            assert_eq!(delivery.message.kind, wire::kind::RESULT);
            let received: JobResult = wire::decode(&delivery.message.body).unwrap();
            assert_eq!(received.id.as_str(), expected);
            delivery.ack().await;
        }
    }

    #[tokio::test]
    async fn an_unreadable_file_is_moved_aside_and_the_rest_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path()).unwrap());
        let stats = AgentStats::new();
        let bus = InProcBus::new("spooltest");
        let mut consumer = center_results(&bus).await;
        std::fs::write(dir.path().join("0000000000000-garbage.result"), b"\xff\x00").unwrap();
        spool.write(&to_center("0000000000000003")).unwrap();
        let outcome = flush_once(&spool, &bus, &stats).await;
        assert_eq!(outcome, FlushOutcome::Drained { n_sent: 1 });
        assert!(dir.path().join("0000000000000-garbage.result.bad").exists());
        assert!(spool.pending().unwrap().is_empty());
        let delivery = consumer.next().await.unwrap();
        let received: JobResult = wire::decode(&delivery.message.body).unwrap();
        assert_eq!(received.id.as_str(), "0000000000000003");
    }

    #[tokio::test]
    async fn an_rt_reply_whose_queue_is_gone_goes_to_center_result() {
        let bus = InProcBus::new("spooltest");
        let mut consumer = center_results(&bus).await;
        let outgoing = Outgoing {
            destination: Destination::Queue("spooltest.reply.gone".into()),
            correlation_id: Some("c-9".into()),
            result: result("0000000000000009"),
        };
        publish(&bus, &outgoing).await.unwrap();
        let delivery = consumer.next().await.unwrap();
        assert_eq!(delivery.message.correlation_id.as_deref(), Some("c-9"));
    }

    #[tokio::test]
    async fn the_flusher_sends_what_is_spooled_and_stops_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path()).unwrap());
        let stats = Arc::new(AgentStats::new());
        let bus: Arc<dyn Bus> = Arc::new(InProcBus::new("spooltest"));
        let mut consumer = center_results(bus.as_ref()).await;
        let wake = Arc::new(Notify::new());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let flusher = tokio::spawn(run_flusher(
            spool.clone(),
            bus.clone(),
            stats.clone(),
            wake.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        spool_result(&spool, to_center("0000000000000004"), &wake, &stats)
            .await
            .unwrap();
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap()
            .unwrap();
        let received: JobResult = wire::decode(&delivery.message.body).unwrap();
        assert_eq!(received.id.as_str(), "0000000000000004");
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(10), flusher)
            .await
            .unwrap()
            .unwrap();
        assert!(spool.pending().unwrap().is_empty());
    }
}
