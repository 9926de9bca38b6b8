"""A real PostgreSQL for the tests: ``initdb`` into a temp dir, ``postgres`` on a free
port of 127.0.0.1 with its socket in the same dir, stopped at the end of the session.

Debian's ``postgresql`` package provides the binaries (``make sysdeps`` installs it).
PostgreSQL refuses to run as root; under root ``initdb`` and ``postgres`` run as the
unprivileged ``postgres`` user (``Popen(user=...)``, so signals reach the server itself),
owning the temp dir. No mocks.

Use the session fixture ``postgres_server`` (re-exported by ``conftest.py``) and
:func:`fresh_database` for an empty database per test.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

#: How long PostgreSQL may take to start, in seconds.
START_TIMEOUT = 60


def pg_bin_dir() -> Path:
    """The newest ``/usr/lib/postgresql/*/bin`` (Debian's layout), else the dir of
    ``initdb`` on PATH."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise RuntimeError(
        "PostgreSQL is not installed: run 'make sysdeps' (or apt-get install -y postgresql)"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    """A running PostgreSQL: where it listens and who owns it."""

    port: int
    socket_dir: Path
    user: str
    process: subprocess.Popen[bytes]
    log: Path

    def url(self, dbname: str = "postgres") -> str:
        """A libpq URL of database ``dbname`` over TCP on 127.0.0.1."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """Create an empty database; its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _as_user(user: str | None) -> dict[str, Any]:
    """Popen arguments that run the child as ``user`` (itself, so signals reach it)."""
    return {} if user is None else {"user": user, "group": user, "extra_groups": []}


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """Start a private PostgreSQL for the session; stop it (fast shutdown) at the end."""
    with start_postgres() as server:
        yield server


@contextmanager
def start_postgres() -> Iterator[PostgresServer]:
    """Start a private PostgreSQL in a temp dir; stop it and remove the dir at the end
    (the fixture's body, usable from a benchmark script too)."""
    bin_dir = pg_bin_dir()
    run_as = "postgres" if os.geteuid() == 0 else None
    with tempfile.TemporaryDirectory(prefix="ferroflow-pg-") as tmp:
        root = Path(tmp)
        data, sock = root / "data", root / "sock"
        sock.mkdir()
        if run_as is not None:
            shutil.chown(root, run_as)
            shutil.chown(sock, run_as)
            root.chmod(0o755)
        user = run_as or _current_user()
        subprocess.run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                user,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ],
            check=True,
            capture_output=True,
            cwd=root,
            **_as_user(run_as),
        )
        port = free_port()
        log = (root / "postgres.log").open("wb")
        process = subprocess.Popen(
            [
                str(bin_dir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={sock}",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=50",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd=root,
            **_as_user(run_as),
        )
        server = PostgresServer(
            port=port, socket_dir=sock, user=user, process=process, log=root / "postgres.log"
        )
        try:
            _wait_ready(server)
            yield server
        finally:
            process.send_signal(signal.SIGINT)  # "fast" shutdown: ends open sessions
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()


def _current_user() -> str:
    import getpass

    return getpass.getuser()


def _wait_ready(server: PostgresServer) -> None:
    import psycopg

    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if server.process.poll() is not None:
            err = server.log.read_text(errors="replace")
            raise RuntimeError(f"PostgreSQL did not start: {err}")
        try:
            with psycopg.connect(server.url(), connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
