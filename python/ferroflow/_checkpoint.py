"""Checkpoints and targets for the engine: where a task's result is written and read.

A task checkpoints when ``checkpoint=True`` (or it has a ``result=`` and ``checkpoint`` is
not False) or when it has a ``target``. Values go through the task's ``Result`` (the flow's
``result`` when the task has none, else ``LocalResult()`` under ``$FERROFLOW_HOME``):

- with a ``target`` template, at the rendered target (and the task is ``Cached`` when
  something is already there);
- with a ``Result(location=...)`` template, at that rendered location;
- otherwise appended to one *pack file* per flow run, task and process
  (``runs/<flow_run_id>/<task_slug>-<pid>.pack``), so checkpointing a 100,000-child map
  writes one file, not 100,000.

A task whose only extra is such a pack checkpoint (:func:`native_pack`) is checkpointed by
the native runner on the local and thread executors: Python opens the pack
(:func:`open_native`) and the runner serializes values and appends them in blocks, recording
a block's locations once its bytes are in the file (``rust/py/src/packs.rs``). Elsewhere
(process and Dask workers, tasks with handlers or a timeout) :func:`write` appends one value
at a time and flushes it to the file before returning its location. Either way, a location
that reaches the run store names bytes that are in the file.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from ferroflow import _native
from ferroflow.results import LocalResult, Result, render_location
from ferroflow.runtime import context


def checkpoints(task: Any) -> bool:
    """Whether a successful run of ``task`` writes its value (cached tasks do: the
    durable cache points at the written value)."""
    return bool(task._ff_checkpoints())


def backend(task: Any) -> Result:
    """The Result a task reads and writes with."""
    return task.result if task.result is not None else LocalResult()


def template_values(task: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """What a target or location template may use: context, parameters and inputs."""
    values: dict[str, Any] = context.to_dict()
    values.update(values.get("parameters") or {})
    values.update(inputs)
    if values.get("map_index") is None:
        values["map_index"] = ""
    values.setdefault("task_slug", task.slug or task.name)
    return values


def needs_template_values(task: Any) -> bool:
    """Whether writing or finding ``task``'s value renders a template (target, location
    template, or a cache key over inputs and parameters)."""
    result = task.result
    return (
        task.target is not None
        or task.cache_for is not None
        or (result is not None and result.location is not None)
        or (result is not None and not isinstance(result, LocalResult))
    )


_PACK_VALUES: dict[tuple[int, int], dict[str, Any]] = {}


def pack_values(task: Any) -> dict[str, Any]:
    """The two values the default pack layout needs, looked up once per flow run and
    task (the context is not rebuilt for every mapped child)."""
    cur = _native.current()
    key = (cur[0], cur[2]) if cur is not None else None
    if key is not None:
        found = _PACK_VALUES.get(key)
        if found is not None:
            return found
    values = {"flow_run_id": context.get("flow_run_id"), "task_slug": context.get("task_slug")}
    if key is not None and values["flow_run_id"] is not None:
        _PACK_VALUES[key] = values
    return values


def render_target(task: Any, values: dict[str, Any]) -> str:
    """The rendered target of a task."""
    if callable(task.target):
        return str(task.target(**values))
    return render_location(task.target, **values)


class _Packs:
    """Open pack writers of this process, by flow run and task."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.writers: dict[tuple[str, str], Any] = {}

    def _entry(self, task: Any, key: tuple[str, str]) -> Any:
        writer = self.writers.get(key)
        if writer is None:
            result = backend(task)  # only here: a default LocalResult() costs a mkdir
            if not isinstance(result, LocalResult):  # native_pack() / write() said so
                raise TypeError(f"task {task.name!r} does not checkpoint to a LocalResult")
            flow_run_id, slug = key
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in slug)
            writer = self.writers[key] = result.pack_writer(
                f"runs/{flow_run_id}/{safe}-{os.getpid()}.pack"
            )
        return writer

    def writer(self, task: Any, flow_run_id: str, slug: str) -> Any:
        """The pack writer of a task in a flow run (opened on first use)."""
        with self.lock:
            return self._entry(task, (flow_run_id, slug))

    def append(self, task: Any, flow_run_id: str, slug: str, value: Any) -> str:
        """Append a value of ``task`` to its pack and flush it to the file (the caller
        may record the location at once, and the caller may be a worker process the
        flow run never closes); return the value's location."""
        with self.lock:
            writer = self._entry(task, (flow_run_id, slug))
            location: str = writer.append(value)
            writer.flush()
            return location

    def close_run(self, flow_run_id: str) -> list[str]:
        """Close the packs of a flow run; what could not be closed, as messages (a
        failing close must not take the flow run's outcome with it)."""
        for cached in [k for k, v in _PACK_VALUES.items() if v["flow_run_id"] == flow_run_id]:
            _PACK_VALUES.pop(cached, None)
        problems: list[str] = []
        with self.lock:
            for key in [k for k in self.writers if k[0] == flow_run_id]:
                writer = self.writers.pop(key)
                try:
                    writer.close()
                except Exception as err:
                    problems.append(f"checkpoints of task {key[1]!r} may be lost: {err}")
        return problems


PACKS = _Packs()


def native_pack(task: Any) -> bool:
    """Whether the native runner can checkpoint ``task`` itself: a checkpoint in the
    default pack layout of a plain :class:`LocalResult`, and nothing else that needs
    Python around the call (handlers, a timeout, ``log_stdout``, a target, a cache, a
    location)."""
    if task.state_handlers or task.on_failure is not None or task.timeout is not None:
        return False
    if task.log_stdout:
        return False
    if not checkpoints(task) or needs_template_values(task):
        return False
    return task.result is None or type(task.result) is LocalResult


def fast_dumps(serializer: Any) -> tuple[Any, tuple[Any, ...], bool]:
    """A fast serializer for the native pack path: ``(dumps or None, extra args,
    gate)``; the runner calls ``dumps(value, *extra)``. With ``gate`` it is only used
    for plain builtin values (the C pickler writes the same bytes as cloudpickle for
    those); anything else goes through ``serializer``."""
    from ferroflow.results import MsgpackSerializer, PickleSerializer

    if type(serializer) is PickleSerializer:
        import pickle

        return pickle.dumps, (5,), True  # positional: a partial with keywords is slower
    if type(serializer) is MsgpackSerializer:
        import msgpack  # type: ignore[import-untyped]

        return msgpack.Packer(use_bin_type=True).pack, (), False
    return None, (), False


def open_native(
    task: Any, flow_run_id: str, slug: str
) -> tuple[Any, str, Any, tuple[Any, ...], bool, Any, bool]:
    """Open the pack of a task checkpointed by the native runner: ``(write_framed,
    location, fast dumps, its extra args, gate, general dumps, scalars)``; with
    ``scalars`` the runner pickles builtin scalars itself, byte for byte as
    ``pickle.dumps(value, 5)`` (see ``rust/py/src/packs.rs``)."""
    import functools

    from ferroflow.results import PickleSerializer, _serialize

    writer = PACKS.writer(task, flow_run_id, slug)
    serializer = writer.serializer  # the task's Result's serializer
    fast, extra, gate = fast_dumps(serializer)
    return (
        writer.write_framed,
        writer.location,
        fast,
        extra,
        gate,
        functools.partial(_serialize, serializer),
        type(serializer) is PickleSerializer,
    )


def write(task: Any, value: Any, values: dict[str, Any], target: str | None) -> str:
    """Write a successful value; return its location."""
    result = task.result
    if target is not None or (result is not None and result.location is not None):
        result = backend(task)
        where = target if target is not None else render_location(str(result.location), **values)
        out = result.copy()
        out.location = where.replace("{", "{{").replace("}", "}}")
        return out.write(value).location or where
    if result is None or isinstance(result, LocalResult):  # the default pack layout
        flow_run_id = str(values.get("flow_run_id") or "unrecorded")
        slug = str(values.get("task_slug") or task.name)
        return PACKS.append(task, flow_run_id, slug, value)
    written = result.write(value, **values)
    return written.location or ""


def read_for_restore(result: Result, entries: dict[Any, tuple[str, int, int]]) -> dict[Any, Any]:
    """The values of ``entries`` (``key: (location, offset, length)``, offset -1 for a
    location that is not a pack record) that can be read; unreadable ones are left out
    (their runs run again). Records of one pack share one open, memory-mapped file, so
    restoring a 100,000-child map costs one ``open`` and one header check per pack, not
    one per child."""
    out: dict[Any, Any] = {}
    by_pack: dict[str, list[tuple[Any, int, int]]] = {}
    packs = isinstance(result, LocalResult)
    for key, (location, offset, length) in entries.items():
        if offset < 0 or not packs:
            where = location if offset < 0 else f"{location}#{offset}:{length}"
            try:
                out[key] = result.read(where).value
            except Exception:  # unreadable: run it again
                pass
        else:
            by_pack.setdefault(location, []).append((key, offset, length))
    if not by_pack or not isinstance(result, LocalResult):
        return out
    deserialize = result.serializer.deserialize
    for rel, records in by_pack.items():
        try:
            with result._open_pack(rel, use_mmap=len(records) > 1) as pack:
                for key, offset, length in records:
                    try:
                        out[key] = deserialize(pack.record(offset, length))
                    except Exception:  # a torn or damaged record: run it again
                        pass
        except Exception:  # a missing or incompatible pack: run them again
            pass
    return out


# --- the durable cache (``cache_for``) ------------------------------------------------------
_STORES: dict[str, Any] = {}
_STORES_LOCK = threading.Lock()


def _store() -> Any:
    """This process's handle on the run store (shared by every cached task)."""
    from ferroflow.engine import store_path
    from ferroflow.store import open_store

    path = str(store_path())
    with _STORES_LOCK:
        store = _STORES.get(path)
        if store is None:
            store = _STORES[path] = open_store(path)
        return store


def _task_key(task: Any, values: dict[str, Any]) -> str:
    return f"{values.get('flow_name')}/{values.get('task_slug') or task.name}"


def cache_lookup(
    task: Any, inputs: dict[str, Any], values: dict[str, Any]
) -> tuple[Any, str] | None:
    """A still-valid cached value of ``task`` for these inputs: ``(value, location)``."""
    import json
    from datetime import datetime, timezone

    from ferroflow.cache_validators import CacheEntry, duration_only

    validator = task.cache_validator or duration_only
    task_key = _task_key(task, values)
    parameters = values.get("parameters") or {}
    for row in _store().cache_candidates(task_key, task.cache_key or task_key):
        try:
            hashes = json.loads(row.inputs_hash or "{}")
        except ValueError:
            continue
        expires = None
        if row.expires is not None:
            expires = datetime.fromtimestamp(row.expires, tz=timezone.utc)
        entry = CacheEntry(
            expiration=expires,
            inputs=hashes.get("inputs", {}),
            parameters=hashes.get("parameters", {}),
            hashed=True,
        )
        if not validator(entry, inputs, parameters):
            continue
        try:
            return backend(task).read(row.result_location).value, row.result_location
        except Exception:  # an unreadable entry is a miss
            continue
    return None


def cache_store(task: Any, inputs: dict[str, Any], values: dict[str, Any], location: str) -> None:
    """Record a fresh result of ``task`` in the durable cache."""
    import json
    import time

    from ferroflow.cache_validators import CacheEntry

    entry = CacheEntry.with_hashes(None, inputs, values.get("parameters") or {})
    hashes = json.dumps(
        {"inputs": dict(entry.inputs), "parameters": dict(entry.parameters)}, sort_keys=True
    )
    task_key = _task_key(task, values)
    now = time.time()
    _store().cache_put(
        task_key,
        task.cache_key or task_key,
        location,
        inputs_hash=hashes,
        created=now,
        expires=now + task.cache_for.total_seconds(),
        serializer=getattr(backend(task).serializer, "name", ""),
    )
