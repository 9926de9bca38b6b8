"""Draw a flow's graph as Graphviz DOT (and SVG when Graphviz's ``dot`` is installed).

Tasks are boxes (mapped tasks double boxes), data edges are labelled with the argument
they feed, ordering edges are dashed, mapped edges bold. Given a finished run's states,
each task is coloured by its state (green success, red failure, grey skipped, ...).

Example:
    >>> from ferroflow import Flow, task
    >>> @task
    ... def one() -> int:
    ...     return 1
    >>> with Flow("tiny") as flow:
    ...     x = one()
    >>> print(to_dot(flow).splitlines()[0])
    digraph "tiny" {
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ferroflow.exceptions import FerroflowError

if TYPE_CHECKING:
    from ferroflow.flow import Flow

__all__ = ["STATE_COLORS", "render", "to_dot"]

#: Fill colour per state name (a task's state, or for a mapped task the worst child).
STATE_COLORS = {
    "Success": "#8fd19e",
    "Cached": "#9ecbe8",
    "Mapped": "#8fd19e",
    "Skipped": "#d6d6d6",
    "Failed": "#f19a9a",
    "TimedOut": "#f19a9a",
    "TriggerFailed": "#f5c08a",
    "Cancelled": "#c9b3e6",
    "Paused": "#f3e38b",
    "Retrying": "#f3e38b",
    "Pending": "#ffffff",
    "Running": "#f3e38b",
    "Looped": "#f3e38b",
}

_SEVERITY = ["Failed", "TimedOut", "TriggerFailed", "Cancelled", "Paused", "Pending", "Skipped"]


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _state_name(state: Any) -> str:
    if isinstance(state, str):
        return state
    if state.is_mapped():
        children = {type(c).__name__ for c in state.map_states}
        for name in _SEVERITY:
            if name in children:
                return name
        return "Mapped"
    return type(state).__name__


def to_dot(flow: Flow, states: Mapping[Any, Any] | None = None) -> str:
    """The flow's graph as DOT source.

    Args:
        flow: the flow to draw.
        states: optional ``{task: State}`` (``flow_state.result``) or ``{task: "Failed"}``
            to colour the tasks by state.
    """
    ids = {task: f"t{i}" for i, task in enumerate(flow.sorted_tasks())}
    mapped = {e.downstream_task for e in flow.edges if e.mapped}
    lines = [f"digraph {_quote(flow.name)} {{", "  rankdir=LR;", '  node [fontname="Helvetica"];']
    for task, node in ids.items():
        attrs = [f"label={_quote(task.name)}", "shape=box", 'style="rounded,filled"']
        if task in mapped:
            attrs.append("peripheries=2")
        fill = "#ffffff"
        if states is not None and task in states:
            name = _state_name(states[task])
            fill = STATE_COLORS.get(name, fill)
            attrs.append(f"tooltip={_quote(name)}")
        attrs.append(f"fillcolor={_quote(fill)}")
        lines.append(f"  {node} [{', '.join(attrs)}];")
    for edge in flow.edges:
        attrs = []
        if edge.key is not None:
            attrs.append(f"label={_quote(edge.key)}")
        else:
            attrs.append("style=dashed")
        if edge.mapped:
            attrs.append("penwidth=2")
        if edge.flattened:
            attrs.append("arrowhead=veevee")
        up, down = ids[edge.upstream_task], ids[edge.downstream_task]
        lines.append(f"  {up} -> {down} [{', '.join(attrs)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(dot: str, path: str | Path) -> Path:
    """Write ``dot`` to ``path``: DOT text for ``.dot``/``.gv``, otherwise rendered by
    Graphviz (``.svg``, ``.png``, ``.pdf``), which must be installed.

    Raises:
        FerroflowError: the format needs Graphviz and ``dot`` is not on the PATH, or
            Graphviz failed.
    """
    out = Path(path)
    suffix = out.suffix.lower().lstrip(".")
    if suffix in ("dot", "gv", ""):
        out.write_text(dot)
        return out
    exe = shutil.which("dot")
    if exe is None:
        raise FerroflowError(
            f"writing {out.name} needs Graphviz's 'dot' program (e.g. apt-get install "
            "graphviz); write a .dot file instead"
        )
    done = subprocess.run(
        [exe, f"-T{suffix}", "-o", str(out)], input=dot, text=True, capture_output=True
    )
    if done.returncode != 0:
        raise FerroflowError(f"Graphviz could not render {out}: {done.stderr.strip()}")
    return out
