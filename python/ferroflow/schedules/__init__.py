"""Schedules: when a flow runs (Prefect Core 1.x's model, right across daylight saving time).

A :class:`Schedule` merges the times of its clocks (:mod:`ferroflow.schedules.clocks`),
keeps those that pass its filters (:mod:`ferroflow.schedules.filters`), moves them with its
adjustments (:mod:`ferroflow.schedules.adjustments`) and gives them strictly increasing,
never the same instant twice: :meth:`Schedule.next`. :class:`IntervalSchedule` and
:class:`CronSchedule` are one-clock shortcuts. :func:`plan_runs` is what a scheduler
service calls to keep a schedule's runs topped up, keyed by UTC instant.

Times are aware datetimes in each clock's time zone. Compare them as instants
(``.astimezone(timezone.utc)``): Python compares two datetimes of one zone by wall time,
ignoring ``fold``, so the two passes of an overlap compare equal.

Example:
    >>> from datetime import datetime, time, timedelta
    >>> from zoneinfo import ZoneInfo
    >>> from ferroflow.schedules import Schedule, filters
    >>> from ferroflow.schedules.clocks import IntervalClock
    >>> start = datetime(2026, 1, 2, 9, tzinfo=ZoneInfo("Europe/Paris"))  # a Friday
    >>> schedule = Schedule(
    ...     clocks=[IntervalClock(timedelta(days=1), start_date=start)],
    ...     filters=[filters.is_weekday],
    ... )
    >>> [t.strftime("%a %d %H:%M") for t in schedule.next(3, after=start)]
    ['Mon 05 09:00', 'Tue 06 09:00', 'Wed 07 09:00']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from heapq import merge
from typing import Any, Literal, overload

from ferroflow.exceptions import ScheduleError
from ferroflow.schedules import adjustments, clocks, filters
from ferroflow.schedules._time import instant_key, now_utc, require_aware, to_utc
from ferroflow.schedules.clocks import (
    Clock,
    ClockEvent,
    CronClock,
    DatesClock,
    IntervalClock,
)

__all__ = [
    "Clock",
    "ClockEvent",
    "CronClock",
    "CronSchedule",
    "DatesClock",
    "IntervalClock",
    "IntervalSchedule",
    "Schedule",
    "adjustments",
    "clocks",
    "filters",
    "instant_key",
    "plan_runs",
]

Filter = Callable[[datetime], bool]
Adjustment = Callable[[datetime], datetime]

# Schedule.next stops after this many clock times in a row that it could not give
# (filtered out, or adjusted onto a time already given): a filter that never passes ends
# the search instead of looping forever (Prefect 1 stopped after 10,000 clock times).
MAX_SKIPPED = 100_000


def _callables(value: Iterable[Any] | None, argument: str) -> list[Any]:
    if value is None:
        return []
    if callable(value) or isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ScheduleError(
            f"{argument} must be a list of callables, got {type(value).__name__} {value!r}",
            argument=argument,
        )
    out = list(value)
    for i, f in enumerate(out):
        if not callable(f):
            raise ScheduleError(
                f"{argument}[{i}] is not callable: {f!r} (give a function of one datetime)",
                argument=f"{argument}[{i}]",
            )
    return out


def _tagged(clock: Clock, index: int, after: datetime) -> Iterator[tuple[datetime, int, datetime]]:
    # (utc, clock index, local): merged by instant, ties go to the clock listed first.
    for utc, local in clock._times(after):
        yield utc, index, local


class Schedule:
    """Clocks, filters and adjustments: the times a flow runs.

    A time from a clock is kept when every one of ``filters`` passes it, at least one of
    ``or_filters`` does (when there are any) and none of ``not_filters`` does; then each
    adjustment is applied in order. Clock times are merged in order (clocks listed first
    win a tie), and an instant is given at most once.

    Args:
        clocks: one or more :class:`~ferroflow.schedules.clocks.Clock`.
        filters: callables ``f(dt) -> bool``; all must pass.
        or_filters: callables; at least one must pass.
        not_filters: callables; none may pass.
        adjustments: callables ``f(dt) -> datetime``, applied in order.

    Raises:
        ScheduleError: no clocks, something that is not a clock, or a filter or adjustment
            that is not callable.

    Example:
        >>> from datetime import datetime, timedelta, timezone
        >>> from ferroflow.schedules.clocks import DatesClock, IntervalClock
        >>> start = datetime(2026, 1, 1, tzinfo=timezone.utc)
        >>> s = Schedule([IntervalClock(timedelta(hours=12), start_date=start),
        ...               DatesClock([start + timedelta(hours=3)], parameter_defaults={"x": 1})])
        >>> events = s.next(3, after=start, return_events=True)
        >>> [(e.start_time.hour, e.parameter_defaults) for e in events]
        [(3, {'x': 1}), (12, {}), (0, {})]
    """

    def __init__(
        self,
        clocks: Iterable[Clock],
        filters: Iterable[Filter] | None = None,
        or_filters: Iterable[Filter] | None = None,
        not_filters: Iterable[Filter] | None = None,
        adjustments: Iterable[Adjustment] | None = None,
    ) -> None:
        if isinstance(clocks, Clock) or not isinstance(clocks, Iterable):
            raise ScheduleError(
                f"clocks must be a list of clocks, got {type(clocks).__name__} {clocks!r}",
                argument="clocks",
            )
        self.clocks: list[Clock] = list(clocks)
        if not self.clocks:
            raise ScheduleError(
                "a Schedule needs at least one clock (clocks=[] given)", argument="clocks"
            )
        for i, clock in enumerate(self.clocks):
            if not isinstance(clock, Clock):
                raise ScheduleError(
                    f"clocks[{i}] is not a clock: {clock!r} (use IntervalClock, CronClock or "
                    "DatesClock from ferroflow.schedules.clocks)",
                    argument=f"clocks[{i}]",
                )
        self.filters: list[Filter] = _callables(filters, "filters")
        self.or_filters: list[Filter] = _callables(or_filters, "or_filters")
        self.not_filters: list[Filter] = _callables(not_filters, "not_filters")
        self.adjustments: list[Adjustment] = _callables(adjustments, "adjustments")
        # How far before `after` the clocks must start so that times an adjustment moves
        # past `after` are found (see ferroflow.schedules.adjustments).
        lookback = timedelta(0)
        for adj in self.adjustments:
            shift = getattr(adj, "max_shift", None)
            if isinstance(shift, timedelta) and shift > timedelta(0):
                lookback += shift
        self._lookback = lookback

    @property
    def start_date(self) -> datetime | None:
        """The earliest start date of the clocks (None when a clock has none).

        Example:
            >>> from datetime import datetime, timezone
            >>> start = datetime(2026, 1, 1, tzinfo=timezone.utc)
            >>> CronSchedule("0 * * * *", start_date=start).start_date.year
            2026
        """
        starts = [c.start_date for c in self.clocks]
        if any(s is None for s in starts):
            return None
        return min((s for s in starts if s is not None), key=to_utc)

    @property
    def end_date(self) -> datetime | None:
        """The latest end date of the clocks (None when a clock never ends).

        Example:
            >>> from datetime import timedelta
            >>> IntervalSchedule(interval=timedelta(hours=1)).end_date is None
            True
        """
        ends = [c.end_date for c in self.clocks]
        if any(e is None for e in ends):
            return None
        return max((e for e in ends if e is not None), key=to_utc)

    def _passes(self, dt: datetime) -> bool:
        if self.filters and not all(f(dt) for f in self.filters):
            return False
        if self.or_filters and not any(f(dt) for f in self.or_filters):
            return False
        return not (self.not_filters and any(f(dt) for f in self.not_filters))

    def _events(self, after: datetime) -> Iterator[tuple[datetime, datetime, Clock]]:
        """``(utc, local, clock)`` for each time strictly after the UTC instant ``after``."""
        start = after - self._lookback if self._lookback else after
        streams = [_tagged(clock, i, start) for i, clock in enumerate(self.clocks)]
        merged = streams[0] if len(streams) == 1 else merge(*streams)
        clock_list = self.clocks
        passes = self._passes
        checks = bool(self.filters or self.or_filters or self.not_filters)
        adjust = self.adjustments
        last: datetime | None = None
        skipped = 0
        for utc, i, local in merged:
            if checks and not passes(local):
                skipped += 1
                if skipped >= MAX_SKIPPED:
                    return
                continue
            if adjust:
                for f in adjust:
                    local = f(local)
                utc = to_utc(require_aware(local, "an adjustment's result"))
            if utc <= after or (last is not None and utc <= last):
                skipped += 1
                if skipped >= MAX_SKIPPED:
                    return
                continue
            skipped = 0
            last = utc
            yield utc, local, clock_list[i]

    @overload
    def next(
        self, n: int, after: datetime | None = None, return_events: Literal[False] = False
    ) -> list[datetime]: ...

    @overload
    def next(
        self, n: int, after: datetime | None = None, *, return_events: Literal[True]
    ) -> list[ClockEvent]: ...

    @overload
    def next(
        self, n: int, after: datetime | None, return_events: Literal[True]
    ) -> list[ClockEvent]: ...

    def next(
        self, n: int, after: datetime | None = None, return_events: bool = False
    ) -> list[datetime] | list[ClockEvent]:
        """The next ``n`` times strictly after ``after`` [now], strictly increasing.

        Args:
            n: how many (0 or more); fewer come back when the schedule ends.
            after: an aware datetime.
            return_events: give :class:`ClockEvent`\\ s (with the clock's
                ``parameter_defaults`` and ``labels``) instead of datetimes.

        Raises:
            ScheduleError: ``n`` is not a non-negative int, or ``after`` is naive.

        Example:
            >>> from datetime import datetime, timezone
            >>> s = CronSchedule("0 */6 * * *")
            >>> [t.hour for t in s.next(3, after=datetime(2026, 1, 1, 1, tzinfo=timezone.utc))]
            [6, 12, 18]
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ScheduleError(f"n must be an int >= 0, got {n!r}", argument="n")
        after_u = now_utc() if after is None else to_utc(require_aware(after, "after"))
        if n == 0:
            return []
        if return_events:
            events: list[ClockEvent] = []
            for _, local, clock in self._events(after_u):
                events.append(ClockEvent(local, clock.parameter_defaults, clock.labels))
                if len(events) >= n:
                    break
            return events
        times: list[datetime] = []
        for _, local, _clock in self._events(after_u):
            times.append(local)
            if len(times) >= n:
                break
        return times

    def __repr__(self) -> str:
        parts = [f"clocks={self.clocks!r}"]
        for name in ("filters", "or_filters", "not_filters", "adjustments"):
            value = getattr(self, name)
            if value:
                parts.append(f"{name}={value!r}")
        return f"Schedule({', '.join(parts)})"


class IntervalSchedule(Schedule):
    """A schedule of one :class:`~ferroflow.schedules.clocks.IntervalClock`.

    Args:
        start_date: the anchor and first time [2019-01-01 00:00 UTC].
        interval: a positive ``timedelta`` (required).
        end_date: no times after it.

    Example:
        >>> from datetime import datetime, timedelta, timezone
        >>> start = datetime(2026, 1, 1, tzinfo=timezone.utc)
        >>> s = IntervalSchedule(start_date=start, interval=timedelta(minutes=15))
        >>> [t.minute for t in s.next(3, after=start)]
        [15, 30, 45]
    """

    def __init__(
        self,
        start_date: datetime | None = None,
        interval: timedelta | None = None,
        end_date: datetime | None = None,
    ) -> None:
        if interval is None:
            raise ScheduleError(
                "IntervalSchedule needs an interval, e.g. interval=timedelta(hours=1)",
                argument="interval",
            )
        super().__init__(clocks=[IntervalClock(interval, start_date, end_date)])


class CronSchedule(Schedule):
    """A schedule of one :class:`~ferroflow.schedules.clocks.CronClock`.

    Args:
        cron: a 5-field cron expression or an alias such as ``@daily``.
        start_date: no times before it; its time zone is the one ``cron`` is read in [UTC].
        end_date: no times after it.
        day_or: when both day fields are restricted, match either (True) or both (False).

    Example:
        >>> from datetime import datetime
        >>> from zoneinfo import ZoneInfo
        >>> paris = ZoneInfo("Europe/Paris")
        >>> s = CronSchedule("0 9 * * 1-5", start_date=datetime(2026, 1, 1, tzinfo=paris))
        >>> s.next(1, after=datetime(2026, 1, 2, 10, tzinfo=paris))[0].strftime("%a %H:%M %Z")
        'Mon 09:00 CET'
    """

    def __init__(
        self,
        cron: str,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
        day_or: bool = True,
    ) -> None:
        super().__init__(clocks=[CronClock(cron, start_date, end_date, day_or=day_or)])


def plan_runs(
    schedule: Schedule,
    already_scheduled: Iterable[datetime | str],
    now: datetime,
    min_count: int = 10,
    horizon: timedelta = timedelta(hours=1),
    max_count: int = 100,
) -> list[ClockEvent]:
    """The runs a scheduler service should create now, none already scheduled.

    The wanted runs are the schedule's next ``min_count`` times after ``now``, and every
    further time up to ``now + horizon``, at most ``max_count`` in all. The result is those
    whose instant is not in ``already_scheduled``; runs are keyed by UTC instant
    (:attr:`ClockEvent.key`), never by local time, so re-planning after a restart (with the
    runs it created before as ``already_scheduled``) creates nothing new, and the two
    passes of an overlap are two runs.

    Args:
        schedule: the flow's schedule.
        already_scheduled: the start times (aware datetimes) or keys (``ClockEvent.key``)
            of the runs that exist already. Keep them in UTC or as keys: a Python ``set``
            of local datetimes holds only one of the two passes of an overlap (they
            compare and hash equal).
        now: the current time (aware).
        min_count: keep at least this many future runs.
        horizon: and every run due within this long from ``now``...
        max_count: ...up to this many in all.

    Returns:
        The new runs, in order, as :class:`ClockEvent`\\ s.

    Raises:
        ScheduleError: a naive ``now`` or scheduled time, or bad counts.

    Example:
        >>> from datetime import datetime, timedelta, timezone
        >>> now = datetime(2026, 1, 1, tzinfo=timezone.utc)
        >>> s = IntervalSchedule(start_date=now, interval=timedelta(minutes=20))
        >>> first = plan_runs(s, set(), now)
        >>> len(first), len(plan_runs(s, {e.start_time for e in first}, now))
        (10, 0)
    """
    if not isinstance(schedule, Schedule):
        raise ScheduleError(
            f"schedule must be a Schedule, got {type(schedule).__name__}", argument="schedule"
        )
    now_u = to_utc(require_aware(now, "now"))
    for name, value in (("min_count", min_count), ("max_count", max_count)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ScheduleError(f"{name} must be an int >= 0, got {value!r}", argument=name)
    if not isinstance(horizon, timedelta) or horizon < timedelta(0):
        raise ScheduleError(
            f"horizon must be a timedelta >= 0, got {horizon!r}", argument="horizon"
        )
    if isinstance(already_scheduled, (str, datetime)):
        already_scheduled = [already_scheduled]
    taken: set[str] = set()
    for i, item in enumerate(already_scheduled):
        if isinstance(item, str):
            taken.add(item)
        else:
            taken.add(instant_key(require_aware(item, f"already_scheduled[{i}]")))
    until = now_u + horizon
    new: list[ClockEvent] = []
    count = 0
    for utc, local, clock in schedule._events(now_u):
        if count >= max_count or (count >= min_count and utc > until):
            break
        count += 1
        event = ClockEvent(local, clock.parameter_defaults, clock.labels)
        if event.key not in taken:
            new.append(event)
    return new
