DROP TABLE app_agents;
DROP TABLE app_auth_ids;
DROP TABLE auth_ids;
DROP TABLE app_versions;
DROP TABLE apps;
