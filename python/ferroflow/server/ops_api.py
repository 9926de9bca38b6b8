"""The GraphQL side of operations (issue 17): retention, backfills, notification rules
and concurrency limits. Merged into the schema of :mod:`ferroflow.server.api`
(``OpsQuery`` into the queries, ``OpsMutation`` into the mutations); the resolvers are
thin and call :mod:`ferroflow.server.retention` and the other ops modules.
"""

from __future__ import annotations

from typing import Any

import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

from ferroflow.server import retention
from ferroflow.server.database import Database

__all__ = ["OpsMutation", "OpsQuery"]


def _db(info: Info) -> Database:
    db: Database = info.context["db"]
    return db


@strawberry.input(description="delete_flow_runs's input.")
class DeleteFlowRunsInput:
    """The runs to remove (ids or unique prefixes)."""

    flow_run_ids: list[str]


@strawberry.input(description="prune_flow_runs's input.")
class PruneFlowRunsInput:
    """Which finished runs to remove: older than a duration ('30d'), in some states."""

    older_than: str
    states: list[str] | None = None
    dry_run: bool = False


@strawberry.type(description="What a removal of flow runs did (or would do).")
class PrunePayload:
    """See :class:`ferroflow.server.retention.PruneResult`."""

    count: int
    flow_run_ids: list[str]
    skipped: JSON
    files_removed: int
    files_kept: int
    bytes_before: float | None
    bytes_after: float | None
    dry_run: bool
    note: str | None

    @staticmethod
    def of(got: retention.PruneResult) -> PrunePayload:
        """The payload of a result."""
        d: dict[str, Any] = got.to_dict()
        return PrunePayload(**d)


@strawberry.type(description="The server's retention setting.")
class RetentionSetting:
    """Finished runs older than ``older_than`` seconds (in ``states``, empty: every
    finished state) are pruned every ``interval`` seconds."""

    older_than: float
    states: list[str]
    interval: float


@strawberry.type(description="Operations: queries.")
class OpsQuery:
    """Queries of the ops modules."""

    @strawberry.field(description="The server's retention setting (FERROFLOW_RETENTION).")
    def retention(self) -> RetentionSetting | None:
        """From the server's environment, or null when retention is off."""
        got = retention.retention_from_env()
        if got is None:
            return None
        older, states, interval = got
        return RetentionSetting(older_than=older, states=list(states or ()), interval=interval)


@strawberry.type(description="Operations: mutations.")
class OpsMutation:
    """delete_flow_runs, prune_flow_runs."""

    @strawberry.mutation(description="Remove finished flow runs with their records and files.")
    def delete_flow_runs(self, info: Info, input: DeleteFlowRunsInput) -> PrunePayload:
        """delete_flow_runs."""
        return PrunePayload.of(retention.remove_runs(_db(info), input.flow_run_ids))

    @strawberry.mutation(description="Remove the finished flow runs older than a duration.")
    def prune_flow_runs(self, info: Info, input: PruneFlowRunsInput) -> PrunePayload:
        """prune_flow_runs."""
        got = retention.prune_runs(
            _db(info),
            retention.parse_duration(input.older_than),
            input.states,
            dry_run=input.dry_run,
        )
        return PrunePayload.of(got)
