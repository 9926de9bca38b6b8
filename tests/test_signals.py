"""Signals: BaseException, fields, the state each one stands for, codes, pickling."""

from __future__ import annotations

import pickle

import pytest

from ferroflow import signals
from ferroflow.signals import (
    FAIL,
    LOOP,
    PAUSE,
    RETRY,
    SKIP,
    SUCCESS,
    TRIGGERFAIL,
    FerroflowSignal,
)
from ferroflow.states import (
    BY_CODE,
    Failed,
    Looped,
    Paused,
    Retrying,
    Skipped,
    State,
    Success,
    TriggerFailed,
)

EXPECTED_STATE: dict[type[FerroflowSignal], type[State]] = {
    FAIL: Failed,
    TRIGGERFAIL: TriggerFailed,
    SUCCESS: Success,
    SKIP: Skipped,
    RETRY: Retrying,
    LOOP: Looped,
    PAUSE: Paused,
}

ALL_SIGNALS = list(EXPECTED_STATE)


def test_module_exports() -> None:
    spec_names = {"FAIL", "SUCCESS", "SKIP", "RETRY", "LOOP", "PAUSE", "TRIGGERFAIL"}
    assert spec_names <= set(signals.__all__)


@pytest.mark.parametrize("cls", ALL_SIGNALS, ids=lambda c: c.__name__)
def test_signals_are_base_exceptions_not_exceptions(cls: type[FerroflowSignal]) -> None:
    assert issubclass(cls, FerroflowSignal)
    assert issubclass(cls, BaseException)
    assert not issubclass(cls, Exception)


def test_except_exception_does_not_swallow_a_signal() -> None:
    def user_code() -> None:
        try:
            raise SKIP("nothing to do")
        except Exception:  # the broad handler users write
            pytest.fail("a signal was caught by `except Exception`")

    with pytest.raises(SKIP, match="nothing to do"):
        user_code()


def test_triggerfail_is_a_fail() -> None:
    assert issubclass(TRIGGERFAIL, FAIL)
    with pytest.raises(FAIL):
        raise TRIGGERFAIL("trigger said no")


@pytest.mark.parametrize("cls", ALL_SIGNALS, ids=lambda c: c.__name__)
def test_state_and_code(cls: type[FerroflowSignal]) -> None:
    assert cls.state is EXPECTED_STATE[cls]
    assert BY_CODE[cls.code] is cls.state


@pytest.mark.parametrize("cls", ALL_SIGNALS, ids=lambda c: c.__name__)
def test_message_and_result(cls: type[FerroflowSignal]) -> None:
    sig = cls("why", result={"v": 1})
    assert sig.message == "why"
    assert sig.result == {"v": 1}
    assert str(sig) == "why"
    assert sig.args == ("why",)

    bare = cls()
    assert bare.message is None and bare.result is None
    assert str(bare) == ""
    assert repr(bare) == f"{cls.__name__}()"
    assert repr(cls("x")) == f"{cls.__name__}('x')"


def test_result_keyword() -> None:
    assert SUCCESS(result=42).result == 42
    assert LOOP(result=[1]).result == [1]


@pytest.mark.parametrize("cls", ALL_SIGNALS, ids=lambda c: c.__name__)
def test_to_state(cls: type[FerroflowSignal]) -> None:
    state = cls("why", result=3).to_state()
    assert type(state) is EXPECTED_STATE[cls]
    assert (state.message, state.result) == ("why", 3)


def test_failure_signals_without_result_carry_themselves() -> None:
    sig = FAIL("bad row")
    state = sig.to_state()
    assert state.result is sig
    trig = TRIGGERFAIL("no")
    assert trig.to_state().result is trig
    assert SKIP("s").to_state().result is None
    assert SUCCESS().to_state().result is None


def test_base_signal_behaves_like_fail() -> None:
    assert FerroflowSignal.state is Failed
    assert BY_CODE[FerroflowSignal.code] is Failed


@pytest.mark.parametrize("cls", ALL_SIGNALS, ids=lambda c: c.__name__)
def test_pickle_keeps_message_and_result(cls: type[FerroflowSignal]) -> None:
    back = pickle.loads(pickle.dumps(cls("why", result=[1, 2])))
    assert type(back) is cls
    assert (back.message, back.result, str(back)) == ("why", [1, 2], "why")
    bare = pickle.loads(pickle.dumps(cls()))
    assert bare.message is None and bare.result is None


def test_a_user_signal_gets_its_own_states_code() -> None:
    """The engine reads a signal's code; a subclass that names another state must not
    carry its parent's code."""
    from ferroflow import Flow, task
    from ferroflow.signals import FAIL
    from ferroflow.states import Skipped

    class SkipInstead(FAIL):
        state = Skipped

    assert SkipInstead.code == Skipped.code

    @task
    def t() -> None:
        raise SkipInstead("not today")

    with Flow("user-signal") as flow:
        r = t()
    state = flow.run(record=False)
    assert isinstance(state.result[r], Skipped)
    assert state.result[r].message == "not today"
