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
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ferroflow.exceptions import FerroflowError
from ferroflow.server import models, ui
from ferroflow.server.api import make_schema
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


def execute(
    db: Database,
    query: str,
    variables: dict[str, Any] | None = None,
    operation_name: str | None = None,
) -> dict[str, Any]:
    """Run one GraphQL operation against ``db``; the response as a dict (``data`` and,
    when something went wrong, ``errors`` with readable messages only)."""
    result = _SCHEMA.execute_sync(
        query, variable_values=variables, operation_name=operation_name, context_value={"db": db}
    )
    out: dict[str, Any] = {"data": result.data}
    if result.errors:
        out["errors"] = [
            {"message": _message(e), **({"path": e.path} if e.path else {})} for e in result.errors
        ]
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
        return JSONResponse(execute(db, payload["query"], variables, op if op else None))

    async def graphql_route(request: Request) -> Response:
        if request.method != "POST":
            return _error('send GraphQL as POST with a JSON body {"query": "..."}', 405)
        body = await request.body()
        return await run_in_threadpool(graphql, request, body)

    def ingest(body: bytes) -> Response:
        import msgpack

        try:
            batch = msgpack.unpackb(body, raw=False)
        except (ValueError, msgpack.UnpackException):
            return _error("an ingest batch must be msgpack", 400)
        if not isinstance(batch, dict):
            return _error("an ingest batch must be a msgpack map", 400)
        local = batch.get("store_path")
        if (
            isinstance(db, SqliteDatabase)
            and isinstance(local, str)
            and batch.get("host") == socket.gethostname()
            and os.path.realpath(local) == os.path.realpath(db.path)
        ):
            # The run writes into this very store: it is here already.
            return JSONResponse({"same_store": True})
        try:
            return JSONResponse(models.ingest(db, batch))
        except (FerroflowError, KeyError, TypeError, ValueError) as exc:
            return _error(f"bad ingest batch: {exc}", 400)

    async def ingest_route(request: Request) -> Response:
        body = await request.body()
        return await run_in_threadpool(ingest, body)

    def health(request: Request) -> Response:
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

    app = Starlette(
        exception_handlers={Exception: unexpected},
        routes=[
            Route("/graphql", graphql_route, methods=["GET", "POST"]),
            Route("/health", health),
            Route("/ingest", ingest_route, methods=["POST"]),
            ui.mount(lambda: db),
        ],
    )
    app.add_middleware(BodyLimit)
    app.state.db = db
    return app
