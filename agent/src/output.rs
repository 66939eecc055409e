//! Live output: a running worker's stdout and stderr go to the center in chunks with byte
//! offsets while it runs (SPEC §12, "Live output").
//!
//! The pipe readers of `exec.rs` hand every read to the task's [`OutputTap`]; one
//! [`OutputForwarder`] per agent sends, every [`OutputConfig::interval`], what the taps of all
//! running tasks hold, as one [`OutputBatch`] message on `center.output`. So the agent sends at
//! most one output message per interval whatever the number of tasks, none when nothing was
//! written, and each stream at most [`OutputConfig::chunk_bytes`] per message.
//!
//! Per stream a tap keeps the head (the first half of the cap) until it is sent, and the
//! tail (the last half of the cap written after the head) in a ring: a worker writing a
//! gigabyte costs the agent at most the cap per stream, and the stored output ends with the
//! last bytes the worker wrote, where the error usually is. Bytes of the tail are sent live
//! too when the rate allows; the ones the ring lost before they could be sent are dropped,
//! and the chunk after them says so (`prev_end`). Sending is best effort: a lost output message
//! loses no result (the result goes its own durable way), only live bytes.

use elves_shared::bus::{BusMessage, Destination, SharedBus};
use elves_shared::wire::{
    self, kind, routing, AgentId, OutputBatch, OutputChunk, OutputStream, TaskId,
};
use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How much output the agent keeps and how fast it sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputConfig {
    /// Per task and stream: the head and the tail kept, half each.
    pub cap_bytes: u64,
    /// Per stream in one message.
    pub chunk_bytes: usize,
    /// All chunks of one message together.
    pub message_bytes: usize,
    /// Between two messages.
    pub interval: Duration,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            cap_bytes: 4 * 1024 * 1024,
            chunk_bytes: 256 * 1024,
            message_bytes: 1024 * 1024,
            interval: Duration::from_millis(200),
        }
    }
}

/// One task's output on its way to the center; written by the pipe readers.
#[derive(Debug)]
pub struct OutputTap {
    id: TaskId,
    state: Mutex<TapState>,
}

#[derive(Debug)]
struct TapState {
    streams: [StreamBuffer; 2],
}

impl OutputTap {
    fn new(id: TaskId, config: &OutputConfig) -> Self {
        let stream = || {
            StreamBuffer::new(
                config.cap_bytes / 2,
                config.cap_bytes - config.cap_bytes / 2,
            )
        };
        OutputTap {
            id,
            state: Mutex::new(TapState {
                streams: [stream(), stream()],
            }),
        }
    }

    pub fn write(&self, stream: OutputStream, bytes: &[u8]) {
        self.lock().streams[index(stream)].write(bytes);
    }

    fn lock(&self) -> MutexGuard<'_, TapState> {
        // A panic while holding the lock leaves consistent buffers (every update is a few
        // plain field writes), so a poisoned lock is taken as is.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Moves up to `budget` bytes into `chunks`; true when this tap is done (`ended` and all
    /// sent).
    fn take(
        &self,
        ended: bool,
        chunk_bytes: usize,
        budget: &mut usize,
        chunks: &mut Vec<OutputChunk>,
    ) -> bool {
        let mut state = self.lock();
        for stream in OutputStream::ALL {
            let buffer = &mut state.streams[index(stream)];
            let max = chunk_bytes.min(*budget);
            if let Some((offset, prev_end, data)) = buffer.take(max) {
                *budget -= data.len();
                chunks.push(OutputChunk {
                    id: self.id.clone(),
                    stream,
                    offset,
                    prev_end,
                    data,
                    eof: false,
                    dropped: 0,
                });
            }
        }
        if !ended || state.streams.iter().any(StreamBuffer::has_unsent) {
            return false;
        }
        for stream in OutputStream::ALL {
            let buffer = &state.streams[index(stream)];
            // Nothing written, nothing to end: a quiet stream costs no message.
            if buffer.written > 0 {
                chunks.push(OutputChunk {
                    id: self.id.clone(),
                    stream,
                    offset: buffer.written,
                    prev_end: buffer.last_end,
                    data: Vec::new(),
                    eof: true,
                    dropped: buffer.dropped(),
                });
            }
        }
        true
    }
}

fn index(stream: OutputStream) -> usize {
    match stream {
        OutputStream::Stdout => 0,
        OutputStream::Stderr => 1,
    }
}

/// One stream of one task: the head until sent, the tail in a ring.
#[derive(Debug)]
struct StreamBuffer {
    head_cap: u64,
    tail_cap: u64,
    /// Bytes the worker wrote so far.
    written: u64,
    /// Head bytes not sent yet; they start at `head_sent`.
    head_unsent: Vec<u8>,
    head_sent: u64,
    /// The last bytes written after the head, at most `tail_cap`; they end at `written`.
    tail: VecDeque<u8>,
    /// Bytes after the head up to here were sent (or lost from the ring before they could be).
    tail_sent: u64,
    /// Where the last chunk sent ended.
    last_end: u64,
}

impl StreamBuffer {
    fn new(head_cap: u64, tail_cap: u64) -> Self {
        StreamBuffer {
            head_cap,
            tail_cap,
            written: 0,
            head_unsent: Vec::new(),
            head_sent: 0,
            tail: VecDeque::new(),
            tail_sent: head_cap,
            last_end: 0,
        }
    }

    fn write(&mut self, mut bytes: &[u8]) {
        if self.written < self.head_cap {
            let n_head = usize::try_from(self.head_cap - self.written)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            self.head_unsent.extend_from_slice(&bytes[..n_head]);
            self.written += n_head as u64;
            bytes = &bytes[n_head..];
        }
        if bytes.is_empty() {
            return;
        }
        let tail_cap = usize::try_from(self.tail_cap).unwrap_or(usize::MAX);
        if bytes.len() >= tail_cap {
            self.tail.clear();
            self.tail.extend(&bytes[bytes.len() - tail_cap..]);
        } else {
            let overflow = (self.tail.len() + bytes.len()).saturating_sub(tail_cap);
            self.tail.drain(..overflow);
            self.tail.extend(bytes);
        }
        self.written += bytes.len() as u64;
    }

    fn tail_start(&self) -> u64 {
        self.written - self.tail.len() as u64
    }

    fn has_unsent(&self) -> bool {
        !self.head_unsent.is_empty() || self.tail_sent.max(self.tail_start()) < self.written
    }

    /// The next chunk of at most `max` bytes: `(offset, prev_end, data)`.
    fn take(&mut self, max: usize) -> Option<(u64, u64, Vec<u8>)> {
        if max == 0 {
            return None;
        }
        if !self.head_unsent.is_empty() {
            let n = max.min(self.head_unsent.len());
            let data: Vec<u8> = self.head_unsent.drain(..n).collect();
            if self.head_unsent.is_empty() {
                // Give the head's memory back once it is all sent.
                self.head_unsent = Vec::new();
            }
            let offset = self.head_sent;
            self.head_sent += n as u64;
            return Some(self.sent(offset, data));
        }
        let start = self.tail_sent.max(self.tail_start());
        if start >= self.written {
            return None;
        }
        let skip = usize::try_from(start - self.tail_start()).ok()?;
        let n = max.min(self.tail.len() - skip);
        let data: Vec<u8> = self.tail.range(skip..skip + n).copied().collect();
        self.tail_sent = start + n as u64;
        Some(self.sent(start, data))
    }

    fn sent(&mut self, offset: u64, data: Vec<u8>) -> (u64, u64, Vec<u8>) {
        let prev_end = self.last_end;
        self.last_end = offset + data.len() as u64;
        (offset, prev_end, data)
    }

    /// Bytes between the head and the tail that the agent did not keep.
    fn dropped(&self) -> u64 {
        self.written.saturating_sub(self.head_cap + self.tail_cap)
    }
}

/// Sends the output of every running task of one agent.
#[derive(Debug)]
pub struct OutputForwarder {
    config: OutputConfig,
    taps: Mutex<Vec<Arc<OutputTap>>>,
}

impl OutputForwarder {
    pub fn new(config: OutputConfig) -> Arc<Self> {
        Arc::new(OutputForwarder {
            config,
            taps: Mutex::new(Vec::new()),
        })
    }

    /// A tap for the task `id`. Its output is sent until the tap is dropped (the worker ended,
    /// or its future was dropped), then what is left and the end of each stream.
    pub fn open(&self, id: TaskId) -> Arc<OutputTap> {
        let tap = Arc::new(OutputTap::new(id, &self.config));
        self.lock().push(tap.clone());
        tap
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Arc<OutputTap>>> {
        self.taps
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The chunks of the next message, if anything is to be sent.
    fn next_batch(&self) -> Vec<OutputChunk> {
        let mut budget = self.config.message_bytes;
        let mut chunks = Vec::new();
        let mut taps = self.lock();
        let mut index = 0;
        while index < taps.len() {
            // Only this list holds it: the worker and its pipe readers are done with it.
            let ended = Arc::strong_count(&taps[index]) == 1;
            if taps[index].take(ended, self.config.chunk_bytes, &mut budget, &mut chunks) {
                taps.swap_remove(index);
            } else {
                index += 1;
            }
        }
        // The tasks served first this time go last next time, so that a chatty one cannot
        // take every message's budget.
        if !taps.is_empty() {
            taps.rotate_left(1);
        }
        chunks
    }

    /// Sends a message every interval while there is output, until `stop` resolves; what is
    /// still buffered then goes out in one last round.
    pub async fn run(
        self: Arc<Self>,
        bus: SharedBus,
        agent: AgentId,
        stop: impl Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let mut ticks = tokio::time::interval(self.config.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = ticks.tick() => false,
                () = &mut stop => true,
            };
            let chunks = self.next_batch();
            if !chunks.is_empty() {
                send(&bus, &agent, chunks).await;
            }
            if stopping {
                return;
            }
        }
    }
}

async fn send(bus: &SharedBus, agent: &AgentId, chunks: Vec<OutputChunk>) {
    let n_chunks = chunks.len();
    let batch = OutputBatch {
        agent: agent.clone(),
        chunks,
    };
    let message = BusMessage {
        // Of no use after a broker restart: the result carries what matters.
        transient: true,
        ..BusMessage::msgpack(kind::OUTPUT, wire::encode(&batch))
    };
    let destination = Destination::Topic(routing::CENTER_OUTPUT.to_string());
    if let Err(err) = bus.publish(&destination, message).await {
        log::debug!("agent {agent}: {n_chunks} output chunk(s) not sent: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(cap: u64, chunk: usize) -> OutputConfig {
        OutputConfig {
            cap_bytes: cap,
            chunk_bytes: chunk,
            message_bytes: usize::MAX,
            interval: Duration::from_millis(10),
        }
    }

    fn task() -> TaskId {
        TaskId::parse("0123456789abcdef").unwrap()
    }

    /// Reassembles what a reader sees: the bytes at their offsets, gaps as the marker.
    fn reassemble(chunks: &[OutputChunk], stream: OutputStream) -> Vec<u8> {
        let mut text = Vec::new();
        let mut at = 0;
        for chunk in chunks.iter().filter(|chunk| chunk.stream == stream) {
            if chunk.offset > at {
                assert!(chunk.prev_end <= at, "a gap the agent did not declare");
                text.extend(wire::dropped_marker(chunk.offset - at).into_bytes());
            }
            text.extend(&chunk.data);
            at = chunk.offset + chunk.data.len() as u64;
        }
        text
    }

    #[test]
    fn small_output_goes_whole_then_ends_and_a_quiet_stream_sends_nothing() {
        let forwarder = OutputForwarder::new(small(1024, 100));
        let tap = forwarder.open(task());
        assert!(
            forwarder.next_batch().is_empty(),
            "nothing written, nothing sent"
        );
        tap.write(OutputStream::Stdout, b"hello\n");
        let first = forwarder.next_batch();
        assert_eq!(first.len(), 1);
        assert_eq!(
            (first[0].offset, first[0].data.as_slice()),
            (0, &b"hello\n"[..])
        );
        tap.write(OutputStream::Stdout, b"world\n");
        drop(tap);
        let last = forwarder.next_batch();
        assert_eq!(last.len(), 2, "{last:?}");
        assert_eq!((last[0].offset, last[0].prev_end), (6, 6));
        assert!(last[1].eof && last[1].data.is_empty() && last[1].dropped == 0);
        assert_eq!(last[1].offset, 12);
        assert!(
            forwarder.next_batch().is_empty(),
            "the tap is gone once ended"
        );
    }

    #[test]
    fn over_the_cap_the_head_and_the_tail_are_kept_with_the_marker_between() {
        let forwarder = OutputForwarder::new(small(20, 1000));
        let tap = forwarder.open(task());
        // 10 head bytes, then 100 more of which the last 10 are the tail.
        let written: Vec<u8> = (0..110u8).map(|n| b'a' + n % 26).collect();
        for piece in written.chunks(7) {
            tap.write(OutputStream::Stdout, piece);
        }
        drop(tap);
        let mut chunks = Vec::new();
        for _ in 0..10 {
            chunks.extend(forwarder.next_batch());
        }
        let eof = chunks.last().unwrap();
        assert!(eof.eof);
        assert_eq!(eof.dropped, 90);
        let mut expected = written[..10].to_vec();
        expected.extend(b"[elves: 90 bytes dropped]\n");
        expected.extend(&written[100..]);
        assert_eq!(reassemble(&chunks, OutputStream::Stdout), expected);
    }

    #[test]
    fn the_tail_is_sent_live_within_the_rate_and_a_lost_part_is_declared() {
        let forwarder = OutputForwarder::new(small(20, 4));
        let tap = forwarder.open(task());
        tap.write(OutputStream::Stderr, b"0123456789");
        tap.write(OutputStream::Stderr, b"abcd");
        let mut chunks = Vec::new();
        for _ in 0..4 {
            chunks.extend(forwarder.next_batch());
        }
        // The head (10 bytes, 4 at a time) is out, and the tail went live.
        assert_eq!(reassemble(&chunks, OutputStream::Stderr), b"0123456789abcd");
        // 28 bytes in one go: the ring keeps the last 10, the 18 before are lost.
        tap.write(OutputStream::Stderr, b"efghijklmnopqrstuvwxyzABCDEF");
        drop(tap);
        for _ in 0..10 {
            chunks.extend(forwarder.next_batch());
        }
        let seen = String::from_utf8(reassemble(&chunks, OutputStream::Stderr)).unwrap();
        assert_eq!(seen, "0123456789abcd[elves: 18 bytes dropped]\nwxyzABCDEF");
    }

    #[test]
    fn a_gigabyte_costs_the_cap_not_the_gigabyte() {
        let forwarder = OutputForwarder::new(OutputConfig::default());
        let tap = forwarder.open(task());
        let block = vec![b'x'; 64 * 1024];
        for _ in 0..(1024 * 1024 * 1024 / block.len()) {
            tap.write(OutputStream::Stdout, &block);
        }
        let state = tap.lock();
        // Nothing was sent: the forwarder never ran.
        let buffer = &state.streams[0];
        assert_eq!(buffer.written, 1024 * 1024 * 1024);
        assert!(buffer.head_unsent.len() + buffer.tail.len() <= 4 * 1024 * 1024);
    }
}
