-- Schema version 4: the platform (server) tables, and the flow-run columns the server
-- needs. The Rust store applies this to SQLite stores (store/mod.rs); the server's
-- PostgreSQL dialect (python/ferroflow/server/database.py) keeps the same tables and
-- columns in PostgreSQL types, and tests/test_server_schema.py fails if the two drift.
-- Times are seconds since the Unix epoch (REAL); JSON is TEXT; booleans are INTEGER 0/1.

-- A flow run created through the API: the registered flow (version) it runs, its state
-- version (every state change through the API carries the version it expects), labels,
-- name, when it is scheduled to start and the key that makes creating it idempotent.
-- A local run leaves them at their defaults. `started` of a Scheduled run is its
-- scheduled start time until it starts.
ALTER TABLE flow_runs ADD COLUMN flow_id TEXT;
ALTER TABLE flow_runs ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE flow_runs ADD COLUMN labels TEXT NOT NULL DEFAULT '[]';
ALTER TABLE flow_runs ADD COLUMN name TEXT;
ALTER TABLE flow_runs ADD COLUMN scheduled_start REAL;
ALTER TABLE flow_runs ADD COLUMN idempotency_key TEXT;
ALTER TABLE flow_runs ADD COLUMN created REAL;
ALTER TABLE flow_runs ADD COLUMN agent_id TEXT;
ALTER TABLE flow_runs ADD COLUMN heartbeat REAL;
-- Streaming a local run to a server: the last local journal seq and log rowid the server
-- has stored for this run (what it acknowledges; a resent batch is applied past them).
ALTER TABLE flow_runs ADD COLUMN ingest_journal_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE flow_runs ADD COLUMN ingest_log_seq INTEGER NOT NULL DEFAULT 0;
CREATE INDEX flow_runs_by_flow ON flow_runs(flow_id, started);
CREATE INDEX flow_runs_by_state ON flow_runs(state, started);
CREATE UNIQUE INDEX flow_runs_by_idempotency_key ON flow_runs(flow_id, idempotency_key);

CREATE TABLE projects(
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT,
    created REAL NOT NULL
);

-- One row per registered version of a flow. `flow_group` is the same for every version
-- of one flow (project and name); `structure` is the flow's shape as JSON (tasks, edges,
-- parameters, schedule) and `structure_hash` its digest; `storage` says how an agent
-- rebuilds it (JSON: the source module's text, or an importable module path).
CREATE TABLE flows(
    id TEXT PRIMARY KEY,
    flow_group TEXT NOT NULL,
    project_id TEXT NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    structure_hash TEXT NOT NULL,
    structure TEXT NOT NULL,
    storage TEXT NOT NULL,
    labels TEXT NOT NULL DEFAULT '[]',
    archived INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT,
    created REAL NOT NULL,
    UNIQUE(project_id, name, version)
);
CREATE INDEX flows_by_group ON flows(flow_group, version);

-- The schedule of a flow group (all versions of one flow), on or off.
CREATE TABLE schedules(
    flow_group TEXT PRIMARY KEY,
    schedule TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 1,
    updated REAL NOT NULL
);

CREATE TABLE agents(
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    labels TEXT NOT NULL DEFAULT '[]',
    created REAL NOT NULL,
    last_heartbeat REAL
);

-- Every mutation through the API, in order.
CREATE TABLE audit(
    seq INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    detail TEXT NOT NULL DEFAULT '{}'
);
