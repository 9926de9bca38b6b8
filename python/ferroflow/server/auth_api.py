"""The GraphQL side of :mod:`ferroflow.server.auth`: API keys and the audit log (admins
only, see :data:`ferroflow.server.auth.PERMISSIONS`).

- ``api_keys``: every token's name, role, dates and whether it is active (never the
  token, never its hash);
- ``audit(limit, offset)``: the audit log, newest first (who, what, when, from where);
- ``create_api_key(input: {name, role, expires_in})``: the token, in this answer only;
- ``revoke_api_key(input: {name})``.

:func:`ferroflow.server.api.make_schema` merges :class:`AuthQuery` and
:class:`AuthMutation` into the schema.
"""

from __future__ import annotations

import json
from typing import Any

import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

from ferroflow.server import auth, models
from ferroflow.server.database import Database

__all__ = ["ApiKey", "AuditEntry", "AuthMutation", "AuthQuery", "NewApiKey"]


def _db(info: Info) -> Database:
    db: Database = info.context["db"]
    return db


@strawberry.type(description="An API token (never its value).")
class ApiKey:
    """A tokens row."""

    name: str
    role: str
    created: float
    expires: float | None
    revoked: float | None
    active: bool


@strawberry.type(description="A token just made: the only time its value is shown.")
class NewApiKey:
    """create_api_key's answer."""

    name: str
    role: str
    token: str
    expires: float | None


@strawberry.type(description="One line of the audit log.")
class AuditEntry:
    """An audit row: who did what, when, from where."""

    seq: int
    at: float
    actor: str
    action: str
    target: str | None
    detail: JSON
    address: str | None

    @staticmethod
    def of(row: dict[str, Any]) -> AuditEntry:
        """From an ``audit`` row."""
        try:
            detail = json.loads(row["detail"] or "{}")
        except ValueError:
            detail = {}
        return AuditEntry(
            seq=int(row["seq"]),
            at=float(row["at"]),
            actor=str(row["actor"]),
            action=str(row["action"]),
            target=row["target"],
            detail=detail,
            address=row["address"],
        )


@strawberry.type
class AuthQuery:
    """api_keys, audit."""

    @strawberry.field(description="Every API token (names, roles, dates; never values).")
    def api_keys(self, info: Info) -> list[ApiKey]:
        """API tokens."""
        return [ApiKey(**r) for r in auth.list_tokens(_db(info))]

    @strawberry.field(description="The audit log, newest first.")
    def audit(self, info: Info, limit: int = 100, offset: int = 0) -> list[AuditEntry]:
        """Audit lines."""
        return [AuditEntry.of(r) for r in models.list_audit(_db(info), limit, offset)]


@strawberry.input(description="create_api_key's input.")
class CreateApiKeyInput:
    """A name, a role, and optionally how long it lasts (seconds)."""

    name: str
    role: str
    expires_in: float | None = None


@strawberry.input(description="revoke_api_key's input.")
class RevokeApiKeyInput:
    """The token's name."""

    name: str


@strawberry.type(description="Whether it worked (errors are GraphQL errors).")
class RevokePayload:
    """revoke_api_key's answer."""

    success: bool


@strawberry.type
class AuthMutation:
    """create_api_key, revoke_api_key."""

    @strawberry.mutation(description="Make an API token; its value is in this answer only.")
    def create_api_key(self, info: Info, input: CreateApiKeyInput) -> NewApiKey:
        """create_api_key."""
        return NewApiKey(**auth.create_token(_db(info), input.name, input.role, input.expires_in))

    @strawberry.mutation(description="Revoke an API token (and its UI sessions) at once.")
    def revoke_api_key(self, info: Info, input: RevokeApiKeyInput) -> RevokePayload:
        """revoke_api_key."""
        auth.revoke_token(_db(info), input.name)
        return RevokePayload(success=True)
