-- Fleet runs (SPEC §12): agent labels, and batches that roll one call out over a target.
-- Times are unix milliseconds. Keep it in step with ../../postgres/2025-01-07-000000_batches/up.sql:
-- the two are identical.

-- The labels an agent reported in its last heartbeat, as a JSON object (the inventory's are
-- merged in when read, never stored here).
ALTER TABLE agents ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';

-- One row per batch. Its tasks are queue tasks of the queue with the same id, released into
-- it window by window, so that TaskQueue claims, sends, records and expires them like any
-- other queue task.
CREATE TABLE batches (
    id TEXT PRIMARY KEY NOT NULL,
    auth_id TEXT NOT NULL,
    app TEXT NOT NULL,
    func TEXT NOT NULL,
    param TEXT NOT NULL,
    timeout_s BIGINT NOT NULL,
    proxy TEXT NOT NULL,
    mode TEXT NOT NULL CHECK (mode IN ('P', 'NP')),
    target TEXT NOT NULL,
    -- The rollout as the caller gave it (N, N% or a ramp), already validated.
    size TEXT NOT NULL,
    window_model TEXT NOT NULL CHECK (window_model IN ('sliding', 'lockstep')),
    -- N or N%; empty: never stop on failures.
    max_fail TEXT NOT NULL,
    wait_s BIGINT NOT NULL,
    -- 'skip', or 'wait:<seconds>'.
    offline TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'finished', 'stopped')),
    -- Why a batch stopped: 'stopped by <auth id>' or 'max_fail exceeded …'.
    stop_reason TEXT NOT NULL DEFAULT '',
    agent_count BIGINT NOT NULL,
    retry_of TEXT,
    created_at BIGINT NOT NULL,
    -- Lockstep: when the last step settled (wait_s counts from there).
    step_settled_at BIGINT,
    finished_at BIGINT
);

CREATE INDEX batches_state_idx ON batches (state);

-- The agents a batch matched when it was created, in rollout order.
CREATE TABLE batch_agents (
    batch_id TEXT NOT NULL REFERENCES batches (id),
    seq BIGINT NOT NULL,
    agent TEXT NOT NULL,
    ip TEXT NOT NULL,
    -- pending, running, ok, failed, timeout, offline, skipped, stopped.
    state TEXT NOT NULL,
    -- The queue task that runs it; set once, when the agent is released.
    task_id TEXT,
    PRIMARY KEY (batch_id, seq)
);

CREATE INDEX batch_agents_state_idx ON batch_agents (batch_id, state);
