DROP TABLE agents;
DROP TABLE audit_log;
DROP TABLE tasks;
DROP TABLE queues;
