"""The ferroflow server: schema and migrations, the GraphQL API on SQLite and on a real
PostgreSQL, registering, the client and the CLI, and a real server process end to end.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _postgres import PostgresServer, free_port
from ferroflow import Flow, Parameter, task
from ferroflow.client import Client, flow_storage, flow_structure
from ferroflow.exceptions import (
    ApiError,
    PlatformError,
    RegistrationError,
    ServerUnavailableError,
    StoreError,
)
from ferroflow.server import check_host
from ferroflow.server.app import MAX_BODY_BYTES, execute
from ferroflow.server.database import (
    SCHEMA_VERSION,
    Database,
    PostgresDatabase,
    SqliteDatabase,
    open_database,
)
from ferroflow.store import store_path

TESTS = Path(__file__).parent


@pytest.fixture(autouse=True)
def _no_api_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's FERROFLOW_API_URL / DATABASE_URL must not reach the tests."""
    monkeypatch.delenv("FERROFLOW_API_URL", raising=False)
    monkeypatch.delenv("FERROFLOW_DATABASE_URL", raising=False)


@task
def double(x: int) -> int:
    return 2 * x


def mapped_flow(n: int = 5) -> Flow:
    with Flow("doubler") as flow:
        double.map(list(range(n)))
    return flow


def gql(db: Database, query: str, **variables: Any) -> dict[str, Any]:
    """Run a query that must succeed; its data."""
    out = execute(db, query, variables or None)
    assert "errors" not in out, out["errors"]
    return out["data"]  # type: ignore[no-any-return]


def gql_error(db: Database, query: str, **variables: Any) -> str:
    """Run a query that must fail; its one error message."""
    out = execute(db, query, variables or None)
    assert out.get("errors"), out
    assert len(out["errors"]) == 1, out["errors"]
    message: str = out["errors"][0]["message"]
    assert "Traceback" not in message
    return message


STRUCTURE = {"tasks": [], "edges": [], "parameters": [], "schedule": None}


def register(
    db: Database,
    project: str = "etl",
    name: str = "f",
    source: str = "x = 1\n",
    structure: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    data = gql(
        db,
        "mutation($i: RegisterFlowInput!) { register_flow(input: $i) { id version created } }",
        i={
            "project_name": project,
            "name": name,
            "structure": structure or STRUCTURE,
            "storage": {"type": "source", "source": source, "filename": "f.py"},
            **extra,
        },
    )
    return data["register_flow"]  # type: ignore[no-any-return]


def create_project(db: Database, name: str = "etl") -> str:
    data = gql(db, "mutation($n: String!) { create_project(input: {name: $n}) { id } }", n=name)
    return data["create_project"]["id"]  # type: ignore[no-any-return]


def copy_local_runs(target: Database) -> None:
    """Copy the flow runs (and their journals) of the local run store into ``target``:
    how a PostgreSQL store gets runs that a local flow.run() recorded."""
    if isinstance(target, SqliteDatabase):
        return
    con = sqlite3.connect(store_path())
    for key, run_id, flow_name, state, started, ended in con.execute(
        "SELECT key, id, flow_name, state, started, ended FROM flow_runs"
    ):
        target.execute(
            "INSERT INTO flow_runs(id, flow_name, state, started, ended) VALUES (?, ?, ?, ?, ?)",
            (run_id, flow_name, state, started, ended),
        )
        new = target.fetchone("SELECT key FROM flow_runs WHERE id = ?", (run_id,))
        assert new is not None
        for (blob,) in con.execute(
            "SELECT data FROM journal WHERE flow_run = ? ORDER BY seq", (key,)
        ):
            target.execute(
                "INSERT INTO journal(flow_run, data) VALUES (?, ?)", (new["key"], bytes(blob))
            )
    con.close()


# ---------------------------------------------------------------------------- import


def test_import_ferroflow_does_not_import_the_server_packages() -> None:
    code = (
        "import sys, ferroflow, ferroflow.cli, ferroflow.client\n"
        "heavy = {'starlette', 'uvicorn', 'strawberry', 'psycopg', 'jinja2', 'graphql'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------- schema

V2_DDL = """
CREATE TABLE flow_runs(key INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,
    flow_name TEXT NOT NULL, parameters TEXT NOT NULL DEFAULT '{}', state TEXT NOT NULL,
    message TEXT, started REAL NOT NULL, ended REAL, pid INTEGER, host TEXT,
    resumed_from TEXT, proc TEXT);
CREATE INDEX flow_runs_by_started ON flow_runs(started);
CREATE TABLE journal(seq INTEGER PRIMARY KEY, flow_run INTEGER NOT NULL, data BLOB NOT NULL);
CREATE INDEX journal_by_flow_run ON journal(flow_run, seq);
CREATE TABLE logs(flow_run INTEGER NOT NULL, run INTEGER, level INTEGER NOT NULL,
    at REAL NOT NULL, message TEXT NOT NULL);
CREATE INDEX logs_by_flow_run ON logs(flow_run);
CREATE TABLE cache(task_key TEXT NOT NULL, cache_key TEXT NOT NULL,
    inputs_hash TEXT NOT NULL DEFAULT '', created REAL NOT NULL, expires REAL,
    result_location TEXT NOT NULL, serializer TEXT NOT NULL DEFAULT '',
    PRIMARY KEY(task_key, cache_key, inputs_hash));
PRAGMA user_version = 2;
"""


def test_a_version_2_store_is_migrated_keeping_every_run(tmp_path: Path) -> None:
    # Record two real runs, then rebuild their rows in a store made with version 2's DDL.
    mapped_flow(4).run()
    mapped_flow(2).run()
    src = sqlite3.connect(store_path())
    runs = src.execute("SELECT * FROM flow_runs ORDER BY key").fetchall()
    cols = [d[0] for d in src.execute("SELECT * FROM flow_runs").description]
    journal = src.execute("SELECT seq, flow_run, data FROM journal").fetchall()
    src.close()
    old = tmp_path / "v2.db"
    con = sqlite3.connect(old)
    con.executescript(V2_DDL)
    v2_cols = [c for c in cols if c in {r[1] for r in con.execute("PRAGMA table_info(flow_runs)")}]
    for row in runs:
        values = [row[cols.index(c)] for c in v2_cols]
        con.execute(
            f"INSERT INTO flow_runs({', '.join(v2_cols)}) VALUES ({', '.join('?' * len(v2_cols))})",
            values,
        )
    con.executemany("INSERT INTO journal(seq, flow_run, data) VALUES (?, ?, ?)", journal)
    first_key = runs[0][cols.index("key")]
    con.executemany(
        "INSERT INTO logs(flow_run, run, level, at, message) VALUES (?, ?, ?, ?, ?)",
        [(first_key, None, 20, 1.0, "old line"), (first_key, 3, 40, 2.0, "old error")],
    )
    con.commit()
    con.close()

    db = SqliteDatabase(old)
    assert db.schema_version() == SCHEMA_VERSION == 8
    got = gql(
        db,
        "{ flow_runs(order_by: STARTED_ASC) { id state version labels "
        "task_run_counts { mapped_child state count } } }",
    )["flow_runs"]
    assert [r["id"] for r in got] == [r[cols.index("id")] for r in runs]
    assert all(r["state"] == "Success" and r["version"] == 0 and r["labels"] == [] for r in got)
    children = [sum(c["count"] for c in r["task_run_counts"] if c["mapped_child"]) for r in got]
    assert children == [4, 2]
    logs = gql(
        db,
        "query($id: String!) { logs(flow_run_id: $id) { task_run_id level message at } }",
        id=got[0]["id"],
    )["logs"]
    assert logs == [
        {"task_run_id": None, "level": 20, "message": "old line", "at": 1.0},
        {"task_run_id": 3, "level": 40, "message": "old error", "at": 2.0},
    ]
    db.close()


def test_a_store_of_a_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    con = sqlite3.connect(path)
    con.executescript(V2_DDL.replace("user_version = 2", f"user_version = {SCHEMA_VERSION + 1}"))
    con.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="newer"):
        SqliteDatabase(path)
    assert path.read_bytes() == before


def test_a_postgresql_database_of_a_newer_schema_is_refused_untouched(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.create_database()
    PostgresDatabase(url).close()
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE ferroflow_schema SET version = %s", (SCHEMA_VERSION + 1,))
        conn.execute("INSERT INTO projects(id, name, created) VALUES ('p', 'kept', 0)")
    with pytest.raises(StoreError, match="newer than this ferroflow supports"):
        PostgresDatabase(url)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT name FROM projects").fetchall() == [("kept",)]
        assert conn.execute("SELECT version FROM ferroflow_schema").fetchone() == (
            SCHEMA_VERSION + 1,
        )


_SQLITE_TYPES = {"INTEGER": "integer", "REAL": "real", "TEXT": "text", "BLOB": "blob"}
_PG_TYPES = {
    "bigint": "integer",
    "integer": "integer",
    "double precision": "real",
    "text": "text",
    "bytea": "blob",
}


def sqlite_schema(path: Path) -> dict[str, dict[str, tuple[str, bool]]]:
    con = sqlite3.connect(path)
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    out = {}
    for t in tables:
        out[t] = {
            name: (_SQLITE_TYPES[tp.upper()], bool(notnull or pk))
            for _, name, tp, notnull, _default, pk in con.execute(f"PRAGMA table_info({t})")
        }
    con.close()
    return out


def pg_schema(url: str) -> dict[str, dict[str, tuple[str, bool]]]:
    import psycopg

    out: dict[str, dict[str, tuple[str, bool]]] = {}
    with psycopg.connect(url) as conn:
        for table, column, tp, nullable in conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable "
            "FROM information_schema.columns WHERE table_schema = current_schema()"
        ):
            if table != "ferroflow_schema":
                out.setdefault(table, {})[column] = (_PG_TYPES[tp], nullable == "NO")
    return out


def pg_indexes(url: str) -> set[tuple[str, str]]:
    import psycopg

    with psycopg.connect(url) as conn:
        return {
            (t, i)
            for t, i in conn.execute(
                "SELECT tablename, indexname FROM pg_indexes WHERE schemaname = current_schema() "
                "AND indexname NOT IN (SELECT conname FROM pg_constraint)"
            )
        }


def test_sqlite_and_postgresql_schemas_do_not_drift(postgres_server: PostgresServer) -> None:
    SqliteDatabase(store_path()).close()
    url = postgres_server.create_database()
    PostgresDatabase(url).close()
    lite, pg = sqlite_schema(store_path()), pg_schema(url)
    assert sorted(lite) == sorted(pg)
    for table in lite:
        assert lite[table] == pg[table], table
    con = sqlite3.connect(store_path())
    lite_indexes = {
        (t, i)
        for t, i in con.execute(
            "SELECT tbl_name, name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        )
    }
    con.close()
    assert lite_indexes == pg_indexes(url)


# ------------------------------------------------------------------------ projects


def test_projects_create_list_duplicate_delete(db: Database) -> None:
    pid = create_project(db, "etl")
    assert gql(db, "{ projects { id name } }")["projects"] == [{"id": pid, "name": "etl"}]
    assert gql_error(db, 'mutation { create_project(input: {name: "etl"}) { id } }') == (
        "a project named 'etl' already exists"
    )
    assert "1 to 200 characters" in gql_error(
        db, 'mutation { create_project(input: {name: "  "}) { id } }'
    )
    register(db)
    gql(db, "mutation($p: String!) { delete_project(input: {project_id: $p}) { success } }", p=pid)
    assert gql(db, "{ projects { id } flows { id } }") == {"projects": [], "flows": []}
    assert "no project with id" in gql_error(
        db, "mutation($p: String!) { delete_project(input: {project_id: $p}) { success } }", p=pid
    )
    # Three changes, and the three refusals with their reasons.
    rows = db.fetchall("SELECT action, detail FROM audit ORDER BY seq")
    assert [r["action"] for r in rows if '"outcome"' not in r["detail"]] == [
        "create_project",
        "register_flow",
        "delete_project",
    ]
    assert [r["action"] for r in rows if '"outcome": "error"' in r["detail"]] == [
        "create_project",
        "create_project",
        "delete_project",
    ]


# --------------------------------------------------------------------------- flows


def test_register_same_structure_same_version_changed_new_version(db: Database) -> None:
    create_project(db)
    first = register(db)
    assert (first["version"], first["created"]) == (1, True)
    again = register(db)
    assert again == {**first, "created": False}
    changed = register(db, source="x = 2\n")
    assert (changed["version"], changed["created"]) == (2, True)
    flows = gql(db, "{ flows { id version versions { version archived } } }")["flows"]
    assert flows == [
        {
            "id": changed["id"],
            "version": 2,
            "versions": [{"version": 2, "archived": False}, {"version": 1, "archived": True}],
        }
    ]
    # The run of the old version stays, and is still readable through its flow.
    run = gql(
        db,
        "mutation($f: String!) { create_flow_run(input: {flow_id: $f}) { id } }",
        f=changed["id"],
    )["create_flow_run"]["id"]
    register(db, source="x = 3\n")
    got = gql(db, "query($id: String!) { flow_run(id: $id) { flow { version archived } } }", id=run)
    assert got["flow_run"]["flow"] == {"version": 2, "archived": True}


def test_register_into_an_unknown_project_says_how_to_create_it(db: Database) -> None:
    message = gql_error(
        db,
        "mutation($i: RegisterFlowInput!) { register_flow(input: $i) { id } }",
        i={
            "project_name": "nope",
            "name": "f",
            "structure": STRUCTURE,
            "storage": {"type": "source", "source": ""},
        },
    )
    assert message.startswith("no project named 'nope': create it with 'ferroflow projects create")


def test_register_refuses_a_malformed_structure(db: Database) -> None:
    create_project(db)
    message = gql_error(
        db,
        "mutation($i: RegisterFlowInput!) { register_flow(input: $i) { id } }",
        i={"project_name": "etl", "name": "f", "structure": [1], "storage": {"type": "x"}},
    )
    assert "structure must be an object" in message


def test_idempotency_key_returns_the_same_version(db: Database) -> None:
    create_project(db)
    first = register(db, idempotency_key="k1")
    again = register(db, source="changed\n", idempotency_key="k1")
    assert again == {**first, "created": False}


def test_archive_flow_and_schedules(db: Database) -> None:
    create_project(db)
    plain = register(db, name="plain")
    scheduled = register(
        db, name="cron", structure={**STRUCTURE, "schedule": {"repr": "CronSchedule('0 * * * *')"}}
    )
    q = "query($id: String!) { flow(id: $id) { archived schedule { active } } }"
    assert gql(db, q, id=scheduled["id"])["flow"] == {
        "archived": False,
        "schedule": {"active": True},
    }
    gql(
        db,
        "mutation($f: String!) { set_schedule_inactive(input: {flow_id: $f}) { success } }",
        f=scheduled["id"],
    )
    assert gql(db, q, id=scheduled["id"])["flow"]["schedule"] == {"active": False}
    gql(
        db,
        "mutation($f: String!) { set_schedule_active(input: {flow_id: $f}) { success } }",
        f=scheduled["id"],
    )
    assert gql(db, q, id=scheduled["id"])["flow"]["schedule"] == {"active": True}
    assert (
        gql_error(
            db,
            "mutation($f: String!) { set_schedule_active(input: {flow_id: $f}) { success } }",
            f=plain["id"],
        )
        == "flow 'plain' has no schedule"
    )
    gql(
        db,
        "mutation($f: String!) { archive_flow(input: {flow_id: $f}) { success } }",
        f=plain["id"],
    )
    assert gql(db, q, id=plain["id"])["flow"] == {"archived": True, "schedule": None}
    assert "archived" in gql_error(
        db, "mutation($f: String!) { create_flow_run(input: {flow_id: $f}) { id } }", f=plain["id"]
    )
    assert "no flow with id" in gql_error(
        db, 'mutation { archive_flow(input: {flow_id: "nope"}) { success } }'
    )


# ----------------------------------------------------------------------- flow runs

PARAMS = {
    "tasks": [],
    "edges": [],
    "parameters": [
        {"name": "n", "type": "int", "required": True, "default": None},
        {"name": "m", "type": "int", "required": False, "default": 1},
    ],
    "schedule": None,
}


def test_create_flow_run_checks_parameters_and_is_idempotent(db: Database) -> None:
    create_project(db)
    flow = register(db, structure=PARAMS)
    create = "mutation($i: CreateFlowRunInput!) { create_flow_run(input: $i) { id } }"
    assert gql_error(db, create, i={"flow_id": flow["id"]}) == (
        "flow 'f' needs a value for parameter 'n'"
    )
    assert "has no parameter 'x'" in gql_error(
        db, create, i={"flow_id": flow["id"], "parameters": {"n": 1, "x": 2}}
    )
    assert "no flow named 'g' in project 'etl'" in gql_error(
        db, create, i={"flow_name": "g", "project": "etl"}
    )
    assert "no project named 'zz'" in gql_error(db, create, i={"flow_name": "f", "project": "zz"})
    a = gql(
        db,
        create,
        i={
            "flow_name": "f",
            "project": "etl",
            "parameters": {"n": 3},
            "idempotency_key": "once",
            "labels": ["gpu"],
        },
    )["create_flow_run"]["id"]
    b = gql(
        db, create, i={"flow_id": flow["id"], "parameters": {"n": 3}, "idempotency_key": "once"}
    )["create_flow_run"]["id"]
    assert a == b
    run = gql(
        db,
        "query($id: String!) { flow_run(id: $id) { state version parameters labels flow_id } }",
        id=a[:8],
    )["flow_run"]
    assert run == {
        "state": "Scheduled",
        "version": 0,
        "parameters": {"n": 3},
        "labels": ["gpu"],
        "flow_id": flow["id"],
    }


def test_a_stale_flow_run_state_version_is_refused(db: Database) -> None:
    create_project(db)
    flow = register(db)
    run = gql(
        db, "mutation($f: String!) { create_flow_run(input: {flow_id: $f}) { id } }", f=flow["id"]
    )["create_flow_run"]["id"]
    setq = (
        "mutation($id: String!, $v: Int!, $s: String!) { set_flow_run_states(input: "
        "{states: [{flow_run_id: $id, version: $v, state: $s}]}) { states { version state } } }"
    )
    assert gql(db, setq, id=run, v=0, s="Running")["set_flow_run_states"]["states"] == [
        {"version": 1, "state": "Running"}
    ]
    # A second writer that read version 0 loses.
    message = gql_error(db, setq, id=run, v=0, s="Failed")
    assert message.startswith(f"stale version for flow run {run}: expected 0, it is at version 1")
    assert "unknown flow-run state 'Bogus'" in gql_error(db, setq, id=run, v=1, s="Bogus")
    assert (
        gql(db, setq, id=run, v=1, s="Success")["set_flow_run_states"]["states"][0]["version"] == 2
    )
    got = gql(db, "query($id: String!) { flow_run(id: $id) { state ended version } }", id=run)[
        "flow_run"
    ]
    assert got["state"] == "Success" and got["ended"] is not None and got["version"] == 2
    assert "no flow run with id 'nope'" in gql_error(db, setq, id="nope", v=0, s="Running")


def test_two_writers_with_one_version_one_wins(db: Database) -> None:
    create_project(db)
    flow = register(db)
    run = gql(
        db, "mutation($f: String!) { create_flow_run(input: {flow_id: $f}) { id } }", f=flow["id"]
    )["create_flow_run"]["id"]
    setq = (
        "mutation($id: String!, $s: String!) { set_flow_run_states(input: "
        "{states: [{flow_run_id: $id, version: 0, state: $s}]}) { states { version } } }"
    )
    results: list[dict[str, Any]] = []
    threads = [
        threading.Thread(target=lambda s=s: results.append(execute(db, setq, {"id": run, "s": s})))
        for s in ("Running", "Cancelled", "Failed", "Pending")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted("errors" in r for r in results) == [False, True, True, True]


def test_cancel_flow_run(db: Database) -> None:
    create_project(db)
    flow = register(db)
    create = "mutation($f: String!) { create_flow_run(input: {flow_id: $f}) { id } }"
    cancel = (
        "mutation($id: String!) { cancel_flow_run(input: {flow_run_id: $id}) { state version } }"
    )
    waiting = gql(db, create, f=flow["id"])["create_flow_run"]["id"]
    assert gql(db, cancel, id=waiting)["cancel_flow_run"] == {"state": "Cancelled", "version": 1}
    assert "already finished (Cancelled)" in gql_error(db, cancel, id=waiting)
    running = gql(db, create, f=flow["id"])["create_flow_run"]["id"]
    gql(
        db,
        "mutation($id: String!) { set_flow_run_states(input: {states: [{flow_run_id: $id, "
        'version: 0, state: "Running"}]}) { states { version } } }',
        id=running,
    )
    assert gql(db, cancel, id=running)["cancel_flow_run"]["state"] == "Cancelling"


def test_flow_run_filters_ordering_and_paging(db: Database) -> None:
    create_project(db, "a")
    create_project(db, "b")
    fa = register(db, project="a", name="fa")
    fb = register(db, project="b", name="fb")
    create = "mutation($i: CreateFlowRunInput!) { create_flow_run(input: $i) { id } }"
    ids = []
    for i in range(6):
        flow = fa if i % 2 == 0 else fb
        ids.append(
            gql(
                db,
                create,
                i={
                    "flow_id": flow["id"],
                    "scheduled_start_time": 1000.0 + i,
                    "labels": ["x"] if i < 3 else ["y_z", "x"],
                },
            )["create_flow_run"]["id"]
        )
    q = (
        "query($f: FlowRunFilter, $o: FlowRunOrder!, $n: Int!, $off: Int!) "
        "{ flow_runs(filter: $f, order_by: $o, limit: $n, offset: $off) { id } }"
    )

    def runs(
        f: dict[str, Any] | None = None, o: str = "STARTED_DESC", n: int = 50, off: int = 0
    ) -> list[str]:
        return [r["id"] for r in gql(db, q, f=f, o=o, n=n, off=off)["flow_runs"]]

    assert runs() == ids[::-1]
    assert runs(o="STARTED_ASC", n=2, off=1) == ids[1:3]
    assert runs({"project": "a"}) == [ids[4], ids[2], ids[0]]
    assert runs({"flow_id": fb["id"]}) == [ids[5], ids[3], ids[1]]
    assert runs({"labels": ["y_z"]}) == [ids[5], ids[4], ids[3]]
    assert runs({"labels": ["yaz"]}) == []
    assert runs({"labels": ["x", "y_z"], "flow_name": "fa"}) == [ids[4]]
    assert runs({"started_after": 1001.0, "started_before": 1003.0}) == [ids[2], ids[1]]
    assert runs({"states": ["Running"]}) == []
    assert "limit must be between 0 and 1000" in gql_error(db, "{ flow_runs(limit: 1001) { id } }")
    assert "offset must not be negative" in gql_error(db, "{ flow_runs(offset: -1) { id } }")


# ------------------------------------------------------------------------ task runs


def test_local_runs_appear_with_task_run_counts_and_pages(db: Database) -> None:
    state = mapped_flow(7).run()
    assert state.is_successful()
    copy_local_runs(db)
    run = gql(
        db,
        "{ flow_runs { id flow_name state flow_id task_run_counts { task_name mapped_child "
        "state count } task_runs(mapped_children: true, limit: 3, offset: 2) { total "
        "items { map_index state task_name } } } }",
    )["flow_runs"]
    assert len(run) == 1
    got = run[0]
    assert (got["flow_name"], got["state"], got["flow_id"]) == ("doubler", "Success", None)
    assert {"task_name": "double", "mapped_child": True, "state": "Success", "count": 7} in got[
        "task_run_counts"
    ]
    assert {"task_name": "double", "mapped_child": False, "state": "Mapped", "count": 1} in got[
        "task_run_counts"
    ]
    assert got["task_runs"]["total"] == 7
    assert [t["map_index"] for t in got["task_runs"]["items"]] == [2, 3, 4]


def test_task_run_states_carry_versions(db: Database) -> None:
    mapped_flow(2).run()
    copy_local_runs(db)
    run_id = gql(db, "{ flow_runs { id } }")["flow_runs"][0]["id"]
    page = gql(
        db,
        "query($id: String!) { flow_run(id: $id) { "
        "task_runs(mapped_children: true) { items { id } } } }",
        id=run_id,
    )
    child = page["flow_run"]["task_runs"]["items"][0]["id"]
    q = (
        "query($id: String!, $r: Int!) { task_run(flow_run_id: $id, id: $r) "
        "{ state version transitions { state } } }"
    )
    before = gql(db, q, id=run_id, r=child)["task_run"]
    assert before["state"] == "Success" and before["version"] == len(before["transitions"]) >= 1
    setq = (
        "mutation($id: String!, $r: Int!, $v: Int!, $s: String!) { set_task_run_states(input: "
        "{states: [{flow_run_id: $id, task_run_id: $r, version: $v, state: $s, "
        'message: "again"}]}) '
        "{ states { version state } } }"
    )
    v = before["version"]
    assert gql(db, setq, id=run_id, r=child, v=v, s="Running")["set_task_run_states"]["states"] == [
        {"version": v + 1, "state": "Running"}
    ]
    assert gql_error(db, setq, id=run_id, r=child, v=v, s="Failed").startswith(
        f"stale version for task run {child} of flow run {run_id}: expected {v}"
    )
    after = gql(db, q, id=run_id, r=child)["task_run"]
    assert after["state"] == "Running" and after["version"] == v + 1
    assert "unknown state name" in gql_error(db, setq, id=run_id, r=child, v=v + 1, s="Bogus")
    assert "has no task run 999" in gql_error(db, setq, id=run_id, r=999, v=0, s="Running")


def test_write_and_read_run_logs(db: Database) -> None:
    create_project(db)
    flow = register(db)
    run = gql(
        db, "mutation($f: String!) { create_flow_run(input: {flow_id: $f}) { id } }", f=flow["id"]
    )["create_flow_run"]["id"]
    gql(
        db,
        "mutation($i: WriteRunLogsInput!) { write_run_logs(input: $i) { success } }",
        i={
            "logs": [
                {"flow_run_id": run, "message": "one", "level": 20, "timestamp": 10.0},
                {
                    "flow_run_id": run,
                    "message": "two",
                    "level": 40,
                    "timestamp": 11.0,
                    "task_run_id": 3,
                },
            ]
        },
    )
    q = (
        "query($id: String!, $l: Int!) { logs(flow_run_id: $id, min_level: $l) "
        "{ message level task_run_id at } }"
    )
    assert [x["message"] for x in gql(db, q, id=run, l=0)["logs"]] == ["one", "two"]
    assert gql(db, q, id=run, l=30)["logs"] == [
        {"message": "two", "level": 40, "task_run_id": 3, "at": 11.0}
    ]
    assert "no flow run with id 'nope'" in gql_error(
        db,
        'mutation { write_run_logs(input: {logs: [{flow_run_id: "nope", message: "x"}]}) '
        "{ success } }",
    )


# ------------------------------------------------------------------------- limits


def test_query_limits_and_malformed_queries(db: Database) -> None:
    deep = (
        "{ flow_runs { "
        + "flow { project { flows { flow_runs { " * 2
        + "id"
        + " } } } }" * 2
        + " } }"
    )
    assert "exceeds maximum operation depth" in gql_error(db, deep)
    aliases = "{ " + " ".join(f"a{i}: projects {{ id }}" for i in range(60)) + " }"
    assert "aliases found" in gql_error(db, aliases)
    tokens = "{ projects { " + "id " * 6000 + "} }"
    assert "token" in gql_error(db, tokens).lower()
    assert gql_error(db, "{ projects { id ").startswith("Syntax Error")
    assert "Cannot query field 'nosuch'" in gql_error(db, "{ nosuch }")


# --------------------------------------------------------------------- PostgreSQL down


def test_a_postgresql_that_is_down_is_a_typed_error_naming_the_url() -> None:
    url = f"postgresql://me:secret@127.0.0.1:{free_port()}/ferroflow"
    started = time.monotonic()
    with pytest.raises(ServerUnavailableError) as info:
        open_database(url)
    message = str(info.value)
    assert f"127.0.0.1:{url.rsplit(':', 1)[1].split('/')[0]}" in message
    assert "secret" not in message and "me:***@" in message
    assert time.monotonic() - started < 30  # never a hang: the connect timeout is 5 s


def test_postgresql_going_down_under_the_server_is_a_typed_error() -> None:
    from _postgres import start_postgres

    with start_postgres() as pg:
        db = open_database(pg.create_database())
        create_project(db, "before")
        pg.process.send_signal(signal.SIGINT)
        pg.process.wait(timeout=30)
        message = gql_error(db, "{ projects { name } }")
        assert message.startswith(("lost the connection to PostgreSQL at", "cannot connect")), (
            message
        )
        assert f"@127.0.0.1:{pg.port}/" in message
        db.close()


def test_unknown_database_url_and_non_loopback_host_are_refused() -> None:
    with pytest.raises(StoreError, match="unknown database URL"):
        open_database("mysql://x")
    with pytest.raises(PlatformError, match=r"refusing to serve on 0\.0\.0\.0"):
        check_host("0.0.0.0")
    check_host("127.0.0.1")
    check_host("::1")


# ------------------------------------------------------------------- registering

FLOWS_FILE = textwrap.dedent(
    """
    from ferroflow import Flow, Parameter, task

    @task
    def inc(x):
        return x + 1

    with Flow("adder") as flow:
        n = Parameter("n", default=1)
        inc(n)
    """
)


def test_flow_structure_and_storage(tmp_path: Path) -> None:
    path = tmp_path / "flows.py"
    path.write_text(FLOWS_FILE)
    with Flow("f") as flow:
        n = Parameter("n", default=2, type=int)
        double.map([n, 3])
    s = flow_structure(flow)
    assert [p for p in s["parameters"]] == [
        {"name": "n", "type": "int", "required": False, "default": 2}
    ]
    assert {t["name"] for t in s["tasks"]} >= {"n", "double"}
    assert any(e["mapped"] for e in s["edges"])
    assert s["schedule"] is None
    storage = flow_storage(flow, path)
    assert storage == {
        "type": "source",
        "filename": "flows.py",
        "source": FLOWS_FILE,
        "flow_name": "f",
    }


def test_a_flow_that_does_not_build_is_a_registration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ferroflow.cli import run_cli

    @task
    def two(x: int, y: int) -> int:
        return x + y

    with Flow("unbound") as unbound:
        unbound.add_task(two)
    with pytest.raises(RegistrationError, match="flow 'unbound' does not build"):
        flow_structure(unbound)
    # The same through the CLI: one line, exit 2, before any server is asked.
    path = tmp_path / "broken.py"
    path.write_text(
        "from ferroflow import Flow, task\n"
        "@task\n"
        "def two(x, y):\n"
        "    return x + y\n"
        "flow = Flow('broken')\n"
        "flow.add_task(two)\n"
    )
    api = f"http://127.0.0.1:{free_port()}"
    assert run_cli(["register", "--project", "p", "--api", api, str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: flow 'broken' does not build") and err.count("\n") == 1
    syntax = tmp_path / "syntax.py"
    syntax.write_text("def (:\n")
    assert run_cli(["register", "--project", "p", "--api", api, str(syntax)]) == 2
    assert "syntax error" in capsys.readouterr().err


# ------------------------------------------------------------------ a real server


class ServerProcess:
    """``ferroflow server start --port 0`` in a subprocess; stopped with SIGTERM."""

    def __init__(self, database_url: str | None, home: str) -> None:
        argv = [sys.executable, "-m", "ferroflow", "server", "start", "--port", "0"]
        if database_url:
            argv += ["--database-url", database_url]
        self.env = {**os.environ, "FERROFLOW_HOME": home}
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.startswith("ferroflow server at http://127.0.0.1:"), (
            line + self.process.stderr.read()  # type: ignore[union-attr]
        )
        self.url = line.split()[3]
        self.env["FERROFLOW_API_URL"] = self.url

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ferroflow", *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
        )

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        assert self.process.stdout is not None and self.process.stderr is not None
        self.process.stdout.close()
        self.stderr = self.process.stderr.read()
        self.process.stderr.close()
        return code


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, _ferroflow_home: str) -> Iterator[ServerProcess]:
    """A real server process on each backend."""
    url = None
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_server").create_database()
    proc = ServerProcess(url, _ferroflow_home)
    try:
        yield proc
    finally:
        if proc.process.poll() is None:
            proc.stop()


def post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url + "/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_end_to_end_register_run_through_the_cli_read_back(
    server: ServerProcess, tmp_path: Path
) -> None:
    flows = tmp_path / "flows.py"
    flows.write_text(FLOWS_FILE)
    health = json.loads(urllib.request.urlopen(server.url + "/health", timeout=30).read())
    assert health["status"] == "ok" and health["schema_version"] == SCHEMA_VERSION

    made = server.cli("projects", "create", "demo")
    assert made.returncode == 0, made.stderr
    unknown = server.cli("register", "--project", "nope", str(flows))
    assert unknown.returncode == 2
    assert (
        "no project named 'nope': create it with 'ferroflow projects create nope'" in unknown.stderr
    )
    reg = server.cli("register", "--project", "demo", f"{flows}:adder")
    assert reg.returncode == 0 and "version 1" in reg.stdout, reg.stderr
    run = server.cli("run", "--project", "demo", "--name", "adder", "--param", "n=41")
    assert run.returncode == 0, run.stderr
    run_id = run.stdout.split()[3]

    data = Client(server.url).graphql(
        "query($id: String!) { flow_run(id: $id) { id state parameters flow { name version "
        "project { name } structure storage } } }",
        {"id": run_id},
    )["flow_run"]
    assert data["id"] == run_id and data["state"] == "Scheduled"
    assert data["parameters"] == {"n": 41}
    flow = data["flow"]
    assert (flow["name"], flow["version"], flow["project"]["name"]) == ("adder", 1, "demo")
    assert flow["storage"]["source"] == FLOWS_FILE
    assert [p["name"] for p in flow["structure"]["parameters"]] == ["n"]

    ls = server.cli("runs", "ls", "--json")
    assert ls.returncode == 0, ls.stderr
    listed = json.loads(ls.stdout)
    assert [r["id"] for r in listed] == [run_id]
    assert set(listed[0]) == {
        "id",
        "flow_name",
        "parameters",
        "state",
        "message",
        "started",
        "ended",
        "duration",
        "pid",
        "host",
        "resumed_from",
    }
    Client(server.url).write_run_logs(
        [
            {"flow_run_id": run_id, "message": "quiet", "level": 10},
            {"flow_run_id": run_id, "message": "loud", "level": 40},
        ]
    )
    logs = server.cli("runs", "logs", run_id[:8], "--level", "warning", "--json")
    assert logs.returncode == 0, logs.stderr
    assert [x["message"] for x in json.loads(logs.stdout)] == ["loud"]
    cancel = server.cli("runs", "cancel", run_id[:8])
    assert cancel.returncode == 0 and "Cancelled" in cancel.stdout, cancel.stderr
    assert server.stop() == 0, server.stderr
    assert "Traceback" not in server.stderr


def test_http_errors_are_graphql_errors(server: ServerProcess) -> None:
    status, body = post(server.url, b"not json")
    assert status == 400 and "not JSON" in body["errors"][0]["message"]
    status, body = post(server.url, json.dumps({"query": "{ x " + " " * MAX_BODY_BYTES}).encode())
    assert status == 413 and "larger than" in body["errors"][0]["message"]
    status, body = post(server.url, json.dumps({"nothing": 1}).encode())
    assert status == 400 and "'query' string" in body["errors"][0]["message"]
    status, body = post(server.url, json.dumps({"query": '{ flow_run(id: "x") { id } }'}).encode())
    assert status == 200 and body["errors"][0]["message"] == "no flow run with id 'x'"
    with pytest.raises(ApiError, match="no flow run with id 'abc'"):
        Client(server.url).get_flow_run("abc")
    assert server.stop() == 0
    assert "Traceback" not in server.stderr


def test_run_watch_follows_states_set_through_the_api(
    server: ServerProcess, tmp_path: Path
) -> None:
    flows = tmp_path / "flows.py"
    flows.write_text(FLOWS_FILE)
    client = Client(server.url)
    client.create_project("demo")
    assert server.cli("register", "--project", "demo", str(flows)).returncode == 0
    watch = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ferroflow",
            "run",
            "--project",
            "demo",
            "--name",
            "adder",
            "--watch",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=server.env,
    )
    assert watch.stdout is not None
    first = watch.stdout.readline()
    run_id = first.split()[3]
    assert watch.stdout.readline().rstrip().endswith("Scheduled")
    version = client.set_flow_run_state(run_id, 0, "Running")
    assert watch.stdout.readline().rstrip().endswith("Running")
    client.write_run_logs([{"flow_run_id": run_id, "message": "halfway", "level": 20}])
    assert "halfway" in watch.stdout.readline()
    client.set_flow_run_state(run_id, version, "Failed", "boom")
    out, err = watch.communicate(timeout=60)
    assert out.rstrip().endswith("Failed: boom")
    assert watch.returncode == 1, err


def test_server_unreachable_is_a_typed_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerUnavailableError, match=f"cannot reach the ferroflow server at {url}"):
        Client(url).get_projects()


# ------------------------------------------------------------- local runs that report


@pytest.fixture(params=["sqlite", "postgresql"])
def remote_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """A database for a server that is not the local run store: a PostgreSQL database,
    or a SQLite store in another directory."""
    if request.param == "postgresql":
        yield request.getfixturevalue("postgres_server").create_database()
    else:
        yield f"sqlite:///{tmp_path / 'server-home' / 'ferroflow.db'}"


def server_counts(url: str, run_id: str) -> tuple[list[dict[str, Any]], int, int]:
    db = open_database(url)
    try:
        counts = gql(
            db,
            "query($id: String!) { flow_run(id: $id) { task_run_counts { task mapped_child "
            "state count } } }",
            id=run_id,
        )["flow_run"]["task_run_counts"]
        row = db.fetchone("SELECT key FROM flow_runs WHERE id = ?", (run_id,))
        assert row is not None
        blobs = db.fetchone("SELECT count(*) AS n FROM journal WHERE flow_run = ?", (row["key"],))
        logs = db.fetchone("SELECT count(*) AS n FROM logs WHERE flow_run_id = ?", (run_id,))
        assert blobs is not None and logs is not None
        return counts, int(blobs["n"]), int(logs["n"])
    finally:
        db.close()


def local_counts(run_id: str) -> tuple[list[dict[str, Any]], int, int]:
    return server_counts(f"sqlite:///{store_path()}", run_id)


def test_a_local_run_streams_to_the_server(
    remote_url: str, _ferroflow_home: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = ServerProcess(remote_url, _ferroflow_home)
    try:
        monkeypatch.setenv("FERROFLOW_API_URL", server.url)
        state = mapped_flow(50).run()
        assert state.is_successful()
        run_id = gql(open_database(), "{ flow_runs { id } }")["flow_runs"][0]["id"]
        # flow.run() returned: the server has the whole run already.
        assert server_counts(remote_url, run_id) == local_counts(run_id)
        assert Client(server.url).get_flow_run(run_id)["state"] == "Success"
    finally:
        assert server.stop() == 0, server.stderr


def test_a_run_on_the_servers_own_store_is_not_copied(
    _ferroflow_home: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = ServerProcess(None, _ferroflow_home)
    try:
        monkeypatch.setenv("FERROFLOW_API_URL", server.url)
        assert mapped_flow(3).run().is_successful()
        runs = Client(server.url).get_flow_runs()
        assert len(runs) == 1
        assert local_counts(runs[0]["id"])[1] >= 1
    finally:
        assert server.stop() == 0, server.stderr


def test_a_server_restart_mid_stream_loses_nothing_and_doubles_nothing(
    remote_url: str, _ferroflow_home: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Recorded locally only, in several commits (journal blobs), with log lines ...
    from ferroflow import _native, reporting

    assert mapped_flow(40).run().is_successful()
    run_id = gql(open_database(), "{ flow_runs { id } }")["flow_runs"][0]["id"]
    for i in range(3):
        recorder = _native.Recorder(str(store_path()))
        recorder.log(run_id, None, 20, f"line {i}")
        recorder.transition(run_id, 2, "Success", message=f"again {i}", run_count=1)
        recorder.close()
    expected = local_counts(run_id)
    assert expected[1] >= 4 and expected[2] == 3
    # ... then streamed one blob per batch, with the server down, up, restarted, up again.
    monkeypatch.setattr(reporting, "BATCH_BYTES", 1)
    down = reporting.Reporter(f"http://127.0.0.1:{free_port()}", store_path(), run_id)
    assert down.send_once() == "failed" and down.last_error
    server = ServerProcess(remote_url, _ferroflow_home)
    reporter = reporting.Reporter(server.url, store_path(), run_id)
    assert reporter.send_once() in ("more", "done")
    assert server.stop() == 0
    assert reporter.send_once() == "failed"
    server = ServerProcess(remote_url, _ferroflow_home)
    try:
        reporter.api_url = server.url
        for _ in range(expected[1] + 5):
            if reporter.send_once() == "done":
                break
        assert server_counts(remote_url, run_id) == expected
        # A reporter that never got an answer sends everything again: nothing doubles.
        again = reporting.Reporter(server.url, store_path(), run_id)
        for _ in range(expected[1] + 5):
            if again.send_once() == "done":
                break
        assert server_counts(remote_url, run_id) == expected
    finally:
        assert server.stop() == 0, server.stderr


def test_a_bad_ingest_batch_is_an_error(server: ServerProcess) -> None:
    import msgpack

    request = urllib.request.Request(
        server.url + "/ingest",
        data=msgpack.packb({"flow_run": 3}),
        headers={"Content-Type": "application/msgpack"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=30)
    assert info.value.code == 400
    assert "needs 'flow_run'" in json.loads(info.value.read())["errors"][0]["message"]
    info.value.close()
