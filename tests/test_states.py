"""States: hierarchy, is_* answers, repr, extra fields, lazy results, codes, pickling."""

from __future__ import annotations

import copy
import pickle
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pytest

from ferroflow import states
from ferroflow.states import (
    BY_CODE,
    Cached,
    Cancelled,
    Failed,
    Finished,
    Looped,
    Mapped,
    Paused,
    Pending,
    Resume,
    Retrying,
    Running,
    Scheduled,
    Skipped,
    State,
    Success,
    TimedOut,
    TriggerFailed,
)

PARENT: dict[type[State], type[State]] = {
    Pending: State,
    Scheduled: Pending,
    Paused: Scheduled,
    Resume: Scheduled,
    Retrying: Scheduled,
    Running: State,
    Finished: State,
    Success: Finished,
    Failed: Finished,
    Cancelled: Finished,
    Looped: Finished,
    Cached: Success,
    Mapped: Success,
    Skipped: Success,
    TimedOut: Failed,
    TriggerFailed: Failed,
}

ALL_CLASSES: list[type[State]] = [State, *PARENT]

# Which classes answer True for each is_* method (everything else answers False).
TRUE_FOR: dict[str, set[type[State]]] = {
    "is_pending": {Pending, Scheduled, Paused, Resume, Retrying},
    "is_scheduled": {Scheduled, Paused, Resume, Retrying},
    "is_retrying": {Retrying},
    "is_running": {Running},
    "is_finished": {
        Finished,
        Success,
        Cached,
        Mapped,
        Skipped,
        Failed,
        TimedOut,
        TriggerFailed,
        Cancelled,
        Looped,
    },
    "is_successful": {Success, Cached, Mapped, Skipped},
    "is_failed": {Failed, TimedOut, TriggerFailed},
    "is_skipped": {Skipped},
    "is_mapped": {Mapped},
    "is_cached": {Cached},
    "is_looped": {Looped},
}


def test_all_lists_the_spec_names() -> None:
    expected = {
        "State",
        "Pending",
        "Scheduled",
        "Paused",
        "Resume",
        "Retrying",
        "Running",
        "Finished",
        "Success",
        "Cached",
        "Mapped",
        "Skipped",
        "Looped",
        "Failed",
        "TimedOut",
        "TriggerFailed",
        "Cancelled",
    }
    assert set(states.__all__) == expected
    for name in expected:
        assert isinstance(getattr(states, name), type)


@pytest.mark.parametrize("cls", list(PARENT), ids=lambda c: c.__name__)
def test_direct_parent(cls: type[State]) -> None:
    assert cls.__bases__ == (PARENT[cls],)


@pytest.mark.parametrize("method", sorted(TRUE_FOR))
@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_is_methods(cls: type[State], method: str) -> None:
    assert getattr(cls(), method)() is (cls in TRUE_FOR[method])


def test_is_methods_hold_for_user_subclasses() -> None:
    class Partial(Success):
        pass

    state = Partial("half done", result=1)
    assert state.is_successful() and state.is_finished() and not state.is_failed()
    assert state.result == 1
    assert repr(state) == '<Partial: "half done">'


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_defaults_and_positional_constructor(cls: type[State]) -> None:
    empty = cls()
    assert empty.message is None
    assert empty.result is None if cls is not Mapped else empty.result == []
    state = cls("msg", 5)
    assert state.message == "msg"
    assert state.result == 5


def test_repr() -> None:
    assert repr(Success()) == "<Success>"
    assert repr(Success("Task run succeeded.")) == '<Success: "Task run succeeded.">'
    assert repr(TriggerFailed("no")) == '<TriggerFailed: "no">'
    assert repr(Failed("", result=1)) == '<Failed: "">'
    assert str(Pending()) == "<Pending>"


def test_states_are_slotted_and_compared_by_identity() -> None:
    for cls in ALL_CLASSES:
        assert not hasattr(cls(), "__dict__"), cls
    with pytest.raises(AttributeError):
        Success().foo = 1  # type: ignore[attr-defined]
    a, b = Success("x", 1), Success("x", 1)
    assert a != b and a == a
    assert len({a, b}) == 2


def test_result_is_settable() -> None:
    state = Success()
    state.result = [1]
    assert state.result == [1]


def test_scheduled_and_retrying_fields() -> None:
    when = datetime(2030, 1, 1, tzinfo=timezone.utc)
    assert Scheduled().start_time is None
    assert Scheduled("later", start_time=when).start_time == when
    assert Paused(start_time=when).start_time == when
    assert Resume().start_time is None

    retry = Retrying("again", ValueError("x"), start_time=when, run_count=2)
    assert (retry.message, retry.start_time, retry.run_count) == ("again", when, 2)
    assert isinstance(retry.result, ValueError)
    assert Retrying().run_count == 0


def test_looped_fields() -> None:
    assert Looped().loop_count == 0
    loop = Looped("iteration 3", result={"acc": 6}, loop_count=3)
    assert (loop.loop_count, loop.result) == (3, {"acc": 6})


def test_failed_carries_exception_with_traceback() -> None:
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError as exc:
        state = Failed(str(exc), result=exc)
    assert state.result.__traceback__ is not None
    assert state.message == "division by zero"


def test_by_code_matches_core_codes() -> None:
    assert BY_CODE == (
        Pending,
        Scheduled,
        Paused,
        Resume,
        Retrying,
        Running,
        Success,
        Cached,
        Mapped,
        Skipped,
        Looped,
        Failed,
        TimedOut,
        TriggerFailed,
        Cancelled,
    )
    for code, cls in enumerate(BY_CODE):
        assert cls.code == code
    assert State.code is None and Finished.code is None


class CountingLoader:
    def __init__(self, value: Any) -> None:
        self.value = value
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        return self.value


def test_lazy_result_is_computed_once_on_first_access() -> None:
    loader = CountingLoader([1, 2, 3])
    state = Success._lazy_result("done", loader)
    assert isinstance(state, Success)
    assert state.message == "done"
    assert loader.calls == 0
    assert state.result == [1, 2, 3]
    assert state.result is state.result
    assert loader.calls == 1


def test_lazy_result_with_extra_fields() -> None:
    loader = CountingLoader(ValueError("boom"))
    state = Retrying._lazy_result("retrying", loader, run_count=2)
    assert state.run_count == 2 and loader.calls == 0
    assert isinstance(state.result, ValueError)
    assert loader.calls == 1


def test_lazy_result_that_raises_is_retried() -> None:
    calls = []

    def flaky() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("store busy")
        return 7

    state = Success._lazy_result(None, flaky)
    with pytest.raises(OSError, match="store busy"):
        _ = state.result
    assert state.result == 7
    assert state.result == 7
    assert len(calls) == 2


def test_setting_result_discards_loader() -> None:
    loader = CountingLoader(1)
    state = Success._lazy_result(None, loader)
    state.result = 2
    assert state.result == 2
    assert loader.calls == 0


def test_concurrent_first_access_sees_one_value() -> None:
    barrier = threading.Barrier(8)
    counter = iter(range(1000))

    def loader() -> int:
        return next(counter)

    state = Success._lazy_result(None, loader)
    seen: list[int] = []

    def read() -> None:
        barrier.wait()
        seen.append(state.result)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 8 and len(set(seen)) == 1
    assert state.result == seen[0]


def test_mapped_with_map_states() -> None:
    children: list[State] = [Success(result=0), Failed(result=ValueError("x")), Skipped()]
    mapped = Mapped("3 children", map_states=children)
    assert mapped.map_states is children
    result = mapped.result
    assert result[0] == 0 and isinstance(result[1], ValueError) and result[2] is None
    assert mapped.result is result  # derived once, then cached


def test_mapped_defaults_and_explicit_result() -> None:
    assert Mapped().map_states == []
    assert Mapped().result == []
    explicit = Mapped(result=["a"], map_states=[Success(result="b")])
    assert explicit.result == ["a"]


def test_mapped_lazy_map_states_and_result() -> None:
    states_loader = CountingLoader([Success(result=i) for i in range(4)])
    mapped = Mapped._lazy("4 children", states_loader)
    assert isinstance(mapped, Mapped) and mapped.message == "4 children"
    assert states_loader.calls == 0
    assert mapped.result == [0, 1, 2, 3]
    assert states_loader.calls == 1
    assert len(mapped.map_states) == 4
    assert mapped.map_states is mapped.map_states
    assert states_loader.calls == 1


def test_mapped_lazy_with_result_loader() -> None:
    children = [Success(result=i) for i in range(3)]
    states_loader = CountingLoader(children)
    result_loader = CountingLoader([10, 11, 12])
    mapped = Mapped._lazy(None, states_loader, result_loader)
    assert mapped.result == [10, 11, 12]
    assert mapped.result == [10, 11, 12]
    assert (states_loader.calls, result_loader.calls) == (0, 1)
    assert mapped.map_states is children
    assert mapped.map_states is children
    assert states_loader.calls == 1


def test_mapped_map_states_setter() -> None:
    mapped = Mapped._lazy(None, CountingLoader([Failed()]))
    mapped.map_states = [Success(result=1)]
    assert [s.result for s in mapped.map_states] == [1]


def roundtrips() -> list[Callable[[Any], Any]]:
    return [
        lambda s: pickle.loads(pickle.dumps(s)),
        copy.copy,
        copy.deepcopy,
    ]


@pytest.mark.parametrize("roundtrip", roundtrips(), ids=["pickle", "copy", "deepcopy"])
def test_pickle_and_copy_keep_fields_and_load_lazy_values(
    roundtrip: Callable[[Any], Any],
) -> None:
    when = datetime(2030, 1, 1, tzinfo=timezone.utc)
    retry = roundtrip(Retrying("r", 1, start_time=when, run_count=3))
    assert type(retry) is Retrying
    assert (retry.message, retry.result, retry.start_time, retry.run_count) == ("r", 1, when, 3)

    lazy = roundtrip(Success._lazy_result("lazy", lambda: {"k": 1}))
    assert lazy.result == {"k": 1}

    mapped = roundtrip(Mapped._lazy("m", lambda: [Success(result=1), Skipped()]))
    assert type(mapped) is Mapped
    assert mapped.result == [1, None]
    assert [type(s) for s in mapped.map_states] == [Success, Skipped]

    loop = roundtrip(Looped("l", 2, loop_count=4))
    assert (loop.message, loop.result, loop.loop_count) == ("l", 2, 4)
