"""The states of a task run or a flow run.

A state tells where a run stands (``Pending``, ``Running``, ...) or how it ended
(``Success``, ``Failed``, ...). Every state has a ``message`` and a ``result``; the
``is_*`` methods are ``isinstance`` checks against the hierarchy below, so a ``Skipped``
run counts as successful and a ``TriggerFailed`` run as failed::

    State
    ├── Pending
    │   └── Scheduled
    │       ├── Paused
    │       ├── Resume
    │       └── Retrying
    ├── Running
    └── Finished
        ├── Success
        │   ├── Cached
        │   ├── Mapped
        │   └── Skipped
        ├── Failed
        │   ├── TimedOut
        │   └── TriggerFailed
        ├── Cancelled
        └── Looped

Example:
    >>> from ferroflow.states import Skipped
    >>> s = Skipped("upstream skipped")
    >>> s.is_successful(), s.is_skipped(), s.is_failed()
    (True, True, False)
    >>> s
    <Skipped: "upstream skipped">

Notes for the engine: states are cheap ``__slots__`` objects compared by identity. A
state's ``result`` (and a ``Mapped`` state's ``map_states``) can be computed lazily, on
first access, from a zero-argument loader: see :meth:`State._lazy_result` and
:meth:`Mapped._lazy`. ``BY_CODE`` maps the core's ``u8`` state codes to the classes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from ferroflow._native import STATE_CODES as _CODES

if TYPE_CHECKING:
    from datetime import datetime

__all__ = [
    "Cached",
    "Cancelled",
    "Failed",
    "Finished",
    "Looped",
    "Mapped",
    "Paused",
    "Pending",
    "Resume",
    "Retrying",
    "Running",
    "Scheduled",
    "Skipped",
    "State",
    "Success",
    "TimedOut",
    "TriggerFailed",
]

_S = TypeVar("_S", bound="State")
_M = TypeVar("_M", bound="Mapped")

Loader = Callable[[], Any]

# Held only while a lazily computed value is published (never while a loader runs), so a
# loader may freely read other lazy states. Two threads that race on a first access may
# both run the loader; exactly one value is kept and returned to both.
_PUBLISH_LOCK = threading.Lock()


def _derive_from_children() -> Any:  # pragma: no cover - a marker, never called
    raise AssertionError("marker only")


# Marks a Mapped state whose result is the list of its children's results.
_DERIVE: Loader = _derive_from_children

_SLOT_NAMES: dict[type, tuple[str, ...]] = {}


def _slot_names(cls: type) -> tuple[str, ...]:
    names = _SLOT_NAMES.get(cls)
    if names is None:
        collected: list[str] = []
        for klass in reversed(cls.__mro__):
            slots = klass.__dict__.get("__slots__", ())
            if isinstance(slots, str):
                slots = (slots,)
            collected.extend(s for s in slots if s not in ("__dict__", "__weakref__"))
        names = _SLOT_NAMES[cls] = tuple(collected)
    return names


class State:
    """Base class of all states.

    Args:
        message: a human-readable note on why the run is in this state.
        result: the value the state carries: a task's return value for ``Success``, the
            exception (with its traceback) for ``Failed``.

    Attributes:
        message: the message given to the constructor (or ``None``).
        code: the core's ``u8`` code for this class (``None`` for the abstract ``State``
            and ``Finished``); ``BY_CODE[cls.code] is cls``.

    Example:
        >>> from ferroflow.states import Success
        >>> s = Success("done", result=42)
        >>> s.result, s.message
        (42, 'done')
        >>> s.is_finished()
        True
    """

    __slots__ = ("_loader", "_result", "message")

    code: ClassVar[int | None] = None

    message: str | None
    _result: Any
    _loader: Loader | None

    def __init__(self, message: str | None = None, result: Any = None) -> None:
        self.message = message
        self._result = result
        self._loader = None

    @classmethod
    def _lazy_result(cls: type[_S], message: str | None, loader: Loader, **fields: Any) -> _S:
        """Make a state whose ``result`` is ``loader()``, computed on first access.

        For the engine: the loader is called at most once in single-threaded use, and its
        value is cached; if it raises, the error propagates and the next access tries
        again. ``fields`` are the class's extra constructor arguments (``run_count=``...).

        Example:
            >>> from ferroflow.states import Success
            >>> s = Success._lazy_result("done", lambda: 6 * 7)
            >>> s.result
            42
        """
        state = cls(message, None, **fields)
        state._loader = loader
        return state

    @property
    def result(self) -> Any:
        """The value this state carries (computed on first access for a lazy state).

        Example:
            >>> from ferroflow.states import Failed
            >>> Failed("boom", result=ValueError("boom")).result
            ValueError('boom')
        """
        if self._loader is None:
            return self._result
        return self._load_result()

    @result.setter
    def result(self, value: Any) -> None:
        with _PUBLISH_LOCK:
            self._result = value
            self._loader = None

    def _load_result(self) -> Any:
        loader = self._loader
        if loader is None:
            return self._result
        if loader is _DERIVE:
            value = [child.result for child in self._children()]
        else:
            value = loader()
        with _PUBLISH_LOCK:
            if self._loader is loader:
                self._result = value
                self._loader = None
            return self._result

    def _children(self) -> list[State]:
        return []

    def __repr__(self) -> str:
        name = type(self).__name__
        if self.message is None:
            return f"<{name}>"
        return f'<{name}: "{self.message}">'

    # Pickling and copying load lazy values first, so a state travels as plain data.
    def __getstate__(self) -> dict[str, Any]:
        self._force()
        state: dict[str, Any] = {}
        for name in _slot_names(type(self)):
            try:
                state[name] = object.__getattribute__(self, name)
            except AttributeError:
                continue
        instance_dict = getattr(self, "__dict__", None)
        if instance_dict:
            state.update(instance_dict)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)

    def _force(self) -> None:
        if self._loader is not None:
            self._load_result()

    def is_pending(self) -> bool:
        """True for ``Pending`` and its subclasses (``Scheduled``, ``Paused``, ``Resume``,
        ``Retrying``).

        Example:
            >>> Retrying().is_pending()
            True
        """
        return isinstance(self, Pending)

    def is_scheduled(self) -> bool:
        """True for ``Scheduled`` and its subclasses (``Paused``, ``Resume``, ``Retrying``).

        Example:
            >>> Paused().is_scheduled(), Pending().is_scheduled()
            (True, False)
        """
        return isinstance(self, Scheduled)

    def is_retrying(self) -> bool:
        """True for ``Retrying``.

        Example:
            >>> Retrying().is_retrying()
            True
        """
        return isinstance(self, Retrying)

    def is_running(self) -> bool:
        """True for ``Running``.

        Example:
            >>> Running().is_running()
            True
        """
        return isinstance(self, Running)

    def is_finished(self) -> bool:
        """True for ``Finished`` and all its subclasses.

        Example:
            >>> Failed().is_finished(), Running().is_finished()
            (True, False)
        """
        return isinstance(self, Finished)

    def is_successful(self) -> bool:
        """True for ``Success`` and its subclasses (``Cached``, ``Mapped``, ``Skipped``).

        Example:
            >>> Skipped().is_successful()
            True
        """
        return isinstance(self, Success)

    def is_failed(self) -> bool:
        """True for ``Failed`` and its subclasses (``TimedOut``, ``TriggerFailed``).

        Example:
            >>> TriggerFailed().is_failed()
            True
        """
        return isinstance(self, Failed)

    def is_skipped(self) -> bool:
        """True for ``Skipped``.

        Example:
            >>> Skipped().is_skipped(), Success().is_skipped()
            (True, False)
        """
        return isinstance(self, Skipped)

    def is_mapped(self) -> bool:
        """True for ``Mapped``.

        Example:
            >>> Mapped().is_mapped()
            True
        """
        return isinstance(self, Mapped)

    def is_cached(self) -> bool:
        """True for ``Cached``.

        Example:
            >>> Cached(result=1).is_cached()
            True
        """
        return isinstance(self, Cached)

    def is_looped(self) -> bool:
        """True for ``Looped``.

        Example:
            >>> Looped(loop_count=2).is_looped()
            True
        """
        return isinstance(self, Looped)


class Pending(State):
    """The run has not started yet.

    Example:
        >>> Pending().is_pending()
        True
    """

    __slots__ = ()
    code = _CODES["Pending"]


class Scheduled(Pending):
    """The run will start at ``start_time`` (``None``: as soon as it is ready).

    Args:
        message: see :class:`State`.
        result: see :class:`State`.
        start_time: when the run may start.

    Example:
        >>> from datetime import datetime, timezone
        >>> s = Scheduled(start_time=datetime(2030, 1, 1, tzinfo=timezone.utc))
        >>> s.start_time.year
        2030
    """

    __slots__ = ("start_time",)
    code = _CODES["Scheduled"]

    start_time: datetime | None

    def __init__(
        self,
        message: str | None = None,
        result: Any = None,
        start_time: datetime | None = None,
    ) -> None:
        super().__init__(message, result)
        self.start_time = start_time


class Paused(Scheduled):
    """The run waits for manual approval (``manual_only`` trigger or a ``PAUSE`` signal).

    Example:
        >>> Paused("waiting for approval").is_scheduled()
        True
    """

    __slots__ = ()
    code = _CODES["Paused"]


class Resume(Scheduled):
    """A paused run that was approved and will run, skipping its trigger check.

    Example:
        >>> Resume().is_pending()
        True
    """

    __slots__ = ()
    code = _CODES["Resume"]


class Retrying(Scheduled):
    """A failed run that will run again at ``start_time``.

    Args:
        message: see :class:`State`.
        result: see :class:`State`.
        start_time: when the retry may start.
        run_count: how many times the task has run so far.

    Example:
        >>> r = Retrying("retry 1 of 3", run_count=1)
        >>> r.run_count, r.is_retrying(), r.is_finished()
        (1, True, False)
    """

    __slots__ = ("run_count",)
    code = _CODES["Retrying"]

    run_count: int

    def __init__(
        self,
        message: str | None = None,
        result: Any = None,
        start_time: datetime | None = None,
        run_count: int = 0,
    ) -> None:
        super().__init__(message, result, start_time)
        self.run_count = run_count


class Running(State):
    """The run is executing.

    Example:
        >>> Running().is_running()
        True
    """

    __slots__ = ()
    code = _CODES["Running"]


class Finished(State):
    """Base class of the states a run ends in.

    Example:
        >>> Success().is_finished(), Cancelled().is_finished()
        (True, True)
    """

    __slots__ = ()


class Success(Finished):
    """The run succeeded; ``result`` is the task's return value.

    Example:
        >>> Success(result=[1, 2]).result
        [1, 2]
    """

    __slots__ = ()
    code = _CODES["Success"]


class Cached(Success):
    """The run did not execute: its result came from the cache or an existing target.

    Example:
        >>> c = Cached("target exists", result=3)
        >>> c.is_cached(), c.is_successful()
        (True, True)
    """

    __slots__ = ()
    code = _CODES["Cached"]


class Mapped(Success):
    """A mapped task: one child run per element of its mapped inputs.

    ``map_states`` holds the children's final states; ``result`` is the list of the
    children's results (when ``result`` is not given, it is derived from ``map_states``
    on first access).

    Args:
        message: see :class:`State`.
        result: the list of child results; ``None`` derives it from ``map_states``.
        map_states: the children's states, one per child (default: none).

    Example:
        >>> m = Mapped("3 children", map_states=[Success(result=i) for i in range(3)])
        >>> m.result
        [0, 1, 2]
        >>> [s.is_successful() for s in m.map_states]
        [True, True, True]
    """

    __slots__ = ("_map_loader", "_map_states")
    code = _CODES["Mapped"]

    _map_states: list[State]
    _map_loader: Callable[[], list[State]] | None

    def __init__(
        self,
        message: str | None = None,
        result: Any = None,
        map_states: list[State] | None = None,
    ) -> None:
        super().__init__(message, result)
        self._map_states = [] if map_states is None else map_states
        self._map_loader = None
        if result is None:
            self._loader = _DERIVE

    @classmethod
    def _lazy(
        cls: type[_M],
        message: str | None,
        map_states_loader: Callable[[], list[State]],
        result_loader: Loader | None = None,
    ) -> _M:
        """Make a Mapped state whose ``map_states`` (and ``result``) load on first access.

        For the engine: ``map_states_loader()`` returns the list of child states; it is
        called once and cached. Without ``result_loader`` the result is the list of the
        children's results, built on first access to ``result``.

        Example:
            >>> m = Mapped._lazy("2 children", lambda: [Success(result=1), Failed()])
            >>> len(m.map_states), m.result
            (2, [1, None])
        """
        state = cls(message)
        state._map_loader = map_states_loader
        if result_loader is not None:
            state._loader = result_loader
        return state

    @property
    def map_states(self) -> list[State]:
        """The final states of the children, one per child, in map-index order.

        Example:
            >>> Mapped(map_states=[Skipped()]).map_states
            [<Skipped>]
        """
        loader = self._map_loader
        if loader is None:
            return self._map_states
        value = loader()
        with _PUBLISH_LOCK:
            if self._map_loader is loader:
                self._map_states = value
                self._map_loader = None
            return self._map_states

    @map_states.setter
    def map_states(self, value: list[State]) -> None:
        with _PUBLISH_LOCK:
            self._map_states = value
            self._map_loader = None

    def _children(self) -> list[State]:
        return self.map_states

    def _force(self) -> None:
        if self._map_loader is not None:
            _ = self.map_states
        super()._force()


class Skipped(Success):
    """The run was skipped (an upstream was skipped, a ``case`` did not match, or the
    task raised ``SKIP``). It counts as successful.

    Example:
        >>> Skipped("case did not match").is_successful()
        True
    """

    __slots__ = ()
    code = _CODES["Skipped"]


class Looped(Finished):
    """The task raised ``LOOP`` and runs again; ``loop_count`` is the finished iteration.

    Args:
        message: see :class:`State`.
        result: the value passed on to the next iteration as ``task_loop_result``.
        loop_count: how many iterations have finished.

    Example:
        >>> Looped(result=10, loop_count=3).loop_count
        3
    """

    __slots__ = ("loop_count",)
    code = _CODES["Looped"]

    loop_count: int

    def __init__(self, message: str | None = None, result: Any = None, loop_count: int = 0) -> None:
        super().__init__(message, result)
        self.loop_count = loop_count


class Failed(Finished):
    """The run failed; ``result`` is the exception (with its ``__traceback__``).

    Example:
        >>> f = Failed("division by zero", result=ZeroDivisionError("division by zero"))
        >>> f.is_failed(), type(f.result).__name__
        (True, 'ZeroDivisionError')
    """

    __slots__ = ()
    code = _CODES["Failed"]


class TimedOut(Failed):
    """The run exceeded its ``timeout``. It counts as failed, so retries apply.

    Example:
        >>> TimedOut("exceeded 5.0 s").is_failed()
        True
    """

    __slots__ = ()
    code = _CODES["TimedOut"]


class TriggerFailed(Failed):
    """The task's trigger said no (or raised), so the task did not run.

    Example:
        >>> TriggerFailed('Trigger was "all_successful"').is_failed()
        True
    """

    __slots__ = ()
    code = _CODES["TriggerFailed"]


class Cancelled(Finished):
    """The run was cancelled (for example by Ctrl-C).

    Example:
        >>> c = Cancelled("KeyboardInterrupt")
        >>> c.is_finished(), c.is_failed()
        (True, False)
    """

    __slots__ = ()
    code = _CODES["Cancelled"]


BY_CODE: tuple[type[State], ...] = (
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
"""The state classes indexed by the core's ``u8`` state code.

Example:
    >>> BY_CODE[6] is Success and Success.code == 6
    True
"""

for _code, _cls in enumerate(BY_CODE):
    if _cls.code != _code:  # pragma: no cover - guards edits to the table above
        raise AssertionError(f"{_cls.__name__}.code is {_cls.code}, expected {_code}")
del _code, _cls
