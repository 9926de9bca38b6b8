"""Who may do what on the server: API tokens, roles, sessions and the request guard.

**Tokens.** :func:`create_token` makes a random token (``ff_`` and 256 bits from
:func:`secrets.token_urlsafe`), shown once; the ``tokens`` table keeps only its SHA-256
(the token is high-entropy, so a fast hash is enough: there is nothing to brute-force),
its role, when it expires and whether it was revoked. :func:`authenticate` looks the
hash up and compares it with :func:`hmac.compare_digest`.

**Roles** (Prefect Cloud's): ``read_only`` reads everything, ``user`` also registers,
runs, cancels, resumes and schedules, ``runner`` does what an agent does (and only for
the agents it registered and the runs they hold), ``admin`` does everything, tokens and
the audit log included. :data:`PERMISSIONS` maps every top-level Query and Mutation
field to the roles that may use it; a field missing from it is refused to everyone but
open mode (deny by default). :func:`check_operation` applies it to the parsed document
before anything runs: every operation of the document, every field by its name (not
its alias), fragments and inline fragments followed.

**Open mode.** While no token is defined (none active) the server answers only this
machine: a client address that is not loopback, a request that came through a proxy
(``Forwarded`` / ``X-Forwarded-For``) or a ``Host`` that is not a loopback name (DNS
rebinding) is refused, and :func:`ferroflow.server.check_host` refuses to start on another address.
Once a token exists, every request needs one: ``Authorization: Bearer <token>``, or the
session cookie a browser got from ``POST /signin``. The GraphQL context then carries
``info.context["principal"]``, a :class:`Principal` (None only in open mode).

**Sessions.** ``POST /signin`` with a token sets ``ferroflow_session``: a random value
whose hash is a row of ``sessions`` (HttpOnly, SameSite=Strict, Secure over TLS).
Sign-out deletes the row, so a replayed cookie is refused; revoking the token ends its
sessions too. Every unsafe request (not GET/HEAD/OPTIONS) is refused when its
``Origin`` is another site or ``Sec-Fetch-Site`` says ``cross-site``, and one
authenticated by the cookie must also carry the session's CSRF token (form field
``csrf_token`` or header ``X-CSRF-Token``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from ferroflow.exceptions import ApiError, AuthenticationError, ForbiddenError
from ferroflow.server import models
from ferroflow.server.database import Database

__all__ = [
    "ADMINS",
    "ANYONE",
    "CSRF_FIELD",
    "PATH_ROLES",
    "PERMISSIONS",
    "PUBLIC_PATHS",
    "PUBLIC_PREFIXES",
    "READERS",
    "ROLES",
    "RUNNERS",
    "SESSION_COOKIE",
    "SESSION_SECONDS",
    "USERS",
    "AuthMiddleware",
    "Principal",
    "authenticate",
    "check_operation",
    "create_session",
    "create_token",
    "csrf_token",
    "delete_session",
    "is_loopback",
    "list_tokens",
    "operation_fields",
    "parse_duration",
    "principal_of",
    "register_agent",
    "require_agent",
    "require_flow",
    "require_run",
    "revoke_token",
    "session_of",
    "signin_routes",
    "signout_form",
    "token_status",
    "tokens_exist",
]

#: The roles, least to most.
ROLES = ("read_only", "user", "runner", "admin")

#: Everyone with a token.
ANYONE = frozenset(ROLES)
#: The roles that read the store (a runner reads only what an agent needs).
READERS = frozenset({"read_only", "user", "admin"})
#: The roles that register, run, cancel, resume and schedule.
USERS = frozenset({"user", "admin"})
#: What agents do.
RUNNERS = frozenset({"runner", "admin"})
#: Tokens, audit, projects.
ADMINS = frozenset({"admin"})

#: For each top-level field of ``query`` and ``mutation``, the roles that may use it.
#: A field not named here is refused (deny by default): a new field must be added.
PERMISSIONS: dict[str, dict[str, frozenset[str]]] = {
    "query": {
        "__typename": ANYONE,
        "__schema": ANYONE,
        "__type": ANYONE,
        "projects": READERS,
        "project": READERS,
        "flows": READERS,
        # A runner: only the runs its agents hold, and their flows (to rebuild them).
        "flow": READERS | RUNNERS,
        "flow_runs": READERS,
        "flow_run": READERS | RUNNERS,
        # What a resume on another agent copies: a runner, only for runs its agents hold.
        "flow_run_records": READERS | RUNNERS,
        "task_run": READERS,
        "logs": READERS,
        "agents": READERS,
        "audit": ADMINS,
        "api_keys": ADMINS,
        # Operations (issue 17). Webhook URLs often carry a secret: not for read_only.
        "retention": READERS,
        "flow_limits": READERS,
        "tag_limits": READERS | RUNNERS,
        # Secrets: names for readers; a value only for the runner holding the run.
        "secrets": READERS,
        "secret_value": RUNNERS,  # a flow-run process reads which tags are limited
        "notify_rules": USERS,
        "notifications": USERS,
    },
    "mutation": {
        "__typename": ANYONE,
        "create_project": ADMINS,
        "delete_project": ADMINS,
        "register_flow": USERS,
        "archive_flow": USERS,
        "create_flow_run": USERS,
        "set_flow_run_states": USERS | RUNNERS,  # a runner: only runs its agents hold
        "set_task_run_states": USERS,
        "write_run_logs": USERS,
        "cancel_flow_run": USERS,
        "resume_flow_run": USERS,
        "set_schedule_active": USERS,
        "set_schedule_inactive": USERS,
        "register_agent": RUNNERS,
        "get_runs_in_queue": RUNNERS,
        "claim_flow_run": RUNNERS,
        "heartbeat": RUNNERS,
        "begin_attempt": RUNNERS,
        "report_attempt": RUNNERS,
        "create_api_key": ADMINS,
        "revoke_api_key": ADMINS,
        "delete_flow_runs": ADMINS,
        "prune_flow_runs": ADMINS,
        "backfill_flow_runs": USERS,
        "set_flow_limit": USERS,
        "set_tag_limit": USERS,
        # A runner: only for runs its agents hold.
        "acquire_task_slots": USERS | RUNNERS,
        "release_task_slots": USERS | RUNNERS,
        "add_notify_rule": USERS,
        "delete_notify_rule": USERS,
        "set_secret": ADMINS,
        "delete_secret": ADMINS,
    },
}

#: The roles that may use a route other than ``/graphql`` (whose fields are checked one
#: by one): ``/ingest`` (a run streaming its records), and every UI page (any other
#: path). UI actions go through GraphQL with the same principal, so its checks apply.
PATH_ROLES: dict[str, frozenset[str]] = {
    "/graphql": ANYONE,
    "/ingest": USERS | RUNNERS,
    "*": READERS,
}

#: Paths answered without a token (``/health`` then says only ``status``).
PUBLIC_PATHS = frozenset({"/health", "/signin"})
#: Path prefixes answered without a token: the UI's style sheet and script (the sign-in
#: page needs them; they hold nothing of the store).
PUBLIC_PREFIXES = ("/static/",)


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


#: The session cookie's name.
SESSION_COOKIE = "ferroflow_session"
#: The form field (or ``X-CSRF-Token`` header) that carries a session's CSRF token.
CSRF_FIELD = "csrf_token"
#: How long a UI session lasts, in seconds (12 hours).
SESSION_SECONDS = 12 * 3600.0

_TOKEN_PREFIX = "ff_"
_TOKEN_RE = re.compile(r"^ff_[A-Za-z0-9_-]{43,128}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_NEXT_RE = re.compile(r"^/[A-Za-z0-9/_.~%?=&+-]*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


@dataclass(frozen=True)
class Principal:
    """Who is asking: the token's name and role.

    Example:
        >>> Principal("ci", "user").role
        'user'
    """

    name: str
    role: str


def _now() -> float:
    return time.time()


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------ tokens


def parse_duration(text: str) -> float:
    """Seconds in ``"90s"``, ``"30m"``, ``"12h"``, ``"30d"``, ``"2w"`` (a bare number
    is seconds).

    Raises:
        ApiError: anything else, or zero.

    Example:
        >>> parse_duration("30d")
        2592000.0
    """
    match = _DURATION_RE.match(text) if isinstance(text, str) else None
    if match is None:
        raise ApiError(f"bad duration {text!r}: use e.g. 3600s, 30m, 12h, 30d or 2w")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not 0 < seconds < 100 * 365 * 86400:
        raise ApiError(f"a duration must be more than 0 and under 100 years, got {text!r}")
    return seconds


def _check_token_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ApiError(
            "a token name must be 1 to 100 letters, digits or '_.@-', starting with a "
            f"letter or digit, got {str(name)[:120]!r}"
        )
    return name


def create_token(
    db: Database, name: str, role: str, expires_in: float | None = None
) -> dict[str, Any]:
    """Make a token: ``{"name", "role", "token", "expires"}``. The token is in this
    answer only; the store keeps its hash. A name whose token was revoked or has
    expired may be used again.

    Raises:
        ApiError: a bad name or role, a name in use, a bad expiry.
    """
    name = _check_token_name(name)
    if role not in ROLES:
        raise ApiError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    now = _now()
    expires = None
    if expires_in is not None:
        if not (isinstance(expires_in, (int, float)) and 0 < expires_in < 100 * 365 * 86400):
            raise ApiError(f"expires_in must be a number of seconds > 0, got {expires_in!r}")
        expires = now + float(expires_in)
    token = _TOKEN_PREFIX + secrets.token_urlsafe(32)
    with db.transaction():
        row = db.fetchone("SELECT revoked, expires FROM tokens WHERE name = ?", (name,))
        if row is not None:
            if row["revoked"] is None and (row["expires"] is None or row["expires"] > now):
                raise ApiError(f"a token named {name!r} exists: revoke it first")
            db.execute("DELETE FROM sessions WHERE token_name = ?", (name,))
            db.execute("DELETE FROM tokens WHERE name = ?", (name,))
        db.execute(
            "INSERT INTO tokens(name, role, hash, created, expires) VALUES (?, ?, ?, ?, ?)",
            (name, role, _hash(token), now, expires),
        )
        models.audit(db, "create_api_key", name, {"role": role, "expires": expires})
    return {"name": name, "role": role, "token": token, "expires": expires}


def list_tokens(db: Database) -> list[dict[str, Any]]:
    """Every token's name, role, created, expires, revoked and ``active`` (never the
    token nor its hash), by name."""
    now = _now()
    rows = db.fetchall(
        "SELECT name, role, created, expires, revoked FROM tokens ORDER BY name LIMIT 10000"
    )
    for r in rows:
        r["active"] = r["revoked"] is None and (r["expires"] is None or r["expires"] > now)
    return rows


def token_status(row: dict[str, Any], now: float | None = None) -> str:
    """``"revoked"``, ``"expired"`` or ``"active"``: a :func:`list_tokens` row at ``now``
    [the current time]."""
    if row["revoked"] is not None:
        return "revoked"
    if row["expires"] is not None and row["expires"] <= (_now() if now is None else now):
        return "expired"
    return "active"


def revoke_token(db: Database, name: str) -> None:
    """Revoke the token ``name`` (and end its UI sessions) at once.

    Raises:
        ApiError: no such token, or revoked already.
    """
    with db.transaction():
        row = db.fetchone("SELECT revoked FROM tokens WHERE name = ?", (name,))
        if row is None:
            raise ApiError(f"no token named {str(name)[:120]!r} (see 'ferroflow tokens ls')")
        if row["revoked"] is not None:
            raise ApiError(f"token {name!r} is revoked already")
        db.execute("UPDATE tokens SET revoked = ? WHERE name = ?", (_now(), name))
        db.execute("DELETE FROM sessions WHERE token_name = ?", (name,))
        models.audit(db, "revoke_api_key", name)


def tokens_exist(db: Database) -> bool:
    """Whether any token is active (not revoked, not expired): if not, the server is in
    open mode (loopback clients only)."""
    row = db.fetchone(
        "SELECT 1 AS one FROM tokens WHERE revoked IS NULL AND (expires IS NULL OR expires > ?) "
        "LIMIT 1",
        (_now(),),
    )
    return row is not None


def authenticate(db: Database, token: str) -> Principal:
    """The principal of ``token``.

    Raises:
        AuthenticationError: malformed, unknown, revoked or expired (the message says
            which, never echoing the token).
    """
    if not isinstance(token, str) or not _TOKEN_RE.match(token):
        raise AuthenticationError(
            "malformed API token: expected 'ff_' and 43 or more URL-safe characters, as "
            "'ferroflow tokens create' prints"
        )
    digest = _hash(token)
    row = db.fetchone(
        "SELECT name, role, hash, expires, revoked FROM tokens WHERE hash = ?", (digest,)
    )
    if row is None or not hmac.compare_digest(str(row["hash"]), digest):
        raise AuthenticationError("unknown API token")
    if row["revoked"] is not None:
        raise AuthenticationError(f"API token {row['name']!r} was revoked")
    if row["expires"] is not None and row["expires"] <= _now():
        raise AuthenticationError(f"API token {row['name']!r} has expired")
    return Principal(str(row["name"]), str(row["role"]))


# ---------------------------------------------------------------------------- sessions


def create_session(db: Database, principal: Principal) -> tuple[str, str]:
    """A new UI session for ``principal``: ``(cookie value, csrf token)``."""
    value = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    now = _now()
    with db.transaction():
        db.execute("DELETE FROM sessions WHERE expires <= ?", (now,))
        db.execute(
            "INSERT INTO sessions(hash, token_name, csrf, created, expires) VALUES (?, ?, ?, ?, ?)",
            (_hash(value), principal.name, csrf, now, now + SESSION_SECONDS),
        )
    return value, csrf


def session_of(db: Database, cookie: str) -> tuple[Principal, str] | None:
    """The principal and CSRF token of a live session cookie, else None (unknown,
    signed out, expired, or its token revoked or expired)."""
    if not isinstance(cookie, str) or not 20 <= len(cookie) <= 200:
        return None
    now = _now()
    row = db.fetchone(
        "SELECT s.hash, s.csrf, t.name, t.role FROM sessions s JOIN tokens t "
        "ON t.name = s.token_name WHERE s.hash = ? AND s.expires > ? AND t.revoked IS NULL "
        "AND (t.expires IS NULL OR t.expires > ?)",
        (_hash(cookie), now, now),
    )
    if row is None or not hmac.compare_digest(str(row["hash"]), _hash(cookie)):
        return None
    return Principal(str(row["name"]), str(row["role"])), str(row["csrf"])


def delete_session(db: Database, cookie: str) -> None:
    """End the session of ``cookie`` (sign-out)."""
    db.execute("DELETE FROM sessions WHERE hash = ?", (_hash(cookie),))


# ---------------------------------------------------------------------- the operation


def operation_fields(query: str, max_tokens: int | None = None) -> list[tuple[str, str, str]]:
    """The top-level fields of every operation of ``query``: ``(operation type, field
    name, response key)``, fragments followed.

    Raises:
        GraphQLError: the document does not parse (it is then not run at all).
    """
    from graphql import parse
    from graphql.language import (
        FieldNode,
        FragmentDefinitionNode,
        FragmentSpreadNode,
        InlineFragmentNode,
        OperationDefinitionNode,
    )

    document = parse(query, no_location=True, max_tokens=max_tokens)
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    out: list[tuple[str, str, str]] = []

    def walk(kind: str, selections: Any, seen: frozenset[str]) -> None:
        for sel in selections:
            if isinstance(sel, FieldNode):
                key = sel.alias.value if sel.alias else sel.name.value
                out.append((kind, sel.name.value, key))
            elif isinstance(sel, InlineFragmentNode):
                walk(kind, sel.selection_set.selections, seen)
            elif isinstance(sel, FragmentSpreadNode):
                name = sel.name.value
                frag = fragments.get(name)
                if frag is not None and name not in seen:
                    walk(kind, frag.selection_set.selections, seen | {name})

    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            walk(definition.operation.value, definition.selection_set.selections, frozenset())
    return out


def check_operation(fields: list[tuple[str, str, str]], principal: Principal | None) -> None:
    """Refuse (ForbiddenError) when any of ``fields`` (see :func:`operation_fields`) is
    not allowed to ``principal``'s role; None (open mode) may do everything."""
    if principal is None:
        return
    for kind, name, _key in fields:
        allowed = PERMISSIONS.get(kind, {}).get(name)
        if allowed is None or principal.role not in allowed:
            raise ForbiddenError(
                f"forbidden: token {principal.name!r} (role {principal.role}) may not use "
                f"{kind} field {name!r}"
            )


def principal_of(info_or_request: Any) -> Principal | None:
    """The principal of a GraphQL ``info`` (its context) or a Starlette request (its
    state), None in open mode."""
    context = getattr(info_or_request, "context", None)
    if isinstance(context, dict):
        got = context.get("principal")
    else:
        got = getattr(getattr(info_or_request, "state", None), "principal", None)
    return got if isinstance(got, Principal) else None


def csrf_token(request: Any) -> str:
    """The CSRF token a page's forms must send back in field :data:`CSRF_FIELD` ("" when
    the request has no session: open mode or a bearer token)."""
    return str(getattr(request.state, "csrf", "") or "")


def require_agent(db: Database, principal: Principal | None, agent_id: str) -> None:
    """A runner may act only for an agent its token registered (ForbiddenError)."""
    if principal is None or principal.role != "runner":
        return
    row = db.fetchone("SELECT token_name FROM agents WHERE id = ?", (agent_id,))
    if row is None:
        raise ApiError(f"no agent with id {str(agent_id)[:120]!r}: register it first")
    if row["token_name"] != principal.name:
        raise ForbiddenError(
            f"forbidden: agent {agent_id} was not registered with token {principal.name!r}"
        )


def require_run(db: Database, principal: Principal | None, flow_run_id: str) -> None:
    """A runner may touch only a run held by an agent its token registered
    (ForbiddenError); others pass."""
    if principal is None or principal.role != "runner":
        return
    run = models.get_flow_run(db, flow_run_id)
    agent = run.get("agent_id")
    row = (
        None
        if agent is None
        else db.fetchone("SELECT token_name FROM agents WHERE id = ?", (agent,))
    )
    if row is None or row["token_name"] != principal.name:
        raise ForbiddenError(
            f"forbidden: flow run {run['id']} is not held by an agent of token {principal.name!r}"
        )


def require_flow(db: Database, principal: Principal | None, flow_id: str) -> None:
    """A runner may read only a flow one of its agents holds a run of (ForbiddenError):
    the flow's source is what its agent rebuilds the run from, and nothing more."""
    if principal is None or principal.role != "runner":
        return
    row = db.fetchone(
        "SELECT 1 AS one FROM flow_runs r JOIN agents a ON a.id = r.agent_id "
        "WHERE r.flow_id = ? AND a.token_name = ? LIMIT 1",
        (flow_id, principal.name),
    )
    if row is None:
        raise ForbiddenError(
            f"forbidden: no run of flow {str(flow_id)[:120]!r} is held by an agent of token "
            f"{principal.name!r}"
        )


def register_agent(
    db: Database,
    principal: Principal | None,
    name: str,
    labels: list[str] | None,
    agent_id: str | None,
) -> dict[str, Any]:
    """``models.register_agent`` for ``principal``: a runner may refresh only its own
    agents; the agent remembers the token that registered it."""
    with db.transaction():
        if agent_id is not None and db.fetchone(
            "SELECT 1 AS one FROM agents WHERE id = ?", (agent_id,)
        ):
            require_agent(db, principal, agent_id)
        row = models.register_agent(db, name, labels, agent_id)
        if principal is not None:
            db.execute("UPDATE agents SET token_name = ? WHERE id = ?", (principal.name, row["id"]))
    return row


# --------------------------------------------------------------------------- the host


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (an address or ``localhost``) is this machine.

    Example:
        >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("10.0.0.1")
        (True, True, False)
    """
    if not host:
        return False
    host = host.strip("[]")
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------------------- the guard


def _header(scope: Any, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _cookie(scope: Any, name: str) -> str | None:
    raw = _header(scope, b"cookie")
    if not raw:
        return None
    for part in raw.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def _host_name(host_header: str) -> str:
    host = host_header.strip()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _cross_site(scope: Any) -> str | None:
    """Why an unsafe request is a cross-site one, or None."""
    if _header(scope, b"sec-fetch-site") == "cross-site":
        return "a cross-site request (Sec-Fetch-Site)"
    origin = _header(scope, b"origin")
    if origin is None:
        return None
    host = _header(scope, b"host") or ""
    parts = urlsplit(origin)
    if origin == "null" or not parts.netloc or parts.netloc.lower() != host.lower():
        return f"a request from another origin ({origin[:100]})"
    return None


class AuthMiddleware:
    """The ASGI guard in front of every route (see the module docstring): it decides
    who is asking, refuses what is not allowed, and puts the :class:`Principal` (None
    in open mode) and the session's CSRF token in ``request.state``."""

    def __init__(self, app: Any, db: Database) -> None:
        self.app = app
        self.db = db

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Check, then pass the request on (or answer the refusal)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.concurrency import run_in_threadpool

        path = scope.get("path", "/")
        method = scope.get("method", "GET")
        unsafe = method not in ("GET", "HEAD", "OPTIONS")
        if unsafe:
            why = _cross_site(scope)
            if why is not None:
                await self._refuse(scope, receive, send, 403, f"forbidden: {why}", "FORBIDDEN")
                return
        decided = await run_in_threadpool(self._decide, scope)
        if isinstance(decided[0], int):
            status, message, code = decided
            page = path not in ("/graphql", "/ingest") and not path.startswith("/api/")
            if status == 401 and page and method == "GET" and not _header(scope, b"authorization"):
                # A browser without a session (not an API client): to the sign-in page.
                query = bytes(scope.get("query_string") or b"").decode("latin-1")
                await self._redirect(scope, receive, send, path + (f"?{query}" if query else ""))
                return
            await self._refuse(scope, receive, send, status, message, code)
            return
        principal, csrf, open_mode = decided
        state = scope.setdefault("state", {})
        state["principal"] = principal
        state["csrf"] = csrf
        state["open_mode"] = open_mode
        if principal is not None and not _public(path):
            allowed = PATH_ROLES.get(path, PATH_ROLES["*"])
            if principal.role not in allowed:
                await self._refuse(
                    scope,
                    receive,
                    send,
                    403,
                    f"forbidden: token {principal.name!r} (role {principal.role}) may not use "
                    f"{path}",
                    "FORBIDDEN",
                )
                return
        if unsafe and csrf and path != "/signin":
            # Authenticated by the session cookie: the request must prove it comes from
            # one of our pages.
            receive, ok = await self._check_csrf(scope, receive, csrf)
            if not ok:
                await self._refuse(
                    scope, receive, send, 403, "forbidden: missing or wrong CSRF token", "FORBIDDEN"
                )
                return
        await self.app(scope, receive, send)

    def _decide(self, scope: Any) -> Any:
        """``(principal, csrf, open mode)``, or ``(status, message, code)`` for a
        refusal."""
        path = scope.get("path", "/")
        auth = _header(scope, b"authorization")
        if auth is not None:
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return (
                    401,
                    "malformed Authorization header: send 'Bearer <token>'",
                    "UNAUTHENTICATED",
                )
            try:
                return authenticate(self.db, token.strip()), "", False
            except AuthenticationError as exc:
                return 401, str(exc), "UNAUTHENTICATED"
        cookie = _cookie(scope, SESSION_COOKIE)
        if cookie:
            got = session_of(self.db, cookie)
            if got is not None:
                return got[0], got[1], False
        if tokens_exist(self.db):
            if _public(path):
                return None, "", False
            return (
                401,
                "this server needs an API token: send 'Authorization: Bearer <token>' "
                "(set FERROFLOW_API_KEY), or sign in at /signin",
                "UNAUTHENTICATED",
            )
        client = scope.get("client")
        address = client[0] if client else None
        if not is_loopback(address):
            return (
                403,
                "forbidden: this server has no API tokens yet and answers only this "
                "machine; create an admin token ('ferroflow tokens create')",
                "FORBIDDEN",
            )
        if _header(scope, b"forwarded") or _header(scope, b"x-forwarded-for"):
            return (
                403,
                "forbidden: a request through a proxy needs an API token, and this server "
                "has none yet; create one ('ferroflow tokens create')",
                "FORBIDDEN",
            )
        host = _header(scope, b"host")
        if host is not None and not is_loopback(_host_name(host)):
            return (
                403,
                f"forbidden: without API tokens the server answers only to a loopback Host, "
                f"not {host[:100]!r}",
                "FORBIDDEN",
            )
        return None, "", True

    @staticmethod
    async def _check_csrf(scope: Any, receive: Any, csrf: str) -> tuple[Any, bool]:
        """Whether the request carries ``csrf`` (header, or urlencoded form field); and a
        ``receive`` that replays the body read to find it."""
        header = _header(scope, b"x-csrf-token")
        if header is not None:
            return receive, hmac.compare_digest(header, csrf)
        content_type = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            return receive, False
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Any:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        try:
            form = parse_qs(body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            return replay, False
        given = form.get(CSRF_FIELD, [""])[0]
        return replay, bool(given) and hmac.compare_digest(given, csrf)

    @staticmethod
    async def _refuse(
        scope: Any, receive: Any, send: Any, status: int, message: str, code: str
    ) -> None:
        from starlette.responses import JSONResponse

        response = JSONResponse(
            {"data": None, "errors": [{"message": message, "extensions": {"code": code}}]},
            status_code=status,
            headers={"WWW-Authenticate": "Bearer"} if status == 401 else None,
        )
        await response(scope, receive, send)

    @staticmethod
    async def _redirect(scope: Any, receive: Any, send: Any, path: str) -> None:
        from starlette.responses import RedirectResponse

        response = RedirectResponse(f"/signin?next={quote(path, safe='/')}", status_code=303)
        await response(scope, receive, send)


# ---------------------------------------------------------------------- sign-in pages

_SIGNIN_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Sign in · ferroflow</title></head>
<body><main>
<h1>Sign in to ferroflow</h1>
{message}
<form method="post" action="/signin">
<label>API token <input type="password" name="token" autocomplete="off" required></label>
<input type="hidden" name="next" value="{next}">
<button type="submit">Sign in</button>
</form>
<p>Make a token with <code>ferroflow tokens create --name NAME --role read_only</code>.</p>
</main></body></html>
"""


def signout_form(request: Any) -> str:
    """The HTML of a sign-out button with the session's CSRF token ("" without a
    session): for the UI's pages."""
    import html

    csrf = csrf_token(request)
    principal = principal_of(request)
    if not csrf or principal is None:
        return ""
    return (
        '<form method="post" action="/signout" class="signout">'
        f"<span>{html.escape(principal.name)} ({html.escape(principal.role)})</span> "
        f'<input type="hidden" name="{CSRF_FIELD}" value="{html.escape(csrf)}">'
        '<button type="submit">Sign out</button></form>'
    )


def _safe_next(value: str | None) -> str:
    """A local path to go to after signing in (never another site)."""
    if not value or not _NEXT_RE.match(value) or value.startswith("//"):
        return "/"
    return value


def signin_routes(
    db: Database, page: Callable[[Any, str, str, int], Any] | None = None
) -> list[Any]:
    """The routes ``GET /signin`` (the form), ``POST /signin`` (a token for a session
    cookie) and ``POST /signout`` (end the session; needs its CSRF token).

    ``page(request, message, next_path, status)`` renders the form (the UI's
    :meth:`~ferroflow.server.ui.UI.signin_page`); without it, a bare HTML form."""
    import html

    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, RedirectResponse, Response
    from starlette.routing import Route

    def form_page(request: Request, message: str, next_path: str, status: int = 200) -> Response:
        if page is not None:
            shown_page: Response = page(request, message, _safe_next(next_path), status)
            return shown_page
        shown = f'<p role="alert">{html.escape(message)}</p>' if message else ""
        body = _SIGNIN_PAGE.format(message=shown, next=html.escape(_safe_next(next_path)))
        return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})

    async def signin(request: Request) -> Response:
        if request.method != "POST":
            return form_page(request, "", request.query_params.get("next", "/"))
        # A urlencoded form, read without python-multipart (Starlette's form parser).
        try:
            form = parse_qs((await request.body()).decode("utf-8"), max_num_fields=10)
        except (UnicodeDecodeError, ValueError):
            form = {}
        token = (form.get("token") or [""])[0]
        next_path = _safe_next((form.get("next") or ["/"])[0])
        if not token:
            return form_page(request, "Give an API token.", next_path, 400)
        try:
            principal = await run_in_threadpool(authenticate, db, token.strip())
        except AuthenticationError as exc:
            return form_page(request, f"Cannot sign in: {exc}.", next_path, 401)
        if principal.role not in PATH_ROLES["*"]:
            return form_page(
                request, f"A {principal.role} token cannot use the UI.", next_path, 403
            )
        value, _csrf = await run_in_threadpool(create_session, db, principal)
        response = RedirectResponse(next_path, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            value,
            max_age=int(SESSION_SECONDS),
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def signout(request: Request) -> Response:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie and request.state.csrf:
            await run_in_threadpool(delete_session, db, cookie)
        response = RedirectResponse("/signin", status_code=303)
        response.delete_cookie(
            SESSION_COOKIE,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    return [
        Route("/signin", signin, methods=["GET", "POST"]),
        Route("/signout", signout, methods=["POST"]),
    ]
