"""Local runs that report: with ``FERROFLOW_API_URL`` set, a plain ``flow.run()`` also
streams its records to the server.

The local run store is the journal: the run records there first, as always, and a
:class:`Reporter` thread follows the run's rows in it (the flow-run row, journal blobs
by ``seq``, log lines by ``rowid``) and posts them in batches to the server's
``/ingest`` route (msgpack: the blobs travel as they are). The server stores what lies
past its last acknowledged seq and answers the new marks; the reporter sends on from
there. A lost connection or a restarted server loses nothing (the rows are still in the
local store, and are sent again) and doubles nothing (the server skips what it
acknowledged). Off unless ``FERROFLOW_API_URL`` is set (``FERROFLOW_REPORT=0`` turns it
off even then). At the end of the run, ``flow.run()`` waits up to
:data:`FINAL_TIMEOUT` for the server to take the rest, then warns (RecordingWarning)
that the run is complete only locally; nothing sends it later.

When the server's store *is* the local store (the default SQLite server on this
machine), the run is there already and the reporter stops after one question.

``import ferroflow`` does not import this module.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ferroflow.exceptions import StoreError

__all__ = ["BATCH_BYTES", "INTERVAL", "Reporter", "start_reporter"]

#: Seconds between two batches while the run goes on.
INTERVAL = 0.5

#: A batch holds journal blobs up to about this many bytes.
BATCH_BYTES = 8 << 20

#: A batch holds at most this many log lines.
MAX_LOGS = 10_000

#: How long the end of a run waits for the server to take the rest, in seconds.
FINAL_TIMEOUT = 10.0


class Reporter:
    """Streams one flow run's records from the local store to a server.

    Args:
        api_url: the server.
        store: the local run store file.
        flow_run_id: the run to follow.
        api_key: the API token sent with every batch [``$FERROFLOW_API_KEY``].
    """

    def __init__(
        self, api_url: str, store: Path, flow_run_id: str, api_key: str | None = None
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.api_key = api_key or os.environ.get("FERROFLOW_API_KEY") or None
        self.store = store
        self.flow_run_id = flow_run_id
        self.journal_seq = 0
        self.log_seq = 0
        self.same_store = False
        self.structure_sent = False
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"ferroflow-reporter-{flow_run_id[:8]}", daemon=True
        )
        self._conn: Any = None

    def start(self) -> Reporter:
        """Start the thread."""
        self._thread.start()
        return self

    def stop(self) -> str | None:
        """Stop following, send everything left (waiting up to :data:`FINAL_TIMEOUT`);
        None when the server has the whole run, else what went wrong."""
        self._stop.set()
        self._thread.join()
        deadline = time.monotonic() + FINAL_TIMEOUT
        try:
            while True:
                if self.send_once() == "done":
                    return None
                if time.monotonic() > deadline:
                    return (
                        f"not every record reached the server at {self.api_url} "
                        f"({self.last_error or 'no answer'}); the run is complete in the "
                        f"local store {self.store}"
                    )
                time.sleep(0.2)
        finally:
            self._conn = None  # drops the connection

    def _loop(self) -> None:
        while not self._stop.wait(INTERVAL):
            if self.send_once() in ("same", "done"):
                return

    def _db(self) -> Any:
        # The native store, not the stdlib's sqlite3: this process records the run with
        # the SQLite inside ferroflow._native, and a second copy of SQLite in the same
        # process would not see its POSIX locks on the file (a reader could then take
        # the WAL apart under the writer: "database disk image is malformed").
        if self._conn is None:
            from ferroflow import _native

            self._conn = _native.Store(str(self.store))
        return self._conn

    def _batch(self) -> tuple[dict[str, Any], bool] | None:
        """The next batch and whether it holds everything recorded so far."""
        got = self._db().report_batch(
            self.flow_run_id, self.journal_seq, self.log_seq, BATCH_BYTES, MAX_LOGS
        )
        if got is None:
            return None
        row = got["run"]
        run = {
            "flow_name": row["flow_name"],
            "parameters": row["parameters_json"],
            **{k: row[k] for k in ("state", "message", "started", "ended", "pid")},
            "id": self.flow_run_id,
            "host": row["host"],
            "resumed_from": row["resumed_from"],
        }
        if got["structure"] is not None and not self.structure_sent:
            run["structure"] = got["structure"]  # what a resume elsewhere compares; sent once
        batch = {
            "store_path": str(self.store),
            "host": socket.gethostname(),
            "flow_run": run,
            "journal": [list(j) for j in got["journal"]],
            "logs": [list(line) for line in got["logs"]],
        }
        return batch, bool(got["complete"])

    def send_once(self) -> str:
        """Send one batch: ``"same"`` (the server's store is the local one), ``"done"``
        (the server has everything recorded so far and the run has ended), ``"more"``
        (there is more, or the run goes on), ``"failed"`` (not sent: see
        ``last_error``)."""
        if self.same_store:
            return "done"
        try:
            got = self._batch()
        except StoreError as exc:
            self.last_error = f"cannot read the local store: {exc}"
            return "failed"
        if got is None:
            return "more"
        batch, complete = got
        ended = batch["flow_run"]["ended"] is not None
        try:
            answer = self._post(batch)
        except (OSError, ValueError) as exc:
            self.last_error = str(getattr(exc, "reason", exc))
            return "failed"
        if answer.get("same_store"):
            self.same_store = True
            return "same"
        if "journal_seq" not in answer:
            errors = answer.get("errors") or [{"message": "no acknowledgement"}]
            self.last_error = str(errors[0].get("message"))
            return "failed"
        self.journal_seq = int(answer["journal_seq"])
        self.structure_sent = self.structure_sent or "structure" in batch["flow_run"]
        self.log_seq = int(answer["log_seq"])
        self.last_error = None
        return "done" if complete and ended else "more"

    def _post(self, batch: dict[str, Any]) -> dict[str, Any]:
        import msgpack

        request = urllib.request.Request(
            f"{self.api_url}/ingest",
            data=msgpack.packb(batch, use_bin_type=True),
            headers={"Content-Type": "application/msgpack"},
            method="POST",
        )
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            answer = json.loads(exc.read() or b"{}")
        return answer if isinstance(answer, dict) else {}


def start_reporter(store: Path, flow_run_id: str) -> Reporter | None:
    """A started :class:`Reporter` when ``FERROFLOW_API_URL`` is set (and
    ``FERROFLOW_REPORT`` is not ``0``), else None."""
    url = os.environ.get("FERROFLOW_API_URL")
    if not url or os.environ.get("FERROFLOW_REPORT", "1").strip().lower() in ("0", "false", "off"):
        return None
    return Reporter(url, store, flow_run_id).start()
