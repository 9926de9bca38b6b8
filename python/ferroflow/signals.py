"""Signals: raise one inside a task to choose the state the run ends in.

Signals derive from ``BaseException``, not ``Exception``, so a broad
``except Exception:`` in user code does not swallow them.

Example:
    >>> from ferroflow import signals
    >>> def check(n):
    ...     if n < 0:
    ...         raise signals.SKIP("negative input")
    ...     return n
    >>> try:
    ...     check(-1)
    ... except signals.SKIP as sig:
    ...     sig.to_state()
    <Skipped: "negative input">

For the engine: each class carries ``state`` (the State class it produces) and ``code``
(that class's ``u8`` code in ``ferroflow.states.BY_CODE``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from ferroflow.states import (
    Failed,
    Looped,
    Paused,
    Retrying,
    Skipped,
    State,
    Success,
    TriggerFailed,
)

__all__ = ["FAIL", "LOOP", "PAUSE", "RETRY", "SKIP", "SUCCESS", "TRIGGERFAIL", "FerroflowSignal"]


def _code_of(state: type[State]) -> int:
    """``state.code``: the code a signal that produces ``state`` carries, for the engine."""
    if state.code is None:
        raise TypeError(f"a signal needs a concrete state class, got {state.__name__}")
    return state.code


class FerroflowSignal(BaseException):
    """Base class of the signals. Raised directly, it is treated like :class:`FAIL`.

    Args:
        message: the message of the resulting state.
        result: the result of the resulting state.

    Attributes:
        message: the message given to the constructor (or ``None``).
        result: the result given to the constructor (or ``None``).
        state: the State class this signal turns the run into.
        code: ``state.code``, for the engine (each subclass gets its own state's code).

    Example:
        >>> sig = SUCCESS("early exit", result=3)
        >>> sig.message, sig.result, sig.state.__name__
        ('early exit', 3, 'Success')
        >>> isinstance(sig, Exception)
        False
    """

    state: ClassVar[type[State]] = Failed
    code: ClassVar[int] = _code_of(Failed)

    message: str | None
    result: Any

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.code = _code_of(cls.state)

    def __init__(self, message: str | None = None, result: Any = None) -> None:
        if message is None:
            super().__init__()
        else:
            super().__init__(message)
        self.message = message
        self.result = result

    def __reduce__(self) -> tuple[Any, ...]:
        # BaseException pickles only ``args``; keep ``result`` too (process executors).
        return (type(self), (self.message, self.result))

    def __repr__(self) -> str:
        if self.message is None:
            return f"{type(self).__name__}()"
        return f"{type(self).__name__}({self.message!r})"

    def to_state(self) -> State:
        """Build the state this signal stands for, with its message and result.

        For the failure signals (``FAIL``, ``TRIGGERFAIL``) without a ``result``, the
        state's result is the signal itself, like any other failure's exception.

        Example:
            >>> LOOP(result=5).to_state()
            <Looped>
            >>> f = FAIL("bad row").to_state()
            >>> f, type(f.result).__name__
            (<Failed: "bad row">, 'FAIL')
        """
        result = self.result
        if result is None and issubclass(self.state, Failed):
            result = self
        return self.state(self.message, result)


class FAIL(FerroflowSignal):
    """Fail the run (``Failed``); retries apply as for any error.

    Example:
        >>> FAIL("bad input").to_state().is_failed()
        True
    """

    state = Failed


class TRIGGERFAIL(FAIL):
    """Fail the run with ``TriggerFailed``; raised by triggers that are not satisfied.

    Example:
        >>> TRIGGERFAIL("no upstream succeeded").to_state()
        <TriggerFailed: "no upstream succeeded">
    """

    state = TriggerFailed


class SUCCESS(FerroflowSignal):
    """End the run as ``Success`` with ``result`` as its value.

    Example:
        >>> SUCCESS(result=42).to_state().result
        42
    """

    state = Success


class SKIP(FerroflowSignal):
    """End the run as ``Skipped`` (downstream tasks are skipped too, by default).

    Example:
        >>> SKIP("nothing to do").to_state().is_skipped()
        True
    """

    state = Skipped


class RETRY(FerroflowSignal):
    """Retry the run (``Retrying``), even past ``max_retries``.

    Example:
        >>> RETRY("not ready yet").to_state().is_retrying()
        True
    """

    state = Retrying


class LOOP(FerroflowSignal):
    """Run the task again; ``result`` becomes the next iteration's ``task_loop_result``.

    Example:
        >>> LOOP("iteration 1", result={"page": 2}).result
        {'page': 2}
    """

    state = Looped


class PAUSE(FerroflowSignal):
    """Pause the run (``Paused``) until it is resumed.

    Example:
        >>> PAUSE("waiting for approval").to_state().is_scheduled()
        True
    """

    state = Paused
