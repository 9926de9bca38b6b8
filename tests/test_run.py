"""Running flows: dataflow, parameters, retries, triggers, skips, signals, handlers,
context and logging (SPEC "Running", "States", "Signals", "Triggers and skips",
"Retries, timeouts, handlers")."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

import pytest

import ferroflow
from _tasks import Ledger, add, inc, total
from ferroflow import (
    Flow,
    Parameter,
    Task,
    case,
    context,
    get_run_logger,
    merge,
    signals,
    task,
    triggers,
)
from ferroflow.exceptions import CycleError, ParameterError
from ferroflow.executors import DaskExecutor, LocalExecutor, ThreadExecutor
from ferroflow.states import (
    Failed,
    Paused,
    Skipped,
    State,
    Success,
    TimedOut,
    TriggerFailed,
)


@task
def boom() -> None:
    raise ValueError("boom")


def test_dataflow_constants_and_collections(executor: Any) -> None:
    with Flow("data") as flow:
        a = inc(1)
        b = add(a, y=10)
        c = total([a, b, 5])
        d = add(x=b, y=c)
    state = flow.run(executor=executor)
    assert state.is_successful()
    assert isinstance(state, Success)
    assert state.result[a].result == 2
    assert state.result[b].result == 12
    assert state.result[c].result == 19
    assert state.result[d].result == 31
    # Every task of the flow has a state, collection tasks included.
    assert set(state.result) == set(flow.tasks)


@task
def same(x: Any) -> Any:
    return x


def test_collections_of_one_upstream_value_keep_their_type(executor: Any) -> None:
    """A list, tuple or dict around a single task result is still that collection (a
    call of one argument keeps its argument without a tuple until one is needed)."""
    with Flow("ones") as flow:
        a = same([inc(1)])
        b = same((inc(2),))
        c = same({"k": inc(3)})
    state = flow.run(executor=executor)
    assert state.is_successful(), state
    assert state.result[a].result == [2]
    assert state.result[b].result == (3,)
    assert state.result[c].result == {"k": 4}


def test_parameters_defaults_required_and_types() -> None:
    with Flow("params") as flow:
        n = Parameter("n", default=3, type=int)
        m = Parameter("m")
        out = add(n, m)
    assert flow.run(m=1).result[out].result == 4
    assert flow.run(parameters={"n": "5", "m": 1}).result[out].result == 6  # coerced
    with pytest.raises(ParameterError, match="'m'"):
        flow.run()
    with pytest.raises(ParameterError, match="nope"):
        flow.run(m=1, nope=2)
    with pytest.raises(ParameterError, match="'n'"):
        flow.run(n="not a number", m=1)


def test_failure_is_a_state_and_stops_downstream(executor: Any) -> None:
    with Flow("fail") as flow:
        b = boom()
        after = inc(b)
        free = inc(1)
    state = flow.run(executor=executor)
    assert isinstance(state, Failed)
    assert "inc" in state.message
    fb = state.result[b]
    assert isinstance(fb, Failed)
    assert isinstance(fb.result, ValueError)
    assert "boom" in fb.message
    assert isinstance(state.result[after], TriggerFailed)
    assert state.result[free].result == 2


@pytest.mark.parametrize("kind", ["local", "threads", "dask"])
def test_a_failure_keeps_its_traceback(kind: str, request: pytest.FixtureRequest) -> None:
    # ProcessExecutor drops the frames today (issue 10 tracks it); the other
    # executors keep them on the exception in the Failed state.
    executor: Any = {"local": LocalExecutor, "threads": ThreadExecutor}.get(kind)
    if executor is None:
        cluster = request.getfixturevalue("dask_cluster")
        executor = DaskExecutor(address=cluster.scheduler_address)
    else:
        executor = executor()
    with Flow("fail") as flow:
        b = boom()
    fb = flow.run(executor=executor).result[b]
    assert isinstance(fb.result, ValueError)
    assert fb.result.__traceback__ is not None


def test_retries_wait_only_for_their_own_delay(executor: Any, tmp_path: Any) -> None:
    # time.monotonic is one system-wide clock, so workers' readings compare.
    calls = Ledger(tmp_path / "calls")
    finished = Ledger(tmp_path / "finished")

    # A delay long enough that worker processes starting on a loaded machine still
    # finish the independent tasks within it.
    @task(max_retries=2, retry_delay=timedelta(seconds=1))
    def flaky() -> str:
        calls.add(time.monotonic())
        if len(calls.items()) < 3:
            raise RuntimeError("not yet")
        return "ok"

    @task
    def quick(i: int) -> int:
        finished.add(time.monotonic())
        return i

    with Flow("retry") as flow:
        f = flaky()
        qs = [quick(i) for i in range(5)]
    state = flow.run(executor=executor)
    assert state.result[f].result == "ok"
    at: list[float] = calls.items()  # type: ignore[assignment]
    assert len(at) == 3
    assert at[1] - at[0] >= 0.99
    # The independent tasks did not wait for the retry.
    assert max(finished.items()) < at[1]  # type: ignore[type-var]
    assert [state.result[q].result for q in qs] == list(range(5))


def test_retry_on_filters_errors() -> None:
    attempts = {"n": 0}

    @task(max_retries=3, retry_delay=0, retry_on=KeyError)
    def wrong_error() -> None:
        attempts["n"] += 1
        raise ValueError("not retried")

    with Flow("retry_on") as flow:
        t = wrong_error()
    state = flow.run()
    assert attempts["n"] == 1
    assert isinstance(state.result[t], Failed)


def test_triggers_and_skips(executor: Any) -> None:
    @task
    def skipper() -> None:
        raise signals.SKIP("not today")

    @task(trigger=triggers.all_failed)
    def on_fail() -> str:
        return "cleanup"

    @task(trigger=triggers.always_run, skip_on_upstream_skip=False)
    def always(x: Any) -> str:
        return "ran"

    with Flow("triggers") as flow:
        s = skipper()
        after_skip = inc(s)
        after_after = inc(after_skip)
        b = boom()
        cleanup = on_fail(upstream_tasks=[b])
        not_run = on_fail(upstream_tasks=[inc(1)])
        a = always(s)
    state = flow.run(executor=executor)
    assert isinstance(state.result[s], Skipped)
    assert state.result[s].message == "not today"
    assert isinstance(state.result[after_skip], Skipped)
    assert isinstance(state.result[after_after], Skipped)
    assert state.result[cleanup].result == "cleanup"
    assert isinstance(state.result[not_run], TriggerFailed)
    assert state.result[a].result == "ran"


def test_custom_trigger_and_trigger_that_raises(executor: Any) -> None:
    seen: list[dict[Any, State]] = []

    def picky(upstream: dict[Any, State]) -> bool:
        seen.append(upstream)
        return any(s.is_failed() for s in upstream.values())

    def broken(upstream: dict[Any, State]) -> bool:
        raise RuntimeError("trigger bug")

    @task(trigger=picky)
    def t1() -> str:
        return "picky ran"

    @task(trigger=broken)
    def t2() -> str:
        return "never"

    with Flow("custom") as flow:
        b = boom()
        x = t1(upstream_tasks=[b])
        y = t2(upstream_tasks=[inc(1)])
        z = inc(2)
    state = flow.run(executor=executor)
    assert state.result[x].result == "picky ran"
    assert len(seen) == 1 and all(isinstance(s, Failed) for s in seen[0].values())
    assert isinstance(state.result[y], TriggerFailed)
    assert "trigger bug" in state.result[y].message
    assert state.result[z].result == 3  # the run went on


def test_signals(executor: Any) -> None:
    @task
    def succeed() -> None:
        raise signals.SUCCESS("early", result=7)

    @task
    def fail() -> None:
        raise signals.FAIL("bad row")

    @task
    def trigger_fail() -> None:
        raise signals.TRIGGERFAIL("nope")

    @task
    def pause() -> None:
        raise signals.PAUSE("wait for me")

    @task
    def catches_everything() -> str:
        try:
            raise signals.SKIP("skipped despite except Exception")
        except Exception:  # signals are BaseException: not caught here
            return "swallowed"

    with Flow("signals") as flow:
        a, b, c, d, e = succeed(), fail(), trigger_fail(), pause(), catches_everything()
    state = flow.run(executor=executor)
    assert isinstance(state.result[a], Success) and state.result[a].result == 7
    assert isinstance(state.result[b], Failed) and state.result[b].message == "bad row"
    assert isinstance(state.result[c], TriggerFailed)
    assert isinstance(state.result[d], Paused)
    assert isinstance(state.result[e], Skipped)


def test_retry_signal_retries_past_max_retries() -> None:
    runs: list[int] = []

    @task(retry_delay=0.01)
    def again() -> int:
        runs.append(context.task_run_count)
        if len(runs) < 3:
            raise signals.RETRY("once more")
        return len(runs)

    with Flow("retry-signal") as flow:
        t = again()
    state = flow.run()
    assert state.result[t].result == 3
    assert runs == [1, 2, 3]


def test_loop_signal(executor: Any, tmp_path: Any) -> None:
    @task
    def fib(n: int) -> int:
        loop = context.task_loop_result or {"a": 0, "b": 1, "i": 0}
        if loop["i"] < n:
            raise signals.LOOP(
                result={"a": loop["b"], "b": loop["a"] + loop["b"], "i": loop["i"] + 1}
            )
        return loop["a"]

    counts = Ledger(tmp_path / "counts")

    @task(max_retries=1, retry_delay=0)
    def loop_and_retry() -> int:
        counts.add(context.task_loop_count)
        if context.task_loop_count < 3:
            raise signals.LOOP(result=context.task_loop_count)
        if context.task_run_count == 1:
            raise ValueError("fail once after looping")
        return context.task_loop_result

    with Flow("loop") as flow:
        f = fib(10)
        lr = loop_and_retry()
    state = flow.run(executor=executor)
    assert state.result[f].result == 55
    assert state.result[lr].result == 2
    assert counts.items() == [1, 2, 3, 3]  # the retry keeps the loop's count and result


def test_system_exit_is_a_failure() -> None:
    @task
    def exits() -> None:
        raise SystemExit(3)

    with Flow("exit") as flow:
        t = exits()
    state = flow.run()
    assert isinstance(state.result[t], Failed)
    assert isinstance(state.result[t].result, SystemExit)


def test_state_handlers_on_failure_and_replacement(executor: Any, tmp_path: Any) -> None:
    # Handlers of executed runs run where the task runs (a worker, on processes and
    # Dask): they write to a ledger the test reads.
    ledger = Ledger(tmp_path / "transitions")
    failure_ledger = Ledger(tmp_path / "failures")

    def handler(t: Task, old: State, new: State) -> State | None:
        ledger.add(t.name, type(old).__name__, type(new).__name__)
        return None

    def on_failure(t: Task, state: State) -> None:
        failure_ledger.add(t.name)

    def to_success(t: Task, old: State, new: State) -> State | None:
        if new.is_failed():
            return Success("rescued", result="fallback")
        return None

    @task(state_handlers=[handler], on_failure=on_failure, max_retries=1, retry_delay=0)
    def failing() -> None:
        raise ValueError("x")

    @task(state_handlers=[to_success])
    def rescued() -> None:
        raise ValueError("y")

    @task(state_handlers=[handler])
    def skipped_by_upstream(x: Any) -> None:
        return None

    with Flow("handlers") as flow:
        f = failing()
        r = rescued()
        s = skipped_by_upstream(task(lambda: (_ for _ in ()).throw(signals.SKIP()), name="sk")())
    state = flow.run(executor=executor)
    assert isinstance(state.result[f], Failed)
    # Prefect's visible sequence for a failure that will be retried: the attempt
    # fails, then the run is retrying, then runs again and fails for good.
    seen: list[tuple[str, str, str]] = ledger.items()  # type: ignore[assignment]
    log = [(o, n) for _name, o, n in seen]
    assert [(o, n) for name, o, n in seen if name == "failing"] == [
        ("Pending", "Running"),
        ("Running", "Failed"),
        ("Failed", "Retrying"),
        ("Retrying", "Running"),
        ("Running", "Failed"),
    ]
    assert ("Running", "Retrying") not in log
    assert ("Pending", "Skipped") in log
    assert failure_ledger.items() == ["failing"]
    assert state.result[r].result == "fallback"
    assert isinstance(state.result[s], Skipped)


def test_state_handler_that_raises_fails_the_task() -> None:
    def bad(t: Task, old: State, new: State) -> None:
        raise RuntimeError("handler bug")

    @task(state_handlers=[bad])
    def t1() -> int:
        return 1

    with Flow("bad-handler") as flow:
        a = t1()
        b = inc(5)
    state = flow.run()
    assert isinstance(state.result[a], Failed)
    assert "handler bug" in state.result[a].message
    assert state.result[b].result == 6


def test_flow_handlers() -> None:
    seen: list[str] = []

    def flow_handler(flow: Flow, old: State, new: State) -> None:
        seen.append(type(new).__name__)

    def terminal(flow: Flow, state: State, refs: set[State]) -> State:
        seen.append(f"terminal:{len(refs)}")
        return Success("overridden")

    with Flow("fh", state_handlers=[flow_handler], terminal_state_handler=terminal) as flow:
        boom()
    state = flow.run()
    assert seen == ["Running", "terminal:1", "Success"]
    assert state.message == "overridden"


def test_reference_tasks_decide_the_flow_state() -> None:
    with Flow("refs") as flow:
        boom()
        ok = inc(1)
    flow.set_reference_tasks([ok])
    assert flow.run().is_successful()


def test_context_and_logger(caplog: pytest.LogCaptureFixture) -> None:
    seen: dict[str, Any] = {}

    @task(name="who", slug="who-1")
    def who(x: int) -> int:
        seen.update(context.to_dict())
        get_run_logger().info("hello from %s", context.task_full_name)
        return x

    with Flow("ctx-flow") as flow:
        n = Parameter("n", default=4)
        w = who(n)
    with caplog.at_level(logging.INFO, logger="ferroflow"):
        state = flow.run()
    assert state.result[w].result == 4
    assert seen["flow_name"] == "ctx-flow"
    assert seen["parameters"] == {"n": 4}
    assert seen["task_name"] == "who"
    assert seen["task_full_name"] == "who"
    assert seen["task_slug"] == "who-1"
    assert seen["map_index"] is None
    assert seen["task_run_count"] == 1
    assert seen["task_loop_count"] == 1
    assert len(seen["today"]) == 10
    rec = next(r for r in caplog.records if "hello from" in r.getMessage())
    assert rec.flow_run_id == seen["flow_run_id"]  # type: ignore[attr-defined]
    assert rec.task_run_id == seen["task_run_id"]  # type: ignore[attr-defined]
    # Outside a run the context is empty.
    assert context.get("flow_name") is None
    with pytest.raises(AttributeError):
        _ = context.task_name


def test_case_and_merge(executor: Any) -> None:
    @task
    def cond(x: int) -> str:
        return "even" if x % 2 == 0 else "odd"

    @task
    def label(s: str) -> str:
        return s.upper()

    with Flow("case") as flow:
        n = Parameter("n", default=2)
        c = cond(n)
        with case(c, "even"):
            e = label("even")
        with case(c, "odd"):
            o = label("odd")
        m = merge(e, o)
    state = flow.run(executor=executor)
    assert state.result[m].result == "EVEN"
    assert isinstance(state.result[o], Skipped)
    state = flow.run(n=3, executor=executor)
    assert state.result[m].result == "ODD"
    assert isinstance(state.result[e], Skipped)


def test_timeout_local_and_threads(executor: Any) -> None:
    @task(timeout=0.2)
    def sleepy() -> str:
        time.sleep(2)
        return "late"

    @task(timeout=1)
    def fast() -> str:
        return "fast"

    with Flow("timeout") as flow:
        s = sleepy()
        f = fast()
    state = flow.run(executor=executor)
    assert isinstance(state.result[s], TimedOut)  # it would have returned "late"
    assert state.result[f].result == "fast"


@pytest.mark.parametrize("make", [LocalExecutor, lambda: ThreadExecutor(max_workers=4)])
def test_timed_calls_reuse_their_helper_threads(make: Any) -> None:
    import threading

    seen: list[threading.Thread] = []  # kept alive: distinct objects are distinct threads

    @task(timeout=10)
    def where(x: int) -> int:
        seen.append(threading.current_thread())
        return x + 1

    with Flow("timed-map") as flow:
        out = total(where.map(list(range(2000))))
    state = flow.run(executor=make())
    assert state.result[out].result == sum(range(1, 2001))
    # Not a thread per call: a few helpers (one per timed call in flight), reused.
    assert len({id(t) for t in seen}) <= 8
    assert threading.current_thread() not in seen


@pytest.mark.parametrize("make", [LocalExecutor, lambda: ThreadExecutor(max_workers=4)])
def test_a_timed_out_attempt_is_retried(make: Any) -> None:
    attempts: list[int] = []

    @task(timeout=0.2, max_retries=1, retry_delay=timedelta(0))
    def slow_then_fast() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            time.sleep(2)  # abandoned: its helper comes back to the pool when it returns
            return "late"
        return "second"

    with Flow("timed-retry") as flow:
        r = slow_then_fast()
    state = flow.run(executor=make())
    assert state.result[r].result == "second"
    assert len(attempts) == 2


@pytest.mark.parametrize("make", [LocalExecutor, lambda: ThreadExecutor(max_workers=4)])
def test_timed_children_that_raise_fail_alone(make: Any) -> None:
    import traceback

    @task(timeout=10)
    def odd_fails(x: int) -> int:
        if x % 2:
            raise ValueError(f"odd {x}")
        return x

    with Flow("timed-raise") as flow:
        out = odd_fails.map(list(range(200)))
    state = flow.run(executor=make())
    children = state.result[out].map_states
    assert [c.result for c in children[0::2]] == list(range(0, 200, 2))
    failed = children[1::2]
    assert all(isinstance(c, Failed) for c in failed)
    assert [str(c.result) for c in failed] == [f"odd {x}" for x in range(1, 200, 2)]
    # The task's own frames, not the helper's.
    frames = traceback.extract_tb(failed[0].result.__traceback__)
    assert frames[0].name == "odd_fails"


def test_manual_only_pauses_and_flow_is_not_finished() -> None:
    @task(trigger=triggers.manual_only)
    def approve() -> int:
        return 1

    with Flow("manual") as flow:
        a = approve(upstream_tasks=[inc(1)])
        after = inc(a)
    state = flow.run()
    assert isinstance(state.result[a], Paused)
    assert not state.is_finished()
    assert state.result[after].is_pending()


def test_cycle_is_reported_before_running() -> None:
    ran: list[int] = []

    @task
    def record(x: Any = None) -> int:
        ran.append(1)
        return 1

    with Flow("cycle") as flow:
        a = record()
        b = record(a)
    flow.add_edge(b, a, key="x")
    with pytest.raises(CycleError) as err:
        flow.run()
    assert ran == []
    assert "record" in str(err.value)


def test_version_and_public_names() -> None:
    from importlib.metadata import version

    assert ferroflow.__version__ == version("ferroflow")
    for name in ferroflow.__all__:
        assert getattr(ferroflow, name) is not None


def test_progress_callback_sees_counts_per_state() -> None:
    seen: list[dict[str, int]] = []

    with Flow("progress") as flow:
        total(inc.map(list(range(3000))))
    state = flow.run(progress=seen.append, record=False)
    assert state.is_successful()
    assert seen, "progress was never reported"
    last = seen[-1]
    assert last == {"Success": 3000 + 2, "Mapped": 1}
    assert all(sum(c.values()) <= 3003 for c in seen)  # each task run counted once


def test_visualize_colours_tasks_by_state(tmp_path: Any) -> None:
    from ferroflow.visualize import STATE_COLORS

    with Flow("drawn") as flow:
        b = boom()
        after = inc(b)
        ok = inc(1)
    state = flow.run(record=False)
    dot = flow.visualize(state, filename=str(tmp_path / "g.dot"))
    assert (tmp_path / "g.dot").read_text() == dot
    assert STATE_COLORS["Failed"] in dot and STATE_COLORS["TriggerFailed"] in dot
    assert dot.count("->") == len(flow.edges)
    assert {b.name, after.name, ok.name} <= {
        line.split('"')[1] for line in dot.splitlines() if "label=" in line and "->" not in line
    }


def test_a_user_task_named_like_a_builtin_still_runs() -> None:
    class List(Task):  # same class name as the built-in collection task
        def run(self, arg_0: int, arg_1: int) -> str:
            return f"mine: {arg_0 + arg_1}"

    with Flow("shadow") as flow:
        t = List()(arg_0=inc(1), arg_1=inc(2))  # inputs from tasks, keyed like a collection
    assert flow.run(record=False).result[t].result == "mine: 5"


def test_handlers_decide_states_the_core_would_set(executor: Any, tmp_path: Any) -> None:
    # Skips and trigger failures go through the same handler path as executed
    # runs: a handler sees Pending -> Skipped, may replace it, and one that
    # raises fails the task with its message.
    ledger = Ledger(tmp_path / "seen")

    def rescue(t: Task, old: State, new: State) -> State | None:
        ledger.add(t.name, type(old).__name__, type(new).__name__)
        if isinstance(new, Skipped):
            return Success("rescued by its handler", result="rescued")
        return None

    def explode(t: Task, old: State, new: State) -> State | None:
        if isinstance(new, TriggerFailed):
            raise RuntimeError("handler exploded")
        return None

    skip = task(lambda: (_ for _ in ()).throw(signals.SKIP()), name="skip")

    @task(state_handlers=[rescue])
    def after_skip(x: Any) -> str:
        return "ran"

    @task(state_handlers=[explode])
    def after_failure(x: Any) -> str:
        return "ran"

    with Flow("decided") as flow:
        rescued = after_skip(skip())
        exploded = after_failure(boom())
        downstream = inc.map([1])
        downstream.set_upstream(rescued)
    state = flow.run(executor=executor)
    assert isinstance(state.result[rescued], Success)
    assert state.result[rescued].result == "rescued"
    assert ("after_skip", "Pending", "Skipped") in ledger.items()
    failed = state.result[exploded]
    assert type(failed) is Failed
    assert "handler exploded" in failed.message
    # The rescued task counts as a success for what waits on it.
    assert state.result[downstream].result == [2]
