"""Time-zone arithmetic shared by clocks, filters and adjustments (private).

Everything here works on stdlib time-zone-aware datetimes. Two facts of Python's datetime
shape the code:

- Two aware datetimes that share one ``tzinfo`` object are compared, subtracted and hashed
  by their wall time, ignoring ``fold``: 01:30 EDT and 01:30 EST (one hour apart) compare
  equal. So every comparison here is made in UTC (:func:`to_utc`).
- A wall time in a zone can exist once, twice (the overlap after clocks go back) or not at
  all (the gap when they go forward). :func:`resolve` says which; :func:`resolve_first`
  applies ferroflow's rule for a fixed wall time: the first instant in an overlap, the
  instant the gap ends for a wall time in a gap.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone, tzinfo

from ferroflow.exceptions import ScheduleError

UTC = timezone.utc
_ONE_DAY = timedelta(days=1)
_ONE_SECOND = timedelta(seconds=1)

# Kinds of wall time (see resolve).
NORMAL = 0
OVERLAP = 1
GAP = 2


def require_aware(value: object, argument: str) -> datetime:
    """``value`` if it is a time-zone-aware datetime, else a ScheduleError naming
    ``argument``."""
    if not isinstance(value, datetime):
        raise ScheduleError(
            f"{argument} must be a time-zone-aware datetime, got {type(value).__name__} {value!r}",
            argument=argument,
        )
    tz = value.tzinfo
    if tz is None or value.utcoffset() is None:
        raise ScheduleError(
            f"{argument} is a naive datetime ({value.isoformat()}): give it a time zone, "
            f"e.g. tzinfo=zoneinfo.ZoneInfo('Europe/Paris') or datetime.timezone.utc",
            argument=argument,
        )
    if hasattr(tz, "localize"):
        raise ScheduleError(
            f"{argument} uses a pytz time zone ({tz}), whose offsets are wrong for wall-time "
            "arithmetic: use zoneinfo.ZoneInfo instead",
            argument=argument,
        )
    return value


def to_utc(value: datetime) -> datetime:
    """The same instant in UTC."""
    return value.astimezone(UTC)


def instant_key(value: datetime) -> str:
    """The idempotency key of an instant: its UTC time as ISO 8601 with microseconds and
    a ``Z``; never a local time, so the two passes of an overlap get different keys.

    Example:
        >>> from datetime import datetime
        >>> from zoneinfo import ZoneInfo
        >>> ny = ZoneInfo("America/New_York")
        >>> instant_key(datetime(2026, 11, 1, 1, 30, tzinfo=ny, fold=1))
        '2026-11-01T06:30:00.000000Z'
    """
    return to_utc(value).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def resolve(wall: datetime, tz: tzinfo) -> tuple[int, datetime, datetime]:
    """Where the naive wall time ``wall`` falls in ``tz``.

    Returns ``(kind, first, second)``:

    - ``NORMAL``: it exists once; ``first`` is it, ``second`` is ``first``.
    - ``OVERLAP``: it exists twice; ``first`` (fold 0) and ``second`` (fold 1), an
      offset change apart.
    - ``GAP``: it does not exist; ``first`` and ``second`` are the instant the gap ends
      (the first existing local time after it), in ``tz``.
    """
    a = wall.replace(tzinfo=tz)
    off0 = a.utcoffset()
    b = a.replace(fold=1)
    off1 = b.utcoffset()
    if off0 == off1:
        return NORMAL, a, a
    assert off0 is not None and off1 is not None
    if off0 > off1:
        # Clocks went back: fold 0 (the larger offset, before the change) comes first.
        return OVERLAP, a, b
    end = gap_end(wall, off0, off1, tz)
    return GAP, end, end


def gap_end(wall: datetime, off_before: timedelta, off_after: timedelta, tz: tzinfo) -> datetime:
    """The instant a gap ends, for a wall time ``wall`` inside it.

    The transition instant T satisfies ``wall - off_after < T <= wall - off_before`` (as
    UTC); zone transitions fall on whole seconds, so a binary search over seconds finds
    it exactly.
    """
    lo = (wall - off_after).replace(tzinfo=UTC)  # before the transition
    hi = (wall - off_before).replace(tzinfo=UTC)  # at or after it
    lo_s = int(lo.timestamp())
    hi_s = int(hi.timestamp())
    if hi_s - lo_s <= 0:  # pragma: no cover - a gap is at least a second long
        return hi.astimezone(tz)
    while hi_s - lo_s > 1:
        mid = (lo_s + hi_s) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == off_after:
            hi_s = mid
        else:
            lo_s = mid
    return datetime.fromtimestamp(hi_s, UTC).astimezone(tz)


def resolve_first(wall: datetime, tz: tzinfo) -> datetime:
    """ferroflow's instant for a fixed wall time: the first of an overlap, the end of a
    gap, else the one instant it names."""
    return resolve(wall, tz)[1]


def wall_add(value: datetime, delta: timedelta) -> datetime:
    """``value`` moved by ``delta`` on the wall clock of its own zone, resolved with
    :func:`resolve_first` (so 09:00 + 1 day is 09:00 the next day across a DST change)."""
    tz = value.tzinfo
    assert tz is not None
    return resolve_first(value.replace(tzinfo=None) + delta, tz)


def shift(value: datetime, delta: timedelta) -> datetime:
    """``value`` moved by ``delta``: on the wall clock when ``|delta|`` is a day or more,
    in absolute time otherwise (the rule IntervalClock and ``add`` share)."""
    if abs(delta) >= _ONE_DAY:
        return wall_add(value, delta)
    tz = value.tzinfo
    assert tz is not None
    return (to_utc(value) + delta).astimezone(tz)


def now_utc() -> datetime:
    """The current instant, in UTC."""
    return datetime.now(UTC)
