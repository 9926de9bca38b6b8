"""Clocks: the sources of a schedule's times (Prefect Core 1.x's model).

A clock yields :class:`ClockEvent`\\ s, strictly increasing in time, each an aware datetime
in the clock's time zone (``start_date``'s, else UTC) with the clock's
``parameter_defaults`` and ``labels``. Daylight saving time follows one stated rule:

- :class:`IntervalClock`: an interval of a day or more keeps the local wall time of
  ``start_date`` (a daily 09:00 run stays at 09:00); a shorter interval steps in absolute
  time (an hourly clock fires every 60 minutes, so twice at "01:00" local on the night
  clocks go back, an hour apart).
- :class:`CronClock`: the cron expression is matched against local wall times, which are
  then turned into instants here, never by the cron library. A fixed-time entry
  (``30 2 * * *``: the minute and hour fields hold no ``*`` and no ``/``) whose wall time
  does not exist runs once, right when the gap ends; one whose wall time happens twice runs
  once, at the first. A wildcard or step entry (``0 * * * *``, ``*/15 1 * * *``) skips the
  gap and runs in both passes of the overlap (they are different instants).
- :class:`DatesClock`: the given instants.

Times are compared as instants (UTC) everywhere. Python compares two datetimes that share
a ``tzinfo`` by wall time, ignoring ``fold``: convert with ``.astimezone(timezone.utc)``
(or use :attr:`ClockEvent.instant`) before comparing times from the overlap.

Example:
    >>> from datetime import datetime, timedelta
    >>> from zoneinfo import ZoneInfo
    >>> start = datetime(2026, 3, 7, 9, 0, tzinfo=ZoneInfo("America/New_York"))
    >>> clock = IntervalClock(timedelta(days=1), start_date=start)
    >>> from itertools import islice
    >>> [e.start_time.isoformat() for e in islice(clock.events(after=start), 2)]
    ['2026-03-08T09:00:00-04:00', '2026-03-09T09:00:00-04:00']
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping
from datetime import date, datetime, timedelta, tzinfo
from typing import Any

from cronsim import CronSim, CronSimError

from ferroflow.exceptions import ScheduleError
from ferroflow.schedules._time import (
    GAP,
    NORMAL,
    OVERLAP,
    UTC,
    instant_key,
    now_utc,
    require_aware,
    resolve,
    resolve_first,
    to_utc,
)

__all__ = ["Clock", "ClockEvent", "CronClock", "DatesClock", "IntervalClock"]

_ONE_DAY = timedelta(days=1)
_TINY = timedelta(microseconds=1)
# IntervalClock's default anchor, as in Prefect Core 1.x.
DEFAULT_START = datetime(2019, 1, 1, tzinfo=UTC)

# A clock's internal stream: (UTC instant, the same instant in the clock's zone).
_Times = Iterator[tuple[datetime, datetime]]


class ClockEvent:
    """One time a clock fires, with the clock's parameter defaults and labels.

    Args:
        start_time: when (an aware datetime, in the clock's time zone).
        parameter_defaults: parameter values for a run at this time (explicit parameters
            given to ``flow.run`` take precedence).
        labels: labels for a run at this time.

    Attributes:
        start_time: when.
        parameter_defaults: a dict (empty when none).
        labels: a list (empty when none).

    Events compare and hash by instant (:attr:`instant`), then parameter defaults and
    labels for equality.

    Example:
        >>> from datetime import datetime, timezone
        >>> e = ClockEvent(datetime(2026, 1, 1, tzinfo=timezone.utc), {"n": 1})
        >>> e.key, e.parameter_defaults
        ('2026-01-01T00:00:00.000000Z', {'n': 1})
    """

    __slots__ = ("labels", "parameter_defaults", "start_time")

    def __init__(
        self,
        start_time: datetime,
        parameter_defaults: Mapping[str, Any] | None = None,
        labels: Iterable[str] | None = None,
    ) -> None:
        self.start_time = require_aware(start_time, "start_time")
        self.parameter_defaults: dict[str, Any] = dict(parameter_defaults or {})
        self.labels: list[str] = list(labels or ())

    @property
    def instant(self) -> datetime:
        """The start time in UTC (safe to compare, hash and store).

        Example:
            >>> from datetime import datetime
            >>> from zoneinfo import ZoneInfo
            >>> t = datetime(2026, 7, 1, 12, tzinfo=ZoneInfo("Europe/Paris"))
            >>> ClockEvent(t).instant.isoformat()
            '2026-07-01T10:00:00+00:00'
        """
        return to_utc(self.start_time)

    @property
    def key(self) -> str:
        """An idempotency key for a run at this time, derived from the UTC instant only
        (never from local time).

        Example:
            >>> from datetime import datetime, timezone
            >>> ClockEvent(datetime(2026, 1, 1, 6, tzinfo=timezone.utc)).key
            '2026-01-01T06:00:00.000000Z'
        """
        return instant_key(self.start_time)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, datetime):
            return other.tzinfo is not None and self.instant == to_utc(other)
        if not isinstance(other, ClockEvent):
            return NotImplemented
        return (
            self.instant == other.instant
            and self.parameter_defaults == other.parameter_defaults
            and self.labels == other.labels
        )

    def __hash__(self) -> int:
        return hash(self.instant)

    def __lt__(self, other: ClockEvent) -> bool:
        return self.instant < other.instant

    def __repr__(self) -> str:
        return (
            f"ClockEvent({self.start_time.isoformat()}, "
            f"parameter_defaults={self.parameter_defaults!r}, labels={self.labels!r})"
        )


class Clock:
    """Base class of clocks: ``start_date``, ``end_date``, ``parameter_defaults``,
    ``labels``, and :meth:`events`.

    Subclasses implement ``_times(after)``: ``(utc, local)`` pairs strictly after the UTC
    instant ``after``, strictly increasing, at most ``end_date``.

    Args:
        start_date: the earliest time (aware).
        end_date: the latest time (aware; inclusive).
        parameter_defaults: parameter values for runs at this clock's times.
        labels: labels for runs at this clock's times.

    Example:
        >>> from datetime import timedelta
        >>> isinstance(IntervalClock(timedelta(hours=1)), Clock)
        True
    """

    def __init__(
        self,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
        parameter_defaults: Mapping[str, Any] | None = None,
        labels: Iterable[str] | None = None,
    ) -> None:
        if start_date is not None:
            require_aware(start_date, "start_date")
        if end_date is not None:
            require_aware(end_date, "end_date")
        if (
            start_date is not None
            and end_date is not None
            and to_utc(end_date) < to_utc(start_date)
        ):
            raise ScheduleError(
                f"end_date {end_date.isoformat()} is before start_date {start_date.isoformat()}",
                argument="end_date",
            )
        if parameter_defaults is not None and not isinstance(parameter_defaults, Mapping):
            raise ScheduleError(
                "parameter_defaults must be a mapping of parameter names to values, got "
                f"{type(parameter_defaults).__name__}",
                argument="parameter_defaults",
            )
        if isinstance(labels, str):
            raise ScheduleError(
                f"labels must be a list of strings, not the string {labels!r}",
                argument="labels",
            )
        self.start_date = start_date
        self.end_date = end_date
        self.parameter_defaults: dict[str, Any] = dict(parameter_defaults or {})
        self.labels: list[str] = list(labels or ())
        self._end_utc = None if end_date is None else to_utc(end_date)

    def events(self, after: datetime | None = None) -> Iterator[ClockEvent]:
        """The clock's events strictly after ``after`` [now], in order.

        Args:
            after: an aware datetime.

        Example:
            >>> from datetime import datetime, timedelta, timezone
            >>> start = datetime(2026, 1, 1, tzinfo=timezone.utc)
            >>> clock = IntervalClock(timedelta(hours=6), start_date=start)
            >>> next(clock.events(after=start)).start_time.hour
            6
        """
        after_u = now_utc() if after is None else to_utc(require_aware(after, "after"))
        for _, local in self._times(after_u):
            yield ClockEvent(local, self.parameter_defaults, self.labels)

    def _times(self, after: datetime) -> _Times:  # pragma: no cover - abstract
        raise NotImplementedError

    def _repr_extra(self) -> str:
        parts = []
        if self.start_date is not None:
            parts.append(f"start_date={self.start_date.isoformat()}")
        if self.end_date is not None:
            parts.append(f"end_date={self.end_date.isoformat()}")
        if self.parameter_defaults:
            parts.append(f"parameter_defaults={self.parameter_defaults!r}")
        if self.labels:
            parts.append(f"labels={self.labels!r}")
        return "".join(", " + p for p in parts)


class IntervalClock(Clock):
    """Fires every ``interval``, anchored at ``start_date``.

    An interval of a day or more keeps the local wall time of ``start_date`` (a wall time
    that does not exist on some day runs when the gap ends; one that happens twice runs at
    the first); a shorter interval steps in absolute time.

    Args:
        interval: a positive ``timedelta``.
        start_date: the anchor and first time [2019-01-01 00:00 UTC, as Prefect 1]; its
            time zone is the clock's.
        end_date: no times after it.
        parameter_defaults: parameter values for runs at this clock's times.
        labels: labels for runs at this clock's times.

    Raises:
        ScheduleError: a missing, zero or negative interval, a naive date, or an end
            before the start.

    Example:
        >>> from datetime import datetime, timedelta, timezone
        >>> start = datetime(2026, 1, 1, tzinfo=timezone.utc)
        >>> clock = IntervalClock(timedelta(minutes=30), start_date=start)
        >>> from itertools import islice
        >>> [e.start_time.strftime("%H:%M") for e in islice(clock.events(after=start), 3)]
        ['00:30', '01:00', '01:30']
    """

    def __init__(
        self,
        interval: timedelta,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
        parameter_defaults: Mapping[str, Any] | None = None,
        labels: Iterable[str] | None = None,
    ) -> None:
        if not isinstance(interval, timedelta):
            raise ScheduleError(
                f"interval must be a datetime.timedelta, got {type(interval).__name__} "
                f"{interval!r}",
                argument="interval",
            )
        if interval <= timedelta(0):
            raise ScheduleError(f"interval must be positive, got {interval!r}", argument="interval")
        super().__init__(
            DEFAULT_START if start_date is None else start_date,
            end_date,
            parameter_defaults,
            labels,
        )
        self.interval = interval
        start = self.start_date
        assert start is not None
        self._start = start
        self._start_utc = to_utc(start)
        self._tz = start.tzinfo
        self._wall = interval >= _ONE_DAY

    def _at(self, k: int) -> tuple[datetime, datetime]:
        """The k-th time (k >= 0) as (utc, local)."""
        if k == 0:
            return self._start_utc, self._start
        if self._wall:
            assert self._tz is not None
            local = resolve_first(self._start.replace(tzinfo=None) + k * self.interval, self._tz)
            return to_utc(local), local
        utc = self._start_utc + k * self.interval
        return utc, utc.astimezone(self._tz)

    def _first_index(self, after: datetime) -> int:
        if after < self._start_utc:
            return 0
        k = (after - self._start_utc) // self.interval + 1
        if self._wall:
            # Wall-time steps differ from absolute ones by the zone's offset changes.
            while k > 0 and self._at(k - 1)[0] > after:
                k -= 1
            while self._at(k)[0] <= after:
                k += 1
        return k

    def _times(self, after: datetime) -> _Times:
        end = self._end_utc
        if end is not None and after >= end:
            return
        try:
            k = self._first_index(after)
            if self._wall:
                while True:
                    utc, local = self._at(k)
                    if end is not None and utc > end:
                        return
                    yield utc, local
                    k += 1
            tz = self._tz
            interval = self.interval
            utc = self._at(k)[0]
            while end is None or utc <= end:
                yield utc, utc.astimezone(tz)
                utc += interval
        except OverflowError:  # past year 9999
            return

    def __repr__(self) -> str:
        return f"IntervalClock({self.interval!r}{self._repr_extra()})"


_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

# No matching day in 400 years (one full Gregorian cycle) means none ever.
_GIVE_UP_YEARS = 400


class CronClock(Clock):
    """Fires at the times a cron expression matches, in ``start_date``'s time zone.

    Five fields (minute hour day-of-month month day-of-week) or an alias (``@hourly``,
    ``@daily``, ``@midnight``, ``@weekly``, ``@monthly``, ``@yearly``, ``@annually``);
    ``L``, ``W`` and ``#`` as cronsim reads them. Daylight saving time: a fixed-time entry
    (no ``*`` and no ``/`` in the minute and hour fields) whose wall time does not exist
    runs once, right when the gap ends; one whose wall time happens twice runs once, at the
    first. A wildcard/step entry skips the gap and runs in both passes of the overlap.

    Args:
        cron: the cron expression.
        start_date: no times before it (inclusive); its time zone is the one the
            expression is read in [UTC].
        end_date: no times after it (inclusive).
        parameter_defaults: parameter values for runs at this clock's times.
        labels: labels for runs at this clock's times.
        day_or: when both day-of-month and day-of-week are restricted, match either
            (``True``, cron's rule) or require both (``False``).

    Raises:
        ScheduleError: a bad cron string, a naive date, or an end before the start.

    Example:
        >>> from datetime import datetime
        >>> from zoneinfo import ZoneInfo
        >>> ny = ZoneInfo("America/New_York")
        >>> clock = CronClock("30 2 * * *", start_date=datetime(2026, 3, 7, tzinfo=ny))
        >>> from itertools import islice
        >>> [e.start_time.isoformat() for e in islice(clock.events(after=clock.start_date), 2)]
        ['2026-03-07T02:30:00-05:00', '2026-03-08T03:00:00-04:00']
    """

    def __init__(
        self,
        cron: str,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
        parameter_defaults: Mapping[str, Any] | None = None,
        labels: Iterable[str] | None = None,
        day_or: bool = True,
    ) -> None:
        if not isinstance(cron, str):
            raise ScheduleError(
                f"cron must be a string such as '0 * * * *', got {type(cron).__name__} {cron!r}",
                argument="cron",
            )
        if not isinstance(day_or, bool):
            raise ScheduleError(f"day_or must be True or False, got {day_or!r}", argument="day_or")
        expr = " ".join(cron.split())
        expr = _ALIASES.get(expr.lower(), expr)
        fields = expr.split()
        if len(fields) != 5:
            raise ScheduleError(
                f"invalid cron string {cron!r}: it needs 5 fields (minute hour "
                f"day-of-month month day-of-week) or an alias such as '@daily', got "
                f"{len(fields)}",
                argument="cron",
            )
        try:
            sim = CronSim(expr, datetime(2000, 1, 1))
        except CronSimError as err:
            raise ScheduleError(f"invalid cron string {cron!r}: {err}", argument="cron") from None
        super().__init__(start_date, end_date, parameter_defaults, labels)
        if not day_or:
            sim.day_and = True
        self.cron = cron
        self.day_or = day_or
        self._sim = sim
        self._minutes = sorted(sim.minutes)
        self._hours = sorted(sim.hours)
        self._months = frozenset(sim.months)
        self._match_day = sim.match_day
        self._periodic = any(c in field for field in fields[:2] for c in "*/")
        self._tz: tzinfo = UTC if start_date is None else start_date.tzinfo or UTC
        self._start_utc = None if start_date is None else to_utc(start_date)

    def _walls(self, start: datetime) -> Iterator[datetime]:
        """Naive wall times matching the expression, from ``start`` (inclusive)."""
        if start.second or start.microsecond:
            start = start.replace(second=0, microsecond=0) + timedelta(minutes=1)
        hours, minutes, months, match_day = (
            self._hours,
            self._minutes,
            self._months,
            self._match_day,
        )
        day: date = start.date()
        last_year = day.year + _GIVE_UP_YEARS
        first_hour, first_minute = start.hour, start.minute
        first = True
        while day.year <= last_year:
            if day.month not in months:
                day = (day.replace(day=1) + timedelta(days=32)).replace(day=1)
                first = False
                continue
            if match_day(day):
                y, mo, d = day.year, day.month, day.day
                for h in hours:
                    if first and h < first_hour:
                        continue
                    for m in minutes:
                        if first and h == first_hour and m < first_minute:
                            continue
                        yield datetime(y, mo, d, h, m)
                last_year = day.year + _GIVE_UP_YEARS
            first = False
            day += _ONE_DAY

    def _times(self, after: datetime) -> _Times:
        if self._start_utc is not None and after < self._start_utc:
            after = self._start_utc - _TINY
        end = self._end_utc
        if end is not None and after >= end:
            return
        tz = self._tz
        local_after = after.astimezone(tz)
        wall = local_after.replace(tzinfo=None)
        kind, first, second = resolve(wall, tz)
        if kind == OVERLAP:
            # Earlier wall times of the overlap have second-pass instants after `after`.
            wall -= to_utc(second) - to_utc(first)
        periodic = self._periodic
        pending: list[tuple[datetime, datetime]] = []  # heap of (utc, local)
        last: datetime | None = None
        try:
            for w in self._walls(wall):
                kind, first, second = resolve(w, tz)
                first_utc = to_utc(first)
                # Every later wall time resolves to first_utc or later: flush what is before.
                while pending and pending[0][0] < first_utc:
                    utc, local = heapq.heappop(pending)
                    if end is not None and utc > end:
                        return
                    if utc > after and (last is None or utc > last):
                        last = utc
                        yield utc, local
                if kind == NORMAL and not pending:
                    if first_utc > after and (last is None or first_utc > last):
                        if end is not None and first_utc > end:
                            return
                        last = first_utc
                        yield first_utc, first
                    continue
                if kind == GAP and periodic:
                    continue
                heapq.heappush(pending, (first_utc, first))
                if kind == OVERLAP and periodic:
                    heapq.heappush(pending, (to_utc(second), second))
            while pending:
                utc, local = heapq.heappop(pending)
                if end is not None and utc > end:
                    return
                if utc > after and (last is None or utc > last):
                    last = utc
                    yield utc, local
        except OverflowError:  # past year 9999
            return

    def __repr__(self) -> str:
        extra = "" if self.day_or else ", day_or=False"
        return f"CronClock({self.cron!r}{self._repr_extra()}{extra})"


class DatesClock(Clock):
    """Fires at each of the given times (duplicates of one instant count once).

    Args:
        dates: aware datetimes, in any order.
        parameter_defaults: parameter values for runs at these times.
        labels: labels for runs at these times.

    Raises:
        ScheduleError: no dates, or a date that is not an aware datetime.

    Example:
        >>> from datetime import datetime, timezone
        >>> utc = timezone.utc
        >>> clock = DatesClock([datetime(2026, 5, 1, tzinfo=utc), datetime(2026, 1, 1, tzinfo=utc)])
        >>> [e.start_time.month for e in clock.events(after=datetime(2025, 1, 1, tzinfo=utc))]
        [1, 5]
    """

    def __init__(
        self,
        dates: Iterable[datetime],
        parameter_defaults: Mapping[str, Any] | None = None,
        labels: Iterable[str] | None = None,
    ) -> None:
        if isinstance(dates, (datetime, str)) or not isinstance(dates, Iterable):
            raise ScheduleError(
                f"dates must be a list of aware datetimes, got {type(dates).__name__}",
                argument="dates",
            )
        given = [require_aware(d, f"dates[{i}]") for i, d in enumerate(dates)]
        if not given:
            raise ScheduleError("dates must not be empty", argument="dates")
        by_instant: dict[datetime, datetime] = {}
        for d in given:
            by_instant.setdefault(to_utc(d), d)
        self._dates = sorted(by_instant.items())
        super().__init__(min(given, key=to_utc), max(given, key=to_utc), parameter_defaults, labels)
        self.dates = given

    def _times(self, after: datetime) -> _Times:
        for utc, local in self._dates:
            if utc > after:
                yield utc, local

    def __repr__(self) -> str:
        dates = ", ".join(d.isoformat() for d in self.dates)
        return f"DatesClock([{dates}]{self._repr_extra()})"
