"""A read-only web view of the run store: ``ferroflow ui`` (SPEC "Durable runs").

Pages, all plain HTML with no scripts (a page refreshes itself while a run on it is
running):

- ``/``: the recent flow runs (``?limit=N``, default 50);
- ``/runs/<id>``: one flow run (an id prefix is enough): its parameters, task-run counts
  by state, one line per task with its runs' states, the failures with their
  tracebacks, and the task runs themselves (``?limit=N``, default 500; 0 for all);
- ``/api/runs`` and ``/api/runs/<id>``: the same data as JSON, as ``ferroflow runs ls
  --json`` and ``ferroflow runs show --json`` print it.

The server binds ``127.0.0.1`` unless told otherwise, opens the store for each request
(so it always shows what is committed, and a locked or damaged store is an error page,
not a crash) and marks runs of dead processes on this machine interrupted, as the
command line does.

Example:
    >>> from ferroflow.ui import RunStoreUI
    >>> ui = RunStoreUI(port=0)             # any free port on 127.0.0.1
    >>> url = ui.start()                    # serves in a background thread
    >>> url.startswith("http://127.0.0.1:")
    True
    >>> ui.close()
"""

from __future__ import annotations

import html
import json
import os
import threading
import time
from collections import Counter
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ferroflow.exceptions import FerroflowError
from ferroflow.store import (
    FAILED_STATES,
    FlowRunInfo,
    RunStore,
    errors_by_run,
    open_store,
    store_path,
)

__all__ = ["RunStoreUI"]

_COLORS = {
    "Success": "#1a7f37",
    "Cached": "#1a7f37",
    "Restored": "#1a7f37",
    "Failed": "#cf222e",
    "TimedOut": "#cf222e",
    "TriggerFailed": "#cf222e",
    "Interrupted": "#bc4c00",
    "Cancelled": "#bc4c00",
    "Running": "#0969da",
    "Retrying": "#8250df",
    "Skipped": "#57606a",
    "Pending": "#57606a",
}
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #1f2328; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { text-align: left; padding: 0.2em 0.8em; border-bottom: 1px solid #d0d7de; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f8fa; padding: 0.6em; overflow-x: auto; }
.state { font-weight: 600; }
a { color: #0969da; }
"""


class _Problem(Exception):
    """A request that cannot be answered: an HTTP status and a readable reason."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _state(name: str) -> str:
    color = _COLORS.get(name, "#1f2328")
    return f'<span class="state" style="color:{color}">{_esc(name)}</span>'


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _took(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    return f"{seconds / 60:.1f} min"


def _limit(query: dict[str, list[str]], default: int) -> int:
    raw = query.get("limit", [str(default)])[-1]
    try:
        value = int(raw)
    except ValueError:
        raise _Problem(HTTPStatus.BAD_REQUEST, f"limit must be a number, not {raw!r}") from None
    if value < 0:
        raise _Problem(HTTPStatus.BAD_REQUEST, "limit must be 0 (all) or more")
    return value


def _page(title: str, body: str, refresh: bool = False) -> str:
    meta = '<meta http-equiv="refresh" content="2">' if refresh else ""
    return (
        f'<!doctype html><html><head><meta charset="utf-8">{meta}'
        f"<title>{_esc(title)} · ferroflow</title><style>{_STYLE}</style></head>"
        f'<body><p><a href="/">ferroflow runs</a></p>{body}</body></html>'
    )


class _Views:
    """What each path shows, read from the store at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _open(self) -> RunStore:
        if not self.path.exists():
            raise _Problem(HTTPStatus.NOT_FOUND, f"there is no run store at {self.path} yet")
        store = open_store(self.path)
        try:
            store.fixup_interrupted()
        except BaseException:
            store.close()
            raise
        return store

    def _run(self, store: RunStore, run_id: str) -> FlowRunInfo:
        run = store.flow_run(run_id)
        if run is None:
            raise _Problem(HTTPStatus.NOT_FOUND, f"no flow run with id {run_id!r}")
        return run

    # --- JSON --------------------------------------------------------------------------
    def api_runs(self, query: dict[str, list[str]]) -> Any:
        limit = _limit(query, 50) or 1_000_000
        with self._open() as store:
            return [r.to_dict() for r in store.list_flow_runs(limit)]

    def api_run(self, run_id: str) -> Any:
        with self._open() as store:
            run = self._run(store, run_id)
            return {
                "flow_run": run.to_dict(),
                "task_runs": [t.to_dict() for t in store.task_runs(run.id)],
                "logs": [entry.to_dict() for entry in store.logs(run.id)],
            }

    # --- HTML --------------------------------------------------------------------------
    def index(self, query: dict[str, list[str]]) -> str:
        limit = _limit(query, 50) or 1_000_000
        with self._open() as store:
            runs = store.list_flow_runs(limit)
        if not runs:
            return _page("runs", f"<h1>Runs</h1><p>No runs recorded in {_esc(self.path)} yet.</p>")
        now = time.time()
        rows = []
        for r in runs:
            took = _took(r.duration) if r.ended is not None else _took(now - r.started) + "+"
            rows.append(
                f'<tr><td><a href="/runs/{_esc(r.id)}"><code>{_esc(r.short_id)}</code></a></td>'
                f"<td>{_esc(r.flow_name)}</td><td>{_state(r.state)}</td>"
                f'<td>{_when(r.started)}</td><td class="num">{took}</td></tr>'
            )
        body = (
            f"<h1>Runs</h1><p>{len(runs)} most recent, from {_esc(self.path)}</p>"
            "<table><tr><th>ID</th><th>Flow</th><th>State</th><th>Started</th>"
            f"<th>Duration</th></tr>{''.join(rows)}</table>"
        )
        return _page("runs", body, refresh=any(r.state == "Running" for r in runs))

    def run(self, run_id: str, query: dict[str, list[str]]) -> str:
        limit = _limit(query, 500)
        with self._open() as store:
            run = self._run(store, run_id)
            task_runs = store.task_runs(run.id)
            logs = store.logs(run.id)
        parts = [f"<h1>Flow run <code>{_esc(run.short_id)}</code> of {_esc(run.flow_name)}</h1>"]
        info = [
            ("ID", f"<code>{_esc(run.id)}</code>"),
            ("State", _state(run.state)),
            ("Message", _esc(run.message or "")),
            ("Started", _when(run.started)),
            ("Ended", _when(run.ended)),
            ("Duration", _took(run.duration)),
            ("Parameters", f"<code>{_esc(json.dumps(run.parameters))}</code>"),
            ("Process", _esc(f"pid {run.pid} on {run.host}") if run.pid else "-"),
        ]
        if run.resumed_from:
            info.append(
                (
                    "Resumed from",
                    f'<a href="/runs/{_esc(run.resumed_from)}">'
                    f"<code>{_esc(run.resumed_from[:8])}</code></a>",
                )
            )
        counts = Counter(t.state for t in task_runs)
        info.append(
            (
                "Task runs",
                f"{len(task_runs)}: "
                + ", ".join(f"{n} {_state(k)}" for k, n in counts.most_common()),
            )
        )
        parts.append(
            "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in info) + "</table>"
        )
        # One line per task: its own run and its mapped children, by state.
        by_task: dict[int, tuple[str, Counter[str]]] = {}
        for t in task_runs:
            entry = by_task.setdefault(t.task, (t.task_name, Counter()))
            entry[1][t.state] += 1
        parts.append("<h2>Tasks</h2><table><tr><th>Task</th><th>Runs by state</th></tr>")
        for _task, (name, states) in sorted(by_task.items()):
            cells = ", ".join(f"{n} {_state(k)}" for k, n in states.most_common())
            parts.append(f"<tr><td>{_esc(name)}</td><td>{cells}</td></tr>")
        parts.append("</table>")
        failed = [t for t in task_runs if t.state in FAILED_STATES]
        if failed:
            errors = errors_by_run(logs)
            parts.append(f"<h2>Failures ({len(failed)})</h2>")
            for t in failed[:50]:
                tries = f"{t.run_count} attempt{'s' if t.run_count != 1 else ''}"
                parts.append(
                    f"<h3>{_esc(t.full_name)} {_state(t.state)} after {tries}</h3>"
                    f"<p>{_esc(t.message or '')}</p>"
                )
                for message in errors.get(t.run, []):
                    parts.append(f"<pre>{_esc(message)}</pre>")
            if len(failed) > 50:
                parts.append(f"<p>... {len(failed) - 50} more failed task runs</p>")
        shown = task_runs if limit == 0 else task_runs[:limit]
        parts.append(
            "<h2>Task runs</h2><table><tr><th>Run</th><th>Task</th><th>Map</th>"
            "<th>State</th><th>Tries</th><th>Took</th><th>Message</th></tr>"
        )
        for t in shown:
            parts.append(
                f'<tr><td class="num">{t.run}</td><td>{_esc(t.task_name)}</td>'
                f'<td class="num">{"-" if t.map_index is None else t.map_index}</td>'
                f'<td>{_state(t.state)}</td><td class="num">{t.run_count}</td>'
                f'<td class="num">{_took(t.duration)}</td><td>{_esc(t.message or "")}</td></tr>'
            )
        parts.append("</table>")
        if len(shown) < len(task_runs):
            parts.append(
                f'<p>{len(task_runs) - len(shown)} more: <a href="/runs/{_esc(run.id)}?limit=0">'
                "show all</a></p>"
            )
        return _page(f"run {run.short_id}", "".join(parts), refresh=run.state == "Running")


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        parts = [unquote(p) for p in url.path.split("/") if p]
        views = self.server.views
        try:
            if parts == []:
                self._send(HTTPStatus.OK, "text/html", views.index(query))
            elif len(parts) == 2 and parts[0] == "runs":
                self._send(HTTPStatus.OK, "text/html", views.run(parts[1], query))
            elif parts == ["api", "runs"]:
                self._json(HTTPStatus.OK, views.api_runs(query))
            elif len(parts) == 3 and parts[:2] == ["api", "runs"]:
                self._json(HTTPStatus.OK, views.api_run(parts[2]))
            else:
                raise _Problem(HTTPStatus.NOT_FOUND, f"nothing at {url.path}")
        except _Problem as problem:
            self._error(problem.status, str(problem), parts)
        except FerroflowError as err:  # a damaged, locked or newer store, an ambiguous id
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(err), parts)

    def _error(self, status: HTTPStatus, message: str, parts: list[str]) -> None:
        if parts[:1] == ["api"]:
            self._json(status, {"error": message})
        else:
            body = f"<h1>{status.value} {_esc(status.phrase)}</h1><p>{_esc(message)}</p>"
            self._send(status, "text/html", _page(status.phrase, body))

    def _json(self, status: HTTPStatus, value: Any) -> None:
        self._send(status, "application/json", json.dumps(value, default=str))

    def _send(self, status: HTTPStatus, kind: str, text: str) -> None:
        data = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", f"{kind}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.quiet:
            return
        super().log_message(format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], views: _Views, quiet: bool) -> None:
        super().__init__(address, _Handler)
        self.views = views
        self.quiet = quiet


class RunStoreUI:
    """A web server showing the run store, read-only.

    Args:
        path: the store file [``$FERROFLOW_HOME/ferroflow.db``].
        host: the address to bind [``127.0.0.1``: this machine only].
        port: the port [8765; 0 picks a free one].
        quiet: do not log each request to stderr.

    Raises:
        OSError: the address cannot be bound (e.g. the port is taken).

    Attributes:
        url: where it serves, e.g. ``http://127.0.0.1:8765/``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 8765,
        quiet: bool = True,
    ) -> None:
        views = _Views(store_path() if path is None else Path(path))
        self._server = _Server((host, port), views, quiet)
        bound_host, bound_port = self._server.server_address[:2]
        name = bound_host.decode() if isinstance(bound_host, bytes) else str(bound_host)
        shown = f"[{name}]" if ":" in name else name
        self.url = f"http://{shown}:{bound_port}/"
        self._thread: threading.Thread | None = None

    def serve_forever(self) -> None:
        """Serve in this thread until :meth:`close` is called (from another thread) or
        the process is interrupted."""
        self._server.serve_forever()

    def start(self) -> str:
        """Serve in a background thread; return :attr:`url`."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, name="ferroflow-ui", daemon=True
            )
            self._thread.start()
        return self.url

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> RunStoreUI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
