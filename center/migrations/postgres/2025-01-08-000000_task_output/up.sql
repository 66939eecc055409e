-- Live output (SPEC §12): the chunks of a task's stdout and stderr as its agent sent them.
-- byte_offset counts the bytes the worker wrote to that stream; prev_end is where the chunk
-- the agent sent before this one ended (bytes between were dropped for good). A row with
-- eof ends its stream (no data; dropped = bytes not kept between head and tail). Rows go
-- after output.retention_days (stored_at) and beyond the per-task bound (the middle first).
-- No foreign key to tasks: output may arrive before an RT task's row is written.
-- Keep it in step with ../../sqlite/2025-01-08-000000_task_output/up.sql.

CREATE TABLE task_output (
    task_id TEXT NOT NULL,
    stream TEXT NOT NULL,
    byte_offset BIGINT NOT NULL,
    byte_end BIGINT NOT NULL,
    prev_end BIGINT NOT NULL,
    data BYTEA NOT NULL,
    eof BOOLEAN NOT NULL,
    dropped BIGINT NOT NULL,
    stored_at BIGINT NOT NULL,
    PRIMARY KEY (task_id, stream, byte_offset)
);

CREATE INDEX task_output_stored_at ON task_output (stored_at);
