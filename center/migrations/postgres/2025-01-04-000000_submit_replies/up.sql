-- Where the result of a task submitted on center.submit (SPEC §7.2) is to be sent. Kept in
-- the database rather than in one center's memory, so that the reply still goes out after
-- that center restarts, and from whichever center settles the task. A row is removed once
-- its reply was published.
-- Keep it in step with ../../sqlite/2025-01-04-000000_submit_replies/up.sql.

CREATE TABLE submit_replies (
    task_id TEXT PRIMARY KEY NOT NULL REFERENCES tasks (id),
    reply_to TEXT NOT NULL,
    correlation_id TEXT,
    -- Answer in JSON (the submission was JSON) rather than MessagePack.
    json BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL
);
