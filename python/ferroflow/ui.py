"""The web UI over the local run store: ``ferroflow ui`` (SPEC "Durable runs").

The same pages as the server's UI (:mod:`ferroflow.server.ui`: dashboard, runs with
their schematic, timeline, tasks, failures and logs, flows, agents, each with a JSON
twin), served by uvicorn over the SQLite run store at ``$FERROFLOW_HOME``. The store is
opened on the first request that finds it (until then the pages say there is no store
yet); a damaged or newer store is an error page naming the file, never a crash, and
the file is left untouched. Runs of dead processes on this machine are marked
interrupted, as the command line does.

Served on ``127.0.0.1`` unless told otherwise; on another address the actions (cancel,
approve, ...) are turned off, since nobody signs in.

Serve it from a process that does not itself record runs (``ferroflow ui`` is one): the
UI reads through Python's ``sqlite3`` and the engine writes through the SQLite built into
``ferroflow._native``; two SQLite libraries on one file in one process can drop each
other's file locks (seen as "disk I/O error" under load).

Example:
    >>> from ferroflow.ui import RunStoreUI
    >>> ui = RunStoreUI(port=0)             # any free port on 127.0.0.1
    >>> url = ui.start()                    # serves in a background thread
    >>> url.startswith("http://127.0.0.1:")
    True
    >>> ui.close()
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from ferroflow.store import open_store, store_path

__all__ = ["RunStoreUI", "create_ui_app"]

#: Seconds between two passes marking runs of dead processes interrupted.
FIXUP_INTERVAL = 1.0


class _LocalStore:
    """Opens the run store on demand and keeps it; marks interrupted runs now and then."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db: Any = None
        # The native store, kept open: opening and closing it next to the sqlite3
        # connection of ``db`` (another SQLite library in this process) now and then
        # would drop that connection's file locks.
        self.native: Any = None
        self.lock = threading.Lock()
        self.fixed_at = 0.0

    def __call__(self) -> Any:
        from ferroflow.server.database import SqliteDatabase
        from ferroflow.server.ui import Problem

        with self.lock:
            if self.db is None:
                if not self.path.exists():
                    raise Problem(404, f"there is no run store at {self.path} yet")
                self.native = open_store(self.path)
                self.db = SqliteDatabase(self.path)
            now = time.monotonic()
            if now - self.fixed_at >= FIXUP_INTERVAL:
                self.fixed_at = now
                self.native.fixup_interrupted()
            return self.db

    def close(self) -> None:
        with self.lock:
            if self.db is not None:
                self.db.close()
                self.db = None
            if self.native is not None:
                self.native.close()
                self.native = None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_ui_app(path: str | os.PathLike[str] | None = None, read_only: bool = False) -> Any:
    """The UI's ASGI app (Starlette) over the run store at ``path`` [the default
    store]; its ``state.store`` closes the store (``app.state.store.close()``)."""
    from starlette.applications import Starlette

    from ferroflow.server import ui

    store = _LocalStore(store_path() if path is None else Path(path))
    app = Starlette(routes=[ui.mount(store, read_only=read_only)])
    app.state.store = store
    return app


class RunStoreUI:
    """A web server showing the run store (the UI of :mod:`ferroflow.server.ui`).

    Args:
        path: the store file [``$FERROFLOW_HOME/ferroflow.db``].
        host: the address to bind [``127.0.0.1``: this machine only; on another
            address the actions are turned off].
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
        import uvicorn

        self.app = create_ui_app(path, read_only=not _loopback(host))
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((host, port))
            self._sock.listen(128)
        except OSError:
            self._sock.close()
            raise
        bound_host, bound_port = self._sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in str(bound_host) else str(bound_host)
        self.url = f"http://{shown}:{bound_port}/"
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=not quiet,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def serve_forever(self) -> None:
        """Serve in this thread until :meth:`close` is called (from another thread) or
        the process is interrupted (Ctrl-C ends it cleanly)."""
        self._server.run(sockets=[self._sock])

    def start(self) -> str:
        """Serve in a background thread; return :attr:`url` once it answers."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self.serve_forever, name="ferroflow-ui", daemon=True
            )
            self._thread.start()
            deadline = time.monotonic() + 30
            while not self._server.started and self._thread.is_alive():
                if time.monotonic() > deadline:
                    raise TimeoutError("the UI server did not start within 30 s")
                time.sleep(0.01)
        return self.url

    def close(self) -> None:
        """Stop serving, release the port and close the store."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self._sock.close()
        self.app.state.store.close()

    def __enter__(self) -> RunStoreUI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
