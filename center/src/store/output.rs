//! Live output (SPEC §12): the chunks of tasks' stdout and stderr, table `task_output`.
//!
//! Offsets are the worker's: bytes it wrote to the stream. A stream keeps its head (rows that
//! start before `head_bytes`) and the last `tail_bytes` after it; older rows of the middle are
//! deleted as newer ones arrive, so a task costs at most about `head_bytes + tail_bytes` per
//! stream whatever it writes. Rows are only appended: a chunk that does not start at or after
//! the end of what is stored for its stream (a duplicate, an overlap) is ignored, so what is
//! stored never overlaps and reads need no deduplication.
//!
//! Readers get bytes from an offset; where bytes are missing (dropped by the agent, pruned
//! here, or arrived out of order and refused) they get the marker line instead and the offset
//! moves past them. A gap between stored rows is always final: rows are only appended, so
//! nothing can be stored into it later.

use super::connection::{DbConnection, Durability};
use super::models::{db_time, unix_ms};
use super::schema::task_output;
use super::{Store, StoreError};
use diesel::prelude::*;
use elves_shared::wire::{dropped_marker, OutputChunk, OutputStream, TaskId};

/// How much of a stream the center keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputBounds {
    pub head_bytes: u64,
    pub tail_bytes: u64,
}

/// What is stored of one stream from an offset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutputRead {
    /// The bytes from the offset asked for, with a marker line where bytes were dropped.
    pub data: Vec<u8>,
    /// The offset to read from next.
    pub next: u64,
    /// The stream's end was stored and `next` reached it: nothing more will come.
    pub eof: bool,
    /// The agent's end-of-stream row exists for some stream of the task (its last output
    /// message arrived).
    pub task_eof: bool,
    /// Bytes of the stream were dropped (by the agent, or pruned here), as far as known.
    pub truncated: bool,
}

#[derive(Insertable)]
#[diesel(table_name = task_output)]
struct NewChunk<'a> {
    task_id: &'a str,
    stream: &'a str,
    byte_offset: i64,
    byte_end: i64,
    prev_end: i64,
    data: &'a [u8],
    eof: bool,
    dropped: i64,
    stored_at: i64,
}

#[derive(Queryable)]
struct ChunkRow {
    byte_offset: i64,
    byte_end: i64,
    data: Vec<u8>,
    eof: bool,
}

impl Store {
    /// Stores the chunks that extend their streams, then prunes the middle of each stream
    /// past `bounds`; returns how many chunks were stored.
    pub fn store_output(
        &self,
        chunks: &[OutputChunk],
        bounds: OutputBounds,
        now: u64,
    ) -> Result<usize, StoreError> {
        // Output is a live view; its rows are not worth a disk flush each (see "What a crash
        // can lose": like the RT history).
        self.conn()?
            .write_transaction_with(Durability::Relaxed, |conn| {
                let mut n_stored = 0;
                for chunk in chunks {
                    if store_chunk(conn, chunk, bounds, now)? {
                        n_stored += 1;
                    }
                }
                Ok(n_stored)
            })
    }

    /// Reads `stream` of `task` from `offset`, about `max_bytes` at most.
    pub fn read_output(
        &self,
        task: &TaskId,
        stream: OutputStream,
        offset: u64,
        max_bytes: usize,
    ) -> Result<OutputRead, StoreError> {
        let conn = &mut *self.conn()?;
        let eof_streams: Vec<(String, i64)> = task_output::table
            .filter(task_output::task_id.eq(task.as_str()))
            .filter(task_output::eof.eq(true))
            .select((task_output::stream, task_output::dropped))
            .load(conn)?;
        let stream_eof = eof_streams.iter().find(|(name, _)| name == stream.as_str());
        let rows: Vec<ChunkRow> = task_output::table
            .filter(task_output::task_id.eq(task.as_str()))
            .filter(task_output::stream.eq(stream.as_str()))
            .filter(
                task_output::byte_end
                    .gt(db_time(offset))
                    .or(task_output::eof.eq(true)),
            )
            .order(task_output::byte_offset)
            .limit(64)
            .select((
                task_output::byte_offset,
                task_output::byte_end,
                task_output::data,
                task_output::eof,
            ))
            .load(conn)?;
        let mut read = OutputRead {
            next: offset,
            task_eof: !eof_streams.is_empty(),
            truncated: stream_eof.is_some_and(|(_, dropped)| *dropped > 0),
            ..OutputRead::default()
        };
        for row in rows {
            let (start, end) = (unix_ms(row.byte_offset), unix_ms(row.byte_end));
            if start > read.next {
                read.data
                    .extend(dropped_marker(start - read.next).into_bytes());
                read.truncated = true;
                read.next = start;
            }
            if row.eof {
                read.eof = true;
                break;
            }
            let skip = usize::try_from(read.next - start).unwrap_or(usize::MAX);
            if let Some(fresh) = row.data.get(skip..) {
                read.data.extend_from_slice(fresh);
            }
            read.next = read.next.max(end);
            if read.data.len() >= max_bytes {
                break;
            }
        }
        Ok(read)
    }

    /// Whether the agent dropped bytes of any stream of `task` (its end rows say).
    pub fn output_truncated(&self, task: &TaskId) -> Result<bool, StoreError> {
        Ok(diesel::select(diesel::dsl::exists(
            task_output::table
                .filter(task_output::task_id.eq(task.as_str()))
                .filter(task_output::eof.eq(true))
                .filter(task_output::dropped.gt(0)),
        ))
        .get_result(&mut *self.conn()?)?)
    }

    /// Deletes output stored before `cutoff` (unix ms); returns the rows deleted.
    pub fn delete_output_before(&self, cutoff: u64) -> Result<usize, StoreError> {
        Ok(diesel::delete(task_output::table)
            .filter(task_output::stored_at.lt(db_time(cutoff)))
            .execute(&mut *self.conn()?)?)
    }
}

/// Stores one chunk if it extends its stream; prunes the stream's middle.
fn store_chunk(
    conn: &mut DbConnection,
    chunk: &OutputChunk,
    bounds: OutputBounds,
    now: u64,
) -> Result<bool, StoreError> {
    let (task, stream) = (chunk.id.as_str(), chunk.stream.as_str());
    let stored_end: Option<i64> = task_output::table
        .filter(task_output::task_id.eq(task))
        .filter(task_output::stream.eq(stream))
        .select(diesel::dsl::max(task_output::byte_end))
        .first(conn)?;
    let stored_end = stored_end.map_or(0, unix_ms);
    let has_eof: bool = diesel::select(diesel::dsl::exists(
        task_output::table
            .filter(task_output::task_id.eq(task))
            .filter(task_output::stream.eq(stream))
            .filter(task_output::eof.eq(true)),
    ))
    .get_result(conn)?;
    if has_eof || chunk.offset < stored_end || (chunk.eof && !chunk.data.is_empty()) {
        return Ok(false);
    }
    // The head never grows past its bound, whatever an agent sends.
    let mut data = chunk.data.as_slice();
    if chunk.offset < bounds.head_bytes {
        let room = usize::try_from(bounds.head_bytes - chunk.offset).unwrap_or(usize::MAX);
        data = &data[..data.len().min(room)];
    }
    let end = chunk.offset + data.len() as u64;
    let insert = diesel::insert_into(task_output::table)
        .values(NewChunk {
            task_id: task,
            stream,
            byte_offset: db_time(chunk.offset),
            byte_end: db_time(end),
            prev_end: db_time(chunk.prev_end.min(chunk.offset)),
            data,
            eof: chunk.eof,
            dropped: db_time(chunk.dropped),
            stored_at: db_time(now),
        })
        .on_conflict_do_nothing();
    // Another center stored the same chunk meanwhile. The multi-backend connection has no
    // ON CONFLICT; each backend has.
    let n_inserted = match conn {
        DbConnection::Pg(pg) => insert.execute(pg)?,
        DbConnection::Sqlite(sqlite) => insert.execute(sqlite)?,
    };
    if n_inserted == 0 {
        return Ok(false);
    }
    let cutoff = end.saturating_sub(bounds.tail_bytes);
    if cutoff > bounds.head_bytes {
        let pruned = diesel::delete(task_output::table)
            .filter(task_output::task_id.eq(task))
            .filter(task_output::stream.eq(stream))
            .filter(task_output::byte_offset.ge(db_time(bounds.head_bytes)))
            .filter(task_output::byte_end.le(db_time(cutoff)))
            .filter(task_output::eof.eq(false))
            .execute(conn)?;
        if pruned > 0 {
            log::debug!("task {task}: {pruned} {stream} chunk(s) of the middle pruned");
        }
    }
    Ok(true)
}
