"""The Dask executor: task runs execute on a ``dask.distributed`` cluster.

How it works
------------
The Rust core stays in the driver (the process that called ``flow.run``) and decides
what is ready. The driver takes ready runs from the core in batches and submits each
batch to the cluster in one ``client.map`` call (one Dask task per run; the task's
function and the flow's context travel once per worker as small shared futures).

Data stays on the cluster. A successful run is reported to the core with a small proxy
(``_RemoteBase``) that holds the run's Dask future instead of its value; when a dependent
run is taken, the proxies in its arguments are swapped for their futures, so Dask
moves the data from worker to worker and the driver never sees it. The core measures a
result it maps over with ``len(proxy)`` and indexes it with ``proxy[i]``: results of
tasks that are mapped over are described on the worker (their length, one small extra
Dask task) and indexing gives a marker that the worker resolves before the call. A list
or tuple of small plain values (numbers, short strings, None: ``_small_items``) comes
with its description, and indexing it gives the element itself, so each child of such
a map carries its element in its own Dask task, as ``client.map(f, values)`` does,
instead of depending on the whole value. Ready runs go out in graphs of up to 1,024
runs (a map's children in one ``client.map`` call).

Send-ahead: a run of a plain task (no hooks, timeout or retries, the default trigger,
not mapped, every input from one run of a task on the cluster, or from every child of a
mapped task: a reduce) is submitted as soon as its upstream runs are, with their futures
as arguments, so a chain runs on the cluster without waiting for the driver between
steps, and a reduce starts when the last child of its map ends. The core still decides
every state: the driver uses such a run only when the core hands that run out reading
the same futures in the same places (it then only waits for it); when an upstream run
did not simply succeed, what was sent ahead of it is forgotten (a run sent ahead whose
inputs failed calls nothing), and the core settles it as on every executor. Tasks
without hooks that call the same function share one function future.

Completion notices are small. A run's Dask task returns the user's value itself when the
run succeeded; the type of each finished key (which Dask reports to the client anyway)
tells the driver whether it was a plain success, which needs no round trip, or an
``_Outcome`` (an exception, a signal, a hooked state, a value that cannot be pickled),
which the driver fetches: only exceptions and metadata cross to the driver. Dask tasks
never raise, so workers do not log ``Compute Failed`` for failed or skipped runs.

Futures are released once nothing needs them: they live only in the proxies the core
stores, which the core drops when results are released (``release_results``) or the run
ends. At the end, the values still stored are gathered in one call, so every
``state.result[task].result`` holds the real value; near the end (few runs in flight,
results not released) the values already stored are fetched in a helper thread while
the last runs compute, and the end fetches only the rest. (A custom trigger, which runs in the
driver during the run, sees proxies as its upstream states' results.)

Start-up: an address gets a one-second connection attempt; when it fails, a plain TCP
probe tells "connection refused" or "unknown host" at once, and otherwise the client
gets the rest of ``client_kwargs["timeout"]`` (10 s). A cluster that cannot be reached
or started raises ``ExecutorError`` and cancels the flow run. Each run connects (or starts
a ``LocalCluster``) and closes it at its end; used as a context manager, the executor
keeps the client and its cluster for every run of the ``with`` block (``_Session``).

Faults: Dask reruns the runs of a worker that dies and recomputes results that were lost
with it (up to the scheduler's ``distributed.scheduler.allowed-failures``); when Dask
gives up (``KilledWorker``) the run counts one failed attempt ("worker process died:
..."), retryable whatever ``retry_on`` says. Timeouts start when the run starts on its
worker; a run past its timeout ends ``TimedOut`` at once and, when its thread is still
running, its worker is restarted through its nanny so that the run is stopped for real
(other runs executing on that worker are rerun by Dask). A worker without a nanny cannot
be restarted: the thread is then abandoned and the message says so. A value or exception
that cannot be pickled fails its run with a message saying what could not be pickled.
Ctrl-C cancels the futures (Dask cannot interrupt a running thread; a cluster the
executor started is closed) and cancels the flow run.

``ferroflow`` must be installed on the workers (its helpers travel by reference). Task
functions travel with Dask's pickling (``@task`` functions and those of ``__main__`` by
value), so what they import must be importable there.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
import uuid
import warnings
from collections.abc import Sequence
from typing import Any

from ferroflow import _native
from ferroflow.exceptions import ExecutorError
from ferroflow.executors import Executor, _driver_tasks, _run_in_driver, _shown, _wait_idle
from ferroflow.runtime import _MASK_LIST
from ferroflow.states import Success

__all__ = ["DaskExecutor"]

_INSTALL_HINT = "DaskExecutor needs dask.distributed: pip install 'ferroflow[dask]'"
_SUCCESS = Success.code
_BATCH = 1024  # runs taken from the core per submission
_PER_THREAD = 8  # runs in flight per worker thread (at least _MIN_INFLIGHT)
_MIN_INFLIGHT = 1024
_CONNECT_TIMEOUT = 10.0  # seconds, for an address (the SPEC allows 15 s in all)
_FIRST_TRY = 1.0  # seconds of the first connection attempt before probing the address
_REAL, _CONTAINER, _RUN = 0, 1, 2
_CALL_PLAIN, _CALL_VALUE, _CALL_LIST, _CALL_TUPLE = 0, 2, 3, 4  # call kinds of engine._Plan
_DRAIN_S = 1.0  # seconds between collections of the workers' log lines
_PREFETCH_MIN = 256  # values stored since the last prefetch before prefetching again
_INLINE_BYTES = 1 << 20  # elements of a mapped value sent to the driver with its length


def _load_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise ExecutorError(_INSTALL_HINT) from exc
    return distributed


# --- proxies the core stores instead of values -------------------------------------------


class _RemoteBase:
    """A successful run's value, kept on the cluster as a Dask future.

    Every proxy class has the same slots, so a proxy can change class in place once its
    value is described (the core keeps the object it was given)."""

    __slots__ = ("future", "items", "length", "sub")

    def __init__(self, future: Any) -> None:
        self.future = future
        self.length: int | None = None
        self.sub: list[Any] | None = None
        self.items: list[Any] | None = None

    def __repr__(self) -> str:
        return f"<ferroflow value on Dask {getattr(self.future, 'key', None)!r}>"

    def __reduce__(self) -> Any:
        raise TypeError("a ferroflow Dask proxy cannot be pickled (internal error)")


class _RemoteLazy(_RemoteBase):
    """A result not described yet: described on the worker if the core asks its length
    (a fallback; the driver describes in batches what it knows the core will measure)."""

    __slots__ = ()

    def __len__(self) -> int:
        meta = _blocking_describe(self.future, (), 1)
        _morph(self, meta)
        if meta[0] is None:
            raise TypeError(f"a {meta[1]} is not a sized sequence (use a list or tuple)")
        return int(meta[0])

    def __getitem__(self, i: int) -> _ItemBase:
        return _Item(self.future, (i,), None)


class _RemoteSized(_RemoteBase):
    """A result known to be a sized sequence of ``length`` elements."""

    __slots__ = ()

    def __len__(self) -> int:
        return self.length  # type: ignore[return-value]

    def __getitem__(self, i: int) -> _ItemBase:
        n = self.length or 0
        if not isinstance(i, int) or not 0 <= i < n:
            raise IndexError(i)
        if self.items is not None:  # small plain elements, sent with the description
            return self.items[i]
        sub = self.sub
        if sub is None:
            return _Item(self.future, (i,), None)
        s = sub[i]
        if isinstance(s, str):  # element i is not a sized sequence: s is its type name
            return _unsized_class(s, True)(self.future, (i,), None)
        return _Item(self.future, (i,), s)

    def __iter__(self) -> Any:
        return (self[i] for i in range(self.length or 0))


class _ItemBase:
    """Element ``path`` of a result on the cluster; the worker does the indexing."""

    __slots__ = ("future", "length", "path")

    def __init__(self, future: Any, path: tuple[int, ...], length: int | None) -> None:
        self.future = future
        self.path = path
        self.length = length

    def __repr__(self) -> str:
        return f"<ferroflow item {list(self.path)} of {getattr(self.future, 'key', None)!r}>"

    def __reduce__(self) -> Any:
        raise TypeError("a ferroflow Dask proxy cannot be pickled (internal error)")


class _Item(_ItemBase):
    __slots__ = ()

    def __len__(self) -> int:
        if self.length is None:
            n, tname, _sub, _items = _blocking_describe(self.future, self.path, 1)
            if n is None:
                raise TypeError(f"a {tname} is not a sized sequence (use a list or tuple)")
            self.length = n
        return self.length

    def __getitem__(self, i: int) -> _ItemBase:
        if self.length is not None and (not isinstance(i, int) or not 0 <= i < self.length):
            raise IndexError(i)
        return _Item(self.future, (*self.path, i), None)

    def __iter__(self) -> Any:
        return (self[i] for i in range(len(self)))


# The core checks "sized sequence" with isinstance(x, collections.abc.Sequence).
Sequence.register(_RemoteLazy)
Sequence.register(_RemoteSized)
Sequence.register(_Item)

_UNSIZED: dict[tuple[str, bool], type] = {}


def _unsized_class(tname: str, item: bool) -> type:
    """A proxy class named like the value's type and not a Sequence, so that the core's
    "a NoneType is not a sized sequence" message reads as on the other executors."""
    cls = _UNSIZED.get((tname, item))
    if cls is None:
        base = _ItemBase if item else _RemoteBase
        cls = _UNSIZED[(tname, item)] = type(tname, (base,), {"__slots__": ()})
    return cls


def _morph(p: _RemoteBase, meta: tuple[Any, ...]) -> None:
    """Give a proxy the class its description calls for."""
    n, tname, sub, items = meta
    if n is None:
        p.__class__ = _unsized_class(tname, False)
    else:
        p.length, p.sub, p.items = n, sub, items
        p.__class__ = _RemoteSized


def _proxy(future: Any, meta: tuple[Any, ...]) -> _RemoteBase:
    p = _RemoteLazy(future)
    _morph(p, meta)
    return p


def _blocking_describe(future: Any, path: tuple[int, ...], need: int) -> tuple[Any, ...]:
    """Describe a value on the cluster now (a fallback: the driver describes in batches
    what it knows the core will measure)."""
    client = future.client
    desc = client.submit(_describe, future, path, need, pure=False)
    kind, *rest = desc.result()
    if kind == "outcome":  # pragma: no cover - a successful run's value is never one
        return (None, "_Outcome", None, None)
    return tuple(rest)


# --- worker side -------------------------------------------------------------------------


class _ItemTag:
    """Marks ``(_ItemTag, value, path)``: the worker replaces it by ``value[path...]``."""


class _Outcome:
    """What a run's Dask task returns when it did not simply succeed."""

    __slots__ = ("kind", "payload")
    RAISED, HOOKED, UNSENDABLE = 0, 1, 2

    def __init__(self, kind: int, payload: Any) -> None:
        self.kind = kind
        self.payload = payload

    def __reduce__(self) -> Any:
        return (_Outcome, (self.kind, self.payload))


def _identity(x: Any) -> Any:
    return x


def _resolve(v: Any) -> Any:
    t = type(v)
    if t is tuple:
        if len(v) == 3 and v[0] is _ItemTag:
            x = v[1]
            for i in v[2]:
                x = x[i]
            return x
        return tuple(_resolve(x) for x in v)
    if t is list:
        return [_resolve(x) for x in v]
    return v


_PLAIN = frozenset({int, float, str, bytes, bool, type(None), complex})


def _drop(_buffer: Any) -> None:
    return None  # out-of-band: large buffers are not copied just to be checked


def _cannot_send(value: Any) -> str | None:
    """Why Dask could not pickle ``value``, or None. Tries what Dask tries (pickle, then
    Dask's serializers, then cloudpickle) without Dask's error log on failure."""
    if type(value) in _PLAIN:
        return None
    import io
    import pickle

    try:
        pickle.dumps(value, protocol=5, buffer_callback=_drop)
        return None
    except Exception:
        pass
    try:
        from distributed.protocol.pickle import _DaskPickler

        _DaskPickler(io.BytesIO(), protocol=5, buffer_callback=_drop).dump(value)
        return None
    except Exception:
        pass
    try:
        import cloudpickle

        cloudpickle.dumps(value, protocol=5, buffer_callback=_drop)
        return None
    except Exception as exc:
        return repr(exc)


def _keep_traceback(exc: Any) -> None:
    """Let ``exc`` pickle with its traceback (the Failed state shows where it failed)."""
    if isinstance(exc, BaseException):
        try:
            import tblib.pickling_support

            tblib.pickling_support.install(exc)
        except Exception:  # pragma: no cover - tblib comes with distributed
            pass


def _unsendable(what: str, why: str, value: Any) -> _Outcome:
    msg = f"the task's {what} could not be sent back from the Dask worker: {why}"
    return _Outcome(_Outcome.UNSENDABLE, (msg, _shown(value)))


class _TimedCall:
    """Call ``func`` in a helper thread; give up after ``timeout`` seconds."""

    def __init__(
        self, func: Any, timeout: float, cur: tuple[Any, ...], info: Any, log_stdout: bool
    ) -> None:
        self.func = func
        self.timeout = timeout
        self.log_stdout = log_stdout
        self.cur = cur
        self.info = info
        self.stuck = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from ferroflow import engine, runtime

        def call() -> Any:
            # The helper thread needs the task's context too.
            runtime._enter_remote(self.info, self.cur)
            try:
                return self.func(*args, **kwargs)
            finally:
                runtime._enter_remote(None, None)

        try:
            return engine._call_with_timeout(call, (), {}, self.timeout, self.log_stdout)
        except engine._Timeout:
            self.stuck = True
            raise


def _run(fn: tuple[Any, Any], info: Any, spec: tuple[Any, ...]) -> Any:
    """One task run on a Dask worker. Returns the value, or an ``_Outcome``; never raises
    (so workers do not log "Compute Failed" for failures that are states)."""
    from ferroflow import runtime

    func, task = fn
    run_id, task_id, map_index, run_count, loop_count, hooked, args, kwargs, lr, walk = spec
    if walk:
        args = list(args)
        kwargs = dict(kwargs) if kwargs else kwargs
        for w in walk:
            if isinstance(w, int):
                args[w] = _resolve(args[w])
            else:
                kwargs[w] = _resolve(kwargs[w])
    cur = (0, run_id, task_id, map_index, run_count, loop_count, lr)
    runtime._capture_remote_logs()
    runtime._enter_remote(info, cur)
    try:
        if hooked:
            from ferroflow.engine import run_task

            call = func
            if task.timeout is not None:
                call = _TimedCall(func, float(task.timeout), cur, info, bool(task.log_stdout))
            out = run_task(task, run_count, tuple(args), kwargs, call, enforce_timeout=False)
            code, value, message, cause = out[:4]
            # Where a checkpoint, target or cache put the value: the driver records it.
            location = out[4] if len(out) > 4 else None
            stuck = _worker_address() if getattr(call, "stuck", False) else None
            if code != _SUCCESS or stuck is not None or location is not None:
                if isinstance(value, BaseException):
                    runtime._user_traceback(value)
                _keep_traceback(value)
                payload = (code, value, message, cause, stuck, location)
                why = _cannot_send(payload)
                if why is not None:
                    what = "exception" if isinstance(value, BaseException) else "result"
                    return _unsendable(what, why, value)
                return _Outcome(_Outcome.HOOKED, payload)
        else:
            value = func(*args, **(kwargs or {}))
    except BaseException as exc:
        runtime._user_traceback(exc)  # the task's frames only, as on the other executors
        _keep_traceback(exc)
        why = _cannot_send(exc)
        if why is not None:
            return _unsendable("exception", why, exc)
        return _Outcome(_Outcome.RAISED, exc)
    finally:
        runtime._enter_remote(None, None)
    why = _cannot_send(value)
    if why is not None:
        return _unsendable("result", why, value)
    return value


def _run_ahead(fn: tuple[Any, Any], info: Any, spec: tuple[Any, ...], deps: Any) -> Any:
    """A run sent ahead of its upstream runs' outcomes (``deps``, resolved by Dask):
    made only when each of them simply succeeded. Otherwise the driver has forgotten
    it (the core decides what happens to the run) and nothing is called."""
    for d in deps:
        if isinstance(d, _Outcome):
            return _Outcome(_Outcome.RAISED, RuntimeError("an upstream run did not succeed"))
    return _run(fn, info, spec)


def _worker_address() -> str | None:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except Exception:
        return None


def _is_sequence(v: Any) -> bool:
    return isinstance(v, (list, tuple)) or isinstance(v, Sequence)


def _describe(value: Any, path: tuple[int, ...], need: int) -> tuple[Any, ...]:
    """``("outcome", outcome)`` or ``("meta", length or None, type name, sub, items)``
    where ``sub`` (when ``need == 2``) gives each element's length, or its type name when
    the element is not a sized sequence, and ``items`` (see ``_small_items``) the
    elements themselves when the value is a list or tuple of a few small plain values."""
    if isinstance(value, _Outcome):
        return ("outcome", value)
    for i in path:
        value = value[i]
    tname = type(value).__name__
    if not _is_sequence(value):
        return ("meta", None, tname, None, None)
    n = len(value)
    sub = None
    if need >= 2:
        sub = [len(x) if _is_sequence(x) else type(x).__name__ for x in value]
    items = _small_items(value) if need >= 1 and not path else None
    return ("meta", n, tname, sub, items)


def _small_items(value: Any) -> list[Any] | None:
    """The elements of a list or tuple of plain values (numbers, short strings, None)
    that weigh little in all (``_INLINE_BYTES``), else None.

    A map over such a value gets its elements with the description, so each child's
    element travels inside its Dask task, as in ``client.map(f, values)``, instead of
    every child depending on the whole value and indexing it on its worker (a
    dependency per child costs the scheduler about as much as the child itself). The
    elements are immutable and pickle to equal values, so the child sees the same."""
    if type(value) is not list and type(value) is not tuple:
        return None
    budget = _INLINE_BYTES
    for x in value:
        t = type(x)
        if t is str or t is bytes:
            budget -= 16 + len(x)
        elif t in _PLAIN:
            budget -= 16
        else:
            return None
        if budget < 0:
            return None
    return list(value)


# --- the executor --------------------------------------------------------------------------


def _check_kwargs(name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ExecutorError(f"{name} must be a dict of keyword arguments, got {value!r}")
    return dict(value)


class DaskExecutor(Executor):
    """Run tasks on a ``dask.distributed`` cluster.

    Connects to an existing scheduler by ``address``, or starts a ``LocalCluster``
    (loopback only, no dashboard unless asked) and closes it when the flow run ends.
    Results stay on the cluster and reach dependent runs as Dask futures; only small
    completion notices, exceptions and signals come back to the driver. A worker lost
    mid-run is survived (Dask reruns its runs); timeouts stop the run for real by
    restarting the worker through its nanny. ``ferroflow`` must be installed on the
    workers.

    Args:
        address: address of a running Dask scheduler (``"tcp://host:8786"``); None
            starts a ``LocalCluster``.
        cluster_kwargs: keyword arguments of the ``LocalCluster`` (only without
            ``address``). Everything listens on 127.0.0.1 unless they say otherwise
            (``host``, ``protocol``, ``dashboard_address``); by default the scheduler's
            HTTP server takes a free loopback port and serves no dashboard.
        client_kwargs: keyword arguments of the ``distributed.Client`` (``timeout``
            defaults to 10 s for an address).

    Raises:
        ExecutorError: dask.distributed is not installed, or the options are not valid.
            ``flow.run`` raises it too when the cluster cannot be reached or started.

    Each run connects its own client (and starts its own ``LocalCluster`` without
    ``address``) and closes it at its end. Used as a context manager, the executor keeps
    them for every run of the ``with`` block instead: the first run connects (or starts
    the cluster), the next ones use that client, also at the same time from several
    threads; the block's end (or ``close()``) closes them, once the runs using them have
    ended. A client that lost its scheduler is replaced at the next run; a run that was
    interrupted (Ctrl-C) or whose executor failed closes them when it ends (a thread Dask
    could not interrupt is stopped with its cluster), and the next run connects afresh.

    Example:
        >>> from ferroflow.executors import DaskExecutor
        >>> DaskExecutor(address="tcp://127.0.0.1:8786")
        DaskExecutor(address='tcp://127.0.0.1:8786')

        One cluster for several runs::

            with DaskExecutor(cluster_kwargs={"n_workers": 2}) as executor:
                for n in range(10):
                    flow.run(parameters={"n": n}, executor=executor)
    """

    def __init__(
        self,
        address: str | None = None,
        cluster_kwargs: dict[str, Any] | None = None,
        client_kwargs: dict[str, Any] | None = None,
    ) -> None:
        import importlib.util

        if importlib.util.find_spec("distributed") is None:
            raise ExecutorError(_INSTALL_HINT)
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ExecutorError(f"address must be a Dask scheduler address, got {address!r}")
        self.address = address
        self.cluster_kwargs = _check_kwargs("cluster_kwargs", cluster_kwargs)
        self.client_kwargs = _check_kwargs("client_kwargs", client_kwargs)
        if address is not None and self.cluster_kwargs:
            raise ExecutorError(
                "cluster_kwargs apply only when DaskExecutor starts its own cluster (address=None)"
            )
        for bad in ("asynchronous", "address"):
            if bad in self.client_kwargs:
                raise ExecutorError(f"client_kwargs cannot set {bad!r}")
        for key in ("n_workers", "threads_per_worker"):
            v = self.cluster_kwargs.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ExecutorError(f"cluster_kwargs[{key!r}] must be a whole number, got {v!r}")
        if self.cluster_kwargs.get("threads_per_worker") == 0:
            raise ExecutorError("cluster_kwargs['threads_per_worker'] must be at least 1")
        timeout = self.client_kwargs.get("timeout")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
        ):
            raise ExecutorError(f"client_kwargs['timeout'] must be seconds > 0, got {timeout!r}")
        # Inside `with`: the client (and cluster) the block's runs share, once connected.
        self._in_block = False
        self._session: _Session | None = None
        self._session_lock = threading.Lock()

    def __reduce__(self) -> Any:
        # A flow that names its executor travels with it (registration, agents): as its
        # settings, without a kept client.
        return (
            type(self),
            (self.address, self.cluster_kwargs or None, self.client_kwargs or None),
        )

    def __enter__(self) -> DaskExecutor:
        with self._session_lock:
            if self._in_block:
                raise ExecutorError("this DaskExecutor is already in a with block")
            self._in_block = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the client (and the cluster it started) kept for the runs of the
        ``with`` block (its end does this); runs still using them close them when they
        end. Runs made afterwards connect their own, as outside a block. Closing twice
        is harmless."""
        with self._session_lock:
            self._in_block = False
            session, self._session = self._session, None
            idle = session is not None and session.users == 0
        if idle and session is not None:
            session.close()

    def _open_session(self, distributed: Any) -> _Session:
        """The client (and cluster) for a run: the block's, when it has a usable one,
        else a new one (which becomes the block's inside a block)."""
        with self._session_lock:
            kept = self._session
            if self._in_block and kept is not None and kept.usable():
                kept.users += 1
                return kept
        client, cluster = self._connect(distributed)
        session = _Session(client, cluster)
        stale = None
        with self._session_lock:
            kept = self._session
            if self._in_block and (kept is None or not kept.usable()):
                self._session = session
                if kept is not None and kept.users == 0:
                    stale = kept
        if stale is not None:
            stale.close()
        return session

    def _close_session(self, session: _Session, drop: bool) -> None:
        """A run is done with ``session``: close it unless the block keeps it (``drop``:
        the block does not keep it any more)."""
        with self._session_lock:
            session.users -= 1
            if drop and self._session is session:
                self._session = None
            idle = session.users == 0 and self._session is not session
        if idle:
            session.close()

    def __repr__(self) -> str:
        if self.address is not None:
            return f"DaskExecutor(address={self.address!r})"
        if self.cluster_kwargs:
            return f"DaskExecutor(cluster_kwargs={self.cluster_kwargs!r})"
        return "DaskExecutor()"

    # --- start and stop ------------------------------------------------------------------
    def _connect(self, distributed: Any) -> tuple[Any, Any]:
        """``(client, cluster or None)``; raises ExecutorError within ~15 s."""
        kwargs = {"set_as_default": False, **self.client_kwargs}
        if self.address is not None:
            where = f"the Dask scheduler at {self.address}"
            total = float(kwargs.pop("timeout", _CONNECT_TIMEOUT))
            first = min(_FIRST_TRY, total)
            try:
                client = _new_client(distributed, self.address, kwargs, where, first)
            except ExecutorError:
                if total <= first:
                    raise
                # The client retries a refused connection until its timeout: find out
                # whether anything listens there before waiting for the rest of it.
                _probe(self.address)
                client = _new_client(distributed, self.address, kwargs, where, total - first)
            return client, None
        ckw = _local_cluster_options(self.cluster_kwargs)
        try:
            cluster = distributed.LocalCluster(**ckw)
        except Exception as exc:
            raise ExecutorError(f"could not start a Dask LocalCluster: {_why(exc)}") from exc
        try:
            timeout = kwargs.pop("timeout", _CONNECT_TIMEOUT)
            client = _new_client(distributed, cluster, kwargs, "the Dask LocalCluster", timeout)
        except ExecutorError:
            _quiet_close(cluster)
            raise
        return client, cluster

    def execute(self, run: Any) -> None:
        """Run ``run`` to the end on the Dask cluster."""
        runner = run.runner
        try:
            distributed = _load_distributed()
            session = self._open_session(distributed)
        except KeyboardInterrupt:
            runner.close("Flow run interrupted (KeyboardInterrupt).")
            return
        except BaseException:
            runner.close("The executor could not start.")
            raise
        drop = True  # after an interrupt or a failure, the block does not keep them
        try:
            local = session.cluster is not None or _loopback(self.address)
            driver = _Driver(run, session.client, local=local)
        except BaseException:
            self._close_session(session, drop)
            runner.close("The executor could not start.")
            raise
        try:
            try:
                driver.start()
                driver.loop()
                driver.drain_at_end()
                driver.finalize()
            except KeyboardInterrupt:
                driver.cancel_all()
                runner.close("Flow run interrupted (KeyboardInterrupt).")
                return
            except BaseException:
                driver.cancel_all()
                runner.close("The executor failed.")
                raise
            runner.close(None)
            driver.install_results()
            drop = False
        finally:
            driver.join_restarts()
            driver.drain_logs()
            self._close_session(session, drop)


def _why(exc: BaseException) -> str:
    return str(exc) or repr(exc)


def _new_client(
    distributed: Any, address: Any, kwargs: dict[str, Any], where: str, timeout: float
) -> Any:
    """A connected ``Client``, or ExecutorError. A client that failed to connect is
    closed here: left to the garbage collector, it would block for 20 s in ``__del__``."""
    client = distributed.Client.__new__(distributed.Client)
    try:
        client.__init__(address, timeout=timeout, **kwargs)
    except Exception as exc:
        try:
            client.close(timeout=2)
        except Exception:
            pass
        raise ExecutorError(f"could not connect to {where}: {_why(exc)}") from exc
    return client


def _local_cluster_options(given: dict[str, Any]) -> dict[str, Any]:
    """The ``LocalCluster`` options: loopback only unless the user says otherwise.

    Everything listens on 127.0.0.1: the comms (TCP, also for ``processes=False``,
    whose in-process transport would leave the HTTP servers on every interface) and
    the scheduler's HTTP server, on a free port (the default 8787 is often taken, which
    Dask reports with a warning) and without the bokeh dashboard.
    """
    ckw = dict(given)
    ckw.setdefault("host", "127.0.0.1")
    if not ckw.get("processes", True):
        ckw.setdefault("protocol", "tcp")
    if "dashboard_address" not in ckw:
        ckw["dashboard_address"] = "127.0.0.1:0"
        ckw["scheduler_kwargs"] = {"dashboard": False, **(ckw.get("scheduler_kwargs") or {})}
    return ckw


def _loopback(address: str | None) -> bool:
    if not address:
        return False
    rest = address.partition("://")[2] or address
    host = rest.rpartition(":")[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


def _probe(address: str) -> None:
    """Fail now when nothing listens at a TCP address or its host is unknown."""
    import socket

    proto, sep, rest = address.partition("://")
    if not sep:
        proto, rest = "tcp", address
    if proto not in ("tcp", "tls"):
        return
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    try:
        port_n = int(port.split("/")[0])
    except ValueError:
        return
    try:
        with socket.create_connection((host or "127.0.0.1", port_n), timeout=3.0):
            pass
    except ConnectionRefusedError as exc:
        raise ExecutorError(
            f"could not connect to the Dask scheduler at {address}: connection refused "
            "(is a scheduler running there?)"
        ) from exc
    except socket.gaierror as exc:
        raise ExecutorError(
            f"could not connect to the Dask scheduler at {address}: unknown host {host!r} ({exc})"
        ) from exc
    except OSError:
        return  # let the client try (and time out) on its own


def _quiet_close(obj: Any) -> None:
    try:
        obj.close()
    except Exception:
        pass


class _Session:
    """A client and the cluster it was started with (None for an address), and how
    many runs use them now (see ``DaskExecutor._open_session``)."""

    def __init__(self, client: Any, cluster: Any) -> None:
        self.client = client
        self.cluster = cluster
        self.users = 1

    def usable(self) -> bool:
        """Whether the client is still connected to its scheduler."""
        return getattr(self.client, "status", None) == "running"

    def close(self) -> None:
        _quiet_close(self.client)
        if self.cluster is not None:
            _quiet_close(self.cluster)


class _Sub:
    """A run in flight: its Dask task (``describing`` False) or the small Dask task that
    describes its value (``describing`` True, ``run_future`` the run's own future)."""

    __slots__ = ("describing", "future", "hooked", "run_future", "run_id", "task_id")

    def __init__(self, run_id: int, task_id: int, hooked: bool, future: Any) -> None:
        self.run_id = run_id
        self.task_id = task_id
        self.hooked = hooked
        self.future = future
        self.describing = False
        self.run_future: Any = None


class _Driver:
    def __init__(self, run: Any, client: Any, local: bool = False) -> None:
        self.run = run
        # The driver can reach the workers of a cluster on this machine: fetch from
        # them directly (faster than through the scheduler); else the client decides.
        self.direct = True if local else None
        self.runner = run.runner
        self.plan = run.plan
        self.tasks = run.plan.tasks
        self.client = client
        self.done_q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.inflight: dict[Any, _Sub] = {}  # by Dask key; one entry per run in flight
        self.fn_futures: dict[int, Any] = {}  # by task id
        self.shared_fns: dict[int, Any] = {}  # by id() of a function of unhooked tasks
        self.pinned: list[Any] = []
        self.info_future: Any = None
        self.uid = uuid.uuid4().hex[:8]
        self.counter = itertools.count()
        self.final: dict[int, Any] = {}
        self.restarts: list[threading.Thread] = []
        self.nannies: dict[str, bool] = {}
        self.restarting: set[str] = set()
        self.cap = _MIN_INFLIGHT
        self.chunk = _MIN_INFLIGHT // 4
        self.low = 4
        self.watchers: set[Any] = set()
        self.drained = time.monotonic()
        self.draining: tuple[threading.Thread, list[Any]] | None = None
        self.drained_at_end = False  # the collection in progress began after the runs
        # Values fetched before the end (see _prefetch_tail), by Dask key.
        self.prefetched: dict[Any, Any] = {}
        self.prefetching: tuple[threading.Thread, list[Any], list[Any]] | None = None
        self.release = bool(getattr(run, "release_results", False))
        self.n_ok = 0  # runs reported successful
        self.n_prefetched = 0  # n_ok when values were last prefetched
        # Tasks that run here, not on the cluster (secret tasks: see _run_here).
        self.in_driver = _driver_tasks(self.tasks)
        self.masks_sent = 0  # values of runtime._MASK_LIST in the context future
        self._analyse()

    # --- static analysis of the plan ------------------------------------------------------
    def _analyse(self) -> None:
        """Which tasks' values the core will measure (``need``: 1 its length, 2 also its
        elements' lengths), and which arguments of each task may hold proxies."""
        plan = self.plan
        n = len(plan.tasks)
        kinds = []
        for call in plan.calls:
            if call is None or call[0] == _CALL_VALUE:
                kinds.append(_REAL)  # parameters and constants: real values in the core
            elif call[0] in (_CALL_LIST, _CALL_TUPLE):
                kinds.append(_CONTAINER)  # built by the core from upstream values
            else:
                kinds.append(_RUN)
        # What the core measures when it expands maps (its rule, not a copy).
        measures = self.runner.measures()
        need = [0 if kinds[t] == _REAL else measures[t] for t in range(n)]
        ins: list[list[int]] = [[] for _ in range(n)]
        for u, d, _key, _mapped, _flat in plan.edge_ids:
            ins[d].append(u)
        # Collections are built by the binding from their upstream values: a
        # list of lists measured item by item needs its items' lengths.
        for c in range(n):
            if kinds[c] == _CONTAINER and need[c] >= 2:
                for u in ins[c]:
                    if kinds[u] == _RUN and not plan.mapped_task[u]:
                        need[u] = max(need[u], 1)
        self.need = need
        walks: list[tuple[tuple[int, ...], tuple[str, ...]]] = []
        for call in plan.calls:
            if call is None or call[0] in (_CALL_VALUE, _CALL_LIST, _CALL_TUPLE):
                walks.append(((), ()))
                continue
            pos = tuple(
                i
                for i, (k, e) in enumerate(call[2])
                if k == 0 and kinds[plan.edge_ids[e][0]] != _REAL
            )
            kw = tuple(
                name for name, (k, e) in call[3] if k == 0 and kinds[plan.edge_ids[e][0]] != _REAL
            )
            walks.append((pos, kw))
        self.walks = walks
        # Send-ahead (see _send_ahead): a plain call (no hooks, timeout, retries) with
        # the default trigger, not mapped, whose every input edge is a plain edge from
        # a task that executes on the cluster: from its one run, or (a reduce) from
        # every child of a mapped task.
        ups: list[list[int]] = [[] for _ in range(n)]
        plain_in = [True] * n
        for u, d, _key, mapped, flat in plan.edge_ids:
            ups[d].append(u)
            if mapped or flat or kinds[u] != _RUN or u in self.in_driver:
                plain_in[d] = False
        downs: list[list[int]] = [[] for _ in range(n)]
        ahead_ok = [False] * n
        for t in range(n):
            call = plan.calls[t]
            _name, retries, _delay, trig, _skip = plan.task_opts[t]
            ahead_ok[t] = bool(
                kinds[t] == _RUN
                and t not in self.in_driver
                and call is not None
                and call[0] == _CALL_PLAIN
                and len(call) == 6  # no timeout
                and not call[5]  # not observed
                and retries == 0
                and trig == ("all_successful",)
                and not plan.mapped_task[t]
                and ups[t]
                and plain_in[t]
            )
            if ahead_ok[t]:
                for u in set(ups[t]):
                    downs[u].append(t)
        self.ups = ups
        self.downs = downs
        self.ahead_ok = ahead_ok
        # Task id -> the future of its one run in flight (or sent ahead), while a
        # task that may be sent ahead depends on it.
        self.task_fut: dict[int, Any] = {}
        # Mapped task id -> {map index: the future of that child's run}, likewise.
        self.map_futs: dict[int, dict[int, Any]] = {}
        # Task id -> (future, the keys of the futures in the arguments it was sent
        # with, in order) of a run sent ahead and not yet handed out by the core.
        self.ahead: dict[int, tuple[Any, list[Any]]] = {}
        self.sent: set[int] = set()  # tasks that may be sent ahead, sent (either way)

    # --- start ------------------------------------------------------------------------------
    def start(self) -> None:
        client = self.client
        self._send_context()
        try:
            threads = sum(client.nthreads().values())
        except Exception:
            threads = 0
        self.cap = max(_MIN_INFLIGHT, _PER_THREAD * threads)
        self.chunk = max(1, self.cap // 4)
        self.low = max(4, 2 * threads)

    def _send_context(self) -> None:
        """Put the flow run's context on the cluster (again when values were masked
        since: the workers mask them before each run that reads this context)."""
        info = self.run.remote_info()
        masks = tuple(_MASK_LIST)
        info.masks = masks
        key = f"ferroflow-context-{self.uid}-{len(masks)}"
        try:
            with _quiet_large_graph():
                self.info_future = self.client.submit(_identity, info, key=key, pure=False)
        except Exception as exc:
            raise ExecutorError(f"could not send the flow run's context to Dask: {exc!r}") from exc
        self.masks_sent = len(masks)

    def _run_here(self, items: list[Any]) -> tuple[list[Any], bool]:
        """Execute the runs of ``in_driver`` tasks among ``items`` in this process, as the
        local executor would; the other items, and whether any ran here.

        A secret task runs here so that it reads its value with this process's
        credentials (an agent's flow-run process: for the run it holds) and the value is
        masked here before anything that used it is recorded; the workers get the new
        masked values with the flow run's context before their next run."""
        rest: list[Any] = []
        ran = False
        for item in items:
            if item[1] not in self.in_driver:
                rest.append(item)
                continue
            ran = True
            args, kwargs = item[7], item[8]
            if _has_proxy(args) or (kwargs and _has_proxy(list(kwargs.values()))):
                got = self._fetch_inputs(item[0], args, kwargs)
                if got is None:
                    continue
                args, kwargs = got
            if _run_in_driver(self.run, item, args, kwargs):
                raise KeyboardInterrupt
        return rest, ran

    def _fetch_inputs(self, run_id: int, args: Any, kwargs: Any) -> tuple[Any, Any] | None:
        """A driver-run's arguments with the values on the cluster fetched; None (the run
        is failed) when they cannot be."""
        proxies: list[Any] = []
        _collect(args, proxies)
        for v in (kwargs or {}).values():
            _collect(v, proxies)
        unique = list({id(p): p for p in proxies}.values())
        values = _gather(self.client, [p.future for p in unique], _Failure, direct=self.direct)
        for value in values:
            if isinstance(value, _Failure):
                msg = f"Dask could not bring the task's inputs to the driver: {value.exc!r}"
                self.runner.report_failure(run_id, msg, value.exc)
                return None
        resolved = {id(p): v for p, v in zip(unique, values, strict=True)}
        args = _replace(tuple(args), resolved)
        if kwargs:
            kwargs = {k: _replace(v, resolved) for k, v in kwargs.items()}
        return args, kwargs

    def _fn_future(self, task_id: int, func: Any, hooked: bool) -> Any:
        """A future holding ``(function, task or None)``: sent once, copied once per worker.
        Tasks without hooks that call the same function share one (a flow of many
        ``inc`` tasks sends ``inc`` once, not once per task)."""
        fut = self.fn_futures.get(task_id)
        if fut is None and not hooked:
            fut = self.shared_fns.get(id(func))
            if fut is not None:
                self.fn_futures[task_id] = fut
        if fut is None:
            task = self.tasks[task_id]
            try:
                with _quiet_large_graph():
                    fut = self.client.submit(
                        _identity,
                        (func, task if hooked else None),
                        key=f"ferroflow-func-{_key_name(task.name)}-{self.uid}-{task_id}",
                        pure=False,
                    )
            except Exception as exc:
                self._check_client(exc)
                fut = ExecutorError(
                    f"task '{task.name}' could not be sent to Dask (its function or the "
                    f"task cannot be pickled): {exc!r}"
                )
            self.fn_futures[task_id] = fut
            if not hooked and not isinstance(fut, Exception):
                self.shared_fns[id(func)] = fut
                self.pinned.append(func)  # keeps id(func) from being reused meanwhile
        return fut

    # --- submitting ---------------------------------------------------------------------------
    def _substitute(self, task_id: int, args: Any, kwargs: Any) -> tuple[Any, Any, Any]:
        """Swap the proxies in a run's arguments for futures (Dask resolves them)."""
        pos, kw = self.walks[task_id]
        tagged: list[Any] = []
        if pos:
            args = list(args)
            for i in pos:
                args[i], t = _swap(args[i])
                if t:
                    tagged.append(i)
            args = tuple(args)
        if kw and kwargs:
            kwargs = dict(kwargs)
            for name in kw:
                if name in kwargs:
                    kwargs[name], t = _swap(kwargs[name])
                    if t:
                        tagged.append(name)
        return args, kwargs, tuple(tagged) or None

    def _fill(self) -> None:
        """Take ready runs from the core and submit them, in chunks: each submission
        costs the scheduler about as much as many runs, so top up only when a chunk is
        free or the cluster may run dry."""
        while True:
            busy = len(self.inflight)
            room = self.cap - busy
            if room <= 0 or (room < self.chunk and busy >= self.low):
                return
            want = min(room, _BATCH)
            items = self.runner.take(want)
            taken, ran = len(items), False
            if items and self.in_driver:
                items, ran = self._run_here(items)
            if items:
                if len(_MASK_LIST) != self.masks_sent:
                    self._send_context()  # values masked since (here or by a worker)
                self._submit_items(items)
            if taken < want and not ran:
                return

    def _submit_items(self, items: list[Any]) -> None:
        batch: list[tuple[Any, ...]] = []
        adopted: list[Any] = []
        for run_id, task_id, map_index, rc, lc, hooked, func, args, kwargs, lr in items:
            sent = self.ahead.pop(task_id, None)
            if sent is not None:
                fut, keys = sent
                if (run_id, map_index, rc, lc) == (task_id, -1, 1, 0) and _sent_with(
                    args, kwargs, keys
                ):
                    self.inflight[fut.key] = _Sub(run_id, task_id, hooked, fut)
                    adopted.append(fut)
                    continue
                self._forget(fut)  # not the run it was sent for: send the real one
            fn = self._fn_future(task_id, func, hooked)
            if isinstance(fn, Exception):
                self.runner.report_failure(run_id, str(fn), fn)
                continue
            args, kwargs, walk = self._substitute(task_id, args, kwargs)
            spec = (run_id, task_id, map_index, rc, lc, hooked, args, kwargs, lr, walk)
            key = f"{_key_name(self.tasks[task_id].name)}-{self.uid}-{run_id}-{rc}-{lc}"
            batch.append((fn, spec, key))
        if adopted:
            self._track(adopted)
        if not batch:
            return
        futures = []
        for fut, (_fn, spec, _key) in self._submit(batch):
            self.inflight[fut.key] = _Sub(spec[0], spec[1], spec[5], fut)
            futures.append(fut)
            if self.downs[spec[1]]:
                if spec[2] == -1:
                    self.task_fut[spec[1]] = fut
                else:  # a child of a mapped task
                    self.map_futs.setdefault(spec[1], {})[spec[2]] = fut
            if self.ahead_ok[spec[1]]:
                self._started(spec[1])
        self._track(futures)
        self._send_ahead([spec[1] for _f, (_fn, spec, _k) in zip(futures, batch, strict=False)])

    # --- sending ahead ------------------------------------------------------------------------
    def _inputs(self, task_id: int) -> tuple[Any, Any, tuple[Any, ...]] | None:
        """The arguments of a plain task's run built from its call spec and the futures
        of its upstream runs (``None`` when one is not on the cluster), and those
        futures (its dependencies, ordering edges included). An upstream mapped task
        gives the list of its children's futures, once every child is on the cluster
        (what the core passes a reduce: the children's values in map order)."""
        plan = self.plan
        call = plan.calls[task_id]
        edge_ids = plan.edge_ids
        values: dict[int, Any] = {}
        deps: list[Any] = []
        for u in self.ups[task_id]:
            if u in values:
                continue
            if plan.mapped_task[u]:
                kids = self._children(u)
                if kids is None:
                    return None
                values[u] = kids
                deps.extend(kids)
            else:
                f = self.task_fut.get(u)
                if f is None:
                    return None
                values[u] = f
                deps.append(f)
        args = tuple(values[edge_ids[v][0]] if k == 0 else v for k, v in call[2])
        kwargs = {name: values[edge_ids[v][0]] if k == 0 else v for name, (k, v) in call[3]}
        return args, kwargs or None, tuple(deps)

    def _children(self, task_id: int) -> list[Any] | None:
        """The futures of every child of mapped task ``task_id`` in map order, or None
        while the map is not expanded, has no children or some are not on the cluster
        (not submitted yet, or settled by the core without a call)."""
        got = self.map_futs.get(task_id)
        if not got:
            return None
        span = self.runner.children(task_id)
        if span is None or span[1] == 0 or len(got) != span[1]:
            return None
        return [got[i] for i in range(span[1])]

    def _send_ahead(self, submitted: list[int]) -> None:
        """Send the runs that depend only on runs now on the cluster with their
        upstream futures, so that a chain does not wait for the driver between steps
        (the core still decides every state: a run sent ahead is used only if the
        core hands it out with the same inputs, else it is forgotten)."""
        todo = [d for t in submitted for d in self.downs[t]]
        seen: set[int] = set()
        while todo:
            level: list[tuple[int, Any, tuple[Any, ...], list[Any]]] = []
            for d in todo:
                if d in seen or d in self.ahead or d in self.task_fut:
                    continue
                seen.add(d)
                inputs = self._inputs(d)
                if inputs is None:
                    continue
                args, kwargs, deps = inputs
                task = self.tasks[d]
                fn = self._fn_future(d, self.plan.calls[d][1], False)
                if isinstance(fn, Exception):
                    continue
                spec = (d, d, -1, 1, 0, False, args, kwargs, None, None)
                key = f"{_key_name(task.name)}-{self.uid}-ahead-{d}"
                level.append((d, (fn, spec, key), deps, _future_keys(args, kwargs)))
            if not level:
                return
            try:
                with _quiet_large_graph():
                    futures = self.client.map(
                        _run_ahead,
                        [b[1][0] for b in level],
                        [self.info_future] * len(level),
                        [b[1][1] for b in level],
                        [b[2] for b in level],
                        key=[b[1][2] for b in level],
                        pure=False,
                    )
            except Exception as exc:
                self._check_client(exc)
                return  # sent the usual way when the core hands them out
            todo = []
            for (d, _item, _deps, keys), fut in zip(level, futures, strict=True):
                self.ahead[d] = (fut, keys)
                self._started(d)
                if self.downs[d]:
                    self.task_fut[d] = fut
                    todo.extend(self.downs[d])

    def _started(self, task_id: int) -> None:
        """``task_id``'s run is on the cluster: an upstream future every downstream
        task of which is on the cluster too is no longer needed here."""
        self.sent.add(task_id)
        for u in self.ups[task_id]:
            if all(d in self.sent for d in self.downs[u]):
                self.task_fut.pop(u, None)
                self.map_futs.pop(u, None)

    def _drop_ahead(self, task_id: int) -> None:
        """A run of ``task_id`` did not simply succeed: forget what was sent ahead of
        it (the core decides those runs; they are sent again if it runs them)."""
        todo = [task_id]
        while todo:
            t = todo.pop()
            self.task_fut.pop(t, None)
            # A retried child then leaves the map incomplete here: its reduce is sent
            # the usual way, when the core hands it out.
            self.map_futs.pop(t, None)
            for d in self.downs[t]:
                sent = self.ahead.pop(d, None)
                if sent is not None:
                    self._forget(sent[0])
                    todo.append(d)

    def _submit(self, batch: list[tuple[Any, ...]]) -> list[tuple[Any, tuple[Any, ...]]]:
        """Submit ``(fn future, spec, key)`` items in one graph; ``(future, item)`` pairs."""
        info = self.info_future
        try:
            with _quiet_large_graph():
                futures = self.client.map(
                    _run,
                    [b[0] for b in batch],
                    [info] * len(batch),
                    [b[1] for b in batch],
                    key=[b[2] for b in batch],
                    pure=False,
                )
            return list(zip(futures, batch, strict=True))
        except Exception as exc:
            self._check_client(exc)
            if len(batch) == 1:
                return self._submit_one(batch[0])
        # Something in the batch cannot be pickled: send the items one by one.
        out = []
        for item in batch:
            out.extend(self._submit_one(item))
        return out

    def _submit_one(self, item: tuple[Any, ...]) -> list[tuple[Any, tuple[Any, ...]]]:
        fn, spec, key = item
        try:
            with _quiet_large_graph():
                (fut,) = self.client.map(_run, [fn], [self.info_future], [spec], key=[key])
        except Exception as exc:
            self._check_client(exc)
            run_id, task_id = spec[0], spec[1]
            msg = f"the inputs of task '{self.tasks[task_id].name}' could not be sent to Dask: "
            msg += repr(exc)
            self.runner.report_failure(run_id, msg, ExecutorError(msg))
            return []
        return [(fut, item)]

    def _check_client(self, exc: BaseException) -> None:
        """A submission failed: blame the connection when the client is down."""
        status = getattr(self.client, "status", "running")
        if status not in ("running", "connecting", "newly-created"):
            raise ExecutorError(
                f"lost the connection to the Dask scheduler ({status}): {exc!r}"
            ) from exc

    def _describe_later(self, recs: list[_Sub], probe: bool) -> None:
        """Describe the values of finished runs on their workers (a small task each)."""
        futs = [r.future for r in recs]
        needs = [0 if probe else self.need[r.task_id] for r in recs]
        keys = [f"ferroflow-describe-{self.uid}-{next(self.counter)}" for _ in recs]
        descs = self.client.map(_describe, futs, [()] * len(recs), needs, key=keys, pure=False)
        for d, r in zip(descs, recs, strict=True):
            del self.inflight[r.future.key]
            r.describing, r.run_future, r.future = True, r.future, d
            self.inflight[d.key] = r
        self._track(descs)

    def _track(self, futures: list[Any]) -> None:
        """Put each future on ``done_q`` when it finishes (callbacks on the client loop)."""
        from distributed.client import done_callback

        put = self.done_q.put
        watchers = self.watchers

        def spawn() -> None:
            for f in futures:
                w = asyncio.ensure_future(done_callback(f, put))
                watchers.add(w)  # asyncio keeps only weak references to tasks
                w.add_done_callback(watchers.discard)

        self.client.loop.add_callback(spawn)

    # --- receiving --------------------------------------------------------------------------
    def _handle(self, done: list[Any]) -> None:
        fetch: list[_Sub] = []
        describe: list[_Sub] = []
        probe: list[_Sub] = []
        for fut in done:
            rec = self.inflight.get(fut.key)
            if rec is None or rec.future is not fut:
                continue
            status = fut.status
            if status == "pending":
                self._track([fut])  # Dask is computing it again: wait again
            elif status in ("error", "cancelled"):
                del self.inflight[fut.key]
                self._report_dask_error(rec, _dask_error(fut, status))
            elif rec.describing:
                fetch.append(rec)
            else:
                typ = fut.type  # reported by Dask with every finished key
                if typ is _Outcome:
                    fetch.append(rec)
                elif typ is None:
                    probe.append(rec)
                elif self.need[rec.task_id]:
                    describe.append(rec)
                else:
                    del self.inflight[fut.key]
                    self._report_ok(rec, _RemoteLazy(fut))
        if describe:
            self._describe_later(describe, False)
        if probe:
            self._describe_later(probe, True)
        if fetch:
            self._fetch(fetch)

    def _report_ok(self, rec: _Sub, value: Any) -> None:
        self.n_ok += 1
        if rec.hooked:
            value = (_SUCCESS, value, None, _native.CAUSE_INTERNAL)
        if self.runner.report(rec.run_id, rec.hooked, True, value):
            raise KeyboardInterrupt

    def _fetch(self, recs: list[_Sub]) -> None:
        """Bring outcomes and descriptions (small) to the driver, in one call."""
        values = _gather(self.client, [r.future for r in recs], _Failure)
        for rec, value in zip(recs, values, strict=True):
            self.inflight.pop(rec.future.key, None)
            if isinstance(value, _Failure):
                self._report_dask_error(rec, value.exc)
            elif rec.describing:
                if value[0] == "outcome":
                    self._report_outcome(rec, value[1])
                else:
                    self._report_ok(rec, _proxy(rec.run_future, tuple(value[1:5])))
            else:
                self._report_outcome(rec, value)

    def _report_outcome(self, rec: _Sub, out: _Outcome) -> None:
        self._drop_ahead(rec.task_id)
        runner = self.runner
        if out.kind == _Outcome.RAISED:
            stop = runner.report(rec.run_id, rec.hooked, False, out.payload)
        elif out.kind == _Outcome.HOOKED:
            code, value, message, cause, stuck, location = out.payload
            if stuck is not None:
                # Forget the attempt's key first: once its worker restarts, Dask would
                # otherwise compute it again for the future still held here.
                self._forget(rec.future)
                message = self._stop_stuck(stuck, message)
            stop = runner.report(rec.run_id, True, True, (code, value, message, cause, location))
        else:
            msg, shown = out.payload
            runner.report_failure(rec.run_id, msg, shown)
            stop = False
        if stop:
            raise KeyboardInterrupt

    def _report_dask_error(self, rec: _Sub, exc: BaseException) -> None:
        from distributed import KilledWorker

        self._drop_ahead(rec.task_id)
        if isinstance(exc, KilledWorker):
            # Dask already reran it on other workers; as on the process pool, a death
            # counts one attempt and the task's retries apply whatever retry_on says.
            msg = f"worker process died: Dask lost the workers running it ({exc})"
            self.runner.report_failure(rec.run_id, msg, exc, cause=_native.CAUSE_WORKER_LOST)
            return
        what = "the description of its result" if rec.describing else "it"
        msg = f"Dask could not run {what}: {exc!r}"
        self.runner.report_failure(rec.run_id, msg, exc)

    def _forget(self, future: Any) -> None:
        """Release ``future``'s key on the scheduler now (a synchronous cancel)."""
        try:
            self.client.cancel([future])
        except Exception:
            pass

    def _stop_stuck(self, address: str, message: str | None) -> str:
        """Restart the worker whose thread still runs a timed-out run (in the background)."""
        base = (message or "Task timed out.").rstrip(".")
        if not self._has_nanny(address):
            return (
                f"{base}; its thread on Dask worker {address} could not be stopped "
                "(the worker has no nanny) and was abandoned."
            )

        if address in self.restarting:
            return f"{base}; its Dask worker {address} was restarted to stop it."
        self.restarting.add(address)

        def restart() -> None:
            try:
                self.client.restart_workers([address], timeout=30, raise_for_error=False)
            except Exception:
                pass
            finally:
                self.restarting.discard(address)

        t = threading.Thread(target=restart, name="ferroflow-dask-restart", daemon=True)
        t.start()
        self.restarts.append(t)
        return f"{base}; its Dask worker {address} was restarted to stop it."

    def _has_nanny(self, address: str) -> bool:
        if address not in self.nannies:
            try:
                workers = self.client.scheduler_info(n_workers=-1)["workers"]
            except Exception:
                workers = {}
            for addr, w in workers.items():
                self.nannies[addr] = bool(w.get("nanny"))
        return self.nannies.get(address, False)

    def drain_logs(self) -> None:
        """Bring the run-logger lines collected on the workers to this process, where
        they go to the run store with the rest of the run (at the end; during the run,
        ``_drain_soon`` collects them about once a second without waiting)."""
        if self._drain_applied(wait=True) and not self.restarts:
            return  # collected after the last run ended (drain_at_end)
        self.drained = time.monotonic()
        self._apply_logs(self._take_logs())

    def drain_at_end(self) -> None:
        """Every run has ended: collect the workers' last lines while ``finalize``
        fetches the values (``drain_logs`` then only adds them)."""
        self._drain_applied(wait=True)
        self._drain_soon()
        self.drained_at_end = True

    def _take_logs(self) -> Any:
        from ferroflow import runtime

        try:
            return self.client.run(runtime._take_remote_logs, self.run.flow_run_id)
        except Exception:
            return None  # workers gone: their lines went with them

    def _apply_logs(self, got: Any) -> None:
        from ferroflow import runtime

        for lines in (got or {}).values():
            runtime._add_remote_logs(lines)

    def _drain_soon(self) -> None:
        """Collect the workers' lines in a helper thread (the round trip to every worker
        would stall the loop); the loop adds them to the run here, in this thread."""
        if self._drain_applied(wait=False):
            return
        self.drained = time.monotonic()
        box: list[Any] = []
        t = threading.Thread(
            target=lambda: box.append(self._take_logs()), name="ferroflow-dask-logs", daemon=True
        )
        self.draining = (t, box)
        t.start()

    def _drain_applied(self, wait: bool) -> bool:
        """Add the lines of a collection in progress when it is done (or once it is, with
        ``wait``, which returns whether that collection began after every run ended);
        without ``wait``, True while one is still in progress."""
        if self.draining is None:
            return False
        t, box = self.draining
        if wait:
            t.join()
        elif t.is_alive():
            return True
        self.draining = None
        self._apply_logs(box[0] if box else None)
        at_end, self.drained_at_end = self.drained_at_end, False
        return wait and at_end

    # --- prefetching the final values -----------------------------------------------------
    def _prefetched(self) -> None:
        """Keep the values of the prefetch in progress (once it is done)."""
        if self.prefetching is None:
            return
        t, box, futs = self.prefetching
        t.join()
        self.prefetching = None
        if box:
            self.prefetched.update(zip([f.key for f in futs], box[0], strict=True))

    def _prefetch_tail(self) -> None:
        """Near the end of a run (few runs in flight), fetch the values already stored in
        a helper thread while the last runs compute: ``finalize`` would fetch them anyway
        once they end (not when results are released: those may never be fetched)."""
        if self.prefetching is not None:
            if self.prefetching[0].is_alive():
                return
            self._prefetched()
        if self.release or self.n_ok - self.n_prefetched < _PREFETCH_MIN:
            return
        if len(self.inflight) > self.low:
            return
        self.n_prefetched = self.n_ok
        runner = self.runner
        proxies: list[Any] = []
        for v in runner.results(0, runner.n_runs()):
            if _has_proxy(v):
                _collect(v, proxies)
        done = self.prefetched
        futs = list({p.future.key: p.future for p in proxies if p.future.key not in done}.values())
        futs = [f for f in futs if f.status == "finished"]
        if not futs:
            return
        box: list[Any] = []
        client, direct = self.client, self.direct

        def fetch() -> None:
            try:
                box.append(client.gather(futs, direct=direct))
            except Exception:
                pass  # finalize fetches them

        t = threading.Thread(target=fetch, name="ferroflow-dask-prefetch", daemon=True)
        self.prefetching = (t, box, futs)
        t.start()

    def join_restarts(self) -> None:
        for t in self.restarts:
            t.join(35)

    # --- the loop -------------------------------------------------------------------------------
    def loop(self) -> None:
        runner = self.runner
        get = self.done_q.get
        get_nowait = self.done_q.get_nowait
        while True:
            self._fill()
            if time.monotonic() - self.drained > _DRAIN_S:
                self._drain_soon()
            self._prefetch_tail()
            if not self.inflight:
                if not _wait_idle(runner):
                    return
                continue
            # The core's driver says how long to wait (its wait policy).
            hint = runner.wait_hint()
            wait = 0.0 if hint is None else hint
            try:
                done = [get(timeout=wait)]
            except queue.Empty:
                continue
            while True:
                try:
                    done.append(get_nowait())
                except queue.Empty:
                    break
            self._handle(done)

    def cancel_all(self) -> None:
        futs = [r.future for r in self.inflight.values()]
        futs.extend(f for f, _keys in self.ahead.values())
        self.inflight.clear()
        self.ahead.clear()
        self.task_fut.clear()
        if futs:
            try:
                self.client.cancel(futs)
            except Exception:
                pass

    # --- the end: real values for the final states ------------------------------------------------
    def finalize(self) -> None:
        """Gather the values still stored as proxies, in one call."""
        # Runs sent ahead that the core did not hand out (it skipped them, or the run
        # was cancelled): forgotten.
        if self.ahead:
            self.client.cancel([f for f, _keys in self.ahead.values()])
            self.ahead.clear()
        self.task_fut.clear()
        self.map_futs.clear()
        runner = self.runner
        stored = runner.results(0, runner.n_runs())
        found = {run_id: v for run_id, v in enumerate(stored) if _has_proxy(v)}
        if not found:
            return
        proxies: list[Any] = []
        for v in found.values():
            _collect(v, proxies)
        unique = list({id(p): p for p in proxies}.values())
        if self.prefetching is not None:
            self._prefetched()
        done = self.prefetched
        rest = [p for p in unique if p.future.key not in done]
        values = _gather(self.client, [p.future for p in rest], _identity, direct=self.direct)
        resolved = {id(p): val for p, val in zip(rest, values, strict=True)}
        for p in unique:
            if p.future.key in done:
                resolved[id(p)] = done[p.future.key]
        self.prefetched = {}
        self.final = {rid: _replace(v, resolved) for rid, v in found.items()}
        for p in unique:
            p.future = None  # release the cluster's memory now

    def install_results(self) -> None:
        """Make the final states read real values (after ``runner.close``)."""
        if not self.final:
            return
        self.runner.replace_results(self.final)
        self.final = {}


class _Failure:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _gather(client: Any, futs: list[Any], failed: Any, **kwargs: Any) -> list[Any]:
    """The futures' values in one call; when that fails, one by one, each future that
    fails giving ``failed(exception)``."""
    try:
        values: list[Any] = client.gather(futs, **kwargs)
        return values
    except Exception:
        out = []
        for f in futs:
            try:
                out.append(f.result())
            except Exception as exc:
                out.append(failed(exc))
        return out


def _dask_error(fut: Any, status: str) -> BaseException:
    if status == "cancelled":
        from distributed.client import FutureCancelledError

        reason = getattr(fut._state, "exception", None)
        return FutureCancelledError(fut.key, reason=str(reason) if reason else None)
    try:
        exc = fut.exception(timeout=10)
    except BaseException as err:
        return err
    return exc if isinstance(exc, BaseException) else RuntimeError(str(exc))


def _key_name(name: str) -> str:
    # Dask groups keys by their prefix; keep it readable and free of separators.
    out = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return out or "task"


def _swap(v: Any) -> tuple[Any, bool]:
    """Replace proxies in an argument by futures; True when item markers were made."""
    t = type(v)
    if isinstance(v, _RemoteBase):
        return v.future, False
    if isinstance(v, _ItemBase):
        return (_ItemTag, v.future, v.path), True
    if t is list or t is tuple:
        tagged = False
        out = []
        changed = False
        for x in v:
            y, tg = _swap(x)
            tagged |= tg
            changed |= y is not x
            out.append(y)
        if not changed:
            return v, False
        return (out if t is list else tuple(out)), tagged
    return v, False


def _future_keys(args: Any, kwargs: Any) -> list[Any]:
    """The keys of the futures in a run's arguments (proxies swapped for futures), in
    order, keyword arguments by name: a run the core hands out is the run sent ahead
    of it only when these are the same."""
    out: list[Any] = []

    def walk(v: Any) -> None:
        t = type(v)
        if t is list or t is tuple:
            for x in v:
                walk(x)
        elif hasattr(v, "key"):
            out.append(v.key)

    walk(args)
    for name in sorted(kwargs or ()):
        walk(kwargs[name])
    return out


def _sent_with(args: Any, kwargs: Any, keys: list[Any]) -> bool:
    """Whether a run the core hands out (its arguments hold proxies) reads the futures
    ``keys`` that its run sent ahead was sent with, in the same places."""
    swapped = _swap(tuple(args))[0]
    named = {name: _swap(v)[0] for name, v in (kwargs or {}).items()}
    return _future_keys(swapped, named) == keys


def _has_proxy(v: Any) -> bool:
    if isinstance(v, (_RemoteBase, _ItemBase)):
        return True
    t = type(v)
    if t is list or t is tuple:
        return any(_has_proxy(x) for x in v)
    return False


def _collect(v: Any, out: list[Any]) -> None:
    if isinstance(v, _RemoteBase):
        out.append(v)
    elif isinstance(v, _ItemBase):  # pragma: no cover - items are never stored
        out.append(v)
    elif type(v) is list or type(v) is tuple:
        for x in v:
            _collect(x, out)


def _replace(v: Any, resolved: dict[int, Any]) -> Any:
    if isinstance(v, (_RemoteBase, _ItemBase)):
        value: Any = resolved.get(id(v))
        if isinstance(v, _ItemBase):  # pragma: no cover
            for i in v.path:
                value = value[i]
        return value
    t = type(v)
    if t is list or t is tuple:
        return t(_replace(x, resolved) for x in v)
    return v


class _quiet_large_graph(warnings.catch_warnings):
    """Batches of runs may carry large arguments: that is expected, not a Dask misuse."""

    def __enter__(self) -> Any:
        out = super().__enter__()
        warnings.filterwarnings("ignore", message="Sending large graph", category=UserWarning)
        return out
