-- Apps, their versions, auth ids and the bindings of supervisor mode (SPEC §5, §9).
-- Times are unix milliseconds. Package bytes live outside the database, in the center's
-- content-addressed package directory, under their SHA-256.
-- Keep it in step with ../../sqlite/2025-01-03-000000_apps/up.sql.

CREATE TABLE apps (
    name TEXT PRIMARY KEY NOT NULL,
    -- Free text shown as app_name by info/apps.
    display_name TEXT NOT NULL DEFAULT '',
    -- The version agents should have; NULL until one is chosen.
    online_version TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE app_versions (
    app TEXT NOT NULL REFERENCES apps (name),
    version TEXT NOT NULL,
    -- Lowercase hex SHA-256 of the zip: its name in the package directory.
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    uploaded_by TEXT NOT NULL,
    uploaded_at BIGINT NOT NULL,
    PRIMARY KEY (app, version)
);

CREATE INDEX app_versions_sha256_idx ON app_versions (sha256);

CREATE TABLE auth_ids (
    auth_id TEXT PRIMARY KEY NOT NULL,
    -- The shared secret of MD5 and HMAC-SHA256 request signing, so it is kept as is.
    auth_key TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('admin', 'normal')),
    comment TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    -- Set once revoked; a revoked auth id is unknown to authentication (401.2).
    revoked_at BIGINT
);

-- Which auth ids hold which apps.
CREATE TABLE app_auth_ids (
    app TEXT NOT NULL REFERENCES apps (name),
    auth_id TEXT NOT NULL REFERENCES auth_ids (auth_id),
    PRIMARY KEY (app, auth_id)
);

CREATE INDEX app_auth_ids_auth_id_idx ON app_auth_ids (auth_id);

-- Which agents (by agent id) an app may run on.
CREATE TABLE app_agents (
    app TEXT NOT NULL REFERENCES apps (name),
    agent TEXT NOT NULL,
    PRIMARY KEY (app, agent)
);

CREATE INDEX app_agents_agent_idx ON app_agents (agent);
