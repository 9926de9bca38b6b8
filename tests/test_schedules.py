"""ferroflow.schedules: the DST table, clocks, filters, adjustments, errors, plan_runs."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from ferroflow.exceptions import FerroflowError, ScheduleError
from ferroflow.schedules import (
    CronSchedule,
    IntervalSchedule,
    Schedule,
    adjustments,
    filters,
    instant_key,
    plan_runs,
)
from ferroflow.schedules.clocks import ClockEvent, CronClock, DatesClock, IntervalClock

UTC = timezone.utc
NY = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
SYDNEY = ZoneInfo("Australia/Sydney")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")


def utc(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=UTC)


def local(zone: ZoneInfo, s: str, fold: int = 0) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=zone, fold=fold)


def cron(expr: str, zone: ZoneInfo) -> Callable[[], Schedule]:
    return lambda: CronSchedule(expr, start_date=datetime(2026, 1, 1, tzinfo=zone))


def every(delta: timedelta, start: datetime) -> Callable[[], Schedule]:
    return lambda: IntervalSchedule(start_date=start, interval=delta)


DAY = timedelta(days=1)
HOUR = timedelta(hours=1)

# zone, transition (UTC), (offset before, offset after), schedule, after, expected instants
# (UTC). Expected values are worked out by hand from the zone's rules, not by the code.
DST_TABLE = [
    # America/New_York, spring: 02:00 EST -> 03:00 EDT on 2026-03-08 (07:00Z).
    (
        "ny-spring fixed in gap",
        NY,
        "2026-03-08 07:00",
        (-5, -4),
        cron("30 2 * * *", NY),
        local(NY, "2026-03-07 00:00"),
        ["2026-03-07 07:30", "2026-03-08 07:00", "2026-03-09 06:30"],
    ),
    (
        "ny-spring hourly cron",
        NY,
        "2026-03-08 07:00",
        (-5, -4),
        cron("0 * * * *", NY),
        local(NY, "2026-03-08 00:30"),
        ["2026-03-08 06:00", "2026-03-08 07:00", "2026-03-08 08:00"],
    ),
    (
        "ny-spring daily interval",
        NY,
        "2026-03-08 07:00",
        (-5, -4),
        every(DAY, local(NY, "2026-03-07 09:00")),
        local(NY, "2026-03-07 00:00"),
        ["2026-03-07 14:00", "2026-03-08 13:00", "2026-03-09 13:00"],
    ),
    (
        "ny-spring daily interval in gap",
        NY,
        "2026-03-08 07:00",
        (-5, -4),
        every(DAY, local(NY, "2026-03-07 02:30")),
        local(NY, "2026-03-07 00:00"),
        ["2026-03-07 07:30", "2026-03-08 07:00", "2026-03-09 06:30"],
    ),
    (
        "ny-spring hourly interval",
        NY,
        "2026-03-08 07:00",
        (-5, -4),
        every(HOUR, local(NY, "2026-03-08 00:00")),
        local(NY, "2026-03-07 23:59"),
        ["2026-03-08 05:00", "2026-03-08 06:00", "2026-03-08 07:00", "2026-03-08 08:00"],
    ),
    # America/New_York, autumn: 02:00 EDT -> 01:00 EST on 2026-11-01 (06:00Z).
    (
        "ny-autumn fixed in overlap",
        NY,
        "2026-11-01 06:00",
        (-4, -5),
        cron("30 1 * * *", NY),
        local(NY, "2026-10-31 00:00"),
        ["2026-10-31 05:30", "2026-11-01 05:30", "2026-11-02 06:30"],
    ),
    (
        "ny-autumn hourly cron",
        NY,
        "2026-11-01 06:00",
        (-4, -5),
        cron("0 * * * *", NY),
        local(NY, "2026-11-01 00:30"),
        ["2026-11-01 05:00", "2026-11-01 06:00", "2026-11-01 07:00"],
    ),
    (
        "ny-autumn daily interval",
        NY,
        "2026-11-01 06:00",
        (-4, -5),
        every(DAY, local(NY, "2026-10-31 09:00")),
        local(NY, "2026-10-31 00:00"),
        ["2026-10-31 13:00", "2026-11-01 14:00", "2026-11-02 14:00"],
    ),
    (
        "ny-autumn daily interval in overlap",
        NY,
        "2026-11-01 06:00",
        (-4, -5),
        every(DAY, local(NY, "2026-10-31 01:30")),
        local(NY, "2026-10-31 00:00"),
        ["2026-10-31 05:30", "2026-11-01 05:30", "2026-11-02 06:30"],
    ),
    (
        "ny-autumn hourly interval",
        NY,
        "2026-11-01 06:00",
        (-4, -5),
        every(HOUR, local(NY, "2026-11-01 00:00")),
        local(NY, "2026-10-31 23:59"),
        ["2026-11-01 04:00", "2026-11-01 05:00", "2026-11-01 06:00", "2026-11-01 07:00"],
    ),
    # Europe/Berlin, spring: 02:00 CET -> 03:00 CEST on 2026-03-29 (01:00Z).
    (
        "berlin-spring fixed in gap",
        BERLIN,
        "2026-03-29 01:00",
        (1, 2),
        cron("30 2 * * *", BERLIN),
        local(BERLIN, "2026-03-28 00:00"),
        ["2026-03-28 01:30", "2026-03-29 01:00", "2026-03-30 00:30"],
    ),
    (
        "berlin-spring step cron",
        BERLIN,
        "2026-03-29 01:00",
        (1, 2),
        cron("*/30 * * * *", BERLIN),
        local(BERLIN, "2026-03-29 01:15"),
        ["2026-03-29 00:30", "2026-03-29 01:00", "2026-03-29 01:30"],
    ),
    # Europe/Berlin, autumn: 03:00 CEST -> 02:00 CET on 2026-10-25 (01:00Z).
    (
        "berlin-autumn fixed in overlap",
        BERLIN,
        "2026-10-25 01:00",
        (2, 1),
        cron("30 2 * * *", BERLIN),
        local(BERLIN, "2026-10-24 00:00"),
        ["2026-10-24 00:30", "2026-10-25 00:30", "2026-10-26 01:30"],
    ),
    (
        "berlin-autumn step cron",
        BERLIN,
        "2026-10-25 01:00",
        (2, 1),
        cron("*/30 * * * *", BERLIN),
        local(BERLIN, "2026-10-25 01:45"),
        [
            "2026-10-25 00:00",
            "2026-10-25 00:30",
            "2026-10-25 01:00",
            "2026-10-25 01:30",
            "2026-10-25 02:00",
        ],
    ),
    (
        "berlin-autumn daily interval",
        BERLIN,
        "2026-10-25 01:00",
        (2, 1),
        every(DAY, local(BERLIN, "2026-10-24 09:00")),
        local(BERLIN, "2026-10-24 00:00"),
        ["2026-10-24 07:00", "2026-10-25 08:00", "2026-10-26 08:00"],
    ),
    # Australia/Sydney (southern hemisphere), autumn: 03:00 AEDT -> 02:00 AEST on
    # 2026-04-05 (2026-04-04 16:00Z).
    (
        "sydney-april fixed in overlap",
        SYDNEY,
        "2026-04-04 16:00",
        (11, 10),
        cron("30 2 * * *", SYDNEY),
        local(SYDNEY, "2026-04-04 00:00"),
        ["2026-04-03 15:30", "2026-04-04 15:30", "2026-04-05 16:30"],
    ),
    (
        "sydney-april hourly cron",
        SYDNEY,
        "2026-04-04 16:00",
        (11, 10),
        cron("0 * * * *", SYDNEY),
        local(SYDNEY, "2026-04-05 01:30"),
        ["2026-04-04 15:00", "2026-04-04 16:00", "2026-04-04 17:00"],
    ),
    # Australia/Sydney, spring: 02:00 AEST -> 03:00 AEDT on 2026-10-04 (2026-10-03 16:00Z).
    (
        "sydney-october fixed in gap",
        SYDNEY,
        "2026-10-03 16:00",
        (10, 11),
        cron("30 2 * * *", SYDNEY),
        local(SYDNEY, "2026-10-03 00:00"),
        ["2026-10-02 16:30", "2026-10-03 16:00", "2026-10-04 15:30"],
    ),
    (
        "sydney-october daily interval",
        SYDNEY,
        "2026-10-03 16:00",
        (10, 11),
        every(DAY, local(SYDNEY, "2026-10-03 09:00")),
        local(SYDNEY, "2026-10-03 00:00"),
        ["2026-10-02 23:00", "2026-10-03 22:00", "2026-10-04 22:00"],
    ),
    (
        "sydney-october hourly interval",
        SYDNEY,
        "2026-10-03 16:00",
        (10, 11),
        every(HOUR, local(SYDNEY, "2026-10-04 01:00")),
        local(SYDNEY, "2026-10-04 00:59"),
        ["2026-10-03 15:00", "2026-10-03 16:00", "2026-10-03 17:00"],
    ),
    # Australia/Lord_Howe (a 30-minute shift), autumn: 02:00 LHDT (+11) -> 01:30 LHST
    # (+10:30) on 2026-04-05 (2026-04-04 15:00Z).
    (
        "lord-howe-april fixed in overlap",
        LORD_HOWE,
        "2026-04-04 15:00",
        (11, 10.5),
        cron("45 1 * * *", LORD_HOWE),
        local(LORD_HOWE, "2026-04-04 00:00"),
        ["2026-04-03 14:45", "2026-04-04 14:45", "2026-04-05 15:15"],
    ),
    (
        "lord-howe-april step cron",
        LORD_HOWE,
        "2026-04-04 15:00",
        (11, 10.5),
        cron("*/15 * * * *", LORD_HOWE),
        local(LORD_HOWE, "2026-04-05 01:20"),
        [
            "2026-04-04 14:30",
            "2026-04-04 14:45",
            "2026-04-04 15:00",
            "2026-04-04 15:15",
            "2026-04-04 15:30",
        ],
    ),
    # Australia/Lord_Howe, spring: 02:00 LHST -> 02:30 LHDT on 2026-10-04 (2026-10-03 15:30Z).
    (
        "lord-howe-october fixed in gap",
        LORD_HOWE,
        "2026-10-03 15:30",
        (10.5, 11),
        cron("15 2 * * *", LORD_HOWE),
        local(LORD_HOWE, "2026-10-03 00:00"),
        ["2026-10-02 15:45", "2026-10-03 15:30", "2026-10-04 15:15"],
    ),
    (
        "lord-howe-october step cron",
        LORD_HOWE,
        "2026-10-03 15:30",
        (10.5, 11),
        cron("*/15 * * * *", LORD_HOWE),
        local(LORD_HOWE, "2026-10-04 01:50"),
        ["2026-10-03 15:30", "2026-10-03 15:45"],
    ),
    (
        "lord-howe-october daily interval in gap",
        LORD_HOWE,
        "2026-10-03 15:30",
        (10.5, 11),
        every(DAY, local(LORD_HOWE, "2026-10-03 02:15")),
        local(LORD_HOWE, "2026-10-03 00:00"),
        ["2026-10-02 15:45", "2026-10-03 15:30", "2026-10-04 15:15"],
    ),
]


@pytest.mark.parametrize(
    ("zone", "transition", "offsets", "make", "after", "expected"),
    [row[1:] for row in DST_TABLE],
    ids=[row[0] for row in DST_TABLE],
)
def test_dst_table(zone, transition, offsets, make, after, expected):
    # The table's own premise: the zone changes offset at that instant.
    t = utc(transition)
    before = (t - timedelta(seconds=1)).astimezone(zone).utcoffset()
    at = t.astimezone(zone).utcoffset()
    assert (before, at) == (timedelta(hours=offsets[0]), timedelta(hours=offsets[1]))

    got = make().next(len(expected), after=after)
    assert [x.astimezone(UTC) for x in got] == [utc(e) for e in expected]
    assert all(x.tzinfo is zone for x in got)


def test_dst_table_covers_both_transitions_in_enough_zones():
    seasons: dict[str, set[str]] = {}
    for name, zone, *_ in DST_TABLE:
        seasons.setdefault(zone.key, set()).add(name.split()[0])
    both = [z for z, s in seasons.items() if len(s) >= 2]
    assert len(both) >= 3
    assert {"Australia/Sydney", "Australia/Lord_Howe"} <= set(both)


def test_fixed_entry_in_overlap_runs_once_and_croniter_twice_is_not_us():
    # The example: 30 1 * * * on the New York autumn change runs once.
    s = CronSchedule("30 1 * * *", start_date=local(NY, "2026-11-01 00:00"))
    nov1 = [t for t in s.next(5, after=local(NY, "2026-10-31 12:00")) if t.day == 1]
    assert len(nov1) == 1 and nov1[0].fold == 0


def test_after_inside_overlap_second_pass():
    s = CronSchedule("*/30 * * * *", start_date=local(NY, "2026-11-01 00:00"))
    # 01:40 in the second pass (EST) is 06:40Z: the next is 02:00 EST.
    got = s.next(2, after=local(NY, "2026-11-01 01:40", fold=1))
    assert [x.astimezone(UTC) for x in got] == [utc("2026-11-01 07:00"), utc("2026-11-01 07:30")]
    # 01:40 in the first pass (EDT) is 05:40Z: next come 01:00 and 01:30 EST.
    got = s.next(2, after=local(NY, "2026-11-01 01:40"))
    assert [x.astimezone(UTC) for x in got] == [utc("2026-11-01 06:00"), utc("2026-11-01 06:30")]
    assert [x.fold for x in got] == [1, 1]


# ------------------------------------------------------------------ clocks


def test_interval_clock_defaults_to_prefect_anchor_and_utc():
    s = IntervalSchedule(interval=timedelta(hours=7))
    assert s.start_date == datetime(2019, 1, 1, tzinfo=UTC)
    got = s.next(2, after=utc("2019-01-01 00:00"))
    assert got == [utc("2019-01-01 07:00"), utc("2019-01-01 14:00")]


def test_interval_clock_after_far_from_start_and_end_date_inclusive():
    start = utc("2026-01-01 00:00")
    s = IntervalSchedule(
        start_date=start, interval=timedelta(minutes=10), end_date=utc("2026-01-01 01:00")
    )
    assert s.next(10, after=utc("2026-01-01 00:35")) == [
        utc("2026-01-01 00:40"),
        utc("2026-01-01 00:50"),
        utc("2026-01-01 01:00"),
    ]
    assert s.next(3, after=utc("2026-01-01 01:00")) == []


def test_interval_first_time_is_start_date_itself():
    start = local(BERLIN, "2026-06-01 12:00")
    s = IntervalSchedule(start_date=start, interval=timedelta(days=2))
    assert s.next(2, after=start - timedelta(days=30)) == [start, local(BERLIN, "2026-06-03 12:00")]


def test_sub_second_interval():
    start = utc("2026-01-01 00:00")
    s = IntervalSchedule(start_date=start, interval=timedelta(milliseconds=200))
    got = s.next(3, after=start)
    assert [x.microsecond for x in got] == [200_000, 400_000, 600_000]


def test_cron_start_date_inclusive_and_zone():
    start = local(SYDNEY, "2026-02-02 09:00")
    s = CronSchedule("0 9 * * *", start_date=start)
    assert s.next(1, after=start - timedelta(days=5)) == [start]


def test_cron_without_start_date_reads_utc():
    s = CronSchedule("0 12 * * *")
    got = s.next(1, after=utc("2026-05-05 00:00"))
    assert got == [utc("2026-05-05 12:00")] and got[0].tzinfo is UTC


def test_cron_aliases_and_names():
    after = utc("2026-01-01 00:00")
    assert CronSchedule("@daily").next(2, after=after) == CronSchedule("0 0 * * *").next(
        2, after=after
    )
    assert CronSchedule("@hourly").next(1, after=after) == [utc("2026-01-01 01:00")]
    assert CronSchedule("0 9 * * MON").next(1, after=after) == [utc("2026-01-05 09:00")]


def test_cron_day_or():
    after = utc("2026-01-01 00:00")
    # The 13th or any Friday, vs Friday the 13th.
    either = CronSchedule("0 0 13 * FRI").next(3, after=after)
    assert [x.day for x in either] == [2, 9, 13]
    both = CronSchedule("0 0 13 * FRI", day_or=False).next(2, after=after)
    assert [(x.year, x.month, x.day) for x in both] == [(2026, 2, 13), (2026, 3, 13)]


def test_cron_last_day_and_nth_weekday():
    after = utc("2026-01-01 00:00")
    assert [x.day for x in CronSchedule("0 0 L * *").next(2, after=after)] == [31, 28]
    assert [x.day for x in CronSchedule("0 0 * * MON#2").next(2, after=after)] == [12, 9]


def test_cron_end_date():
    s = CronSchedule(
        "0 0 * * *", start_date=utc("2026-01-01 00:00"), end_date=utc("2026-01-03 00:00")
    )
    assert len(s.next(10, after=utc("2025-12-01 00:00"))) == 3


def test_dates_clock_sorted_deduplicated_by_instant():
    a = utc("2026-01-01 12:00")
    b = a.astimezone(NY)  # the same instant in another zone
    c = utc("2026-02-01 12:00")
    s = Schedule([DatesClock([c, a, b])])
    assert s.next(5, after=utc("2025-01-01 00:00")) == [a, c]
    assert s.start_date == a and s.end_date == c


def test_clock_events_carry_parameter_defaults_and_labels():
    start = utc("2026-01-01 00:00")
    clock = IntervalClock(
        timedelta(hours=1), start_date=start, parameter_defaults={"x": 1}, labels=["gpu"]
    )
    (event,) = Schedule([clock]).next(1, after=start, return_events=True)
    assert isinstance(event, ClockEvent)
    assert event.parameter_defaults == {"x": 1} and event.labels == ["gpu"]
    assert event.key == "2026-01-01T01:00:00.000000Z"


def test_clocks_merge_and_same_instant_given_once_first_clock_wins():
    start = utc("2026-01-01 00:00")
    hourly = IntervalClock(timedelta(hours=1), start_date=start, parameter_defaults={"c": "a"})
    half = IntervalClock(timedelta(minutes=30), start_date=start, parameter_defaults={"c": "b"})
    events = Schedule([hourly, half]).next(4, after=start, return_events=True)
    assert [e.start_time.strftime("%H:%M") for e in events] == ["00:30", "01:00", "01:30", "02:00"]
    assert [e.parameter_defaults["c"] for e in events] == ["b", "a", "b", "a"]


def test_same_instant_from_clocks_in_two_zones_given_once():
    a = CronClock("0 12 * * *", start_date=local(BERLIN, "2026-01-01 00:00"))
    b = CronClock("0 6 * * *", start_date=local(NY, "2026-01-01 00:00"))  # 12:00 CET too
    got = Schedule([a, b]).next(3, after=utc("2026-01-01 00:00"))
    assert [x.astimezone(UTC) for x in got] == [
        utc("2026-01-01 11:00"),
        utc("2026-01-02 11:00"),
        utc("2026-01-03 11:00"),
    ]


def test_clock_event_equality_and_ordering():
    t = utc("2026-01-01 00:00")
    assert ClockEvent(t) == ClockEvent(t.astimezone(NY))
    assert ClockEvent(t) != ClockEvent(t, {"x": 1})
    assert ClockEvent(t) == t
    assert ClockEvent(t) < ClockEvent(t + timedelta(seconds=1))
    assert len({ClockEvent(t), ClockEvent(t.astimezone(NY))}) == 1


def test_overlap_events_have_different_keys():
    s = CronSchedule("0 * * * *", start_date=local(NY, "2026-11-01 00:00"))
    e1, e2 = s.next(2, after=local(NY, "2026-11-01 00:30"), return_events=True)
    assert e1.start_time.replace(tzinfo=None) == e2.start_time.replace(tzinfo=None)
    assert e1.key != e2.key and e1.instant < e2.instant


def test_next_zero_and_default_after_is_now():
    s = IntervalSchedule(interval=timedelta(minutes=1))
    assert s.next(0) == []
    before = datetime.now(UTC)
    (t,) = s.next(1)
    assert before < t.astimezone(UTC) <= before + timedelta(minutes=1)


def test_schedule_pickles():
    s = Schedule(
        [CronClock("0 9 * * *", start_date=local(NY, "2026-01-01 00:00"))],
        filters=[filters.is_weekday, filters.between_times(time(8), time(10))],
        adjustments=[adjustments.add(timedelta(minutes=5))],
    )
    twin = pickle.loads(pickle.dumps(s))
    after = local(NY, "2026-01-01 00:00")
    assert twin.next(5, after=after) == s.next(5, after=after)
    assert "is_weekday" in repr(s) and "between_times" in repr(s)


# ------------------------------------------------------------------ filters


def at(s: str, zone: ZoneInfo | timezone = UTC) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=zone)


@pytest.mark.parametrize(
    ("f", "yes", "no"),
    [
        (
            filters.on_datetime(at("2026-01-01 12:00")),
            at("2026-01-01 07:00", NY),
            at("2026-01-01 12:01"),
        ),
        (filters.on_date(2, 29), at("2028-02-29 10:00"), at("2028-03-01 10:00")),
        (filters.at_time(time(9, 30)), at("2026-05-05 09:30"), at("2026-05-05 09:31")),
        (
            filters.between_datetimes(at("2026-01-01 00:00"), at("2026-01-31 00:00")),
            at("2026-01-31 00:00"),
            at("2026-01-31 00:00:01"),
        ),
        (filters.between_times(time(9), time(17)), at("2026-01-01 17:00"), at("2026-01-01 17:01")),
        (filters.between_times(time(22), time(6)), at("2026-01-01 05:59"), at("2026-01-01 21:59")),
        (filters.between_dates(3, 1, 5, 31), at("2026-05-31 23:00"), at("2026-06-01 00:00")),
        (filters.between_dates(12, 20, 1, 5), at("2026-01-05 00:00"), at("2026-01-06 00:00")),
        (filters.is_weekday, at("2026-01-02 00:00"), at("2026-01-03 00:00")),
        (filters.is_weekend, at("2026-01-04 00:00"), at("2026-01-05 00:00")),
        (filters.is_month_start, at("2026-03-01 23:59"), at("2026-03-02 00:00")),
        (filters.is_month_end, at("2026-02-28 00:00"), at("2028-02-28 00:00")),
        (filters.is_day_of_week(6), at("2026-01-04 00:00"), at("2026-01-05 00:00")),
    ],
    ids=lambda v: repr(v) if callable(v) else None,
)
def test_filters(f, yes, no):
    assert f(yes) is True
    assert f(no) is False


def test_filters_read_local_wall_time():
    # 09:00 in New York is 14:00 UTC: at_time sees the clock's zone.
    s = Schedule(
        [IntervalClock(timedelta(hours=1), start_date=local(NY, "2026-01-01 00:00"))],
        filters=[filters.at_time(time(9))],
    )
    (t,) = s.next(1, after=local(NY, "2026-01-01 00:00"))
    assert t.hour == 9 and t.astimezone(UTC).hour == 14


def test_filter_combinations_or_and_not():
    start = utc("2026-01-01 00:00")  # a Thursday
    s = Schedule(
        [IntervalClock(timedelta(days=1), start_date=start)],
        filters=[filters.is_weekday],
        or_filters=[filters.is_day_of_week(0), filters.is_day_of_week(4)],
        not_filters=[filters.on_date(1, 5)],
    )
    got = s.next(4, after=start)
    assert [(x.month, x.day) for x in got] == [(1, 2), (1, 9), (1, 12), (1, 16)]


def test_filter_that_never_passes_ends_the_search():
    s = Schedule([IntervalClock(timedelta(hours=1))], filters=[lambda dt: False])
    assert s.next(3, after=utc("2026-01-01 00:00")) == []


# ------------------------------------------------------------------ adjustments


def test_add_and_next_weekday():
    start = utc("2026-01-02 09:00")  # a Friday
    s = Schedule(
        [IntervalClock(timedelta(days=1), start_date=start)],
        adjustments=[adjustments.next_weekday, adjustments.add(timedelta(minutes=30))],
    )
    got = s.next(3, after=start - timedelta(seconds=1))
    # Friday, then Saturday and Sunday both fold onto Monday (given once), then Tuesday.
    assert [x.strftime("%a %d %H:%M") for x in got] == [
        "Fri 02 09:30",
        "Mon 05 09:30",
        "Tue 06 09:30",
    ]


def test_add_keeps_wall_time_for_a_day_and_absolute_below():
    t = local(NY, "2026-03-07 09:00")
    assert adjustments.add(DAY)(t) == local(NY, "2026-03-08 09:00")
    assert adjustments.add(timedelta(hours=24))(t) == local(NY, "2026-03-08 09:00")
    assert adjustments.add(timedelta(hours=23))(t).astimezone(UTC) == utc("2026-03-08 13:00")
    assert adjustments.add(-DAY)(local(NY, "2026-03-08 09:00")) == t


def test_after_sees_times_an_adjustment_moves_past_it():
    # Weekend times moved to Monday: asking after Sunday noon still gives that Monday.
    start = utc("2026-01-03 09:00")  # a Saturday
    s = Schedule(
        [IntervalClock(timedelta(days=1), start_date=start)],
        filters=[filters.is_weekend],
        adjustments=[adjustments.next_weekday],
    )
    assert s.next(1, after=utc("2026-01-04 12:00")) == [utc("2026-01-05 09:00")]


# ------------------------------------------------------------------ errors


NAIVE = datetime(2026, 1, 1)


@pytest.mark.parametrize(
    ("make", "argument", "words"),
    [
        (lambda: IntervalSchedule(start_date=NAIVE, interval=HOUR), "start_date", "naive"),
        (
            lambda: IntervalSchedule(
                start_date=utc("2026-01-01 00:00"), interval=HOUR, end_date=NAIVE
            ),
            "end_date",
            "naive",
        ),
        (lambda: CronSchedule("0 * * * *", start_date=NAIVE), "start_date", "naive"),
        (lambda: CronClock("0 * * * *", end_date=NAIVE), "end_date", "naive"),
        (lambda: DatesClock([utc("2026-01-01 00:00"), NAIVE]), "dates[1]", "naive"),
        (lambda: DatesClock([]), "dates", "empty"),
        (lambda: DatesClock(utc("2026-01-01 00:00")), "dates", "list"),
        (
            lambda: IntervalSchedule(start_date=utc("2026-01-01 00:00"), interval=timedelta(0)),
            "interval",
            "positive",
        ),
        (lambda: IntervalClock(timedelta(seconds=-5)), "interval", "positive"),
        (lambda: IntervalClock(60), "interval", "timedelta"),
        (lambda: IntervalSchedule(), "interval", "needs an interval"),
        (
            lambda: IntervalSchedule(
                start_date=utc("2026-01-02 00:00"), interval=HOUR, end_date=utc("2026-01-01 00:00")
            ),
            "end_date",
            "before start_date",
        ),
        (lambda: CronSchedule("0 * * *"), "cron", "5 fields"),
        (lambda: CronSchedule("0 0 0 * * *"), "cron", "5 fields"),
        (lambda: CronSchedule("61 * * * *"), "cron", "Bad minute"),
        (lambda: CronSchedule("*/0 * * * *"), "cron", "Bad minute"),
        (lambda: CronSchedule("0 0 30 2 *"), "cron", "day-of-month"),
        (lambda: CronSchedule("@reboot"), "cron", "invalid cron"),
        (lambda: CronSchedule(None), "cron", "string"),
        (lambda: CronSchedule("0 * * * *", day_or="yes"), "day_or", "True or False"),
        (lambda: Schedule([]), "clocks", "at least one clock"),
        (lambda: Schedule(IntervalClock(HOUR)), "clocks", "list of clocks"),
        (lambda: Schedule(["0 * * * *"]), "clocks[0]", "not a clock"),
        (
            lambda: Schedule([IntervalClock(HOUR)], filters=[filters.is_weekday, "weekday"]),
            "filters[1]",
            "not callable",
        ),
        (
            lambda: Schedule([IntervalClock(HOUR)], or_filters=filters.is_weekday),
            "or_filters",
            "list of callables",
        ),
        (
            lambda: Schedule([IntervalClock(HOUR)], not_filters=[3]),
            "not_filters[0]",
            "not callable",
        ),
        (
            lambda: Schedule([IntervalClock(HOUR)], adjustments=[None]),
            "adjustments[0]",
            "not callable",
        ),
        (lambda: IntervalClock(HOUR, parameter_defaults=[1]), "parameter_defaults", "mapping"),
        (lambda: IntervalClock(HOUR, labels="gpu"), "labels", "list of strings"),
        (lambda: IntervalSchedule(interval=HOUR).next(2, after=NAIVE), "after", "naive"),
        (lambda: IntervalSchedule(interval=HOUR).next(-1), "n", ">= 0"),
        (lambda: IntervalSchedule(interval=HOUR).next(1.5), "n", ">= 0"),
        (lambda: filters.on_datetime(NAIVE), "dt", "naive"),
        (lambda: filters.on_date(13, 1), "month", "1 to 12"),
        (lambda: filters.on_date(4, 31), "day", "1 to 30"),
        (lambda: filters.at_time("09:00"), "t", "datetime.time"),
        (lambda: filters.at_time(time(9, tzinfo=UTC)), "t", "naive"),
        (
            lambda: filters.between_datetimes(utc("2026-01-02 00:00"), utc("2026-01-01 00:00")),
            "end",
            "before start",
        ),
        (lambda: filters.between_datetimes(NAIVE, utc("2026-01-01 00:00")), "start", "naive"),
        (lambda: filters.between_times(time(1), 5), "end", "datetime.time"),
        (lambda: filters.between_dates(1, 1, 2, 30), "end_day", "1 to 29"),
        (lambda: filters.is_day_of_week(7), "day_of_week", "0 (Monday) to 6"),
        (lambda: adjustments.add(5), "interval", "timedelta"),
        (lambda: plan_runs(IntervalSchedule(interval=HOUR), set(), NAIVE), "now", "naive"),
        (
            lambda: plan_runs(IntervalSchedule(interval=HOUR), {NAIVE}, utc("2026-01-01 00:00")),
            "already_scheduled[0]",
            "naive",
        ),
        (
            lambda: plan_runs(
                IntervalSchedule(interval=HOUR), set(), utc("2026-01-01 00:00"), min_count=-1
            ),
            "min_count",
            ">= 0",
        ),
        (
            lambda: plan_runs(
                IntervalSchedule(interval=HOUR), set(), utc("2026-01-01 00:00"), horizon=3600
            ),
            "horizon",
            "timedelta",
        ),
        (
            lambda: plan_runs("0 * * * *", set(), utc("2026-01-01 00:00")),
            "schedule",
            "must be a Schedule",
        ),
    ],
)
def test_bad_input_is_a_typed_readable_error(make, argument, words):
    with pytest.raises(ScheduleError) as info:
        make()
    assert isinstance(info.value, FerroflowError) and isinstance(info.value, ValueError)
    assert info.value.argument == argument
    assert argument.split("[")[0] in str(info.value)
    assert words in str(info.value)


def test_pytz_like_zone_is_refused():
    # Any tzinfo with pytz's `localize` method is refused: pytz ignores fold and gives
    # wrong offsets to wall-time arithmetic.
    class Localizing(ZoneInfo):
        def localize(self, dt: datetime) -> datetime:  # pragma: no cover - never called
            return dt

    zone = Localizing("Europe/Paris")
    with pytest.raises(ScheduleError, match="pytz"):
        IntervalClock(HOUR, start_date=datetime(2026, 1, 1, tzinfo=zone))


def test_schedule_error_pickles():
    err = ScheduleError("bad", argument="cron")
    twin = pickle.loads(pickle.dumps(err))
    assert (str(twin), twin.argument) == ("bad", "cron")


def test_adjustment_returning_naive_is_an_error():
    s = Schedule([IntervalClock(HOUR)], adjustments=[lambda dt: dt.replace(tzinfo=None)])
    with pytest.raises(ScheduleError, match="adjustment"):
        s.next(1, after=utc("2026-01-01 00:00"))


# ------------------------------------------------------------------ plan_runs


def test_plan_runs_keeps_ten_and_the_next_hour():
    now = utc("2026-01-01 00:00")
    minutely = IntervalSchedule(start_date=now, interval=timedelta(minutes=1))
    first = plan_runs(minutely, set(), now)
    assert len(first) == 60  # every run due within the hour (more than 10)
    assert first[0].start_time == now + timedelta(minutes=1)
    assert first[-1].start_time == now + timedelta(hours=1)
    daily = IntervalSchedule(start_date=now, interval=DAY)
    assert len(plan_runs(daily, set(), now)) == 10  # at least 10
    every_second = IntervalSchedule(start_date=now, interval=timedelta(seconds=1))
    assert len(plan_runs(every_second, set(), now)) == 100  # capped


def test_plan_runs_after_restart_creates_nothing_new():
    now = utc("2026-01-01 00:00")
    s = IntervalSchedule(start_date=now, interval=timedelta(minutes=7))
    created = plan_runs(s, set(), now)
    store = {e.key for e in created}
    # A restart a little later: only the runs that came into the window are new.
    later = now + timedelta(minutes=15)
    again = plan_runs(s, store | {e.start_time for e in created}, later)
    assert {e.key for e in again}.isdisjoint(store)
    store |= {e.key for e in again}
    assert plan_runs(s, store, later) == []
    assert plan_runs(s, store, now) == []


def test_plan_runs_keys_by_instant_across_the_overlap():
    now = local(NY, "2026-11-01 00:30")
    s = CronSchedule("*/30 * * * *", start_date=local(NY, "2026-10-01 00:00"))
    runs = plan_runs(s, set(), now, min_count=6, horizon=timedelta(0))
    keys = [e.key for e in runs]
    assert len(set(keys)) == 6
    assert keys[:4] == [
        "2026-11-01T05:00:00.000000Z",
        "2026-11-01T05:30:00.000000Z",
        "2026-11-01T06:00:00.000000Z",
        "2026-11-01T06:30:00.000000Z",
    ]
    # Already-scheduled times given in local time with fold are matched by instant (a
    # list: a set of same-zone datetimes would merge the two passes, which compare equal).
    done = [e.start_time for e in runs[:3]]
    assert len(set(done)) == 2
    assert [e.key for e in plan_runs(s, done, now, min_count=6, horizon=timedelta(0))] == keys[3:]


def test_instant_key_is_utc():
    assert instant_key(local(NY, "2026-11-01 01:30", fold=1)) == "2026-11-01T06:30:00.000000Z"
    assert instant_key(local(NY, "2026-11-01 01:30", fold=0)) == "2026-11-01T05:30:00.000000Z"


def test_import_ferroflow_does_not_import_schedules():
    import subprocess
    import sys

    code = (
        "import sys, ferroflow; from ferroflow import Flow; Flow('x'); "
        "print(sorted(m for m in sys.modules if 'schedules' in m or 'cron' in m))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "module", ["__init__", "_time", "clocks", "filters", "adjustments", "_local"]
)
def test_docstring_examples_run(module):
    import doctest
    import importlib

    name = "ferroflow.schedules" + ("" if module == "__init__" else "." + module)
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
