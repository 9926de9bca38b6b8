"""Triggers: decide whether a task runs, once all its upstream tasks have finished.

A trigger is any callable that takes ``{edge: state}`` (one entry per upstream edge; only
``.values()`` is read) and returns a bool. A trigger that returns ``False`` or raises
``signals.TRIGGERFAIL`` leaves the task ``TriggerFailed``; one that raises another signal
gives that signal's state (``manual_only`` raises ``PAUSE``, ``not_all_skipped`` may
raise ``SKIP``). The built-ins raise ``TRIGGERFAIL`` with a message that gives the
counts, and return ``True`` otherwise.

Rules shared by all built-ins (the Rust fast path implements the same):

* A ``Mapped`` upstream state counts as its children's states (``map_states``), so a
  trigger on a reduce edge sees every child.
* With no upstream states at all (a root task, or only empty maps), every built-in is
  satisfied, except ``manual_only``, which always pauses. (Prefect Core treats an empty
  upstream the same way for ``any_*`` and ``some_*``; ferroflow extends it to
  ``not_all_skipped``.)
* ``Skipped`` counts as successful, ``TriggerFailed`` and ``TimedOut`` as failed.

Example:
    >>> from ferroflow.states import Failed, Success
    >>> from ferroflow import triggers
    >>> triggers.any_successful({"a": Success(), "b": Failed()})
    True
    >>> triggers.all_successful({"a": Success(), "b": Failed()})
    Traceback (most recent call last):
    ...
    ferroflow.signals.TRIGGERFAIL: Trigger was "all_successful" but 1 of 2 upstream tasks failed.

For the engine: every built-in trigger carries ``_ff_builtin``, a tuple naming it and its
bounds, e.g. ``("all_successful",)`` or ``("some_failed", 0.5, None)``;
:func:`_builtin_spec` reads it. A wrapper made with ``functools.wraps`` copies the
attribute but is not the built-in: it is called like any custom trigger.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ferroflow import signals
from ferroflow.exceptions import TaskDefinitionError
from ferroflow.states import Mapped, State

__all__ = [
    "all_failed",
    "all_finished",
    "all_successful",
    "always_run",
    "any_failed",
    "any_successful",
    "manual_only",
    "not_all_skipped",
    "some_failed",
    "some_successful",
]

Trigger = Callable[[Mapping[Any, State]], bool]
"""The type of a trigger: ``(upstream_states: {edge: state}) -> bool``."""

_F = TypeVar("_F", bound=Callable[..., Any])

# Tolerance when a proportion times the number of upstream states is compared with a
# count, so that e.g. 0.3 of 10 upstreams means 3 (10 * 0.3 == 3.0000000000000004).
_EPSILON = 1e-9


def _builtin(*spec: Any) -> Callable[[_F], _F]:
    def mark(fn: _F) -> _F:
        fn.__dict__["_ff_builtin"] = spec
        return fn

    return mark


def _builtin_spec(trigger: Any) -> tuple[Any, ...] | None:
    """The engine's name and bounds of a built-in trigger (e.g. ``("some_failed", 0.5,
    None)``), or None for any other callable, including one that wraps a built-in.

    Example:
        >>> _builtin_spec(all_successful), _builtin_spec(some_failed(at_least=2))
        (('all_successful',), ('some_failed', 2, None))
        >>> _builtin_spec(lambda states: True) is None
        True
    """
    attrs = getattr(trigger, "__dict__", {})
    if "__wrapped__" in attrs:  # functools.wraps copied the tag from what it wraps
        return None
    spec: tuple[Any, ...] | None = attrs.get("_ff_builtin")
    return spec


def _flat_states(upstream_states: Mapping[Any, State]) -> list[State]:
    states: list[State] = []
    for state in upstream_states.values():
        if isinstance(state, Mapped):
            states.extend(state.map_states)
        else:
            states.append(state)
    return states


def _tasks(n: int) -> str:
    return "upstream task" if n == 1 else "upstream tasks"


def _require_all(name: str, states: list[State], ok: Callable[[State], bool], verb: str) -> bool:
    """``True`` when every state is ``ok``; else ``TRIGGERFAIL`` counting those that are not."""
    bad = sum(1 for s in states if not ok(s))
    if bad:
        raise signals.TRIGGERFAIL(
            f'Trigger was "{name}" but {bad} of {len(states)} {_tasks(len(states))} {verb}.'
        )
    return True


def _require_any(name: str, states: list[State], ok: Callable[[State], bool], verb: str) -> bool:
    """``True`` when some state is ``ok`` or there are none; else ``TRIGGERFAIL``."""
    if states and not any(ok(s) for s in states):
        raise signals.TRIGGERFAIL(
            f'Trigger was "{name}" but none of the {len(states)} {_tasks(len(states))} {verb}.'
        )
    return True


@_builtin("all_finished")
def all_finished(upstream_states: Mapping[Any, State]) -> bool:
    """Run whatever the upstream states, once they are all finished (alias ``always_run``).

    Args:
        upstream_states: ``{edge: state}`` for every upstream edge.

    Raises:
        signals.TRIGGERFAIL: some upstream state is not finished (the engine never lets
            that happen, but a direct call can).

    Example:
        >>> from ferroflow.states import Failed, Skipped
        >>> all_finished({"a": Failed(), "b": Skipped()})
        True
    """
    return _require_all(
        "all_finished", _flat_states(upstream_states), State.is_finished, "did not finish"
    )


always_run = all_finished


@_builtin("manual_only")
def manual_only(upstream_states: Mapping[Any, State]) -> bool:
    """Never run automatically: always pause the task, whatever the upstream states.

    The run ends ``Paused``; once it is resumed (``Resume`` state) the engine runs it
    without calling the trigger again.

    Args:
        upstream_states: ``{edge: state}`` for every upstream edge (not read).

    Raises:
        signals.PAUSE: always.

    Example:
        >>> manual_only({})
        Traceback (most recent call last):
        ...
        ferroflow.signals.PAUSE: Trigger requires manual approval
    """
    raise signals.PAUSE("Trigger requires manual approval")


@_builtin("all_successful")
def all_successful(upstream_states: Mapping[Any, State]) -> bool:
    """Run when every upstream task succeeded (the default trigger).

    ``Skipped`` counts as a success, ``TriggerFailed`` as a failure.

    Args:
        upstream_states: ``{edge: state}`` for every upstream edge.

    Raises:
        signals.TRIGGERFAIL: some upstream task did not succeed.

    Example:
        >>> from ferroflow.states import Skipped, Success
        >>> all_successful({"a": Success(), "b": Skipped()})
        True
    """
    return _require_all(
        "all_successful", _flat_states(upstream_states), State.is_successful, "failed"
    )


@_builtin("all_failed")
def all_failed(upstream_states: Mapping[Any, State]) -> bool:
    """Run when every upstream task failed.

    Args:
        upstream_states: ``{edge: state}`` for every upstream edge.

    Raises:
        signals.TRIGGERFAIL: some upstream task did not fail.

    Example:
        >>> from ferroflow.states import Failed, TimedOut
        >>> all_failed({"a": Failed(), "b": TimedOut()})
        True
    """
    return _require_all(
        "all_failed", _flat_states(upstream_states), State.is_failed, "did not fail"
    )


@_builtin("any_successful")
def any_successful(upstream_states: Mapping[Any, State]) -> bool:
    """Run when at least one upstream task succeeded (or there are no upstream states).

    Args:
        upstream_states: ``{edge: state}`` for every upstream edge.

    Raises:
        signals.TRIGGERFAIL: no upstream task succeeded.

    Example:
        >>> from ferroflow.states import Failed, Success
        >>> any_successful({"a": Failed(), "b": Success()})
        True
    """
    return _require_any(
        "any_successful", _flat_states(upstream_states), State.is_successful, "succeeded"
    )


@_builtin("any_failed")
def any_failed(upstream_states: Mapping[Any, State]) -> bool:
    """Run when at least one upstream task failed (or there are no upstream states).

    Args:
        upstream_states: ``{edge: state}`` for every upstream edge.

    Raises:
        signals.TRIGGERFAIL: no upstream task failed.

    Example:
        >>> from ferroflow.states import Failed, Success
        >>> any_failed({"a": Failed(), "b": Success()})
        True
    """
    return _require_any("any_failed", _flat_states(upstream_states), State.is_failed, "failed")


@_builtin("not_all_skipped")
def not_all_skipped(upstream_states: Mapping[Any, State]) -> bool:
    """Run when every upstream task succeeded and not all of them were skipped.

    Meant for tasks with ``skip_on_upstream_skip=False`` (e.g. after a ``case``).

    Args:
        upstream_states: ``{edge: state}`` for every upstream edge.

    Raises:
        signals.SKIP: every upstream task was skipped (the task is skipped too).
        signals.TRIGGERFAIL: some upstream task did not succeed.

    Example:
        >>> from ferroflow.states import Skipped, Success
        >>> not_all_skipped({"a": Skipped(), "b": Success()})
        True
    """
    states = _flat_states(upstream_states)
    if not states:
        return True
    if all(s.is_skipped() for s in states):
        raise signals.SKIP("All upstream tasks were skipped.")
    return _require_all("not_all_skipped", states, State.is_successful, "failed")


def _check_bound(name: str, value: int | float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TaskDefinitionError(
            f"{name} must be a number (a count, or a proportion below 1), got {value!r}"
        )
    if not math.isfinite(value) or value < 0:
        raise TaskDefinitionError(f"{name} must be a finite number >= 0, got {value!r}")


def _validate_bounds(
    fn_name: str, at_least: int | float | None, at_most: int | float | None
) -> None:
    _check_bound("at_least", at_least)
    _check_bound("at_most", at_most)
    if at_least is not None and at_most is not None:
        same_kind = (at_least < 1) == (at_most < 1)
        if same_kind and at_least > at_most:
            raise TaskDefinitionError(
                f"{fn_name}(at_least={at_least!r}, at_most={at_most!r}): "
                "at_least must not exceed at_most"
            )


def _lower(bound: int | float | None, total: int) -> int:
    if bound is None:
        return 0
    if bound < 1:
        return math.ceil(total * bound - _EPSILON)
    return math.ceil(bound)


def _upper(bound: int | float | None, total: int) -> int:
    if bound is None:
        return total
    if bound < 1:
        return math.floor(total * bound + _EPSILON)
    return math.floor(bound)


def _describe(at_least: int | float | None, at_most: int | float | None) -> str:
    parts = []
    if at_least is not None:
        parts.append(f"at_least={at_least!r}")
    if at_most is not None:
        parts.append(f"at_most={at_most!r}")
    return ", ".join(parts)


def _some(
    fn_name: str,
    verb: str,
    predicate: Callable[[State], bool],
    at_least: int | float | None,
    at_most: int | float | None,
) -> Trigger:
    _validate_bounds(fn_name, at_least, at_most)
    label = f"{fn_name}({_describe(at_least, at_most)})"

    @_builtin(fn_name, at_least, at_most)
    def trigger(upstream_states: Mapping[Any, State]) -> bool:
        states = _flat_states(upstream_states)
        total = len(states)
        if not total:
            return True
        count = sum(1 for s in states if predicate(s))
        low, high = _lower(at_least, total), _upper(at_most, total)
        if not low <= count <= high:
            raise signals.TRIGGERFAIL(
                f'Trigger was "{label}" but {count} of {total} {_tasks(total)} {verb}; '
                f"between {low} and {high} required."
            )
        return True

    trigger.__name__ = fn_name
    trigger.__qualname__ = label
    trigger.__doc__ = f"Trigger made by ``{label}``."
    return trigger


def some_successful(
    at_least: int | float | None = None, at_most: int | float | None = None
) -> Trigger:
    """Make a trigger that runs when the number of successful upstream tasks is in bounds.

    A bound below 1 is a proportion of the number of upstream states (``0.5``: half of
    them), otherwise a count; ``None`` leaves that side open. The trigger is satisfied
    when ``ceil(lower) <= successes <= floor(upper)``, where a proportion ``p`` of ``n``
    states gives ``n * p`` (compared with a tolerance of 1e-9). With no upstream states
    it is satisfied.

    Args:
        at_least: the fewest successes allowed.
        at_most: the most successes allowed.

    Returns:
        The trigger function.

    Raises:
        TaskDefinitionError: a bound is negative, not a finite number, or ``at_least >
            at_most`` (both counts or both proportions).

    Example:
        >>> from ferroflow.states import Failed, Success
        >>> half = some_successful(at_least=0.5)
        >>> half({"a": Success(), "b": Failed()})
        True
        >>> some_successful(at_least=2)({"a": Success(), "b": Failed()})
        Traceback (most recent call last):
        ...
        ferroflow.signals.TRIGGERFAIL: Trigger was "some_successful(at_least=2)" but 1 of 2 \
upstream tasks succeeded; between 2 and 2 required.
    """
    return _some("some_successful", "succeeded", State.is_successful, at_least, at_most)


def some_failed(at_least: int | float | None = None, at_most: int | float | None = None) -> Trigger:
    """Make a trigger that runs when the number of failed upstream tasks is in bounds.

    Bounds work as in :func:`some_successful`.

    Args:
        at_least: the fewest failures allowed.
        at_most: the most failures allowed.

    Returns:
        The trigger function.

    Raises:
        TaskDefinitionError: a bound is negative, not a finite number, or ``at_least >
            at_most`` (both counts or both proportions).

    Example:
        >>> from ferroflow.states import Failed, Success
        >>> some_failed(at_most=0.25)({"a": Success(), "b": Success(), "c": Failed()})
        Traceback (most recent call last):
        ...
        ferroflow.signals.TRIGGERFAIL: Trigger was "some_failed(at_most=0.25)" but 1 of 3 \
upstream tasks failed; between 0 and 0 required.
    """
    return _some("some_failed", "failed", State.is_failed, at_least, at_most)
