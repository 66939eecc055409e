DROP TABLE cron_firings;
DROP TABLE crons;
