"""Retention: removing old flow runs, their records and their checkpoint files.

One set of functions serves the local store (``ferroflow runs rm|prune``), the server's
API (``delete_flow_runs`` / ``prune_flow_runs``) and the server's retention service
(``FERROFLOW_RETENTION=30d``, see :class:`Retention`), on SQLite and PostgreSQL alike.

What goes with a run:

- its ``flow_runs`` row, its ``journal`` (task runs and their transitions) and its
  ``logs``, deleted in batches of :data:`BATCH` runs, one transaction per batch (a run's
  records go together or not at all; a local run writing meanwhile waits one batch at
  most). Each batch is one ``DELETE ... WHERE key IN (...) AND state IN (<finished>)
  RETURNING``, so a run that is not finished is never removed, even one that was
  resumed between the selection and the delete;
- its checkpoint directory in the default pack layout, ``<results>/runs/<flow run id>/``
  (``<results>`` is ``$FERROFLOW_HOME/results``, the default ``LocalResult`` directory),
  unless a run that stays still references it: a run resumed from it (directly or
  through a chain of resumes) restores values from those packs, and an entry of the
  durable cache that has not expired points into them. Files at a task's ``target`` or
  a ``Result(location=...)`` template are the user's named outputs and are never
  removed; nor are packs under another ``LocalResult(dir=...)``.

A run is "in use", and is not removed, while it is not finished (``Running``,
``Scheduled``, ``Pending``, ``Cancelling``, ...) or while a run resumed from it is not
finished (the resume reads its records).

Space: SQLite does not give pages back to the file system by itself. Stores created by
this version use ``auto_vacuum = INCREMENTAL`` (``rust/core/src/store/mod.rs``), and a
prune ends with ``PRAGMA incremental_vacuum`` in short steps and a WAL checkpoint, so
the file shrinks without locking writers out for long. An older store (``auto_vacuum =
NONE``) keeps its size until ``ferroflow runs prune --vacuum`` (or ``vacuum=True``)
switches it to incremental with one full ``VACUUM``: that rewrites the whole file and
blocks writers while it runs, so it is never done behind the user's back (the service
never does it). On PostgreSQL, autovacuum reclaims the space.

Prune from a process of its own (as ``ferroflow runs prune`` and the server do), not
from a process that is recording runs at the same time: the recorder's SQLite (Rust)
and Python's ``sqlite3`` are two copies of the SQLite library, and two copies must not
share one database file inside one process (each drops the other's POSIX locks; the
test that prunes while runs are written showed a corrupt store in one process and a
whole one across two).

Example:
    >>> from ferroflow.server.database import open_database
    >>> db = open_database("sqlite:///tmp/example/ferroflow.db")  # doctest: +SKIP
    >>> prune_runs(db, older_than=parse_duration("30d"), dry_run=True).count  # doctest: +SKIP
    0
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferroflow.exceptions import ApiError, OpsError
from ferroflow.server.database import Database, SqliteDatabase
from ferroflow.server.models import FINISHED_FLOW_STATES

__all__ = [
    "BATCH",
    "DEFAULT_RETENTION_INTERVAL",
    "PruneResult",
    "Retention",
    "parse_duration",
    "prune_runs",
    "remove_runs",
    "retention_from_env",
]

#: Runs deleted per transaction.
BATCH = 2000

#: Threads that remove checkpoint directories.
FILE_WORKERS = 16

#: Pages freed per ``PRAGMA incremental_vacuum`` step.
VACUUM_STEP = 2048

#: Seconds between two passes of the retention service [``$FERROFLOW_RETENTION_INTERVAL``].
DEFAULT_RETENTION_INTERVAL = 3600.0

#: How many removed run ids a result lists (the count is always exact).
MAX_LISTED = 1000

log = logging.getLogger("ferroflow.server.retention")

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]+$")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``30d``, ``12h``, ``90m``, ``45s`` or ``2w``.

    Raises:
        OpsError: anything else, naming the text.

    Example:
        >>> parse_duration("30d"), parse_duration("1.5h")
        (2592000.0, 5400.0)
    """
    if not isinstance(text, str):
        raise OpsError(f"a duration is text such as '30d', got {text!r}")
    m = _DURATION.match(text)
    if m is None:
        raise OpsError(
            f"cannot read the duration {text!r}: give a number and a unit, s, m, h, d or w "
            "(e.g. '30d', '12h')"
        )
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass
class PruneResult:
    """What a removal did (or, for a dry run, would do).

    Attributes:
        count: how many flow runs were (would be) removed.
        flow_run_ids: their ids (the first :data:`MAX_LISTED`).
        skipped: ids asked for (``rm``) or matched that were not removed, with why.
        files_removed: checkpoint directories removed.
        files_kept: checkpoint directories kept because a remaining run or the cache
            still references them.
        bytes_before: the store file's size before (SQLite; None on PostgreSQL).
        bytes_after: and after (with the space given back by the vacuum).
        dry_run: nothing was changed.
        note: advice (e.g. how to give the space back on an older store).
        records_seconds: time spent deleting records (and vacuuming).
        files_seconds: time spent removing checkpoint directories.
    """

    count: int = 0
    flow_run_ids: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    files_removed: int = 0
    files_kept: int = 0
    bytes_before: int | None = None
    bytes_after: int | None = None
    dry_run: bool = False
    note: str | None = None
    records_seconds: float = 0.0
    files_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data."""
        return {
            "count": self.count,
            "flow_run_ids": self.flow_run_ids,
            "skipped": self.skipped,
            "files_removed": self.files_removed,
            "files_kept": self.files_kept,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "dry_run": self.dry_run,
            "note": self.note,
            "records_seconds": self.records_seconds,
            "files_seconds": self.files_seconds,
        }


_FINISHED = tuple(sorted(FINISHED_FLOW_STATES))


def _store_size(db: Database) -> int | None:
    if not isinstance(db, SqliteDatabase):
        return None
    total = 0
    for suffix in ("", "-wal"):
        try:
            total += os.path.getsize(f"{db.path}{suffix}")
        except OSError:
            pass
    return total


def _in(db: Database, column: str, values: Sequence[Any], kind: str) -> tuple[str, list[Any]]:
    """``column IN (...)`` for a batch: one array parameter on PostgreSQL (one parse)."""
    if db.dialect == "postgresql":
        return f"{column} = ANY(?::{kind}[])", [list(values)]
    return f"{column} IN ({', '.join('?' * len(values))})", list(values)


def _in_use(db: Database) -> set[str]:
    """Ids of the runs that an unfinished run was resumed from (it reads their records)."""
    states = ", ".join("?" * len(_FINISHED))
    rows = db.fetchall(
        "SELECT resumed_from FROM flow_runs WHERE resumed_from IS NOT NULL "
        f"AND state NOT IN ({states})",
        _FINISHED,
    )
    return {str(r["resumed_from"]) for r in rows}


def _delete_batch(db: Database, batch: Sequence[tuple[int, str]]) -> list[str]:
    """Delete a batch of finished runs with their journals and logs in one transaction;
    the ids actually deleted (a run that is no longer finished stays)."""
    keys = [k for k, _ in batch]
    where, args = _in(db, "key", keys, "bigint")
    states = ", ".join("?" * len(_FINISHED))
    with db.transaction():
        rows = db.fetchall(
            f"DELETE FROM flow_runs WHERE {where} AND state IN ({states}) RETURNING key, id",
            [*args, *_FINISHED],
        )
        if not rows:
            return []
        gone_keys = [int(r["key"]) for r in rows]
        gone_ids = [str(r["id"]) for r in rows]
        where, args = _in(db, "flow_run", gone_keys, "bigint")
        db.execute(f"DELETE FROM journal WHERE {where}", args)
        where, args = _in(db, "flow_run_id", gone_ids, "text")
        db.execute(f"DELETE FROM logs WHERE {where}", args)
    for key in gone_keys:
        db.folds.pop(key, None)
    return gone_ids


def _referenced(db: Database, removed_parents: dict[str, str | None], now: float) -> set[str]:
    """Run ids whose checkpoint directory a remaining run or a live cache entry uses."""
    parents: dict[str, str | None] = dict(removed_parents)
    remaining = db.fetchall("SELECT id, resumed_from FROM flow_runs WHERE resumed_from IS NOT NULL")
    for r in remaining:
        parents[str(r["id"])] = str(r["resumed_from"])
    used: set[str] = set()
    for r in remaining:
        nxt: str | None = str(r["resumed_from"])
        while nxt is not None and nxt not in used:
            used.add(nxt)
            nxt = parents.get(nxt)
    for r in db.fetchall(
        "SELECT result_location FROM cache WHERE result_location LIKE 'runs/%' "
        "AND (expires IS NULL OR expires > ?)",
        (now,),
    ):
        parts = str(r["result_location"]).split("/")
        if len(parts) > 2:
            used.add(parts[1])
    return used


def _results_dir(results_dir: str | os.PathLike[str] | None) -> Path:
    if results_dir is not None:
        return Path(results_dir)
    home = os.environ.get("FERROFLOW_HOME") or os.path.join("~", ".ferroflow")
    return Path(home).expanduser() / "results"


def _remove_files(
    db: Database,
    removed: dict[str, str | None],
    results_dir: str | os.PathLike[str] | None,
    out: PruneResult,
) -> None:
    now = time.time()
    root = _results_dir(results_dir) / "runs"
    if not root.is_dir():
        return
    used = _referenced(db, removed, now)
    # Entries of the durable cache that expired are dead: they go with their packs.
    db.execute(
        "DELETE FROM cache WHERE expires IS NOT NULL AND expires <= ? "
        "AND result_location LIKE 'runs/%'",
        (now,),
    )
    doomed: list[Path] = []
    for run_id in removed:
        if not _SAFE_ID.match(run_id) or run_id in (".", ".."):
            continue
        where = root / run_id
        if not where.is_dir():
            continue
        if run_id in used:
            out.files_kept += 1
        else:
            doomed.append(where)
    if not doomed:
        return
    # Removing a directory is a journaled metadata write that waits for the disk:
    # several at once overlap those waits (7x faster for 1,000 directories on ext4).
    with ThreadPoolExecutor(max_workers=min(FILE_WORKERS, len(doomed))) as pool:
        for where, error in zip(doomed, pool.map(_rmtree, doomed), strict=True):
            if error is None:
                out.files_removed += 1
            else:
                log.warning("could not remove the checkpoints at %s: %s", where, error)


def _rmtree(where: Path) -> OSError | None:
    try:
        shutil.rmtree(where)
    except OSError as exc:
        return exc
    return None


def _vacuum(db: Database, full: bool, out: PruneResult) -> None:
    """Give freed pages back to the file system (SQLite)."""
    if not isinstance(db, SqliteDatabase):
        return
    row = db.fetchone("PRAGMA auto_vacuum")
    mode = int(next(iter(row.values()))) if row else 0
    if mode == 0:
        if not full:
            out.note = (
                "this store was created without incremental vacuum, so the file keeps its "
                "size (freed pages are reused); run 'ferroflow runs prune --vacuum' once, "
                "while no run is writing, to give the space back and switch it to "
                "incremental vacuum"
            )
            return
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        db.execute("VACUUM")
    elif mode == 2:
        # Steps of VACUUM_STEP pages, each its own short write transaction, so that a
        # run recording meanwhile waits one step at most.
        while True:
            free = db.fetchone("PRAGMA freelist_count")
            if not free or not int(next(iter(free.values()))):
                break
            db.executescript(f"PRAGMA incremental_vacuum({VACUUM_STEP});")
    try:
        db.fetchall("PRAGMA wal_checkpoint(TRUNCATE)")
    except Exception as exc:  # a busy checkpoint is retried by the next writer
        log.debug("wal checkpoint after pruning: %s", exc)


def _remove(
    db: Database,
    candidates: Sequence[dict[str, Any]],
    out: PruneResult,
    *,
    dry_run: bool,
    results_dir: str | os.PathLike[str] | None,
    vacuum: bool,
) -> PruneResult:
    out.dry_run = dry_run
    out.bytes_before = _store_size(db)
    in_use = _in_use(db)
    chosen: list[dict[str, Any]] = []
    for row in candidates:
        if str(row["id"]) in in_use:
            out.skipped[str(row["id"])] = "a run resumed from it is still running"
        else:
            chosen.append(row)
    if dry_run:
        out.count = len(chosen)
        out.flow_run_ids = [str(r["id"]) for r in chosen[:MAX_LISTED]]
        out.bytes_after = out.bytes_before
        return out
    t0 = time.perf_counter()
    parents = {str(r["id"]): r["resumed_from"] for r in chosen}
    removed: dict[str, str | None] = {}
    for i in range(0, len(chosen), BATCH):
        batch = [(int(r["key"]), str(r["id"])) for r in chosen[i : i + BATCH]]
        for run_id in _delete_batch(db, batch):
            removed[run_id] = parents[run_id]
    for row in chosen:
        if str(row["id"]) not in removed:
            out.skipped[str(row["id"])] = "it is no longer finished"
    out.count = len(removed)
    out.flow_run_ids = list(removed)[:MAX_LISTED]
    t1 = time.perf_counter()
    _remove_files(db, removed, results_dir, out)
    t2 = time.perf_counter()
    if removed or vacuum:
        _vacuum(db, vacuum, out)
    out.bytes_after = _store_size(db)
    out.records_seconds = (t1 - t0) + (time.perf_counter() - t2)
    out.files_seconds = t2 - t1
    return out


def prune_runs(
    db: Database,
    older_than: float,
    states: Iterable[str] | None = None,
    *,
    dry_run: bool = False,
    now: float | None = None,
    results_dir: str | os.PathLike[str] | None = None,
    vacuum: bool = False,
) -> PruneResult:
    """Remove the finished flow runs that started more than ``older_than`` seconds ago
    (only those ending in one of ``states`` when given), with their records and
    checkpoint files (see the module).

    Args:
        db: the store or the server's database.
        older_than: seconds (see :func:`parse_duration`), >= 0.
        states: e.g. ``["Success"]`` [every finished state].
        dry_run: only count and list what would go.
        now: the current time, seconds since the epoch [the clock's].
        results_dir: the default result directory [``$FERROFLOW_HOME/results``].
        vacuum: on an older SQLite store without incremental vacuum, rewrite the file
            once (full ``VACUUM``) and switch it to incremental.

    Raises:
        OpsError: a negative age, an unknown or unfinished state.
    """
    if not isinstance(older_than, (int, float)) or not older_than >= 0:
        raise OpsError(f"--older-than must be a duration >= 0, got {older_than!r}")
    wanted = _check_states(states)
    cutoff = (time.time() if now is None else now) - float(older_than)
    marks = ", ".join("?" * len(wanted))
    candidates = db.fetchall(
        "SELECT key, id, resumed_from FROM flow_runs "
        f"WHERE started < ? AND state IN ({marks}) ORDER BY key",
        (cutoff, *wanted),
    )
    return _remove(
        db, candidates, PruneResult(), dry_run=dry_run, results_dir=results_dir, vacuum=vacuum
    )


def _check_states(states: Iterable[str] | None) -> tuple[str, ...]:
    if states is None:
        return _FINISHED
    if isinstance(states, str):
        states = [states]
    wanted = tuple(dict.fromkeys(str(s) for s in states))
    if not wanted:
        return _FINISHED
    bad = [s for s in wanted if s not in FINISHED_FLOW_STATES]
    if bad:
        raise OpsError(
            f"cannot prune runs in state {bad[0]!r}: only finished runs are removed "
            f"({', '.join(_FINISHED)})"
        )
    return wanted


def remove_runs(
    db: Database,
    flow_run_ids: Sequence[str],
    *,
    results_dir: str | os.PathLike[str] | None = None,
) -> PruneResult:
    """Remove the given flow runs (ids or unique prefixes of at least 4 characters) with
    their records and checkpoint files.

    Raises:
        OpsError: an unknown or ambiguous id, or a run that is not finished (nothing is
            removed then).
    """
    from ferroflow.server.models import get_flow_run

    if isinstance(flow_run_ids, str) or not flow_run_ids:
        raise OpsError("give the ids of the flow runs to remove")
    rows: dict[str, dict[str, Any]] = {}
    for given in flow_run_ids:
        try:
            run = get_flow_run(db, str(given))
        except ApiError as exc:
            raise OpsError(str(exc)) from exc
        if run["state"] not in FINISHED_FLOW_STATES:
            raise OpsError(
                f"flow run {run['id']} is {run['state']}: a run that has not finished is "
                "never removed (cancel it first)"
            )
        rows[str(run["id"])] = run
    in_use = _in_use(db)
    busy = sorted(set(rows) & in_use)
    if busy:
        raise OpsError(f"flow run {busy[0]} is in use: a run resumed from it is still running")
    return _remove(
        db, list(rows.values()), PruneResult(), dry_run=False, results_dir=results_dir, vacuum=False
    )


def retention_from_env() -> tuple[float, tuple[str, ...] | None, float] | None:
    """The server's retention setting: ``(older_than, states, interval)`` from
    ``$FERROFLOW_RETENTION`` (e.g. ``30d``), ``$FERROFLOW_RETENTION_STATES`` (comma
    separated, e.g. ``Success,Skipped``; default every finished state) and
    ``$FERROFLOW_RETENTION_INTERVAL`` (seconds between passes, default 3600); None when
    ``FERROFLOW_RETENTION`` is unset or empty.

    Raises:
        OpsError: a malformed value, naming the variable.
    """
    text = os.environ.get("FERROFLOW_RETENTION")
    if not text:
        return None
    try:
        older = parse_duration(text)
    except OpsError as exc:
        raise OpsError(f"FERROFLOW_RETENTION: {exc}") from exc
    states_text = os.environ.get("FERROFLOW_RETENTION_STATES")
    states = None
    if states_text:
        states = tuple(s.strip() for s in states_text.split(",") if s.strip())
        try:
            _check_states(states)
        except OpsError as exc:
            raise OpsError(f"FERROFLOW_RETENTION_STATES: {exc}") from exc
    interval_text = os.environ.get("FERROFLOW_RETENTION_INTERVAL")
    interval = DEFAULT_RETENTION_INTERVAL
    if interval_text:
        try:
            interval = float(interval_text)
        except ValueError:
            interval = -1.0
        if not interval > 0 or interval != interval or interval == float("inf"):
            raise OpsError(
                f"FERROFLOW_RETENTION_INTERVAL must be a number of seconds > 0, "
                f"got {interval_text!r}"
            )
    return older, states, interval


class Retention:
    """The server's retention service: each pass prunes the finished runs older than
    ``older_than`` seconds (see :func:`prune_runs`), as ``ferroflow runs prune`` does.

    Args:
        db: the server's database.
        older_than: seconds.
        states: only runs that ended in these states [every finished state].

    Example:
        >>> from ferroflow.server.database import open_database
        >>> Retention(open_database(), 30 * 86400).run_once()  # doctest: +SKIP
        0
    """

    def __init__(
        self, db: Database, older_than: float, states: Sequence[str] | None = None
    ) -> None:
        self.db = db
        self.older_than = older_than
        self.states = _check_states(states)

    def run_once(self) -> int:
        """One pass: how many runs it removed."""
        got = prune_runs(self.db, self.older_than, self.states)
        if got.count:
            log.info(
                "retention removed %d flow run(s) and %d checkpoint directorie(s)",
                got.count,
                got.files_removed,
            )
        return got.count
