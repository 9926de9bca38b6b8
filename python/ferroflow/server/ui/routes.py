"""The UI's routes, all through one dispatcher (:meth:`UI.endpoint`): it checks that
the request may do what the route does (:meth:`UI.authorize`, the one place a role
check goes), opens the database, runs the view in a worker thread, and answers HTML
(the template) or JSON (``?format=json``, an ``Accept: application/json`` request, or
the same path under ``/api``). Actions (cancel, resume, approve, run, schedule on/off)
are POST forms that redirect back to the page they came from with a notice or an
error in the URL, so the result can be shared and reloaded safely.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from markupsafe import Markup
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from ferroflow.exceptions import ApiError, ApprovalError, FerroflowError
from ferroflow.server import auth, models
from ferroflow.server.database import Database
from ferroflow.server.ui import admin, views

__all__ = ["ADMIN", "READ", "UI", "WRITE", "Problem"]

log = logging.getLogger("ferroflow.server.ui")

#: What a route does, for :meth:`UI.authorize`: read pages, change something, or see
#: and change what only admins may (tokens, secrets, the audit log).
READ, WRITE, ADMIN = "read", "write", "admin"

_HERE = Path(__file__).parent
_STATIC = _HERE / "static"


class Problem(Exception):
    """A request the UI cannot answer: an HTTP status and a readable reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


View = Callable[[Request, Database], Any]


def _env() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_HERE / "templates")),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["tojson_compact"] = lambda v: json.dumps(v, default=str)
    return env


class UI:
    """The UI over one database.

    Args:
        get_db: returns the database for a request (may raise :class:`Problem`, e.g.
            404 when there is no store yet).
        read_only: refuse every action (403), e.g. when served on a non-loopback
            address without sign-in.
        title: shown in the page header.
    """

    def __init__(
        self,
        get_db: Callable[[], Database],
        *,
        read_only: bool = False,
        title: str = "ferroflow",
    ) -> None:
        self.get_db = get_db
        self.read_only = read_only
        self.title = title
        self.env = _env()

    # ---------------------------------------------------------------- the dispatcher
    def authorize(self, request: Request, action: str) -> None:
        """Refuse a request that may not do ``action`` (:data:`READ` or :data:`WRITE`):
        the one place where roles are checked: writes are refused when the UI is
        read-only or the signed-in token's role is neither ``user`` nor ``admin``, and a
        POST must come from a page of this UI (same origin; a session's form also
        carries its CSRF token, checked by :class:`~ferroflow.server.auth.AuthMiddleware`).
        Reads need a signed-in reader once tokens exist (the middleware's rule).
        :data:`ADMIN` pages and actions need an ``admin`` token (or open mode, this
        machine), and are refused in a read-only UI."""
        if action == READ:
            return
        principal = auth.principal_of(request)
        if action == ADMIN:
            if self.read_only:
                raise Problem(403, "this UI is read-only: the admin pages are turned off")
            if principal is None and not _open_mode(request):
                raise Problem(403, "forbidden: sign in with an admin token")
            if principal is not None and principal.role not in auth.ADMINS:
                raise Problem(
                    403,
                    f"forbidden: token {principal.name!r} (role {principal.role}) is not an "
                    "admin: tokens, secrets and the audit log are for admin tokens",
                )
        elif self.read_only:
            raise Problem(403, "this UI is read-only: actions are turned off")
        elif principal is not None and principal.role not in auth.USERS:
            raise Problem(
                403,
                f"forbidden: token {principal.name!r} (role {principal.role}) may only read",
            )
        origin = request.headers.get("origin")
        if origin and origin != "null":
            host = request.headers.get("host", "")
            if origin.split("://", 1)[-1] != host:
                raise Problem(403, f"refused a form posted from another site ({origin})")

    def endpoint(
        self, view: View, template: str | None, action: str = READ, json_only: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        """The ASGI endpoint of a route: authorize, run ``view`` in a thread with the
        database, and render ``template`` with what it returns (or JSON)."""

        async def handle(request: Request) -> Response:
            as_json = json_only or _wants_json(request)
            try:
                self.authorize(request, action)
                form: dict[str, str] = {}
                if request.method == "POST":
                    form = _form(await request.body(), request.headers.get("content-type"))
                request.state.form = form
                result = await run_in_threadpool(self._call, view, request)
            except Problem as p:
                return self.error(request, p.status, str(p), as_json)
            except ApprovalError as e:
                return self.error(request, 400, str(e), as_json)
            except ApiError as e:
                status = 404 if str(e).startswith("no ") else 400
                return self.error(request, status, str(e), as_json)
            except FerroflowError as e:  # a damaged, locked or newer store
                return self.error(request, 503, str(e), as_json)
            if isinstance(result, Response):
                return result
            status = 200
            if isinstance(result, tuple):
                result, status = result
            if as_json:
                return JSONResponse(
                    json.loads(json.dumps(result, default=str)),
                    status_code=status,
                    headers={"Cache-Control": "no-store"},
                )
            assert template is not None
            return self.render(request, template, result, status)

        return handle

    def _call(self, view: View, request: Request) -> Any:
        db = self.get_db()
        principal = auth.principal_of(request)
        actor = principal.name if principal is not None else "anonymous"
        address = request.client.host if request.client else None
        with models.acting_as(actor, address):  # what the view changes is audited as theirs
            return view(request, db)

    def is_admin(self, request: Request) -> bool:
        """Whether the request may see the admin pages (for the navigation)."""
        if self.read_only:
            return False
        principal = auth.principal_of(request)
        if principal is None:
            return _open_mode(request)
        return principal.role in auth.ADMINS

    def render(self, request: Request, template: str, data: Any, status: int = 200) -> Response:
        """An HTML page: ``template`` with the view's data as ``d``."""
        q = dict(request.query_params)
        page = self.env.get_template(template).render(
            d=data,
            q=q,
            path=request.url.path,
            title=self.title,
            read_only=self.read_only,
            admin=self.is_admin(request),
            csrf=auth.csrf_token(request),
            signout=Markup(auth.signout_form(request)),
            url_with=lambda **kw: _url_with(request, **kw),
            notice=q.get("notice"),
            error=q.get("error"),
        )
        return HTMLResponse(page, status_code=status, headers={"Cache-Control": "no-store"})

    def error(self, request: Request, status: int, message: str, as_json: bool) -> Response:
        """An error page (or ``{"error": message}``)."""
        if as_json:
            return JSONResponse({"error": message}, status_code=status)
        page = self.env.get_template("error.html").render(
            status=status,
            message=message,
            title=self.title,
            q={},
            path=request.url.path,
            read_only=self.read_only,
            admin=self.is_admin(request),
            notice=None,
            error=None,
        )
        return HTMLResponse(page, status_code=status)

    def signin_page(self, request: Request, message: str, next_path: str, status: int) -> Response:
        """The sign-in page in the UI's layout (for :func:`ferroflow.server.auth.
        signin_routes`): a token field, ``next`` kept, ``message`` as the error."""
        page = self.env.get_template("signin.html").render(
            title=self.title,
            q={},
            path=request.url.path,
            read_only=self.read_only,
            admin=False,
            notice=None,
            error=None,
            message=message,
            next_path=next_path,
        )
        return HTMLResponse(page, status_code=status, headers={"Cache-Control": "no-store"})

    # -------------------------------------------------------------------- the routes
    def routes(self) -> list[BaseRoute]:
        """Every UI route (HTML pages, their ``/api`` JSON twins, actions, static
        files, and a 404 for anything else)."""
        pages: list[tuple[str, View, str]] = [
            ("/", lambda r, db: views.dashboard(db, r.query_params), "dashboard.html"),
            ("/runs", lambda r, db: views.runs_page(db, r.query_params), "runs.html"),
            (
                "/runs/{run_id}",
                lambda r, db: views.run_page(db, r.path_params["run_id"], r.query_params),
                "run.html",
            ),
            (
                "/runs/{run_id}/task-runs/{run:int}",
                lambda r, db: views.task_run_page(
                    db, r.path_params["run_id"], r.path_params["run"]
                ),
                "task_run.html",
            ),
            ("/flows", lambda r, db: views.flows_page(db, r.query_params), "flows.html"),
            (
                "/flows/{flow_id}",
                lambda r, db: views.flow_page(db, r.path_params["flow_id"]),
                "flow.html",
            ),
            (
                "/local-flows/{name}",
                lambda r, db: views.local_flow_page(db, r.path_params["name"]),
                "local_flow.html",
            ),
            ("/agents", lambda r, db: views.agents_page(db, r.query_params), "agents.html"),
        ]
        out: list[BaseRoute] = []
        for path, view, template in pages:
            out.append(Route(path, self.endpoint(view, template), methods=["GET"]))
            api = "/api" + (path if path != "/" else "/dashboard")
            out.append(Route(api, self.endpoint(view, None, json_only=True), methods=["GET"]))
        # The admin pages: tokens, secrets (names only), the audit log.
        admin_pages: list[tuple[str, View, str]] = [
            ("/tokens", lambda r, db: admin.tokens_page(db, _me(r)), "tokens.html"),
            ("/secrets", lambda r, db: admin.secrets_page(db), "secrets.html"),
            ("/audit", lambda r, db: admin.audit_page(db, r.query_params), "audit.html"),
        ]
        for path, view, template in admin_pages:
            out.append(Route(path, self.endpoint(view, template, ADMIN), methods=["GET"]))
            twin = self.endpoint(view, None, ADMIN, json_only=True)
            out.append(Route("/api" + path, twin, methods=["GET"]))
        admin_actions: list[tuple[str, View, str]] = [
            ("/tokens", self._create_token, "tokens.html"),
            ("/tokens/{name}/revoke", self._revoke_token, "tokens.html"),
            ("/secrets", self._set_secret, "secrets.html"),
            ("/secrets/{name}/delete", self._delete_secret, "secrets.html"),
        ]
        for path, action, template in admin_actions:
            out.append(Route(path, self.endpoint(action, template, ADMIN), methods=["POST"]))
        live = self.endpoint(
            lambda r, db: views.live(db, r.path_params["run_id"], r.query_params),
            None,
            json_only=True,
        )
        out.append(Route("/runs/{run_id}/live", live, methods=["GET"]))
        actions: list[tuple[str, View]] = [
            ("/runs/{run_id}/cancel", self._cancel),
            ("/runs/{run_id}/resume", self._resume),
            ("/runs/{run_id}/task-runs/{run:int}/approve", self._approve),
            ("/flows/{flow_id}/run", self._run_flow),
            ("/flows/{flow_id}/schedule", self._schedule),
            ("/flows/{flow_id}/backfill", self._backfill),
        ]
        for path, action in actions:
            out.append(Route(path, self.endpoint(action, "flow.html", WRITE), methods=["POST"]))
        out.append(Route("/static/{name}", self._static, methods=["GET"]))
        out.append(Route("/{rest:path}", self._not_found, methods=["GET", "POST"]))
        return out

    async def _static(self, request: Request) -> Response:
        name = request.path_params["name"]
        path = _STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            return self.error(request, 404, f"nothing at {request.url.path}", False)
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return Response(
            path.read_bytes(), media_type=kind, headers={"Cache-Control": "max-age=300"}
        )

    async def _not_found(self, request: Request) -> Response:
        as_json = request.url.path.startswith("/api/") or _wants_json(request)
        return self.error(request, 404, f"nothing at {request.url.path}", as_json)

    # ------------------------------------------------------------- the admin actions
    def _create_token(self, request: Request, db: Database) -> Any:
        return admin.create_token(db, request.state.form, _me(request))

    def _revoke_token(self, request: Request, db: Database) -> Response:
        notice, error = admin.revoke_token(db, request.path_params["name"])
        if error is not None:
            return _back(request, "/tokens", error=error)
        return _back(request, "/tokens", notice=str(notice))

    def _set_secret(self, request: Request, db: Database) -> Any:
        notice, refused = admin.set_secret(db, request.state.form)
        if refused is not None:
            return refused
        return _back(request, "/secrets", notice=str(notice))

    def _delete_secret(self, request: Request, db: Database) -> Response:
        notice, error = admin.delete_secret(db, request.path_params["name"])
        if error is not None:
            return _back(request, "/secrets", error=error)
        return _back(request, "/secrets", notice=str(notice))

    # ------------------------------------------------------------------- the actions
    def _cancel(self, request: Request, db: Database) -> Response:
        run = models.get_flow_run(db, request.path_params["run_id"])
        back = f"/runs/{run['id']}"
        if run["flow_id"] is None and run["state"] == "Running":
            # A local run (``flow.run`` in a process of this machine): Ctrl-C it, which
            # cancels the run the way the command line does.
            if run["host"] != socket.gethostname() or not run["pid"]:
                return _back(request, back, error=f"flow run {run['id']} runs on another machine")
            pid = int(run["pid"])
            if pid == os.getpid():
                return _back(request, back, error="the run runs in this UI's own process")
            if not _process_is_the_run(pid, float(run["started"])):
                return _back(request, back, error=f"the process of flow run {run['id']} is gone")
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                return _back(request, back, error=f"the process of flow run {run['id']} is gone")
            return _back(request, back, notice="cancel sent: the run stops at its next step")
        try:
            done = models.cancel_flow_run(db, run["id"])
        except ApiError as e:
            return _back(request, back, error=str(e))
        return _back(request, back, notice=f"flow run {done['state'].lower()}")

    def _resume(self, request: Request, db: Database) -> Response:
        run = models.get_flow_run(db, request.path_params["run_id"])
        back = f"/runs/{run['id']}"
        try:
            models.resume_flow_run(db, run["id"])
        except ApiError as e:
            return _back(request, back, error=str(e))
        return _back(request, back, notice="queued again: an agent resumes it")

    def _approve(self, request: Request, db: Database) -> Response:
        from ferroflow.approvals import approve

        run = models.get_flow_run(db, request.path_params["run_id"])
        back = f"/runs/{run['id']}"
        number = request.path_params["run"]
        try:
            got = approve(f"{run['id']}/{number}")
        except ApprovalError as e:
            return _back(request, back, error=str(e))
        name = got.task_name + ("" if got.map_index is None else f"[{got.map_index}]")
        return _back(request, back, notice=f"approved {name}: it runs as soon as the run sees it")

    def _run_flow(self, request: Request, db: Database) -> Any:
        flow_id = request.path_params["flow_id"]
        flow = models.get_flow(db, flow_id)
        declared = json.loads(flow["structure"]).get("parameters", [])
        form: dict[str, str] = request.state.form
        values, errors = views.parse_parameters(declared, form)
        if errors:
            data = views.flow_page(db, flow_id, form=form, errors=errors)
            return data, 400
        try:
            created = models.create_flow_run(db, flow_id=flow_id, parameters=values)
        except ApiError as e:
            return views.flow_page(db, flow_id, form=form, errors={"": str(e)}), 400
        return _back(request, f"/runs/{created['id']}", notice="flow run created")

    def _schedule(self, request: Request, db: Database) -> Response:
        flow_id = request.path_params["flow_id"]
        on = request.state.form.get("active") == "1"
        back = f"/flows/{quote(flow_id)}"
        try:
            models.set_schedule_active(db, flow_id, on)
        except ApiError as e:
            return _back(request, back, error=str(e))
        return _back(request, back, notice=f"schedule turned {'on' if on else 'off'}")

    def _backfill(self, request: Request, db: Database) -> Response:
        """The flow page's backfill form: one run per scheduled time in the range that
        has none (:func:`ferroflow.server.backfill.backfill`)."""
        from ferroflow.exceptions import OpsError
        from ferroflow.server import backfill

        flow_id = request.path_params["flow_id"]
        form = request.state.form
        back = f"/flows/{quote(flow_id)}"
        raw = form.get("max_concurrent", "").strip()
        try:
            start = backfill.parse_instant(form.get("start", ""), "start")
            end = backfill.parse_instant(form.get("end", ""), "end", end=True)
            if raw and not raw.isdigit():
                raise OpsError(f"max concurrent must be a whole number >= 1, got {raw!r}")
            got = backfill.backfill(
                db, start=start, end=end, flow_id=flow_id, max_concurrent=int(raw) if raw else None
            )
        except (OpsError, ApiError) as e:
            return _back(request, back, error=str(e))
        return _back(
            request,
            back,
            notice=f"backfill: {got['created']} run(s) created, {got['existing']} already had one",
        )


def _process_is_the_run(pid: int, run_started: float) -> bool:
    """Whether process ``pid`` may be the one that started a run at ``run_started``: it
    exists and (where ``/proc`` tells) it started before the run, so a pid reused by
    another process after the run's died is never signalled."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists; the kill itself will say if it may not be signalled
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as f:
            boot = next(float(x.split()[1]) for x in f if x.startswith("btime "))
        started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return True  # no /proc here: trust the pid
    return started <= run_started + 1.0


def _form(body: bytes, kind: str | None) -> dict[str, str]:
    """The fields of a posted form (``application/x-www-form-urlencoded``, what the
    UI's forms send; no multipart parser needed)."""
    if kind and not kind.startswith("application/x-www-form-urlencoded"):
        raise Problem(415, "post the UI's forms as application/x-www-form-urlencoded")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Problem(400, "a form must be UTF-8") from None
    return dict(parse_qsl(text, keep_blank_values=True))


def _open_mode(request: Request) -> bool:
    """Whether nobody signs in here: the server without tokens (its guard says so), or
    the UI served over the local store (no guard)."""
    return bool(getattr(request.state, "open_mode", True))


def _me(request: Request) -> str | None:
    principal = auth.principal_of(request)
    return principal.name if principal is not None else None


def _wants_json(request: Request) -> bool:
    if request.query_params.get("format") == "json":
        return True
    accept = request.headers.get("accept", "")
    return accept.startswith("application/json")


def _url_with(request: Request, **changes: Any) -> str:
    """This page's URL with some query parameters changed (None drops one)."""
    q = {k: v for k, v in request.query_params.items() if k not in ("notice", "error")}
    for k, v in changes.items():
        if v is None or v == "":
            q.pop(k, None)
        else:
            q[k] = str(v)
    return request.url.path + (("?" + urlencode(q)) if q else "")


def _back(request: Request, path: str, **params: str) -> Response:
    if _wants_json(request):
        status = 400 if "error" in params else 200
        return JSONResponse({"redirect": path, **params}, status_code=status)
    return RedirectResponse(path + "?" + urlencode(params), status_code=303)
