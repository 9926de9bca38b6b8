"""The admin pages of the UI: API tokens, secrets (names only) and the audit log.

Each view returns plain JSON-ready data (the page's JSON twin), read and written
through the functions the command line and GraphQL use (:mod:`ferroflow.server.auth`
for tokens, :mod:`ferroflow.server.secrets` for secrets, :func:`ferroflow.server.models.
list_audit`), so the rules (names, roles, expiry, encryption, audit lines) are theirs.

What these pages never show: a token after the answer that made it, a token's hash, a
secret's value or its ciphertext. The routes (:mod:`ferroflow.server.ui.routes`) let
only admin tokens (or this machine in open mode) in.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from ferroflow.exceptions import ApiError, SecretError, SecretKeyError
from ferroflow.server import auth, models
from ferroflow.server import secrets as server_secrets
from ferroflow.server.database import Database
from ferroflow.server.ui.views import _int

__all__ = [
    "AUDIT_PAGE",
    "audit_page",
    "create_token",
    "delete_secret",
    "revoke_token",
    "secrets_page",
    "set_secret",
    "tokens_page",
]

#: Audit lines per page.
AUDIT_PAGE = 50


def _when(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _token(row: dict[str, Any], now: float, me: str | None) -> dict[str, Any]:
    status = auth.token_status(row, now)
    return {
        "name": row["name"],
        "role": row["role"],
        "created": row["created"],
        "created_at": _when(row["created"]),
        "expires": row["expires"],
        "expires_at": _when(row["expires"]),
        "revoked": row["revoked"],
        "revoked_at": _when(row["revoked"]),
        "active": bool(row["active"]),
        "status": status,
        "is_you": row["name"] == me,
    }


def tokens_page(
    db: Database,
    me: str | None = None,
    *,
    new_token: dict[str, Any] | None = None,
    form: Mapping[str, str] | None = None,
    errors: str | None = None,
) -> dict[str, Any]:
    """Every token (name, role, created, expires, revoked, status; never the token or
    its hash), the roles, and after a create the new token (shown this once).

    ``me`` is the signed-in token's name (its row says so: revoking it signs you out).
    """
    now = time.time()
    return {
        "tokens": [_token(r, now, me) for r in auth.list_tokens(db)],
        "roles": list(auth.ROLES),
        "new_token": new_token,
        "form": {k: v for k, v in (form or {}).items() if k in ("name", "role", "expires")},
        "form_error": errors,
    }


def create_token(db: Database, form: Mapping[str, str], me: str | None = None) -> Any:
    """The create form: ``name``, ``role``, ``expires`` (optional, e.g. ``30d``). The
    tokens page with the new token (the only time it is shown), or with the reason and
    status 400."""
    name = form.get("name", "").strip()
    role = form.get("role", "")
    expires = form.get("expires", "").strip()
    try:
        expires_in = auth.parse_duration(expires) if expires else None
        made = auth.create_token(db, name, role, expires_in)
    except ApiError as e:
        return tokens_page(db, me, form=form, errors=str(e)), 400
    shown = {**made, "expires_at": _when(made["expires"])}
    return tokens_page(db, me, new_token=shown)


def revoke_token(db: Database, name: str) -> tuple[str | None, str | None]:
    """Revoke token ``name``: ``(notice, None)`` or ``(None, error)``."""
    try:
        auth.revoke_token(db, name)
    except ApiError as e:
        return None, str(e)
    return f"token {name!r} revoked: it and its sessions stop working now", None


def secrets_page(
    db: Database,
    *,
    form: Mapping[str, str] | None = None,
    errors: str | None = None,
) -> dict[str, Any]:
    """Every secret's name, created and updated (never a value or its ciphertext), and
    the set form's name and error after a refused set (never the value)."""
    rows = server_secrets.list_secrets(db, limit=models.MAX_PAGE)
    return {
        "secrets": [
            {
                "name": r["name"],
                "created": r["created"],
                "created_at": _when(r["created"]),
                "updated": r["updated"],
                "updated_at": _when(r["updated"]),
            }
            for r in rows
        ],
        "more": len(rows) == models.MAX_PAGE,
        "form": {"name": (form or {}).get("name", "")},
        "form_error": errors,
    }


def set_secret(db: Database, form: Mapping[str, str]) -> tuple[str | None, Any]:
    """The set form: ``name`` and ``value``. ``(notice, None)`` when stored, else
    ``(None, (page data with the reason, status))``; the value is never in either."""
    name = form.get("name", "").strip()
    value = form.get("value", "")
    try:
        known = server_secrets.list_secrets(db, limit=models.MAX_PAGE)
        existed = any(s["name"] == name for s in known)
        server_secrets.set_secret(db, name, value)
    except SecretKeyError as e:
        return None, (secrets_page(db, form=form, errors=str(e)), 503)
    except SecretError as e:
        return None, (secrets_page(db, form=form, errors=str(e)), 400)
    return f"secret {name} {'replaced' if existed else 'set'}", None


def delete_secret(db: Database, name: str) -> tuple[str | None, str | None]:
    """Remove secret ``name``: ``(notice, None)`` or ``(None, error)``."""
    try:
        server_secrets.delete_secret(db, name)
    except SecretError as e:
        return None, str(e)
    return f"secret {name} removed", None


def audit_page(db: Database, query: Mapping[str, str]) -> dict[str, Any]:
    """The audit log, newest first, :data:`AUDIT_PAGE` lines from ``offset``; only the
    lines of ``action`` and ``target`` when given (exact matches)."""
    offset = _int(query, "offset", 0)
    limit = min(_int(query, "limit", AUDIT_PAGE, low=1), models.MAX_PAGE - 1)
    action = query.get("action") or None
    target = query.get("target") or None
    rows = models.list_audit(db, limit + 1, offset, action=action, target=target)
    entries = []
    for r in rows[:limit]:
        try:
            detail = json.loads(r["detail"] or "{}")
        except ValueError:
            detail = {}
        entries.append(
            {
                "seq": r["seq"],
                "at": r["at"],
                "time": _when(r["at"]),
                "actor": r["actor"],
                "action": r["action"],
                "target": r["target"],
                "detail": detail,
                "detail_text": _detail_text(detail),
                "address": r["address"],
            }
        )
    return {
        "entries": entries,
        "action": action,
        "target": target,
        "offset": offset,
        "limit": limit,
        "next_offset": offset + limit if len(rows) > limit else None,
        "prev_offset": max(0, offset - limit) if offset > 0 else None,
    }


def _detail_text(detail: Any) -> str:
    if not detail:
        return ""
    if isinstance(detail, dict):
        return ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in sorted(detail.items()))
    return json.dumps(detail, default=str)
