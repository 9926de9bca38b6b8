"""The ferroflow server: one process serving the GraphQL API over the run store.

``ferroflow server start [--host 127.0.0.1] [--port 4200] [--database-url URL]`` runs
:func:`serve`: Starlette on uvicorn, with

- ``/graphql``: the API (:mod:`ferroflow.server.api`, strawberry);
- ``/health``: ``{"status": "ok", "database": ..., "schema_version": ...}``;
- ``/``: the UI mount point (a placeholder page listing runs for now);
- ``/signin`` (a token for a session cookie) and ``/signout``
  (:mod:`~ferroflow.server.auth`);
- the scheduler service in a background thread (:mod:`~ferroflow.server.services`):
  every few seconds it creates the coming runs of every active schedule.

Layers, each importing only those below it:

- :mod:`~ferroflow.server.app`: routes, limits, error shaping (no SQL);
- :mod:`~ferroflow.server.api`: the GraphQL types and thin resolvers;
- :mod:`~ferroflow.server.models`: the queries per table and their rules;
- :mod:`~ferroflow.server.database`: the SQLite and PostgreSQL dialects and migrations.

The store is the SQLite run store at ``$FERROFLOW_HOME`` by default (so every local
``flow.run()`` shows up), or PostgreSQL with ``--database-url postgresql://...`` (or
``FERROFLOW_DATABASE_URL``). With no API token in the store the server binds loopback
only (another address is refused before any socket is opened) and answers only this
machine; once a token exists every request needs one (:mod:`~ferroflow.server.auth`).
``--ssl-certfile``/``--ssl-keyfile`` serve HTTPS.

This package needs the ``server`` extra (``pip install ferroflow[server]``);
``import ferroflow`` does not import it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import sys
from collections.abc import Iterator
from typing import Any

from ferroflow.exceptions import PlatformError

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_LEASE_TIMEOUT",
    "DEFAULT_PORT",
    "check_host",
    "lease_timeout",
    "serve",
]

#: Where the server listens by default.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200

#: Seconds without a heartbeat after which a run held by an agent is lost.
DEFAULT_LEASE_TIMEOUT = 30.0


def check_host(host: str, have_tokens: bool = False) -> None:
    """Refuse an address that is not loopback (PlatformError) while the server has no
    API token: until then, only this machine may talk to it."""
    if have_tokens or host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise PlatformError(
            f"refusing to serve on {host}: the server has no API tokens, so it accepts only "
            "this machine. Create an admin token first ('ferroflow tokens create --name "
            "admin --role admin'), or use --host 127.0.0.1 (the default)"
        )


def _scheduler_interval(given: float | None) -> float:
    import math
    import os

    from ferroflow.server.services import DEFAULT_SCHEDULER_INTERVAL

    if given is None:
        text = os.environ.get("FERROFLOW_SCHEDULER_INTERVAL")
        if not text:
            return DEFAULT_SCHEDULER_INTERVAL
        try:
            given = float(text)
        except ValueError:
            given = math.nan
    if not math.isfinite(given) or given < 0:
        raise PlatformError(
            f"the scheduler interval must be a number of seconds >= 0 (0: no scheduler), "
            f"got {given!r}"
        )
    return float(given)


def _env_seconds(name: str) -> float | None:
    """``$name`` as seconds >= 0, None when unset; PlatformError when malformed."""
    import math
    import os

    text = os.environ.get(name)
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise PlatformError(f"{name} must be a number of seconds >= 0, got {text!r}")
    return value


def lease_timeout() -> float:
    """How long a run held by an agent may go without a heartbeat before it is lost, in
    seconds: ``$FERROFLOW_LEASE_TIMEOUT``, else :data:`DEFAULT_LEASE_TIMEOUT`. 0 turns
    leases off: the server runs no lost-run monitor and an agent never stops a run for
    want of a renewal. The server and the agents read the same setting.

    Raises:
        PlatformError: a value that is not a number of seconds >= 0.

    Example:
        >>> lease_timeout() >= 0
        True
    """
    lease = _env_seconds("FERROFLOW_LEASE_TIMEOUT")
    return DEFAULT_LEASE_TIMEOUT if lease is None else lease


def _check_tls(certfile: str | None, keyfile: str | None) -> None:
    """Refuse a key without a certificate, or files that cannot be read (PlatformError)."""
    import os

    if keyfile and not certfile:
        raise PlatformError("--ssl-keyfile needs --ssl-certfile (the certificate it signs)")
    for what, path in (("certificate", certfile), ("key", keyfile)):
        if path and not os.access(path, os.R_OK):
            raise PlatformError(f"cannot read the TLS {what} {path}")


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    database_url: str | None = None,
    *,
    ready: Any = None,
    scheduler_interval: float | None = None,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
) -> None:
    """Open the database and serve until SIGINT or SIGTERM (then stop cleanly: finish
    the requests in flight, close the database).

    Args:
        host: a loopback address [127.0.0.1].
        port: the port; 0 picks a free one.
        database_url: ``postgresql://...`` or ``sqlite:///path``; None:
            ``$FERROFLOW_DATABASE_URL``, else the run store at ``$FERROFLOW_HOME``.
        ready: called with the URL once the server listens [print it on stdout].
        scheduler_interval: seconds between two passes of the scheduler service
            (:class:`~ferroflow.server.services.Scheduler`), 0 to not run it
            [``$FERROFLOW_SCHEDULER_INTERVAL``, else 5].
        ssl_certfile: serve HTTPS with this certificate (PEM; with ``ssl_keyfile``).
        ssl_keyfile: the certificate's private key (PEM).

    With ``$FERROFLOW_RETENTION`` (e.g. ``30d``) it also runs the retention service
    (:class:`~ferroflow.server.retention.Retention`: ``$FERROFLOW_RETENTION_STATES``,
    ``$FERROFLOW_RETENTION_INTERVAL``). The notification service
    (:class:`~ferroflow.server.notify.Notifier`) always runs.

    Raises:
        PlatformError: a host that is not loopback while the store has no API token
            (decided before any socket is opened), a bad scheduler interval or lease
            timeout, a key without a certificate or an unreadable one.
        OpsError: a malformed retention setting.
    """
    import uvicorn

    from ferroflow.server.app import create_app
    from ferroflow.server.auth import tokens_exist
    from ferroflow.server.database import open_database

    interval = _scheduler_interval(scheduler_interval)
    lease = lease_timeout()
    _check_tls(ssl_certfile, ssl_keyfile)
    from ferroflow.server.retention import retention_from_env

    retention = retention_from_env()
    db = open_database(database_url)
    try:
        check_host(host, tokens_exist(db))
    except BaseException:
        db.close()
        raise
    scheme = "https" if ssl_certfile else "http"

    def announce(url: str) -> None:
        print(f"ferroflow server at {url} (database: {db.url}); Ctrl-C to stop", flush=True)

    on_ready = ready or announce

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises SIGINT/SIGTERM after its graceful shutdown; a stop by
            # signal is the normal way to end the server, so it exits 0 instead.
            with super().capture_signals():
                try:
                    yield
                finally:
                    self._captured_signals.clear()

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.should_exit:
                return
            bound = self.servers[0].sockets[0].getsockname() if self.servers else (host, port)
            shown = f"[{host}]" if ":" in host else host
            on_ready(f"{scheme}://{shown}:{bound[1]}")

    config = uvicorn.Config(
        create_app(db),
        host=host,
        port=port,
        log_level="warning",
        lifespan="off",
        access_log=False,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )
    loop = None
    if interval:
        from ferroflow.server.services import Scheduler, ServiceLoop

        loop = ServiceLoop(Scheduler(db), interval, name="ferroflow-scheduler")
        loop.start()
    lost = None
    if lease:
        from ferroflow.server.services import LostRuns, ServiceLoop

        lost = ServiceLoop(LostRuns(db, lease), max(lease / 4, 0.1), name="ferroflow-lost-runs")
        lost.start()
    from ferroflow.server.notify import notifier_from_env
    from ferroflow.server.services import ServiceLoop

    notifier, every_notify = notifier_from_env(db)
    extra = [ServiceLoop(notifier, every_notify, name="ferroflow-notify")]
    if retention is not None:
        from ferroflow.server.retention import Retention

        older, states, every = retention
        extra.append(ServiceLoop(Retention(db, older, states), every, name="ferroflow-retention"))
    for service in extra:
        service.start()
    try:
        _Server(config).run()
    finally:
        for service in extra:
            service.stop()
        if lost is not None:
            lost.stop()
        if loop is not None:
            loop.stop()
        db.close()
        sys.stdout.flush()
