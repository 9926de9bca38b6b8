"""Filters: predicates on a clock's times (Prefect Core 1.x's set).

A filter is any callable ``f(dt) -> bool``; ``dt`` is an aware datetime in the clock's time
zone, so ``at_time``, ``between_times``, the date filters and the day-of-week filters read
the *local* wall clock. ``Schedule(filters=[...])`` keeps a time when every filter passes,
``or_filters`` when at least one passes, ``not_filters`` when none passes.

The factories (:func:`on_datetime`, :func:`on_date`, :func:`at_time`,
:func:`between_datetimes`, :func:`between_times`, :func:`between_dates`,
:func:`is_day_of_week`) check their arguments and return a small picklable callable with a
readable ``repr``; :func:`is_weekday`, :func:`is_weekend`, :func:`is_month_start` and
:func:`is_month_end` are filters themselves.

Example:
    >>> from datetime import datetime, time, timezone
    >>> t = datetime(2026, 1, 4, 9, 0, tzinfo=timezone.utc)  # a Sunday
    >>> at_time(time(9, 0))(t), is_weekday(t)
    (True, False)
"""

from __future__ import annotations

import calendar
from datetime import datetime, time

from ferroflow.exceptions import ScheduleError
from ferroflow.schedules._time import require_aware, to_utc

__all__ = [
    "at_time",
    "between_dates",
    "between_datetimes",
    "between_times",
    "is_day_of_week",
    "is_month_end",
    "is_month_start",
    "is_weekday",
    "is_weekend",
    "on_date",
    "on_datetime",
]


def _check_month_day(month: object, day: object, prefix: str) -> tuple[int, int]:
    if not isinstance(month, int) or isinstance(month, bool) or not 1 <= month <= 12:
        raise ScheduleError(
            f"{prefix}month must be an int from 1 to 12, got {month!r}", argument=f"{prefix}month"
        )
    # 2000 is a leap year: February 29 is a valid filter date.
    last = calendar.monthrange(2000, month)[1]
    if not isinstance(day, int) or isinstance(day, bool) or not 1 <= day <= last:
        raise ScheduleError(
            f"{prefix}day must be an int from 1 to {last} for month {month}, got {day!r}",
            argument=f"{prefix}day",
        )
    return month, day


def _check_time(value: object, argument: str) -> time:
    if not isinstance(value, time):
        raise ScheduleError(
            f"{argument} must be a datetime.time, got {type(value).__name__} {value!r}",
            argument=argument,
        )
    if value.tzinfo is not None:
        raise ScheduleError(
            f"{argument} must be a naive datetime.time (it is compared with the local wall "
            f"time of each event), got {value!r}",
            argument=argument,
        )
    return value


class _OnDatetime:
    def __init__(self, dt: datetime) -> None:
        self.dt = require_aware(dt, "dt")
        self._utc = to_utc(dt)

    def __call__(self, dt: datetime) -> bool:
        return to_utc(dt) == self._utc

    def __repr__(self) -> str:
        return f"on_datetime({self.dt.isoformat()})"


def on_datetime(dt: datetime) -> _OnDatetime:
    """A filter that passes only the instant ``dt``.

    Args:
        dt: an aware datetime.

    Example:
        >>> from datetime import datetime, timezone
        >>> f = on_datetime(datetime(2026, 1, 1, 12, tzinfo=timezone.utc))
        >>> f(datetime(2026, 1, 1, 12, tzinfo=timezone.utc))
        True
    """
    return _OnDatetime(dt)


class _OnDate:
    def __init__(self, month: int, day: int) -> None:
        self.month, self.day = _check_month_day(month, day, "")

    def __call__(self, dt: datetime) -> bool:
        return dt.month == self.month and dt.day == self.day

    def __repr__(self) -> str:
        return f"on_date({self.month}, {self.day})"


def on_date(month: int, day: int) -> _OnDate:
    """A filter that passes times on the given (local) month and day, every year.

    Args:
        month: 1 to 12.
        day: 1 to the month's last day (29 for February).

    Example:
        >>> from datetime import datetime, timezone
        >>> on_date(3, 14)(datetime(2027, 3, 14, 8, tzinfo=timezone.utc))
        True
    """
    return _OnDate(month, day)


class _AtTime:
    def __init__(self, t: time) -> None:
        self.t = _check_time(t, "t")

    def __call__(self, dt: datetime) -> bool:
        return dt.time() == self.t

    def __repr__(self) -> str:
        return f"at_time({self.t.isoformat()})"


def at_time(t: time) -> _AtTime:
    """A filter that passes times whose local wall time is exactly ``t``.

    Args:
        t: a naive ``datetime.time``.

    Example:
        >>> from datetime import datetime, time, timezone
        >>> at_time(time(9, 30))(datetime(2026, 1, 1, 9, 30, tzinfo=timezone.utc))
        True
    """
    return _AtTime(t)


class _BetweenDatetimes:
    def __init__(self, start: datetime, end: datetime) -> None:
        self.start = require_aware(start, "start")
        self.end = require_aware(end, "end")
        self._start, self._end = to_utc(start), to_utc(end)
        if self._end < self._start:
            raise ScheduleError(
                f"end {end.isoformat()} is before start {start.isoformat()}", argument="end"
            )

    def __call__(self, dt: datetime) -> bool:
        return self._start <= to_utc(dt) <= self._end

    def __repr__(self) -> str:
        return f"between_datetimes({self.start.isoformat()}, {self.end.isoformat()})"


def between_datetimes(start: datetime, end: datetime) -> _BetweenDatetimes:
    """A filter that passes instants from ``start`` to ``end``, both included.

    Args:
        start: an aware datetime.
        end: an aware datetime, not before ``start``.

    Example:
        >>> from datetime import datetime, timezone
        >>> utc = timezone.utc
        >>> start, end = datetime(2026, 1, 1, tzinfo=utc), datetime(2026, 2, 1, tzinfo=utc)
        >>> january = between_datetimes(start, end)
        >>> january(datetime(2026, 1, 15, tzinfo=utc))
        True
    """
    return _BetweenDatetimes(start, end)


class _BetweenTimes:
    def __init__(self, start: time, end: time) -> None:
        self.start = _check_time(start, "start")
        self.end = _check_time(end, "end")

    def __call__(self, dt: datetime) -> bool:
        t = dt.time()
        if self.start <= self.end:
            return self.start <= t <= self.end
        return t >= self.start or t <= self.end

    def __repr__(self) -> str:
        return f"between_times({self.start.isoformat()}, {self.end.isoformat()})"


def between_times(start: time, end: time) -> _BetweenTimes:
    """A filter that passes local wall times from ``start`` to ``end``, both included;
    when ``start`` is after ``end`` the window wraps around midnight.

    Args:
        start: a naive ``datetime.time``.
        end: a naive ``datetime.time``.

    Example:
        >>> from datetime import datetime, time, timezone
        >>> night = between_times(time(22), time(6))
        >>> utc = timezone.utc
        >>> night(datetime(2026, 1, 1, 23, tzinfo=utc)), night(datetime(2026, 1, 1, 12, tzinfo=utc))
        (True, False)
    """
    return _BetweenTimes(start, end)


class _BetweenDates:
    def __init__(self, start_month: int, start_day: int, end_month: int, end_day: int) -> None:
        self.start = _check_month_day(start_month, start_day, "start_")
        self.end = _check_month_day(end_month, end_day, "end_")

    def __call__(self, dt: datetime) -> bool:
        md = (dt.month, dt.day)
        if self.start <= self.end:
            return self.start <= md <= self.end
        return md >= self.start or md <= self.end

    def __repr__(self) -> str:
        return f"between_dates({self.start[0]}, {self.start[1]}, {self.end[0]}, {self.end[1]})"


def between_dates(start_month: int, start_day: int, end_month: int, end_day: int) -> _BetweenDates:
    """A filter that passes (local) dates from start to end in every year, both included;
    when the start is after the end the window wraps around New Year.

    Args:
        start_month: 1 to 12.
        start_day: a day of ``start_month``.
        end_month: 1 to 12.
        end_day: a day of ``end_month``.

    Example:
        >>> from datetime import datetime, timezone
        >>> winter = between_dates(12, 1, 2, 28)
        >>> utc = timezone.utc
        >>> winter(datetime(2027, 1, 10, tzinfo=utc)), winter(datetime(2027, 6, 1, tzinfo=utc))
        (True, False)
    """
    return _BetweenDates(start_month, start_day, end_month, end_day)


def is_weekday(dt: datetime) -> bool:
    """A filter that passes Monday to Friday (local date).

    Example:
        >>> from datetime import datetime, timezone
        >>> is_weekday(datetime(2026, 1, 5, tzinfo=timezone.utc))  # a Monday
        True
    """
    return dt.weekday() < 5


def is_weekend(dt: datetime) -> bool:
    """A filter that passes Saturday and Sunday (local date).

    Example:
        >>> from datetime import datetime, timezone
        >>> is_weekend(datetime(2026, 1, 4, tzinfo=timezone.utc))  # a Sunday
        True
    """
    return dt.weekday() >= 5


def is_month_start(dt: datetime) -> bool:
    """A filter that passes the first day of a month (local date).

    Example:
        >>> from datetime import datetime, timezone
        >>> is_month_start(datetime(2026, 2, 1, 9, tzinfo=timezone.utc))
        True
    """
    return dt.day == 1


def is_month_end(dt: datetime) -> bool:
    """A filter that passes the last day of a month (local date).

    Example:
        >>> from datetime import datetime, timezone
        >>> is_month_end(datetime(2028, 2, 29, tzinfo=timezone.utc))
        True
    """
    return dt.day == calendar.monthrange(dt.year, dt.month)[1]


class _IsDayOfWeek:
    def __init__(self, day_of_week: int) -> None:
        if (
            not isinstance(day_of_week, int)
            or isinstance(day_of_week, bool)
            or not 0 <= day_of_week <= 6
        ):
            raise ScheduleError(
                f"day_of_week must be an int from 0 (Monday) to 6 (Sunday), got {day_of_week!r}",
                argument="day_of_week",
            )
        self.day_of_week = day_of_week

    def __call__(self, dt: datetime) -> bool:
        return dt.weekday() == self.day_of_week

    def __repr__(self) -> str:
        return f"is_day_of_week({self.day_of_week})"


def is_day_of_week(day_of_week: int) -> _IsDayOfWeek:
    """A filter that passes one day of the week (local date).

    Args:
        day_of_week: 0 (Monday) to 6 (Sunday), as ``datetime.weekday()``.

    Example:
        >>> from datetime import datetime, timezone
        >>> is_day_of_week(2)(datetime(2026, 1, 7, tzinfo=timezone.utc))  # a Wednesday
        True
    """
    return _IsDayOfWeek(day_of_week)
