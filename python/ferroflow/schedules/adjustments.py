"""Adjustments: functions that move a schedule's times after the filters (Prefect Core
1.x's set).

An adjustment is any callable ``f(dt) -> datetime`` applied, in order, to each time that
passed the filters; ``dt`` is an aware datetime in the clock's time zone. A schedule never
gives one instant twice, so times that adjust onto an instant already given are dropped
(``next_weekday`` folds Saturday and Sunday onto Monday).

``Schedule.next(after=t)`` must also return the times that an adjustment moves from before
``t`` to after it, so it starts the clocks ``max_shift`` earlier: the largest amount the
adjustment can move a time forward. The built-ins carry it; a custom adjustment that moves
times forward should have a ``max_shift`` attribute (a ``timedelta``), else ``after``
applies to the clocks' own times, as in Prefect 1. Adjustments should keep times in order
(never move a later time before an earlier one).

Example:
    >>> from datetime import datetime, timedelta, timezone
    >>> saturday = datetime(2026, 1, 3, 9, tzinfo=timezone.utc)
    >>> next_weekday(saturday).strftime("%a %H:%M"), add(timedelta(hours=2))(saturday).hour
    ('Mon 09:00', 11)
"""

from __future__ import annotations

from datetime import datetime, timedelta

from ferroflow.exceptions import ScheduleError
from ferroflow.schedules._time import shift, wall_add

__all__ = ["add", "next_weekday"]

_ONE_DAY = timedelta(days=1)


class _Add:
    def __init__(self, interval: timedelta) -> None:
        if not isinstance(interval, timedelta):
            raise ScheduleError(
                f"interval must be a datetime.timedelta, got {type(interval).__name__} "
                f"{interval!r}",
                argument="interval",
            )
        self.interval = interval
        # Wall-clock arithmetic can move a time by the zone's offset change on top (at most
        # a day: Pacific/Apia skipped 2011-12-30).
        slack = _ONE_DAY if abs(interval) >= _ONE_DAY else timedelta(0)
        self.max_shift = max(interval, timedelta(0)) + slack

    def __call__(self, dt: datetime) -> datetime:
        return shift(dt, self.interval)

    def __repr__(self) -> str:
        return f"add({self.interval!r})"


def add(interval: timedelta) -> _Add:
    """An adjustment that adds ``interval`` to each time.

    Same rule as ``IntervalClock``: an interval of a day or more (either sign) moves the
    local wall time (09:00 + 1 day is 09:00 the next day, across a DST change; a wall time
    that does not exist becomes the end of the gap, one that happens twice the first); a
    shorter one moves in absolute time.

    Args:
        interval: a ``timedelta`` (may be negative).

    Example:
        >>> from datetime import datetime, timedelta
        >>> from zoneinfo import ZoneInfo
        >>> t = datetime(2026, 3, 7, 9, tzinfo=ZoneInfo("America/New_York"))
        >>> add(timedelta(days=1))(t).isoformat()
        '2026-03-08T09:00:00-04:00'
    """
    return _Add(interval)


class _NextWeekday:
    """An adjustment that moves a Saturday or Sunday time to the following Monday, at the
    same local wall time; weekday times are unchanged.

    Example:
        >>> from datetime import datetime, timezone
        >>> next_weekday(datetime(2026, 1, 4, 8, tzinfo=timezone.utc)).strftime("%a %H:%M")
        'Mon 08:00'
    """

    max_shift = timedelta(days=3)

    def __call__(self, dt: datetime) -> datetime:
        weekday = dt.weekday()
        if weekday < 5:
            return dt
        return wall_add(dt, timedelta(days=7 - weekday))

    def __repr__(self) -> str:
        return "next_weekday"


next_weekday = _NextWeekday()
