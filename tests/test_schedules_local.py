"""flow.run() on a flow with a schedule: runs at each time, run_on_schedule=False, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone

import pytest

from ferroflow import Flow, Parameter, task
from ferroflow.exceptions import ParameterError, ScheduleError
from ferroflow.schedules import IntervalSchedule, Schedule
from ferroflow.schedules.clocks import DatesClock, IntervalClock

UTC = timezone.utc

RUNS: list[dict[str, object]] = []


@task
def record(i: int, label: str) -> int:
    RUNS.append({"i": i, "label": label, "at": datetime.now(UTC)})
    return i * 10


def make_flow(schedule: object) -> Flow:
    with Flow("scheduled", schedule=schedule) as flow:
        i = Parameter("i", default=-1)
        label = Parameter("label", default="default")
        flow.out = record(i, label)  # type: ignore[attr-defined]
    return flow


@pytest.fixture(autouse=True)
def _clear_runs():
    RUNS.clear()
    yield
    RUNS.clear()


def test_runs_each_scheduled_time_with_its_parameter_defaults_then_returns_the_last_state():
    now = datetime.now(UTC)
    # The first time is 0.5 s ahead, to be still ahead when flow.run asks for it.
    times = [now + timedelta(milliseconds=500 + 200 * k) for k in range(4)]
    schedule = Schedule(
        [
            DatesClock([t], parameter_defaults={"i": k, "label": "clock"})
            for k, t in enumerate(times)
        ]
    )
    flow = make_flow(schedule)
    state = flow.run(label="explicit")  # explicit parameters win over the clock's defaults
    assert state.is_successful()
    assert 1 <= len(RUNS) <= 4
    indices = [r["i"] for r in RUNS]
    assert indices == sorted(set(indices))  # in order, none twice (late ones are skipped)
    assert all(r["label"] == "explicit" for r in RUNS)
    for r in RUNS:
        assert r["at"] >= times[r["i"]]  # never before its time
    assert state.result[flow.out].result == indices[-1] * 10  # the last run's state


def test_short_interval_schedule_terminates_at_its_end_date():
    start = datetime.now(UTC) + timedelta(milliseconds=500)
    schedule = Schedule(
        [
            IntervalClock(
                timedelta(milliseconds=200),
                start_date=start,
                end_date=start + timedelta(seconds=1),
                parameter_defaults={"i": 7},
            )
        ]
    )
    state = make_flow(schedule).run()
    assert state.is_successful()
    assert 1 <= len(RUNS) <= 6
    assert all(r["i"] == 7 and r["label"] == "default" for r in RUNS)
    assert all(r["at"] >= start for r in RUNS)


def test_run_on_schedule_false_runs_once_now():
    later = datetime.now(UTC) + timedelta(hours=1)
    flow = make_flow(IntervalSchedule(start_date=later, interval=timedelta(hours=1)))
    state = flow.run(run_on_schedule=False, i=3)
    assert state.is_successful()
    assert [r["i"] for r in RUNS] == [3]


def test_engine_options_pass_through_to_each_run():
    soon = datetime.now(UTC) + timedelta(milliseconds=500)
    flow = make_flow(Schedule([DatesClock([soon], parameter_defaults={"i": 4})]))
    seen: list[dict[str, int]] = []
    state = flow.run(record=False, progress=seen.append, label="kw")
    assert state.is_successful()
    assert [(r["i"], r["label"]) for r in RUNS] == [(4, "kw")]
    assert seen  # the progress option reached the run


def test_a_flow_without_schedule_runs_once():
    state = make_flow(None).run(i=1)
    assert state.is_successful() and len(RUNS) == 1


def test_a_schedule_with_no_future_time_is_an_error():
    past = datetime(2020, 1, 1, tzinfo=UTC)
    flow = make_flow(Schedule([DatesClock([past])]))
    with pytest.raises(ScheduleError, match=r"no time after now.*run_on_schedule=False"):
        flow.run()
    assert RUNS == []


def test_bad_parameters_fail_before_waiting():
    # The first time is an hour away: an error raised at that time would hang the test.
    later = datetime.now(UTC) + timedelta(hours=1)
    flow = make_flow(IntervalSchedule(start_date=later, interval=timedelta(hours=1)))
    with pytest.raises(ParameterError, match="nope"):
        flow.run(nope=1)
    bad_default = Schedule([DatesClock([later], parameter_defaults={"missing": 1})])
    with pytest.raises(ParameterError, match="missing"):
        make_flow(bad_default).run()
    assert RUNS == []


def test_a_schedule_that_is_not_a_schedule_is_an_error():
    with pytest.raises(ScheduleError, match=r"not a ferroflow\.schedules\.Schedule"):
        make_flow("0 * * * *").run()


SCRIPT = """
import logging, sys
from datetime import datetime, timedelta, timezone
from ferroflow import Flow, Parameter, task
from ferroflow.schedules import Schedule
from ferroflow.schedules.clocks import DatesClock

logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="log %(message)s")

@task
def say(i):
    print("ran", i, flush=True)

now = datetime.now(timezone.utc)
clocks = [
    DatesClock([now + timedelta(milliseconds=500)], parameter_defaults={"i": 0}),
    DatesClock([now + timedelta(hours=1)], parameter_defaults={"i": 1}),
]
with Flow("waits", schedule=Schedule(clocks)) as flow:
    say(Parameter("i"))
CATCH
"""

CATCH = """
try:
    flow.run()
except KeyboardInterrupt as err:
    print("interrupted", err.__context__ is None, err.__cause__ is None, flush=True)
    sys.exit(0)
"""


def run_until_waiting_then_sigint(catch: bool) -> tuple[int, str, str]:
    code = textwrap.dedent(SCRIPT).replace("CATCH", CATCH if catch else "flow.run()")
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    seen = []
    try:
        # Wait for the first run, then for the loop to announce the wait for the second.
        while True:
            line = proc.stdout.readline()
            assert line, (
                f"the script ended early: {seen}, {proc.stderr.read() if proc.stderr else ''}"
            )
            seen.append(line.strip())
            if "next run at" in line and any(s == "ran 0" for s in seen):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, "\n".join(seen) + "\n" + out, err


def test_ctrl_c_while_waiting_exits_cleanly():
    code, out, err = run_until_waiting_then_sigint(catch=True)
    assert code == 0, err
    assert out.count("ran 0") == 1 and "ran 1" not in out
    assert "interrupted True True" in out  # nothing chained to the KeyboardInterrupt
    assert "Traceback" not in err


def test_ctrl_c_uncaught_gives_one_short_traceback():
    code, out, err = run_until_waiting_then_sigint(catch=False)
    assert code in (-signal.SIGINT, 128 + signal.SIGINT)
    assert "ran 1" not in out
    assert err.count("Traceback") == 1
    assert err.rstrip().endswith("KeyboardInterrupt")
    assert "During handling" not in err and "direct cause" not in err


CANCEL_SCRIPT = """
import os, signal
from datetime import datetime, timedelta, timezone
from ferroflow import Flow, Parameter, task
from ferroflow.schedules import Schedule
from ferroflow.schedules.clocks import DatesClock

@task
def say(i):
    print("ran", i, flush=True)
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during the run

now = datetime.now(timezone.utc)
clocks = [
    DatesClock([now + timedelta(milliseconds=500 + 200 * k)], parameter_defaults={"i": k})
    for k in range(3)
]
with Flow("cancelled", schedule=Schedule(clocks)) as flow:
    say(Parameter("i"))
try:
    flow.run()
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def test_ctrl_c_during_a_run_ends_the_loop():
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CANCEL_SCRIPT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # One run (whichever time came first), then the interrupt: no later time runs.
    assert len(lines) == 2 and lines[0].startswith("ran ") and lines[1] == "interrupted"
