"""The server's scheduler service: runs created ahead at the right UTC instants, once per
flow version and instant (across passes, restarts and daylight saving time), removed
when the schedule goes off or a new version replaces it; on SQLite and a real PostgreSQL,
in-process (``Scheduler.run_once``) and in a real server process.
"""

from __future__ import annotations

import itertools
import json
import textwrap
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from ferroflow import Flow, Parameter, task
from ferroflow.client import Client, flow_structure
from ferroflow.exceptions import FerroflowError, PlatformError
from ferroflow.schedules import CronSchedule, IntervalSchedule, Schedule
from ferroflow.schedules.clocks import CronClock, IntervalClock
from ferroflow.server import models, serve
from ferroflow.server.app import execute
from ferroflow.server.database import Database, open_database
from ferroflow.server.services import Scheduler, ServiceLoop
from test_server import ServerProcess

UTC = timezone.utc
NY = ZoneInfo("America/New_York")


@pytest.fixture(autouse=True)
def _no_api_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's FERROFLOW_API_URL / DATABASE_URL must not reach the tests."""
    monkeypatch.delenv("FERROFLOW_API_URL", raising=False)
    monkeypatch.delenv("FERROFLOW_DATABASE_URL", raising=False)


def gql(db: Database, query: str, **variables: Any) -> dict[str, Any]:
    """Run a query that must succeed; its data."""
    out = execute(db, query, variables or None)
    assert "errors" not in out, out["errors"]
    return out["data"]  # type: ignore[no-any-return]


@task
def inc(x: int) -> int:
    return x + 1


def make_flow(name: str, schedule: Schedule) -> Flow:
    with Flow(name, schedule=schedule) as flow:
        inc(Parameter("n", default=1))
    return flow


def register(db: Database, flow: Flow, source: str = "x = 1\n", **extra: Any) -> str:
    """Register ``flow`` in project etl (made when missing) as the client does; its id."""
    if not gql(db, "{ projects { name } }")["projects"]:
        gql(db, 'mutation { create_project(input: {name: "etl"}) { id } }')
    storage = {"type": "source", "filename": "f.py", "source": source, "flow_name": flow.name}
    data = gql(
        db,
        "mutation($i: RegisterFlowInput!) { register_flow(input: $i) { id } }",
        i={
            "project_name": "etl",
            "name": flow.name,
            "structure": flow_structure(flow),
            "storage": storage,
            **extra,
        },
    )
    return str(data["register_flow"]["id"])


def auto_runs(db: Database, flow_id: str | None = None) -> list[dict[str, Any]]:
    """The automatic runs (of one flow version), by scheduled start."""
    where, args = "idempotency_key LIKE 'ferroflow-schedule:%'", []
    if flow_id is not None:
        where += " AND flow_id = ?"
        args.append(flow_id)
    return db.fetchall(
        "SELECT flow_id, state, parameters, labels, scheduled_start, idempotency_key "
        f"FROM flow_runs WHERE {where} ORDER BY scheduled_start",
        args,
    )


def no_duplicates(runs: list[dict[str, Any]]) -> bool:
    """Every (flow version, instant) at most once."""
    counts = Counter((r["flow_id"], r["scheduled_start"]) for r in runs)
    return max(counts.values(), default=1) == 1


# ----------------------------------------------------------------------- run_once


def test_run_once_schedules_ahead_at_utc_instants_with_defaults_once(db: Database) -> None:
    now = datetime(2030, 1, 1, 12, 0, 0, 500_000, tzinfo=UTC)
    every_second = Schedule(
        [IntervalClock(timedelta(seconds=1), parameter_defaults={"n": 5}, labels=["night"])]
    )
    flow_id = register(db, make_flow("ticker", every_second), labels=["gpu"])
    scheduler = Scheduler(db)
    # Every run due within the hour, up to 100: 100 runs, one per second after now.
    assert scheduler.run_once(now) == 100
    runs = auto_runs(db, flow_id)
    base = datetime(2030, 1, 1, 12, 0, 1, tzinfo=UTC).timestamp()
    assert [r["scheduled_start"] for r in runs] == [base + i for i in range(100)]
    assert {r["state"] for r in runs} == {"Scheduled"}
    assert {r["parameters"] for r in runs} == {json.dumps({"n": 5})}
    assert {r["labels"] for r in runs} == {json.dumps(["gpu", "night"])}
    assert runs[0]["idempotency_key"] == (
        f"ferroflow-schedule:{flow_id}:2030-01-01T12:00:01.000000Z"
    )
    # A second pass (and a fresh scheduler, as after a restart) creates nothing.
    assert scheduler.run_once(now) == 0
    assert Scheduler(db).run_once(now) == 0
    # Ten seconds on, the ten runs that moved into the window are new.
    assert Scheduler(db).run_once(now + timedelta(seconds=10)) == 10
    runs = auto_runs(db, flow_id)
    assert len(runs) == 110 and no_duplicates(runs)
    # The flow runs are readable through the API like any other.
    listed = gql(db, "{ flow_runs(limit: 1000) { state } }")["flow_runs"]
    assert len(listed) == 110


def test_an_hourly_schedule_keeps_the_next_ten(db: Database) -> None:
    now = datetime(2030, 1, 1, 12, 30, tzinfo=UTC)
    flow_id = register(db, make_flow("hourly", IntervalSchedule(interval=timedelta(hours=1))))
    assert Scheduler(db).run_once(now) == 10
    starts = [r["scheduled_start"] for r in auto_runs(db, flow_id)]
    first = datetime(2030, 1, 1, 13, tzinfo=UTC).timestamp()
    assert starts == [first + 3600 * i for i in range(10)]
    assert {r["parameters"] for r in auto_runs(db, flow_id)} == {"{}"}


def test_a_dst_crossing_cron_creates_each_instant_once(db: Database) -> None:
    start = datetime(2026, 1, 1, tzinfo=NY)
    daily = register(db, make_flow("daily", Schedule([CronClock("30 1 * * *", start_date=start)])))
    hourly = register(db, make_flow("hourly", CronSchedule("30 * * * *", start_date=start)))
    # America/New_York falls back on 2026-11-01: 01:30 happens twice (EDT, then EST).
    now = datetime(2026, 10, 31, 0, 45, tzinfo=NY)
    scheduler = Scheduler(db)
    assert scheduler.run_once(now) == 10 + 10
    # The daily 01:30 runs once on the day it happens twice, at the first (EDT).
    days = [r["scheduled_start"] for r in auto_runs(db, daily)]
    expected_days = [
        datetime(2026, 10, 31, 5, 30, tzinfo=UTC),
        datetime(2026, 11, 1, 5, 30, tzinfo=UTC),
    ]
    expected_days += [datetime(2026, 11, d, 6, 30, tzinfo=UTC) for d in range(2, 10)]
    assert days == [t.timestamp() for t in expected_days]
    # The hourly :30 runs in both passes of the overlap: two instants, each once.
    later = datetime(2026, 11, 1, 0, 45, tzinfo=NY)
    assert scheduler.run_once(later) > 0
    hours = [r["scheduled_start"] for r in auto_runs(db, hourly)]
    both = [datetime(2026, 11, 1, 5, 30, tzinfo=UTC), datetime(2026, 11, 1, 6, 30, tzinfo=UTC)]
    for t in both:
        assert hours.count(t.timestamp()) == 1
    assert len(hours) == len(set(hours))
    assert scheduler.run_once(later) == 0
    assert no_duplicates(auto_runs(db))


def test_off_removes_future_auto_runs_and_a_new_version_replaces_them(db: Database) -> None:
    hourly = IntervalSchedule(interval=timedelta(hours=1))
    flow_id = register(db, make_flow("f", hourly))
    by_hand = gql(
        db,
        "mutation($f: String!) { create_flow_run(input: {flow_id: $f, "
        "scheduled_start_time: 4102444800}) { id } }",
        f=flow_id,
    )["create_flow_run"]["id"]
    scheduler = Scheduler(db)
    assert scheduler.run_once() == 10
    gql(
        db,
        "mutation($f: String!) { set_schedule_inactive(input: {flow_id: $f}) { success } }",
        f=flow_id,
    )
    assert auto_runs(db) == []
    assert models.get_flow_run(db, by_hand)["state"] == "Scheduled"  # made by hand: stays
    assert scheduler.run_once() == 0
    gql(
        db,
        "mutation($f: String!) { set_schedule_active(input: {flow_id: $f}) { success } }",
        f=flow_id,
    )
    assert scheduler.run_once() == 10
    # A new version: the old one's future automatic runs go, the new one gets its own.
    new_id = register(db, make_flow("f", hourly), source="x = 2\n")
    assert new_id != flow_id
    assert auto_runs(db) == []
    assert scheduler.run_once() == 10
    assert {r["flow_id"] for r in auto_runs(db)} == {new_id}
    # Registering it again with its schedule off removes them too.
    third = register(db, make_flow("f", hourly), source="x = 3\n", set_schedule_active=False)
    assert auto_runs(db) == [] and scheduler.run_once() == 0
    # Archived: nothing is scheduled for it even with the schedule on.
    gql(
        db,
        "mutation($f: String!) { set_schedule_active(input: {flow_id: $f}) { success } }",
        f=third,
    )
    gql(db, "mutation($f: String!) { archive_flow(input: {flow_id: $f}) { success } }", f=third)
    assert scheduler.run_once() == 0


def test_deleting_the_project_removes_its_future_auto_runs(db: Database) -> None:
    register(db, make_flow("f", IntervalSchedule(interval=timedelta(hours=1))))
    assert Scheduler(db).run_once() == 10
    project = gql(db, "{ projects { id } }")["projects"][0]["id"]
    gql(
        db,
        "mutation($p: String!) { delete_project(input: {project_id: $p}) { success } }",
        p=project,
    )
    assert auto_runs(db) == []
    assert Scheduler(db).run_once() == 0


def test_the_api_shows_the_schedule_without_its_pickle(db: Database) -> None:
    flow_id = register(db, make_flow("f", IntervalSchedule(interval=timedelta(hours=1))))
    got = gql(
        db,
        "query($id: String!) { flow(id: $id) { structure schedule { schedule active } } }",
        id=flow_id,
    )["flow"]
    assert got["schedule"]["active"] is True
    assert set(got["schedule"]["schedule"]) == {"repr"}
    assert set(got["structure"]["schedule"]) == {"repr"}


def test_a_schedule_the_server_cannot_rebuild_is_skipped_not_fatal(db: Database) -> None:
    ok = register(db, make_flow("ok", IntervalSchedule(interval=timedelta(hours=1))))
    structure = flow_structure(make_flow("bad", IntervalSchedule(interval=timedelta(hours=1))))
    structure["schedule"]["cloudpickle"] = "bm90IGEgcGlja2xl"  # "not a pickle"
    gql(
        db,
        "mutation($i: RegisterFlowInput!) { register_flow(input: $i) { id } }",
        i={
            "project_name": "etl",
            "name": "bad",
            "structure": structure,
            "storage": {"type": "source", "source": "x = 1\n"},
        },
    )
    assert Scheduler(db).run_once() == 10
    assert {r["flow_id"] for r in auto_runs(db)} == {ok}


def test_a_service_loop_logs_errors_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    class Flaky:
        calls = 0

        def run_once(self) -> int:
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("boom")
            return 0

    flaky = Flaky()
    loop = ServiceLoop(flaky, interval=0.01)
    loop.start()
    wait_for(lambda: flaky.calls >= 3, "three passes of the loop")
    loop.stop()
    assert not loop._thread.is_alive()
    failed = [r for r in caplog.records if r.name == "ferroflow.server.scheduler"]
    assert len(failed) == 1 and failed[0].exc_info is not None
    assert "boom" in str(failed[0].exc_info[1])


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_bad_scheduler_interval_is_refused_before_serving(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FERROFLOW_SCHEDULER_INTERVAL", value)
    with pytest.raises(PlatformError, match="scheduler interval must be a number of seconds"):
        serve(port=0)
    with pytest.raises(FerroflowError, match="interval must be > 0"):
        ServiceLoop(Scheduler(open_database()), interval=0)


# ----------------------------------------------------------------- a real server

FLOWS_FILE = textwrap.dedent(
    """
    from datetime import timedelta

    from ferroflow import Flow, Parameter, task
    from ferroflow.schedules import IntervalSchedule, Schedule, filters
    from ferroflow.schedules.clocks import IntervalClock

    @task
    def inc(x):
        return x + 1

    def every_other(dt):
        return dt.second % 2 == 0

    with Flow("ticker", schedule=IntervalSchedule(interval=timedelta(seconds=1))) as ticker:
        inc(Parameter("n", default=1))

    with Flow(
        "even",
        schedule=Schedule(
            [IntervalClock(timedelta(seconds=1), parameter_defaults={"n": 7})],
            filters=[every_other],
        ),
    ) as even:
        inc(Parameter("n", default=1))
    """
)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """None (the run store at FERROFLOW_HOME) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("postgres_server").create_database())


def wait_for(check: Any, what: str) -> Any:
    """Poll ``check()`` until it is truthy (a generous bound, not a timing assertion)."""
    for _ in range(1200):
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def test_a_server_schedules_registered_flows_and_a_restart_makes_no_duplicates(
    database_url: str | None, _ferroflow_home: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FERROFLOW_SCHEDULER_INTERVAL", "0.2")
    flows = tmp_path / "flows.py"
    flows.write_text(FLOWS_FILE)
    db = open_database(database_url)
    server = ServerProcess(database_url, _ferroflow_home)
    try:
        assert server.cli("projects", "create", "demo").returncode == 0
        for name in ("ticker", "even"):
            reg = server.cli("register", "--project", "demo", f"{flows}:{name}")
            assert reg.returncode == 0, reg.stderr
        ids = {f["name"]: f["id"] for f in Client(server.url).get_flows("demo")}
        ticker = wait_for(
            lambda: len(auto_runs(db, ids["ticker"])) >= 100 and auto_runs(db, ids["ticker"]),
            "ticker runs",
        )
        # Whole UTC seconds, one apart, with the clock's parameter defaults (none).
        starts = [r["scheduled_start"] for r in ticker]
        assert all(s == int(s) for s in starts)
        assert all(b - a == 1 for a, b in itertools.pairwise(starts))
        assert {r["parameters"] for r in ticker} == {"{}"}
        # A user-defined filter travels with the schedule; the clock's defaults too.
        even = wait_for(lambda: auto_runs(db, ids["even"]), "even runs")
        assert all(int(r["scheduled_start"]) % 2 == 0 for r in even)
        assert {r["parameters"] for r in even} == {json.dumps({"n": 7})}
        assert server.stop() == 0, server.stderr

        before = max(r["scheduled_start"] for r in auto_runs(db, ids["ticker"]))
        server = ServerProcess(database_url, _ferroflow_home)
        wait_for(
            lambda: max(r["scheduled_start"] for r in auto_runs(db, ids["ticker"])) > before,
            "runs scheduled after the restart",
        )
        assert no_duplicates(auto_runs(db))

        off = server.cli("flows", "schedule", "ticker", "--off")
        assert off.returncode == 0 and "is off" in off.stdout, off.stderr
        after_off = time.time()
        assert [r for r in auto_runs(db, ids["ticker"]) if r["scheduled_start"] > after_off] == []
        assert auto_runs(db, ids["even"])  # the other flow keeps its runs
        unknown = server.cli("flows", "schedule", "nope", "--on")
        assert unknown.returncode == 2 and "no flow 'nope'" in unknown.stderr
        on = server.cli("flows", "schedule", "ticker", "--on", "--project", "demo")
        assert on.returncode == 0, on.stderr
        wait_for(
            lambda: [r for r in auto_runs(db, ids["ticker"]) if r["scheduled_start"] > after_off],
            "runs again once the schedule is on",
        )
        assert server.stop() == 0, server.stderr
        assert "Traceback" not in server.stderr
        assert no_duplicates(auto_runs(db))
    finally:
        if server.process.poll() is None:
            server.stop()
        db.close()
