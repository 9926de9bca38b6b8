"""The Dask executor (SPEC "Executors", "Errors and faults"): the same states as the local
executor, results kept on the cluster, worker deaths survived, timeouts that stop the run,
values that cannot travel, executors that cannot start."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("distributed")

import psutil
from distributed import Client, LocalCluster

from _dask import WORKER_ENV, local_cluster
from _tasks import add, inc, total
from ferroflow import (
    Flow,
    Parameter,
    apply_map,
    case,
    context,
    flatten,
    merge,
    signals,
    task,
    unmapped,
)
from ferroflow.exceptions import ExecutorError
from ferroflow.executors import DaskExecutor, LocalExecutor
from ferroflow.executors import dask as ffdask
from ferroflow.states import (
    Cancelled,
    Failed,
    Looped,
    Mapped,
    Skipped,
    State,
    Success,
    TimedOut,
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """One real two-worker cluster (processes, loopback) for this module: its tests
    kill workers, so it is not the session's shared cluster."""
    with local_cluster() as c:
        yield c


@pytest.fixture
def dask_ex(cluster: LocalCluster) -> DaskExecutor:
    return DaskExecutor(address=cluster.scheduler_address)


@task
def make(n: int) -> list[int]:
    return list(range(n))


@task
def nested() -> list[list[int]]:
    return [[1], [2, 3], [4, 5, 6]]


@task
def nothing() -> None:
    return None


@task
def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x


@task
def skip_odd(x: int) -> int:
    if x % 2:
        raise signals.SKIP("odd")
    return x


@task
def countdown(start: int) -> int:
    left = context.get("task_loop_result") or start
    if left > 1:
        raise signals.LOOP(result=left - 1)
    return context.task_loop_count


def _plain(v: Any) -> Any:
    """Exceptions compare by type and arguments (they were pickled on the way back)."""
    if isinstance(v, BaseException):
        return (type(v), v.args)
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _same_states(a: Any, b: Any, tasks: list[Any]) -> None:
    assert type(a) is type(b), (a, b)
    for t in tasks:
        sa, sb = a.result[t], b.result[t]
        assert type(sa) is type(sb), (t.name, sa, sb)
        assert sa.message == sb.message, (t.name, sa.message, sb.message)
        assert _plain(sa.result) == _plain(sb.result), (t.name, sa.result, sb.result)
        if isinstance(sa, Mapped):
            assert [type(s) for s in sa.map_states] == [type(s) for s in sb.map_states]
            assert [s.message for s in sa.map_states] == [s.message for s in sb.map_states]


def test_dataflow_map_reduce_and_map_over_map_match_local(dask_ex: DaskExecutor) -> None:
    with Flow("dataflow") as flow:
        n = Parameter("n", default=5)
        xs = make(n)
        a = inc(1)
        b = add(a, y=10)
        c = total([a, b, 5])
        ys = inc.map(xs)
        zs = add.map(ys, y=unmapped(b))
        s = total(zs)
        flat = inc.map(flatten(nested()))
        flat_total = total(flatten(nested()))
        pairs = add.map(xs, ys)
        consts = inc.map([10, 20])
        bad = inc.map(nothing())
    tasks = [xs, a, b, c, ys, zs, s, flat, flat_total, pairs, consts, bad]
    local = flow.run(executor=LocalExecutor())
    state = flow.run(executor=dask_ex)
    _same_states(local, state, tasks)
    # Real values, not proxies of values left on the cluster.
    assert state.result[s].result == sum(x + 1 + 12 for x in range(5))
    assert state.result[zs].result == [x + 1 + 12 for x in range(5)]
    assert state.result[flat].result == [2, 3, 4, 5, 6, 7]
    assert isinstance(state.result[bad], Failed)
    assert "a NoneType is not a sized sequence" in (state.result[bad].message or "")
    assert state.is_failed()  # `bad` is a reference task


def test_retries_and_a_failing_child_only_affects_its_branch(
    dask_ex: DaskExecutor, tmp_path: Path
) -> None:
    marks = tmp_path

    @task(max_retries=2, retry_delay=0)
    def flaky(x: int) -> int:
        mark = marks / f"flaky-{x}"
        if x == 2 and context.task_run_count < 2:
            mark.write_text("failed once")
            raise RuntimeError("transient")
        return x * 10

    with Flow("branches") as flow:
        xs = make(5)
        ok = flaky.map(xs)
        checked = fail_on_three.map(xs)
        after = inc.map(checked)
        reduced = total(after)
    local = flow.run(executor=LocalExecutor())
    state = flow.run(executor=dask_ex)
    _same_states(local, state, [xs, ok, checked, after, reduced])
    assert state.result[ok].result == [0, 10, 20, 30, 40]
    assert (marks / "flaky-2").exists()
    children = state.result[after].map_states
    assert [type(s).__name__ for s in children] == [
        "Success",
        "Success",
        "Success",
        "TriggerFailed",
        "Success",
    ]
    failed = state.result[checked].map_states[3]
    assert isinstance(failed.result, ValueError)
    assert failed.result.__traceback__ is not None  # the traceback came back too
    assert isinstance(state.result[reduced], Failed)


def test_signals_skip_and_loop(dask_ex: DaskExecutor) -> None:
    with Flow("signals") as flow:
        xs = make(4)
        kept = skip_odd.map(xs)
        after = inc.map(kept)
        looped = countdown(3)
    local = flow.run(executor=LocalExecutor())
    state = flow.run(executor=dask_ex)
    _same_states(local, state, [kept, after, looped])
    assert [type(s) for s in state.result[after].map_states] == [
        Success,
        Skipped,
        Success,
        Skipped,
    ]
    assert state.result[looped].result == 3
    assert not isinstance(state.result[looped], Looped)


def test_control_flow_and_state_handlers_match_local(dask_ex: DaskExecutor) -> None:
    @task
    def is_even(x: int) -> bool:
        return x % 2 == 0

    @task
    def half(x: int) -> int:
        return x // 2

    @task
    def triple(x: int) -> int:
        return 3 * x + 1

    def step(x: Any) -> None:
        cond = is_even(x)
        with case(cond, True):
            h = half(x)
        with case(cond, False):
            t = triple(x)
        merge(h, t)

    def soften(task: Any, old: State, new: State) -> State:
        # Runs on the worker (hooked run): a failure becomes a skip with a message.
        if new.is_failed():
            return Skipped(f"softened: {new.message}")
        return new

    @task(state_handlers=[soften], timeout=10)
    def handled(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return x

    with Flow("control") as flow:
        xs = make(4)
        apply_map(step, xs)
        soft = handled.map(xs)
        after = inc.map(soft)
    tasks = [t for t in flow.tasks if t.name in ("half", "triple", "Merge", "handled", "inc")]
    assert sorted(t.name for t in tasks) == ["Merge", "half", "handled", "inc", "triple"]
    local = flow.run(executor=LocalExecutor())
    state = flow.run(executor=dask_ex)
    _same_states(local, state, [*tasks, soft, after])
    merged = next(t for t in flow.tasks if t.name == "Merge")
    assert state.result[merged].result == [0, 4, 1, 10]
    assert [type(s) for s in state.result[soft].map_states] == [Success, Success, Skipped, Success]


def test_context_inside_dask_runs(dask_ex: DaskExecutor) -> None:
    @task
    def who(x: int, p: str) -> str:
        return f"{context.flow_name}/{context.task_full_name}/{context.parameters['p']}{p}"

    with Flow("ctx") as flow:
        p = Parameter("p", default="v")
        names = who.map(make(2), p=unmapped(p))
    state = flow.run(executor=dask_ex)
    assert state.result[names].result == ["ctx/who[0]/vv", "ctx/who[1]/vv"]


def test_release_results_and_custom_trigger(dask_ex: DaskExecutor) -> None:
    def enough(upstream: dict[Any, Any]) -> bool:
        (state,) = upstream.values()
        return sum(s.is_successful() for s in state.map_states) >= 3

    @task(trigger=enough)
    def survivors(xs: list[Any]) -> int:
        return sum(1 for x in xs if isinstance(x, int))

    with Flow("release") as flow:
        checked = fail_on_three.map(make(5))
        n = survivors(checked)
        last = inc(n)
    local = flow.run(executor=LocalExecutor(), release_results=True)
    state = flow.run(executor=dask_ex, release_results=True)
    _same_states(local, state, [checked, n, last])
    assert state.result[last].result == 5


def test_keyboard_interrupt_in_a_task_cancels_the_run(dask_ex: DaskExecutor) -> None:
    @task
    def interrupted() -> None:
        raise KeyboardInterrupt

    with Flow("ki") as flow:
        r = inc(interrupted())
    with pytest.raises(KeyboardInterrupt) as on_local:
        flow.run(executor=LocalExecutor())
    with pytest.raises(KeyboardInterrupt) as on_dask:
        flow.run(executor=dask_ex)
    local, state = on_local.value.state, on_dask.value.state  # type: ignore[attr-defined]
    assert isinstance(state, Cancelled)
    _same_states(local, state, [r])


def test_unpicklable_values_fail_their_run_with_a_clear_message(dask_ex: DaskExecutor) -> None:
    @task
    def lock_result() -> Any:
        return threading.Lock()

    @task
    def lock_error() -> None:
        raise ValueError(threading.Lock())

    @task
    def takes(x: Any) -> str:
        return "ran"

    lock = threading.Lock()

    @task
    def closes_over_a_lock() -> int:
        with lock:
            return 1

    with Flow("unpicklable") as flow:
        bad_func = closes_over_a_lock()
        bad_result = lock_result()
        bad_error = lock_error()
        bad_input = takes(threading.Lock())
        fine = inc(1)
    state = flow.run(executor=dask_ex)
    r = state.result[bad_result]
    assert isinstance(r, Failed)
    assert "result could not be sent back from the Dask worker" in (r.message or "")
    assert "lock" in (r.message or "") and "lock" in str(r.result)
    e = state.result[bad_error]
    assert isinstance(e, Failed)
    assert "exception could not be sent back" in (e.message or "")
    i = state.result[bad_input]
    assert isinstance(i, Failed)
    assert "inputs of task 'takes' could not be sent to Dask" in (i.message or "")
    f = state.result[bad_func]
    assert isinstance(f, Failed)
    assert "task 'closes_over_a_lock' could not be sent to Dask" in (f.message or "")
    assert state.result[fine].result == 2


@pytest.mark.parametrize(
    "address", ["tcp://127.0.0.1:1", "free-port", "tcp://no-such-host.invalid:8786"]
)
def test_unreachable_address_raises_executor_error(address: str) -> None:
    if address == "free-port":
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    with Flow("nowhere") as flow:
        inc(1)
    t0 = time.monotonic()
    with pytest.raises(ExecutorError, match="could not connect to the Dask scheduler"):
        flow.run(executor=DaskExecutor(address=address))
    print(f"ExecutorError for {address} after {time.monotonic() - t0:.2f} s")


def test_bad_options_raise_executor_error() -> None:
    with pytest.raises(ExecutorError, match="cluster_kwargs"):
        DaskExecutor(address="tcp://127.0.0.1:8786", cluster_kwargs={"n_workers": 1})
    with pytest.raises(ExecutorError, match="must be a dict"):
        DaskExecutor(cluster_kwargs=["n_workers"])  # type: ignore[arg-type]
    with pytest.raises(ExecutorError, match="n_workers"):
        DaskExecutor(cluster_kwargs={"n_workers": -1})
    with pytest.raises(ExecutorError, match="address"):
        DaskExecutor(address="")
    with Flow("bad") as flow:
        inc(1)
    t0 = time.monotonic()
    with pytest.raises(ExecutorError, match="could not start a Dask LocalCluster"):
        flow.run(executor=DaskExecutor(cluster_kwargs={"processes": False, "no_such": 1}))
    print(f"ExecutorError for a bad cluster option after {time.monotonic() - t0:.2f} s")


def test_missing_dask_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ExecutorError, match=r"pip install 'ferroflow\[dask\]'"):
        DaskExecutor()
    with pytest.raises(ExecutorError, match=r"pip install 'ferroflow\[dask\]'"):
        ffdask._load_distributed()


def test_killed_worker_is_survived(dask_ex: DaskExecutor, tmp_path: Path) -> None:
    first = tmp_path / "killed-once"

    @task(max_retries=1, retry_delay=0)
    def killer(x: int) -> int:
        if x == 1 and not first.exists():
            first.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return x * 100

    with Flow("killed") as flow:
        xs = make(3)
        ys = inc.map(xs)
        killed = killer.map(ys)
        out = total(killed)
    state = flow.run(executor=dask_ex)
    killed_pid = int(first.read_text())
    assert killed_pid != os.getpid()
    assert not psutil.pid_exists(killed_pid) or psutil.Process(killed_pid).status() in (
        psutil.STATUS_ZOMBIE,
        psutil.STATUS_DEAD,
    )
    assert state.is_successful(), state.result[killed].map_states
    assert state.result[out].result == 100 + 200 + 300


def test_timeout_stops_the_run_by_restarting_its_worker(
    dask_ex: DaskExecutor, tmp_path: Path
) -> None:
    where = tmp_path / "sleepy-pid"

    @task(timeout=0.5)
    def sleepy() -> str:
        where.write_text(str(os.getpid()))
        time.sleep(30)
        return "late"

    @task(timeout=5)
    def fast() -> str:
        return "fast"

    with Flow("timeout") as flow:
        s = sleepy()
        f = fast()
    state = flow.run(executor=dask_ex)
    assert isinstance(state.result[s], TimedOut)
    assert "was restarted to stop it" in (state.result[s].message or "")
    assert state.result[f].result == "fast"
    # The worker process that ran the sleeping thread is gone: the run really stopped.
    pid = int(where.read_text())
    deadline = time.monotonic() + 60  # waiting for an event, not timing it
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the timed-out run's worker still runs"
        time.sleep(0.1)


def test_own_cluster_is_closed_and_dask_deaths_count_as_attempts() -> None:
    """A cluster the executor starts is closed at the end (no process left behind); when
    Dask gives up on a run whose worker died (KilledWorker), the task's retries apply."""
    import dask

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}

    @task(max_retries=1, retry_delay=0)
    def dies_first(x: int) -> int:
        if context.task_run_count == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return x + 1

    with Flow("own") as flow:
        y = dies_first(1)
    ex = DaskExecutor(cluster_kwargs={"n_workers": 1, "threads_per_worker": 1, "env": WORKER_ENV})
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        state = flow.run(executor=ex)
    assert state.result[y].result == 2
    deadline = time.monotonic() + 60  # waiting for an event, not timing it
    while time.monotonic() < deadline:
        left = {p.pid for p in me.children(recursive=True) if p.is_running()} - before
        if not left:
            break
        time.sleep(0.1)
    assert not left


def test_results_stay_on_the_cluster(cluster: LocalCluster, dask_ex: DaskExecutor) -> None:
    """Upstream values reach dependent runs on the workers: the driver only ever gets
    proxies until the end, and nothing is left on the cluster afterwards."""
    seen: list[Any] = []
    real_report = ffdask._Driver._report_ok

    def spy(self: Any, rec: Any, value: Any) -> None:
        seen.append(value)
        real_report(self, rec, value)

    with Flow("remote") as flow:
        big = make(200)
        ys = inc.map(big)
        s = total(ys)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ffdask._Driver, "_report_ok", spy)
        state = flow.run(executor=dask_ex)
    assert state.result[s].result == sum(range(1, 201))
    assert state.result[big].result == list(range(200))
    assert seen and all(isinstance(v, ffdask._RemoteBase) for v in seen)
    with Client(cluster, set_as_default=False) as c:
        deadline = time.monotonic() + 60  # waiting for an event, not timing it
        while c.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)):
            assert time.monotonic() < deadline, "keys left on the cluster"
            time.sleep(0.1)


def test_a_map_over_small_plain_values_sends_each_element_in_its_childs_task(
    dask_ex: DaskExecutor,
) -> None:
    """The children's Dask tasks carry their elements (not a dependency on the whole
    source value), and the final values stored near the end are fetched while the last
    run computes; with release_results nothing is fetched early."""
    specs: list[Any] = []
    prefetched: list[int] = []
    real_submit = ffdask._Driver._submit
    real_prefetched = ffdask._Driver._prefetched

    def spy_submit(self: Any, batch: list[Any]) -> Any:
        specs.extend(b[1] for b in batch)
        return real_submit(self, batch)

    def spy_prefetched(self: Any) -> None:
        real_prefetched(self)
        prefetched.append(len(self.prefetched))

    with Flow("inline") as flow:
        xs = make(600)
        ys = inc.map(xs)
        s = total(ys)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ffdask._Driver, "_submit", spy_submit)
        mp.setattr(ffdask._Driver, "_prefetched", spy_prefetched)
        state = flow.run(executor=dask_ex)
        assert state.is_successful()
        assert state.result[ys].result == list(range(1, 601))
        assert state.result[s].result == sum(range(1, 601))
        children = [spec for spec in specs if spec[2] >= 0]  # map_index
        assert len(children) == 600
        assert all(type(spec[6][0]) is int and spec[9] is None for spec in children)
        assert prefetched and max(prefetched) >= ffdask._PREFETCH_MIN  # fetched early
        prefetched.clear()
        state = flow.run(executor=dask_ex, release_results=True)
        assert state.result[s].result == sum(range(1, 601))
        assert not prefetched


def test_describe_and_lazy_lengths(cluster: LocalCluster) -> None:
    """Values the core measures without a batched description are described on demand."""
    got = ffdask._describe([[1, 2], 3, "ab"], (), 2)
    assert got == ("meta", 3, "list", [2, "int", 2], None)
    assert ffdask._describe([[1, 2]], (0,), 1) == ("meta", 2, "list", None, None)
    assert ffdask._describe(None, (), 1) == ("meta", None, "NoneType", None, None)
    # Small plain elements come with the description (a map sends them in its tasks).
    plain = (1, 2.5, "ab", b"x", None, True, 1j)
    assert ffdask._describe(plain, (), 1) == ("meta", 7, "tuple", None, list(plain))
    assert ffdask._describe(list(range(5)), (), 0)[4] is None  # a probe: length only
    assert ffdask._describe([1, [2]], (), 1)[4] is None  # not all plain
    assert ffdask._describe(["x" * ffdask._INLINE_BYTES], (), 1)[4] is None  # too big
    assert ffdask._describe(range(3), (), 1)[4] is None  # not a list or tuple
    out = ffdask._Outcome(ffdask._Outcome.RAISED, ValueError("x"))
    assert ffdask._describe(out, (), 1)[0] == "outcome"
    with Client(cluster, set_as_default=False) as c:
        sized = ffdask._RemoteLazy(c.submit(make.run, 3, pure=False))
        assert len(sized) == 3
        assert isinstance(sized, ffdask._RemoteSized)
        assert sized[1] == 1 and type(sized[1]) is int  # sent with its description
        lists = ffdask._RemoteLazy(c.submit(nested.run, pure=False))
        assert len(lists) == 3
        item = lists[2]
        assert isinstance(item, ffdask._Item) and item.path == (2,)
        assert len(item) == 3
        unsized = ffdask._RemoteLazy(c.submit(nothing.run, pure=False))
        with pytest.raises(TypeError, match="a NoneType is not a sized sequence"):
            len(unsized)
        assert type(unsized).__name__ == "NoneType"  # what the core's message names


def test_interrupt_cancels_and_closes_the_cluster_it_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closed: list[Any] = []
    real_close = ffdask._quiet_close
    real_handle = ffdask._Driver._handle

    def interrupted(self: Any, done: list[Any]) -> None:
        real_handle(self, done)
        raise KeyboardInterrupt

    def spy_close(obj: Any) -> None:
        closed.append(type(obj).__name__)
        real_close(obj)

    monkeypatch.setattr(ffdask._Driver, "_handle", interrupted)
    monkeypatch.setattr(ffdask, "_quiet_close", spy_close)
    with Flow("ctrl-c") as flow:
        r = inc.map(make(3))
    with pytest.raises(KeyboardInterrupt) as err:
        flow.run(executor=DaskExecutor(cluster_kwargs={"n_workers": 1, "processes": False}))
    state = err.value.state  # type: ignore[attr-defined]
    assert isinstance(state, Cancelled)
    assert not state.result[r].is_successful()
    assert closed == ["Client", "LocalCluster"]


def test_checkpoints_and_targets_are_written_and_recorded(
    dask_ex: DaskExecutor, tmp_path: Path
) -> None:
    from ferroflow.results import LocalResult
    from ferroflow.states import Cached
    from ferroflow.store import open_store

    @task(checkpoint=True, result=LocalResult(dir=str(tmp_path)))
    def square(x: int) -> int:
        return x * x

    @task(target="t/{x}.bin", result=LocalResult(dir=str(tmp_path)))
    def targeted(x: int) -> int:
        return x + 100

    with Flow("dask-checkpoints") as flow:
        s = total(square.map([1, 2, 3]))
        t = targeted(5)
    first = flow.run(executor=dask_ex)
    assert first.is_successful()
    assert (first.result[s].result, first.result[t].result) == (14, 105)
    with open_store() as store:
        run = store.list_flow_runs(1)[0]
        rows = store.restorable(run.id)
    assert sorted((r[2], r[1]) for r in rows) == [
        ("square", 0),
        ("square", 1),
        ("square", 2),
        ("targeted", -1),
    ]
    read = LocalResult(dir=str(tmp_path)).read
    packed = {r[1]: read(f"{r[3]}#{r[4]}:{r[5]}").value for r in rows if r[2] == "square"}
    assert packed == {0: 1, 1: 4, 2: 9}
    second = flow.run(executor=dask_ex)
    assert isinstance(second.result[t], Cached) and second.result[t].result == 105


@task
def fail_at(x: int, at: int) -> int:
    if x == at:
        raise ValueError(f"failed at {x}")
    return x + 1


@task
def skip_at(x: int, at: int) -> int:
    if x == at:
        raise signals.SKIP(f"skipped at {x}")
    return x + 1


def test_send_ahead_chains_keep_the_states_of_every_executor(
    dask_ex: DaskExecutor, tmp_path: Path
) -> None:
    """Chains of plain tasks are sent ahead of their upstream outcomes; a failure, a
    skip and a retry mid-chain, an ordering edge and a keyword input leave the states
    the local executor gives."""
    marks = tmp_path

    @task(max_retries=1, retry_delay=0)
    def flaky(x: int) -> int:
        if context.task_run_count < 2:
            (marks / "flaky").write_text("failed once")
            raise RuntimeError("transient")
        return x * 10

    with Flow("ahead") as flow:
        x = inc(0)
        chain = [x]
        for _ in range(5):
            x = inc(x)
            chain.append(x)
        failing = fail_at(x, at=6)  # fails mid-chain: everything after it TriggerFailed
        after_fail = inc(inc(failing))
        skipping = skip_at(x, at=6)
        after_skip = inc(skipping)
        retried = flaky(x)  # retries: sent the usual way, downstream too after it
        after_retry = inc(add(retried, y=x))
        ordered = inc(1, upstream_tasks=[failing])  # an ordering edge on a failure
        ok_ordered = inc(2, upstream_tasks=[x])
        keyword = add(x=chain[2], y=chain[3])
    tasks = [
        *chain,
        failing,
        after_fail,
        skipping,
        after_skip,
        retried,
        after_retry,
        ordered,
        ok_ordered,
        keyword,
    ]
    local = flow.run(executor=LocalExecutor())
    (marks / "flaky").unlink()
    state = flow.run(executor=dask_ex)
    _same_states(local, state, tasks)
    assert (marks / "flaky").exists()
    assert state.result[chain[-1]].result == 6
    assert isinstance(state.result[failing], Failed)
    assert type(state.result[after_fail]).__name__ == "TriggerFailed"
    assert isinstance(state.result[after_skip], Skipped)
    assert state.result[after_retry].result == 60 + 6 + 1
    assert type(state.result[ordered]).__name__ == "TriggerFailed"
    assert state.result[ok_ordered].result == 3
    assert state.result[keyword].result == 3 + 4


def test_send_ahead_sends_a_chain_before_its_first_run_finishes(
    dask_ex: DaskExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the first run of a chain still runs, the rest of the chain is already on
    the cluster (waiting for it), not held back in the driver."""
    gate = tmp_path / "go"

    @task
    def slow_start() -> int:
        deadline = time.monotonic() + 30
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return 0

    with Flow("ahead-chain") as flow:
        x = slow_start()
        for _ in range(4):
            x = inc(x)
    seen: list[int] = []
    real = ffdask._Driver._send_ahead

    def spy(self: Any, submitted: list[int]) -> None:
        real(self, submitted)
        seen.append(len(self.ahead))
        gate.write_text("go")

    monkeypatch.setattr(ffdask._Driver, "_send_ahead", spy)
    state = flow.run(executor=dask_ex)
    assert state.result[x].result == 4
    assert seen[0] == 4  # all four inc runs went out with the first one


def test_send_ahead_sends_a_reduce_while_its_map_runs(
    dask_ex: DaskExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once every child of a map is on the cluster, the reduce of the map goes out with
    their futures (as ``client.submit(total, futures)`` would), and the driver uses it
    when the core hands the reduce out: it is not submitted again."""
    gate = tmp_path / "go"

    @task
    def gated_inc(x: int) -> int:
        deadline = time.monotonic() + 30
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return x + 1

    with Flow("ahead-reduce") as flow:
        out = total(gated_inc.map([1, 2, 3]))
    ahead: list[set[str]] = []
    submitted: list[str] = []
    real_ahead, real_submit = ffdask._Driver._send_ahead, ffdask._Driver._submit

    def spy_ahead(self: Any, done: list[int]) -> None:
        real_ahead(self, done)
        ahead.append({self.tasks[t].name for t in self.ahead})
        gate.write_text("go")

    def spy_submit(self: Any, batch: list[Any]) -> Any:
        submitted.extend(self.tasks[spec[1]].name for _fn, spec, _key in batch)
        return real_submit(self, batch)

    monkeypatch.setattr(ffdask._Driver, "_send_ahead", spy_ahead)
    monkeypatch.setattr(ffdask._Driver, "_submit", spy_submit)
    state = flow.run(executor=dask_ex)
    assert state.result[out].result == 2 + 3 + 4
    assert ahead[0] == {"total"}  # sent with the children, before any of them ended
    assert submitted == ["gated_inc"] * 3  # the reduce was not sent a second time


@task
def weighted(xs: list[int], k: int) -> int:
    return sum(xs) * k


def test_send_ahead_reduces_keep_the_states_of_every_executor(
    dask_ex: DaskExecutor, tmp_path: Path
) -> None:
    """Reduces sent ahead of their maps: a failed child, a skipped child, a child
    retried, an empty map, a reduce with another input and a keyword, two reduces of
    one map and the reduce of a map over a map leave the states the local executor
    gives."""
    marks = tmp_path

    @task(max_retries=1, retry_delay=0)
    def flaky(x: int) -> int:
        if x == 2 and context.task_run_count < 2:
            (marks / "flaky").write_text("failed once")
            raise RuntimeError("transient")
        return x * 10

    with Flow("ahead-reduces") as flow:
        plain = total(inc.map([1, 2, 3]))
        failed = total(fail_at.map([1, 2, 3], at=unmapped(2)))
        skipped = total(skip_at.map([1, 2, 3], at=unmapped(2)))
        retried = total(flaky.map([1, 2, 3]))
        empty = total(inc.map(make(0)))
        both = weighted(inc.map([1, 2]), k=inc(1))
        shared = inc.map([5, 6])
        one, two = total(shared), weighted(shared, k=3)
        deep = total(inc.map(inc.map([1, 2, 3])))
    tasks = [plain, failed, skipped, retried, empty, both, one, two, deep]
    local = flow.run(executor=LocalExecutor())
    (marks / "flaky").unlink()
    state = flow.run(executor=dask_ex)
    _same_states(local, state, tasks)
    assert (marks / "flaky").exists()
    assert [state.result[t].result for t in (plain, retried, empty, both, one, two, deep)] == [
        9,
        60,
        0,
        10,
        13,
        39,
        12,
    ]
    assert type(state.result[failed]).__name__ == "TriggerFailed"
    assert isinstance(state.result[skipped], Skipped)
