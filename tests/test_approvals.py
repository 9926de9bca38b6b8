"""Pause and approve: a paused task run (PAUSE or manual_only) waits for an
approval, given from another process, in the live run or through a resume."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ferroflow import Flow, context, signals, task, triggers
from ferroflow.approvals import approve, parse_task_run_id
from ferroflow.exceptions import ApprovalError
from ferroflow.states import Paused, Success
from ferroflow.store import open_store

FLOW = """
from ferroflow import Flow, context, signals, task, triggers

@task
def prepare() -> int:
    return 20

@task(trigger=triggers.manual_only)
def deploy(x: int) -> int:
    return x + 1

@task
def gate() -> int:
    if not context.resume:
        raise signals.PAUSE("waiting for a human")
    return 21

@task
def add(a: int, b: int) -> int:
    print("RESULT", a + b, flush=True)
    return a + b

with Flow("pausing") as flow:
    result = add(deploy(prepare()), gate())
"""


def ff(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferroflow", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,  # a hang guard, not a speed check
    )


def newest_run() -> Any:
    with open_store() as store:
        return store.list_flow_runs(limit=1)[0]


def paused_ids(flow_run_id: str) -> list[str]:
    with open_store() as store:
        rows = store.task_runs(flow_run_id)
    return [f"{flow_run_id}/{t.run}" for t in rows if t.state == "Paused"]


def test_a_paused_run_ends_paused_and_approval_resumes_it(tmp_path: Path) -> None:
    path = tmp_path / "pausing.py"
    path.write_text(FLOW)
    first = ff("run", str(path))
    assert first.returncode == 1, first.stderr
    run = newest_run()
    assert run.state == "Paused"
    ids = paused_ids(run.id)
    assert len(ids) == 2  # deploy (manual_only) and gate (PAUSE)
    # Approving both: the second approval resumes the run and it finishes.
    second = ff("runs", "approve", ids[0])
    assert second.returncode == 1, second.stderr  # gate still waits in the resume
    resumed = newest_run()
    assert resumed.resumed_from == run.id
    (gate_id,) = paused_ids(resumed.id)
    third = ff("runs", "approve", gate_id)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "RESULT 42" in third.stdout
    assert newest_run().state == "Success"


def test_a_waiting_run_goes_on_when_approved(tmp_path: Path) -> None:
    path = tmp_path / "pausing.py"
    path.write_text(FLOW)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferroflow", "run", str(path), "--wait-for-approval"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        ids: list[str] = []
        for _ in range(600):  # until the run has recorded both pauses
            time.sleep(0.05)
            try:
                run = newest_run()
            except IndexError:
                continue
            ids = paused_ids(run.id)
            if len(ids) == 2:
                break
        assert len(ids) == 2
        assert run.state == "Running"
        for tid in ids:
            out = ff("runs", "approve", tid)
            assert out.returncode == 0, out.stderr
            assert "still going" in out.stdout or "went on" in out.stdout
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "RESULT 42" in stdout
    assert newest_run().id == run.id  # the same run went on: no resume
    assert newest_run().state == "Success"


def test_flow_run_state_says_how_to_approve() -> None:
    @task(trigger=triggers.manual_only)
    def hold() -> int:
        return 1

    with Flow("hold") as flow:
        hold()
    state = flow.run()
    assert isinstance(state, Paused)
    run = newest_run()
    assert f"{run.id}/0" in state.message
    assert "ferroflow runs approve" in state.message


def test_approving_in_python_then_resuming_runs_the_task() -> None:
    @task
    def ask() -> str:
        if not context.resume:
            raise signals.PAUSE("ok?")
        return "approved"

    with Flow("ask") as flow:
        t = ask()
    first = flow.run()
    assert isinstance(first, Paused)
    run = newest_run()
    approval = approve(f"{run.id[:8]}/0")
    assert approval.task_name == "ask" and approval.flow_run_id == run.id
    again = flow.run(resume=run.id)
    assert isinstance(again, Success)
    assert again.result[t].result == "approved"


@pytest.mark.parametrize("bad", ["nothing", "abc/", "/3", "abc/x"])
def test_a_malformed_task_run_id_is_a_typed_error(bad: str) -> None:
    with pytest.raises(ApprovalError, match="not a task run id"):
        parse_task_run_id(bad)


def test_approving_what_is_not_paused_is_refused() -> None:
    @task
    def fine() -> int:
        return 1

    with Flow("fine") as flow:
        fine()
    flow.run()
    run = newest_run()
    with pytest.raises(ApprovalError, match="is Success, not Paused"):
        approve(f"{run.id}/0")
    with pytest.raises(ApprovalError, match="no task run 7"):
        approve(f"{run.id}/7")
    with pytest.raises(ApprovalError, match="no flow run"):
        approve("ffffffff/0")
    out = ff("runs", "approve", f"{run.id}/0")
    assert out.returncode == 2
    assert "not Paused" in out.stderr


def test_wait_for_approval_in_python_stops_on_an_approval_from_a_thread() -> None:
    import threading

    @task(trigger=triggers.manual_only)
    def hold() -> int:
        return 5

    with Flow("hold-live") as flow:
        h = hold()

    def approver() -> None:
        for _ in range(600):
            time.sleep(0.05)
            try:
                run = newest_run()
            except IndexError:
                continue
            if run.flow_name == "hold-live" and paused_ids(run.id):
                approve(paused_ids(run.id)[0])
                return

    t = threading.Thread(target=approver)
    t.start()
    state = flow.run(wait_for_approval=True)
    t.join()
    assert isinstance(state, Success)
    assert state.result[h].result == 5
