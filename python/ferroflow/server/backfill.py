"""Backfills: the runs a flow's schedule would have made over a past (or future) range.

:func:`backfill` creates one ``Scheduled`` run per scheduled time of the flow's schedule
between ``start`` and ``end`` (both included) that has no run yet, due at its scheduled
time (so a past one is due at once, oldest first), with the
clock's parameter defaults and labels, like the scheduler service makes them. Each run
carries the scheduler's idempotency key for its instant (``ferroflow-schedule:<flow
version>:<UTC instant>``) under the UNIQUE index on ``flow_runs(flow_id,
idempotency_key)``, and instants that already have a run of any version of the flow are
skipped: running the same backfill again creates nothing, two overlapping backfills at
once create each run once, and the scheduler never doubles a backfilled instant.

``max_concurrent`` bounds how many runs of one backfill agents hold at once (the claim
refuses more, see :func:`ferroflow.server.limits.claim_gate`); the others wait,
``Scheduled``.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import date, datetime, timedelta
from typing import Any

from ferroflow.exceptions import ApiError, OpsError
from ferroflow.server import models
from ferroflow.server.database import Database

__all__ = ["MAX_BACKFILL_RUNS", "backfill", "parse_instant"]

#: The most runs one backfill may create (a longer range is refused: split it).
MAX_BACKFILL_RUNS = 10_000


def parse_instant(text: str, what: str, *, end: bool = False) -> float:
    """Seconds since the epoch of a date (``2026-11-01``: midnight UTC; as an ``end``,
    the end of that day) or an ISO date-time with an offset (``2026-11-01T06:00+01:00``;
    without one, UTC).

    Raises:
        OpsError: text that is neither, naming ``what``.

    Example:
        >>> parse_instant("2026-11-01", "--start")
        1793491200.0
        >>> round(parse_instant("2026-11-01", "--end", end=True) - 1793491200.0, 3)
        86400.0
    """
    from datetime import timezone

    text = str(text).strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
            if end:
                moment += timedelta(days=1) - timedelta(microseconds=1)
            return moment.timestamp()
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise OpsError(
            f"{what}: cannot read {text!r} as a date (2026-11-01) or a date-time "
            "(2026-11-01T06:00:00+00:00)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _flow(db: Database, flow_id: str | None, flow_name: str | None, project: str | None) -> Any:
    if flow_id is not None:
        return models.get_flow(db, flow_id)
    if flow_name is None:
        raise ApiError("a backfill needs flow_id, or flow_name (and project when names clash)")
    rows = db.fetchall(
        "SELECT f.id, p.name AS project FROM flows f JOIN projects p ON p.id = f.project_id "
        "WHERE f.name = ? AND f.archived = 0 AND (CAST(? AS TEXT) IS NULL OR p.name = ?) "
        "ORDER BY f.version DESC",
        (flow_name, project, project),
    )
    projects = sorted({r["project"] for r in rows})
    if not rows:
        where = f" in project {project!r}" if project else ""
        raise ApiError(f"no flow named {flow_name!r}{where} (see 'ferroflow flows ls')")
    if len(projects) > 1:
        raise ApiError(
            f"flow {flow_name!r} is in several projects ({', '.join(projects)}): give the project"
        )
    return models.get_flow(db, rows[0]["id"])


def _schedule(db: Database, flow: dict[str, Any]) -> Any:
    from ferroflow.schedules import Schedule

    row = models.schedule_of(db, flow["flow_group"])
    blob = json.loads(row["schedule"]).get("cloudpickle") if row is not None else None
    if not isinstance(blob, str):
        raise OpsError(
            f"flow {flow['name']!r} has no schedule to backfill (register it with "
            "Flow(schedule=...))"
        )
    import cloudpickle

    try:
        got = cloudpickle.loads(base64.b64decode(blob))
    except Exception as exc:  # a pickle can raise anything while it rebuilds
        raise OpsError(
            f"the schedule of flow {flow['name']!r} cannot be rebuilt on the server: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(got, Schedule):
        raise OpsError(f"the schedule of flow {flow['name']!r} is a {type(got).__name__}")
    return got


def _events(schedule: Any, start: float, end: float) -> list[Any]:
    from datetime import timezone

    out: list[Any] = []
    after = datetime.fromtimestamp(start, tz=timezone.utc) - timedelta(microseconds=1)
    while True:
        got = schedule.next(500, after=after, return_events=True)
        for event in got:
            if event.instant.timestamp() > end:
                return out
            out.append(event)
            if len(out) > MAX_BACKFILL_RUNS:
                raise OpsError(
                    f"the range holds more than {MAX_BACKFILL_RUNS} scheduled times: "
                    "backfill it in parts"
                )
        if len(got) < 500:
            return out
        after = got[-1].instant


def backfill(
    db: Database,
    *,
    start: float,
    end: float,
    flow_id: str | None = None,
    flow_name: str | None = None,
    project: str | None = None,
    max_concurrent: int | None = None,
) -> dict[str, Any]:
    """Create the missing runs of a flow's schedule between ``start`` and ``end``
    (seconds since the epoch, both included); see the module.

    Args:
        db: the server's database.
        start: the first instant.
        end: the last instant.
        flow_id: the flow version (its schedule is its flow's), or
        flow_name: the flow's name (newest version) ...
        project: ... in this project (needed when names clash).
        max_concurrent: at most this many of the backfill's runs held at once [no bound].

    Returns:
        ``{"id", "flow_id", "created", "existing", "flow_run_ids"}``: the backfill's id,
        how many runs it created and how many scheduled times had one already.

    Raises:
        OpsError: an end before the start, a bad ``max_concurrent``, a flow without a
            schedule, too many scheduled times, a clock whose defaults do not fit.
        ApiError: an unknown flow.
    """
    if end < start:
        raise OpsError("a backfill's end is before its start")
    if max_concurrent is not None and (
        isinstance(max_concurrent, bool)
        or not isinstance(max_concurrent, int)
        or max_concurrent < 1
    ):
        raise OpsError(f"--max-concurrent must be an int >= 1, got {max_concurrent!r}")
    flow = _flow(db, flow_id, flow_name, project)
    schedule = _schedule(db, flow)
    events = _events(schedule, start, end)
    params = json.loads(flow["structure"]).get("parameters", [])
    declared = {p["name"] for p in params}
    required = {p["name"] for p in params if p.get("required")}
    for event in events:
        unknown = sorted(set(event.parameter_defaults) - declared)
        missing = sorted(required - set(event.parameter_defaults))
        if unknown or missing:
            raise OpsError(
                f"flow {flow['name']!r}: its clock gives parameter {unknown[0]!r} it does not have"
                if unknown
                else f"flow {flow['name']!r}: parameter {missing[0]!r} is required and its "
                "clock gives no default"
            )
    backfill_id = uuid.uuid4().hex
    now = time.time()
    flow_labels = json.loads(flow["labels"] or "[]")
    cut = len(models.AUTO_KEY_PREFIX)
    made: list[str] = []
    with db.transaction():
        taken = {
            str(r["idempotency_key"])[cut:].split(":", 1)[-1]
            for r in db.fetchall(
                "SELECT idempotency_key FROM flow_runs WHERE flow_id IN "
                "(SELECT id FROM flows WHERE flow_group = ?) AND idempotency_key LIKE ?",
                (flow["flow_group"], models.AUTO_KEY_PREFIX + "%"),
            )
        }
        todo = [e for e in events if e.key not in taken]
        db.execute(
            "INSERT INTO backfills(id, flow_group, flow_id, start_time, end_time, "
            "max_concurrent, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (backfill_id, flow["flow_group"], flow["id"], start, end, max_concurrent, now),
        )
        for i in range(0, len(todo), 200):
            chunk = todo[i : i + 200]
            values: list[Any] = []
            for event in chunk:
                labels = sorted({*flow_labels, *event.labels})
                values += [
                    uuid.uuid4().hex,
                    flow["name"],
                    json.dumps(event.parameter_defaults, sort_keys=True, default=repr),
                    event.instant.timestamp(),
                    flow["id"],
                    json.dumps(labels),
                    f"backfill {event.instant.isoformat()}",
                    event.instant.timestamp(),
                    models.auto_run_key(flow["id"], event.key),
                    now,
                    backfill_id,
                ]
            rows = db.fetchall(
                "INSERT INTO flow_runs(id, flow_name, parameters, state, started, flow_id, "
                "version, labels, name, scheduled_start, idempotency_key, created, backfill_id) "
                "VALUES "
                + ", ".join(["(?, ?, ?, 'Scheduled', ?, ?, 0, ?, ?, ?, ?, ?, ?)"] * len(chunk))
                + " ON CONFLICT(flow_id, idempotency_key) DO NOTHING RETURNING id",
                values,
            )
            made.extend(str(r["id"]) for r in rows)
        models.audit(
            db,
            "backfill",
            flow["id"],
            {"backfill_id": backfill_id, "created": len(made), "start": start, "end": end},
        )
    return {
        "id": backfill_id,
        "flow_id": flow["id"],
        "created": len(made),
        "existing": len(events) - len(made),
        "flow_run_ids": made,
    }
