-- The dashboard's lists: the task history newest first, an agent's recent tasks (and its last
-- successful one), and the overview's tasks settled in the last hour.
CREATE INDEX tasks_created_idx ON tasks (created_at);
CREATE INDEX tasks_agent_created_idx ON tasks (agent, created_at);
CREATE INDEX tasks_finished_idx ON tasks (finished_at);
