"""What a run records about time is true: each task run's real start and end, on
every executor (the journal carries the instant of each transition)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from ferroflow import Flow, task
from ferroflow.store import open_store


@task
def nap() -> int:
    time.sleep(0.05)
    return 1


@task
def quick(x: int) -> int:
    return x + 1


def test_a_50ms_task_is_recorded_as_taking_50ms(executor: Any) -> None:
    with Flow("timed") as flow:
        first = quick(0)
        slow = nap(upstream_tasks=[first])
    assert flow.upstream_tasks(slow) == {first}
    before = time.time()
    state = flow.run(executor=executor)
    assert state.is_successful()
    with open_store() as store:
        (run,) = store.list_flow_runs(limit=1)
        rows = {t.task_name: t for t in store.task_runs(run.id)}
    n = rows["nap"]
    q = rows["quick"]
    assert n.started is not None and n.ended is not None
    assert q.started is not None and q.ended is not None
    assert n.ended - n.started >= 0.045
    assert run.started >= before - 1e-3
    assert n.started >= run.started
    # The slow task started after its upstream ended, and ended before the flow.
    assert n.started >= q.ended
    assert run.ended is not None and n.ended <= run.ended


def test_runs_show_json_gives_the_real_duration() -> None:
    with Flow("timed-cli") as flow:
        nap()
    flow.run()
    with open_store() as store:
        (run,) = store.list_flow_runs(limit=1)
    proc = subprocess.run(
        [sys.executable, "-m", "ferroflow", "runs", "show", run.id, "--json"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        check=True,
    )
    shown = json.loads(proc.stdout)
    (row,) = [t for t in shown["task_runs"] if t["task_name"] == "nap"]
    assert row["ended"] - row["started"] >= 0.045
    assert row["started"] >= shown["flow_run"]["started"]
