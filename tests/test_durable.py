"""Durable runs: the run store records every run, checkpoints and targets, resume after a
failure, a SIGKILL or Ctrl-C (SPEC "Results, targets, caching", "Durable runs")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from _killable import KillableFlow
from _tasks import inc, total
from ferroflow import Flow, task
from ferroflow.exceptions import StoreError
from ferroflow.results import LocalResult
from ferroflow.states import Cached, Failed, Success
from ferroflow.store import open_store


def test_runs_are_recorded_with_every_task_run(_ferroflow_home: str) -> None:
    @task
    def fails_on_two(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return x

    with Flow("recorded") as flow:
        m = fails_on_two.map([0, 1, 2, 3])
        total(m)
    state = flow.run()
    assert isinstance(state, Failed)
    with open_store() as store:
        (run,) = store.list_flow_runs()
        assert run.flow_name == "recorded"
        assert run.state == "Failed"
        assert run.pid == os.getpid()
        task_runs = store.task_runs(run.id)
        children = [t for t in task_runs if t.map_index is not None]
        assert sorted(t.map_index for t in children) == [0, 1, 2, 3]
        failed = next(t for t in children if t.map_index == 2)
        assert failed.state == "Failed"
        assert "two" in (failed.message or "")
        history = [t.state for t in store.transitions(run.id, failed.run)]
        assert history[-2:] == ["Running", "Failed"]
        (log,) = [entry for entry in store.logs(run.id) if entry.run == failed.run]
        assert log.level == 40
        assert "Traceback" in log.message and "ValueError: two" in log.message


def test_record_false_writes_nothing(_ferroflow_home: str) -> None:
    with Flow("quiet") as flow:
        inc(1)
    assert flow.run(record=False).is_successful()
    assert not (Path(_ferroflow_home) / "ferroflow.db").exists()


def test_corrupt_store_is_a_typed_error_and_left_alone(_ferroflow_home: str) -> None:
    path = Path(_ferroflow_home) / "ferroflow.db"
    path.write_bytes(b"this is not a database" * 100)
    before = path.read_bytes()
    ran: list[int] = []

    @task
    def record_call() -> None:
        ran.append(1)

    with Flow("corrupt") as flow:
        record_call()
    with pytest.raises(StoreError) as err:
        flow.run()
    assert str(path) in str(err.value)
    assert "FERROFLOW_HOME" in str(err.value)
    assert path.read_bytes() == before
    assert ran == []
    assert flow.run(record=False).is_successful()  # running unrecorded still works


def test_target_makes_a_task_cached(tmp_path: Path) -> None:
    calls: list[int] = []

    @task(target="{task_name}/{x}.bin", result=LocalResult(dir=tmp_path))
    def expensive(x: int) -> int:
        calls.append(x)
        return x * 10

    with Flow("targets") as flow:
        e = expensive(4)
    first = flow.run()
    assert first.result[e].result == 40 and isinstance(first.result[e], Success)
    assert (tmp_path / "expensive" / "4.bin").exists()
    second = flow.run()
    assert isinstance(second.result[e], Cached)
    assert second.result[e].result == 40
    assert calls == [4]


def test_bad_targets_fail_the_task_with_a_clear_message(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("in the way")

    @task(target="{nope}.bin", result=LocalResult(dir=tmp_path))
    def unknown_key() -> int:
        return 1

    @task(target="../../escape.bin", result=LocalResult(dir=tmp_path / "results"))
    def escapes() -> int:
        return 1

    @task(
        checkpoint=True,
        result=LocalResult(dir=blocked / "sub", location="x.bin", validate_dir=False),
    )
    def unwritable() -> int:
        return 1

    with Flow("bad-targets") as flow:
        a, b, c = unknown_key(), escapes(), unwritable()
        after = inc(3)
    state = flow.run()
    assert isinstance(state.result[a], Failed) and "nope" in state.result[a].message
    assert isinstance(state.result[b], Failed) and "escape" in state.result[b].message
    assert isinstance(state.result[c], Failed)
    assert "could not be written" in state.result[c].message
    assert state.result[after].result == 4


def test_checkpointing_a_map_writes_one_pack_file(tmp_path: Path) -> None:
    @task(checkpoint=True, result=LocalResult(dir=tmp_path))
    def double(x: int) -> int:
        return 2 * x

    with Flow("packs") as flow:
        s = total(double.map(list(range(1000))))
    state = flow.run()
    assert state.result[s].result == 999_000
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].suffix == ".pack"


def test_resume_after_a_failure_reruns_only_what_did_not_finish(tmp_path: Path) -> None:
    calls: list[int] = []
    broken = {"on": True}

    @task(checkpoint=True, result=LocalResult(dir=tmp_path))
    def work(x: int) -> int:
        calls.append(x)
        if x == 3 and broken["on"]:
            raise RuntimeError("transient")
        return x * x

    with Flow("resumable") as flow:
        s = total(work.map(list(range(6))))
    first = flow.run()
    assert isinstance(first, Failed)
    with open_store() as store:
        (old,) = store.list_flow_runs()
    broken["on"] = False
    calls.clear()
    second = flow.run(resume=old.id[:8])
    assert second.is_successful()
    assert second.result[s].result == sum(x * x for x in range(6))
    assert calls == [3]
    with open_store() as store:
        newest = store.list_flow_runs()[0]
        assert newest.resumed_from == old.id


def test_resume_bad_input(_ferroflow_home: str) -> None:
    with Flow("once") as flow:
        inc(1)
    with pytest.raises(StoreError, match=r"no run store|no such flow run"):
        flow.run(resume="feedbeef")
    assert flow.run().is_successful()
    with open_store() as store:
        (done,) = store.list_flow_runs()
    with pytest.raises(StoreError, match="already succeeded"):
        flow.run(resume=done.id)
    with pytest.raises(StoreError, match="no such flow run"):
        flow.run(resume="not-a-run")


@pytest.mark.timeout(180)
def test_sigkill_mid_run_then_resume(tmp_path: Path) -> None:
    flow = KillableFlow(tmp_path, 'target="child/{map_index}.bin"', n=10_000, sleep=0.0005)
    proc = flow.start()
    flow.wait_for_children(proc, 1500)
    flow.kill(proc)
    finished = {int(p.stem) for p in (flow.results / "child").glob("*.bin")}
    assert 0 < len(finished) < 10_000
    executions = flow.resume(flow.interrupted_run())
    again = sorted(i for i in finished if executions[i] > 1)
    assert again == [], f"children re-executed after they finished: {again[:10]}"


CTRL_C_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from ferroflow import Flow, task
    from ferroflow.results import LocalResult

    @task(checkpoint=True, result=LocalResult(dir=sys.argv[1]))
    def slow(x):
        time.sleep(0.01)
        return x

    with Flow("interruptible") as flow:
        slow.map(list(range(2000)))

    if len(sys.argv) > 2:
        print("STATE", type(flow.run(resume=sys.argv[2])).__name__)
    else:
        print("READY", flush=True)
        try:
            flow.run()
        except KeyboardInterrupt as exc:  # re-raised once the run is recorded Cancelled
            print("STATE", type(exc.state).__name__, flush=True)
    """
)


CTRL_C_IN_WRITE_SCRIPT = textwrap.dedent(
    """
    import sys, warnings
    from ferroflow import Flow, task
    from ferroflow.results import LocalResult, PackWriter

    def interrupted_write(self, parts):
        raise KeyboardInterrupt  # Ctrl-C pressed while a block of checkpoints is written

    PackWriter.write_framed = interrupted_write

    @task(checkpoint=True, result=LocalResult(dir=sys.argv[1]))
    def slow(x):
        return x

    with Flow("interrupted-in-write") as flow:
        slow.map(list(range(20000)))

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            state = flow.run()
            print("RETURNED", type(state).__name__)
        except KeyboardInterrupt as exc:
            print("STATE", type(exc.state).__name__)
    print("WARNED", " | ".join(str(w.message) for w in seen))
    """
)


CTRL_C_IN_PROGRESS_SCRIPT = textwrap.dedent(
    """
    import time
    from ferroflow import Flow, task

    calls = []

    def progress(counts):
        calls.append(counts)
        if len(calls) == 1:
            raise KeyboardInterrupt  # Ctrl-C pressed while the callback ran

    @task
    def nap(x):
        time.sleep(0.001)
        return x

    with Flow("interrupted-in-progress") as flow:
        nap.map(list(range(5000)))

    try:
        state = flow.run(progress=progress, record=False)
        print("RETURNED", type(state).__name__)
    except KeyboardInterrupt as exc:
        print("STATE", type(exc.state).__name__)
    """
)


def _run_script(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    """Run ``text`` as a script in a fresh interpreter (its argument: a results dir)."""
    script = tmp_path / "flow.py"
    script.write_text(text)
    return subprocess.run(
        [sys.executable, str(script), str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.timeout(120)
def test_ctrl_c_while_checkpoints_are_written_still_cancels(tmp_path: Path) -> None:
    # The pack's write saw the KeyboardInterrupt and the runner took it for a failed
    # write: the checkpoints were reported lost and the run went on to its end.
    got = _run_script(tmp_path, CTRL_C_IN_WRITE_SCRIPT)
    assert "STATE Cancelled" in got.stdout, (got.stdout, got.stderr)
    assert "interrupted (Ctrl-C) while they were written" in got.stdout, got.stdout


@pytest.mark.timeout(120)
def test_ctrl_c_while_the_progress_callback_runs_still_cancels(tmp_path: Path) -> None:
    # The runner ignores a failing progress callback; it ignored Ctrl-C with it.
    got = _run_script(tmp_path, CTRL_C_IN_PROGRESS_SCRIPT)
    assert "STATE Cancelled" in got.stdout, (got.stdout, got.stderr)


@pytest.mark.timeout(120)
def test_ctrl_c_cancels_and_the_run_is_resumable(tmp_path: Path) -> None:
    script = tmp_path / "flow.py"
    script.write_text(CTRL_C_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "r")], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "READY"
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert "STATE Cancelled" in out
    with open_store() as store:
        (run,) = store.list_flow_runs()
        assert run.state == "Cancelled"
        done = store.finished_task_runs_with_results(run.id)
        assert 0 < len(done) < 2000
    resumed = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "r"), run.id],
        capture_output=True,
        text=True,
        timeout=100,
        check=True,
    )
    assert "STATE Success" in resumed.stdout


def test_results_survive_in_the_flow_state(_ferroflow_home: str) -> None:
    observed: list[Any] = []
    with Flow("plain") as flow:
        v = inc(41)
    state = flow.run()
    observed.append(state.result[v].result)
    assert observed == [42]


CACHE_SCRIPT = textwrap.dedent(
    """
    import sys
    from datetime import timedelta
    from ferroflow import Flow, Parameter, task
    from ferroflow.cache_validators import all_inputs

    calls = []

    @task(cache_for=timedelta(hours=1), cache_validator=all_inputs)
    def expensive(x):
        calls.append(x)
        return x * 100

    with Flow("cached") as flow:
        n = Parameter("n", default=1)
        e = expensive(n)

    state = flow.run(n=int(sys.argv[1]))
    print("VALUE", state.result[e].result, type(state.result[e]).__name__, "CALLS", len(calls))
    """
)


def test_two_processes_share_the_durable_cache(tmp_path: Path) -> None:
    script = tmp_path / "cached.py"
    script.write_text(CACHE_SCRIPT)

    def run(n: int) -> str:
        out = subprocess.run(
            [sys.executable, str(script), str(n)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return out.stdout.strip()

    assert run(3) == "VALUE 300 Success CALLS 1"
    assert run(3) == "VALUE 300 Cached CALLS 0"  # another process: the cache is durable
    assert run(4) == "VALUE 400 Success CALLS 1"  # other inputs: all_inputs says no


def test_a_cached_value_that_is_gone_is_a_miss(tmp_path: Path) -> None:
    calls: list[int] = []

    @task(cache_for=timedelta(hours=1), result=LocalResult(dir=tmp_path))
    def expensive(x: int) -> int:
        calls.append(x)
        return x * 100

    with Flow("cache-gone") as flow:
        e = expensive(3)
    assert isinstance(flow.run().result[e], Success)
    assert isinstance(flow.run().result[e], Cached)
    for path in [p for p in tmp_path.rglob("*") if p.is_file()]:
        path.unlink()
    again = flow.run().result[e]
    assert isinstance(again, Success) and again.result == 300  # run again, not failed
    assert calls == [3, 3]


LOCKER = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN IMMEDIATE")
print("LOCKED", flush=True)
sys.stdin.readline()
con.execute("ROLLBACK")
"""


@pytest.mark.timeout(120)
def test_a_locked_store_does_not_lose_records_silently(_ferroflow_home: str) -> None:
    from ferroflow.engine import RecordingWarning

    with Flow("locked-store") as flow:
        v = inc(1)
    assert flow.run().is_successful()  # creates the store
    path = Path(_ferroflow_home) / "ferroflow.db"
    # Another process holds the write lock longer than the store's busy timeout (5 s).
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert locker.stdout is not None and locker.stdin is not None
    try:
        assert locker.stdout.readline().strip() == "LOCKED"
        with pytest.warns(RecordingWarning, match="could not be written"):
            state = flow.run()
        assert state.result[v].result == 2  # the run itself works
    finally:
        locker.stdin.write("\n")
        locker.stdin.close()
        locker.wait(10)
        locker.stdout.close()


_FIRST_RUN = """
import sys
from ferroflow import Flow, task

@task
def inc(x):
    return x + 1

with Flow("first") as flow:
    inc(inc(1))
state = flow.run()
assert state.is_successful(), state
print(state.result[flow.get_tasks(name="inc")[0]].result)
print(",".join(m for m in ("ferroflow._checkpoint", "ferroflow.store", "ferroflow.results",
                          "socket", "json", "hashlib") if m in sys.modules))
"""


def test_a_first_recorded_run_loads_only_what_it_uses(tmp_path: Any) -> None:
    """A recorded run of a flow that checkpoints nothing, in a fresh process, is in the
    store with this machine's name, and did not load the checkpoint machinery, the
    store's reader, socket, json or hashlib (the fixed cost of a script's first run)."""
    import os
    import socket
    import subprocess
    import sys

    from ferroflow.store import open_store

    env = dict(os.environ, FERROFLOW_HOME=str(tmp_path / "home"))
    out = subprocess.run(
        [sys.executable, "-c", _FIRST_RUN], env=env, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0] in ("2", "3")
    assert out[1] == ""
    with open_store(tmp_path / "home" / "ferroflow.db") as store:
        (run,) = store.list_flow_runs()
        assert (run.flow_name, run.state, run.host) == ("first", "Success", socket.gethostname())
