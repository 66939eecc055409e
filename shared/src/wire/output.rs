//! Agent → center: a running worker's stdout and stderr, in chunks with byte offsets.
//!
//! Offsets count the bytes the worker wrote to that stream since it started. Chunks of one
//! stream are contiguous unless the agent had to drop bytes (output over its cap, or written
//! faster than the agent forwards): a chunk's `prev_end` is where the previous chunk the agent
//! sent for that stream ended, so a reader can tell "dropped for good" (`prev_end` at or before
//! its position) from "not arrived yet".

use super::{AgentId, TaskId};
use serde::{Deserialize, Serialize};

/// Which of a worker's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

impl OutputStream {
    pub const ALL: [OutputStream; 2] = [OutputStream::Stdout, OutputStream::Stderr];

    pub fn as_str(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        }
    }

    /// `stdout` or `stderr`, exactly.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "stdout" => Some(OutputStream::Stdout),
            "stderr" => Some(OutputStream::Stderr),
            _ => None,
        }
    }
}

/// The output chunks an agent had ready at one forwarding tick, of all its running tasks, in
/// one message (kind [`super::kind::OUTPUT`], routing key [`super::routing::CENTER_OUTPUT`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputBatch {
    pub agent: AgentId,
    pub chunks: Vec<OutputChunk>,
}

/// Bytes `[offset, offset + data.len())` of one stream of one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputChunk {
    pub id: TaskId,
    pub stream: OutputStream,
    pub offset: u64,
    /// Where the previous chunk sent for this stream ended (0 for the first): the bytes
    /// between it and `offset` were dropped by the agent and will never come.
    pub prev_end: u64,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// The last chunk of this stream: the worker has ended (`data` may be empty).
    pub eof: bool,
    /// With `eof`: the bytes dropped between the head and the tail kept under the cap.
    pub dropped: u64,
}

/// The line a reader shows where bytes were dropped (SPEC §12).
pub fn dropped_marker(n_bytes: u64) -> String {
    format!("[elves: {n_bytes} bytes dropped]\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_data_travels_as_binary_and_round_trips() {
        let batch = OutputBatch {
            agent: AgentId::parse("a1").unwrap(),
            chunks: vec![OutputChunk {
                id: TaskId::parse("00112233445566ff").unwrap(),
                stream: OutputStream::Stderr,
                offset: 7,
                prev_end: 7,
                data: vec![0xff; 100],
                eof: false,
                dropped: 0,
            }],
        };
        let bytes = super::super::encode(&batch);
        // A MessagePack bin field, not an array of 100 integers of two bytes each.
        assert!(bytes.len() < 200, "{}", bytes.len());
        assert_eq!(super::super::decode::<OutputBatch>(&bytes).unwrap(), batch);
    }
}
