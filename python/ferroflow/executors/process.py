"""The process-pool executor: task runs execute in worker processes.

How it works
------------
The Rust core stays in the driver (the process that called ``flow.run``) and decides
what is ready. The driver takes ready runs from the core in batches, ships each batch
to a worker over a pipe with cloudpickle (a task's function travels once per worker,
not once per run), and reports results back to the core as they arrive. Workers
execute their batch in order and send results back in small groups.

Plain runs (no handlers, timeout, keyword arguments or loop around the call: a mapped
``inc`` for one) travel packed: consecutive runs of one task as one segment, the task
once and a list per field (run ids, map indexes, run counts, arguments); their results
come back as one list per group, handed to the core in one native call. Other runs
travel one tuple each. A forkserver that ferroflow starts preloads the workers'
modules, so each worker starts with them imported. The first worker starts first and
gets the first batch while the others start; each worker is then sent the modules the
flow's tasks are defined in, to import while it waits (best effort: a module that
fails to import in a worker fails only the runs of its tasks, with the reason). The
run returns without waiting for the workers to exit; a helper thread reaps them. Used
as a context manager, the executor keeps its idle workers for the next run of the block
instead: a kept worker is sent the new run's context, forgets the tasks it had (task ids
are positions in a flow's plan) and closes the last run's checkpoint packs.

Faults: each worker publishes the id of the run it is executing in shared memory.
When a worker dies (segfault, ``os._exit``, SIGKILL, out-of-memory kill) the driver
sees its sentinel, charges the death to that one run (Failed "worker process died:
SIGKILL", retried if the task allows retries; ``retry_on`` does not filter a death),
sends the runs it had not started to the other workers, and starts a replacement.
Timeouts are enforced for real: a run past its task's ``timeout`` has its worker
killed, ends ``TimedOut`` and the worker is replaced. Ctrl-C kills the workers and
cancels the flow run. A task or an input that cannot be unpickled in a worker fails
only the runs that need it, with the reason: a worker that cannot unpickle a batch
says so, one that dies doing it (no run started) is noticed after three such deaths;
either way the batch's runs are sent again one by one.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from ferroflow import _native
from ferroflow.exceptions import ExecutorError
from ferroflow.executors import _check_workers, _driver_tasks, _run_in_driver, _shown, _wait_idle
from ferroflow.runtime import _MASK_LIST

_BATCH = 256  # runs per message to a worker, before any run time is known
_BATCH_MAX = 8192  # the most runs in one message
_BATCH_S = 0.004  # once the run time is known: about this much work per message
_DEPTH = 2  # batches in flight per worker
_FLUSH_S = 0.002  # a worker sends finished results at least this often
# Results of these exact types travel inside their batch's message, not pickled one by
# one (``ok`` is then ``_RAW``): pickling them cannot fail, and a batch is pickled once.
_PLAIN = frozenset({int, float, str, bytes, bool, type(None), complex})
_RAW = 2
# A batch travels as this byte, its id (8 bytes, little-endian) and its pickle, so that
# a worker that cannot unpickle it can say which one (every other message is a pickle).
_BATCH_TAG = b"B"
# Deaths of workers between runs with the same run next in line before its batch is
# split (and, for a run sent alone, before it fails): see _Driver._died_before_starting.
_IDLE_DEATHS = 3


def _death_name(exitcode: int | None) -> str:
    if exitcode is None:
        return "unknown cause"
    if exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def _exc_text(exc: BaseException) -> str:
    """``TypeName: text`` of an exception (its type name alone when it has no text)."""
    try:
        text = str(exc)
    except Exception:
        text = ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _encode(cloudpickle: Any, run_id: int, hooked: bool, ok: bool, value: Any) -> tuple[Any, ...]:
    """A result as it travels back: pickled here so one bad value spoils only itself.
    An exception travels with its traceback (tblib), so the driver's Failed state shows
    where the task failed, as on the other executors."""
    original = value
    if hooked and ok and isinstance(value, tuple) and len(value) in (4, 5):
        original = value[1]
    if isinstance(original, BaseException):
        from ferroflow.runtime import _user_traceback

        _user_traceback(original)
        _keep_traceback(original)
    try:
        return (run_id, hooked, ok, cloudpickle.dumps(value))
    except Exception as exc:
        if isinstance(original, BaseException):
            msg = (
                f"the task raised {_exc_text(original)}; that exception could not be sent "
                f"back from the worker process: {exc!r}"
            )
        else:
            msg = f"the task's result could not be sent back from the worker process: {exc!r}"
        return (run_id, hooked, None, (msg, _shown(original)))


def _keep_traceback(exc: BaseException) -> None:
    """Let ``exc`` (and the exceptions chained to it) pickle with their tracebacks."""
    try:
        import tblib.pickling_support

        tblib.pickling_support.install(exc)
    except Exception:  # pragma: no cover - tblib is a dependency
        pass


def _worker_main(conn: Any, current: Any, started: Any, info_blob: bytes) -> None:
    """Entry point of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's business
    import cloudpickle

    from ferroflow import runtime
    from ferroflow.engine import run_task

    # Log lines travel back with the results (a forked worker must not write to the
    # driver's run-log sinks: the driver's writer thread does not exist here).
    runtime._SINKS.clear()
    runtime._take_remote_logs()
    runtime._capture_remote_logs()
    # One message at a time on the pipe: results from this loop, full batches of log
    # lines from whatever thread of a task logs them.
    sending = threading.Lock()

    def send(out: list[tuple[Any, ...]], logs: list[Any]) -> None:
        data = cloudpickle.dumps((out, logs))
        with sending:
            conn.send_bytes(data)

    runtime._REMOTE_SEND = lambda logs: send([], logs)

    info = cloudpickle.loads(info_blob)
    funcs: dict[int, Any] = {}
    tasks: dict[int, Any] = {}
    broken: set[int] = set()  # tasks whose function or task could not be unpickled here
    parent = os.getppid()
    while True:
        try:
            # Wake up now and then: a worker whose driver is gone exits on its own.
            while not conn.poll(1.0):
                if os.getppid() != parent:
                    return
            raw = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if raw[:1] == _BATCH_TAG:
            bid = int.from_bytes(raw[1:9], "little")
            try:
                kind, payload = "batch", cloudpickle.loads(memoryview(raw)[9:])
            except BaseException as exc:  # an input that cannot be unpickled here
                data = cloudpickle.dumps((None, (bid, _exc_text(exc))))
                with sending:
                    conn.send_bytes(data)
                continue
        else:
            kind, payload = cloudpickle.loads(raw)
        if kind == "stop":
            _end_run(info)
            return
        if kind == "run":  # a kept worker (ProcessExecutor as a context manager): next run
            _end_run(info)
            info = cloudpickle.loads(payload)
            funcs.clear()  # task ids are the positions of the tasks in a flow's plan
            tasks.clear()
            broken.clear()
            continue
        if kind == "masks":  # secret values the driver masks: masked here too
            runtime._adopt_masks(payload)
            continue
        if kind == "imports":  # the tasks' modules, imported ahead of their first run
            _import_ahead(payload, conn)
            continue
        if kind == "tasks":
            for task_id, blob in payload.items():
                try:
                    func, task_obj = cloudpickle.loads(blob)
                except BaseException as exc:  # each of its runs fails with the reason
                    func, task_obj = _unloadable(exc), None
                    broken.add(task_id)
                funcs[task_id] = func
                if task_obj is not None:
                    tasks[task_id] = task_obj
            continue
        out: list[tuple[Any, ...]] = []
        monotonic = time.monotonic
        last = monotonic()
        for entry in payload:
            if len(entry) == 6:
                last = _run_segment(entry, funcs, info, current, cloudpickle, send, out, last)
                continue
            (
                run_id,
                task_id,
                map_index,
                run_count,
                loop_count,
                hooked,
                args,
                kwargs,
                loop_result,
            ) = entry
            now = monotonic()
            if out and now - last > _FLUSH_S:
                send(out, runtime._take_remote_logs())
                out = []
                last = now = monotonic()
            # The start first: the driver reads the run, then its start (a timeout
            # counts from when the run starts here, not from when it was sent).
            started.value = now
            current.value = run_id
            runtime._enter_remote(
                info, (0, run_id, task_id, map_index, run_count, loop_count, loop_result)
            )
            value: Any
            try:
                if hooked and task_id not in broken:
                    value = run_task(
                        tasks[task_id],
                        run_count,
                        args,
                        kwargs,
                        funcs[task_id],
                        enforce_timeout=False,
                    )
                elif kwargs is None:
                    value = funcs[task_id](*args)
                else:
                    value = funcs[task_id](*args, **kwargs)
                ok = True
            except BaseException as exc:
                value, ok = exc, False
            current.value = -1
            if ok and not hooked and type(value) in _PLAIN:
                out.append((run_id, False, _RAW, value))
            else:
                out.append(_encode(cloudpickle, run_id, hooked, ok, value))
        send(out, runtime._take_remote_logs())


def _end_run(info: Any) -> None:
    """In a worker: forget a flow run that is over (its checkpoint packs are closed;
    log lines that threads of its tasks still write are dropped)."""
    from ferroflow import runtime

    runtime._REMOTE_RUNS.discard(info.flow_run_id)
    # Packs are opened only by a checkpointed task, which imported the module.
    checkpoints = sys.modules.get("ferroflow._checkpoint")
    if checkpoints is not None:
        checkpoints.PACKS.close_run(info.flow_run_id)


def _unloadable(exc: BaseException) -> Any:
    """In a worker: what stands for a task whose function (or task) could not be
    unpickled here (its module fails to import in a worker, say): a function that raises
    the reason, so that each run of the task fails with it and the worker lives on."""
    msg = f"the task could not be loaded in the worker process: {_exc_text(exc)}"

    def unloadable(*args: Any, **kwargs: Any) -> Any:
        raise ExecutorError(msg) from exc

    return unloadable


def _import_ahead(names: list[str], conn: Any) -> None:
    """In a worker: import the modules the flow's tasks are defined in, before a run of
    them arrives (unpickling a task's function imports its module; done here, that
    happens while the worker has nothing else to do). It stops as soon as a message
    waits on ``conn`` (the rest are imported when a run needs them). Best effort: a
    module that fails to import is left alone, and the task's first run reports the
    error as it would."""
    import importlib

    for name in names:
        if conn.poll():
            return
        if name not in sys.modules:
            try:
                importlib.import_module(name)
            except BaseException:  # reported by the first run of its task, if one runs
                continue


def _task_modules(tasks: Any, skip: frozenset[int]) -> list[str]:
    """The importable modules (other than ``__main__`` and what workers preload) that
    define the functions and classes of ``tasks``, except those at the indexes ``skip``:
    what a worker imports when it unpickles them."""
    names: dict[str, None] = {}
    for i, t in enumerate(tasks):
        if i in skip:
            continue
        for obj in (getattr(t, "run", None), type(t)):
            name = getattr(obj, "__module__", None)
            if (
                isinstance(name, str)
                and name != "__main__"
                and name not in _WORKER_MODULES
                and getattr(sys.modules.get(name), "__file__", None)
            ):
                names[name] = None
    return list(names)


def _run_segment(
    segment: tuple[Any, ...],
    funcs: dict[int, Any],
    info: Any,
    current: Any,
    cloudpickle: Any,
    send: Any,
    out: list[tuple[Any, ...]],
    last: float,
) -> float:
    """In a worker: call the plain runs of one segment, in order; their results go to
    ``out`` as ``(runs, values, specials, seconds)`` groups (``specials``: ``(index,
    encoded)`` for a run that raised or returned a value of another type than
    ``_PLAIN``'s; ``seconds``: how long the group's runs took).
    Returns when results were last sent.

    Finished results are sent at least every ``_FLUSH_S``; the clock is read every
    ``stride`` runs, a stride sized to about a tenth of that from the runs so far.
    ``current`` names the run being called, and the run that last returned until the
    next one starts (a death between two runs is charged to the one before); the
    task-run context reads it through a ``runtime._SegmentCursor``.
    """
    from ferroflow import runtime

    task_id, runs, map_indexes, run_counts, argss, unary = segment
    func = funcs[task_id]
    cursor = runtime._SegmentCursor(task_id, runs, map_indexes, run_counts, current)
    runtime._enter_remote(info, None)
    runtime._LOCAL.cur = cursor
    monotonic = time.monotonic
    plain = _PLAIN
    values: list[Any] = []
    specials: list[tuple[int, tuple[Any, ...]]] = []
    start = 0
    check = 0  # the index at which the clock is read next
    stride = 1
    checked_i, checked_t = 0, monotonic()
    began = checked_t  # when the group in `values` began
    try:
        for i, run_id in enumerate(runs):
            if i >= check:
                now = monotonic()
                if i > checked_i:
                    per_run = (now - checked_t) / (i - checked_i)
                    stride = max(1, min(64, int(_FLUSH_S / 10 / per_run) if per_run else 64))
                checked_i, checked_t, check = i, now, i + stride
                if now - last > _FLUSH_S and (out or i > start):
                    if i > start:
                        out.append((runs[start:i], values, specials, now - began))
                        values, specials, start = [], [], i
                    send(out, runtime._take_remote_logs())
                    out.clear()
                    last = began = monotonic()
            current.value = run_id
            try:
                value = func(argss[i]) if unary else func(*argss[i])
            except BaseException as exc:
                specials.append((i - start, _encode(cloudpickle, run_id, False, False, exc)))
                values.append(None)
                continue
            if type(value) in plain:
                values.append(value)
            else:
                specials.append((i - start, _encode(cloudpickle, run_id, False, True, value)))
                values.append(None)
    finally:
        runtime._LOCAL.cur = cursor.current() if current.value >= 0 else None
        current.value = -1
    if len(runs) > start:
        out.append((runs[start:] if start else runs, values, specials, monotonic() - began))
    return last


class _Seg:
    """Consecutive plain runs of one task, as the driver keeps them (the fields of a
    ``Runner.take_segments`` segment: ``runs`` and ``map_indexes`` a range or a list,
    ``run_counts`` an int or a list, ``args`` the argument tuples or, ``unary``, the
    single arguments); ``pos``: how many of them the worker has reported."""

    __slots__ = ("args", "func", "map_indexes", "pos", "run_counts", "runs", "task", "unary")

    def __init__(
        self,
        task: int,
        func: Any,
        runs: Any,
        map_indexes: Any,
        run_counts: Any,
        args: list[Any],
        unary: bool,
    ) -> None:
        self.task = task
        self.func = func
        self.runs = runs
        self.map_indexes = map_indexes
        self.run_counts = run_counts
        self.args = args
        self.unary = unary
        self.pos = 0

    def part(self, lo: int, hi: int) -> _Seg:
        """Runs ``lo:hi`` of this segment, as a new one."""
        counts = self.run_counts
        return _Seg(
            self.task,
            self.func,
            self.runs[lo:hi],
            self.map_indexes[lo:hi],
            counts if type(counts) is int else counts[lo:hi],
            self.args[lo:hi],
            self.unary,
        )

    def pick(self, keep: list[int]) -> _Seg:
        """The runs at the indexes ``keep`` of this segment, as a new one."""
        counts = self.run_counts
        return _Seg(
            self.task,
            self.func,
            [self.runs[i] for i in keep],
            [self.map_indexes[i] for i in keep],
            counts if type(counts) is int else [counts[i] for i in keep],
            [self.args[i] for i in keep],
            self.unary,
        )

    def wire(self) -> tuple[Any, ...]:
        return (self.task, self.runs, self.map_indexes, self.run_counts, self.args, self.unary)


def _unpacked(seg: _Seg) -> Iterator[tuple[Any, ...]]:
    """A segment's runs as ``Runner.take`` tuples (plain runs: not hooked, no keyword
    arguments, not a loop iteration)."""
    counts = seg.run_counts
    for i, run_id in enumerate(seg.runs):
        args = (seg.args[i],) if seg.unary else tuple(seg.args[i])
        count = counts if type(counts) is int else counts[i]
        yield (run_id, seg.task, seg.map_indexes[i], count, 0, False, seg.func, args, None, None)


def _size(entry: Any) -> int:
    """How many runs an entry of a batch holds (unreported ones, for a segment)."""
    return len(entry.runs) - entry.pos if type(entry) is _Seg else 1


def _head_run(entry: Any) -> int:
    """The run id an entry's worker reports next."""
    return entry.runs[entry.pos] if type(entry) is _Seg else entry[0]


def _task_of(entry: Any) -> int:
    """The task id of an entry's runs (a segment or an item tuple)."""
    return entry.task if type(entry) is _Seg else entry[1]


def _singles(entries: Any) -> list[Any]:
    """The unreported runs of ``entries`` (item tuples and segments), one entry each."""
    out: list[Any] = []
    for entry in entries:
        if type(entry) is _Seg:
            out.extend(entry.part(i, i + 1) for i in range(entry.pos, len(entry.runs)))
        else:
            out.append(entry)
    return out


def _chunks(entries: list[Any], size: int, n: int) -> tuple[list[list[Any]], list[Any]]:
    """Up to ``n`` chunks of ``size`` runs each from ``entries`` (segments split where
    needed), and the entries left over."""
    chunks: list[list[Any]] = []
    chunk: list[Any] = []
    room = size
    i = 0
    while i < len(entries) and len(chunks) < n:
        entry = entries[i]
        k = _size(entry)
        if k <= room:
            chunk.append(entry)
            room -= k
            i += 1
        else:
            chunk.append(entry.part(0, room))
            entries[i] = entry.part(room, len(entry.runs))
            room = 0
        if room == 0:
            chunks.append(chunk)
            chunk, room = [], size
    if chunk and len(chunks) < n:
        chunks.append(chunk)
    return chunks, entries[i:]


_LAUNCH_LOCK = threading.Lock()


@contextlib.contextmanager
def _without_main() -> Iterator[None]:
    """Start processes without re-importing the parent's ``__main__`` in them.

    A forkserver or spawn child normally imports the parent's main script first,
    which runs a script without an ``if __name__ == "__main__":`` guard, and its
    ``flow.run()``, again in every worker. ferroflow's workers need nothing from
    ``__main__``: callables travel with cloudpickle (``__main__`` functions by
    value). So while a worker starts, the preparation data sent to it leaves out
    the main module (``sys.path`` and the working directory still travel).
    """
    from multiprocessing import spawn

    with _LAUNCH_LOCK:
        real = spawn.get_preparation_data

        def without_main(name: str) -> dict[str, Any]:
            data = real(name)
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
            return data

        spawn.get_preparation_data = without_main
        try:
            yield
        finally:
            spawn.get_preparation_data = real


# What a worker imports before its first run. A forkserver started by ferroflow imports
# them once, so each worker it forks starts with them loaded.
_WORKER_MODULES = (
    "ferroflow.executors.process",
    "ferroflow.engine",
    "cloudpickle",
    "multiprocessing.sharedctypes",  # to unpickle the RawValues a worker is given (ctypes)
    "multiprocessing.popen_forkserver",  # its _DupFd: to unpickle the worker's pipe
)


def _preload_forkserver(ctx: Any) -> None:
    """Have the forkserver import the workers' modules, if it has not started yet.

    Modules the program asked to preload stay in the list; a forkserver that is
    already running keeps what it has (workers then import the modules themselves).
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    if server is None or getattr(server, "_forkserver_pid", None) is not None:
        return
    current = list(getattr(server, "_preload_modules", None) or [])
    wanted = current + [m for m in _WORKER_MODULES if m not in current]
    if wanted != current:
        ctx.set_forkserver_preload(wanted)


# Socket buffers of a worker's pipe: a batch's inputs or a large result (a 100,000-element
# list is about 370 kB) fits in them at once, instead of the two processes taking turns
# at the default ~200 kB (the kernel caps it at net.core.wmem_max / rmem_max).
_PIPE_BUFFER = 4 << 20


def _widen(*conns: Any) -> None:
    """Give the sockets under ``conns`` (``multiprocessing`` duplex pipes) _PIPE_BUFFER."""
    import socket

    for conn in conns:
        try:
            fd = os.dup(conn.fileno())
        except OSError:
            continue
        try:
            sock = socket.socket(fileno=fd)
        except OSError:  # not a socket (another platform's pipe)
            os.close(fd)
            continue
        with sock, contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _PIPE_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _PIPE_BUFFER)


class _Worker:
    def __init__(self, ctx: Any, info_blob: bytes) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        _widen(self.conn, child)
        self.current = ctx.RawValue("q", -1)
        self.started = ctx.RawValue("d", 0.0)  # time.monotonic() when `current` started
        self.proc = ctx.Process(
            target=_worker_main,
            args=(child, self.current, self.started, info_blob),
            daemon=True,
            name="ferroflow-worker",
        )
        with _without_main():
            self.proc.start()
        child.close()
        self.masks = 0  # values of runtime._MASK_LIST this worker was sent
        self.reset()

    def reset(self) -> None:
        """Start the driver's bookkeeping of this worker afresh (for a new flow run)."""
        self.known: set[int] = set()
        # Items sent and not yet reported, in the order the worker runs them.
        self.inflight: deque[Any] = deque()  # item tuples and segments (_Seg)
        self.pending = 0  # runs sent and not reported
        self.batches = 0
        # Runs in flight that have a timeout (their clock starts in the worker).
        self.timed: set[int] = set()
        self.killed_for: int | None = None
        self.imported = False  # sent the tasks' modules to import (_import_ahead)
        # The last batches sent: (id, items, sent alone), for _undecodable.
        self.recent: deque[tuple[int, list[Any], bool]] = deque(maxlen=_DEPTH + 2)

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)


_STOP_GRACE_S = 5.0  # seconds a stopped worker has to exit before it is killed
# The helper thread that reaps stopped workers: (the process it runs in, its queue of
# (deadline, workers)). One per process, started with the first stop, so that the end
# of a run hands its workers over without starting a thread.
_reaper: tuple[int, queue.SimpleQueue[tuple[float, list[_Worker]]]] | None = None
_reaper_lock = threading.Lock()


def _stop_workers(workers: list[_Worker], cloudpickle: Any) -> None:
    """Tell ``workers`` to stop; a helper thread waits for them to exit (killing one
    that is still there after _STOP_GRACE_S), so that the caller does not wait on it."""
    global _reaper
    if not workers:
        return
    stop = cloudpickle.dumps(("stop", None))
    for w in workers:
        try:
            w.conn.send_bytes(stop)
        except OSError:
            pass
    with _reaper_lock:
        if _reaper is None or _reaper[0] != os.getpid():  # none yet, or a forked child
            todo: queue.SimpleQueue[tuple[float, list[_Worker]]] = queue.SimpleQueue()
            threading.Thread(target=_reap, args=(todo,), name="ferroflow-reap", daemon=True).start()
            _reaper = (os.getpid(), todo)
        _reaper[1].put((time.monotonic() + _STOP_GRACE_S, list(workers)))


def _reap(todo: queue.SimpleQueue[tuple[float, list[_Worker]]]) -> None:
    """Wait for stopped workers to exit, in the order they were stopped; kill one still
    running at its deadline."""
    while True:
        deadline, workers = todo.get()
        for w in workers:
            try:
                w.proc.join(max(0.0, deadline - time.monotonic()))
                if w.proc.is_alive():
                    w.kill()
                w.conn.close()
            except Exception:  # one broken handle must not stop the reaping of the rest
                continue


class ProcessExecutor:
    """Run tasks in a pool of worker processes.

    Callables, arguments and results travel with cloudpickle, in batches; a worker
    that dies is detected and replaced, and its runs are failed (or retried) or sent
    elsewhere, never lost; timeouts stop the run for real.

    Args:
        max_workers: number of worker processes [the number of CPUs]; must be >= 1.
        mp_context: the multiprocessing start method ["forkserver" where available,
            else "spawn"]. Not "fork" by default: forking a process whose native
            threads (the run store's writer, worker threads) are running can deadlock
            the child, and a forked child would share the parent's SQLite
            connections. Workers started either way open nothing of the parent's.

    Each flow run starts its own workers and stops them at its end. Used as a context
    manager, the executor keeps its workers between the runs made inside the ``with``
    block instead, so that many short runs (a parameter sweep, tests) do not each pay
    for starting processes: a run hands its live, idle workers to the next (a worker
    that died, was stopped for a timeout or still holds work is replaced by a fresh
    one). Kept workers share what a process keeps between runs: modules imported,
    their globals, threads a task left running, and the ``sys.path``, working
    directory and environment they started with. The block's end (or :meth:`close`)
    stops them. A run made while another one uses the kept workers (from another
    thread) starts its own.

    Raises:
        ExecutorError: ``max_workers`` is not a whole number >= 1, or ``mp_context``
            is not a start method of this platform.

    Example:
        >>> from ferroflow.executors import ProcessExecutor
        >>> ProcessExecutor(max_workers=2)
        ProcessExecutor(max_workers=2)

        Workers kept for several runs::

            with ProcessExecutor(max_workers=2) as executor:
                for n in range(100):
                    flow.run(parameters={"n": n}, executor=executor)
    """

    def __init__(self, max_workers: int | None = None, mp_context: str | None = None) -> None:
        self.max_workers = _check_workers(max_workers, os.cpu_count() or 1)
        import multiprocessing

        methods = multiprocessing.get_all_start_methods()
        if mp_context is None:
            mp_context = "forkserver" if "forkserver" in methods else "spawn"
        if mp_context not in methods:
            raise ExecutorError(f"mp_context must be one of {methods}, got {mp_context!r}")
        self.mp_context = mp_context
        # Inside `with`: the workers kept for the next run (None outside), and whether
        # a run has them now.
        self._kept: list[_Worker] | None = None
        self._lent = False
        self._kept_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ProcessExecutor(max_workers={self.max_workers})"

    def __reduce__(self) -> Any:
        # A flow that names its executor travels with it (registration, workers): as
        # its settings, without kept workers.
        return (type(self), (self.max_workers, self.mp_context))

    def __enter__(self) -> ProcessExecutor:
        with self._kept_lock:
            if self._kept is not None:
                raise ExecutorError("this ProcessExecutor is already in a with block")
            self._kept = []
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers kept between runs (the end of the ``with`` block does this).
        A run still using them stops them when it ends. Runs made afterwards start
        their own workers, as outside a ``with`` block. Closing twice is harmless."""
        with self._kept_lock:
            kept, self._kept = self._kept, None
        if kept:
            import cloudpickle

            _stop_workers(kept, cloudpickle)

    def _borrow(self) -> list[_Worker] | None:
        """The kept workers for a run to use (an empty list when there are none yet),
        or None when this run must start its own (outside ``with``, or another run
        has them)."""
        with self._kept_lock:
            if self._kept is None or self._lent:
                return None
            self._lent = True
            kept, self._kept = self._kept, []
            return kept

    def _give_back(self, workers: list[_Worker], cloudpickle: Any) -> None:
        """Keep ``workers`` for the next run, or stop them if the block has ended."""
        with self._kept_lock:
            self._lent = False
            if self._kept is not None:
                self._kept.extend(workers)
                return
        _stop_workers(workers, cloudpickle)

    def execute(self, run: Any) -> None:
        """Run ``run`` to the end on the worker processes."""
        import multiprocessing

        import cloudpickle

        ctx = multiprocessing.get_context(self.mp_context)
        if self.mp_context == "forkserver":
            _preload_forkserver(ctx)
        try:
            info_blob = cloudpickle.dumps(run.remote_info())
        except Exception as exc:
            raise ExecutorError(
                f"could not prepare the flow run for worker processes: {exc!r}"
            ) from exc
        kept = self._borrow()
        driver = _Driver(run, ctx, info_blob, self.max_workers, kept)
        try:
            driver.start()
            driver.loop()
        except KeyboardInterrupt:
            driver.kill_all()
            run.runner.close("Flow run interrupted (KeyboardInterrupt).")
            return
        except BaseException:
            driver.kill_all()
            run.runner.close("The executor failed.")
            raise
        finally:
            # The workers that can serve another run: kept inside a block, else stopped
            # (killed ones are stopped either way).
            usable = driver.release()
            if kept is not None:
                self._give_back(usable, cloudpickle)
            else:
                _stop_workers(usable, cloudpickle)
        run.runner.close(None)


class _Driver:
    def __init__(
        self, run: Any, ctx: Any, info_blob: bytes, n: int, kept: list[_Worker] | None = None
    ) -> None:
        import cloudpickle

        self.cloudpickle = cloudpickle
        self.run = run
        self.runner = run.runner
        self.tasks = run.plan.tasks
        self.ctx = ctx
        self.info_blob = info_blob
        self.n = n
        self.workers: list[_Worker] = []
        # Idle workers of earlier runs to use before starting new ones (ProcessExecutor
        # as a context manager), or None: this run's workers stop at its end.
        self.kept = kept
        self.requeue: deque[Any] = deque()  # item tuples and segments (_Seg)
        self.func_blobs: dict[int, Any] = {}
        # Tasks that run here, not in a worker (secret tasks: see _run_here).
        self.in_driver = _driver_tasks(self.tasks)
        # Per task: (seconds, runs) its plain runs took in the workers lately, and the
        # task of the runs taken last (the next ones are most likely of it too).
        self.seen: dict[int, tuple[float, float]] = {}
        self.last_task = -1
        self.modules: list[str] | None = None  # see _task_modules
        self.batch_id = 0
        # Runs to send one per batch (their batch could not be unpickled in a worker).
        self.solo: deque[Any] = deque()
        # Per run: how many workers died while it was next in line (_died_before_starting).
        self.idle_deaths: dict[int, int] = {}

    def start(self, n: int = 1) -> None:
        """Start workers until there are ``n`` (at most ``self.n``); each is sent the
        modules of the flow's tasks to import while it waits for its first batch."""
        try:
            while len(self.workers) < min(n, self.n):
                self.workers.append(self._new_worker())
        except Exception as exc:
            self.kill_all()
            raise ExecutorError(f"could not start worker processes: {exc!r}") from exc

    def _new_worker(self) -> _Worker:
        """A kept worker told about this run, or a new worker."""
        while self.kept:
            w = self.kept.pop(0)
            if w.proc.is_alive() and not w.conn.closed:
                w.reset()
                try:
                    w.conn.send_bytes(self.cloudpickle.dumps(("run", self.info_blob)))
                    return w
                except OSError:
                    pass  # it just died
            w.kill()
            w.conn.close()
        return _Worker(self.ctx, self.info_blob)

    def release(self) -> list[_Worker]:
        """At the end of the run: the workers the next run can use (alive, nothing in
        flight, not stopped for a timeout); the others are stopped."""
        keep: list[_Worker] = []
        drop: list[_Worker] = []
        for w in self.workers + (self.kept or []):
            usable = not w.conn.closed and not w.inflight and w.killed_for is None
            (keep if usable and w.proc.is_alive() else drop).append(w)
        self.workers = []
        self.kept = []
        _stop_workers(drop, self.cloudpickle)
        return keep

    def _import_ahead(self) -> None:
        """Send each worker that has not had them the modules of the flow's tasks to
        import (after its first batch, if it has one: that batch runs first)."""
        if self.modules is None:
            self.modules = _task_modules(self.tasks, self.in_driver)
        for w in self.workers:
            if not w.imported:
                w.imported = True
                if self.modules:
                    try:
                        w.conn.send_bytes(self.cloudpickle.dumps(("imports", self.modules)))
                    except OSError:
                        pass  # the worker just died: its sentinel says so

    def kill_all(self) -> None:
        for w in self.workers:
            w.kill()

    # --- sending ---------------------------------------------------------------------
    def _task_payload(self, task_id: int, hooked: bool, func: Any) -> Any:
        """The pickled (function, task) of a task, or the error that stops it."""
        blob = self.func_blobs.get(task_id)
        if blob is None:
            task = self.tasks[task_id]
            try:
                blob = self.cloudpickle.dumps((func, task if hooked else None))
            except Exception as exc:
                blob = ExecutorError(
                    f"task '{task.name}' could not be sent to a worker process "
                    f"(its function or the task cannot be pickled): {exc!r}"
                )
            self.func_blobs[task_id] = blob
        return blob

    def _items(self, max_n: int) -> list[Any]:
        """Up to ``max_n`` runs to send: sent-back ones first, then ready ones (runs of
        ``in_driver`` tasks are executed here meanwhile, see _run_here)."""
        items: list[Any] = []
        n = 0
        requeue = self.requeue
        while requeue and n < max_n:
            entry = requeue.popleft()
            k = _size(entry)
            if n + k > max_n:
                cut = max_n - n
                requeue.appendleft(entry.part(cut, len(entry.runs)))
                entry = entry.part(0, cut)
                k = cut
            items.append(entry)
            n += k
        while n < max_n:
            got = [
                _Seg(*entry) if len(entry) == 7 else entry
                for entry in self.runner.take_segments(max_n - n)
            ]
            rest = self._run_here(got) if got and self.in_driver else got
            items.extend(rest)
            n += sum(_size(entry) for entry in rest)
            if len(rest) == len(got):
                break  # nothing ran here, so nothing new is ready
        return items

    def _run_here(self, items: list[Any]) -> list[Any]:
        """Execute the runs of ``in_driver`` tasks among ``items`` in this process, as the
        local executor would; the other items. A secret task runs here so that it reads
        its value with this process's credentials and the value is masked here before
        anything that used it is recorded (workers get it before their next batch)."""
        rest = []
        for item in items:
            seg = type(item) is _Seg
            if _task_of(item) not in self.in_driver:
                rest.append(item)
                continue
            for one in _unpacked(item) if seg else (item,):
                if _run_in_driver(self.run, one):
                    raise KeyboardInterrupt
        return rest

    def _send(self, w: _Worker, items: list[Any], alone: bool = False) -> None:
        """Send ``items`` to ``w`` as one batch (``alone``: a run sent by itself after a
        batch that held it could not be unpickled in the worker, see _undecodable)."""
        cp = self.cloudpickle
        new_tasks: dict[int, Any] = {}
        batch: list[tuple[Any, ...]] = []
        kept: list[Any] = []
        seen: dict[int, Any] = {}  # task id -> its payload, for this batch
        for item in items:
            # item: a segment of plain runs, or (run, task, map_index, run_count,
            # loop_count, hooked, func, args, kwargs, loop_result); the function
            # travels once per worker, not per run.
            seg = type(item) is _Seg
            task_id = item.task if seg else item[1]
            blob = seen.get(task_id)
            if blob is None:
                if seg:
                    blob = self._task_payload(task_id, False, item.func)
                else:
                    blob = self._task_payload(task_id, item[5], item[6])
                seen[task_id] = blob
                if task_id not in w.known and not isinstance(blob, Exception):
                    new_tasks[task_id] = blob
            if isinstance(blob, Exception):
                for run_id in item.runs if seg else (item[0],):
                    self.runner.report_failure(run_id, str(blob), blob)
                continue
            batch.append(item.wire() if seg else item[:6] + item[7:])
            kept.append(item)
        if not batch:
            return
        try:
            data = cp.dumps(batch)
        except Exception:
            batch, kept = self._picklable(kept)
            if not batch:
                return
            data = cp.dumps(batch)
        bid = self.batch_id = self.batch_id + 1
        w.recent.append((bid, kept, alone))
        try:
            if len(_MASK_LIST) > w.masks:
                w.conn.send_bytes(cp.dumps(("masks", _MASK_LIST[w.masks :])))
                w.masks = len(_MASK_LIST)
            if new_tasks:
                w.conn.send_bytes(cp.dumps(("tasks", new_tasks)))
                w.known.update(new_tasks)
            w.conn.send_bytes(_BATCH_TAG + bid.to_bytes(8, "little") + data)
        except OSError:
            pass  # the worker just died: its sentinel sends these runs elsewhere
        w.inflight.extend(kept)
        w.pending += sum(_size(item) for item in kept)
        if self._has_timeouts():
            tasks = self.tasks
            w.timed.update(
                item[0]
                for item in kept
                if type(item) is not _Seg and tasks[item[1]].timeout is not None
            )
        w.batches += 1

    def _picklable(self, items: list[Any]) -> tuple[list[tuple[Any, ...]], list[Any]]:
        """The runs of ``items`` whose inputs pickle, as a batch and as items; each
        other run is failed with the reason."""
        cp = self.cloudpickle
        batch: list[tuple[Any, ...]] = []
        kept: list[Any] = []

        def fail(run_id: int, task_id: int, exc: Exception) -> None:
            name = self.tasks[task_id].name
            msg = f"the inputs of task '{name}' could not be sent to a worker process: {exc!r}"
            self.runner.report_failure(run_id, msg, ExecutorError(msg))

        for item in items:
            if type(item) is _Seg:
                try:
                    cp.dumps(item.args)
                except Exception:
                    good: list[int] = []
                    for i, args in enumerate(item.args):
                        try:
                            cp.dumps(args)
                        except Exception as exc:
                            fail(item.runs[i], item.task, exc)
                        else:
                            good.append(i)
                    if not good:
                        continue
                    item = item.pick(good)
                batch.append(item.wire())
                kept.append(item)
                continue
            b = item[:6] + item[7:]
            try:
                cp.dumps(b)
            except Exception as exc:
                fail(b[0], b[1], exc)
            else:
                batch.append(b)
                kept.append(item)
        return batch, kept

    def _fill(self) -> None:
        slots = [w for w in self.workers for _ in range(_DEPTH - min(w.batches, _DEPTH))]
        while self.solo and slots:
            self._send(slots.pop(0), [self.solo.popleft()], alone=True)
        if not slots:
            return
        # Runs with a timeout travel alone, so that a worker stopped for one does not
        # hold many others.
        timed = self._has_timeouts()
        per = 1 if timed else self._per_batch()
        items = self._items(per * len(slots))
        if not items:
            return
        first = _task_of(items[0])
        if not timed and first != self.last_task:
            # The size was a guess from the task taken last; these runs are of another.
            self.last_task = first
            wanted = self._per_batch()
            if wanted > per:
                items += self._items((wanted - per) * len(slots))
                per = wanted
        # Few ready runs go out one per message, so a worker that finishes early takes
        # the next one (a handful of long runs keeps every worker busy); many ready runs
        # go in batches, for throughput.
        # Runs whose time is known go at least a quarter of `per` (about 0.5 ms of
        # work) per message, so the end of a map of quick runs is not cut into many.
        n = sum(_size(item) for item in items)
        if n >= per * len(slots):
            size = per
        else:
            least = per // 4 if self.last_task in self.seen else 1
            size = max(1, least, min(per, n // (len(slots) * 4)))
        last = items[-1]
        self.last_task = _task_of(last)
        chunks, rest = _chunks(items, size, len(slots))
        for w, chunk in zip(slots, chunks, strict=False):
            self._send(w, chunk)
        self.requeue.extendleft(reversed(rest))

    def _per_batch(self) -> int:
        """Runs per message: ``_BATCH`` for a task not seen yet, then about ``_BATCH_S``
        of work by the time its plain runs took in the workers lately (fewer messages
        for quick runs, finer sharing for slow ones)."""
        seen = self.seen.get(self.last_task)
        if seen is None:
            return _BATCH
        seconds, n = seen
        if seconds * _BATCH_MAX <= _BATCH_S * n:
            return _BATCH_MAX
        return max(1, int(_BATCH_S * n / seconds))

    def _observe(self, task: int, seconds: float, n: int) -> None:
        """Learn from ``n`` plain runs of ``task`` that took ``seconds`` in a worker
        (weighted by runs; older groups count half as much at each new one)."""
        old_s, old_n = self.seen.get(task, (0.0, 0.0))
        self.seen[task] = (0.5 * old_s + seconds, 0.5 * old_n + n)

    def _has_timeouts(self) -> bool:
        cached = getattr(self, "_timeouts", None)
        if cached is None:
            cached = self._timeouts = any(t.timeout is not None for t in self.tasks)
        return cached

    # --- receiving -------------------------------------------------------------------
    def _receive(self, w: _Worker) -> bool:
        """Handle one message from a worker; False when its pipe is closed."""
        cp = self.cloudpickle
        try:
            results, logs = cp.loads(w.conn.recv_bytes())
        except (EOFError, OSError):
            return False  # the sentinel reports the death
        if results is None:
            self._undecodable(w, *logs)
            return True
        if logs:
            from ferroflow import runtime

            runtime._add_remote_logs(logs)
        if not results:
            return True  # log lines only, sent while a task runs
        inflight, timed = w.inflight, w.timed
        report_values = self.runner.report_values
        for entry in results:
            # Results arrive in the order the worker ran them.
            # An item's result starts with its run id; a plain group with its runs.
            item = type(entry[0]) is int
            first = entry[0] if item else entry[0][0]
            while inflight and _head_run(inflight[0]) != first:
                w.pending -= _size(inflight.popleft())
            if item:
                if inflight:
                    inflight.popleft()
                    w.pending -= 1
                run_id, hooked, ok, payload = entry
                if timed:
                    timed.discard(run_id)
                self._report_one(run_id, hooked, ok, payload)
                continue
            runs, values, specials, seconds = entry
            if inflight:
                head = inflight[0]
                self._observe(head.task, seconds, len(runs))
                head.pos += len(runs)
                if head.pos >= len(head.runs):
                    inflight.popleft()
                w.pending -= len(runs)
            done = 0
            for i, encoded in specials:
                if i > done and report_values(runs[done:i], values[done:i]):
                    raise KeyboardInterrupt
                self._report_one(*encoded)
                done = i + 1
            if done < len(runs):
                rest = (runs, values) if done == 0 else (runs[done:], values[done:])
                if report_values(*rest):
                    raise KeyboardInterrupt
        if not w.inflight:
            w.batches = 0
            w.pending = 0
        else:
            per = self._per_batch()
            w.batches = min(w.batches, (w.pending + per - 1) // per)
        return True

    def _died_before_starting(self, w: _Worker, cause: str) -> bool:
        """A worker died between runs (or while unpickling a batch) with ``w.inflight``
        unreported. The ``_IDLE_DEATHS``-th such death with the same run next in line
        (something in its batch crashes a worker when unpickled) sends that batch's runs
        again one per batch, or, for a run already alone, fails it. True when this
        handled ``w.inflight`` (the caller drops it)."""
        head = _head_run(w.inflight[0])
        deaths = self.idle_deaths[head] = self.idle_deaths.get(head, 0) + 1
        if deaths < _IDLE_DEATHS:
            return False
        runs = _singles(w.inflight)
        if len(runs) > 1:
            self.solo.extend(runs)
            return True
        item = runs[0]
        run_id, task_id = _head_run(item), _task_of(item)
        msg = (
            f"worker process died {deaths} times before starting a run of task "
            f"'{self.tasks[task_id].name}' (last: {cause}); an input of it may crash a "
            "worker process when unpickled"
        )
        self.runner.report_failure(run_id, msg, RuntimeError(msg), cause=_native.CAUSE_WORKER_LOST)
        return True

    def _undecodable(self, w: _Worker, bid: int, why: str) -> None:
        """The worker could not unpickle batch ``bid`` (an input of one of its runs
        cannot be unpickled there: its class's module fails to import in a worker, say).
        A run sent alone fails with the reason; the runs of a larger batch are sent
        again one by one, so that only the runs whose inputs cannot travel fail."""
        sent = next((entry for entry in w.recent if entry[0] == bid), None)
        if sent is None:  # pragma: no cover - at most _DEPTH batches are in flight
            return
        _, kept, alone = sent
        ids = {id(item) for item in kept}
        w.inflight = deque(item for item in w.inflight if id(item) not in ids)
        w.pending -= sum(_size(item) for item in kept)
        w.batches = max(0, w.batches - 1)
        for item in kept:
            if type(item) is not _Seg:
                w.timed.discard(item[0])
        runs = _singles(kept)
        if not alone and len(runs) > 1:
            self.solo.extend(runs)
            return
        for item in runs:
            run_id, task_id = _head_run(item), _task_of(item)
            msg = (
                f"the inputs of task '{self.tasks[task_id].name}' could not be unpickled "
                f"in the worker process: {why}"
            )
            self.runner.report_failure(run_id, msg, ExecutorError(msg))

    def _report_one(self, run_id: int, hooked: bool, ok: Any, payload: Any) -> None:
        """Hand one result from a worker to the core."""
        if ok == _RAW:
            if self.runner.report(run_id, False, True, payload):
                raise KeyboardInterrupt
            return
        if ok is None:
            msg, shown = payload
            self.runner.report_failure(run_id, msg, shown)
            return
        try:
            value = self.cloudpickle.loads(payload)
        except Exception as exc:
            msg = f"the task's result could not be unpickled in the driver: {exc!r}"
            self.runner.report_failure(run_id, msg, repr(exc))
            return
        if self.runner.report(run_id, hooked, ok, value):
            raise KeyboardInterrupt

    def _on_death(self, w: _Worker) -> None:
        w.proc.join(1)
        running = w.current.value
        cause = _death_name(w.proc.exitcode)
        if running < 0 and w.inflight and self._died_before_starting(w, cause):
            w.inflight.clear()
        for item in w.inflight:
            if type(item) is _Seg:
                lo = item.pos
                for i in range(item.pos, len(item.runs)):
                    if item.runs[i] == running:
                        if i > lo:
                            self.requeue.append(item.part(lo, i))
                        msg = f"worker process died: {cause}"
                        self.runner.report_failure(
                            running, msg, RuntimeError(msg), cause=_native.CAUSE_WORKER_LOST
                        )
                        lo = i + 1
                if lo < len(item.runs):
                    self.requeue.append(item.part(lo, len(item.runs)))
                continue
            run_id = item[0]
            if run_id == running:
                if w.killed_for == run_id:
                    timeout = self.tasks[item[1]].timeout
                    msg = f"Task timed out after {timeout:g} s; its worker process was stopped."
                    self.runner.report_failure(run_id, msg, TimeoutError(msg), timed_out=True)
                else:
                    msg = f"worker process died: {cause}"
                    self.runner.report_failure(
                        run_id, msg, RuntimeError(msg), cause=_native.CAUSE_WORKER_LOST
                    )
            else:
                self.requeue.append(item)
        w.conn.close()
        idx = self.workers.index(w)
        self.workers[idx] = self._new_worker()

    def _check_timeouts(self) -> float | None:
        """Kill workers whose current run is past its timeout; the next deadline."""
        now = time.monotonic()
        soonest: float | None = None
        for w in self.workers:
            running = w.current.value
            if running not in w.timed:
                continue
            start = w.started.value
            item = next((i for i in w.inflight if type(i) is not _Seg and i[0] == running), None)
            if item is None:
                continue
            deadline = start + float(self.tasks[item[1]].timeout)
            if now >= deadline and w.killed_for is None:
                w.killed_for = running
                w.proc.kill()
            else:
                soonest = deadline if soonest is None else min(soonest, deadline)
        return soonest

    def loop(self) -> None:
        from multiprocessing.connection import wait

        while True:
            self._fill()
            if len(self.workers) < self.n:
                # The first worker has its first batch; the others start meanwhile.
                self.start(self.n)
                continue
            if not all(w.imported for w in self.workers):  # new or replaced workers
                self._import_ahead()
            busy = any(w.inflight for w in self.workers)
            if not busy and not self.requeue and not self.solo:
                if not _wait_idle(self.runner):
                    return
                continue
            timeout = 0.05
            deadline = self._check_timeouts()
            if deadline is not None:
                timeout = max(0.0, min(timeout, deadline - time.monotonic()))
            by_conn = {w.conn: w for w in self.workers}
            by_sentinel = {w.proc.sentinel: w for w in self.workers}
            ready = wait(list(by_conn) + list(by_sentinel), timeout)
            for obj in ready:
                w = by_conn.get(obj) or by_sentinel[obj]
                if w.conn.closed:
                    continue
                while w.conn.poll():
                    if not self._receive(w):
                        break
                if obj in by_sentinel or not w.proc.is_alive():
                    if w in self.workers:
                        self._on_death(w)
