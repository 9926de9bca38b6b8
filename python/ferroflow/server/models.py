"""The server's queries, one group per table, and the rules that go with them.

Everything the API (and later the UI and the agent) reads or writes goes through these
functions; no route writes SQL. Each takes the :class:`~ferroflow.server.database.Database`
first and returns plain dicts (rows) or raises :class:`ApiError` with a message that
says what was wrong and what to do.

Task runs are not rows: the run store journals them (``journal`` table, compact blobs,
see ``rust/core/src/store/journal.rs``). :func:`task_runs_page` and
:func:`task_run_counts` fold a run's journal with the native store code, so a run with a
million mapped children comes back as counts and a page of children. A task run's state
*version* is the number of transitions recorded for it; :func:`set_task_run_states`
appends one journal blob per change, after checking the version under the flow run's
write lock.

Flow runs carry a ``version`` that every state change through the API must name: the
change is one conditional ``UPDATE ... WHERE version = ?``, so of two writers holding
the same version exactly one wins, and the other gets "stale version".
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import math
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from ferroflow.exceptions import ApiError
from ferroflow.server.database import Database
from ferroflow.server.limits import CLAIM_GATE, hold_back, lock_for_claim

__all__ = [
    "AUTO_KEY_PREFIX",
    "FINISHED_FLOW_STATES",
    "MAX_PAGE",
    "acting_as",
    "active_scheduled_flows",
    "agent_heartbeat",
    "archive_flow",
    "audit",
    "auto_run_key",
    "auto_run_keys",
    "cancel_flow_run",
    "claim_flow_run",
    "create_flow_run",
    "create_project",
    "delete_project",
    "get_flow",
    "get_flow_run",
    "get_project",
    "get_runs_in_queue",
    "ingest",
    "insert_auto_runs",
    "last_attempt",
    "list_agents",
    "list_audit",
    "list_flow_runs",
    "list_flows",
    "list_logs",
    "list_projects",
    "register_agent",
    "register_flow",
    "remove_auto_scheduled_runs",
    "report_attempt",
    "requeue_lost_runs",
    "resume_flow_run",
    "schedule_of",
    "set_flow_run_states",
    "set_schedule_active",
    "set_task_run_states",
    "task_run",
    "task_run_counts",
    "task_runs_page",
    "write_run_logs",
]

#: The most rows one page may hold.
MAX_PAGE = 1000

#: Flow-run states after which nothing more happens to the run.
FINISHED_FLOW_STATES = frozenset(
    {
        "Success",
        "Failed",
        "TimedOut",
        "TriggerFailed",
        "Cancelled",
        "Skipped",
        "Interrupted",
        "Cached",
        "Looped",
        "Mapped",
    }
)

#: Flow-run states the API accepts in ``set_flow_run_states``.
FLOW_RUN_STATES = frozenset({"Scheduled", "Pending", "Running", "Cancelling"}) | (
    FINISHED_FLOW_STATES - {"Interrupted"}
)

_LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}


def _now() -> float:
    return time.time()


def _new_id() -> str:
    return str(uuid.uuid4())


def _like_escape(text: str) -> str:
    """``text`` for a ``LIKE ? ESCAPE '\\'`` pattern: its wildcards taken literally."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _page(limit: int, offset: int) -> tuple[int, int]:
    if limit < 0 or limit > MAX_PAGE:
        raise ApiError(f"limit must be between 0 and {MAX_PAGE}, got {limit}")
    if offset < 0:
        raise ApiError(f"offset must not be negative, got {offset}")
    return limit, offset


def _labels(labels: Sequence[str] | None) -> list[str]:
    out = sorted({str(x) for x in labels or ()})
    for label in out:
        if not label or len(label) > 200:
            raise ApiError(f"a label must be 1 to 200 characters, got {label!r}")
    return out


def _check_name(what: str, name: str) -> str:
    name = name.strip() if isinstance(name, str) else ""
    if not name or len(name) > 200:
        raise ApiError(f"a {what} name must be 1 to 200 characters")
    return name


#: Who the current request is (``(actor, address, actions written)``): set by
#: :func:`acting_as` around a request, read by :func:`audit`.
_ACTOR: contextvars.ContextVar[tuple[str, str | None, list[str]] | None] = contextvars.ContextVar(
    "ferroflow_audit_actor", default=None
)


@contextlib.contextmanager
def acting_as(actor: str, address: str | None) -> Iterator[list[str]]:
    """Attribute the audit lines written in the block to ``actor`` at ``address``;
    yields the list of the actions audited in it."""
    written: list[str] = []
    reset = _ACTOR.set((actor, address, written))
    try:
        yield written
    finally:
        _ACTOR.reset(reset)


def audit(
    db: Database, action: str, target: str | None, detail: dict[str, Any] | None = None
) -> None:
    """Write one line of the audit log (every mutation calls it in its transaction),
    attributed to the request's actor and address (see :func:`acting_as`), else to
    ``anonymous``."""
    who = _ACTOR.get()
    actor, address = (who[0], who[1]) if who else ("anonymous", None)
    db.execute(
        "INSERT INTO audit(at, actor, action, target, detail, address) VALUES (?, ?, ?, ?, ?, ?)",
        (_now(), actor, action, target, json.dumps(detail or {}, sort_keys=True), address),
    )
    if who is not None:
        who[2].append(action)


def list_audit(
    db: Database,
    limit: int = 100,
    offset: int = 0,
    *,
    action: str | None = None,
    target: str | None = None,
) -> list[dict[str, Any]]:
    """The audit log, newest first; only the lines of ``action`` and ``target`` (exact
    matches) when given."""
    limit, offset = _page(limit, offset)
    where, args = [], []
    for column, value in (("action", action), ("target", target)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    cond = f"WHERE {' AND '.join(where)} " if where else ""
    return db.fetchall(
        "SELECT seq, at, actor, action, target, detail, address FROM audit "
        f"{cond}ORDER BY seq DESC LIMIT ? OFFSET ?",
        (*args, limit, offset),
    )


# ---------------------------------------------------------------------------- projects


def create_project(db: Database, name: str, description: str | None = None) -> dict[str, Any]:
    """Create a project; ApiError if one with this name exists."""
    name = _check_name("project", name)
    with db.transaction():
        if db.fetchone("SELECT id FROM projects WHERE name = ?", (name,)):
            raise ApiError(f"a project named {name!r} already exists")
        row: dict[str, Any] = {
            "id": _new_id(),
            "name": name,
            "description": description,
            "created": _now(),
        }
        db.execute(
            "INSERT INTO projects(id, name, description, created) VALUES (?, ?, ?, ?)",
            (row["id"], name, description, row["created"]),
        )
        audit(db, "create_project", row["id"], {"name": name})
    return row


def get_project(
    db: Database, *, project_id: str | None = None, name: str | None = None
) -> dict[str, Any]:
    """One project by id or name; ApiError naming how to create it when unknown."""
    if project_id is not None:
        row = db.fetchone("SELECT * FROM projects WHERE id = ?", (project_id,))
        if row is None:
            raise ApiError(f"no project with id {project_id!r}")
        return row
    row = db.fetchone("SELECT * FROM projects WHERE name = ?", (name,))
    if row is None:
        raise ApiError(
            f"no project named {name!r}: create it with 'ferroflow projects create {name}' "
            "(or Client().create_project)"
        )
    return row


def list_projects(db: Database, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
    """Projects by name."""
    limit, offset = _page(limit, offset)
    return db.fetchall("SELECT * FROM projects ORDER BY name LIMIT ? OFFSET ?", (limit, offset))


def delete_project(db: Database, project_id: str) -> None:
    """Delete a project and its flows (every version); their runs stay, but for the
    future automatic runs that have not started."""
    with db.transaction():
        project = get_project(db, project_id=project_id)
        groups = [
            r["flow_group"]
            for r in db.fetchall(
                "SELECT DISTINCT flow_group FROM flows WHERE project_id = ?", (project_id,)
            )
        ]
        for group in groups:
            remove_auto_scheduled_runs(db, group)
            db.execute("DELETE FROM schedules WHERE flow_group = ?", (group,))
        db.execute("DELETE FROM flows WHERE project_id = ?", (project_id,))
        db.execute("DELETE FROM projects WHERE id = ?", (project_id,))
        audit(db, "delete_project", project_id, {"name": project["name"]})


# ------------------------------------------------------------------------------- flows


def _flow_group(project_id: str, name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"ferroflow:{project_id}:{name}"))


def structure_hash(structure: dict[str, Any], storage: dict[str, Any]) -> str:
    """The digest that decides whether a registration is a new version: the flow's
    structure and its stored source, as canonical JSON."""
    text = json.dumps({"structure": structure, "storage": storage}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


_STRUCTURE_KEYS = ("tasks", "edges", "parameters")


def _check_structure(structure: Any, storage: Any) -> None:
    if not isinstance(structure, dict) or any(
        not isinstance(structure.get(k), list) for k in _STRUCTURE_KEYS
    ):
        raise ApiError(
            "a flow's structure must be an object with lists 'tasks', 'edges' and "
            "'parameters' (as ferroflow.client.flow_structure makes it)"
        )
    if not isinstance(storage, dict) or storage.get("type") not in ("source", "module"):
        raise ApiError(
            "a flow's storage must be an object with type 'source' (the module's text) "
            "or 'module' (an importable module path)"
        )
    if storage["type"] == "source" and not isinstance(storage.get("source"), str):
        raise ApiError("a flow's 'source' storage needs the module's text in 'source'")
    if storage["type"] == "module" and not isinstance(storage.get("module"), str):
        raise ApiError("a flow's 'module' storage needs the module path in 'module'")


def register_flow(
    db: Database,
    *,
    project_name: str,
    name: str,
    structure: dict[str, Any],
    storage: dict[str, Any],
    labels: Sequence[str] | None = None,
    idempotency_key: str | None = None,
    set_schedule_active: bool = True,
) -> dict[str, Any]:
    """Register a flow: the same structure and source as the newest version is that
    version (nothing changes); otherwise a new version (newest + 1) and every older
    version is archived (its runs stay). A registration with the idempotency key of an
    existing version returns that version.

    Returns:
        the flow row plus ``created``: whether a new version was made.
    """
    name = _check_name("flow", name)
    _check_structure(structure, storage)
    # The schedule's pickle (ferroflow.client.schedule_blob) goes to the schedules row,
    # where the scheduler reads it; the structure keeps its repr (for the version digest
    # and the UI), so a pickle that differs by a byte is not a new version.
    schedule = structure.get("schedule")
    if isinstance(schedule, dict) and "cloudpickle" in schedule:
        structure = {
            **structure,
            "schedule": {k: v for k, v in schedule.items() if k != "cloudpickle"},
        }
    labels_json = json.dumps(_labels(labels))
    digest = structure_hash(structure, storage)
    with db.transaction():
        project = get_project(db, name=project_name)
        group = _flow_group(project["id"], name)
        if idempotency_key is not None:
            same = db.fetchone(
                "SELECT * FROM flows WHERE flow_group = ? AND idempotency_key = ?",
                (group, idempotency_key),
            )
            if same is not None:
                return {**same, "created": False}
        newest = db.fetchone(
            "SELECT * FROM flows WHERE flow_group = ? ORDER BY version DESC LIMIT 1", (group,)
        )
        if newest is not None and newest["structure_hash"] == digest and not newest["archived"]:
            return {**newest, "created": False}
        version = 1 if newest is None else int(newest["version"]) + 1
        row = {
            "id": _new_id(),
            "flow_group": group,
            "project_id": project["id"],
            "name": name,
            "version": version,
            "structure_hash": digest,
            "structure": json.dumps(structure, sort_keys=True),
            "storage": json.dumps(storage, sort_keys=True),
            "labels": labels_json,
            "archived": 0,
            "idempotency_key": idempotency_key,
            "created": _now(),
        }
        db.execute("UPDATE flows SET archived = 1 WHERE flow_group = ?", (group,))
        # The new version replaces the old ones' future automatic runs.
        remove_auto_scheduled_runs(db, group)
        db.execute(
            "INSERT INTO flows(id, flow_group, project_id, name, version, structure_hash, "
            "structure, storage, labels, archived, idempotency_key, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            tuple(row.values()),
        )
        if schedule is not None:
            db.execute(
                "INSERT INTO schedules(flow_group, schedule, active, updated) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(flow_group) DO UPDATE SET "
                "schedule = excluded.schedule, active = excluded.active, "
                "updated = excluded.updated",
                (group, json.dumps(schedule), int(set_schedule_active), _now()),
            )
        else:
            db.execute("DELETE FROM schedules WHERE flow_group = ?", (group,))
        audit(db, "register_flow", row["id"], {"name": name, "version": version})
    return {**row, "created": True}


def get_flow(db: Database, flow_id: str) -> dict[str, Any]:
    """One flow version by id; ApiError when unknown."""
    row = db.fetchone("SELECT * FROM flows WHERE id = ?", (flow_id,))
    if row is None:
        raise ApiError(f"no flow with id {flow_id!r} (see 'ferroflow flows ls')")
    return row


def list_flows(
    db: Database,
    *,
    project: str | None = None,
    name: str | None = None,
    flow_group: str | None = None,
    include_archived: bool = False,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Flow versions (the newest only unless ``include_archived``), by project, name and
    version (newest first)."""
    limit, offset = _page(limit, offset)
    where: list[str] = ["1 = 1"]
    args: list[Any] = []
    if project is not None:
        where.append("p.name = ?")
        args.append(project)
    if name is not None:
        where.append("f.name = ?")
        args.append(name)
    if flow_group is not None:
        where.append("f.flow_group = ?")
        args.append(flow_group)
    if not include_archived:
        where.append("f.archived = 0")
    return db.fetchall(
        "SELECT f.*, p.name AS project_name FROM flows f JOIN projects p ON p.id = f.project_id "
        f"WHERE {' AND '.join(where)} ORDER BY p.name, f.name, f.version DESC LIMIT ? OFFSET ?",
        (*args, limit, offset),
    )


def archive_flow(db: Database, flow_id: str) -> None:
    """Archive one flow version (no new runs; its runs stay)."""
    with db.transaction():
        flow = get_flow(db, flow_id)
        db.execute("UPDATE flows SET archived = 1 WHERE id = ?", (flow_id,))
        remove_auto_scheduled_runs(db, flow["flow_group"])
        audit(db, "archive_flow", flow_id)


def set_schedule_active(db: Database, flow_id: str, active: bool) -> None:
    """Turn the schedule of a flow (all its versions) on or off; ApiError when the flow
    has no schedule. Turning it off removes its future automatic runs that have not
    started (:func:`remove_auto_scheduled_runs`); the scheduler service creates them
    again once it is on."""
    with db.transaction():
        flow = get_flow(db, flow_id)
        changed = db.execute(
            "UPDATE schedules SET active = ?, updated = ? WHERE flow_group = ?",
            (int(active), _now(), flow["flow_group"]),
        )
        if not changed:
            raise ApiError(f"flow {flow['name']!r} has no schedule")
        removed = 0 if active else remove_auto_scheduled_runs(db, flow["flow_group"])
        audit(
            db,
            "set_schedule_active" if active else "set_schedule_inactive",
            flow_id,
            {"removed_runs": removed} if removed else None,
        )


def schedule_of(db: Database, flow_group: str) -> dict[str, Any] | None:
    """The schedule row of a flow group, if it has one."""
    return db.fetchone("SELECT * FROM schedules WHERE flow_group = ?", (flow_group,))


#: The idempotency keys of the runs the scheduler service creates start with this.
AUTO_KEY_PREFIX = "ferroflow-schedule:"


def auto_run_key(flow_id: str, instant: str) -> str:
    """The idempotency key of the automatic run of flow version ``flow_id`` at the UTC
    instant ``instant`` (:attr:`ferroflow.schedules.ClockEvent.key`). With the UNIQUE
    index on ``flow_runs(flow_id, idempotency_key)`` it makes one run per version and
    instant, whatever the restarts.

    Example:
        >>> auto_run_key("f1", "2026-01-01T06:00:00.000000Z")
        'ferroflow-schedule:f1:2026-01-01T06:00:00.000000Z'
    """
    return f"{AUTO_KEY_PREFIX}{flow_id}:{instant}"


def remove_auto_scheduled_runs(db: Database, flow_group: str) -> int:
    """Delete the automatic runs of a flow group's versions that are still ``Scheduled``
    to start in the future (other runs and runs created by hand stay); how many."""
    like = _like_escape(AUTO_KEY_PREFIX) + "%"
    return db.execute(
        "DELETE FROM flow_runs WHERE state = 'Scheduled' AND scheduled_start > ? "
        "AND idempotency_key LIKE ? ESCAPE '\\' AND flow_id IN "
        "(SELECT id FROM flows WHERE flow_group = ?)",
        (_now(), like, flow_group),
    )


# ------------------------------------------------------------------ the scheduler's


def active_scheduled_flows(db: Database) -> list[dict[str, Any]]:
    """Every flow version that is not archived and whose schedule is on: ``id, name,
    flow_group, labels, structure, schedule`` (the schedules row's JSON), by id. Call it
    in the transaction that creates the runs: on PostgreSQL it holds the schedule rows
    (``FOR SHARE``), so turning a schedule off or registering a new version waits for
    the runs to be created, then removes them."""
    lock = " FOR SHARE" if db.dialect == "postgresql" else ""
    return db.fetchall(
        "SELECT f.id, f.name, f.flow_group, f.labels, f.structure, s.schedule "
        "FROM flows f JOIN schedules s ON s.flow_group = f.flow_group "
        f"WHERE f.archived = 0 AND s.active = 1 ORDER BY f.id{lock}"
    )


def auto_run_keys(db: Database, after: float) -> dict[str, list[str]]:
    """The idempotency keys of the automatic runs that start (or started) after
    ``after``, by flow version id."""
    out: dict[str, list[str]] = {}
    for row in db.fetchall(
        "SELECT flow_id, idempotency_key FROM flow_runs WHERE started > ? "
        "AND idempotency_key LIKE ? ESCAPE '\\'",
        (after, _like_escape(AUTO_KEY_PREFIX) + "%"),
    ):
        out.setdefault(row["flow_id"], []).append(row["idempotency_key"])
    return out


#: Rows per INSERT of :func:`insert_auto_runs` on SQLite (9 bound values each: far below
#: its limit of 32,766).
_INSERT_CHUNK = 400

_AUTO_RUN_COLUMNS = (
    "id, flow_name, parameters, state, started, flow_id, version, labels, scheduled_start, "
    "idempotency_key, created"
)


def insert_auto_runs(db: Database, runs: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Insert ``Scheduled`` runs ``{flow_id, flow_name, parameters, labels,
    scheduled_start, idempotency_key}``; a run whose ``(flow_id, idempotency_key)``
    exists already is skipped by the UNIQUE index (``ON CONFLICT DO NOTHING``), so
    two passes, two servers or a restart never make it twice. How many were made, by
    flow version id.

    SQLite takes multi-row ``VALUES``; PostgreSQL takes one array per column
    (``unnest``): psycopg parses a statement with more than 50 parameters again each
    time, which made a first pass over 1,000 flows 3x slower."""
    now = _now()
    rows = [
        (
            _new_id(),
            r["flow_name"],
            json.dumps(r["parameters"], sort_keys=True, default=repr),
            float(r["scheduled_start"]),
            r["flow_id"],
            json.dumps(_labels(r["labels"])),
            r["idempotency_key"],
        )
        for r in runs
    ]
    made: dict[str, int] = {}
    if db.dialect == "postgresql":
        chunk_size = 10_000
        statement = (
            f"INSERT INTO flow_runs({_AUTO_RUN_COLUMNS}) "
            "SELECT t.id, t.flow_name, t.parameters, 'Scheduled', t.s, t.flow_id, 0, t.labels, "
            "t.s, t.k, ? FROM unnest(?::text[], ?::text[], ?::text[], ?::float8[], ?::text[], "
            "?::text[], ?::text[]) AS t(id, flow_name, parameters, s, flow_id, labels, k) "
            "ON CONFLICT(flow_id, idempotency_key) DO NOTHING RETURNING flow_id"
        )
    else:
        chunk_size = _INSERT_CHUNK
    for i in range(0, len(rows), chunk_size):
        chunk = rows[i : i + chunk_size]
        if db.dialect == "postgresql":
            sql, values = statement, [now, *(list(col) for col in zip(*chunk, strict=True))]
        else:
            sql = (
                f"INSERT INTO flow_runs({_AUTO_RUN_COLUMNS}) VALUES "
                + ", ".join(["(?, ?, ?, 'Scheduled', ?, ?, 0, ?, ?, ?, ?)"] * len(chunk))
                + " ON CONFLICT(flow_id, idempotency_key) DO NOTHING RETURNING flow_id"
            )
            values = []
            for rid, name, params, start, flow_id, labels, key in chunk:
                values += [rid, name, params, start, flow_id, labels, start, key, now]
        for row in db.fetchall(sql, values):
            made[row["flow_id"]] = made.get(row["flow_id"], 0) + 1
    return made


# --------------------------------------------------------------------------- flow runs


def _finite(value: float | None, what: str) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ApiError(f"{what} must be a finite number of seconds since the epoch")
    return value


def create_flow_run(
    db: Database,
    *,
    flow_id: str | None = None,
    flow_name: str | None = None,
    project: str | None = None,
    parameters: dict[str, Any] | None = None,
    run_name: str | None = None,
    scheduled_start_time: float | None = None,
    labels: Sequence[str] | None = None,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """Create a ``Scheduled`` flow run of a registered flow (by id, or by name in a
    project: its newest version), to start at ``scheduled_start_time`` [now]. Unknown
    or required-but-missing parameters are refused. With an ``idempotency_key`` already
    used for this flow, the existing run is returned.
    """
    if flow_id is not None:
        flow = get_flow(db, flow_id)
    else:
        if flow_name is None or project is None:
            raise ApiError("create_flow_run needs flow_id, or flow_name and project")
        found = list_flows(db, project=project, name=flow_name, limit=1)
        if not found:
            get_project(db, name=project)
            raise ApiError(
                f"no flow named {flow_name!r} in project {project!r} (register it with "
                f"'ferroflow register --project {project} FILE')"
            )
        flow = found[0]
    if flow["archived"] and flow_id is not None:
        raise ApiError(f"flow {flow['name']!r} version {flow['version']} is archived")
    params = dict(parameters or {})
    declared = {p["name"]: p for p in json.loads(flow["structure"]).get("parameters", [])}
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ApiError(
            f"flow {flow['name']!r} has no parameter {unknown[0]!r} (its parameters: "
            f"{', '.join(sorted(declared)) or 'none'})"
        )
    missing = sorted(n for n, p in declared.items() if p.get("required") and n not in params)
    if missing:
        raise ApiError(f"flow {flow['name']!r} needs a value for parameter {missing[0]!r}")
    start = _finite(scheduled_start_time, "scheduled_start_time")
    now = _now()
    row_labels = _labels([*json.loads(flow["labels"]), *(labels or ())])
    with db.transaction():
        if idempotency_key is not None:
            same = db.fetchone(
                "SELECT id FROM flow_runs WHERE flow_id = ? AND idempotency_key = ?",
                (flow["id"], idempotency_key),
            )
            if same is not None:
                return get_flow_run(db, same["id"])
        run_id = _new_id()
        db.execute(
            "INSERT INTO flow_runs(id, flow_name, parameters, state, started, flow_id, "
            "version, labels, name, scheduled_start, idempotency_key, created) "
            "VALUES (?, ?, ?, 'Scheduled', ?, ?, 0, ?, ?, ?, ?, ?)",
            (
                run_id,
                flow["name"],
                json.dumps(params, sort_keys=True, default=repr),
                start if start is not None else now,
                flow["id"],
                json.dumps(row_labels),
                run_name,
                start if start is not None else now,
                idempotency_key,
                now,
            ),
        )
        audit(db, "create_flow_run", run_id, {"flow_id": flow["id"]})
    return get_flow_run(db, run_id)


_FLOW_RUN_COLS = (
    "r.key, r.id, r.flow_name, r.parameters, r.state, r.message, r.started, r.ended, r.pid, "
    "r.host, r.resumed_from, r.flow_id, r.version, r.labels, r.name, r.scheduled_start, "
    "r.created, r.agent_id, r.heartbeat"
)


def get_flow_run(db: Database, flow_run_id: str) -> dict[str, Any]:
    """One flow run by id or unique id prefix (at least 4 characters); ApiError when
    unknown or ambiguous."""
    row = db.fetchone(f"SELECT {_FLOW_RUN_COLS} FROM flow_runs r WHERE r.id = ?", (flow_run_id,))
    if row is not None:
        return row
    if len(flow_run_id) >= 4:
        rows = db.fetchall(
            f"SELECT {_FLOW_RUN_COLS} FROM flow_runs r WHERE r.id LIKE ? ESCAPE '\\' "
            "ORDER BY r.id LIMIT 2",
            (_like_escape(flow_run_id) + "%",),
        )
        if len(rows) == 1:
            return rows[0]
        if len(rows) > 1:
            raise ApiError(f"flow run id {flow_run_id!r} is ambiguous: give more characters")
    raise ApiError(f"no flow run with id {flow_run_id!r}")


_ORDERS = {
    "STARTED_DESC": "r.started DESC, r.key DESC",
    "STARTED_ASC": "r.started ASC, r.key ASC",
    "CREATED_DESC": "r.key DESC",
    "ENDED_DESC": "r.ended DESC, r.key DESC",
}


def list_flow_runs(
    db: Database,
    *,
    states: Sequence[str] | None = None,
    flow_id: str | None = None,
    flow_name: str | None = None,
    project: str | None = None,
    labels: Sequence[str] | None = None,
    started_after: float | None = None,
    started_before: float | None = None,
    order_by: str = "STARTED_DESC",
    limit: int = 50,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Flow runs matching every filter given: state in ``states``, of one flow version
    (``flow_id``) or flow name, of a project, carrying every label in ``labels``,
    started in ``[started_after, started_before)``; ordered and paged."""
    limit, offset = _page(limit, offset)
    if order_by not in _ORDERS:
        raise ApiError(f"unknown order {order_by!r}: one of {', '.join(_ORDERS)}")
    where: list[str] = ["1 = 1"]
    args: list[Any] = []
    if states:
        where.append(f"r.state IN ({', '.join('?' * len(states))})")
        args.extend(states)
    if flow_id is not None:
        where.append("r.flow_id = ?")
        args.append(flow_id)
    if flow_name is not None:
        where.append("r.flow_name = ?")
        args.append(flow_name)
    if project is not None:
        where.append(
            "r.flow_id IN (SELECT f.id FROM flows f JOIN projects p ON p.id = f.project_id "
            "WHERE p.name = ?)"
        )
        args.append(project)
    for label in labels or ():
        # labels is a sorted JSON array of strings: match the quoted element.
        where.append("r.labels LIKE ? ESCAPE '\\'")
        args.append("%" + _like_escape(json.dumps(str(label))) + "%")
    if started_after is not None:
        where.append("r.started >= ?")
        args.append(_finite(started_after, "started_after"))
    if started_before is not None:
        where.append("r.started < ?")
        args.append(_finite(started_before, "started_before"))
    rows = db.fetchall(
        f"SELECT {_FLOW_RUN_COLS} FROM flow_runs r WHERE {' AND '.join(where)} "
        f"ORDER BY {_ORDERS[order_by]} LIMIT ? OFFSET ?",
        (*args, limit, offset),
    )
    if labels:
        wanted = set(labels)
        rows = [r for r in rows if wanted <= set(json.loads(r["labels"] or "[]"))]
    return rows


def set_flow_run_states(db: Database, changes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Apply state changes ``{flow_run_id, version, state, message}`` in one
    transaction: each names the version it expects, and a stale one refuses the whole
    batch (ApiError), so two writers cannot both win. Returns ``{id, version, state}``
    per change, with the new version. Secret values in messages are masked."""
    out = []
    with db.transaction():
        mask = _masker(db)
        for change in changes:
            state = change["state"]
            if state not in FLOW_RUN_STATES:
                raise ApiError(
                    f"unknown flow-run state {state!r}: one of {', '.join(sorted(FLOW_RUN_STATES))}"
                )
            run = get_flow_run(db, change["flow_run_id"])
            now = _now()
            finished = state in FINISHED_FLOW_STATES
            changed = db.execute(
                "UPDATE flow_runs SET state = ?, message = ?, version = version + 1, "
                "started = CASE WHEN ? = 1 AND state IN ('Scheduled', 'Pending') THEN ? "
                "ELSE started END, ended = ? WHERE key = ? AND version = ?",
                (
                    state,
                    _masked(mask, change.get("message")),
                    int(state == "Running"),
                    now,
                    now if finished else None,
                    run["key"],
                    int(change["version"]),
                ),
            )
            if not changed:
                raise ApiError(
                    f"stale version for flow run {run['id']}: expected {change['version']}, "
                    f"it is at version {run['version']} ({run['state']}); read it again"
                )
            audit(db, "set_flow_run_state", run["id"], {"state": state})
            out.append({"id": run["id"], "version": int(change["version"]) + 1, "state": state})
    return out


def cancel_flow_run(db: Database, flow_run_id: str) -> dict[str, Any]:
    """Cancel a flow run: one that has not started becomes ``Cancelled`` now, a running
    one ``Cancelling`` (its agent stops it). ApiError when it already finished."""
    with db.transaction():
        run = get_flow_run(db, flow_run_id)
        if run["state"] in FINISHED_FLOW_STATES:
            raise ApiError(f"flow run {run['id']} already finished ({run['state']})")
        state = "Cancelled" if run["state"] in ("Scheduled", "Pending") else "Cancelling"
        done = set_flow_run_states(
            db,
            [
                {
                    "flow_run_id": run["id"],
                    "version": run["version"],
                    "state": state,
                    "message": "cancelled through the API",
                }
            ],
        )
        audit(db, "cancel_flow_run", run["id"])
    return done[0]


# --------------------------------------------------------------------------- task runs


#: How many flow runs' folded journals a database keeps in memory.
FOLD_CACHE_SIZE = 8


def _journal(db: Database, key: int, after: int = 0) -> list[tuple[int, bytes]]:
    return [
        (int(r["seq"]), bytes(r["data"]))
        for r in db.fetchall(
            "SELECT seq, data FROM journal WHERE flow_run = ? AND seq > ? ORDER BY seq",
            (key, after),
        )
    ]


def _fold(db: Database, key: int) -> Any:
    """The folded journal of flow run ``key``, brought up to date: each blob is folded
    once and the fold kept (for the :data:`FOLD_CACHE_SIZE` most recent runs), so
    reading the counts of a run with a million children again costs a walk over its
    table, not a decode of its journal."""
    from ferroflow import _native

    with db.transaction():  # the lock, and one consistent read of the new blobs
        cache = db.folds
        seq, fold = cache.pop(key, (0, None))
        if fold is None:
            fold = _native.JournalFold()
        new = _journal(db, key, seq)
        if new:
            fold.apply([data for _, data in new])
            seq = new[-1][0]
        cache[key] = (seq, fold)
        while len(cache) > FOLD_CACHE_SIZE:
            cache.pop(next(iter(cache)))
    return fold


def task_run_counts(db: Database, flow_run_key: int) -> list[dict[str, Any]]:
    """Counts of a flow run's task runs by task, own run or mapped child, and state."""
    return [
        {"task": t, "task_name": n, "mapped_child": c, "state": s, "count": k}
        for t, n, c, s, k in _fold(db, flow_run_key).counts()
    ]


def task_runs_page(
    db: Database,
    flow_run_key: int,
    *,
    task: int | None = None,
    children: bool | None = None,
    states: Sequence[str] | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[int, list[dict[str, Any]]]:
    """A page of a flow run's task runs in run-id order (optionally of one task, only
    mapped children or only tasks' own runs, only some states) and how many match."""
    limit, offset = _page(limit, offset)
    try:
        total, rows = _fold(db, flow_run_key).page(
            task=task, children=children, states=list(states or []), offset=offset, limit=limit
        )
    except ValueError as exc:
        raise ApiError(str(exc)) from exc
    return total, rows


def task_run(db: Database, flow_run_id: str, run: int) -> dict[str, Any]:
    """One task run with its transitions and state ``version``; ApiError when unknown."""
    from ferroflow import _native

    flow_run = get_flow_run(db, flow_run_id)
    row = _fold(db, flow_run["key"]).get(run) if 0 <= run < 1 << 32 else None
    if row is None:
        raise ApiError(f"flow run {flow_run['id']} has no task run {run}")
    blobs = [data for _, data in _journal(db, flow_run["key"])]
    transitions = _native.journal_transitions(blobs, run)
    return {
        **row,
        "flow_run_id": flow_run["id"],
        "version": len(transitions),
        "transitions": transitions,
    }


def set_task_run_states(db: Database, changes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Apply task-run state changes ``{flow_run_id, task_run_id, version, state,
    message}`` in one transaction; a stale version refuses the batch (ApiError).
    Returns ``{flow_run_id, task_run_id, version, state}`` per change. Secret values in
    messages are masked."""
    from ferroflow import _native
    from ferroflow.store import FINISHED_STATES

    out = []
    with db.transaction():
        mask = _masker(db)
        for change in changes:
            flow_run = get_flow_run(db, change["flow_run_id"])
            # Take the flow run's row lock first (PostgreSQL) / the write lock (SQLite),
            # so the version read below cannot change before the blob is appended.
            db.execute("UPDATE flow_runs SET version = version WHERE key = ?", (flow_run["key"],))
            current = task_run(db, flow_run["id"], int(change["task_run_id"]))
            if current["version"] != int(change["version"]):
                raise ApiError(
                    f"stale version for task run {change['task_run_id']} of flow run "
                    f"{flow_run['id']}: expected {change['version']}, it is at version "
                    f"{current['version']} ({current['state']}); read it again"
                )
            state = change["state"]
            run_count = int(current["run_count"]) + (state == "Running")
            message = _masked(mask, change.get("message"))
            try:
                blob = _native.journal_encode_transitions(
                    [(current["run"], state, message, run_count, _now())]
                )
            except ValueError as exc:
                raise ApiError(str(exc)) from exc
            db.execute("INSERT INTO journal(flow_run, data) VALUES (?, ?)", (flow_run["key"], blob))
            audit(db, "set_task_run_state", flow_run["id"], {"run": current["run"], "state": state})
            out.append(
                {
                    "flow_run_id": flow_run["id"],
                    "task_run_id": current["run"],
                    "version": current["version"] + 1,
                    "state": state,
                    "finished": state in FINISHED_STATES,
                }
            )
    return out


# -------------------------------------------------------------------------------- logs


def _level(level: int | str) -> int:
    if isinstance(level, int):
        return level
    try:
        return _LEVELS[str(level).upper()]
    except KeyError:
        raise ApiError(f"unknown log level {level!r}: one of {', '.join(_LEVELS)}") from None


def _masker(db: Database) -> Any:
    """The secret masker of ``db`` (:func:`ferroflow.server.secrets.masker`), or None."""
    from ferroflow.server.secrets import masker

    return masker(db)


def _masked(mask: Any, text: Any) -> Any:
    """``text`` with secret values masked (None and non-text as they are)."""
    return mask(text) if mask is not None and isinstance(text, str) else text


def write_run_logs(db: Database, logs: Sequence[dict[str, Any]]) -> int:
    """Add log lines ``{flow_run_id, task_run_id, level, message, timestamp}`` to the
    run store's ``logs`` table (the one the engine writes), in one transaction; secret
    values in them are masked."""
    known: dict[str, str] = {}
    with db.transaction():
        mask = _masker(db)
        messages = [str(line["message"]) for line in logs]
        if mask is not None:
            messages = mask.batch(messages)
        for line, message in zip(logs, messages, strict=True):
            given = line["flow_run_id"]
            if given not in known:
                known[given] = get_flow_run(db, given)["id"]
            at = _finite(line.get("timestamp"), "timestamp")
            db.execute(
                "INSERT INTO logs(flow_run_id, task_run_id, level, time, message) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    known[given],
                    line.get("task_run_id"),
                    _level(line.get("level", 20)),
                    at if at is not None else _now(),
                    message,
                ),
            )
    return len(logs)


#: Lines at or above this level are in the partial index ``logs_by_level`` (schema 8).
LEVEL_INDEX_FROM = 30

#: A level filter that leaves fewer lines than this reads them by level (then sorts
#: them); a wider one walks the run's lines in time order and stops after a page.
NARROW_LEVEL = 20_000


def list_logs(
    db: Database,
    flow_run_id: str,
    *,
    task_run_id: int | None = None,
    min_level: int = 0,
    search: str | None = None,
    limit: int = 100,
    offset: int = 0,
    since: float | None = None,
) -> list[dict[str, Any]]:
    """The log lines of a flow run (or one of its task runs), oldest first; with
    ``search``, only those whose message contains it (case-insensitive); with
    ``since``, only those at or after that time (``offset`` then counts from there: a
    page that follows the logs asks for the lines after the last one it shows).

    Each form reads an index of schema version 8 rather than sorting the run's lines:
    a task run's lines by ``logs_by_task_run``, a narrow level filter (warnings and
    worse, fewer than :data:`NARROW_LEVEL` lines) by ``logs_by_level``, anything else by
    ``logs_by_time``, walked in order until a page is found."""
    limit, offset = _page(limit, offset)
    run = get_flow_run(db, flow_run_id)
    min_level = int(min_level)
    source = "logs"
    where, args = ["flow_run_id = ?"], [run["id"]]
    if task_run_id is not None:
        where.append("task_run_id = ?")
        args.append(task_run_id)
    if since is not None:
        where.append("time >= ?")
        args.append(float(since))
    if min_level > 0:
        # A literal level (an int) lets the planner use the partial index, which SQLite
        # does only when the query repeats the index's condition; ``+level`` keeps the
        # level off every index, for the forms that read another one.
        level = f"level >= {LEVEL_INDEX_FROM} AND level >= {min_level}"
        narrow = (
            task_run_id is None
            and min_level >= LEVEL_INDEX_FROM
            and _count_upto(db, [*where, level], args, NARROW_LEVEL) < NARROW_LEVEL
        )
        where.append(level if narrow else f"+level >= {min_level}")
        if narrow and db.dialect == "sqlite":
            # Without statistics SQLite may prefer walking the time index to a sort of
            # the few lines found: it is told (PostgreSQL plans from its statistics).
            source = "logs INDEXED BY logs_by_level"
    if search:
        # SQLite's LIKE ignores ASCII case as its LOWER() does (neither folds other
        # letters), without making a lowered copy of each message.
        column = "message" if db.dialect == "sqlite" else "LOWER(message)"
        where.append(f"{column} LIKE ? ESCAPE '\\'")
        args.append("%" + _like_escape(search.lower()) + "%")
    # SQLite keeps the order written in rowid; PostgreSQL rows have no such order, so
    # lines of one instant come back in storage order there.
    tie = "rowid" if db.dialect == "sqlite" else "ctid"
    return db.fetchall(
        f"SELECT flow_run_id, task_run_id, level, time AS at, message FROM {source} "
        f"WHERE {' AND '.join(where)} ORDER BY time, {tie} LIMIT ? OFFSET ?",
        (*args, limit, offset),
    )


def _count_upto(db: Database, where: list[str], args: list[Any], most: int) -> int:
    """How many log lines match ``where``, counting no further than ``most``."""
    row = db.fetchone(
        f"SELECT COUNT(*) AS n FROM (SELECT 1 FROM logs WHERE {' AND '.join(where)} LIMIT ?) AS t",
        (*args, most),
    )
    return int(row["n"]) if row else 0


# ------------------------------------------------------------------------------ agents


def list_agents(db: Database, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
    """Agents, most recently seen first, each with ``runs_held``: how many runs it holds
    now (``Pending``, ``Running`` or ``Cancelling``)."""
    limit, offset = _page(limit, offset)
    rows = db.fetchall(
        "SELECT * FROM agents ORDER BY last_heartbeat DESC, created DESC LIMIT ? OFFSET ?",
        (limit, offset),
    )
    held = {
        r["agent_id"]: int(r["n"])
        for r in db.fetchall(
            "SELECT agent_id, COUNT(*) AS n FROM flow_runs "
            "WHERE state IN ('Pending', 'Running', 'Cancelling') AND agent_id IS NOT NULL "
            "GROUP BY agent_id"
        )
    }
    return [{**r, "runs_held": held.get(r["id"], 0)} for r in rows]


# ------------------------------------------------------------------------------ ingest

_INGEST_RUN_FIELDS = (
    "flow_name",
    "parameters",
    "state",
    "message",
    "started",
    "ended",
    "pid",
    "host",
    "resumed_from",
)


def ingest(db: Database, batch: dict[str, Any]) -> dict[str, int]:
    """Apply one batch streamed by a local run (see :mod:`ferroflow.reporting`): its
    flow-run row, and the journal blobs and log lines of its local store numbered by
    their local ``seq`` / ``rowid``. Entries at or below what the server already
    stored for the run are skipped, so a resent batch (after a lost answer or a server
    restart) is applied once. Returns the acknowledged ``journal_seq`` and ``log_seq``.
    """
    run = batch.get("flow_run")
    if not isinstance(run, dict) or not isinstance(run.get("id"), str):
        raise ApiError("an ingest batch needs 'flow_run' with an 'id'")
    values = [run.get(k) for k in _INGEST_RUN_FIELDS]
    if not isinstance(values[0], str) or not isinstance(values[2], str):
        raise ApiError("an ingest batch's flow run needs 'flow_name' and 'state'")
    with db.transaction():
        mask = _masker(db)
        if mask is not None:
            values[3] = _masked(mask, values[3])  # the flow run's message
        row = db.fetchone(
            "SELECT key, ingest_journal_seq, ingest_log_seq FROM flow_runs WHERE id = ?",
            (run["id"],),
        )
        if row is None:
            db.execute(
                "INSERT INTO flow_runs(id, flow_name, parameters, state, message, started, "
                "ended, pid, host, resumed_from, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run["id"], *values, _now()),
            )
            audit(db, "ingest_flow_run", run["id"], {"flow_name": values[0]})
            row = db.fetchone(
                "SELECT key, ingest_journal_seq, ingest_log_seq FROM flow_runs WHERE id = ?",
                (run["id"],),
            )
            assert row is not None
        else:
            # A run being cancelled stays Cancelling until it ends (its agent reads that).
            ended = int(run["state"] in FINISHED_FLOW_STATES)
            db.execute(
                "UPDATE flow_runs SET state = CASE WHEN state = 'Cancelling' AND ? = 0 "
                "THEN state ELSE ? END, message = CASE WHEN state = 'Cancelling' AND ? = 0 "
                "THEN message ELSE ? END, ended = ?, heartbeat = ? WHERE key = ?",
                (
                    ended,
                    run["state"],
                    ended,
                    values[3],
                    run.get("ended"),
                    _now(),
                    row["key"],
                ),
            )
        key, journal_seq, log_seq = (
            row["key"],
            int(row["ingest_journal_seq"]),
            int(row["ingest_log_seq"]),
        )
        for seq, data in batch.get("journal", ()):
            if int(seq) > journal_seq:
                blob = bytes(data) if mask is None else mask.blob(bytes(data))
                db.execute("INSERT INTO journal(flow_run, data) VALUES (?, ?)", (key, blob))
                journal_seq = int(seq)
        lines = list(batch.get("logs", ()))
        messages = [str(line[4]) for line in lines]
        if mask is not None:
            messages = mask.batch(messages)
        for (seq, task_run, level, at, _raw), message in zip(lines, messages, strict=True):
            if int(seq) > log_seq:
                db.execute(
                    "INSERT INTO logs(flow_run_id, task_run_id, level, time, message) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (run["id"], task_run, int(level), float(at), message),
                )
                log_seq = int(seq)
        structure = run.get("structure")
        db.execute(
            "UPDATE flow_runs SET ingest_journal_seq = ?, ingest_log_seq = ?, "
            "structure = COALESCE(?, structure) WHERE key = ?",
            (journal_seq, log_seq, structure if isinstance(structure, str) else None, key),
        )
    return {"journal_seq": journal_seq, "log_seq": log_seq}


def export_records(db: Database, flow_run_id: str) -> dict[str, Any]:
    """What another machine needs to resume the run from its checkpoints: its flow
    name, parameters, state, message, start, the recorded flow structure (or None) and
    every journal blob the server holds for it (all attempts, in order), as
    ``{"flow_name", "parameters", "state", "message", "started", "structure",
    "journal"}``. ApiError when the run is unknown."""
    run = get_flow_run(db, flow_run_id)
    row = db.fetchone("SELECT structure FROM flow_runs WHERE key = ?", (run["key"],))
    return {
        "flow_name": run["flow_name"],
        "parameters": run["parameters"],
        "state": run["state"],
        "message": run["message"],
        "started": run["started"],
        "structure": None if row is None else row["structure"],
        "journal": [data for _, data in _journal(db, run["key"])],
    }


# ------------------------------------------------------------------ agents: claims
# What ferroflow.agent needs: an agent registers (an ``agents`` row), asks for the due
# Scheduled runs its labels cover, and claims one with a single conditional UPDATE on
# the run's state and version, so of many agents racing (or one retrying a request whose
# answer was lost) exactly one holds the run. The claim is a lease: the run's
# ``heartbeat`` is the last renewal, and the agent renews it with :func:`agent_heartbeat`.


def register_agent(
    db: Database, name: str, labels: Sequence[str] | None = None, agent_id: str | None = None
) -> dict[str, Any]:
    """Add (or, with the ``agent_id`` of an earlier registration, refresh) an agent; its
    row."""
    clean = _labels(labels)
    if not name or len(name) > 200:
        raise ApiError("an agent's name must be 1 to 200 characters")
    now = _now()
    with db.transaction():
        if agent_id is not None and db.execute(
            "UPDATE agents SET name = ?, labels = ?, last_heartbeat = ? WHERE id = ?",
            (name, json.dumps(clean), now, agent_id),
        ):
            pass
        else:
            agent_id = agent_id or _new_id()
            db.execute(
                "INSERT INTO agents(id, name, labels, created, last_heartbeat) "
                "VALUES (?, ?, ?, ?, ?)",
                (agent_id, name, json.dumps(clean), now, now),
            )
        audit(db, "register_agent", agent_id, {"labels": clean})
    row = db.fetchone("SELECT * FROM agents WHERE id = ?", (agent_id,))
    assert row is not None
    return row


def _agent(db: Database, agent_id: str) -> dict[str, Any]:
    row = db.fetchone("SELECT * FROM agents WHERE id = ?", (agent_id,))
    if row is None:
        raise ApiError(f"no agent with id {agent_id!r}: register it first (register_agent)")
    return row


def get_runs_in_queue(
    db: Database, agent_id: str, before: float | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """The Scheduled runs due by ``before`` (now) whose labels the agent's labels cover,
    soonest first."""
    limit, _ = _page(limit, 0)
    agent = _agent(db, agent_id)
    have = set(json.loads(agent["labels"] or "[]"))
    due = _finite(before, "before")
    due = due if due is not None else _now()
    # Labels are JSON lists, matched here; the due runs are read a page at a time (in
    # (scheduled_start, key) order) until enough match, so runs this agent cannot take
    # never hide the ones it can.
    found: list[dict[str, Any]] = []
    after: tuple[float, int] = (float("-inf"), -1)
    while len(found) < limit:
        rows = db.fetchall(
            f"SELECT {_FLOW_RUN_COLS} FROM flow_runs r WHERE r.state = 'Scheduled' "
            "AND r.flow_id IS NOT NULL AND r.scheduled_start <= ? "
            "AND (r.scheduled_start > ? OR (r.scheduled_start = ? AND r.key > ?)) "
            "ORDER BY r.scheduled_start, r.key LIMIT ?",
            (due, after[0], after[0], after[1], MAX_PAGE),
        )
        found += [r for r in rows if set(json.loads(r["labels"] or "[]")) <= have]
        if len(rows) < MAX_PAGE:
            break
        after = (float(rows[-1]["scheduled_start"]), int(rows[-1]["key"]))
    return hold_back(db, found)[:limit]  # runs over a concurrency limit wait


def claim_flow_run(db: Database, agent_id: str, flow_run_id: str, version: int) -> dict[str, Any]:
    """Claim a Scheduled run at ``version`` for an agent: it becomes ``Pending``, held by
    the agent with its lease renewed now. Exactly one claim of a run at one version
    wins; the same agent asking again (a retried request) gets the run again. ApiError
    when another agent holds it or it is no longer Scheduled."""
    _agent(db, agent_id)
    with db.transaction():
        run = get_flow_run(db, flow_run_id)
        lock_for_claim(db, run)
        now = _now()
        changed = db.execute(
            "UPDATE flow_runs SET state = 'Pending', version = version + 1, agent_id = ?, "
            "heartbeat = ?, message = ?, ingest_journal_seq = 0, ingest_log_seq = 0 "
            f"WHERE key = ? AND state = 'Scheduled' AND version = ? AND {CLAIM_GATE}",
            (agent_id, now, f"claimed by agent {agent_id}", run["key"], int(version)),
        )
        if not changed:
            if (
                run["agent_id"] == agent_id
                and run["state"] == "Pending"
                and int(run["version"]) == int(version) + 1
            ):
                return run
            if run["state"] == "Scheduled" and int(run["version"]) == int(version):
                raise ApiError(
                    f"flow run {run['id']} was not claimed: it waits for a concurrency "
                    "limit (its flow's or its backfill's runs are all running)"
                )
            raise ApiError(
                f"flow run {run['id']} was not claimed: it is {run['state']} at version "
                f"{run['version']} (held by {run['agent_id'] or 'no agent'})"
            )
        audit(db, "claim_flow_run", run["id"], {"agent_id": agent_id})
    return get_flow_run(db, run["id"])


def agent_heartbeat(
    db: Database, agent_id: str, flow_run_ids: Sequence[str] = ()
) -> dict[str, list[str]]:
    """Renew an agent's lease on the runs it holds (``flow_run_ids``): ``{"held",
    "cancelling", "lost"}``: the runs whose lease was renewed, those of them to stop
    because they are ``Cancelling``, and those the agent no longer holds (stop them)."""
    _agent(db, agent_id)
    now = _now()
    held: list[str] = []
    cancelling: list[str] = []
    lost: list[str] = []
    with db.transaction():
        db.execute("UPDATE agents SET last_heartbeat = ? WHERE id = ?", (now, agent_id))
        for run_id in flow_run_ids:
            row = db.fetchone("SELECT key, state, agent_id FROM flow_runs WHERE id = ?", (run_id,))
            if row is None or row["agent_id"] != agent_id:
                lost.append(run_id)
                continue
            db.execute("UPDATE flow_runs SET heartbeat = ? WHERE key = ?", (now, row["key"]))
            held.append(run_id)
            if row["state"] == "Cancelling":
                cancelling.append(run_id)
    return {"held": held, "cancelling": cancelling, "lost": lost}


# Attempts: each flow-run process that starts a claimed run reports the id of its local
# run (in the audit log, action ``flow_run_attempt``); a run put back in the queue (lost,
# or resumed through the API) is run by the next agent with ``resume=`` that id, so its
# finished, checkpointed tasks are restored.

#: How many times a lost run is put back in the queue before it is Failed.
MAX_RECOVERIES = 3


def report_attempt(db: Database, agent_id: str, flow_run_id: str, local_run_id: str) -> None:
    """Record that the agent's flow-run process runs ``flow_run_id`` as its local run
    ``local_run_id``. ApiError when the agent does not hold the run."""
    with db.transaction():
        run = get_flow_run(db, flow_run_id)
        if run["agent_id"] != agent_id:
            raise ApiError(f"flow run {run['id']} is not held by agent {agent_id}")
        audit(db, "flow_run_attempt", run["id"], {"agent_id": agent_id, "local": local_run_id})


def last_attempt(db: Database, flow_run_id: str) -> str | None:
    """The local run id of the run's latest attempt, None before the first."""
    row = db.fetchone(
        "SELECT detail FROM audit WHERE action = 'flow_run_attempt' AND target = ? "
        "ORDER BY seq DESC LIMIT 1",
        (flow_run_id,),
    )
    return None if row is None else str(json.loads(row["detail"])["local"])


def recoveries(db: Database, flow_run_id: str) -> int:
    """How many times the run was found lost and put back in the queue."""
    row = db.fetchone(
        "SELECT COUNT(*) AS n FROM audit WHERE action = 'lost_flow_run' AND target = ?",
        (flow_run_id,),
    )
    return 0 if row is None else int(row["n"])


def requeue_lost_runs(
    db: Database, lease_timeout: float, max_recoveries: int = MAX_RECOVERIES
) -> int:
    """Put back in the queue, as a resume, every run held by an agent whose lease (its
    ``heartbeat``) is older than ``lease_timeout`` seconds; a run lost
    ``max_recoveries`` times already is Failed instead. Each change is a conditional
    UPDATE on the version read, so two servers do not both requeue it. How many runs."""
    now = _now()
    rows = db.fetchall(
        "SELECT key, id, version, state, heartbeat FROM flow_runs "
        "WHERE state IN ('Pending', 'Running', 'Cancelling') AND agent_id IS NOT NULL "
        "AND heartbeat < ?",
        (now - lease_timeout,),
    )
    done = 0
    for row in rows:
        with db.transaction():
            lost = recoveries(db, row["id"])
            silent = now - float(row["heartbeat"])
            if row["state"] == "Cancelling":
                state, message, start = "Cancelled", "cancelled (its agent was lost)", None
            elif lost >= max_recoveries:
                state = "Failed"
                message = (
                    f"lost {lost + 1} times (no heartbeat for {silent:.0f} s): not put back in "
                    f"the queue after {max_recoveries} recoveries; resume it with "
                    "'ferroflow runs resume ID' once the cause is fixed"
                )
                start = None
            else:
                state, start = "Scheduled", now
                message = (
                    f"lost (no heartbeat for {silent:.0f} s): queued again as a resume "
                    f"(recovery {lost + 1} of {max_recoveries})"
                )
            changed = db.execute(
                "UPDATE flow_runs SET state = ?, message = ?, version = version + 1, "
                "agent_id = NULL, scheduled_start = COALESCE(?, scheduled_start), "
                "ended = ? WHERE key = ? AND version = ?",
                (
                    state,
                    message,
                    start,
                    None if start is not None else now,
                    row["key"],
                    row["version"],
                ),
            )
            if changed:
                _mark_running_task_runs(
                    db,
                    row["key"],
                    "Cancelled" if state == "Cancelled" else "Failed",
                    f"lost with its flow run (no heartbeat for {silent:.0f} s)",
                )
                if state != "Cancelled":
                    audit(db, "lost_flow_run", row["id"], {"state": state})
                done += 1
    return done


def _mark_running_task_runs(db: Database, key: int, state: str, message: str) -> int:
    """Record every task run of flow run ``key`` still ``Running`` as ``state`` with
    ``message`` (one journal blob per page of them): what a lost run was doing is not
    left looking alive. How many."""
    from ferroflow import _native

    marked = 0
    while True:
        _, rows = _fold(db, key).page(states=["Running"], offset=0, limit=MAX_PAGE)
        if not rows:
            return marked
        now = _now()
        blob = _native.journal_encode_transitions(
            [(int(r["run"]), state, message, int(r["run_count"]), now) for r in rows]
        )
        db.execute("INSERT INTO journal(flow_run, data) VALUES (?, ?)", (key, blob))
        marked += len(rows)


def resume_flow_run(db: Database, flow_run_id: str) -> dict[str, Any]:
    """Put a run that ended without succeeding (Failed, Cancelled, TimedOut) back in
    the queue: the next agent resumes it from its last attempt's checkpoints. ApiError
    for a run that succeeded, has not ended, or never ran on an agent."""
    with db.transaction():
        run = get_flow_run(db, flow_run_id)
        if run["state"] not in FINISHED_FLOW_STATES or run["state"] in ("Success", "Cached"):
            raise ApiError(
                f"flow run {run['id']} is {run['state']}: only a run that ended without "
                "succeeding can be resumed"
            )
        if run["flow_id"] is None:
            raise ApiError(
                f"flow run {run['id']} is a local run: resume it where it ran, with "
                "'ferroflow resume ID'"
            )
        now = _now()
        db.execute(
            "UPDATE flow_runs SET state = 'Scheduled', message = ?, version = version + 1, "
            "agent_id = NULL, scheduled_start = ?, ended = NULL WHERE key = ? AND version = ?",
            ("queued again as a resume through the API", now, run["key"], run["version"]),
        )
        audit(db, "resume_flow_run", run["id"])
    return get_flow_run(db, run["id"])
