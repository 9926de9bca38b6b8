"""Running a flow on its schedule in this process (``flow.run()`` with a schedule).

The loop, as in Prefect Core 1.x: ask the schedule for its next event after now, sleep
until then, run the flow once with the event's ``parameter_defaults`` under the explicit
parameters, and repeat; a time that passed while a run was still going is skipped, never
run late or twice. It ends when the schedule has no more times and returns the last run's
state. Ctrl-C while sleeping raises ``KeyboardInterrupt`` from the sleep, with nothing
chained to it. Ctrl-C during a run is the engine's: the run is recorded ``Cancelled``
and ``KeyboardInterrupt`` is raised, which ends the loop too; a run that ends
``Cancelled`` without raising ends the loop and its state is returned.

It knows nothing of the engine: ``Flow.run`` hands it ``run_once`` and ``check``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ferroflow.exceptions import ScheduleError
from ferroflow.schedules import ClockEvent, Schedule
from ferroflow.schedules._time import now_utc
from ferroflow.states import Cancelled

__all__ = ["run_on_schedule"]

logger = logging.getLogger("ferroflow.schedules")

_S = TypeVar("_S")

# Sleep in slices of at most this long, so a change of the system clock is noticed.
_MAX_NAP = 1.0


def _sleep_until(event: ClockEvent) -> None:
    target = event.instant
    while True:
        remaining = (target - now_utc()).total_seconds()
        if remaining <= 0:
            return
        time.sleep(min(remaining, _MAX_NAP))


def run_on_schedule(
    schedule: Any,
    run_once: Callable[[dict[str, Any]], _S],
    parameters: Mapping[str, Any],
    check: Callable[[dict[str, Any]], object] | None = None,
    flow_name: str = "flow",
) -> _S:
    """Run ``run_once(params)`` at each time of ``schedule`` until it ends.

    Args:
        schedule: a :class:`~ferroflow.schedules.Schedule`.
        run_once: runs the flow once with the given parameter values; returns its state.
        parameters: the explicit parameter values; each event's ``parameter_defaults`` go
            under them.
        check: called with each run's parameters before waiting for it, so that a bad
            value fails now rather than at the scheduled time.
        flow_name: for log lines and errors.

    Returns:
        The last run's state: when the schedule ends, or when a run ends ``Cancelled``.

    Raises:
        ScheduleError: ``schedule`` is not a Schedule, or it has no time after now.
        KeyboardInterrupt: Ctrl-C.

    Example:
        >>> from datetime import datetime, timedelta, timezone
        >>> from ferroflow.schedules.clocks import DatesClock
        >>> soon = datetime.now(timezone.utc) + timedelta(milliseconds=10)
        >>> run_on_schedule(Schedule([DatesClock([soon], {"n": 2})]), lambda p: p["n"] * 21, {})
        42
    """
    if not isinstance(schedule, Schedule):
        raise ScheduleError(
            f"flow {flow_name!r} has schedule={schedule!r}, which is not a "
            "ferroflow.schedules.Schedule",
            argument="schedule",
        )
    explicit = dict(parameters)
    after = now_utc()
    ran = False
    last: _S | None = None
    while True:
        upcoming = schedule.next(1, after=after, return_events=True)
        if not upcoming:
            if not ran:
                raise ScheduleError(
                    f"the schedule of flow {flow_name!r} has no time after now "
                    f"({after.isoformat()}); pass run_on_schedule=False to run it once now",
                    argument="schedule",
                )
            assert last is not None
            return last
        event = upcoming[0]
        params = {**event.parameter_defaults, **explicit}
        if check is not None:
            check(params)
        logger.info("flow %r: next run at %s", flow_name, event.start_time.isoformat())
        _sleep_until(event)
        last = run_once(params)
        ran = True
        if isinstance(last, Cancelled):
            return last
        # Never the same time twice; times that passed during the run are skipped.
        after = max(event.instant, now_utc())
