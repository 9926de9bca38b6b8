"""Flow runs hold Python objects in native slabs; they must still be collectable."""

from __future__ import annotations

import gc
import weakref

from ferroflow import Flow, task


class Payload:
    """A result type we can take weak references to."""


def test_flow_runs_and_results_are_collected() -> None:
    made: list[weakref.ref[Payload]] = []

    @task
    def produce(i: int) -> Payload:
        p = Payload()
        made.append(weakref.ref(p))
        return p

    @task
    def keep(ps: list[Payload]) -> int:
        return len(ps)

    with Flow("gc") as flow:
        k = keep(produce.map(list(range(50))))
    state = flow.run(record=False)
    assert state.result[k].result == 50
    assert all(r() is not None for r in made)
    del state
    gc.collect()
    assert all(r() is None for r in made), "task results outlived their flow run"


class Boom(Exception):
    """An exception type we can take weak references to."""


def test_a_failed_run_with_a_traceback_is_collected() -> None:
    @task
    def boom() -> None:
        raise Boom("boom")

    with Flow("gc-fail") as flow:
        b = boom()
    state = flow.run(record=False)
    err = state.result[b].result
    err_ref = weakref.ref(err)
    del state, err
    gc.collect()
    assert err_ref() is None
