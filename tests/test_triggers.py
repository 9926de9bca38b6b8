"""Triggers: every built-in, proportions, mapped upstreams, argument errors, fast-path tags."""

from __future__ import annotations

import functools
import math
import pickle
from typing import Any

import cloudpickle
import pytest

from ferroflow import Flow, task, triggers
from ferroflow.exceptions import FerroflowError, TaskDefinitionError
from ferroflow.signals import PAUSE, SKIP, TRIGGERFAIL
from ferroflow.states import (
    Cached,
    Cancelled,
    Failed,
    Mapped,
    Pending,
    Retrying,
    Running,
    Skipped,
    State,
    Success,
    TimedOut,
    TriggerFailed,
)


class Edge:
    """A stand-in for the engine's edge objects: triggers only read the dict's values."""

    def __init__(self, n: int) -> None:
        self.n = n


def upstream(*states: State) -> dict[Any, State]:
    return {Edge(i): s for i, s in enumerate(states)}


def states(success: int = 0, failed: int = 0, skipped: int = 0) -> dict[Any, State]:
    made: list[State] = [Success() for _ in range(success)]
    made += [Failed() for _ in range(failed)]
    made += [Skipped() for _ in range(skipped)]
    return upstream(*made)


EMPTY: dict[Any, State] = {}

SIMPLE = [
    triggers.all_successful,
    triggers.all_failed,
    triggers.any_successful,
    triggers.any_failed,
    triggers.all_finished,
    triggers.not_all_skipped,
]


def test_module_exports() -> None:
    assert set(triggers.__all__) == {
        "all_successful",
        "all_failed",
        "any_successful",
        "any_failed",
        "all_finished",
        "always_run",
        "manual_only",
        "some_successful",
        "some_failed",
        "not_all_skipped",
    }


def test_always_run_is_all_finished() -> None:
    assert triggers.always_run is triggers.all_finished


# --- fast-path tags ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trigger", "tag"),
    [
        (triggers.all_successful, ("all_successful",)),
        (triggers.all_failed, ("all_failed",)),
        (triggers.any_successful, ("any_successful",)),
        (triggers.any_failed, ("any_failed",)),
        (triggers.all_finished, ("all_finished",)),
        (triggers.always_run, ("all_finished",)),
        (triggers.manual_only, ("manual_only",)),
        (triggers.not_all_skipped, ("not_all_skipped",)),
        (triggers.some_successful(at_least=2), ("some_successful", 2, None)),
        (triggers.some_successful(), ("some_successful", None, None)),
        (triggers.some_failed(at_most=0.5), ("some_failed", None, 0.5)),
        (triggers.some_failed(1, 3.5), ("some_failed", 1, 3.5)),
    ],
)
def test_builtin_tags(trigger: Any, tag: tuple[Any, ...]) -> None:
    assert trigger._ff_builtin == tag
    assert all(type(a) is type(b) for a, b in zip(trigger._ff_builtin, tag, strict=True))


@task
def boom() -> None:
    raise ValueError("boom")


def test_custom_trigger_has_no_tag() -> None:
    """The engine calls a trigger of the user's own (no fast-path tag) and goes by its
    answer, even where every built-in but ``all_finished`` would stop the task."""
    seen: list[list[str]] = []

    def mine(upstream_states: dict[Any, State]) -> bool:
        seen.append([type(s).__name__ for s in upstream_states.values()])
        return True

    @task(trigger=mine)
    def after() -> str:
        return "ran"

    with Flow("custom-trigger") as flow:
        a = after(upstream_tasks=[boom()])
    state = flow.run(record=False)
    assert not hasattr(mine, "_ff_builtin")
    assert seen == [["Failed"]]
    assert state.result[a].result == "ran"


def test_a_trigger_that_wraps_a_builtin_is_called() -> None:
    calls: list[int] = []

    @functools.wraps(triggers.all_failed)
    def lenient(upstream_states: dict[Any, State]) -> bool:
        calls.append(len(upstream_states))
        return True

    @task
    def ok() -> int:
        return 1

    @task(trigger=lenient)
    def after() -> str:
        return "ran"

    with Flow("wrapped-trigger") as flow:
        a = after(upstream_tasks=[ok()])  # all_failed itself would refuse: `ok` succeeded
    state = flow.run(record=False)
    assert calls == [1]
    assert state.result[a].result == "ran"


# --- empty upstream -----------------------------------------------------------------------


@pytest.mark.parametrize("trigger", SIMPLE, ids=lambda t: t.__name__)
def test_empty_upstream_is_satisfied(trigger: Any) -> None:
    assert trigger(EMPTY) is True


@pytest.mark.parametrize(
    "trigger",
    [
        triggers.some_successful(at_least=3),
        triggers.some_failed(at_least=1),
        triggers.some_failed(at_least=0.5, at_most=0.9),
    ],
    ids=["some_successful", "some_failed", "some_failed-proportions"],
)
def test_empty_upstream_satisfies_some(trigger: Any) -> None:
    assert trigger(EMPTY) is True


def test_only_empty_maps_count_as_no_upstream() -> None:
    assert triggers.any_successful(upstream(Mapped(map_states=[]))) is True
    assert triggers.some_successful(at_least=1)(upstream(Mapped(map_states=[]))) is True


# --- all_successful -----------------------------------------------------------------------


def test_all_successful() -> None:
    assert triggers.all_successful(upstream(Success(), Cached(), Skipped(), Mapped()))
    with pytest.raises(TRIGGERFAIL) as info:
        triggers.all_successful(states(success=3, failed=2))
    assert str(info.value) == 'Trigger was "all_successful" but 2 of 5 upstream tasks failed.'
    with pytest.raises(TRIGGERFAIL, match="1 of 1 upstream task failed"):
        triggers.all_successful(upstream(TriggerFailed()))
    with pytest.raises(TRIGGERFAIL):
        triggers.all_successful(upstream(Success(), Cancelled()))


# --- all_failed ---------------------------------------------------------------------------


def test_all_failed() -> None:
    assert triggers.all_failed(upstream(Failed(), TimedOut(), TriggerFailed()))
    with pytest.raises(TRIGGERFAIL) as info:
        triggers.all_failed(states(success=1, failed=2, skipped=1))
    assert str(info.value) == 'Trigger was "all_failed" but 2 of 4 upstream tasks did not fail.'


# --- any_successful / any_failed -----------------------------------------------------------


def test_any_successful() -> None:
    assert triggers.any_successful(states(success=1, failed=4))
    assert triggers.any_successful(states(skipped=1, failed=1))  # Skipped is a success
    with pytest.raises(TRIGGERFAIL) as info:
        triggers.any_successful(states(failed=3))
    assert str(info.value) == (
        'Trigger was "any_successful" but none of the 3 upstream tasks succeeded.'
    )


def test_any_failed() -> None:
    assert triggers.any_failed(states(success=4, failed=1))
    assert triggers.any_failed(upstream(Success(), TriggerFailed()))
    with pytest.raises(TRIGGERFAIL) as info:
        triggers.any_failed(states(success=2, skipped=1))
    assert str(info.value) == 'Trigger was "any_failed" but none of the 3 upstream tasks failed.'


# --- all_finished / manual_only -----------------------------------------------------------


def test_all_finished() -> None:
    assert triggers.all_finished(upstream(Success(), Failed(), Skipped(), Cancelled()))
    with pytest.raises(TRIGGERFAIL) as info:
        triggers.all_finished(upstream(Success(), Running(), Pending(), Retrying()))
    assert str(info.value) == (
        'Trigger was "all_finished" but 3 of 4 upstream tasks did not finish.'
    )


@pytest.mark.parametrize(
    "ups",
    [EMPTY, states(success=2), states(failed=1)],
    ids=["empty", "successes", "failure"],
)
def test_manual_only_always_pauses(ups: dict[Any, State]) -> None:
    with pytest.raises(PAUSE) as info:
        triggers.manual_only(ups)
    assert info.value.message == "Trigger requires manual approval"
    assert info.value.to_state().is_scheduled()


# --- not_all_skipped ---------------------------------------------------------------------


def test_not_all_skipped() -> None:
    assert triggers.not_all_skipped(states(success=1, skipped=2))
    assert triggers.not_all_skipped(states(success=2))
    with pytest.raises(SKIP, match="All upstream tasks were skipped"):
        triggers.not_all_skipped(states(skipped=3))
    with pytest.raises(TRIGGERFAIL) as info:
        triggers.not_all_skipped(states(success=1, skipped=1, failed=1))
    assert str(info.value) == 'Trigger was "not_all_skipped" but 1 of 3 upstream tasks failed.'


# --- mapped upstreams ----------------------------------------------------------------------


def test_mapped_upstream_counts_each_child() -> None:
    children: list[State] = [Success(), Failed(), Success(), Success()]
    ups = upstream(Mapped(map_states=children), Success())
    with pytest.raises(TRIGGERFAIL, match="1 of 5 upstream tasks failed"):
        triggers.all_successful(ups)
    assert triggers.any_failed(ups)
    assert triggers.some_successful(at_least=0.8)(ups)
    with pytest.raises(TRIGGERFAIL, match="4 of 5"):
        triggers.some_successful(at_least=5)(ups)


def test_lazy_mapped_upstream_is_loaded() -> None:
    mapped = Mapped._lazy(None, lambda: [Skipped(), Skipped()])
    with pytest.raises(SKIP):
        triggers.not_all_skipped(upstream(mapped))


# --- some_successful / some_failed ----------------------------------------------------------


@pytest.mark.parametrize(
    ("at_least", "at_most", "success", "failed", "ok"),
    [
        (None, None, 0, 3, True),
        (2, None, 2, 3, True),
        (2, None, 1, 3, False),
        (None, 2, 2, 0, True),
        (None, 2, 3, 0, False),
        (1, 2, 0, 2, False),
        (1, 2, 3, 0, False),
        (1, 2, 1, 5, True),
        # counts given as floats >= 1 round inwards
        (1.5, None, 1, 0, False),
        (1.5, None, 2, 0, True),
        (None, 2.5, 2, 0, True),
        (None, 2.5, 3, 0, False),
        # proportions of the number of upstream states
        (0.5, None, 2, 2, True),
        (0.5, None, 1, 3, False),
        (0.5, None, 2, 1, True),  # 1.5 needed -> 2
        (0.5, None, 1, 2, False),
        (None, 0.5, 2, 2, True),
        (None, 0.5, 2, 1, False),  # at most 1.5 -> 1
        (0.25, 0.75, 2, 2, True),
        (0.25, 0.75, 4, 0, False),
        (0.25, 0.75, 0, 4, False),
        # 0.3 * 10 is 3.0000000000000004 in floating point: still means 3
        (0.3, None, 3, 7, True),
        (None, 0.3, 3, 7, True),
        (None, 0.3, 4, 6, False),
        (0.7, None, 7, 3, True),
        # mixed: a proportion and a count
        (0.5, 3, 3, 3, True),
        (0.5, 3, 4, 2, False),
        (0, 0, 0, 2, True),
        (0.0, 0.0, 1, 1, False),
    ],
)
def test_some_successful(
    at_least: float | None, at_most: float | None, success: int, failed: int, ok: bool
) -> None:
    trigger = triggers.some_successful(at_least=at_least, at_most=at_most)
    ups = states(success=success, failed=failed)
    if ok:
        assert trigger(ups) is True
    else:
        with pytest.raises(TRIGGERFAIL, match=f"{success} of {success + failed} upstream"):
            trigger(ups)


@pytest.mark.parametrize(
    ("at_least", "at_most", "success", "failed", "ok"),
    [
        (1, None, 3, 1, True),
        (1, None, 3, 0, False),
        (None, 1, 1, 2, False),
        (0.5, None, 2, 2, True),
        (0.5, None, 3, 1, False),
        (None, 0.25, 3, 1, True),
        (None, 0.25, 2, 2, False),
    ],
)
def test_some_failed(
    at_least: float | None, at_most: float | None, success: int, failed: int, ok: bool
) -> None:
    trigger = triggers.some_failed(at_least, at_most)
    ups = states(success=success, failed=failed)
    if ok:
        assert trigger(ups) is True
    else:
        with pytest.raises(TRIGGERFAIL, match=f"{failed} of {success + failed} upstream"):
            trigger(ups)


def test_some_counts_skipped_as_success_and_trigger_failed_as_failure() -> None:
    ups = upstream(Skipped(), TriggerFailed(), TimedOut())
    assert triggers.some_successful(at_least=1, at_most=1)(ups)
    assert triggers.some_failed(at_least=2, at_most=2)(ups)


def test_some_messages_name_counts_and_bounds() -> None:
    with pytest.raises(TRIGGERFAIL) as info:
        triggers.some_successful(at_least=0.5)(states(success=1, failed=3))
    assert str(info.value) == (
        'Trigger was "some_successful(at_least=0.5)" but 1 of 4 upstream tasks succeeded; '
        "between 2 and 4 required."
    )
    with pytest.raises(TRIGGERFAIL) as info:
        triggers.some_failed(at_least=1, at_most=2)(states(failed=3))
    assert str(info.value) == (
        'Trigger was "some_failed(at_least=1, at_most=2)" but 3 of 3 upstream tasks failed; '
        "between 1 and 2 required."
    )


def test_some_returns_a_new_named_function_each_time() -> None:
    a = triggers.some_successful(at_least=1)
    b = triggers.some_successful(at_least=1)
    assert a is not b
    assert a.__name__ == "some_successful"
    assert triggers.some_failed().__name__ == "some_failed"
    assert callable(a)


@pytest.mark.parametrize("factory", [triggers.some_successful, triggers.some_failed])
@pytest.mark.parametrize(
    "kwargs",
    [
        {"at_least": -1},
        {"at_most": -0.5},
        {"at_least": math.nan},
        {"at_most": math.inf},
        {"at_least": True},
        {"at_most": "2"},
        {"at_least": 3, "at_most": 2},
        {"at_least": 0.75, "at_most": 0.5},
    ],
    ids=["neg-least", "neg-most", "nan", "inf", "bool", "str", "least>most", "prop-least>most"],
)
def test_some_rejects_bad_bounds(factory: Any, kwargs: dict[str, Any]) -> None:
    with pytest.raises(TaskDefinitionError) as info:
        factory(**kwargs)
    assert isinstance(info.value, FerroflowError)
    assert isinstance(info.value, ValueError)


def test_some_allows_mixed_bounds_it_cannot_order() -> None:
    # a proportion and a count cannot be compared before the upstream count is known
    trigger = triggers.some_successful(at_least=0.9, at_most=2)
    assert trigger(states(success=2, failed=0)) is True
    with pytest.raises(TRIGGERFAIL):
        trigger(states(success=2, failed=8))


# --- shipping ------------------------------------------------------------------------------


@pytest.mark.parametrize("trigger", [*SIMPLE, triggers.manual_only], ids=lambda t: t.__name__)
def test_builtins_pickle_by_reference(trigger: Any) -> None:
    assert pickle.loads(pickle.dumps(trigger)) is trigger


def test_made_triggers_travel_with_cloudpickle() -> None:
    trigger = triggers.some_failed(at_least=0.5)
    back = cloudpickle.loads(cloudpickle.dumps(trigger))
    assert back._ff_builtin == ("some_failed", 0.5, None)
    assert back(states(failed=1, success=1)) is True
