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

from ferroflow.exceptions import OpsError
from ferroflow.server import auth, backfill, limits, models, notify, retention
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
    records_seconds: float
    files_seconds: float

    @staticmethod
    def of(got: retention.PruneResult) -> PrunePayload:
        """The payload of a result."""
        d: dict[str, Any] = got.to_dict()
        return PrunePayload(**d)


@strawberry.input(description="backfill_flow_runs's input.")
class BackfillInput:
    """The flow (version id, or name and project), the range (ISO dates or date-times;
    a date as the end means the end of that day) and the bound on runs at once."""

    start: str
    end: str
    flow_id: str | None = None
    flow_name: str | None = None
    project: str | None = None
    max_concurrent: int | None = None


@strawberry.type(description="What a backfill created.")
class BackfillPayload:
    """The backfill's id, the runs it created, and the scheduled times that had one."""

    id: str
    flow_id: str
    created: int
    existing: int
    flow_run_ids: list[str]


@strawberry.input(description="set_flow_limit's input.")
class FlowLimitInput:
    """A flow (name or version id; project when names clash) and its limit (null: none)."""

    flow: str
    max_running: int | None
    project: str | None = None


@strawberry.type(description="A flow's limit on runs held at once.")
class FlowLimit:
    """The flow, its limit and how many of its runs agents hold now."""

    flow_group: str
    flow_name: str | None
    max_running: int | None
    running: int = 0


@strawberry.input(description="set_tag_limit's input.")
class TagLimitInput:
    """A task tag and its limit (null: none)."""

    tag: str
    max_running: int | None


@strawberry.type(description="A task tag's limit on task runs at once.")
class TagLimit:
    """The tag, its limit and the slots held now."""

    tag: str
    max_running: int | None
    running: int


@strawberry.input(description="acquire_task_slots's and release_task_slots's input.")
class TaskSlotsInput:
    """The flow run, the task run that holds the slots, and its tags."""

    flow_run_id: str
    holder: str | None
    tags: list[str] | None = None


@strawberry.input(description="add_notify_rule's input.")
class NotifyRuleInput:
    """POST to ``webhook`` when a run of ``flow_name`` (any flow: null) ends ``on_state``."""

    on_state: str
    webhook: str
    flow_name: str | None = None


@strawberry.type(description="A notification rule and its deliveries so far.")
class NotifyRule:
    """The rule, and how many of its notifications were sent, wait, or failed."""

    id: str
    on_state: str
    flow_name: str | None
    webhook: str
    created: float
    sent: int = 0
    pending: int = 0
    failed: int = 0


@strawberry.type(description="One notification: a rule and an event, and its delivery.")
class Notification:
    """Status ``pending`` (to send or retry), ``sent`` or ``failed`` (given up)."""

    seq: int
    rule_id: str
    flow_run_id: str
    status: str
    attempts: int
    last_error: str | None
    created: float
    sent: float | None


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

    @strawberry.field(description="Every notification rule.")
    def notify_rules(self, info: Info) -> list[NotifyRule]:
        """notify_rules."""
        return [NotifyRule(**r) for r in notify.list_rules(_db(info))]

    @strawberry.field(description="The newest notifications (of one rule).")
    def notifications(
        self, info: Info, rule_id: str | None = None, limit: int = 100
    ) -> list[Notification]:
        """notifications."""
        return [Notification(**r) for r in notify.list_notifications(_db(info), rule_id, limit)]

    @strawberry.field(description="Every flow limit, with the runs held now.")
    def flow_limits(self, info: Info) -> list[FlowLimit]:
        """flow_limits."""
        return [FlowLimit(**r) for r in limits.list_flow_limits(_db(info))]

    @strawberry.field(description="Every task-tag limit, with the slots held now.")
    def tag_limits(self, info: Info) -> list[TagLimit]:
        """tag_limits."""
        return [TagLimit(**r) for r in limits.list_tag_limits(_db(info))]


@strawberry.type(description="Operations: mutations.")
class OpsMutation:
    """delete_flow_runs, prune_flow_runs, backfill_flow_runs, set_flow_limit,
    set_tag_limit, acquire_task_slots, release_task_slots."""

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

    @strawberry.mutation(description="Create the missing runs of a flow's schedule in a range.")
    def backfill_flow_runs(self, info: Info, input: BackfillInput) -> BackfillPayload:
        """backfill_flow_runs."""
        got = backfill.backfill(
            _db(info),
            start=backfill.parse_instant(input.start, "start"),
            end=backfill.parse_instant(input.end, "end", end=True),
            flow_id=input.flow_id,
            flow_name=input.flow_name,
            project=input.project,
            max_concurrent=input.max_concurrent,
        )
        return BackfillPayload(**got)

    @strawberry.mutation(description="Limit how many runs of a flow agents hold at once.")
    def set_flow_limit(self, info: Info, input: FlowLimitInput) -> FlowLimit:
        """set_flow_limit."""
        db = _db(info)
        with db.transaction():
            got = limits.set_flow_limit(db, input.flow, input.max_running, input.project)
            models.audit(db, "set_flow_limit", got["flow_group"], {"max": input.max_running})
        return FlowLimit(**got)

    @strawberry.mutation(description="Limit how many task runs of a tag run at once.")
    def set_tag_limit(self, info: Info, input: TagLimitInput) -> TagLimit:
        """set_tag_limit."""
        db = _db(info)
        with db.transaction():
            got = limits.set_tag_limit(db, input.tag, input.max_running)
            models.audit(db, "set_tag_limit", got["tag"], {"max": input.max_running})
        return TagLimit(**got)

    @strawberry.mutation(description="Take a slot of each limited tag for a task run, or none.")
    def acquire_task_slots(self, info: Info, input: TaskSlotsInput) -> bool:
        """acquire_task_slots: true when the task run may start."""
        if input.holder is None:
            raise OpsError("acquire_task_slots needs the holder (the task run)")
        auth.require_run(_db(info), auth.principal_of(info), input.flow_run_id)
        return limits.acquire_slots(_db(info), input.flow_run_id, input.holder, input.tags or [])

    @strawberry.mutation(description="Release the slots a task run (null: every one) holds.")
    def release_task_slots(self, info: Info, input: TaskSlotsInput) -> int:
        """release_task_slots: how many were released."""
        auth.require_run(_db(info), auth.principal_of(info), input.flow_run_id)
        return limits.release_slots(_db(info), input.flow_run_id, input.holder)

    @strawberry.mutation(description="Add a notification rule.")
    def add_notify_rule(self, info: Info, input: NotifyRuleInput) -> NotifyRule:
        """add_notify_rule."""
        db = _db(info)
        with db.transaction():
            row = notify.add_rule(db, input.on_state, input.webhook, input.flow_name)
            models.audit(db, "add_notify_rule", row["id"], {"on": input.on_state})
        return NotifyRule(**row)

    @strawberry.mutation(description="Remove a notification rule (id or unique prefix).")
    def delete_notify_rule(self, info: Info, id: str) -> str:
        """delete_notify_rule: the rule's full id."""
        db = _db(info)
        with db.transaction():
            found = notify.remove_rule(db, id)
            models.audit(db, "delete_notify_rule", found)
        return found
