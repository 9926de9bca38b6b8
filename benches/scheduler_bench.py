"""The scheduler service's figure (issue 12): one ``Scheduler.run_once`` pass over 1,000
scheduled flows, on a SQLite store and on PostgreSQL. Target: under 1 s a pass.

The 1,000 flow versions are registered through ``models.register_flow`` with what
``flow.register()`` sends (structure and schedule pickle); a quarter each of cron
``*/5 * * * *``, cron ``30 2 * * *`` (New York), a 1-minute interval and an hourly one.
Timed, database work included:

- **first pass**: nothing scheduled yet; it creates every run (23,000);
- **steady pass**: the same instant again; nothing to create (best of 5);
- **top-up pass**: 10 minutes later; it adds the runs that moved into the window.

PostgreSQL is started privately (as the tests do, ``tests/_postgres.py``)::

    .venv/bin/python benches/scheduler_bench.py [--flows N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _postgres import start_postgres
from ferroflow import Flow, Parameter, task
from ferroflow.client import flow_structure
from ferroflow.schedules import CronSchedule, IntervalSchedule, Schedule
from ferroflow.server import models
from ferroflow.server.database import Database, open_database
from ferroflow.server.services import Scheduler

UTC = timezone.utc
NY = ZoneInfo("America/New_York")


@task
def inc(x: int) -> int:
    return x + 1


def schedule_for(i: int) -> Schedule:
    """One of four kinds of schedule."""
    start = datetime(2026, 1, 1, tzinfo=NY)
    kinds = [
        CronSchedule("*/5 * * * *"),
        CronSchedule("30 2 * * *", start_date=start),
        IntervalSchedule(interval=timedelta(minutes=1)),
        IntervalSchedule(interval=timedelta(hours=1)),
    ]
    return kinds[i % 4]


def register_flows(db: Database, n: int) -> None:
    """Register ``n`` scheduled flows in project bench."""
    models.create_project(db, "bench")
    for i in range(n):
        with Flow(f"flow-{i}", schedule=schedule_for(i)) as flow:
            inc(Parameter("n", default=1))
        models.register_flow(
            db,
            project_name="bench",
            name=flow.name,
            structure=flow_structure(flow),
            storage={"type": "source", "source": f"# flow {i}\n"},
        )


def measure(db: Database, label: str) -> None:
    """Time the three passes on ``db`` and print them."""
    now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    scheduler = Scheduler(db)
    t0 = time.perf_counter()
    first = scheduler.run_once(now)
    first_s = time.perf_counter() - t0
    steady = []
    for _ in range(5):
        t0 = time.perf_counter()
        assert scheduler.run_once(now) == 0
        steady.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    topped = scheduler.run_once(now + timedelta(minutes=10))
    top_s = time.perf_counter() - t0
    print(
        f"{label:<11} first pass {first_s:6.3f} s ({first} runs)   "
        f"steady pass {min(steady):6.3f} s (0 runs, best of 5)   "
        f"top-up pass {top_s:6.3f} s ({topped} runs)",
        flush=True,
    )


def main() -> None:
    """Measure on SQLite, then on a private PostgreSQL."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flows", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ferroflow-bench-") as home:
        os.environ["FERROFLOW_HOME"] = home
        os.environ.pop("FERROFLOW_DATABASE_URL", None)
        db = open_database()
        register_flows(db, args.flows)
        measure(db, "SQLite")
        db.close()
    with start_postgres() as pg:
        db = open_database(pg.create_database())
        register_flows(db, args.flows)
        measure(db, "PostgreSQL")
        db.close()


if __name__ == "__main__":
    main()
