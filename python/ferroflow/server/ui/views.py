"""What each UI page shows, as plain JSON-ready data (the page's JSON twin is exactly
this data; the HTML template renders it). Views read through
:mod:`ferroflow.server.models` and :mod:`ferroflow.server.ui.data` only.

A run page is bounded whatever the size of the run: the task table has one row per
task (mapped children as counts by state), the children of one task come a page at a
time, the schematic draws a mapped task once, and the timeline has one bar per task
(the earliest start to the latest end of its runs).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from ferroflow.exceptions import ApiError
from ferroflow.server import models
from ferroflow.server.database import Database
from ferroflow.server.ui import data, svg

__all__ = [
    "LIVE_TASKS",
    "LOG_LEVELS",
    "PAGE_SIZE",
    "STATE_STYLE",
    "TASK_PAGE",
    "agents_page",
    "dashboard",
    "flow_page",
    "flows_page",
    "live",
    "local_flow_page",
    "parse_parameters",
    "run_page",
    "runs_page",
    "state_style",
    "task_run_page",
]

#: Task runs per page of a task's runs.
PAGE_SIZE = 50

#: Tasks per page of a run's task table (a flow of many tasks is paged too).
TASK_PAGE = 200

#: The most tasks the live JSON reports (the first ones, by id).
LIVE_TASKS = 1000

#: The log levels the level filter offers.
LOG_LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}

#: Per state: its CSS class and a glyph, so states differ by shape and label, not by
#: colour alone.
STATE_STYLE: dict[str, tuple[str, str]] = {
    "Success": ("ok", "✓"),
    "Cached": ("ok", "✓"),
    "Restored": ("ok", "✓"),
    "Mapped": ("ok", "✓"),
    "Looped": ("ok", "✓"),
    "Skipped": ("skip", "⤼"),
    "Failed": ("fail", "✗"),
    "TimedOut": ("fail", "✗"),
    "TriggerFailed": ("fail", "✗"),
    "Interrupted": ("fail", "✗"),
    "Running": ("run", "▶"),
    "Cancelling": ("run", "▶"),
    "Paused": ("pause", "‖"),
    "Retrying": ("retry", "↻"),
    "Cancelled": ("cancel", "⊘"),
    "Pending": ("wait", "○"),
    "Scheduled": ("wait", "○"),
    "Resume": ("wait", "○"),
}

_FAILED = {"Failed", "TimedOut", "TriggerFailed", "Interrupted"}
# Which state a task shows when its runs are in several: the first present wins.
_PRIORITY = (
    "Failed",
    "TimedOut",
    "TriggerFailed",
    "Interrupted",
    "Running",
    "Retrying",
    "Paused",
    "Cancelled",
    "Pending",
    "Scheduled",
    "Resume",
    "Skipped",
    "Success",
    "Cached",
    "Mapped",
    "Looped",
)


def state_style(state: str) -> dict[str, str]:
    """``{"state", "cls", "glyph"}`` for a state name (unknown names look neutral).

    Example:
        >>> state_style("TimedOut")
        {'state': 'TimedOut', 'cls': 'fail', 'glyph': '✗'}
    """
    cls, glyph = STATE_STYLE.get(state, ("wait", "•"))
    return {"state": state, "cls": cls, "glyph": glyph}


def _when(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _took(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _int(query: Mapping[str, str], name: str, default: int, low: int = 0) -> int:
    """Query parameter ``name`` as a whole number >= ``low`` (``default`` when absent);
    ApiError (a 400) for anything else."""
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(f"{name} must be a whole number, not {raw[:50]!r}") from None
    if value < low:
        raise ApiError(f"{name} must be {low} or more, not {value}")
    return value


def _flow_run(run: dict[str, Any], now: float) -> dict[str, Any]:
    """A flow-run row as the pages show it."""
    started, ended = run.get("started"), run.get("ended")
    finished = ended is not None
    if started is None:
        took = None
    else:
        took = (ended if finished else now) - started
    try:
        params = json.loads(run.get("parameters") or "{}")
    except ValueError:
        params = {"(unreadable)": run.get("parameters")}
    return {
        "id": run["id"],
        "short_id": run["id"][:8],
        "flow_name": run["flow_name"],
        "flow_id": run.get("flow_id"),
        "name": run.get("name"),
        **state_style(run["state"]),
        "message": run.get("message"),
        "started": started,
        "ended": ended,
        "started_at": _when(started),
        "ended_at": _when(ended),
        "duration": took,
        "took": _took(took) + ("" if finished or took is None else "+"),
        "parameters": params,
        "pid": run.get("pid"),
        "host": run.get("host"),
        "agent_id": run.get("agent_id"),
        "resumed_from": run.get("resumed_from"),
        "version": run.get("version"),
        "scheduled_start": run.get("scheduled_start"),
        "scheduled_at": _when(run.get("scheduled_start")),
        "finished": finished or run["state"] in models.FINISHED_FLOW_STATES,
    }


def _task_run(row: dict[str, Any]) -> dict[str, Any]:
    started, ended = row.get("started"), row.get("ended")
    took = ended - started if started is not None and ended is not None else None
    mi = row.get("map_index")
    return {
        "run": row["run"],
        "task": row["task"],
        "task_name": row["task_name"],
        "full_name": row["task_name"] if mi is None else f"{row['task_name']}[{mi}]",
        "map_index": mi,
        **state_style(row["state"]),
        "run_count": row["run_count"],
        "message": row.get("message"),
        "started": started,
        "ended": ended,
        "took": _took(took),
    }


def _tasks(counts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per task from the counts rows: its own run's state, its children by
    state, and the state it shows."""
    tasks: dict[int, dict[str, Any]] = {}
    for c in counts:
        t = tasks.setdefault(
            c["task"],
            {"task": c["task"], "name": c["task_name"], "own": None, "children": {}, "total": 0},
        )
        t["total"] += c["count"]
        if c["mapped_child"]:
            t["children"][c["state"]] = t["children"].get(c["state"], 0) + c["count"]
        else:
            t["own"] = c["state"]
    out = []
    for t in tasks.values():
        present = set(t["children"]) | ({t["own"]} if t["own"] else set())
        if t["own"] == "Mapped" and t["children"]:
            present.discard("Mapped")
        shown = next((s for s in _PRIORITY if s in present), t["own"] or "Pending")
        t["mapped"] = bool(t["children"]) or t["own"] == "Mapped"
        t["n_children"] = sum(t["children"].values())
        t["by_state"] = [
            {**state_style(s), "count": n}
            for s, n in sorted(t["children"].items(), key=lambda kv: _rank(kv[0]))
        ]
        t.update(state_style(shown))
        out.append(t)
    return out


def _rank(state: str) -> int:
    try:
        return _PRIORITY.index(state)
    except ValueError:
        return len(_PRIORITY)


def _logs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = {v: k for k, v in LOG_LEVELS.items()}
    return [
        {
            "task_run_id": r["task_run_id"],
            "level": names.get(int(r["level"]), str(r["level"])),
            "levelno": int(r["level"]),
            "at": r["at"],
            "time": _when(r["at"]),
            "message": r["message"],
        }
        for r in rows
    ]


def runs_page(db: Database, query: Mapping[str, str]) -> dict[str, Any]:
    """The recent flow runs (``limit``, default 50; ``state`` to filter)."""
    limit = min(_int(query, "limit", 50), models.MAX_PAGE) or models.MAX_PAGE
    state = query.get("state") or None
    now = time.time()
    rows = models.list_flow_runs(db, states=[state] if state else None, limit=limit)
    return {"runs": [_flow_run(r, now) for r in rows], "state_filter": state, "limit": limit}


def dashboard(db: Database, query: Mapping[str, str]) -> dict[str, Any]:
    """Recent runs, failures per day over a week, upcoming scheduled runs, agents."""
    now = time.time()
    recent = [_flow_run(r, now) for r in models.list_flow_runs(db, limit=20)]
    days = data.failures_by_day(db, 7, now)
    upcoming = models.list_flow_runs(
        db, states=["Scheduled"], started_after=now, order_by="STARTED_ASC", limit=10
    )
    agents = models.list_agents(db, limit=20)
    day_ago = now - 86400
    failed_day = data.failed_since(db, day_ago)
    return {
        "recent": recent,
        "failures": {
            "last_day": failed_day,
            "last_week": sum(d["failed"] for d in days),
            "by_day": days,
        },
        "failures_chart": svg.failure_chart(days),
        "upcoming": [_flow_run(r, now) for r in upcoming],
        "agents": [_agent(a, now) for a in agents],
    }


def _agent(a: dict[str, Any], now: float) -> dict[str, Any]:
    seen = a.get("last_heartbeat")
    try:
        labels = json.loads(a.get("labels") or "[]")
    except ValueError:
        labels = []
    return {
        "id": a["id"],
        "name": a.get("name"),
        "labels": labels,
        "last_seen": seen,
        "last_seen_at": _when(seen),
        "seen_ago": None if seen is None else _took(max(0.0, now - seen)) + " ago",
        "created_at": _when(a.get("created")),
    }


def agents_page(db: Database, query: Mapping[str, str]) -> dict[str, Any]:
    """Every agent (most recently seen first) and when each was last seen."""
    now = time.time()
    return {"agents": [_agent(a, now) for a in models.list_agents(db, limit=models.MAX_PAGE)]}


def run_page(db: Database, run_id: str, query: Mapping[str, str]) -> dict[str, Any]:
    """One flow run: header, tasks (filtered by ``state`` and ``name``), the runs of one
    ``task`` a page at a time (``offset``), failures, logs (``level``, ``q``,
    ``log_offset``), the schematic and the timeline."""
    now = time.time()
    row = models.get_flow_run(db, run_id)
    run = _flow_run(row, now)
    counts = models.task_run_counts(db, row["key"])
    tasks = _tasks(counts)
    by_state: dict[str, int] = {}
    for c in counts:
        by_state[c["state"]] = by_state.get(c["state"], 0) + c["count"]
    state_filter = query.get("state") or ""
    name_filter = (query.get("name") or "").strip()
    shown = [
        t
        for t in tasks
        if (not name_filter or name_filter.lower() in t["name"].lower())
        and (
            not state_filter
            or t["own"] == state_filter
            or state_filter in t["children"]
            or t["state"] == state_filter
        )
    ]
    n_shown = len(shown)
    task_offset = _int(query, "task_offset", 0)
    shown = shown[task_offset : task_offset + TASK_PAGE]
    # The runs of one task (its own run and children), a page at a time.
    selected = None
    if query.get("task"):
        tid = _int(query, "task", 0)
        match = [t for t in tasks if t["task"] == tid]
        if not match:
            raise ApiError(f"flow run {row['id']} has no task {tid}")
        offset = _int(query, "offset", 0)
        total, rows = models.task_runs_page(
            db,
            row["key"],
            task=tid,
            states=[state_filter] if state_filter else None,
            limit=PAGE_SIZE,
            offset=offset,
        )
        selected = {
            **match[0],
            "total": total,
            "offset": offset,
            "limit": PAGE_SIZE,
            "runs": [_task_run(r) for r in rows],
            "next": offset + PAGE_SIZE if offset + PAGE_SIZE < total else None,
            "prev": max(0, offset - PAGE_SIZE) if offset > 0 else None,
        }
    # Failures: the first few failed runs, with their error lines (one per attempt).
    n_failed, failed_rows = models.task_runs_page(
        db, row["key"], states=sorted(_FAILED - {"Interrupted"}), limit=10
    )
    failures = []
    for f in failed_rows:
        errors = models.list_logs(db, row["id"], task_run_id=f["run"], min_level=40, limit=20)
        failures.append(
            {**_task_run(f), "errors": [e["message"] for e in errors]},
        )
    # Paused task runs: what the approve action applies to.
    n_paused, paused_rows = models.task_runs_page(db, row["key"], states=["Paused"], limit=20)
    # Logs.
    level_name = (query.get("level") or "").upper()
    if level_name and level_name not in LOG_LEVELS:
        raise ApiError(f"unknown log level {level_name!r}: one of {', '.join(LOG_LEVELS)}")
    search = query.get("q") or None
    log_offset = _int(query, "log_offset", 0)
    logs = models.list_logs(
        db,
        row["id"],
        min_level=LOG_LEVELS.get(level_name, 0),
        search=search,
        limit=200,
        offset=log_offset,
    )
    edges = data.flow_run_edges(db, row)
    spans = data.task_run_spans(db, row["key"])
    shown_logs = _logs(logs)
    return {
        "flow_run": run,
        "task_run_count": sum(by_state.values()),
        "by_state": [
            {**state_style(s), "count": n}
            for s, n in sorted(by_state.items(), key=lambda kv: _rank(kv[0]))
        ],
        "filters": {
            "state": state_filter,
            "name": name_filter,
            "level": level_name,
            "q": search or "",
        },
        "tasks": shown,
        "task_count": len(tasks),
        "task_matches": n_shown,
        "task_offset": task_offset,
        "task_next": task_offset + TASK_PAGE if task_offset + TASK_PAGE < n_shown else None,
        "task_prev": max(0, task_offset - TASK_PAGE) if task_offset > 0 else None,
        "selected": selected,
        "failures": failures,
        "failure_count": n_failed,
        "paused": [_task_run(p) for p in paused_rows],
        "paused_count": n_paused,
        "logs": shown_logs,
        "log_offset": log_offset,
        "log_next": log_offset + 200 if len(logs) == 200 else None,
        "log_follow": _follow_from(shown_logs, log_offset),
        "schematic": svg.schematic(tasks, edges),
        "timeline": svg.timeline(spans, tasks, row.get("started"), row.get("ended") or now),
        "states": sorted(STATE_STYLE, key=_rank),
        "levels": list(LOG_LEVELS),
    }


def _follow_from(logs: list[dict[str, Any]], offset: int) -> dict[str, Any]:
    """Where a page that shows ``logs`` (from ``offset`` on) follows the logs from:
    ``since`` the time of its last line and ``skip`` how many of its lines are at that
    time (the live JSON reads by index from there), else the plain ``offset``."""
    follow: dict[str, Any] = {"offset": offset + len(logs), "since": None, "skip": 0}
    if logs:
        last = logs[-1]["at"]
        skip = 0
        for line in reversed(logs):
            if line["at"] != last:
                break
            skip += 1
        # Lines of that instant on an earlier page are not known here: offsets then.
        if skip < len(logs) or offset == 0:
            follow.update(since=last, skip=skip)
    return follow


def _float(query: Mapping[str, str], name: str) -> float | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(f"{name} must be a number, not {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ApiError(f"{name} must be a finite number, not {raw!r}")
    return value


def live(db: Database, run_id: str, query: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The small JSON a live run page polls: the run's state, each task's state and
    counts, and the timeline (one bar per task, mapped children as one bar: its size
    does not grow with the children); with ``log_offset`` or ``log_since`` (and the
    page's ``level`` and ``q``), the log lines from there on (at most 200: the page
    follows the logs). ``log_since`` is a time: the lines at or after it, the first
    ``log_offset`` of them skipped (read by index, however long the logs)."""
    query = query or {}
    now = time.time()
    row = models.get_flow_run(db, run_id)
    run = _flow_run(row, now)
    tasks = _tasks(models.task_run_counts(db, row["key"]))
    logs: list[dict[str, Any]] = []
    since = _float(query, "log_since")
    if query.get("log_offset") or since is not None:
        level_name = (query.get("level") or "").upper()
        if level_name and level_name not in LOG_LEVELS:
            raise ApiError(f"unknown log level {level_name!r}: one of {', '.join(LOG_LEVELS)}")
        logs = _logs(
            models.list_logs(
                db,
                row["id"],
                min_level=LOG_LEVELS.get(level_name, 0),
                search=query.get("q") or None,
                limit=200,
                offset=_int(query, "log_offset", 0),
                since=since,
            )
        )
    spans = data.task_run_spans(db, row["key"])
    return {
        "logs": logs,
        "id": run["id"],
        **state_style(run["state"]),
        "message": run["message"],
        "ended_at": run["ended_at"],
        "took": run["took"],
        "finished": run["finished"],
        "version": run["version"],
        "tasks": {
            str(t["task"]): {
                "cls": t["cls"],
                "glyph": t["glyph"],
                "state": t["state"],
                "counts": svg.count_label(t),
                "total": t["total"],
            }
            for t in tasks[:LIVE_TASKS]
        },
        "timeline": svg.timeline(spans, tasks, row.get("started"), row.get("ended") or now),
    }


def task_run_page(db: Database, run_id: str, run: int) -> dict[str, Any]:
    """One task run: its state, every transition (each attempt labelled), its logs."""
    row = models.task_run(db, run_id, run)
    transitions = []
    attempt = 0
    for t in row["transitions"]:
        if t["state"] == "Running":
            attempt += 1
        transitions.append(
            {
                **state_style(t["state"]),
                "message": t.get("message"),
                "time": _when(t["at"]),
                "attempt": attempt,
            }
        )
    logs = models.list_logs(db, row["flow_run_id"], task_run_id=run, limit=500)
    return {
        "flow_run_id": row["flow_run_id"],
        "task_run": _task_run(row),
        "transitions": transitions,
        "logs": _logs(logs),
    }


_TYPES: dict[str, Any] = {
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "list": list,
    "dict": dict,
    "tuple": tuple,
}


def parse_parameters(
    declared: list[dict[str, Any]], form: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The values of a run form, checked against the flow's declared parameters as
    ``flow.run`` checks them (pydantic, the declared type): ``(values, errors by
    parameter)``. An empty field keeps the default (and is an error when required).
    A field of a non-string type is read as JSON first (``[1, 2]``, ``true``), else
    as text for pydantic to coerce (``"3"`` for an int)."""
    from pydantic import TypeAdapter, ValidationError

    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for p in declared:
        name = p["name"]
        raw = form.get(f"param.{name}", "")
        if raw == "":
            if p.get("required"):
                errors[name] = f"parameter {name!r} is required"
            continue
        tp = _TYPES.get(p.get("type") or "")
        if tp is None or tp is str:
            value: Any = raw
        else:
            try:
                value = json.loads(raw)
            except ValueError:
                value = raw
        if tp is not None:
            try:
                value = TypeAdapter(tp).validate_python(value, strict=False)
            except ValidationError as exc:
                first = exc.errors()[0]
                errors[name] = (
                    f"parameter {name!r} must be {p['type']}: {first['msg']} (got {raw!r})"
                )
                continue
        values[name] = value
    return values, errors


def flows_page(db: Database, query: Mapping[str, str]) -> dict[str, Any]:
    """Registered flows by project (newest versions), and flows seen only in runs."""
    projects: dict[str, list[dict[str, Any]]] = {p["name"]: [] for p in models.list_projects(db)}
    for f in models.list_flows(db, limit=models.MAX_PAGE):
        sched = models.schedule_of(db, f["flow_group"])
        projects.setdefault(f["project_name"], []).append(
            {
                "id": f["id"],
                "name": f["name"],
                "version": f["version"],
                "schedule": None if sched is None else bool(sched["active"]),
            }
        )
    return {
        "projects": [{"name": n, "flows": fl} for n, fl in projects.items()],
        "local": [{**f, "last_started_at": _when(f["last_started"])} for f in data.local_flows(db)],
    }


def flow_page(
    db: Database,
    flow_id: str,
    form: Mapping[str, str] | None = None,
    errors: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A registered flow version: its versions, schedule and next runs, its recent runs
    (a bar chart of durations), and the run form from its parameters."""
    flow = models.get_flow(db, flow_id)
    now = time.time()
    structure = json.loads(flow["structure"])
    versions = models.list_flows(db, flow_group=flow["flow_group"], include_archived=True)
    sched = models.schedule_of(db, flow["flow_group"])
    runs: list[dict[str, Any]] = []
    upcoming: list[dict[str, Any]] = []
    for v in versions:
        runs += models.list_flow_runs(db, flow_id=v["id"], limit=50)
        upcoming += models.list_flow_runs(
            db,
            flow_id=v["id"],
            states=["Scheduled"],
            started_after=now,
            order_by="STARTED_ASC",
            limit=10,
        )
    runs.sort(key=lambda r: r["started"] or 0, reverse=True)
    recent = [_flow_run(r, now) for r in runs[:50]]
    upcoming.sort(key=lambda r: r["started"] or 0)
    schedule = None
    if sched is not None or structure.get("schedule"):
        schedule = {
            "active": bool(sched["active"]) if sched is not None else False,
            "repr": (structure.get("schedule") or {}).get("repr"),
        }
    form = form or {}
    return {
        "flow": {
            "id": flow["id"],
            "name": flow["name"],
            "version": flow["version"],
            "archived": bool(flow["archived"]),
            "flow_group": flow["flow_group"],
            "labels": json.loads(flow["labels"] or "[]"),
        },
        "versions": [
            {
                "id": v["id"],
                "version": v["version"],
                "archived": bool(v["archived"]),
                "project": v["project_name"],
            }
            for v in versions
        ],
        "schedule": schedule,
        "upcoming": [_flow_run(r, now) for r in upcoming[:10]],
        "recent": recent,
        "durations_chart": svg.duration_chart(list(reversed(recent))),
        "parameters": [
            {
                **p,
                "value": form.get(f"param.{p['name']}", ""),
                "default_json": json.dumps(p.get("default")),
            }
            for p in structure.get("parameters", [])
        ],
        "errors": dict(errors or {}),
        "tasks": len(structure.get("tasks", [])),
    }


def local_flow_page(db: Database, name: str) -> dict[str, Any]:
    """A flow seen only in local runs: its recent runs (a bar chart of durations)."""
    now = time.time()
    rows = models.list_flow_runs(db, flow_name=name, limit=50)
    if not rows:
        raise ApiError(f"no runs of a flow named {name!r}")
    recent = [_flow_run(r, now) for r in rows]
    return {
        "flow": {"name": name},
        "recent": recent,
        "durations_chart": svg.duration_chart(list(reversed(recent))),
    }
