"""The engine's shape (issue: a sans-IO driver in the core): one definition of each
state code and exception class, the core's retry rule, no panic masked, and the
LOOP-map-chain flow that once ended TriggerFailed on threads."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

import ferroflow.exceptions as exceptions
from ferroflow import Flow, _native, context, signals, task
from ferroflow.exceptions import FerroflowError, TaskDefinitionError
from ferroflow.executors import ThreadExecutor
from ferroflow.states import BY_CODE, Failed, Retrying, Success, TimedOut


@task
def looper(x: int) -> int:
    if context.task_loop_count < 3:
        raise signals.LOOP(result=x)
    return x * 2


@task
def plus_one(x: int) -> int:
    return x + 1


def test_loop_map_chain_on_threads_always_succeeds() -> None:
    # A mapped task that loops, followed by a mapped task: a downstream child must
    # wait for its upstream child's last iteration (it once ran early, or the core
    # panicked, when Looped counted as finished).
    with Flow("loop-chain") as flow:
        out = plus_one.map(looper.map(list(range(20))))
    expected = [x * 2 + 1 for x in range(20)]
    for _ in range(50):
        state = flow.run(executor=ThreadExecutor(max_workers=4))
        assert isinstance(state, Success), state.message
        assert state.result[out].result == expected


def test_state_codes_come_from_the_core() -> None:
    codes = _native.STATE_CODES
    assert len(codes) == len(BY_CODE)
    for name, code in codes.items():
        assert BY_CODE[code].__name__ == name
        assert BY_CODE[code].code == code


def test_every_exception_class_the_binding_raises_exists() -> None:
    names = _native.error_classes()
    assert "ExecutorError" in names
    for name in names:
        cls = getattr(exceptions, name)
        assert issubclass(cls, FerroflowError)


@pytest.mark.parametrize(
    ("code", "cause", "retries_left", "expected"),
    [
        (Failed.code, _native.CAUSE_MATCHED, True, True),
        (Failed.code, _native.CAUSE_MATCHED, False, False),
        (Failed.code, _native.CAUSE_UNMATCHED, True, False),
        (Failed.code, _native.CAUSE_FAIL_SIGNAL, True, True),
        (Failed.code, _native.CAUSE_WORKER_LOST, True, True),
        (Failed.code, _native.CAUSE_INTERNAL, True, False),
        (TimedOut.code, _native.CAUSE_INTERNAL, True, True),
        (TimedOut.code, _native.CAUSE_INTERNAL, False, False),
        (Retrying.code, _native.CAUSE_INTERNAL, False, True),
        (Success.code, _native.CAUSE_MATCHED, True, False),
    ],
)
def test_the_core_owns_the_retry_rule(
    code: int, cause: int, retries_left: bool, expected: bool
) -> None:
    assert _native.will_retry(code, cause, retries_left) is expected


@pytest.mark.parametrize("delay", [1e30, math.nan, math.inf, timedelta.max.total_seconds() * 10])
def test_retry_delay_that_cannot_be_held_is_a_definition_error(delay: float) -> None:
    with pytest.raises(TaskDefinitionError, match="retry_delay"):
        task(lambda: 1, max_retries=1, retry_delay=delay)


@pytest.mark.parametrize("timeout", [math.nan, math.inf, -1.0, 0])
def test_timeout_that_is_not_a_finite_positive_number_is_a_definition_error(
    timeout: float,
) -> None:
    with pytest.raises(TaskDefinitionError, match="timeout"):
        task(lambda: 1, timeout=timeout)


def test_the_largest_retry_delay_runs_without_a_panic() -> None:
    # timedelta.max as a retry delay: the core must not overflow its clock. The
    # task succeeds at once, so the delay is never waited for.
    @task(max_retries=1, retry_delay=timedelta.max)
    def fine() -> int:
        return 1

    with Flow("huge-delay") as flow:
        t = fine()
    state = flow.run()
    assert state.is_successful()
    assert state.result[t].result == 1
