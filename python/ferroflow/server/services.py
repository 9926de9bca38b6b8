"""The server's background services: loops with one ``run_once`` that tests call directly.

:class:`Scheduler` keeps the runs of every active schedule topped up. One pass
(:meth:`Scheduler.run_once`), in one transaction:

1. reads every registered, non-archived flow version whose schedule is on
   (:func:`~ferroflow.server.models.active_scheduled_flows`) and the automatic runs that
   exist from now on (:func:`~ferroflow.server.models.auto_run_keys`);
2. rebuilds each schedule from the pickle ``flow.register()`` sent
   (:func:`ferroflow.client.schedule_blob`; kept per schedule text, so a pass does not
   unpickle again) and asks :func:`ferroflow.schedules.plan_runs` for the runs missing:
   at least the next :data:`MIN_RUNS`, and every run due within :data:`HORIZON`, up to
   :data:`MAX_RUNS`;
3. inserts them ``Scheduled`` at their UTC instants with the clock's parameter defaults
   and labels (plus the flow's labels), each with the idempotency key
   :func:`~ferroflow.server.models.auto_run_key` of its flow version and UTC instant.
   The UNIQUE index on ``flow_runs(flow_id, idempotency_key)`` skips one that exists,
   so neither a second pass nor a restart nor a second server makes a run twice.

Turning a schedule off, archiving a version and registering a new one remove the
future automatic runs that have not started (``models.set_schedule_active``,
``models.archive_flow``, ``models.register_flow``); the next pass schedules the new
version.

:class:`ServiceLoop` runs a service's ``run_once`` every ``interval`` seconds in a
thread, logs an error and goes on, and stops cleanly (``stop()`` waits for the pass in
progress). ``ferroflow server start`` runs the scheduler this way (``--scheduler-interval``).

Trust: the schedule is a cloudpickle made by whoever registered the flow, and
unpickling runs code, so the server trusts the clients that may register flows (today
loopback only; with API tokens, the ``user`` role).

Example:
    >>> from ferroflow.server.database import open_database
    >>> scheduler = Scheduler(open_database())  # doctest: +SKIP
    >>> scheduler.run_once()  # doctest: +SKIP
    10
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
from datetime import datetime, timedelta
from typing import Any, Protocol

from ferroflow.exceptions import FerroflowError, ScheduleError
from ferroflow.schedules import Schedule, plan_runs
from ferroflow.schedules._time import UTC, require_aware, to_utc
from ferroflow.server import DEFAULT_LEASE_TIMEOUT, models
from ferroflow.server.database import Database

__all__ = [
    "DEFAULT_LEASE_TIMEOUT",
    "DEFAULT_SCHEDULER_INTERVAL",
    "HORIZON",
    "MAX_RUNS",
    "MIN_RUNS",
    "LostRuns",
    "Scheduler",
    "Service",
    "ServiceLoop",
]

#: Keep at least this many future runs of each active schedule.
MIN_RUNS = 10
#: And every run due within this long from now ...
HORIZON = timedelta(hours=1)
#: ... up to this many in all.
MAX_RUNS = 100
#: Seconds between two passes of the scheduler in ``ferroflow server start``.
DEFAULT_SCHEDULER_INTERVAL = 5.0

log = logging.getLogger("ferroflow.server.scheduler")


class Service(Protocol):
    """What :class:`ServiceLoop` runs: one pass, returning how much it did."""

    def run_once(self) -> int:
        """One pass."""
        ...


class _Planned:
    """A flow version's schedule rebuilt, and what its runs need (cached per pass)."""

    __slots__ = ("declared", "error", "required", "schedule")

    def __init__(
        self,
        schedule: Schedule | None,
        declared: frozenset[str],
        required: frozenset[str],
        error: str | None,
    ) -> None:
        self.schedule = schedule
        self.declared = declared
        self.required = required
        self.error = error


class Scheduler:
    """Creates the runs of every active schedule ahead of time (see the module).

    Args:
        db: the server's database.
        min_runs: keep at least this many future runs per flow version [10].
        horizon: and every run due within this long [1 hour] ...
        max_runs: ... up to this many [100].

    Example:
        >>> from ferroflow.server.database import open_database
        >>> Scheduler(open_database(), min_runs=3).min_runs  # doctest: +SKIP
        3
    """

    def __init__(
        self,
        db: Database,
        *,
        min_runs: int = MIN_RUNS,
        horizon: timedelta = HORIZON,
        max_runs: int = MAX_RUNS,
    ) -> None:
        self.db = db
        self.min_runs = min_runs
        self.horizon = horizon
        self.max_runs = max_runs
        # flow id -> (digest of its schedule and structure, the rebuilt schedule); only
        # the flow versions of the last pass are kept.
        self._cache: dict[str, tuple[str, _Planned]] = {}
        self._reported: set[tuple[str, str]] = set()

    def _planned(self, row: dict[str, Any]) -> _Planned:
        digest = hashlib.sha256(
            (row["schedule"] + "\0" + row["structure"]).encode("utf-8")
        ).hexdigest()
        found = self._cache.get(row["id"])
        if found is not None and found[0] == digest:
            return found[1]
        schedule: Schedule | None = None
        error: str | None = None
        declared: frozenset[str] = frozenset()
        required: frozenset[str] = frozenset()
        try:
            params = json.loads(row["structure"]).get("parameters", [])
            declared = frozenset(p["name"] for p in params)
            required = frozenset(p["name"] for p in params if p.get("required"))
            blob = json.loads(row["schedule"]).get("cloudpickle")
            if not isinstance(blob, str):
                error = (
                    "its schedule was registered without its pickle (by an older ferroflow): "
                    "register the flow again"
                )
            else:
                import cloudpickle

                got = cloudpickle.loads(base64.b64decode(blob))
                if isinstance(got, Schedule):
                    schedule = got
                else:
                    error = f"its schedule is a {type(got).__name__}, not a Schedule"
        except Exception as exc:  # a pickle can raise anything while it rebuilds
            error = f"its schedule cannot be rebuilt on the server: {type(exc).__name__}: {exc}"
        planned = _Planned(schedule, declared, required, error)
        self._cache[row["id"]] = (digest, planned)
        return planned

    def _skip(self, row: dict[str, Any], why: str) -> None:
        """Log once per flow version and reason why its runs are not scheduled."""
        key = (row["id"], why)
        if key not in self._reported:
            self._reported.add(key)
            log.warning("not scheduling flow %r (version id %s): %s", row["name"], row["id"], why)

    def run_once(self, now: datetime | None = None) -> int:
        """One pass: create the runs that every active schedule is missing.

        Args:
            now: the current time (aware) [the clock's].

        Returns:
            How many runs it created (0 when every schedule is topped up).

        Raises:
            ScheduleError: ``now`` is naive.
            StoreError, ServerUnavailableError: the database failed (nothing of the
                pass is kept).
        """
        now_u = datetime.now(UTC) if now is None else to_utc(require_aware(now, "now"))
        now_ts = now_u.timestamp()
        prefix_len = len(models.AUTO_KEY_PREFIX)
        with self.db.transaction():
            flows = models.active_scheduled_flows(self.db)
            if len(self._cache) > len(flows):  # versions archived or turned off since
                current = {row["id"] for row in flows}
                self._cache = {k: v for k, v in self._cache.items() if k in current}
            if not flows:
                return 0
            created = 0
            existing = models.auto_run_keys(self.db, now_ts)
            wanted: list[dict[str, Any]] = []
            for row in flows:
                planned = self._planned(row)
                if planned.schedule is None:
                    self._skip(row, planned.error or "no schedule")
                    continue
                flow_id = row["id"]
                # The stored keys are "<prefix><flow id>:<UTC instant key>".
                cut = prefix_len + len(flow_id) + 1
                taken = [k[cut:] for k in existing.get(flow_id, ())]
                try:
                    events = plan_runs(
                        planned.schedule,
                        taken,
                        now_u,
                        min_count=self.min_runs,
                        horizon=self.horizon,
                        max_count=self.max_runs,
                    )
                except (ScheduleError, ValueError, TypeError, ArithmeticError) as exc:
                    self._skip(row, f"its schedule failed: {type(exc).__name__}: {exc}")
                    continue
                if not events:
                    continue
                flow_labels = json.loads(row["labels"] or "[]")
                runs = []
                for event in events:
                    params = event.parameter_defaults
                    unknown = sorted(set(params) - planned.declared)
                    missing = sorted(planned.required - set(params))
                    if unknown or missing:
                        self._skip(
                            row,
                            f"its clock gives parameter {unknown[0]!r} it does not have"
                            if unknown
                            else f"parameter {missing[0]!r} is required and its clock "
                            "gives no default",
                        )
                        continue
                    runs.append(
                        {
                            "flow_id": flow_id,
                            "flow_name": row["name"],
                            "parameters": params,
                            "labels": [*flow_labels, *event.labels],
                            "scheduled_start": event.instant.timestamp(),
                            "idempotency_key": models.auto_run_key(flow_id, event.key),
                        }
                    )
                wanted.extend(runs)
            made = models.insert_auto_runs(self.db, wanted) if wanted else {}
            created = sum(made.values())
            if created:
                models.audit(self.db, "schedule_flow_runs", None, {"runs": made})
        return created


class ServiceLoop:
    """Runs ``service.run_once()`` every ``interval`` seconds in a daemon thread.

    An exception in a pass is logged (the loop goes on with the next pass); :meth:`stop`
    asks the loop to end and waits for the pass in progress.

    Args:
        service: anything with ``run_once()``.
        interval: seconds between the end of a pass and the start of the next (> 0).
        name: the thread's name (for logs).

    Raises:
        FerroflowError: ``interval`` is not a positive number.

    Example:
        >>> class Count:
        ...     n = 0
        ...     def run_once(self) -> int:
        ...         self.n += 1
        ...         return 1
        >>> loop = ServiceLoop(Count(), interval=60.0)
        >>> loop.start(); loop.stop(); loop.service.n
        1
    """

    def __init__(self, service: Service, interval: float, name: str = "ferroflow-service") -> None:
        if not isinstance(interval, (int, float)) or not interval > 0:
            raise FerroflowError(f"a service's interval must be > 0 seconds, got {interval!r}")
        self.service = service
        self.interval = float(interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        """Start the loop (its first pass runs at once)."""
        self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                self.service.run_once()
            except Exception:
                log.exception("%s failed; trying again in %ss", self._thread.name, self.interval)
            if self._stop.wait(self.interval):
                return

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the loop to end and wait (up to ``timeout`` seconds) for its pass."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)


class LostRuns:
    """Finds runs whose agent's lease expired (the flow-run process or the agent died,
    or cannot reach the server) and puts them back in the queue as a resume (see
    :func:`~ferroflow.server.models.requeue_lost_runs`); after
    :data:`~ferroflow.server.models.MAX_RECOVERIES` the run is Failed.

    Args:
        db: the server's database.
        lease_timeout: seconds without a heartbeat [``$FERROFLOW_LEASE_TIMEOUT``, else
            :data:`DEFAULT_LEASE_TIMEOUT`].
    """

    def __init__(self, db: Database, lease_timeout: float = DEFAULT_LEASE_TIMEOUT) -> None:
        self.db = db
        self.lease_timeout = lease_timeout

    def run_once(self) -> int:
        """One pass: how many runs it requeued or failed."""
        done = models.requeue_lost_runs(self.db, self.lease_timeout)
        if done:
            log.warning("%d lost flow run(s) queued again or failed", done)
        return done
