"""Timed calls: a task with a ``timeout`` runs on a reusable helper thread.

A call that must be abandoned when its timeout passes cannot run in the thread that
waits for it, so it runs on a helper thread, and the waiting thread gives up after
``timeout`` seconds (the task then ends ``TimedOut``; its thread is left to finish on
its own). Starting an OS thread per call made a 2,000-child map with a timeout a
hundred times slower than the same map without one, so the helper threads are pooled:

- a call is a :class:`_Job` put on one shared queue; an idle helper takes it, runs it
  with the caller's ``ferroflow.context`` (and, with ``log_stdout``, its prints routed
  to the task's run logger), then releases the job's lock the caller waits on;
- a helper whose call was abandoned comes back to the pool when that call returns;
  a new helper is started only when every helper is busy (or abandoned), so a run
  needs as many helpers as it has timed calls in flight at once, not one per call;
- helpers are daemon threads that wait in ``SimpleQueue.get`` (C code only), so an
  idle or abandoned helper never holds up or crashes interpreter shutdown.

After a ``fork`` the child starts with an empty pool (the parent's helpers do not
exist there).
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

from ferroflow import runtime as _context

__all__ = ["TimedOut", "call_with_timeout", "submit"]


class TimedOut(Exception):
    """The call did not return within its timeout (it was abandoned)."""


class _Job:
    """One timed call; ``done`` is held until the call has returned or raised."""

    __slots__ = ("args", "cur", "done", "error", "func", "kwargs", "log_stdout", "run", "value")

    def __init__(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        log_stdout: bool,
    ) -> None:
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.log_stdout = log_stdout
        self.run, self.cur = _context._current()
        self.value: Any = None
        self.error: BaseException | None = None
        self.done = threading.Lock()
        self.done.acquire()

    def execute(self) -> None:
        _context._enter_remote(self.run, self.cur)
        try:
            if self.log_stdout:
                with _context.capture_stdout():
                    self.value = self.func(*self.args, **self.kwargs)
            else:
                self.value = self.func(*self.args, **self.kwargs)
        except BaseException as exc:
            self.error = exc
        finally:
            _context._enter_remote(None, None)
            # Let go of what the call used before the caller looks (or gave up).
            self.func = self.args = self.kwargs = None  # type: ignore[assignment]
            self.done.release()


class _Pool:
    """Helper threads for timed calls, started on demand and reused."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # Jobs, and lanes of the native runner (``_native.TimedLane``).
        self.jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Helpers waiting for a job (or about to), not yet promised to one.
        self.idle = 0
        self.names = itertools.count(1)

    def submit(self, job: Any) -> None:
        with self.lock:
            start = self.idle == 0
            if not start:
                self.idle -= 1
        self.jobs.put(job)
        if start:
            name = f"ferroflow-timeout-{next(self.names)}"
            threading.Thread(target=self._helper, name=name, daemon=True).start()

    def _helper(self) -> None:
        jobs = self.jobs
        while True:
            job = jobs.get()
            if type(job) is _Job:
                job.execute()
            else:
                _run_lane(job)
            del job
            with self.lock:
                self.idle += 1


_POOL = _Pool()


def _reset_after_fork() -> None:
    global _POOL
    _POOL = _Pool()


os.register_at_fork(after_in_child=_reset_after_fork)


def call_with_timeout(
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float,
    log_stdout: bool = False,
) -> Any:
    """Call ``func(*args, **kwargs)`` on a pooled helper thread and return its value
    (or raise what it raised); raise :class:`TimedOut` when ``timeout`` seconds pass
    first, leaving the call to finish on its own. The call sees the calling thread's
    ``ferroflow.context``; with ``log_stdout`` its prints go to the task's run logger.
    """
    job = _Job(func, args, kwargs, log_stdout)
    _POOL.submit(job)
    if not job.done.acquire(timeout=timeout):
        raise TimedOut
    if job.error is not None:
        error, job.error = job.error, None
        raise error
    return job.value


def submit(lane: Any) -> None:
    """Hand a batch of timed calls of a local run (a ``_native.TimedLane``) to a
    helper thread; the run loop waits on it and watches the deadline of each call."""
    _POOL.submit(lane)


def _run_lane(lane: Any) -> None:
    """Make the calls of a lane one after the other. The calls are made here, in
    Python, so a helper abandoned inside a task has no native frame on its stack."""
    call = lane.start()
    while call is not None:
        func, args, kwargs = call
        call = None
        try:
            value = func(*args) if kwargs is None else func(*args, **kwargs)
        except BaseException as exc:
            call = lane.raised(_context._user_traceback(exc))
        else:
            call = lane.returned(value)
            del value
        del func, args, kwargs
