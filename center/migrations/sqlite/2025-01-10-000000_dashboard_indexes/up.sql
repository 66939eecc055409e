-- The dashboard's lists, newest first in the order they are shown (created_at, id): the task
-- history, by app, an agent's recent tasks (and its last successful one), and the overview's
-- tasks settled in the last hour.
CREATE INDEX tasks_created_idx ON tasks (created_at, id);
CREATE INDEX tasks_app_created_idx ON tasks (app, created_at, id);
CREATE INDEX tasks_agent_created_idx ON tasks (agent, created_at, id);
CREATE INDEX tasks_finished_idx ON tasks (finished_at);
