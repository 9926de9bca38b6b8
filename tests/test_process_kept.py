"""ProcessExecutor as a context manager: its workers are kept between the flow runs made
inside the ``with`` block, each run sees only its own flow, parameters and tasks, broken
workers are replaced, and the block's end stops them."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest

from ferroflow import Flow, Parameter, context, task, unmapped
from ferroflow.exceptions import ExecutorError
from ferroflow.executors import ProcessExecutor


@task
def pid_of(_: Any) -> int:
    return os.getpid()


@task
def double(x: int) -> int:
    return 2 * x


@task
def negate(x: int) -> int:
    return -x


@task
def whereabouts(_: Any, tag: str) -> tuple[int, str, Any]:
    """The worker's pid, the flow run it is told it runs in, and the parameter as the
    context has it (``tag`` is the same parameter, passed in)."""
    assert context.parameters["tag"] == tag
    return os.getpid(), context.flow_run_id, context.parameters["tag"]


@task
def exits_on_one(x: int) -> int:
    if x == 1:
        os._exit(3)
    return x


@task(timeout=0.3)
def sleeps_on_one(x: int) -> int:
    if x == 1:
        time.sleep(30)
    return x


def _pid_flow(name: str = "pids") -> tuple[Flow, Any]:
    with Flow(name) as flow:
        pids = pid_of.map(list(range(8)))
    return flow, pids


def _pids(flow: Flow, out: Any, executor: ProcessExecutor) -> set[int]:
    state = flow.run(executor=executor)
    assert state.is_successful(), state
    return set(state.result[out].result)


def _wait_gone(pids: set[int]) -> None:
    deadline = time.monotonic() + 30
    while any(os.path.exists(f"/proc/{pid}") for pid in pids):  # gone, zombies too
        assert time.monotonic() < deadline, f"worker processes {pids} still exist after 30 s"
        time.sleep(0.05)


def test_kept_workers_run_the_next_flow_with_its_own_tasks() -> None:
    """Two flows whose tasks sit at the same plan positions: the kept workers call the
    second flow's functions, not the first's."""
    with Flow("doubles") as first:
        d = double.map([1, 2, 3])
    with Flow("negates") as second:
        n = negate.map([1, 2, 3])
    pids, _ = _pid_flow()
    with ProcessExecutor(max_workers=2) as executor:
        before = _pids(pids, _, executor)
        assert first.run(executor=executor).result[d].result == [2, 4, 6]
        assert second.run(executor=executor).result[n].result == [-1, -2, -3]
        after = _pids(pids, _, executor)
    assert before == after and os.getpid() not in before
    assert len(before) <= 2


def test_each_run_sees_its_own_flow_run_and_parameters() -> None:
    with Flow("where") as flow:
        out = whereabouts.map(list(range(4)), unmapped(Parameter("tag")))
    with ProcessExecutor(max_workers=2) as executor:
        states = [flow.run(parameters={"tag": t}, executor=executor) for t in ("a", "b")]
    seen = [state.result[out].result for state in states]
    assert {pid for pid, _, _ in seen[0]} == {pid for pid, _, _ in seen[1]}
    run_ids = [{run_id for _, run_id, _ in rows} for rows in seen]
    assert run_ids[0] != run_ids[1] and len(run_ids[0]) == len(run_ids[1]) == 1
    assert [{t for _, _, t in rows} for rows in seen] == [{"a"}, {"b"}]


def test_the_block_end_stops_the_kept_workers_and_later_runs_start_their_own() -> None:
    flow, out = _pid_flow()
    executor = ProcessExecutor(max_workers=2)
    with executor:
        kept = _pids(flow, out, executor)
        assert _pids(flow, out, executor) == kept
    _wait_gone(kept)
    later = _pids(flow, out, executor)  # outside the block: this run's own workers
    assert not later & kept
    _wait_gone(later)


@pytest.mark.parametrize(
    ("breaker", "kinds", "said"),
    [
        (exits_on_one, ["Success", "Failed", "Success"], "worker process died: exit code 3"),
        (sleeps_on_one, ["Success", "TimedOut", "Success"], "its worker process was stopped"),
    ],
    ids=["died", "stopped-for-a-timeout"],
)
def test_a_lost_worker_is_replaced_and_the_replacement_kept(
    breaker: Any, kinds: list[str], said: str
) -> None:
    with Flow("breaks") as breaking:
        m = breaker.map([0, 1, 2])
    flow, out = _pid_flow()
    with ProcessExecutor(max_workers=2) as executor:
        before = _pids(flow, out, executor)
        children = breaking.run(executor=executor).result[m].map_states
        assert [type(c).__name__ for c in children] == kinds
        assert said in children[1].message
        after = _pids(flow, out, executor)
        gone = {pid for pid in before if not os.path.exists(f"/proc/{pid}")}
        assert len(before) == 2 and len(gone) == 1 and not after & gone
        # Its replacement is kept too, for the runs after that.
        assert _pids(flow, out, executor) == after


@task
def meet(where: str, wanted: int) -> int:
    """Wait until ``wanted`` flow runs have a task here at the same time; the pid."""
    os.makedirs(where, exist_ok=True)
    open(os.path.join(where, context.flow_run_id), "w").close()
    deadline = time.monotonic() + 60
    while len(os.listdir(where)) < wanted:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {os.listdir(where)} came to {where}")
        time.sleep(0.01)
    return os.getpid()


@task
def wait_for(path: str) -> int:
    """Say it started (``path``.started), wait for ``path`` to exist; the pid."""
    open(path + ".started", "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never came")
        time.sleep(0.01)
    return os.getpid()


def test_runs_from_two_threads_share_one_block(tmp_path: Any) -> None:
    """Two runs at the same time in one block: one takes the kept workers, the other
    starts its own; both finish, and the next run is on the workers the first kept."""
    with Flow("meet") as flow:
        out = meet(str(tmp_path / "met"), 2)
    results: list[Any] = []
    with ProcessExecutor(max_workers=1) as executor:
        threads = [
            threading.Thread(target=lambda: results.append(flow.run(executor=executor)))
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads)
        assert len(results) == 2 and all(state.is_successful() for state in results)
        pids = {state.result[out].result for state in results}
        assert len(pids) == 2 and os.getpid() not in pids  # one worker each
        with Flow("after") as after:
            again = pid_of(0)
        kept = after.run(executor=executor).result[again].result
    assert kept in pids  # the borrowing run's worker was kept, the other one stopped
    _wait_gone(pids)


def test_closing_the_block_while_a_run_uses_its_workers(tmp_path: Any) -> None:
    """``close()`` while a run uses the block's workers does not wait for that run (it
    would hang here: the run waits for the gate opened after ``close()``); the run
    still finishes on its worker, which is not kept and exits."""
    gate = str(tmp_path / "go")
    with Flow("gated") as flow:
        out = wait_for(gate)
    executor = ProcessExecutor(max_workers=1)
    results: list[Any] = []
    with executor:
        thread = threading.Thread(target=lambda: results.append(flow.run(executor=executor)))
        thread.start()
        deadline = time.monotonic() + 60
        while not os.path.exists(gate + ".started"):
            assert time.monotonic() < deadline, "the gated task never started"
            time.sleep(0.01)
        executor.close()  # the block ends for the executor; the run goes on
        open(gate, "w").close()
        thread.join(120)
        assert not thread.is_alive()
    (state,) = results
    assert state.is_successful(), state
    assert executor._kept is None
    _wait_gone({state.result[out].result})


def test_a_resume_in_the_block_restores_what_kept_workers_checkpointed(tmp_path: Any) -> None:
    """Checkpoints written by kept workers (their packs stay open until the next run
    tells them the last one is over) restore in a resume made on the same workers."""
    from ferroflow.results import LocalResult
    from ferroflow.store import open_store

    calls, broken = tmp_path / "calls.txt", tmp_path / "broken"
    broken.touch()

    @task(checkpoint=True, result=LocalResult(dir=str(tmp_path / "results")))
    def work(x: int) -> int:
        with open(calls, "a") as f:
            f.write(f"{x}\n")
        if x == 3 and broken.exists():
            raise RuntimeError("transient")
        return x * x

    @task
    def add_up(xs: list[int]) -> int:
        return sum(xs)

    with Flow("resumable-kept") as flow:
        s = add_up(work.map(list(range(6))))
    with ProcessExecutor(max_workers=2) as executor:
        assert flow.run(executor=executor).is_failed()
        with open_store() as store:
            (old,) = store.list_flow_runs()
        broken.unlink()
        calls.unlink()
        second = flow.run(resume=old.id, executor=executor)
    assert second.is_successful(), second
    assert second.result[s].result == sum(x * x for x in range(6))
    assert calls.read_text().split() == ["3"]  # the rest was restored, not run again


def test_an_executor_pickles_as_its_settings_even_in_a_block() -> None:
    """A flow that names its executor is pickled with it (registration, workers)."""
    import cloudpickle

    with ProcessExecutor(max_workers=2, mp_context="spawn") as executor:
        copy = cloudpickle.loads(cloudpickle.dumps(Flow("named", executor=executor)))
        flow, out = _pid_flow()
        _pids(flow, out, executor)  # the block has kept workers now
        again = cloudpickle.loads(cloudpickle.dumps(executor))
    for got in (copy.executor, again):
        assert isinstance(got, ProcessExecutor) and got is not executor
        assert (got.max_workers, got.mp_context) == (2, "spawn")
        assert got._kept is None  # a copy keeps no workers


def test_entering_twice_is_an_error_and_closing_twice_is_harmless() -> None:
    executor = ProcessExecutor(max_workers=1)
    with executor:
        with pytest.raises(ExecutorError, match="already in a with block"):
            executor.__enter__()
    executor.close()
    executor.close()
