DROP TABLE batch_agents;
DROP TABLE batches;
ALTER TABLE agents DROP COLUMN labels;
