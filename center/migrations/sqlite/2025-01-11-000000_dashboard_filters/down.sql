DROP INDEX tasks_failed_app_created_idx;
DROP INDEX tasks_failed_created_idx;
DROP INDEX audit_log_auth_id_idx;
DROP INDEX queues_auth_id_idx;
