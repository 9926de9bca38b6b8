"""Concurrency limits: how many runs of a flow, of a backfill, and task runs of a tag run
at once.

- **Flow limits** (``flow_limits``): at most ``max_running`` runs of a flow (every
  version) are held by agents at once (``Pending``, ``Running`` or ``Cancelling``).
- **Backfill bounds** (``backfills.max_concurrent``): the same, for the runs of one
  backfill.

Both are enforced where a run is claimed: :data:`CLAIM_GATE` is part of the claim's one
conditional ``UPDATE`` (:func:`ferroflow.server.models.claim_flow_run`), so no agent,
however many race, takes a run past a limit (on PostgreSQL the claim first locks the
limit's row, :func:`lock_for_claim`, so that two claims at once count each other). The
runs that wait stay ``Scheduled``: :func:`hold_back` leaves them out of an agent's queue
and says why in their message ("waiting: flow 'etl' has 2 of 2 runs running"), which
``ferroflow runs ls|show`` and the API show.

- **Task-tag limits** (``task_tag_limits``, ``ferroflow limits set TAG N``): at most N
  task runs carrying the tag run at once across every run on every agent. A flow-run
  process acquires one slot per limited tag (``task_slots`` rows, :func:`acquire_slots`,
  all of a task's tags or none) before such a task runs and releases them when it ends
  (:func:`release_slots`); a task that gets no slot waits and asks again. A slot whose
  flow run is no longer held by an agent (finished, or found lost and put back in the
  queue) is released by the next acquire or listing (:func:`release_dead_slots`).
  Lowering a limit never takes a slot away: tasks holding slots finish, and new ones
  start only once the count is under the new limit.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ferroflow.exceptions import ApiError, OpsError
from ferroflow.server.database import Database

__all__ = [
    "CLAIM_GATE",
    "HELD_STATES",
    "acquire_slots",
    "hold_back",
    "list_flow_limits",
    "list_tag_limits",
    "lock_for_claim",
    "release_dead_slots",
    "release_slots",
    "set_flow_limit",
    "set_tag_limit",
]

#: The states of a run that an agent holds (what a limit counts).
HELD_STATES = ("Pending", "Running", "Cancelling")

_HELD = "('Pending', 'Running', 'Cancelling')"

#: The condition a claim's UPDATE adds: the run's flow and backfill are under their limits.
CLAIM_GATE = (
    "NOT EXISTS (SELECT 1 FROM flows f JOIN flow_limits l ON l.flow_group = f.flow_group "
    "WHERE f.id = flow_runs.flow_id AND l.max_running <= (SELECT count(*) FROM flow_runs h "
    "JOIN flows hf ON hf.id = h.flow_id WHERE hf.flow_group = l.flow_group "
    f"AND h.state IN {_HELD})) "
    "AND NOT EXISTS (SELECT 1 FROM backfills b WHERE b.id = flow_runs.backfill_id "
    "AND b.max_concurrent IS NOT NULL AND b.max_concurrent <= (SELECT count(*) FROM "
    f"flow_runs h WHERE h.backfill_id = b.id AND h.state IN {_HELD}))"
)


def _check_limit(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise OpsError(f"{what} must be an int >= 0, got {value!r}")
    return value


def _flow_group(db: Database, flow: str, project: str | None) -> tuple[str, str]:
    """``(flow_group, name)`` of a flow given by version id or by name."""
    row = db.fetchone("SELECT flow_group, name FROM flows WHERE id = ?", (flow,))
    if row is not None:
        return str(row["flow_group"]), str(row["name"])
    rows = db.fetchall(
        "SELECT DISTINCT f.flow_group, f.name, p.name AS project FROM flows f "
        "JOIN projects p ON p.id = f.project_id WHERE f.name = ? "
        "AND (CAST(? AS TEXT) IS NULL OR p.name = ?)",
        (flow, project, project),
    )
    if not rows:
        where = f" in project {project!r}" if project else ""
        raise ApiError(f"no flow {flow!r}{where} (see 'ferroflow flows ls')")
    if len(rows) > 1:
        projects = ", ".join(sorted(str(r["project"]) for r in rows))
        raise ApiError(f"flow {flow!r} is in several projects ({projects}): give the project")
    return str(rows[0]["flow_group"]), str(rows[0]["name"])


def set_flow_limit(
    db: Database, flow: str, max_running: int | None, project: str | None = None
) -> dict[str, Any]:
    """Limit the runs of ``flow`` (a name, or a version id) held at once to
    ``max_running`` (None removes the limit). ``{"flow_group", "flow_name",
    "max_running"}``.

    Raises:
        OpsError: a limit that is not an int >= 0 (0 holds every run back).
        ApiError: an unknown flow, or a name in several projects without ``project``.
    """
    if max_running is not None:
        _check_limit(max_running, "a flow's run limit")
    group, name = _flow_group(db, flow, project)
    with db.transaction():
        db.execute("DELETE FROM flow_limits WHERE flow_group = ?", (group,))
        if max_running is not None:
            db.execute(
                "INSERT INTO flow_limits(flow_group, max_running, updated) VALUES (?, ?, ?)",
                (group, max_running, time.time()),
            )
    return {"flow_group": group, "flow_name": name, "max_running": max_running}


def list_flow_limits(db: Database) -> list[dict[str, Any]]:
    """Every flow limit with how many of the flow's runs are held now."""
    return db.fetchall(
        "SELECT l.flow_group, l.max_running, (SELECT min(f.name) FROM flows f "
        "WHERE f.flow_group = l.flow_group) AS flow_name, (SELECT count(*) FROM flow_runs h "
        f"JOIN flows hf ON hf.id = h.flow_id WHERE hf.flow_group = l.flow_group "
        f"AND h.state IN {_HELD}) AS running FROM flow_limits l ORDER BY flow_name"
    )


def lock_for_claim(db: Database, run: dict[str, Any]) -> None:
    """PostgreSQL: lock the limit rows a claim of ``run`` counts against (two claims at
    once then see each other's; SQLite has one writer anyway)."""
    if db.dialect != "postgresql":
        return
    db.fetchall(
        "SELECT l.flow_group FROM flow_limits l JOIN flows f ON f.flow_group = l.flow_group "
        "WHERE f.id = ? FOR UPDATE OF l",
        (run["flow_id"],),
    )
    backfill = db.fetchone("SELECT backfill_id FROM flow_runs WHERE key = ?", (run["key"],))
    if backfill and backfill["backfill_id"]:
        db.fetchall("SELECT id FROM backfills WHERE id = ? FOR UPDATE", (backfill["backfill_id"],))


def hold_back(db: Database, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The queued runs ``rows`` (soonest first) that may be claimed under the flow and
    backfill limits; those that must wait get a "waiting: ..." message (their state
    and version do not change)."""
    if not rows:
        return []
    ids = [r["id"] for r in rows]
    marks = ", ".join("?" * len(ids))
    info = {
        str(r["id"]): r
        for r in db.fetchall(
            f"SELECT r.id, r.backfill_id, f.flow_group, l.max_running, b.max_concurrent "
            f"FROM flow_runs r LEFT JOIN flows f ON f.id = r.flow_id "
            f"LEFT JOIN flow_limits l ON l.flow_group = f.flow_group "
            f"LEFT JOIN backfills b ON b.id = r.backfill_id WHERE r.id IN ({marks})",
            ids,
        )
    }
    room: dict[tuple[str, str], int] = {}

    def free(kind: str, key: str, limit: int) -> int:
        if (kind, key) not in room:
            if kind == "flow":
                sql = (
                    "SELECT count(*) AS n FROM flow_runs h JOIN flows hf ON hf.id = h.flow_id "
                    f"WHERE hf.flow_group = ? AND h.state IN {_HELD}"
                )
            else:
                sql = (
                    "SELECT count(*) AS n FROM flow_runs h WHERE h.backfill_id = ? "
                    f"AND h.state IN {_HELD}"
                )
            got = db.fetchone(sql, (key,))
            room[(kind, key)] = limit - int(got["n"] if got else 0)
        return room[(kind, key)]

    out: list[dict[str, Any]] = []
    for row in rows:
        i = info.get(str(row["id"]), {})
        why = None
        if i.get("max_running") is not None:
            limit = int(i["max_running"])
            if free("flow", str(i["flow_group"]), limit) <= 0:
                why = (
                    f"waiting: flow {row['flow_name']!r} has {limit} of {limit} runs "
                    "running (its limit)"
                )
        if why is None and i.get("max_concurrent") is not None:
            limit = int(i["max_concurrent"])
            if free("backfill", str(i["backfill_id"]), limit) <= 0:
                why = f"waiting: its backfill runs {limit} at once (--max-concurrent {limit})"
        if why is None:
            if i.get("max_running") is not None:
                room[("flow", str(i["flow_group"]))] -= 1
            if i.get("max_concurrent") is not None:
                room[("backfill", str(i["backfill_id"]))] -= 1
            out.append(row)
        elif row.get("message") != why:
            db.execute(
                "UPDATE flow_runs SET message = ? WHERE id = ? AND state = 'Scheduled'",
                (why, row["id"]),
            )
    return out


# ---------------------------------------------------------------------- task-tag limits


def _check_tag(tag: Any) -> str:
    if not isinstance(tag, str) or not tag.strip():
        raise OpsError(f"a tag is a non-empty string, got {tag!r}")
    return tag.strip()


def set_tag_limit(db: Database, tag: str, max_running: int | None) -> dict[str, Any]:
    """At most ``max_running`` task runs tagged ``tag`` run at once (None removes the
    limit); ``{"tag", "max_running", "running"}``. Lowering it takes no slot away.

    Raises:
        OpsError: an empty tag, a limit that is not an int >= 0.
    """
    tag = _check_tag(tag)
    if max_running is not None:
        _check_limit(max_running, f"the limit of tag {tag!r}")
    with db.transaction():
        db.execute("DELETE FROM task_tag_limits WHERE tag = ?", (tag,))
        if max_running is not None:
            db.execute(
                "INSERT INTO task_tag_limits(tag, max_running, updated) VALUES (?, ?, ?)",
                (tag, max_running, time.time()),
            )
    got = db.fetchone("SELECT count(*) AS n FROM task_slots WHERE tag = ?", (tag,))
    return {"tag": tag, "max_running": max_running, "running": int(got["n"] if got else 0)}


def release_dead_slots(db: Database) -> int:
    """Release the slots whose flow run no agent holds any more (it ended, or was found
    lost); how many."""
    return db.execute(
        "DELETE FROM task_slots WHERE NOT EXISTS (SELECT 1 FROM flow_runs r WHERE "
        f"r.id = task_slots.flow_run_id AND r.state IN {_HELD})"
    )


def list_tag_limits(db: Database) -> list[dict[str, Any]]:
    """Every tag limit with the slots held now: ``{"tag", "max_running", "running"}``."""
    release_dead_slots(db)
    return db.fetchall(
        "SELECT l.tag, l.max_running, (SELECT count(*) FROM task_slots s WHERE s.tag = l.tag) "
        "AS running FROM task_tag_limits l ORDER BY l.tag"
    )


def limited_tags(db: Database) -> dict[str, int]:
    """The tags that have a limit, with it."""
    return {
        str(r["tag"]): int(r["max_running"]) for r in db.fetchall("SELECT * FROM task_tag_limits")
    }


def acquire_slots(db: Database, flow_run_id: str, holder: str, tags: Sequence[str]) -> bool:
    """Take one slot of every limited tag in ``tags`` for ``holder`` (a task run of
    flow run ``flow_run_id``), all or none; True when held (also when already held, or
    no tag has a limit). A flow run that no agent holds gets none (ApiError)."""
    tags = sorted({_check_tag(t) for t in tags})
    with db.transaction():
        run = db.fetchone("SELECT state FROM flow_runs WHERE id = ?", (flow_run_id,))
        if run is None or run["state"] not in HELD_STATES:
            raise ApiError(
                f"flow run {flow_run_id} is not held by an agent: it cannot take task slots"
            )
        if db.dialect == "postgresql":
            db.fetchall(
                "SELECT tag FROM task_tag_limits WHERE tag = ANY(?::text[]) FOR UPDATE", (tags,)
            )
        release_dead_slots(db)
        limits = (
            {
                str(r["tag"]): int(r["max_running"])
                for r in db.fetchall(
                    "SELECT tag, max_running FROM task_tag_limits "
                    f"WHERE tag IN ({', '.join('?' * len(tags))})",
                    tags,
                )
            }
            if tags
            else {}
        )
        for tag, limit in limits.items():
            mine = db.fetchone(
                "SELECT 1 AS x FROM task_slots WHERE tag = ? AND flow_run_id = ? AND holder = ?",
                (tag, flow_run_id, holder),
            )
            if mine:
                continue
            got = db.fetchone("SELECT count(*) AS n FROM task_slots WHERE tag = ?", (tag,))
            if int(got["n"] if got else 0) >= limit:
                return False  # the transaction ends: nothing was taken
        now = time.time()
        for tag in limits:
            db.execute(
                "INSERT INTO task_slots(tag, flow_run_id, holder, acquired) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(tag, flow_run_id, holder) DO NOTHING",
                (tag, flow_run_id, holder, now),
            )
    return True


def release_slots(db: Database, flow_run_id: str, holder: str | None = None) -> int:
    """Release the slots of ``holder`` in flow run ``flow_run_id`` (every holder of the
    run when None); how many."""
    if holder is None:
        return db.execute("DELETE FROM task_slots WHERE flow_run_id = ?", (flow_run_id,))
    return db.execute(
        "DELETE FROM task_slots WHERE flow_run_id = ? AND holder = ?", (flow_run_id, holder)
    )
