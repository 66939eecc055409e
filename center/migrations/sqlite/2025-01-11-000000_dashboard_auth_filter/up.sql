-- The dashboard's task history filtered by auth id reads the auth id's queues (and batches)
-- and its audited RT calls by these; the audit log filtered by auth id uses the second too.
CREATE INDEX queues_auth_id_idx ON queues (auth_id);
CREATE INDEX audit_log_auth_id_idx ON audit_log (auth_id, action);
