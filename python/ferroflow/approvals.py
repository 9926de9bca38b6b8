"""Approving paused task runs (``PAUSE``, or a ``manual_only`` trigger).

A paused task run waits for an approval. :func:`approve` records one for a task run
of a recorded flow run, by its id (``context.task_run_id``, ``"<flow run id>/<run>"``;
the flow run id may be a unique prefix). Approvals live beside the run store, one file
per flow run under ``$FERROFLOW_HOME/approvals/``, so any process can give one:

- a flow run still waiting (``flow.run(wait_for_approval=True)``, or
  ``ferroflow run --wait-for-approval``) sees it within a tick (50 ms) and runs the
  task; the attempt sees ``context.resume`` True;
- a flow run that ended with paused task runs is resumed (``ferroflow runs approve``
  does it, or ``flow.run(resume=ID)`` / ``ferroflow runs resume ID``): the approved
  task runs are approved again as soon as they pause, so they run.

``import ferroflow`` does not import this module.

Example:
    >>> from ferroflow.approvals import approve
    >>> approve("3f2a9c1e/4")  # doctest: +SKIP
    Approval(flow_run_id='3f2a9c1e-...', run=4, task_name='deploy', map_index=None)
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ferroflow.exceptions import ApprovalError
from ferroflow.store import open_store, store_path

__all__ = ["Approval", "approve", "approved", "parse_task_run_id", "resume_chain"]


@dataclass(frozen=True)
class Approval:
    """One approval: of which task run, of which flow run.

    Attributes:
        flow_run_id: the flow run's full id.
        run: the task run's id in the flow run.
        task_name: the task's name.
        map_index: the mapped child's index, None for a task's own run.
    """

    flow_run_id: str
    run: int
    task_name: str
    map_index: int | None


def _dir() -> Path:
    return store_path().parent / "approvals"


def _file(flow_run_id: str) -> Path:
    return _dir() / f"{flow_run_id}.jsonl"


def parse_task_run_id(task_run_id: str) -> tuple[str, int]:
    """Split ``"<flow run id>/<run>"`` into its parts.

    Raises:
        ApprovalError: the id does not have that shape.

    Example:
        >>> parse_task_run_id("3f2a9c1e/4")
        ('3f2a9c1e', 4)
    """
    flow_part, sep, run_part = task_run_id.rpartition("/")
    if not sep or not flow_part or not run_part.isdigit():
        raise ApprovalError(
            f"{task_run_id!r} is not a task run id: expected '<flow run id>/<run>', "
            "as context.task_run_id and 'ferroflow runs show' give it"
        )
    return flow_part, int(run_part)


def approve(task_run_id: str) -> Approval:
    """Approve a paused task run of a recorded flow run.

    Args:
        task_run_id: ``"<flow run id>/<run>"`` (a unique prefix of the flow run id
            will do).

    Returns:
        The approval recorded.

    Raises:
        ApprovalError: a malformed id, an unknown flow run or task run, or a task
            run that is not paused (the message says its state).
        StoreError: the run store cannot be read.
    """
    flow_part, run = parse_task_run_id(task_run_id)
    with open_store() as store:
        info = store.flow_run(flow_part)
        if info is None:
            raise ApprovalError(f"no flow run with id {flow_part!r} in {store_path()}")
        rows = [t for t in store.task_runs(info.id) if t.run == run]
    if not rows:
        raise ApprovalError(f"flow run {info.id} has no task run {run}")
    row = rows[0]
    if row.state != "Paused":
        raise ApprovalError(
            f"task run {info.id}/{run} ({row.task_name}) is {row.state}, not Paused: "
            "only a paused task run can be approved"
        )
    path = _file(info.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"task": row.task, "map_index": row.map_index, "run": run, "at": time.time()}
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")
    return Approval(info.id, run, row.task_name, row.map_index)


def approved(*flow_run_ids: str | None) -> list[tuple[int, int]]:
    """The ``(task id, map index or -1)`` pairs approved for these flow runs (a run
    and the runs it resumes), for the engine."""
    out: list[tuple[int, int]] = []
    for fid in flow_run_ids:
        if not fid:
            continue
        path = _file(fid)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            for line in f:
                try:
                    entry = json.loads(line)
                    mi = entry["map_index"]
                    out.append((int(entry["task"]), -1 if mi is None else int(mi)))
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line: the writer is still appending
    return out


def resume_chain(flow_run_id: str, resumed_from: str | None) -> list[str]:
    """A flow run's id and those of the runs it resumes, back to the first: an
    approval given to any of them still holds in a later resume."""
    ids: list[str] = [flow_run_id]
    seen = {flow_run_id}
    nxt = resumed_from
    if nxt is not None:
        with open_store() as store:
            while nxt is not None and nxt not in seen and len(ids) < 1000:
                ids.append(nxt)
                seen.add(nxt)
                info = store.flow_run(nxt)
                nxt = info.resumed_from if info is not None else None
    return ids
