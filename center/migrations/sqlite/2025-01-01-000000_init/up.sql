-- The center's first schema (SQLite): queues, tasks, the audit log and agents.
-- Times are unix milliseconds; queue, task, cron and rt ids are 16 lowercase hex characters.
-- Keep it in step with ../../postgres/2025-01-01-000000_init/up.sql: only the audit log's
-- auto-increment key differs.

CREATE TABLE queues (
    id TEXT PRIMARY KEY NOT NULL,
    app TEXT NOT NULL,
    auth_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'committed', 'finished', 'stopped')),
    created_at BIGINT NOT NULL,
    committed_at BIGINT,
    finished_at BIGINT
);

CREATE INDEX queues_status_idx ON queues (status);

CREATE TABLE tasks (
    id TEXT PRIMARY KEY NOT NULL,
    -- NULL for rt and cron tasks.
    queue_id TEXT REFERENCES queues (id),
    task_type TEXT NOT NULL CHECK (task_type IN ('rt', 'queue', 'cron')),
    -- The agent id, resolved from the caller's ip or id when the task was added.
    agent TEXT NOT NULL,
    app TEXT NOT NULL,
    func TEXT NOT NULL,
    param TEXT NOT NULL,
    timeout_s BIGINT NOT NULL,
    proxy TEXT NOT NULL,
    mode TEXT NOT NULL CHECK (mode IN ('P', 'NP')),
    depend_task_id TEXT REFERENCES tasks (id),
    -- The original spellings are the stored strings.
    status TEXT NOT NULL CHECK (status IN ('pendding', 'execing', 'finish', 'stoped', 'skipped')),
    flag TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    -- NULL until a result (or the deadline) settled the task.
    worker_flag INTEGER,
    worker_message TEXT,
    worker_costtime BIGINT,
    -- The center instance that claimed the task, when, and when it stops waiting for a result.
    dispatched_by TEXT,
    dispatched_at BIGINT,
    deadline BIGINT,
    created_at BIGINT NOT NULL,
    finished_at BIGINT
);

-- Ready to dispatch: pending tasks, oldest first.
CREATE INDEX tasks_status_created_idx ON tasks (status, created_at);
-- Expiry: running tasks by deadline.
CREATE INDEX tasks_status_deadline_idx ON tasks (status, deadline);
-- Per-queue lookups (result, stop, the "is the queue done" count).
CREATE INDEX tasks_queue_idx ON tasks (queue_id, status);
-- Dependents of a task (release and skip).
CREATE INDEX tasks_depend_idx ON tasks (depend_task_id);

CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    at BIGINT NOT NULL,
    auth_id TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    agent TEXT,
    outcome TEXT NOT NULL
);

CREATE INDEX audit_log_at_idx ON audit_log (at);

CREATE TABLE agents (
    id TEXT PRIMARY KEY NOT NULL,
    ip TEXT NOT NULL,
    asset TEXT NOT NULL,
    version TEXT NOT NULL,
    -- Installed apps as a JSON object: name -> version.
    apps TEXT NOT NULL,
    last_heartbeat_at BIGINT NOT NULL,
    interval_ms BIGINT NOT NULL
);

CREATE INDEX agents_ip_idx ON agents (ip);
