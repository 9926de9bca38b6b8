"""The ASGI app (Starlette): ``/graphql``, ``/health`` and the UI mount point ``/``.

``/graphql`` takes ``POST`` with a JSON body ``{"query", "variables", "operationName"}``
and always answers a GraphQL response: ``{"data": ..., "errors": [{"message": ...}]}``.
A body over :data:`MAX_BODY_BYTES` (413), a body that is not JSON or has no query
(400), a query over the limits of :mod:`ferroflow.server.api`, bad input and unknown
ids all come back as GraphQL errors with a readable message; an unexpected exception
is logged on the server and answered with a one-line message, never a traceback.

``/ingest`` takes the batches a local run streams when ``FERROFLOW_API_URL`` is set
(:mod:`ferroflow.reporting`): msgpack, at most :data:`MAX_INGEST_BYTES`, acknowledged with
the last local journal seq and log rowid stored.

``/`` is the UI (:mod:`ferroflow.server.ui`): every other path is one of its pages.

Every route is behind :class:`ferroflow.server.auth.AuthMiddleware`: with no API token
defined only this machine's clients are answered; once one exists every request needs
one (``Authorization: Bearer``, or the session cookie of ``POST /signin``), and
:func:`execute` checks every top-level field against the token's role before anything
runs and writes every mutation to the audit log.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from typing import Any

from graphql import GraphQLError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ferroflow.exceptions import AuthenticationError, FerroflowError, ForbiddenError
from ferroflow.server import auth, models, ui
from ferroflow.server.api import MAX_TOKENS, make_schema
from ferroflow.server.database import Database, SqliteDatabase

__all__ = ["MAX_BODY_BYTES", "MAX_INGEST_BYTES", "BodyLimit", "create_app", "execute"]

#: The largest request body accepted, in bytes (GraphQL).
MAX_BODY_BYTES = 1 << 20

#: The largest ingest batch accepted, in bytes (a streamed run's journal).
MAX_INGEST_BYTES = 64 << 20

log = logging.getLogger("ferroflow.server")


def _error(message: str, status: int = 200) -> JSONResponse:
    return JSONResponse({"data": None, "errors": [{"message": message}]}, status_code=status)


class BodyLimit:
    """ASGI middleware: refuse a request body over ``limit`` bytes (``ingest_limit`` on
    ``/ingest``) with 413 and a GraphQL error, whether it declares its length or
    streams it."""

    def __init__(
        self, app: ASGIApp, limit: int = MAX_BODY_BYTES, ingest_limit: int = MAX_INGEST_BYTES
    ) -> None:
        self.app = app
        self.default_limit = limit
        self.ingest_limit = ingest_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the declared length, then count what is received."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.ingest_limit if scope.get("path") == "/ingest" else self.default_limit
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await self._drain(receive, int(value))
                await self._refuse(scope, receive, send, limit)
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._refuse(scope, receive, send, limit)

    @staticmethod
    async def _drain(receive: Receive, declared: int) -> None:
        """Read (and drop) a body of moderate size before refusing it, so that the client
        gets the answer instead of a broken pipe; a huge one is cut off."""
        if declared > 4 * MAX_INGEST_BYTES:
            return
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body"):
                return

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = _error(f"the request body is larger than {limit} bytes", 413)
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


def _message(err: GraphQLError) -> str:
    original = err.original_error
    if original is None or isinstance(original, (FerroflowError, GraphQLError)):
        return err.message
    log.error("unexpected error in %s", err.path, exc_info=original)
    return f"internal server error ({type(original).__name__}); the server log has the details"


def _code(err: GraphQLError) -> dict[str, Any]:
    original = err.original_error
    if isinstance(original, ForbiddenError):
        return {"extensions": {"code": "FORBIDDEN"}}
    if isinstance(original, AuthenticationError):
        return {"extensions": {"code": "UNAUTHENTICATED"}}
    return {}


#: Mutations not written to the audit log when they succeed: an agent's polls and lease
#: renewals, every few seconds per agent, and the task-slot requests of tagged tasks
#: would be most of it (refused ones are).
UNAUDITED = frozenset(
    {"heartbeat", "get_runs_in_queue", "acquire_task_slots", "release_task_slots"}
)


def _audit(
    db: Database,
    fields: list[tuple[str, str, str]],
    data: dict[str, Any],
    failed: dict[str, tuple[str, str]],
    written: list[str],
) -> None:
    """One audit line per top-level mutation field run or refused, unless its resolver
    audited itself (with its target and details): failed ones with the reason."""
    mutations = [(name, key) for kind, name, key in fields if kind == "mutation"]
    for name, key in mutations:
        if name == "__typename":
            continue
        if key in failed:
            outcome, message = failed[key]
            models.audit(db, name, None, {"outcome": outcome, "message": message[:500]})
        elif key in data and name not in UNAUDITED and not (len(mutations) == 1 and written):
            models.audit(db, name, None, {"outcome": "ok"})


def execute(
    db: Database,
    query: str,
    variables: dict[str, Any] | None = None,
    operation_name: str | None = None,
    *,
    principal: auth.Principal | None = None,
    address: str | None = None,
) -> dict[str, Any]:
    """Run one GraphQL operation against ``db`` as ``principal`` (None: open mode, no
    role checks) from ``address``; the response as a dict (``data`` and, when something
    went wrong, ``errors`` with readable messages only). Every top-level field is checked
    against :data:`ferroflow.server.auth.PERMISSIONS` before anything runs; every
    mutation is written to the audit log."""
    try:
        fields = auth.operation_fields(query, MAX_TOKENS)
    except GraphQLError as exc:  # not run at all: nothing to check, nothing to audit
        return {"data": None, "errors": [{"message": exc.message}]}
    actor = principal.name if principal is not None else "anonymous"
    with models.acting_as(actor, address) as written:
        try:
            auth.check_operation(fields, principal)
        except ForbiddenError as exc:
            refused = {k: ("forbidden", str(exc)) for kind, _n, k in fields if kind == "mutation"}
            _audit(db, fields, {}, refused, [])
            return {
                "data": None,
                "errors": [{"message": str(exc), "extensions": {"code": "FORBIDDEN"}}],
            }
        result = _SCHEMA.execute_sync(
            query,
            variable_values=variables,
            operation_name=operation_name,
            context_value={"db": db, "principal": principal, "address": address},
        )
        out: dict[str, Any] = {"data": result.data}
        failed: dict[str, tuple[str, str]] = {}
        if result.errors:
            out["errors"] = [
                {"message": _message(e), **({"path": e.path} if e.path else {}), **_code(e)}
                for e in result.errors
            ]
            for e in result.errors:
                if e.path:
                    forbidden = isinstance(e.original_error, ForbiddenError)
                    failed[str(e.path[0])] = ("forbidden" if forbidden else "error", e.message)
        if result.data is not None or failed:
            _audit(db, fields, result.data or {}, failed, written)
    return out


_SCHEMA = make_schema()


def create_app(db: Database) -> Starlette:
    """The server's ASGI app over ``db``."""

    def graphql(request: Request, body: bytes) -> Response:
        try:
            payload = json.loads(body)
        except ValueError:
            return _error('the request body is not JSON: send {"query": "..."}', 400)
        if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
            return _error("the request needs a JSON object with a 'query' string", 400)
        variables = payload.get("variables")
        if variables is not None and not isinstance(variables, dict):
            return _error("'variables' must be a JSON object", 400)
        op = payload.get("operationName")
        return JSONResponse(
            execute(
                db,
                payload["query"],
                variables,
                op if op else None,
                principal=auth.principal_of(request),
                address=request.client.host if request.client else None,
            )
        )

    async def graphql_route(request: Request) -> Response:
        if request.method != "POST":
            return _error('send GraphQL as POST with a JSON body {"query": "..."}', 405)
        body = await request.body()
        return await run_in_threadpool(graphql, request, body)

    def ingest(request: Request, body: bytes) -> Response:
        import msgpack

        try:
            batch = msgpack.unpackb(body, raw=False)
        except (ValueError, msgpack.UnpackException):
            return _error("an ingest batch must be msgpack", 400)
        if not isinstance(batch, dict):
            return _error("an ingest batch must be a msgpack map", 400)
        principal = auth.principal_of(request)
        if principal is not None and principal.role == "runner":
            run = batch.get("flow_run")
            run_id = run.get("id") if isinstance(run, dict) else None
            try:
                auth.require_run(db, principal, str(run_id))
            except FerroflowError as exc:
                return _error(str(exc), 403)
        local = batch.get("store_path")
        if (
            isinstance(db, SqliteDatabase)
            and isinstance(local, str)
            and batch.get("host") == socket.gethostname()
            and os.path.realpath(local) == os.path.realpath(db.path)
        ):
            # The run writes into this very store: it is here already.
            return JSONResponse({"same_store": True})
        actor = principal.name if principal is not None else "anonymous"
        try:
            with models.acting_as(actor, request.client.host if request.client else None):
                return JSONResponse(models.ingest(db, batch))
        except (FerroflowError, KeyError, TypeError, ValueError) as exc:
            return _error(f"bad ingest batch: {exc}", 400)

    async def ingest_route(request: Request) -> Response:
        body = await request.body()
        return await run_in_threadpool(ingest, request, body)

    def health(request: Request) -> Response:
        if not request.state.open_mode and auth.principal_of(request) is None:
            return JSONResponse({"status": "ok"})  # the details are for signed-in callers
        return JSONResponse(
            {
                "status": "ok",
                "database": db.dialect,
                "url": db.url,
                "schema_version": db.schema_version(),
            }
        )

    def unexpected(request: Request, exc: Exception) -> Response:
        log.error("unexpected error on %s", request.url.path, exc_info=exc)
        if isinstance(exc, FerroflowError):
            return _error(str(exc), 503)
        return _error(
            f"internal server error ({type(exc).__name__}); the server log has the details", 500
        )

    the_ui = ui.UI(lambda: db)
    app = Starlette(
        exception_handlers={Exception: unexpected},
        routes=[
            Route("/graphql", graphql_route, methods=["GET", "POST"]),
            Route("/health", health),
            Route("/ingest", ingest_route, methods=["POST"]),
            *auth.signin_routes(db, page=the_ui.signin_page),
            Mount("/", routes=the_ui.routes()),
        ],
    )
    app.add_middleware(auth.AuthMiddleware, db=db)
    app.add_middleware(BodyLimit)
    app.state.db = db
    return app
