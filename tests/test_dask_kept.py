"""DaskExecutor as a context manager: the runs of a ``with`` block share one client (and
the LocalCluster it started), which the block's end closes."""

from __future__ import annotations

import gc
import pickle
import threading
import time
from typing import Any

import pytest

pytest.importorskip("distributed")

from _tasks import inc, total
from ferroflow import Flow, Parameter, task
from ferroflow.exceptions import ExecutorError
from ferroflow.executors import DaskExecutor
from ferroflow.executors import dask as ffdask


@task
def make(n: int) -> list[int]:
    return list(range(n))


@task
def scheduler_of(x: int) -> str:
    """The address of the scheduler of the worker this runs on."""
    from distributed import get_worker

    return f"{get_worker().scheduler.address}:{x}"


def _sweep_flow() -> tuple[Flow, Any]:
    with Flow("sweep") as flow:
        out = total(inc.map(make(Parameter("n"))))
    return flow, out


class _Spy:
    """Counts the executor's connections and records what it closes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.connects = 0
        self.closed: list[str] = []
        real_connect = ffdask.DaskExecutor._connect
        real_close = ffdask._quiet_close

        def connect(executor: Any, distributed: Any) -> Any:
            self.connects += 1
            return real_connect(executor, distributed)

        def close(obj: Any) -> None:
            self.closed.append(type(obj).__name__)
            real_close(obj)

        monkeypatch.setattr(ffdask.DaskExecutor, "_connect", connect)
        monkeypatch.setattr(ffdask, "_quiet_close", close)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> _Spy:
    return _Spy(monkeypatch)


def test_the_runs_of_a_block_share_one_client(dask_cluster: Any, spy: _Spy) -> None:
    flow, out = _sweep_flow()
    with DaskExecutor(address=dask_cluster.scheduler_address) as executor:
        results = [flow.run(parameters={"n": n}, executor=executor) for n in (3, 5, 8)]
        assert spy.connects == 1
        assert spy.closed == []
    assert [s.result[out].result for s in results] == [6, 15, 36]
    assert spy.closed == ["Client"]  # the scheduler at the address is not ours to close
    # Outside a block each run connects and closes its own client, as before.
    flow.run(parameters={"n": 2}, executor=executor)
    assert spy.connects == 2
    assert spy.closed == ["Client", "Client"]


def test_a_cluster_the_executor_starts_serves_the_whole_block(spy: _Spy) -> None:
    with Flow("where") as flow:
        where = scheduler_of(Parameter("x"))
    options = {"n_workers": 1, "processes": False}
    with DaskExecutor(cluster_kwargs=options) as executor:
        runs = [flow.run(parameters={"x": x}, executor=executor) for x in (1, 2)]
    seen = [state.result[where].result for state in runs]
    addresses = {s.rsplit(":", 1)[0] for s in seen}
    assert len(addresses) == 1, seen
    assert spy.connects == 1
    assert spy.closed == ["Client", "LocalCluster"]


def test_runs_from_two_threads_share_the_block(dask_cluster: Any, spy: _Spy) -> None:
    """Two runs at the same time in one block: both succeed; at most the first two
    connect (a run that finds no client yet connects its own), later ones reuse."""
    flow, out = _sweep_flow()
    got: dict[int, Any] = {}
    with DaskExecutor(address=dask_cluster.scheduler_address) as executor:

        def run(n: int) -> None:
            got[n] = flow.run(parameters={"n": n}, executor=executor).result[out].result

        threads = [threading.Thread(target=run, args=(n,)) for n in (4, 6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert got == {4: 10, 6: 21}
        connects = spy.connects
        assert connects <= 2
        assert flow.run(parameters={"n": 1}, executor=executor).result[out].result == 1
        assert spy.connects == connects
    # Every client connected is closed by the end of the block.
    assert spy.closed.count("Client") == connects


@pytest.mark.parametrize("stop", [KeyboardInterrupt, RuntimeError], ids=["ctrl-c", "failure"])
def test_an_interrupted_or_failed_run_closes_the_blocks_client_and_the_next_run_connects(
    dask_cluster: Any, spy: _Spy, monkeypatch: pytest.MonkeyPatch, stop: type[BaseException]
) -> None:
    flow, out = _sweep_flow()
    real_handle = ffdask._Driver._handle
    interrupt = {"on": False}

    def handle(self: Any, done: list[Any]) -> None:
        real_handle(self, done)
        if interrupt["on"]:
            raise stop("stopped in the executor")

    monkeypatch.setattr(ffdask._Driver, "_handle", handle)
    with DaskExecutor(address=dask_cluster.scheduler_address) as executor:
        assert flow.run(parameters={"n": 3}, executor=executor).is_successful()
        interrupt["on"] = True
        with pytest.raises(stop):
            flow.run(parameters={"n": 3}, executor=executor)
        assert spy.closed == ["Client"]
        interrupt["on"] = False
        assert flow.run(parameters={"n": 4}, executor=executor).result[out].result == 10
        assert spy.connects == 2
    assert spy.closed == ["Client", "Client"]


@task
def wait_for_file(path: str) -> str:
    """Returns once ``path`` exists (the test creates it); gives up after 60 s."""
    import os
    import time

    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.02)
    return path


def test_closing_the_block_while_a_run_uses_its_client(
    dask_cluster: Any, spy: _Spy, tmp_path: Any
) -> None:
    """``close()`` returns at once; the run still using the client finishes on it, and
    its end closes it; later runs connect their own."""
    gate = tmp_path / "go"
    with Flow("gated") as flow:
        out = wait_for_file(str(gate))
    got: list[Any] = []
    executor = DaskExecutor(address=dask_cluster.scheduler_address)
    with executor:
        runner = threading.Thread(target=lambda: got.append(flow.run(executor=executor)))
        runner.start()
        deadline = time.monotonic() + 60  # until the run holds the client (an event)
        while executor._session is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert executor._session is not None
    assert spy.closed == []  # the run still uses it
    gate.write_text("")
    runner.join(120)
    assert got and got[0].result[out].result == str(gate)
    assert spy.closed == ["Client"]
    assert spy.connects == 1


def test_a_run_whose_driver_cannot_start_closes_the_blocks_client(
    dask_cluster: Any, spy: _Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow, out = _sweep_flow()
    real_analyse = ffdask._Driver._analyse

    def broken(self: Any) -> None:
        raise RuntimeError("the plan cannot be analysed")

    with DaskExecutor(address=dask_cluster.scheduler_address) as executor:
        monkeypatch.setattr(ffdask._Driver, "_analyse", broken)
        with pytest.raises(RuntimeError, match="cannot be analysed"):
            flow.run(parameters={"n": 2}, executor=executor)
        assert spy.closed == ["Client"]
        assert executor._session is None
        monkeypatch.setattr(ffdask._Driver, "_analyse", real_analyse)
        assert flow.run(parameters={"n": 3}, executor=executor).result[out].result == 6
        assert spy.connects == 2


def test_a_client_that_lost_its_scheduler_is_replaced(dask_cluster: Any, spy: _Spy) -> None:
    flow, out = _sweep_flow()
    with DaskExecutor(address=dask_cluster.scheduler_address) as executor:
        assert flow.run(parameters={"n": 2}, executor=executor).is_successful()
        session = executor._session
        assert session is not None
        session.client.close()  # as if the connection were gone
        assert flow.run(parameters={"n": 5}, executor=executor).result[out].result == 15
        assert spy.connects == 2
        assert executor._session is not session


def test_a_sweep_in_a_block_leaves_nothing_on_the_cluster() -> None:
    """Each run's futures (its tasks' results, functions, context) are released when it
    ends, also when its client lives on for the next run. (A cluster of its own: the
    shared one may still be releasing other tests' keys.)"""
    from distributed import LocalCluster

    flow, _out = _sweep_flow()
    with LocalCluster(
        n_workers=1,
        processes=False,
        protocol="tcp",
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    ) as cluster:
        scheduler = cluster.scheduler
        with DaskExecutor(address=cluster.scheduler_address) as executor:
            for n in (10, 20, 30):
                assert flow.run(parameters={"n": n}, executor=executor).is_successful()
            gc.collect()
            # Releases travel to the scheduler asynchronously: wait for them (an event,
            # not a timing).
            deadline = time.monotonic() + 30
            while scheduler.tasks and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not scheduler.tasks, sorted(map(str, scheduler.tasks))[:10]


def test_the_executor_pickles_as_its_settings_even_in_a_block(dask_cluster: Any) -> None:
    with DaskExecutor(
        address=dask_cluster.scheduler_address, client_kwargs={"timeout": 5}
    ) as executor:
        flow, _out = _sweep_flow()
        assert flow.run(parameters={"n": 1}, executor=executor).is_successful()
        copy = pickle.loads(pickle.dumps(executor))
    assert type(copy) is DaskExecutor
    assert copy.address == dask_cluster.scheduler_address
    assert copy.client_kwargs == {"timeout": 5}
    assert copy._session is None and not copy._in_block


def test_entering_twice_is_an_error_and_closing_twice_is_harmless(dask_cluster: Any) -> None:
    executor = DaskExecutor(address=dask_cluster.scheduler_address)
    with executor:
        with pytest.raises(ExecutorError, match="already in a with block"):
            executor.__enter__()
    executor.close()
    executor.close()
    with executor:  # a block can begin again after the last one ended
        flow, out = _sweep_flow()
        assert flow.run(parameters={"n": 2}, executor=executor).result[out].result == 3
