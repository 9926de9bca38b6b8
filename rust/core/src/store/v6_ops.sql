-- Schema version 5: operations (issue 17): backfills, flow-run and task-tag concurrency
-- limits, notification rules and their deliveries. The server's PostgreSQL dialect
-- (python/ferroflow/server/database.py, _V5_OPS) has the same tables in its types.

-- A backfill: the runs of a flow's schedule between two instants, created at once;
-- `max_concurrent` (NULL: no bound) bounds how many of them are held by agents at once.
ALTER TABLE flow_runs ADD COLUMN backfill_id TEXT;
CREATE INDEX flow_runs_by_backfill ON flow_runs(backfill_id, state);
CREATE TABLE backfills(
    id TEXT PRIMARY KEY,
    flow_group TEXT NOT NULL,
    flow_id TEXT NOT NULL,
    start_time REAL NOT NULL,
    end_time REAL NOT NULL,
    max_concurrent INTEGER,
    created REAL NOT NULL
);

-- At most `max_running` runs of a flow (all its versions) are held by agents at once;
-- the rest wait, Scheduled.
CREATE TABLE flow_limits(
    flow_group TEXT PRIMARY KEY,
    max_running INTEGER NOT NULL,
    updated REAL NOT NULL
);

-- At most `max_running` task runs carrying `tag` run at once, across every run and agent;
-- a flow-run process holds one `task_slots` row per running tagged task run.
CREATE TABLE task_tag_limits(
    tag TEXT PRIMARY KEY,
    max_running INTEGER NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE task_slots(
    tag TEXT NOT NULL,
    flow_run_id TEXT NOT NULL,
    holder TEXT NOT NULL,
    acquired REAL NOT NULL,
    PRIMARY KEY(tag, flow_run_id, holder)
);
CREATE INDEX task_slots_by_flow_run ON task_slots(flow_run_id);

-- Notification rules: POST to `webhook` when a run of `flow_name` (NULL: any flow)
-- enters `on_state`.
CREATE TABLE notify_rules(
    id TEXT PRIMARY KEY,
    on_state TEXT NOT NULL,
    flow_name TEXT,
    webhook TEXT NOT NULL,
    created REAL NOT NULL
);
-- One row per rule and event (a run entering a state, at its end time): sent once,
-- retried with backoff while the receiver fails.
CREATE TABLE notifications(
    seq INTEGER PRIMARY KEY,
    rule_id TEXT NOT NULL,
    event TEXT NOT NULL,
    flow_run_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_error TEXT,
    created REAL NOT NULL,
    sent REAL,
    UNIQUE(rule_id, event)
);
CREATE INDEX notifications_due ON notifications(status, next_attempt);
CREATE INDEX audit_by_target ON audit(target, action);
