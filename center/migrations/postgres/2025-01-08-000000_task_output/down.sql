DROP TABLE task_output;
