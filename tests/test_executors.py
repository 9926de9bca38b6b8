"""The same flows give the same final states on every executor (SPEC "Executors"),
and executor faults are survived (worker deaths, timeouts, values that cannot travel)."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from _tasks import add, inc, total
from ferroflow import Flow, Parameter, case, context, merge, signals, task, triggers, unmapped
from ferroflow.exceptions import ExecutorError
from ferroflow.executors import LocalExecutor, ProcessExecutor, ThreadExecutor
from ferroflow.states import State


@task
def fragile(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x


@task
def skip_odd(x: int) -> int:
    if x % 2:
        raise signals.SKIP("odd")
    return x


@task(max_retries=2, retry_delay=0.01)
def flaky(x: int) -> int:
    if context.task_run_count < 2:
        raise RuntimeError("first attempt fails")
    return x * 10


@task
def countdown(n: int) -> int:
    left = context.task_loop_result if context.task_loop_count > 1 else n
    if left > 0:
        raise signals.LOOP(result=left - 1)
    return context.task_loop_count


@task(trigger=triggers.all_finished)
def count(xs: list[Any]) -> int:
    return len(xs)


@task
def label(mode: str) -> str:
    return mode.upper()


def build() -> tuple[Flow, dict[str, Any]]:
    with Flow("portable") as flow:
        n = Parameter("n", default=6)
        xs = task(lambda k: list(range(k)), name="xs")(n)
        a = inc.map(xs)
        b = add.map(a, y=unmapped(100))
        reduce = total(b)
        f = fragile.map(xs)
        after_f = inc.map(f)
        strict = total(after_f)
        lenient = count(after_f)
        sk = inc.map(skip_odd.map(xs))
        retried = flaky.map([1, 2])
        looped = countdown.map([0, 2])
        mode = Parameter("mode", default="fast")
        with case(mode, "fast"):
            fast = label("fast")
        with case(mode, "slow"):
            slow = label("slow")
        chosen = merge(fast, slow)
    named = {
        "a": a, "b": b, "reduce": reduce, "f": f, "after_f": after_f, "strict": strict,
        "lenient": lenient, "sk": sk, "retried": retried, "looped": looped, "fast": fast,
        "slow": slow, "chosen": chosen,
    }  # fmt: skip
    return flow, named


def summary(state: State) -> Any:
    if state.is_mapped():
        return ("Mapped", [summary(c) for c in state.map_states])
    value = state.result
    if isinstance(value, BaseException):
        value = repr(value)
    return (type(state).__name__, value)


EXECUTORS: dict[str, Callable[[], Any]] = {
    "local": LocalExecutor,
    "threads": lambda: ThreadExecutor(max_workers=3),
    "processes": lambda: ProcessExecutor(max_workers=2),
}


def test_same_states_on_every_executor() -> None:
    from ferroflow.executors import DaskExecutor

    flow, named = build()
    results = {}
    # The DaskExecutor starts (and closes) its own LocalCluster on 127.0.0.1; its
    # worker processes find this module through PYTHONPATH.
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    cluster_kwargs = {
        "n_workers": 2,
        "threads_per_worker": 1,
        "env": {"PYTHONPATH": os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")])},
    }
    executors = {**EXECUTORS, "dask": lambda: DaskExecutor(cluster_kwargs=cluster_kwargs)}
    for name, make in executors.items():
        state = flow.run(executor=make())
        results[name] = {
            "flow": type(state).__name__,
            **{k: summary(state.result[t]) for k, t in named.items()},
        }
    local = results["local"]
    assert local["reduce"] == ("Success", sum(range(1, 7)) + 600)
    assert local["strict"][0] == "TriggerFailed" and local["lenient"] == ("Success", 6)
    assert local["looped"] == ("Mapped", [("Success", 1), ("Success", 3)])
    assert local["retried"] == ("Mapped", [("Success", 10), ("Success", 20)])
    assert local["chosen"] == ("Success", "FAST") and local["slow"][0] == "Skipped"
    assert [s[0] for s in local["sk"][1]] == ["Success", "Skipped"] * 3
    for name, got in results.items():
        assert got == local, f"{name} differs from local"


def test_max_workers_must_be_positive() -> None:
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(ExecutorError):
            ThreadExecutor(max_workers=bad)  # type: ignore[arg-type]
        with pytest.raises(ExecutorError):
            ProcessExecutor(max_workers=bad)  # type: ignore[arg-type]


@task(max_retries=1, retry_delay=0)
def killer(x: int) -> int:
    if x == 500 and context.task_run_count == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def test_worker_killed_mid_map_is_retried_and_the_flow_succeeds() -> None:
    with Flow("fault") as flow:
        out = total(killer.map(list(range(1000))))
    state = flow.run(executor=ProcessExecutor(max_workers=2))
    assert state.is_successful()
    assert state.result[out].result == sum(range(1000))


@task
def dies(x: int) -> int:
    if x == 1:
        os._exit(3)
    return x


def test_worker_death_without_retries_fails_only_that_run() -> None:
    with Flow("death") as flow:
        m = dies.map([0, 1, 2])
    state = flow.run(executor=ProcessExecutor(max_workers=2))
    children = state.result[m].map_states
    assert [type(c).__name__ for c in children] == ["Success", "Failed", "Success"]
    assert "worker process died: exit code 3" in children[1].message


@task(timeout=0.3)
def hangs() -> None:
    time.sleep(30)


def test_process_timeout_stops_the_run_for_real() -> None:
    with Flow("timeout") as flow:
        h = hangs()
        ok = inc(1)
    state = flow.run(executor=ProcessExecutor(max_workers=2))
    # Not stopped, the run would have ended Success after 30 s: it ended TimedOut.
    assert type(state.result[h]).__name__ == "TimedOut"
    assert state.result[ok].result == 2


@task
def unpicklable_result() -> Any:
    return Unpicklable()


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("this object refuses to be pickled")


def test_values_that_cannot_travel_fail_that_run() -> None:
    import threading

    lock = threading.Lock()

    @task
    def takes(x: Any) -> int:
        return 1

    with Flow("pickling") as flow:
        bad_out = unpicklable_result()
        bad_in = takes(lock)
        good = inc(1)
    state = flow.run(executor=ProcessExecutor(max_workers=2))
    assert type(state.result[bad_out]).__name__ == "Failed"
    assert "could not be sent back" in state.result[bad_out].message
    assert "refuses to be pickled" in state.result[bad_out].message
    assert type(state.result[bad_in]).__name__ == "Failed"
    assert "could not be sent to a worker" in state.result[bad_in].message
    assert state.result[good].result == 2


CTRL_C = """
import sys, time
from ferroflow import Flow, task
from ferroflow.executors import LocalExecutor, ProcessExecutor, ThreadExecutor

@task
def slow(x):
    time.sleep(0.05)
    with open(sys.argv[2], "a") as f:  # the test interrupts once work has finished
        f.write(f"{x},")
    return x

with Flow("interrupt-me") as flow:
    slow.map(list(range(2000)))

kind = sys.argv[1]
executor = {"threads": ThreadExecutor(4)}.get(kind) or ProcessExecutor(2)
if kind == "processes-kept":  # inside a with block: workers kept between runs
    executor.__enter__()
print("READY", flush=True)
try:
    flow.run(executor=executor, record=False)
except KeyboardInterrupt as exc:  # re-raised after the run was cancelled
    state = exc.state
done = sum(1 for s in state.result[flow.get_tasks(name="slow")[0]].map_states if s.is_successful())
print("STATE", type(state).__name__, done, flush=True)
if kind == "processes-kept":  # the block goes on: the next run gets fresh workers
    with Flow("after") as after:
        again = slow.map([1, 2])
    state = after.run(executor=executor, record=False)
    print("AGAIN", type(state).__name__, state.result[again].result, flush=True)
    executor.close()
"""


@pytest.mark.parametrize("kind", ["threads", "processes", "processes-kept"])
def test_ctrl_c_cancels_on_every_executor(kind: str, tmp_path: Any) -> None:
    import subprocess
    import sys

    script = tmp_path / "interrupt.py"
    script.write_text(CTRL_C)
    done_file = tmp_path / "done.txt"
    proc = subprocess.Popen(
        [sys.executable, str(script), kind, str(done_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "READY"
    # Interrupt once some children have finished (workers may take a while to start
    # on a loaded machine), well before all 2,000 can have.
    for _ in range(1200):
        if done_file.exists() and done_file.read_text().count(",") >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)  # a hang guard, not a speed check
    line = next(x for x in out.splitlines() if x.startswith("STATE"))
    _, name, done = line.split()
    assert name == "Cancelled", err
    assert 0 < int(done) < 2000  # finished work keeps its states
    if kind == "processes-kept":
        assert "AGAIN Success [1, 2]" in out.splitlines(), err


class _HoldsALock:
    def __init__(self) -> None:
        import threading

        self.lock = threading.Lock()

    def __call__(self) -> int:
        return 1


def test_unpicklable_callable_fails_that_task_before_it_is_sent() -> None:
    from ferroflow import Task

    class Locked(Task):
        def __init__(self) -> None:
            super().__init__(name="locked")
            self.impl = _HoldsALock()

        def run(self) -> int:
            return self.impl()

    with Flow("unpicklable-callable") as flow:
        bad = Locked()()
        good = inc(1)
    state = flow.run(executor=ProcessExecutor(max_workers=2))
    assert type(state.result[bad]).__name__ == "Failed"
    assert "task 'locked' could not be sent to a worker process" in state.result[bad].message
    assert state.result[good].result == 2


@task
def mixed(x: int, y: int) -> Any:
    """Plain values, other values and a failure side by side in one map."""
    if x == 5:
        raise ValueError("five")
    if x % 3 == 0:
        return [x, y]
    if x % 3 == 1:
        return float(x + y)
    return (context.map_index, context.task_run_count, context.task_full_name)


def test_packed_map_gives_the_states_of_the_local_executor() -> None:
    # Plain runs travel to the workers packed (one segment per task) and come back
    # as one list per group: values of plain types, other values and a failure in
    # one segment, one argument (unary) and two, with the context of each child.
    with Flow("packed") as flow:
        xs = list(range(40))
        one = inc.map(xs)
        two = mixed.map(xs, [10 * x for x in xs])
        after = inc.map(two)
    states = {
        name: flow.run(executor=make()) for name, make in EXECUTORS.items() if name != "threads"
    }
    local, processes = states["local"], states["processes"]
    for t in (one, two, after):
        assert summary(processes.result[t]) == summary(local.result[t])
    children = processes.result[two].map_states
    assert children[2].result == (2, 1, "mixed[2]")
    assert "five" in children[5].message
    assert type(processes.result[after].map_states[3]).__name__ == "Failed"  # inc([3, 30])


def test_inputs_that_cannot_travel_fail_only_their_mapped_child() -> None:
    import threading

    with Flow("packed-pickling") as flow:
        m = fragile.map([1, threading.Lock(), 2])
    state = flow.run(executor=ProcessExecutor(max_workers=2))
    children = state.result[m].map_states
    assert [type(c).__name__ for c in children] == ["Success", "Failed", "Success"]
    assert "could not be sent to a worker" in children[1].message
    assert [children[0].result, children[2].result] == [1, 2]


@task(max_retries=1, retry_delay=0)
def odd_fails_once(x: int) -> Any:
    if x % 2 and context.task_run_count == 1:
        raise RuntimeError("odd, first attempt")
    return (x, context.map_index, context.task_run_count)


def test_retried_children_of_a_map_keep_their_context_on_processes() -> None:
    # The retried (odd) children are not consecutive runs: they travel as one segment
    # whose run ids are a list, and each reads its own map index and run count.
    with Flow("packed-retries") as flow:
        m = odd_fails_once.map(list(range(12)))
    local = flow.run(executor=LocalExecutor())
    processes = flow.run(executor=ProcessExecutor(max_workers=2))
    assert summary(processes.result[m]) == summary(local.result[m])
    assert [c.result for c in processes.result[m].map_states] == [
        (x, x, 2 if x % 2 else 1) for x in range(12)
    ]


_WORKER_ONLY_FAILURE = """
import multiprocessing
from ferroflow import task
if multiprocessing.parent_process() is not None:
    raise ImportError("this module cannot be imported in a worker process")
def unloadable_fn(x):
    return x
{name} = task(unloadable_fn)  # the function itself is importable: pickled by reference
"""


def _worker_modules(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """Two task modules on ``sys.path``: ``ahead_fine`` imports anywhere (and notes the
    pid of each worker process that imports it in ``imported-by``), ``ahead_broken``
    raises ImportError in a worker process (and only there)."""
    marker = tmp_path / "imported-by"
    (tmp_path / "ahead_fine.py").write_text(
        "import multiprocessing, os\n"
        "from ferroflow import task\n\n"
        "if multiprocessing.parent_process() is not None:\n"
        f"    with open({str(marker)!r}, 'a') as f:\n"
        "        f.write(f'{os.getpid()}\\n')\n\n"
        "def twice_fn(x):\n    return 2 * x\n\n"
        "twice = task(twice_fn)\n"
    )
    (tmp_path / "ahead_broken.py").write_text(_WORKER_ONLY_FAILURE.format(name="unloadable"))
    monkeypatch.syspath_prepend(str(tmp_path))
    import ahead_broken
    import ahead_fine

    return ahead_fine.twice, ahead_broken.unloadable


@task
def worker_modules(_: Any) -> tuple[int, bool, bool]:
    """The worker's pid and whether it has imported the two task modules."""
    import sys

    return os.getpid(), "ahead_fine" in sys.modules, "ahead_broken" in sys.modules


@task
def importers(path: str) -> list[int]:
    """The pids in ``path`` once there is one (waits up to 60 s)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                pids = [int(line) for line in f if line.strip()]
            if pids:
                return pids
        time.sleep(0.02)
    return []


def test_workers_import_the_tasks_modules_ahead_best_effort(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker with nothing to do imports the modules of the flow's tasks (here while
    the first task waits for that; the module's task never runs); a module that fails to
    import in a worker does not harm it."""
    twice, unloadable = _worker_modules(tmp_path, monkeypatch)
    with Flow("import-ahead") as flow:
        go = Parameter("go", default=False)
        seen = importers(str(tmp_path / "imported-by"))
        with case(go, True):
            twice(unloadable(1))
    state = flow.run(executor=ProcessExecutor(max_workers=2))
    assert state.is_successful(), state
    pids = state.result[seen].result
    assert pids, "no worker imported ahead_fine ahead of its task"
    assert os.getpid() not in pids


def test_a_task_that_cannot_be_loaded_in_a_worker_fails_alone(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task whose function cannot be unpickled in a worker (its module fails to import
    there) fails with the reason; its worker lives on and the other tasks run. (It used
    to kill its worker at every attempt, and the run never ended.)"""
    twice, unloadable = _worker_modules(tmp_path, monkeypatch)
    with Flow("unloadable") as flow:
        bad = unloadable(1)
        mapped = unloadable.map([1, 2, 3])
        good = twice.map([1, 2, 3])
        after = inc(4, upstream_tasks=[bad])
    state = flow.run(executor=ProcessExecutor(max_workers=2))
    assert type(state).__name__ == "Failed"
    failed = state.result[bad]
    assert type(failed).__name__ == "Failed"
    assert "could not be loaded in the worker process" in failed.message
    assert "ImportError: this module cannot be imported in a worker process" in failed.message
    assert [type(s).__name__ for s in state.result[mapped].map_states] == ["Failed"] * 3
    assert state.result[good].result == [2, 4, 6]
    assert type(state.result[after]).__name__ == "TriggerFailed"


def test_workers_exit_after_the_run() -> None:
    """The run returns without waiting for its workers to exit, and they do exit."""
    with Flow("pids") as flow:
        pids = worker_modules.map([1, 2, 3, 4])
    state = flow.run(executor=ProcessExecutor(max_workers=2))
    assert state.is_successful(), state
    seen = {pid for pid, _, _ in state.result[pids].result}
    assert seen and os.getpid() not in seen
    _wait_until_gone(seen, 30)


def _wait_until_gone(pids: set[int], seconds: float) -> None:
    """Wait until the processes ``pids`` are gone, zombies too (reaped); fail after
    ``seconds`` (waiting for an event, not timing it)."""
    deadline = time.monotonic() + seconds
    while any(os.path.exists(f"/proc/{pid}") for pid in pids):
        assert time.monotonic() < deadline, f"processes {pids} still exist after {seconds} s"
        time.sleep(0.05)


_BOOT_SCRIPT = """
import sys
from ferroflow import Flow, task
from ferroflow.executors import ProcessExecutor

@task
def double(x):
    return 2 * x

with Flow("boot") as flow:
    doubled = double.map(list(range(8)))

for mark in ("first run", "second run"):
    print(f"-- {mark}", file=sys.stderr, flush=True)
    state = flow.run(executor=ProcessExecutor(max_workers=2))
    assert state.result[doubled].result == [2 * x for x in range(8)], state
print("-- done", file=sys.stderr, flush=True)
"""


def test_workers_of_the_forkserver_start_without_importing_a_module(tmp_path: Any) -> None:
    """The forkserver ferroflow starts preloads what a worker needs to start and run
    plain tasks, so a worker imports nothing of its own before its first batch (an
    import there is on the path of the run's first result). The first run starts the
    forkserver; the second run's workers are forked from it."""
    import subprocess
    import sys

    script = tmp_path / "boot.py"
    script.write_text(_BOOT_SCRIPT)
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1", "FERROFLOW_RECORD": "0"}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    second = done.stderr.split("-- second run\n", 1)[1].split("-- done\n", 1)[0]
    imported = [line for line in second.splitlines() if line.startswith("import time:")]
    assert not imported, "\n".join(imported)


def _buffers(fd: int) -> tuple[int, int] | None:
    """(send, receive) buffer sizes of the Unix socket ``fd``; None for another kind."""
    with socket.socket(fileno=os.dup(fd)) as sock:
        if sock.family != socket.AF_UNIX:
            return None
        return (
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        )


def _unix_socket_buffers() -> list[tuple[int, int]]:
    """(send, receive) buffer sizes of this process's Unix sockets."""
    sizes = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                got = _buffers(int(name))
                if got is not None:
                    sizes.append(got)
        except OSError:
            continue  # closed meanwhile
    return sizes


@task
def socket_buffers() -> list[tuple[int, int]]:
    return _unix_socket_buffers()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads /proc (Linux)")
def test_both_ends_of_a_workers_pipe_hold_a_large_value_at_once() -> None:
    """A worker's pipe gets socket buffers of _PIPE_BUFFER on both ends (the kernel caps
    them at net.core.wmem_max / rmem_max and reports twice what was set), so a large
    batch or result does not cross in turns of the default ~200 kB."""
    from ferroflow.executors import process

    def sysctl(name: str) -> int:
        with open(f"/proc/sys/net/core/{name}") as f:
            return int(f.read())

    want = 2 * min(process._PIPE_BUFFER, sysctl("wmem_max"), sysctl("rmem_max"))
    with Flow("buffers") as flow:
        sizes = socket_buffers()
    with ProcessExecutor(max_workers=1) as executor:
        state = flow.run(executor=executor)
        assert state.is_successful(), state
        (worker,) = executor._kept
        driver_end = _buffers(worker.conn.fileno())
    worker_end = state.result[sizes].result
    assert driver_end is not None and worker_end, (driver_end, worker_end)
    for snd, rcv in [driver_end, *worker_end]:
        assert snd >= want and rcv >= want, (driver_end, worker_end, want)


def test_widening_a_pipe_that_is_not_a_socket_does_nothing_and_leaks_no_descriptor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where a worker's pipe is not a socket (a one-way ``multiprocessing`` pipe is an
    OS pipe), ``_widen`` leaves it as it is and closes the duplicate it made.

    The descriptors ``_widen`` duplicates are followed through ``os.dup`` and
    ``os.close``, not by listing the process's descriptors: other tests' helper threads
    (a reaper, a closing cluster) may open and close their own meanwhile."""
    import multiprocessing

    from ferroflow.executors import process

    made: list[int] = []
    closed: list[int] = []
    real_dup, real_close = os.dup, os.close

    def dup(fd: int) -> int:
        new = real_dup(fd)
        made.append(new)
        return new

    def close(fd: int) -> None:
        closed.append(fd)
        real_close(fd)

    reader, writer = multiprocessing.Pipe(duplex=False)
    try:
        monkeypatch.setattr(os, "dup", dup)
        monkeypatch.setattr(os, "close", close)
        process._widen(reader, writer)
        monkeypatch.undo()
        assert len(made) == 2 and set(made) <= set(closed), (made, closed)
        writer.send_bytes(b"still a pipe")
        assert reader.recv_bytes() == b"still a pipe"
    finally:
        reader.close()
        writer.close()


@task
def linger(x: int) -> int:
    """Leaves a non-daemon thread behind: its worker cannot exit when told to stop."""
    import threading

    threading.Thread(target=time.sleep, args=(120,), daemon=False).start()
    return os.getpid()


def test_a_worker_that_does_not_exit_when_stopped_is_killed() -> None:
    """A worker still there after its grace period (a task left a thread that keeps
    the process alive) is killed by the reaper, also when runs before and after it
    stopped other workers meanwhile."""
    with Flow("linger") as flow:
        pids = linger.map([1, 2])
    with Flow("plain") as other:
        total(inc.map([1, 2, 3]))
    state = flow.run(executor=ProcessExecutor(max_workers=2))
    assert state.is_successful(), state
    for _ in range(2):
        assert other.run(executor=ProcessExecutor(max_workers=2)).is_successful()
    _wait_until_gone(set(state.result[pids].result), 60)


def test_the_reaper_goes_on_after_a_worker_it_cannot_wait_for() -> None:
    """A stopped worker whose process handle fails does not stop the reaping of the
    workers stopped after it."""
    import cloudpickle

    from ferroflow.executors import process

    class Broken:
        def join(self, timeout: float | None = None) -> None:
            raise OSError("the handle is gone")

    class Conn:
        closed = False

        def send_bytes(self, data: bytes) -> None:
            pass

    broken = process._Worker.__new__(process._Worker)
    broken.proc, broken.conn = Broken(), Conn()  # type: ignore[assignment]
    process._stop_workers([broken], cloudpickle)
    with Flow("after") as flow:
        pids = worker_modules.map([1, 2])
    state = flow.run(executor=ProcessExecutor(max_workers=2))
    assert state.is_successful(), state
    _wait_until_gone({pid for pid, _, _ in state.result[pids].result}, 30)


@task
def kind_of(x: Any) -> str:
    return type(x).__name__


def test_inputs_that_cannot_be_unpickled_in_a_worker_fail_only_their_runs(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An input that pickles in the driver but cannot be unpickled in a worker (its
    class's module fails to import there) fails only the run that takes it, with the
    reason; the runs that travelled in the same batch run. (Its batch used to kill the
    worker at every attempt, and the run never ended.)"""
    (tmp_path / "driver_only.py").write_text(
        "import multiprocessing\n\n"
        "if multiprocessing.parent_process() is not None:\n"
        "    raise ImportError('driver_only cannot be imported in a worker process')\n\n"
        "class Token:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from driver_only import Token

    with Flow("undecodable") as flow:
        kinds = kind_of.map([1, "two", Token(), 4.0])
        alone = kind_of(Token())
        fine = inc(1)
    state = flow.run(executor=ProcessExecutor(max_workers=2))
    assert type(state).__name__ == "Failed"
    children = state.result[kinds].map_states
    assert [type(s).__name__ for s in children] == ["Success", "Success", "Failed", "Success"]
    assert [s.result for i, s in enumerate(children) if i != 2] == ["int", "str", "float"]
    for failed in (children[2], state.result[alone]):
        assert "could not be unpickled in the worker process" in failed.message
        assert "driver_only cannot be imported in a worker process" in failed.message
    assert state.result[fine].result == 2


def _exit_in_worker(x: int) -> int:
    """Called when a ``CrashesWorkerOnLoad`` is unpickled: ends a worker process."""
    import multiprocessing

    if multiprocessing.parent_process() is not None:
        os._exit(3)
    return x


class CrashesWorkerOnLoad:
    """Pickles anywhere; unpickling it in a worker process ends that process."""

    def __reduce__(self) -> Any:
        return (_exit_in_worker, (7,))


def test_an_input_that_crashes_its_worker_when_unpickled_fails_only_its_run() -> None:
    """A worker that dies while unpickling its batch (no run started) is replaced and
    the runs sent again; after three such deaths they go one per batch, and the run
    whose input crashes a worker fails after three more, with the reason. (The run used
    to go from worker to worker forever.)"""
    with Flow("crash-on-load") as flow:
        kinds = kind_of.map([1, CrashesWorkerOnLoad(), 3.0])
        fine = inc(1)
    state = flow.run(executor=ProcessExecutor(max_workers=2))
    assert type(state).__name__ == "Failed"
    children = state.result[kinds].map_states
    assert [type(s).__name__ for s in children] == ["Success", "Failed", "Success"]
    assert [children[0].result, children[2].result] == ["int", "float"]
    assert "died 3 times before starting a run of task 'kind_of'" in children[1].message
    assert "exit code 3" in children[1].message
    assert state.result[fine].result == 2
