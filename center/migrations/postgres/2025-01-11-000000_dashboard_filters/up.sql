-- The dashboard's task history filtered by auth id reads the auth id's queues (and batches)
-- and its audited RT calls by these two; the audit log filtered by auth id uses the second.
CREATE INDEX queues_auth_id_idx ON queues (auth_id);
CREATE INDEX audit_log_auth_id_idx ON audit_log (auth_id, action);
-- Failed tasks, newest first, in all and by app: the overview's recent failures and the
-- history's outcome filter. Partial: failures are few, and an app without any would otherwise
-- be read whole to find none. The same condition spelled two ways, so that a query by app
-- (`worker_flag <> 1`) can only take the app's index (store/dashboard.rs says why).
CREATE INDEX tasks_failed_created_idx ON tasks (created_at, id)
    WHERE worker_flag < 1 OR worker_flag > 1;
CREATE INDEX tasks_failed_app_created_idx ON tasks (app, created_at, id) WHERE worker_flag <> 1;
