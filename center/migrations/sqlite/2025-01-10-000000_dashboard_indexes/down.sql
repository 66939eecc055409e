DROP INDEX tasks_finished_idx;
DROP INDEX tasks_agent_created_idx;
DROP INDEX tasks_app_created_idx;
DROP INDEX tasks_created_idx;
