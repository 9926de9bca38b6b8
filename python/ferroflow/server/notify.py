"""Server-side notification rules and their delivery service.

A rule (``notify_rules``; ``ferroflow notify add --on Failed --flow F --webhook URL``)
asks for a POST to a webhook whenever a run of flow ``F`` (any flow when unset) ends in
state ``on_state`` (subclasses count: ``Failed`` covers ``TimedOut`` and
``TriggerFailed``). The :class:`Notifier` service does the rest, apart from the runs:

1. each pass finds the runs that ended in a rule's state since the rule was made and
   records one ``notifications`` row per rule and *event* (a run reaching a state at
   its end time: a run resumed and failing again is a new event), under a UNIQUE key, so
   an event is notified once whatever the passes, restarts or servers;
2. then POSTs the due rows (the Slack-compatible body of
   :func:`ferroflow.utilities.notifications.slack_message`), several at once, each with
   a short timeout. A receiver that fails (an error status, a hang, unreachable) is
   logged and tried again with exponential backoff (``backoff * 2**attempts`` seconds,
   at most :data:`MAX_BACKOFF`), up to :data:`MAX_ATTEMPTS` times, then the row is
   ``failed`` with the last error.

Nothing here is on a run's path: a run's states are written as before, and a slow or
dead receiver only delays its own notifications.

Settings (``ferroflow server start``): ``$FERROFLOW_NOTIFY_INTERVAL`` (seconds between
passes, default 2), ``$FERROFLOW_NOTIFY_TIMEOUT`` (seconds per POST, default 5),
``$FERROFLOW_NOTIFY_BACKOFF`` (seconds of the first retry, default 2).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ferroflow.exceptions import ApiError, OpsError
from ferroflow.server.database import Database
from ferroflow.server.models import FINISHED_FLOW_STATES
from ferroflow.utilities.notifications import (
    check_webhook_url,
    describe_error,
    post_json,
    slack_message,
)

__all__ = [
    "MAX_ATTEMPTS",
    "MAX_BACKOFF",
    "Notifier",
    "add_rule",
    "list_notifications",
    "list_rules",
    "notifier_from_env",
    "remove_rule",
]

#: Deliveries of one notification before it is given up as ``failed``.
MAX_ATTEMPTS = 8
#: The longest wait between two deliveries, in seconds.
MAX_BACKOFF = 300.0
#: How far back (seconds) a pass looks for runs that ended, past the last pass: a run's
#: end is stamped by the process that ran it and may reach the server late.
LOOKBACK = 3600.0

log = logging.getLogger("ferroflow.server.notify")

#: A rule's state and the run states it covers.
_FAMILIES = {
    "Failed": ("Failed", "TimedOut", "TriggerFailed"),
    "Success": ("Success", "Cached", "Skipped", "Mapped"),
}


def _covered(on_state: str) -> tuple[str, ...]:
    return _FAMILIES.get(on_state, (on_state,))


def add_rule(
    db: Database, on_state: str, webhook: str, flow_name: str | None = None
) -> dict[str, Any]:
    """Add a rule; its row (``id, on_state, flow_name, webhook, created``).

    Raises:
        OpsError: a state that is not a finished state, a webhook that is not http(s).
    """
    if on_state not in FINISHED_FLOW_STATES:
        raise OpsError(
            f"cannot notify on {on_state!r}: give a finished state "
            f"({', '.join(sorted(FINISHED_FLOW_STATES))})"
        )
    check_webhook_url(webhook)
    if flow_name is not None and not flow_name.strip():
        raise OpsError("--flow must name a flow")
    row = {
        "id": uuid.uuid4().hex,
        "on_state": on_state,
        "flow_name": flow_name,
        "webhook": webhook,
        "created": time.time(),
    }
    db.execute(
        "INSERT INTO notify_rules(id, on_state, flow_name, webhook, created) "
        "VALUES (?, ?, ?, ?, ?)",
        tuple(row.values()),
    )
    return row


def list_rules(db: Database) -> list[dict[str, Any]]:
    """Every rule with its deliveries counted: ``sent``, ``pending``, ``failed``."""
    return db.fetchall(
        "SELECT r.id, r.on_state, r.flow_name, r.webhook, r.created, "
        "(SELECT count(*) FROM notifications n WHERE n.rule_id = r.id AND n.status = 'sent') "
        "AS sent, (SELECT count(*) FROM notifications n WHERE n.rule_id = r.id "
        "AND n.status = 'pending') AS pending, (SELECT count(*) FROM notifications n "
        "WHERE n.rule_id = r.id AND n.status = 'failed') AS failed "
        "FROM notify_rules r ORDER BY r.created"
    )


def remove_rule(db: Database, rule_id: str) -> str:
    """Remove a rule (by id or unique prefix) and its pending deliveries; its id.

    Raises:
        ApiError: an unknown or ambiguous id.
    """
    rows = db.fetchall("SELECT id FROM notify_rules WHERE id = ?", (rule_id,))
    if not rows and len(rule_id) >= 4:
        rows = db.fetchall(
            "SELECT id FROM notify_rules WHERE id LIKE ? ESCAPE '\\' ORDER BY id LIMIT 2",
            (rule_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",),
        )
    if not rows:
        raise ApiError(f"no notification rule with id {rule_id!r} (see 'ferroflow notify ls')")
    if len(rows) > 1:
        raise ApiError(f"notification rule id {rule_id!r} is ambiguous: give more characters")
    found = str(rows[0]["id"])
    with db.transaction():
        db.execute("DELETE FROM notify_rules WHERE id = ?", (found,))
        db.execute("DELETE FROM notifications WHERE rule_id = ? AND status = 'pending'", (found,))
    return found


def list_notifications(
    db: Database, rule_id: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """The newest deliveries (of one rule): ``seq, rule_id, flow_run_id, status,
    attempts, last_error, created, sent``."""
    return db.fetchall(
        "SELECT seq, rule_id, flow_run_id, status, attempts, last_error, created, sent "
        "FROM notifications WHERE (CAST(? AS TEXT) IS NULL OR rule_id = ?) "
        "ORDER BY seq DESC LIMIT ?",
        (rule_id, rule_id, max(1, min(int(limit), 1000))),
    )


class Notifier:
    """The delivery service (see the module): ``run_once`` records new events and
    POSTs what is due.

    Args:
        db: the server's database.
        timeout: seconds per POST [5].
        backoff: seconds before the first retry; doubled each time [2].
        workers: POSTs at once [8].
    """

    def __init__(
        self, db: Database, timeout: float = 5.0, backoff: float = 2.0, workers: int = 8
    ) -> None:
        self.db = db
        self.timeout = timeout
        self.backoff = backoff
        self.workers = workers
        self._since: float | None = None

    def _record_events(self, now: float) -> int:
        rules = self.db.fetchall("SELECT * FROM notify_rules")
        made = 0
        for rule in rules:
            since = float(rule["created"])
            if self._since is not None:
                since = max(since, self._since - LOOKBACK)
            states = _covered(str(rule["on_state"]))
            marks = ", ".join("?" * len(states))
            runs = self.db.fetchall(
                f"SELECT id, flow_name, state, message, ended, flow_id FROM flow_runs "
                f"WHERE state IN ({marks}) AND ended >= ? "
                "AND (CAST(? AS TEXT) IS NULL OR flow_name = ?)",
                (*states, since, rule["flow_name"], rule["flow_name"]),
            )
            for run in runs:
                event = f"{run['id']}:{run['state']}:{float(run['ended']):.6f}"
                body = slack_message(
                    "Flow",
                    str(run["flow_name"]),
                    str(run["state"]),
                    run["message"],
                    {"Flow run": run["id"], "Rule": rule["id"]},
                )
                made += self.db.execute(
                    "INSERT INTO notifications(rule_id, event, flow_run_id, payload, "
                    "next_attempt, created) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(rule_id, event) DO NOTHING",
                    (rule["id"], event, run["id"], json.dumps(body), now, now),
                )
        self._since = now
        return made

    def _deliver(self, row: dict[str, Any]) -> str | None:
        try:
            post_json(str(row["webhook"]), json.loads(row["payload"]), self.timeout)
        except Exception as exc:  # any failure of the receiver is retried
            return describe_error(exc)
        return None

    def run_once(self) -> int:
        """One pass: how many notifications were sent."""
        now = time.time()
        self._record_events(now)
        due = self.db.fetchall(
            "SELECT n.seq, n.attempts, n.payload, n.flow_run_id, r.webhook FROM notifications n "
            "JOIN notify_rules r ON r.id = n.rule_id WHERE n.status = 'pending' "
            "AND n.next_attempt <= ? ORDER BY n.seq LIMIT 100",
            (now,),
        )
        if not due:
            return 0
        with ThreadPoolExecutor(max_workers=min(self.workers, len(due))) as pool:
            outcomes = list(pool.map(self._deliver, due))
        sent = 0
        done = time.time()
        for row, error in zip(due, outcomes, strict=True):
            attempts = int(row["attempts"]) + 1
            if error is None:
                sent += 1
                self.db.execute(
                    "UPDATE notifications SET status = 'sent', attempts = ?, sent = ?, "
                    "last_error = NULL WHERE seq = ?",
                    (attempts, done, row["seq"]),
                )
                continue
            gave_up = attempts >= MAX_ATTEMPTS
            wait = min(self.backoff * 2 ** (attempts - 1), MAX_BACKOFF)
            self.db.execute(
                "UPDATE notifications SET status = ?, attempts = ?, last_error = ?, "
                "next_attempt = ? WHERE seq = ?",
                ("failed" if gave_up else "pending", attempts, error, done + wait, row["seq"]),
            )
            if gave_up:
                log.error(
                    "gave up notifying %s about flow run %s after %d attempts: %s",
                    row["webhook"],
                    row["flow_run_id"],
                    attempts,
                    error,
                )
            else:
                log.warning(
                    "notifying %s about flow run %s failed (attempt %d, next in %.1f s): %s",
                    row["webhook"],
                    row["flow_run_id"],
                    attempts,
                    wait,
                    error,
                )
        return sent


def _env_positive(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise OpsError(f"{name} must be a number of seconds > 0, got {text!r}")
    return value


def notifier_from_env(db: Database) -> tuple[Notifier, float]:
    """The service and its interval from ``$FERROFLOW_NOTIFY_INTERVAL``,
    ``$FERROFLOW_NOTIFY_TIMEOUT`` and ``$FERROFLOW_NOTIFY_BACKOFF``.

    Raises:
        OpsError: a value that is not a number of seconds > 0, naming the variable.
    """
    interval = _env_positive("FERROFLOW_NOTIFY_INTERVAL", 2.0)
    timeout = _env_positive("FERROFLOW_NOTIFY_TIMEOUT", 5.0)
    backoff = _env_positive("FERROFLOW_NOTIFY_BACKOFF", 2.0)
    return Notifier(db, timeout=timeout, backoff=backoff), interval
