DROP INDEX audit_log_auth_id_idx;
DROP INDEX queues_auth_id_idx;
