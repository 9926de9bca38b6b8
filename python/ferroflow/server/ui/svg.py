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
    "COMPACT_BYTES",
    "COMPACT_NODES",
    "MAX_EDGES",
    "MAX_GROUPS",
    "MAX_NODES",
    "count_label",
    "duration_chart",
    "failure_chart",
    "schematic",
    "timeline",
]

#: The largest graph (in tasks) the schematic draws with full nodes (name and counts).
MAX_NODES = 400

#: The largest graph drawn task by task, as small squares (name and counts on hover);
#: a larger one is condensed to groups of tasks (see :func:`schematic`).
COMPACT_NODES = 2500

#: About the most bytes of HTML a compact schematic may take (long task names make a
#: graph of fewer tasks condensed, so that the run page stays small).
COMPACT_BYTES = 370_000

#: The most groups a condensed schematic draws.
MAX_GROUPS = 300

#: The most edges a compact or condensed schematic draws.
MAX_EDGES = 6000

_NODE_W, _NODE_H, _GAP_X, _GAP_Y, _PAD = 170, 44, 50, 14, 10
# Compact squares: size, pitch, and how a band wraps (columns across, rows down).
_SQ, _SQ_PITCH_X, _SQ_PITCH_Y, _BAND_COLS, _BAND_ROWS, _BAND_GAP = 12, 20, 18, 60, 30, 14
# A condensed schematic's tasks are grouped by name within at most this many bands of
# layers (fewer when that makes too many groups).
_BANDS = (64, 32, 16, 8, 4, 2, 1)
# The most groups in one column of a condensed schematic.
_GROUP_ROWS = 20
# The most columns across a condensed schematic before they wrap.
_GROUP_COLS = 6
# Which state class a group shows when its tasks are in several: the first present.
_CLS_ORDER = ("fail", "run", "retry", "pause", "cancel", "wait", "skip", "ok")


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
    """The run's graph in layers (a task's layer is the longest path to it from a
    root), left to right; without edges (unknown), in task order. Three forms by size:

    - ``"full"`` (up to :data:`MAX_NODES` tasks): a node per task with its name and
      counts, curved edges with arrows;
    - ``"compact"`` (up to :data:`COMPACT_NODES`): a small square per task coloured by
      state (name and counts in its title), layers wrapped into bands of
      ``_BAND_COLS`` columns and ``_BAND_ROWS`` rows, straight edges (at most
      :data:`MAX_EDGES`);
    - ``"condensed"`` (larger): one node per group of tasks of one name within a band
      of layers, with how many tasks and their states; a group links to the task table
      filtered by its name.

    Every form has ``nodes``, ``edges``, ``width`` and ``height``; a node of the first two
    has its ``task``."""
    ids = {t["task"] for t in tasks}
    known = [(u, d, m) for u, d, m in edges or () if u in ids and d in ids and u != d]
    order = sorted(ids)
    layer = _layers(order, known) if edges is not None else {tid: 0 for tid in order}
    by_id = {t["task"]: t for t in tasks}
    base = {"too_large": False, "edges_known": edges is not None, "tasks": len(tasks)}
    if len(tasks) <= MAX_NODES:
        return {**base, "mode": "full", **_full(order, layer, known, by_id)}
    if len(tasks) <= COMPACT_NODES:
        compact = _compact(order, layer, known, by_id)
        if _compact_bytes(compact) <= COMPACT_BYTES:
            return {**base, "mode": "compact", **compact}
    return {**base, "mode": "condensed", **_condensed(order, layer, known, by_id)}


def _layers(order: list[int], known: list[tuple[int, int, bool]]) -> dict[int, int]:
    """Each task's layer: the longest path to it from a root."""
    ups: dict[int, list[int]] = {}
    for u, d, _m in known:
        ups.setdefault(d, []).append(u)
    layer: dict[int, int] = {}
    limit = len(order)
    for tid in order:
        if tid in layer:
            continue
        # Iterative longest path (a graph is acyclic; a guard stops a damaged one).
        stack = [(tid, 0)]
        while stack:
            node, i = stack[-1]
            parents = ups.get(node, [])
            if i < len(parents):
                stack[-1] = (node, i + 1)
                p = parents[i]
                if p not in layer and len(stack) <= limit:
                    stack.append((p, 0))
                continue
            layer[node] = 1 + max((layer.get(p, 0) for p in parents), default=-1)
            stack.pop()
    return layer


def _full(
    order: list[int],
    layer: dict[int, int],
    known: list[tuple[int, int, bool]],
    by_id: dict[int, dict[str, Any]],
) -> dict[str, Any]:
    rows: dict[int, int] = {}
    nodes: list[dict[str, Any]] = []
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
    return {"nodes": nodes, "edges": lines, "width": width, "height": height}


def _compact(
    order: list[int],
    layer: dict[int, int],
    known: list[tuple[int, int, bool]],
    by_id: dict[int, dict[str, Any]],
) -> dict[str, Any]:
    # The tasks of each layer, in task order; a layer taller than a band takes several
    # columns; columns fill a band left to right, then the next band below.
    per_layer: dict[int, list[int]] = {}
    for tid in order:
        per_layer.setdefault(layer[tid], []).append(tid)
    columns: list[list[int]] = []
    for col in sorted(per_layer):
        members = per_layer[col]
        for i in range(0, len(members), _BAND_ROWS):
            columns.append(members[i : i + _BAND_ROWS])
    nodes: list[dict[str, Any]] = []
    band_top, widest = _PAD, 0
    for b in range(0, len(columns), _BAND_COLS):
        band = columns[b : b + _BAND_COLS]
        for c, members in enumerate(band):
            for r, tid in enumerate(members):
                t = by_id[tid]
                nodes.append(
                    {
                        "task": tid,
                        "x": _PAD + c * _SQ_PITCH_X,
                        "y": band_top + r * _SQ_PITCH_Y,
                        "cls": t["cls"],
                        "mapped": t["mapped"],
                        "title": f"{_short(t['name'], 40)}: {count_label(t)}",
                    }
                )
        widest = max(widest, len(band))
        band_top += max(len(m) for m in band) * _SQ_PITCH_Y + _BAND_GAP
    pos = {n["task"]: n for n in nodes}
    # All edges in one path (two: plain and mapped), each a move and a relative line.
    half = _SQ // 2
    plain: list[str] = []
    mapped: list[str] = []
    for u, d, m in known[:MAX_EDGES]:
        a, z = pos[u], pos[d]
        x, y = a["x"] + _SQ, a["y"] + half
        (mapped if m else plain).append(f"M{x} {y}l{z['x'] - x} {z['y'] + half - y}")
    return {
        "nodes": nodes,
        "edges": [],
        "path": "".join(plain),
        "mapped_path": "".join(mapped),
        "edges_cut": max(0, len(known) - MAX_EDGES),
        "size": _SQ,
        "width": _PAD * 2 + max(widest, 1) * _SQ_PITCH_X,
        "height": band_top - _BAND_GAP + _PAD,
    }


def _compact_bytes(compact: dict[str, Any]) -> int:
    """About how many bytes of HTML the run page spends on a compact schematic."""
    per_node = sum(
        len(n["title"].encode()) + 2 * len(str(n["task"])) + len(f"{n['x']}{n['y']}")
        for n in compact["nodes"]
    )
    return 105 * len(compact["nodes"]) + per_node + len(compact["path"] + compact["mapped_path"])


def _short(name: str, most: int) -> str:
    return name if len(name) <= most else name[: most - 1] + "…"


def _condensed(
    order: list[int],
    layer: dict[int, int],
    known: list[tuple[int, int, bool]],
    by_id: dict[int, dict[str, Any]],
) -> dict[str, Any]:
    top = max(layer.values(), default=0) + 1
    key: dict[int, tuple[int, str]] = {}
    for bands in _BANDS:
        key = {tid: (layer[tid] * bands // top, by_id[tid]["name"]) for tid in order}
        if len(set(key.values())) <= MAX_GROUPS:
            break
    groups: dict[tuple[int, str], dict[str, Any]] = {}
    for tid in order:
        g = groups.setdefault(
            key[tid], {"band": key[tid][0], "name": key[tid][1], "count": 0, "states": {}}
        )
        t = by_id[tid]
        g["count"] += 1
        g["states"][t["cls"]] = g["states"].get(t["cls"], 0) + 1
        g.setdefault("glyphs", {})[t["cls"]] = t["glyph"]
    # Too many names even in one band: the largest groups, the rest counted.
    ranked = sorted(groups, key=lambda k: (-groups[k]["count"], k))
    kept = set(ranked[:MAX_GROUPS])
    # A band's groups stand in a column (several when more than _GROUP_ROWS).
    in_band: dict[int, int] = {}
    for k in kept:
        in_band[k[0]] = in_band.get(k[0], 0) + 1
    first_col, col = {}, 0
    for band in sorted(in_band):
        first_col[band] = col
        col += -(-in_band[band] // _GROUP_ROWS)
    # Columns wrap after _GROUP_COLS, into blocks one below the other.
    tallest = min(max(in_band.values(), default=1), _GROUP_ROWS)
    block = tallest * (_NODE_H + _GAP_Y) + 2 * _BAND_GAP
    rows: dict[int, int] = {}
    nodes: list[dict[str, Any]] = []
    for k in sorted(kept):
        g = groups[k]
        i = rows.get(g["band"], 0)
        rows[g["band"]] = i + 1
        row = i % _GROUP_ROWS
        column = first_col[g["band"]] + i // _GROUP_ROWS
        present = [c for c in _CLS_ORDER if c in g["states"]]
        label = " ".join(f"{g['glyphs'][c]} {g['states'][c]}" for c in present)
        name = g["name"] if len(g["name"]) <= 16 else g["name"][:15] + "…"
        nodes.append(
            {
                "group": len(nodes),
                "name": f"{name} \u00d7{g['count']}",
                "full_name": g["name"],
                "count": g["count"],
                "x": _PAD + (column % _GROUP_COLS) * (_NODE_W + _GAP_X),
                "y": _PAD + (column // _GROUP_COLS) * block + row * (_NODE_H + _GAP_Y),
                "w": _NODE_W,
                "h": _NODE_H,
                "cls": present[0] if present else "wait",
                "label": label,
            }
        )
        g["node"] = nodes[-1]
    pairs: dict[tuple[tuple[int, str], tuple[int, str]], bool] = {}
    for u, d, m in known:
        a, z = key[u], key[d]
        if a != z and a in kept and z in kept:
            pairs[(a, z)] = pairs.get((a, z), False) or m
    lines = []
    for (a, z), m in list(pairs.items())[:MAX_EDGES]:
        na, nz = groups[a]["node"], groups[z]["node"]
        lines.append(
            {
                "x1": na["x"] + _NODE_W,
                "y1": na["y"] + _NODE_H / 2,
                "x2": nz["x"],
                "y2": nz["y"] + _NODE_H / 2,
                "mapped": m,
            }
        )
    blocks = -(-max(col, 1) // _GROUP_COLS)
    return {
        "nodes": nodes,
        "edges": lines,
        "groups": len(groups),
        "groups_cut": len(groups) - len(kept),
        "tasks_cut": sum(groups[k]["count"] for k in groups if k not in kept),
        "width": _PAD * 2 + min(max(col, 1), _GROUP_COLS) * (_NODE_W + _GAP_X) - _GAP_X,
        "height": _PAD * 2 + (blocks - 1) * block + tallest * (_NODE_H + _GAP_Y) - _GAP_Y,
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
