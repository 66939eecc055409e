-- Crons (postgres): rules defined through the API or by definition files, and one row per firing.
-- Times are unix milliseconds. Keep it in step with ../../sqlite/2025-01-02-000000_crons/up.sql:
-- the two are identical.

CREATE TABLE crons (
    id TEXT PRIMARY KEY NOT NULL,
    -- The agent as the caller or the file named it (an ip or an agent id), resolved when it fires.
    ip TEXT NOT NULL,
    app TEXT NOT NULL,
    func TEXT NOT NULL,
    param TEXT NOT NULL,
    -- Quartz syntax, read in the center's cron time zone.
    rule TEXT NOT NULL,
    mode TEXT NOT NULL CHECK (mode IN ('P', 'NP')),
    timeout_s BIGINT NOT NULL,
    proxy TEXT NOT NULL,
    -- cron_flag: 1 running, 0 stopped.
    enabled INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    -- 'api', or 'file' for crons of config/cron.d (which the API cannot delete).
    source TEXT NOT NULL CHECK (source IN ('api', 'file')),
    -- For file crons: the file name and the entry's id in it.
    file TEXT,
    entry TEXT,
    auth_id TEXT NOT NULL,
    -- Bumped by every change of the definition or of enabled; a center fires a cron only at
    -- the revision it has loaded.
    revision BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    -- Firings at or before this instant are settled: fired, skipped as misfires, or before
    -- the cron was created or started.
    schedule_from BIGINT NOT NULL,
    last_fire_time BIGINT,
    -- The fire time of the newest firing whose result arrived, and that result as JSON
    -- {flag, error, result: {worker_flag, worker_message, worker_costtime}}.
    last_exec_time BIGINT,
    last_exec_result TEXT
);

CREATE INDEX crons_ip_idx ON crons (ip);

-- A firing is claimed by inserting its row: the primary key makes each (cron, fire time) fire
-- once however many centers try.
CREATE TABLE cron_firings (
    cron_id TEXT NOT NULL,
    fire_time BIGINT NOT NULL,
    task_id TEXT NOT NULL,
    center_instance TEXT NOT NULL,
    claimed_at BIGINT NOT NULL,
    PRIMARY KEY (cron_id, fire_time)
);

-- A result finds its cron through its task id.
CREATE UNIQUE INDEX cron_firings_task_idx ON cron_firings (task_id);
-- Pruning old firings.
CREATE INDEX cron_firings_fire_time_idx ON cron_firings (fire_time);
