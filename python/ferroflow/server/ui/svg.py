"""Geometry for the UI's SVG pictures: the schematic of a run's graph, the timeline
(Gantt) of its task runs, and the small bar charts. Functions return plain data
(coordinates, labels, state classes) that the templates draw, so the JSON twin of a
page carries the same picture.

Both run pictures have one element per *task*, never per mapped child: a mapped task is
one node with its counts by state, and one timeline bar from its children's earliest
start to their latest end.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "MAX_NODES",
    "count_label",
    "duration_chart",
    "failure_chart",
    "schematic",
    "timeline",
]

#: The largest graph (in tasks) the schematic draws.
MAX_NODES = 400

_NODE_W, _NODE_H, _GAP_X, _GAP_Y, _PAD = 170, 44, 50, 14, 10


def count_label(task: dict[str, Any]) -> str:
    """A task's runs in a few characters: its state, or for a mapped task its
    children by state (``"✓ 998 ✗ 2"``).

    Example:
        >>> count_label({"mapped": True, "glyph": "✗", "state": "Failed", "by_state": [
        ...     {"glyph": "✗", "count": 2}, {"glyph": "✓", "count": 998}]})
        '✗ 2 ✓ 998'
    """
    if not task["mapped"]:
        return f"{task['glyph']} {task['state']}"
    parts = [f"{s['glyph']} {s['count']}" for s in task["by_state"]]
    return " ".join(parts) if parts else f"{task['glyph']} 0 children"


def schematic(
    tasks: list[dict[str, Any]], edges: list[tuple[int, int, bool]] | None
) -> dict[str, Any]:
    """Nodes laid out in layers (a task's layer is the longest path to it from a root),
    left to right, and the edges between them. Without edges (unknown), the tasks
    stand in one column in task order."""
    if len(tasks) > MAX_NODES:
        return {"too_large": True, "tasks": len(tasks), "nodes": [], "edges": []}
    ids = {t["task"] for t in tasks}
    known = [(u, d, m) for u, d, m in edges or () if u in ids and d in ids and u != d]
    ups: dict[int, list[int]] = {}
    for u, d, _m in known:
        ups.setdefault(d, []).append(u)
    layer: dict[int, int] = {}
    order = sorted(ids)

    def depth(tid: int) -> int:
        # Iterative longest path (a graph is acyclic; a guard stops a damaged one).
        stack = [(tid, 0)]
        while stack:
            node, i = stack[-1]
            parents = ups.get(node, [])
            if i < len(parents):
                stack[-1] = (node, i + 1)
                p = parents[i]
                if p not in layer and len(stack) <= len(ids):
                    stack.append((p, 0))
                continue
            layer[node] = 1 + max((layer.get(p, 0) for p in parents), default=-1)
            stack.pop()
        return layer[tid]

    for tid in order:
        if tid not in layer:
            depth(tid)
    if edges is None:
        layer = {tid: 0 for tid in order}
    rows: dict[int, int] = {}
    nodes = []
    by_id = {t["task"]: t for t in tasks}
    for tid in order:
        col = layer[tid]
        row = rows.get(col, 0)
        rows[col] = row + 1
        t = by_id[tid]
        x = _PAD + col * (_NODE_W + _GAP_X)
        y = _PAD + row * (_NODE_H + _GAP_Y)
        name = t["name"] if len(t["name"]) <= 22 else t["name"][:21] + "…"
        nodes.append(
            {
                "task": tid,
                "name": name,
                "full_name": t["name"],
                "x": x,
                "y": y,
                "w": _NODE_W,
                "h": _NODE_H,
                "cls": t["cls"],
                "state": t["state"],
                "mapped": t["mapped"],
                "label": count_label(t),
            }
        )
    pos = {n["task"]: n for n in nodes}
    lines = []
    for u, d, m in known:
        a, b = pos[u], pos[d]
        lines.append(
            {
                "x1": a["x"] + _NODE_W,
                "y1": a["y"] + _NODE_H / 2,
                "x2": b["x"],
                "y2": b["y"] + _NODE_H / 2,
                "mapped": m,
            }
        )
    width = _PAD * 2 + (max(layer.values(), default=0) + 1) * (_NODE_W + _GAP_X) - _GAP_X
    height = _PAD * 2 + max(rows.values(), default=1) * (_NODE_H + _GAP_Y) - _GAP_Y
    return {
        "too_large": False,
        "edges_known": edges is not None,
        "nodes": nodes,
        "edges": lines,
        "width": width,
        "height": height,
    }


def timeline(
    spans: list[dict[str, Any]],
    tasks: list[dict[str, Any]],
    start: float | None,
    end: float,
    width: int = 900,
    max_rows: int = 200,
) -> dict[str, Any]:
    """One bar per task (own run) and per mapped task's children, from the earliest
    start to the latest end of its runs (a bar still running reaches ``end``), on an
    axis from the flow run's start to ``end``."""
    state = {t["task"]: t for t in tasks}
    timed = [s for s in spans if s["started"] is not None]
    if start is None:
        start = min((s["started"] for s in timed), default=end)
    span = max(end - start, 1e-3)
    label_w, row_h = 200, 18
    plot = width - label_w - 10
    bars: list[dict[str, Any]] = []
    for s in timed[:max_rows]:
        t = state.get(s["task"])
        s_end = s["ended"] if s["ended"] is not None else end
        if t is not None and _still_running(t, s["mapped_child"]):
            s_end = end  # some of its runs have ended, others still run: up to now
        x = label_w + max(0.0, (s["started"] - start) / span) * plot
        w = max(2.0, (s_end - s["started"]) / span * plot)
        name = s["task_name"] + (f" \u00d7{s['runs']}" if s["mapped_child"] else "")
        bars.append(
            {
                "task": s["task"],
                "label": name if len(name) <= 30 else name[:29] + "…",
                "x": round(x, 1),
                "y": len(bars) * row_h + 20,
                "w": round(min(w, width - x), 1),
                "cls": t["cls"] if t else "wait",
                "title": f"{name}: {_offset(s_end - s['started'])[1:]}",
            }
        )
    ticks = []
    for i in range(5):
        ticks.append({"x": round(label_w + plot * i / 4, 1), "label": _offset(span * i / 4)})
    return {
        "bars": bars,
        "width": width,
        "height": len(bars) * row_h + 30,
        "ticks": ticks,
        "cut": max(0, len(timed) - max_rows),
    }


_RUNNING = ("Running", "Retrying", "Cancelling")


def _still_running(task: dict[str, Any], children: bool) -> bool:
    """Whether a task's own run (or, with ``children``, one of its mapped children)
    is still running."""
    if children:
        return any(task.get("children", {}).get(s) for s in _RUNNING)
    return task.get("own") in _RUNNING


def _offset(seconds: float) -> str:
    if seconds < 1:
        return f"+{seconds * 1000:.1f} ms"
    if seconds < 120:
        return f"+{seconds:.1f} s"
    return f"+{seconds / 60:.1f} min"


def failure_chart(days: list[dict[str, Any]]) -> dict[str, Any]:
    """Bars of failed runs per day (and all runs, lighter), a week wide."""
    top = max((d["runs"] for d in days), default=0) or 1
    bars: list[dict[str, Any]] = []
    for i, d in enumerate(days):
        h_all = 60 * d["runs"] / top
        h_fail = 60 * d["failed"] / top
        bars.append(
            {
                "x": 10 + i * 40,
                "h_all": round(h_all, 1),
                "h_fail": round(h_fail, 1),
                "y_all": round(70 - h_all, 1),
                "y_fail": round(70 - h_fail, 1),
                "date": d["date"],
                "failed": d["failed"],
                "runs": d["runs"],
            }
        )
    return {"bars": bars, "width": 20 + len(days) * 40, "height": 90}


def duration_chart(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One bar per run (oldest left), its height the run's duration, its class the
    run's state."""
    top = max((r["duration"] or 0 for r in runs), default=0) or 1
    bars: list[dict[str, Any]] = []
    for i, r in enumerate(runs):
        h = max(1.0, 80 * (r["duration"] or 0) / top)
        bars.append(
            {
                "id": r["id"],
                "x": 5 + i * 14,
                "y": round(90 - h, 1),
                "h": round(h, 1),
                "cls": r["cls"],
                "title": f"{r['short_id']} {r['state']} {r['took']}",
            }
        )
    return {"bars": bars, "width": 10 + len(runs) * 14, "height": 100, "max": top}
