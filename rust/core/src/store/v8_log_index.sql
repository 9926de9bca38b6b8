-- Schema version 8: indexes for reading the logs of a big run a page at a time (the UI's
-- and the API's log query, python/ferroflow/server/models.py list_logs), so that a run
-- with a million log lines is read without sorting them all. The server's PostgreSQL
-- dialect (python/ferroflow/server/database.py, _V8_LOG_INDEX) has the same indexes.

-- A run's lines in the order the pages show them (time, then the order written):
-- paging, following and a wide level filter walk this index and stop after a page.
CREATE INDEX logs_by_time ON logs(flow_run_id, time);
-- The lines of one task run (a task run's page, the errors of a failed task run).
CREATE INDEX logs_by_task_run ON logs(flow_run_id, task_run_id, time);
-- Warnings and worse only (a partial index: an INFO line costs nothing here): the few
-- lines a narrow level filter asks for.
CREATE INDEX logs_by_level ON logs(flow_run_id, level, time) WHERE level >= 30;
