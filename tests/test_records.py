"""What a run records is true (issue 10): logs reach the store from every executor, resume
rules, the CLI's records after a kill or Ctrl-C, tracebacks from workers, timeouts that keep
the context, runs that cannot start or are interrupted do not stay running."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest
from distributed import LocalCluster

from ferroflow import Flow, Parameter, context, get_run_logger, task
from ferroflow.executors import DaskExecutor, ProcessExecutor
from ferroflow.store import open_store


def ff(
    *args: str, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferroflow", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def last_run_id() -> str:
    with open_store() as store:
        return store.list_flow_runs(1)[0].id


# --- logs ---------------------------------------------------------------------------------


@task
def chatty(x: int) -> int:
    get_run_logger().info("child %d says hi", x)
    if x == 2:
        get_run_logger().warning("two is a warning")
    return x


@task(log_stdout=True)
def printer(xs: list[int]) -> int:
    print("total", sum(xs))
    print("no newline at the end", end="")
    return sum(xs)


def test_run_logger_and_printed_lines_reach_the_store(executor: Any) -> None:
    with Flow("logs") as flow:
        p = printer(chatty.map([1, 2, 3]))
    state = flow.run(executor=executor)
    assert state.is_successful()
    assert state.result[p].result == 6
    run_id = last_run_id()
    with open_store() as store:
        runs = {t.run: t for t in store.task_runs(run_id)}
        logs = store.logs(run_id)
        flow_run = store.flow_run(run_id)
    assert flow_run is not None
    got = sorted((runs[line.run].full_name, line.level, line.message) for line in logs)
    assert got == [
        ("chatty[0]", logging.INFO, "child 1 says hi"),
        ("chatty[1]", logging.INFO, "child 2 says hi"),
        ("chatty[1]", logging.WARNING, "two is a warning"),
        ("chatty[2]", logging.INFO, "child 3 says hi"),
        ("printer", logging.INFO, "no newline at the end"),
        ("printer", logging.INFO, "total 6"),
    ]
    for line in logs:
        assert flow_run.started <= line.at <= (flow_run.ended or 0)


def test_logs_are_in_runs_show_json_and_runs_logs(tmp_path: Path) -> None:
    script = tmp_path / "flow.py"
    script.write_text(
        "from ferroflow import Flow, task, get_run_logger\n"
        "@task\n"
        "def hello(x):\n"
        "    get_run_logger().info('hello %s', x)\n"
        "    get_run_logger().error('bad %s', x)\n"
        "    return x\n"
        "@task(log_stdout=True)\n"
        "def say(xs):\n"
        "    print('said', len(xs))\n"
        "with Flow('hello') as flow:\n"
        "    say(hello.map(['a', 'b']))\n"
    )
    assert ff("run", str(script)).returncode == 0
    run_id = last_run_id()
    shown = json.loads(ff("runs", "show", run_id[:8], "--json").stdout)
    messages = sorted(line["message"] for line in shown["logs"])
    assert messages == ["bad a", "bad b", "hello a", "hello b", "said 2"]
    table = ff("runs", "show", run_id[:8])
    assert f"5 lines (ferroflow runs logs {run_id[:8]})" in table.stdout
    out = ff("runs", "logs", run_id[:8])
    assert out.returncode == 0, out.stderr
    assert "hello[1]" in out.stdout and "hello b" in out.stdout and "said 2" in out.stdout
    only = json.loads(ff("runs", "logs", run_id[:8], "--task", "hello", "--json").stdout)
    assert sorted(line["message"] for line in only) == ["bad a", "bad b", "hello a", "hello b"]
    assert {line["task_name"] for line in only} == {"hello[0]", "hello[1]"}
    errors = json.loads(ff("runs", "logs", run_id[:8], "--level", "error", "--json").stdout)
    assert sorted(line["message"] for line in errors) == ["bad a", "bad b"]
    child = json.loads(ff("runs", "logs", run_id[:8], "--task", "hello[0]", "--json").stdout)
    assert [line["message"] for line in child] == ["hello a", "bad a"]
    bad = ff("runs", "logs", run_id[:8], "--task", "nope")
    assert bad.returncode == 2 and "no task named 'nope'" in bad.stderr
    bad = ff("runs", "logs", run_id[:8], "--level", "loud")
    assert bad.returncode == 2 and "unknown log level" in bad.stderr


def test_many_log_lines_are_all_written() -> None:
    @task
    def many(x: int) -> int:
        logger = get_run_logger()
        for i in range(50):
            logger.info("line %d of %d", i, x)
        return x

    with Flow("many-logs") as flow:
        many.map(list(range(200)))
    assert flow.run().is_successful()
    with open_store() as store:
        logs = store.logs(last_run_id())
    assert len(logs) == 200 * 50
    assert len({(line.run, line.message) for line in logs}) == 200 * 50


@task
def logs_a_lot(n: int) -> int:
    logger = get_run_logger()
    for i in range(n):
        logger.info("line %d", i)
    return n


def test_a_long_task_in_a_worker_process_sends_its_lines_in_batches() -> None:
    # More lines than one batch: they leave the worker while the task runs.
    with Flow("chatty-worker") as flow:
        logs_a_lot(10_000)
    assert flow.run(executor=ProcessExecutor(max_workers=1)).is_successful()
    with open_store() as store:
        logs = store.logs(last_run_id())
    assert [line.message for line in logs] == [f"line {i}" for i in range(10_000)]


def test_unrecorded_runs_log_nothing_to_the_store_and_keep_nothing() -> None:
    from ferroflow import runtime

    # What earlier tests of this process left (a secret masked while this process also
    # served as an in-process Dask worker queues the value for a driver) is not this
    # test's: start from nothing.
    runtime._take_remote_logs()
    with Flow("quiet") as flow:
        chatty.map([1, 2, 3])
    assert flow.run().is_successful()  # the store handler is installed now
    assert flow.run(record=False).is_successful()
    with open_store() as store:
        assert len(store.list_flow_runs()) == 1
    assert runtime._take_remote_logs() == []  # nothing left waiting in this process


# --- resume rules ---------------------------------------------------------------------------


@task(checkpoint=True)
def numbers(n: int) -> list[int]:
    return list(range(n))


def _resumable(tmp_path: Path, fail: bool) -> tuple[Flow, Any]:
    from ferroflow.results import LocalResult

    @task(checkpoint=True, result=LocalResult(dir=str(tmp_path / "r")))
    def source(n: int) -> list[int]:
        return list(range(n))

    @task
    def summed(xs: list[int]) -> int:
        if fail:
            raise RuntimeError("not this time")
        return sum(xs)

    with Flow("resumable") as flow:
        out = summed(source(Parameter("n")))
    return flow, out


def test_a_resume_uses_the_runs_parameters_and_refuses_others(tmp_path: Path) -> None:
    from ferroflow.exceptions import ParameterError, ResumeError

    flow, _ = _resumable(tmp_path, fail=True)
    assert flow.run(n=100).is_failed()
    run_id = last_run_id()
    again, out = _resumable(tmp_path, fail=False)
    with pytest.raises(ResumeError) as err:
        again.run(n=50, resume=run_id)
    assert err.value.parameters == ["n"]
    assert isinstance(err.value, ParameterError)
    assert "n=100" in str(err.value) and "50" in str(err.value)
    # The same value, or none, is fine: the restored source was computed from n=100.
    state = again.run(n=100, resume=run_id)
    assert state.result[out].result == sum(range(100))
    flow, _ = _resumable(tmp_path, fail=True)
    flow.run(n=10)
    again, out = _resumable(tmp_path, fail=False)
    state = again.run(resume=last_run_id())
    assert state.result[out].result == sum(range(10))


def test_cli_resume_with_a_changed_parameter_exits_2_naming_it(tmp_path: Path) -> None:
    script = tmp_path / "flow.py"
    marker = tmp_path / "ok"
    script.write_text(
        "import os\n"
        "from ferroflow import Flow, Parameter, task\n"
        "from ferroflow.results import LocalResult\n"
        f"@task(checkpoint=True, result=LocalResult(dir={str(tmp_path / 'r')!r}))\n"
        "def source(n):\n"
        "    return list(range(n))\n"
        "@task\n"
        "def summed(xs):\n"
        f"    if not os.path.exists({str(marker)!r}):\n"
        "        raise RuntimeError('not yet')\n"
        "    return sum(xs)\n"
        "with Flow('cli-resume') as flow:\n"
        "    summed(source(Parameter('n')))\n"
    )
    assert ff("run", str(script), "--param", "n=100").returncode == 1
    run_id = last_run_id()
    marker.write_text("")
    bad = ff("run", str(script), "--param", "n=50", "--resume", run_id[:8])
    assert bad.returncode == 2, bad.stderr
    assert "n=100" in bad.stderr and "given 50" in bad.stderr
    good = ff("runs", "resume", run_id[:8])
    assert good.returncode == 0, good.stdout + good.stderr


def test_a_changed_flow_restores_only_unchanged_tasks(tmp_path: Path) -> None:
    from ferroflow.results import LocalResult

    result = LocalResult(dir=str(tmp_path / "r"))
    ran: list[str] = []

    def build(double: bool, fail: bool, extra: bool = False) -> tuple[Flow, Any]:
        @task
        def unrelated() -> int:
            ran.append("unrelated")
            return 0

        @task(checkpoint=True, result=result)
        def load() -> list[int]:
            ran.append("load")
            return [1, 2, 3]

        @task(checkpoint=True, result=result)
        def scale(xs: list[int], k: int) -> list[int]:
            ran.append("scale")
            return [x * k for x in xs]

        @task(checkpoint=True, result=result)
        def count(xs: list[int]) -> int:
            ran.append("count")
            return len(xs)

        @task(checkpoint=True, result=result)
        def report(xs: list[int], n: int) -> str:
            ran.append("report")
            if fail:
                raise RuntimeError("later")
            return f"{sum(xs)}/{n}"

        with Flow("changing") as flow:
            if extra:  # a new task first: every other task's id in the flow moves
                unrelated()
            xs = load()
            out = report(scale(xs, 2 if double else 3), count(xs))
        return flow, out

    flow, _ = build(double=True, fail=True)
    assert flow.run().is_failed()
    run_id = last_run_id()
    ran.clear()
    # scale's constant argument changed: scale and report run again; load and count
    # (unchanged, and so are their upstreams) are restored.
    flow, out = build(double=False, fail=False)
    state = flow.run(resume=run_id)
    assert state.result[out].result == "18/3"
    assert sorted(ran) == ["report", "scale"]
    assert "re-ran 'report', 'scale'" in (state.message or "")
    with open_store() as store:
        assert "re-ran 'report', 'scale'" in (store.flow_run(last_run_id()).message or "")
    # A task added in front shifts every task id: tasks are matched by slug, not position.
    flow, _ = build(double=False, fail=True)
    assert flow.run().is_failed()
    run_id = last_run_id()
    ran.clear()
    flow, out = build(double=False, fail=False, extra=True)
    state = flow.run(resume=run_id)
    assert state.result[out].result == "18/3"
    assert sorted(ran) == ["report", "unrelated"]


# --- the command line: a kill, Ctrl-C, FERROFLOW_RECORD, --version -------------------------


_SLOW_FLOW = """
import sys, time
from ferroflow import Flow, task
from ferroflow.results import LocalResult

@task(checkpoint=True, result=LocalResult(dir={results!r}))
def child(x):
    with open({side!r}, "a") as f:
        f.write(f"{{x}}\\n")
    time.sleep({sleep})
    return x * 3

@task
def total(xs):
    return sum(xs)

with Flow("slow") as flow:
    total(child.map(list(range({n}))))
"""


def _wait_for_lines(side: Path, proc: subprocess.Popen[str], n: int) -> None:
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if side.exists() and side.read_text().count("\n") >= n:
            return
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("the flow never got far enough to be interrupted")


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_runs_resume_after_the_run_was_killed(tmp_path: Path, sig: str) -> None:
    import signal

    side = tmp_path / "side.txt"
    script = tmp_path / "slow.py"
    script.write_text(
        _SLOW_FLOW.format(results=str(tmp_path / "r"), side=str(side), sleep=0.05, n=40)
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferroflow", "run", str(script)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    _wait_for_lines(side, proc, 5)
    proc.send_signal(getattr(signal, sig))
    proc.wait(10)
    run_id = last_run_id()
    out = ff("runs", "resume", run_id[:8])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Success" in out.stdout
    resumed = last_run_id()
    with open_store() as store:
        run = store.flow_run(resumed)
        assert run is not None and run.resumed_from == run_id and run.state == "Success"
        (total_run,) = [t for t in store.task_runs(resumed) if t.task_name == "total"]
        assert total_run.state == "Success"
        killed = store.flow_run(run_id)
        assert killed is not None and killed.state == "Interrupted"
        assert killed.ended is not None and killed.ended >= killed.started
        states = {t.state for t in store.task_runs(run_id)}
        assert "Running" not in states
    runs = [int(x) for x in side.read_text().split()]
    assert sorted(set(runs)) == list(range(40))
    # Children that finished before the kill were restored, not run again.
    assert len(runs) < 40 + 5


def test_ctrl_c_in_the_cli_records_cancelled_prints_a_summary_and_exits_130(
    tmp_path: Path,
) -> None:
    import signal

    side = tmp_path / "side.txt"
    script = tmp_path / "slow.py"
    script.write_text(
        _SLOW_FLOW.format(results=str(tmp_path / "r"), side=str(side), sleep=0.05, n=200)
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferroflow", "run", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_lines(side, proc, 5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout + stderr
    assert "Cancelled" in stdout and "ferroflow runs resume" in stdout
    run_id = last_run_id()
    with open_store() as store:
        run = store.flow_run(run_id)
        assert run is not None and run.state == "Cancelled"
    out = ff("runs", "resume", run_id[:8])
    assert out.returncode == 0, out.stdout + out.stderr


def test_ctrl_c_re_raises_keyboard_interrupt_out_of_flow_run(executor: Any) -> None:
    @task
    def interrupt() -> None:
        raise KeyboardInterrupt

    @task
    def after(x: Any) -> int:
        return 1

    with Flow("ctrl-c") as flow:
        after(interrupt())
    with pytest.raises(KeyboardInterrupt) as err:
        flow.run(executor=executor)
    state = err.value.state  # type: ignore[attr-defined]
    assert type(state).__name__ == "Cancelled"
    with open_store() as store:
        run = store.flow_run(err.value.flow_run_id)  # type: ignore[attr-defined]
        assert run is not None and run.state == "Cancelled" and run.ended is not None


def test_ferroflow_run_honours_ferroflow_record_0(tmp_path: Path) -> None:
    script = tmp_path / "flow.py"
    script.write_text(
        "from ferroflow import Flow, task\n"
        "@task\n"
        "def one():\n"
        "    return 1\n"
        "with Flow('unrecorded') as flow:\n"
        "    one()\n"
    )
    env = {**os.environ, "FERROFLOW_RECORD": "0"}
    out = subprocess.run(
        [sys.executable, "-m", "ferroflow", "run", str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "Recorded as run" not in out.stdout
    with open_store() as store:
        assert store.list_flow_runs() == []
    assert ff("run", str(script)).returncode == 0
    with open_store() as store:
        assert [r.flow_name for r in store.list_flow_runs()] == ["unrecorded"]


def test_version() -> None:
    from ferroflow import __version__

    for flag in ("--version", "-V"):
        out = ff(flag)
        assert out.returncode == 0
        assert out.stdout.strip() == f"ferroflow {__version__}"


# --- context as a mapping; parameters named like flow.run's options -----------------------


def test_context_is_a_mapping_inside_a_task(executor: Any) -> None:
    @task
    def read(x: int) -> tuple[Any, ...]:
        return (
            context["task_name"],
            context["task_full_name"],
            context["task_run_count"],
            "flow_name" in context,
            sorted(dict(context))[:3],
            context.get("nope", "default"),
        )

    with Flow("mapping") as flow:
        r = read.map([1, 2])  # mapped: full names differ from the name
    state = flow.run(executor=executor)
    got = state.result[r].result
    assert got[1] == ("read", "read[1]", 1, True, ["date", "flow_name", "flow_run_id"], "default")
    with pytest.raises(KeyError):
        context["task_name"]  # outside a run


@pytest.mark.parametrize("option", ["record", "resume", "progress", "release_results"])
def test_a_parameter_named_like_an_option_is_not_taken_silently(option: str) -> None:
    from ferroflow.exceptions import OptionCollisionError, ParameterError

    @task
    def echo(x: Any) -> Any:
        return x

    with Flow("options") as flow:
        e = echo(Parameter(option, default="default"))
    value = {"record": True, "resume": None, "progress": None, "release_results": False}[option]
    with pytest.raises(OptionCollisionError) as err:
        flow.run(**{option: value})
    assert err.value.parameter == option
    assert isinstance(err.value, ParameterError)
    assert f"parameters={{'{option}': ...}}" in str(err.value)
    # Given in parameters=, the parameter gets its value and the keyword is the option.
    state = flow.run(parameters={option: "given"}, **{option: value})
    assert state.result[e].result == "given"
    assert flow.run().result[e].result == "default"


# --- tracebacks from workers ---------------------------------------------------------------


def _deep_helper(x: int) -> int:
    raise ValueError(f"bad value {x}")


@task
def fails_deep(x: int) -> int:
    return _deep_helper(x) + 1


def _noop_handler(task: Any, old: Any, new: Any) -> None:
    return None


@task(state_handlers=[_noop_handler])
def fails_deep_hooked(x: int) -> int:
    return _deep_helper(x) + 1


def _frames(exc: BaseException) -> list[str]:
    return [f.name for f in traceback.extract_tb(exc.__traceback__)]


@pytest.mark.parametrize("hooked", [False, True], ids=["plain", "hooked"])
def test_a_failed_tasks_traceback_has_the_tasks_frames_only(executor: Any, hooked: bool) -> None:
    t = fails_deep_hooked if hooked else fails_deep
    with Flow("tb") as flow:
        r = t(3)
    state = flow.run(executor=executor)
    exc = state.result[r].result
    assert isinstance(exc, ValueError) and str(exc) == "bad value 3"
    assert _frames(exc) == ["fails_deep_hooked" if hooked else "fails_deep", "_deep_helper"]
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    assert 'raise ValueError(f"bad value {x}")' in text


class _Unpicklable(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        import threading

        self.lock = threading.Lock()


@task
def raises_unpicklable() -> None:
    raise _Unpicklable("the disk is on fire")


def test_an_exception_that_cannot_travel_keeps_its_type_and_text() -> None:
    with Flow("unpicklable") as flow:
        r = raises_unpicklable()
    state = flow.run(executor=ProcessExecutor(max_workers=1))
    st = state.result[r]
    assert st.is_failed()
    assert "_Unpicklable: the disk is on fire" in (st.message or "")
    assert "could not be sent back" in (st.message or "")


# --- timeouts ------------------------------------------------------------------------------


@task(timeout=30)
def timed_context(x: int) -> tuple[Any, ...]:
    return (context.task_name, context.task_full_name, context.task_run_count, context.map_index)


def test_a_task_with_a_timeout_keeps_its_context(executor: Any) -> None:
    with Flow("timed-context") as flow:
        r = timed_context.map([5, 6])
    state = flow.run(executor=executor)
    assert state.result[r].result == [
        ("timed_context", "timed_context[0]", 1, 0),
        ("timed_context", "timed_context[1]", 1, 1),
    ]


@task(timeout=30, log_stdout=True)
def timed_printer() -> int:
    print("printed under a timeout")
    return 1


def test_a_timed_task_with_log_stdout_logs_its_prints(executor: Any) -> None:
    with Flow("timed-print") as flow:
        timed_printer()
    assert flow.run(executor=executor).is_successful()
    with open_store() as store:
        assert [line.message for line in store.logs(last_run_id())] == ["printed under a timeout"]


@task
def slow_first() -> int:
    import time

    time.sleep(1.5)
    return 1


@task(timeout=1.0)
def queued_quick() -> int:
    return 2


def test_a_process_timeout_counts_from_the_start_in_the_worker() -> None:
    # One worker: queued_quick waits behind slow_first for longer than its timeout, then
    # takes no time at all. Its clock starts when the worker starts it.
    with Flow("queued") as flow:
        a = slow_first()
        b = queued_quick()
    state = flow.run(executor=ProcessExecutor(max_workers=1))
    assert state.result[a].result == 1
    assert state.result[b].is_successful(), state.result[b].message
    assert state.result[b].result == 2


def test_a_dask_attempt_that_timed_out_is_not_run_again(
    dask_cluster: LocalCluster, tmp_path: Path
) -> None:
    import time

    side = tmp_path / "attempts.txt"

    @task(timeout=0.5)
    def stuck() -> None:
        with open(side, "a") as f:
            f.write("attempt\n")
        time.sleep(5)

    @task
    def meanwhile() -> int:
        time.sleep(6)
        return 1

    with Flow("dask-timeout") as flow:
        r = stuck()
        m = meanwhile()
    state = flow.run(executor=DaskExecutor(address=dask_cluster.scheduler_address))
    assert type(state.result[r]).__name__ == "TimedOut"
    assert state.result[m].result == 1
    # The stuck attempt's worker was restarted while the run went on: Dask must not
    # have run that attempt again on the restarted worker.
    assert side.read_text().splitlines() == ["attempt"]


# --- runs that cannot start or whose handlers raise ---------------------------------------


def test_an_executor_that_cannot_start_leaves_no_run_running() -> None:
    from ferroflow.exceptions import ExecutorError

    with Flow("no-cluster") as flow:
        fails_deep(1)
    with pytest.raises(ExecutorError):
        flow.run(executor=DaskExecutor(address="tcp://127.0.0.1:9"))
    with open_store() as store:
        (run,) = store.list_flow_runs()
        assert run.state == "Failed" and run.ended is not None
        assert "ExecutorError" in (run.message or "")
        assert "Running" not in {t.state for t in store.task_runs(run.id)}


def test_a_raising_flow_handler_leaves_no_run_running() -> None:
    def bad_handler(flow: Any, old: Any, new: Any) -> None:
        raise RuntimeError("handler broke")

    with Flow("bad-handler", state_handlers=[bad_handler]) as flow:
        fails_deep(1)
    with pytest.raises(RuntimeError, match="handler broke"):
        flow.run()
    with open_store() as store:
        (run,) = store.list_flow_runs()
        assert run.state == "Failed" and run.ended is not None
        assert "handler broke" in (run.message or "")


# --- the demo ------------------------------------------------------------------------------

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo.py"


def test_the_demo_runs_and_draws_from_the_command_line(tmp_path: Path) -> None:
    out = ff("run", str(DEMO), "--param", "n=40", "--param", "strict=true")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Success" in out.stdout and "Recorded as run" in out.stdout
    with open_store() as store:
        run = store.flow_run(last_run_id())
        assert run is not None and run.flow_name == "demo-etl" and run.parameters["n"] == 40
        logs = [line.message for line in store.logs(run.id)]
    assert any(m.startswith("auditing ") for m in logs), logs
    dot = tmp_path / "demo.dot"
    drawn = ff("visualize", str(DEMO), "-o", str(dot), "--run", run.id[:8])
    assert drawn.returncode == 0, drawn.stderr
    text = dot.read_text()
    assert text.startswith('digraph "demo-etl"') and "fetch" in text and "report" in text
    direct = subprocess.run(
        [sys.executable, str(DEMO)], capture_output=True, text=True, timeout=120
    )
    assert direct.returncode == 0, direct.stderr
    assert "fetch ran 2 times" in direct.stdout
