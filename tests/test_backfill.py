"""Backfills: ``ferroflow flows backfill`` and ``backfill_flow_runs`` against a real
server and real agents; idempotent, no duplicates when backfills overlap (also two
servers on one PostgreSQL), ``--max-concurrent`` bounds the runs at once."""

from __future__ import annotations

import json
import threading
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from _tasks import Ledger
from ferroflow.cli import run_cli
from ferroflow.exceptions import ApiError, OpsError
from ferroflow.server.backfill import backfill, parse_instant
from ferroflow.server.database import open_database
from test_agent import Server, agents, finished, ledger, register, server, wait_for

__all__ = ["agents", "ledger", "server"]  # fixtures used by name

FLOWS = """
import os, time
from datetime import datetime, timedelta, timezone
from ferroflow import Flow, Parameter, task
from ferroflow.schedules import Schedule
from ferroflow.schedules.clocks import IntervalClock
from _tasks import Ledger

LEDGER = Ledger(os.environ.get("AGENT_TEST_LEDGER", "/nonexistent"))

@task
def record(n):
    LEDGER.add("start", n, time.time())
    time.sleep(0.5)
    LEDGER.add("end", n, time.time())
    return n

daily_schedule = Schedule(clocks=[IntervalClock(
    timedelta(days=1),
    start_date=datetime(2026, 1, 1, 6, tzinfo=timezone.utc),
    parameter_defaults={"n": 7},
)])

with Flow("daily", schedule=daily_schedule) as daily:
    record(Parameter("n", default=1))

with Flow("unscheduled") as unscheduled:
    record(Parameter("n", default=1))
"""

NOV_1 = datetime(2026, 11, 1, 6, tzinfo=timezone.utc).timestamp()


def runs_of(server: Server, flow: str = "daily") -> list[dict[str, Any]]:
    rows = server.client.get_flow_runs(limit=1000)
    return [r for r in rows if r["flow_name"] == flow]


def per_instant(runs: list[dict[str, Any]]) -> Counter[float]:
    return Counter(float(r["scheduled_start_time"]) for r in runs)


def cli(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = run_cli(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_parse_instant() -> None:
    assert (
        parse_instant("2026-11-01", "x") == datetime(2026, 11, 1, tzinfo=timezone.utc).timestamp()
    )
    end = parse_instant("2026-11-30", "x", end=True)
    assert end == datetime(2026, 12, 1, tzinfo=timezone.utc).timestamp() - 1e-6
    assert parse_instant("2026-11-01T06:00:00+01:00", "x") == NOV_1 - 3600
    assert parse_instant("2026-11-01T06:00:00", "x") == NOV_1
    for bad in ("yesterday", "2026-13-01", "", "2026-11-31"):
        with pytest.raises(OpsError, match="cannot read"):
            parse_instant(bad, "--start")


def backfill_cli(
    server: Server, capsys: pytest.CaptureFixture[str], start: str, end: str, *extra: str
) -> tuple[int, str, str]:
    """``ferroflow flows backfill daily --start START --end END [extra] --api URL``."""
    return cli(
        "flows",
        "backfill",
        "daily",
        "--start",
        start,
        "--end",
        end,
        *extra,
        "--api",
        server.url,
        capsys=capsys,
    )


def test_a_backfill_creates_one_run_per_scheduled_time_once(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    register(server, tmp_path, FLOWS, "daily")
    code, out, err = backfill_cli(server, capsys, "2026-11-01", "2026-11-30")
    assert code == 0, err
    assert "created 30 run(s)" in out and "0 scheduled time(s) had a run already" in out
    runs = [r for r in runs_of(server) if r["name"] and r["name"].startswith("backfill")]
    assert sorted(per_instant(runs)) == [NOV_1 + d * 86400 for d in range(30)]
    assert all(r["parameters"] == {"n": 7} and r["state"] == "Scheduled" for r in runs)
    assert runs[0]["name"].startswith("backfill 2026-11-")
    # Again, and a range that overlaps it: nothing that exists is made twice.
    code, out, _ = backfill_cli(server, capsys, "2026-11-01", "2026-11-30", "--json")
    assert code == 0 and json.loads(out)["created"] == 0 and json.loads(out)["existing"] == 30
    code, out, _ = backfill_cli(server, capsys, "2026-10-30", "2026-11-02", "--json")
    got = json.loads(out)
    assert code == 0 and (got["created"], got["existing"]) == (2, 2)
    counts = per_instant(runs_of(server))
    assert set(counts.values()) == {1}, counts


def test_overlapping_backfills_at_once_make_no_duplicates(server: Server, tmp_path: Path) -> None:
    ids = register(server, tmp_path, FLOWS, "daily")
    ranges = [
        ("2026-11-01", "2026-11-20"),
        ("2026-11-10", "2026-11-30"),
        ("2026-11-01", "2026-11-30"),
        ("2026-11-05", "2026-11-25"),
    ] * 2
    barrier = threading.Barrier(len(ranges))
    results: list[Any] = [None] * len(ranges)

    def go(i: int, start: str, end: str) -> None:
        barrier.wait()
        results[i] = server.client.graphql(
            "mutation($i: BackfillInput!) { backfill_flow_runs(input: $i) { created } }",
            {"i": {"flow_id": ids["daily"], "start": start, "end": end}},
        )["backfill_flow_runs"]["created"]

    threads = [threading.Thread(target=go, args=(i, *r)) for i, r in enumerate(ranges)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(results) == 30, results
    nov = [r for r in runs_of(server) if NOV_1 <= r["scheduled_start_time"] < NOV_1 + 30 * 86400]
    assert len(nov) == 30 and set(per_instant(nov).values()) == {1}


def test_two_servers_on_one_postgresql_backfill_without_duplicates(
    postgres_server: Any, tmp_path: Path
) -> None:
    import sys

    from ferroflow.cli import load_module
    from ferroflow.client import flow_storage, flow_structure
    from ferroflow.server import models

    url = postgres_server.create_database()
    path = tmp_path / "flows_src" / "agent_flows.py"
    path.parent.mkdir(parents=True)
    path.write_text(FLOWS)
    sys.path.insert(0, str(Path(__file__).parent))
    flow = load_module(path).daily
    one, two = open_database(url), open_database(url)
    try:
        models.create_project(one, "p")
        got = models.register_flow(
            one,
            project_name="p",
            name="daily",
            structure=flow_structure(flow),
            storage=flow_storage(flow, path),
        )
        flow_id = got["id"]
        barrier = threading.Barrier(2)
        made: list[int] = []

        def go(db: Any) -> None:
            barrier.wait()
            for start in ("2026-11-01", "2026-11-11", "2026-11-21"):
                made.append(
                    backfill(
                        db,
                        flow_id=flow_id,
                        start=parse_instant(start, "s"),
                        end=parse_instant("2026-11-30", "e", end=True),
                    )["created"]
                )

        threads = [threading.Thread(target=go, args=(db,)) for db in (one, two)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sum(made) == 30, made
        rows = one.fetchall("SELECT scheduled_start FROM flow_runs WHERE flow_id = ?", (flow_id,))
        assert len(rows) == 30 and len({r["scheduled_start"] for r in rows}) == 30
    finally:
        one.close()
        two.close()


def test_max_concurrent_bounds_the_runs_agents_hold(
    server: Server, tmp_path: Path, agents: Any, ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    register(server, tmp_path, FLOWS, "daily")
    code, out, err = backfill_cli(
        server, capsys, "2026-11-01", "2026-11-06", "--max-concurrent", "2", "--json"
    )
    assert code == 0, err
    created = json.loads(out)["flow_run_ids"]
    assert len(created) == 6
    agents("--max-concurrent", "4")
    agents("--max-concurrent", "4")
    seen_waiting = wait_for(
        "a run waiting for its backfill's bound",
        lambda: any(
            (r["message"] or "").startswith("waiting: its backfill runs 2 at once")
            for r in runs_of(server)
            if r["state"] == "Scheduled"
        ),
    )
    assert seen_waiting
    for run_id in created:
        run = wait_for(f"run {run_id}", lambda r=run_id: finished(server.client, r))
        assert run["state"] == "Success", run
    events = sorted((t, kind) for kind, _, t in ledger.items())  # type: ignore[misc]
    running = peak = 0
    for _, kind in events:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    # Each run exactly once (start and end of 6), at most 2 at a time.
    assert len(events) == 12 and peak <= 2, events


def test_bad_backfills_are_readable_errors(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    register(server, tmp_path, FLOWS, "daily", "unscheduled")
    api = ("--api", server.url)
    cases = [
        (("daily", "--start", "2026-11-30", "--end", "2026-11-01"), "end is before its start"),
        (("daily", "--start", "soon", "--end", "2026-11-01"), "--start: cannot read 'soon'"),
        (("unscheduled", "--start", "2026-11-01", "--end", "2026-11-02"), "has no schedule"),
        (("nosuch", "--start", "2026-11-01", "--end", "2026-11-02"), "no flow named 'nosuch'"),
        (("daily", "--start", "2000-01-01", "--end", "2099-01-01"), "backfill it in parts"),
        (("daily", "--start", "2026-11-01", "--end", "2026-11-02", "--max-concurrent", "0"), "0"),
    ]
    for args, message in cases:
        code, _, err = cli("flows", "backfill", *args, *api, capsys=capsys)
        assert code == 2 and message in err, (args, err)
    with pytest.raises(ApiError, match="max-concurrent must be an int >= 1"):
        server.client.graphql(
            'mutation { backfill_flow_runs(input: {flow_name: "daily", start: "2026-11-01", '
            'end: "2026-11-02", max_concurrent: -1}) { created } }'
        )
    assert not [r for r in runs_of(server) if (r["name"] or "").startswith("backfill")]
