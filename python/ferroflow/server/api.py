"""The GraphQL schema (strawberry): typed shapes and thin resolvers over
:mod:`ferroflow.server.models`.

Field and mutation names are snake_case, as Prefect Server 1 spelled them
(``create_project``, ``set_flow_run_states``, ...); mutations take one ``input``
argument. Times are seconds since the Unix epoch (floats), as in the run store.
Parameters, structures and storage travel as JSON values.

Limits (:data:`MAX_DEPTH`, :data:`MAX_ALIASES`, :data:`MAX_TOKENS`) refuse a query
before it runs; every refusal and every bad input is a GraphQL error with a readable
message (see :func:`ferroflow.server.app.execute`).
"""

from __future__ import annotations

import base64
import enum
import json
from functools import partial
from typing import Any

import strawberry
from strawberry.extensions import MaxAliasesLimiter, MaxTokensLimiter, QueryDepthLimiter
from strawberry.scalars import JSON
from strawberry.schema.config import StrawberryConfig
from strawberry.tools import merge_types
from strawberry.types import Info

from ferroflow.server import auth, models
from ferroflow.server import secrets as server_secrets
from ferroflow.server.auth_api import AuthMutation, AuthQuery
from ferroflow.server.database import Database
from ferroflow.server.ops_api import OpsMutation, OpsQuery

__all__ = ["MAX_ALIASES", "MAX_DEPTH", "MAX_TOKENS", "make_schema"]

#: The deepest selection a query may make.
MAX_DEPTH = 8
#: The most aliases in one query.
MAX_ALIASES = 50
#: The most tokens in one query document.
MAX_TOKENS = 5000


def _db(info: Info) -> Database:
    db: Database = info.context["db"]
    return db


def _json(text: str | None, default: Any) -> Any:
    if text is None:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


# ------------------------------------------------------------------------------ types


@strawberry.type(description="A project: a folder of flows.")
class Project:
    """A project row."""

    id: str
    name: str
    description: str | None
    created: float

    @staticmethod
    def of(row: dict[str, Any]) -> Project:
        """From a ``projects`` row."""
        return Project(
            id=row["id"], name=row["name"], description=row["description"], created=row["created"]
        )

    @strawberry.field(description="The project's flows (newest versions).")
    def flows(self, info: Info) -> list[Flow]:
        """The flows of this project."""
        return [Flow.of(r) for r in models.list_flows(_db(info), project=self.name)]


@strawberry.type(description="The schedule of a flow (all its versions).")
class Schedule:
    """A schedules row."""

    schedule: JSON
    active: bool


@strawberry.type(description="One registered version of a flow.")
class Flow:
    """A flows row."""

    id: str
    name: str
    version: int
    flow_group: str
    project_id: str
    archived: bool
    labels: list[str]
    structure: JSON
    storage: JSON
    created: float

    @staticmethod
    def of(row: dict[str, Any]) -> Flow:
        """From a ``flows`` row."""
        return Flow(
            id=row["id"],
            name=row["name"],
            version=int(row["version"]),
            flow_group=row["flow_group"],
            project_id=row["project_id"],
            archived=bool(row["archived"]),
            labels=_json(row["labels"], []),
            structure=_json(row["structure"], {}),
            storage=_json(row["storage"], {}),
            created=row["created"],
        )

    @strawberry.field(description="The project it belongs to.")
    def project(self, info: Info) -> Project:
        """The flow's project."""
        return Project.of(models.get_project(_db(info), project_id=self.project_id))

    @strawberry.field(description="Every version of this flow, newest first.")
    def versions(self, info: Info) -> list[Flow]:
        """All versions of the flow (archived included)."""
        rows = models.list_flows(_db(info), flow_group=self.flow_group, include_archived=True)
        return [Flow.of(r) for r in rows]

    @strawberry.field(description="Its schedule, if it has one.")
    def schedule(self, info: Info) -> Schedule | None:
        """The flow's schedule."""
        row = models.schedule_of(_db(info), self.flow_group)
        if row is None:
            return None
        shown = _json(row["schedule"], None)
        if isinstance(shown, dict):
            shown.pop("cloudpickle", None)  # what the scheduler reads, not for people
        return Schedule(schedule=shown, active=bool(row["active"]))

    @strawberry.field(description="Its flow runs, newest first.")
    def flow_runs(self, info: Info, limit: int = 50, offset: int = 0) -> list[FlowRun]:
        """Runs of this flow version."""
        rows = models.list_flow_runs(_db(info), flow_id=self.id, limit=limit, offset=offset)
        return [FlowRun.of(r) for r in rows]


@strawberry.type(description="Task runs of one task (own run or mapped children) in a state.")
class TaskRunCount:
    """One row of task-run counts."""

    task: int
    task_name: str
    mapped_child: bool
    state: str
    count: int


@strawberry.type(description="One state transition of a task run.")
class Transition:
    """A transition."""

    state: str
    message: str | None
    at: float


@strawberry.type(description="A task run in its latest state.")
class TaskRun:
    """A folded task run."""

    flow_run_id: str
    id: int
    task: int
    task_name: str
    map_index: int | None
    run_count: int
    state: str
    message: str | None
    started: float | None
    ended: float | None
    result_location: str | None

    @staticmethod
    def of(flow_run_id: str, row: dict[str, Any]) -> TaskRun:
        """From a folded journal row."""
        return TaskRun(
            flow_run_id=flow_run_id,
            id=row["run"],
            task=row["task"],
            task_name=row["task_name"],
            map_index=row["map_index"],
            run_count=row["run_count"],
            state=row["state"],
            message=row["message"],
            started=row["started"],
            ended=row["ended"],
            result_location=row["result_location"],
        )


@strawberry.type(description="A task run with its history and state version.")
class TaskRunDetail(TaskRun):
    """A task run with its version (the count of its transitions)."""

    version: int
    transitions: list[Transition]


@strawberry.type(description="A page of task runs and how many match in all.")
class TaskRunPage:
    """A page of task runs."""

    total: int
    items: list[TaskRun]


@strawberry.type(description="One log line.")
class Log:
    """A logs row."""

    flow_run_id: str
    task_run_id: int | None
    level: int
    at: float
    message: str


@strawberry.type(description="A flow run: recorded by a local flow.run(), or created here.")
class FlowRun:
    """A flow_runs row."""

    key: strawberry.Private[int]
    id: str
    name: str | None
    flow_name: str
    flow_id: str | None
    state: str
    message: str | None
    version: int
    parameters: JSON
    labels: list[str]
    started: float
    ended: float | None
    scheduled_start_time: float | None
    created: float | None
    host: str | None
    pid: int | None
    resumed_from: str | None
    agent_id: str | None = None
    heartbeat: float | None = None

    @staticmethod
    def of(row: dict[str, Any]) -> FlowRun:
        """From a ``flow_runs`` row."""
        return FlowRun(
            key=int(row["key"]),
            id=row["id"],
            name=row["name"],
            flow_name=row["flow_name"],
            flow_id=row["flow_id"],
            state=row["state"],
            message=row["message"],
            version=int(row["version"]),
            parameters=_json(row["parameters"], {}),
            labels=_json(row["labels"], []),
            started=row["started"],
            ended=row["ended"],
            scheduled_start_time=row["scheduled_start"],
            created=row["created"],
            host=row["host"],
            pid=row["pid"],
            resumed_from=row["resumed_from"],
            agent_id=row.get("agent_id"),
            heartbeat=row.get("heartbeat"),
        )

    @strawberry.field(description="The registered flow version it runs (None: a local run).")
    def flow(self, info: Info) -> Flow | None:
        """The flow version."""
        return None if self.flow_id is None else Flow.of(models.get_flow(_db(info), self.flow_id))

    @strawberry.field(description="Task-run counts by task, own run or mapped child, state.")
    def task_run_counts(self, info: Info) -> list[TaskRunCount]:
        """Counts of task runs."""
        return [TaskRunCount(**c) for c in models.task_run_counts(_db(info), self.key)]

    @strawberry.field(description="A page of task runs in run-id order.")
    def task_runs(
        self,
        info: Info,
        task: int | None = None,
        mapped_children: bool | None = None,
        states: list[str] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> TaskRunPage:
        """Task runs, filtered and paged."""
        total, rows = models.task_runs_page(
            _db(info),
            self.key,
            task=task,
            children=mapped_children,
            states=states,
            limit=limit,
            offset=offset,
        )
        return TaskRunPage(total=total, items=[TaskRun.of(self.id, r) for r in rows])

    @strawberry.field(description="Its log lines, oldest first.")
    def logs(self, info: Info, min_level: int = 0, limit: int = 100, offset: int = 0) -> list[Log]:
        """Log lines of the run."""
        rows = models.list_logs(_db(info), self.id, min_level=min_level, limit=limit, offset=offset)
        return [Log(**r) for r in rows]


@strawberry.type(description="An agent that runs flows.")
class Agent:
    """An agents row."""

    id: str
    name: str
    labels: list[str]
    created: float
    last_heartbeat: float | None
    runs_held: int = strawberry.field(
        description="Runs it holds now (Pending, Running, Cancelling)."
    )

    @staticmethod
    def of(row: dict[str, Any]) -> Agent:
        """The type of an ``agents`` row (``runs_held`` 0 unless the row has it)."""
        return Agent(
            id=row["id"],
            name=row["name"],
            labels=_json(row["labels"], []),
            created=row["created"],
            last_heartbeat=row["last_heartbeat"],
            runs_held=int(row.get("runs_held") or 0),
        )


@strawberry.enum(description="How flow runs are ordered.")
class FlowRunOrder(enum.Enum):
    """Orders of flow runs."""

    STARTED_DESC = "STARTED_DESC"
    STARTED_ASC = "STARTED_ASC"
    CREATED_DESC = "CREATED_DESC"
    ENDED_DESC = "ENDED_DESC"


@strawberry.input(description="Which flow runs: every filter given must match.")
class FlowRunFilter:
    """Flow-run filters."""

    states: list[str] | None = None
    flow_id: str | None = None
    flow_name: str | None = None
    project: str | None = None
    labels: list[str] | None = None
    started_after: float | None = None
    started_before: float | None = None


@strawberry.type(description="A flow run's records, for a resume on another machine.")
class FlowRunRecords:
    """The run's name, parameters, state and structure and its journal blobs."""

    flow_name: str
    parameters: JSON
    state: str
    message: str | None
    started: float | None
    structure: str | None
    journal: list[str]


# ---------------------------------------------------------------------------- queries


@strawberry.type
class Query:
    """The read side."""

    @strawberry.field(description="Projects by name.")
    def projects(self, info: Info, limit: int = 100, offset: int = 0) -> list[Project]:
        """Projects."""
        return [Project.of(r) for r in models.list_projects(_db(info), limit, offset)]

    @strawberry.field(description="One project by id or name.")
    def project(self, info: Info, id: str | None = None, name: str | None = None) -> Project:
        """One project."""
        if id is None and name is None:
            raise models.ApiError("project needs an id or a name")
        return Project.of(models.get_project(_db(info), project_id=id, name=name))

    @strawberry.field(description="Flows (newest versions unless include_archived).")
    def flows(
        self,
        info: Info,
        project: str | None = None,
        name: str | None = None,
        include_archived: bool = False,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Flow]:
        """Flows."""
        rows = models.list_flows(
            _db(info),
            project=project,
            name=name,
            include_archived=include_archived,
            limit=limit,
            offset=offset,
        )
        return [Flow.of(r) for r in rows]

    @strawberry.field(description="One flow version by id.")
    def flow(self, info: Info, id: str) -> Flow:
        """One flow version."""
        auth.require_flow(_db(info), auth.principal_of(info), id)
        return Flow.of(models.get_flow(_db(info), id))

    @strawberry.field(description="Flow runs, filtered, ordered and paged.")
    def flow_runs(
        self,
        info: Info,
        filter: FlowRunFilter | None = None,
        order_by: FlowRunOrder = FlowRunOrder.STARTED_DESC,
        limit: int = 50,
        offset: int = 0,
    ) -> list[FlowRun]:
        """Flow runs."""
        f = filter or FlowRunFilter()
        rows = models.list_flow_runs(
            _db(info),
            states=f.states,
            flow_id=f.flow_id,
            flow_name=f.flow_name,
            project=f.project,
            labels=f.labels,
            started_after=f.started_after,
            started_before=f.started_before,
            order_by=order_by.value if isinstance(order_by, FlowRunOrder) else str(order_by),
            limit=limit,
            offset=offset,
        )
        return [FlowRun.of(r) for r in rows]

    @strawberry.field(description="One flow run by id (or a unique id prefix).")
    def flow_run(self, info: Info, id: str) -> FlowRun:
        """One flow run."""
        auth.require_run(_db(info), auth.principal_of(info), id)
        return FlowRun.of(models.get_flow_run(_db(info), id))

    @strawberry.field(description="One task run of a flow run, with its state version.")
    def task_run(self, info: Info, flow_run_id: str, id: int) -> TaskRunDetail:
        """One task run."""
        row = models.task_run(_db(info), flow_run_id, id)
        base = TaskRun.of(row["flow_run_id"], row)
        return TaskRunDetail(
            **{k: getattr(base, k) for k in TaskRun.__annotations__},
            version=row["version"],
            transitions=[Transition(**t) for t in row["transitions"]],
        )

    @strawberry.field(description="Log lines of a flow run (or one task run), oldest first.")
    def logs(
        self,
        info: Info,
        flow_run_id: str,
        task_run_id: int | None = None,
        min_level: int = 0,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Log]:
        """Log lines."""
        rows = models.list_logs(
            _db(info),
            flow_run_id,
            task_run_id=task_run_id,
            min_level=min_level,
            limit=limit,
            offset=offset,
        )
        return [Log(**r) for r in rows]

    @strawberry.field(description="Agents, most recently seen first.")
    def agents(self, info: Info, limit: int = 100, offset: int = 0) -> list[Agent]:
        """Agents."""
        return [Agent.of(r) for r in models.list_agents(_db(info), limit, offset)]

    @strawberry.field(
        description="What resuming a run on another machine needs: its records, every "
        "journal blob base64-encoded in order."
    )
    def flow_run_records(self, info: Info, id: str) -> FlowRunRecords:
        """A run's records (see models.export_records)."""
        auth.require_run(_db(info), auth.principal_of(info), id)
        got = models.export_records(_db(info), id)
        return FlowRunRecords(
            **{k: got[k] for k in ("flow_name", "state", "message", "started", "structure")},
            parameters=_json(got["parameters"], {}),
            journal=[base64.b64encode(b).decode("ascii") for b in got["journal"]],
        )


# -------------------------------------------------------------------------- mutations


@strawberry.input
class CreateProjectInput:
    """create_project's input."""

    name: str
    description: str | None = None


@strawberry.input
class ProjectIdInput:
    """delete_project's input."""

    project_id: str


@strawberry.input
class RegisterFlowInput:
    """register_flow's input: what ferroflow.client.flow_structure and flow_storage make."""

    project_name: str
    name: str
    structure: JSON
    storage: JSON
    labels: list[str] | None = None
    idempotency_key: str | None = None
    set_schedule_active: bool = True


@strawberry.input
class FlowIdInput:
    """An input naming one flow version."""

    flow_id: str


@strawberry.input
class CreateFlowRunInput:
    """create_flow_run's input: a flow by id, or by name and project (newest version)."""

    flow_id: str | None = None
    flow_name: str | None = None
    project: str | None = None
    parameters: JSON | None = None
    run_name: str | None = None
    scheduled_start_time: float | None = None
    labels: list[str] | None = None
    idempotency_key: str | None = None


@strawberry.input
class FlowRunStateInput:
    """One flow-run state change, naming the version it expects."""

    flow_run_id: str
    version: int
    state: str
    message: str | None = None


@strawberry.input
class SetFlowRunStatesInput:
    """set_flow_run_states's input."""

    states: list[FlowRunStateInput]


@strawberry.input
class TaskRunStateInput:
    """One task-run state change, naming the version it expects."""

    flow_run_id: str
    task_run_id: int
    version: int
    state: str
    message: str | None = None


@strawberry.input
class SetTaskRunStatesInput:
    """set_task_run_states's input."""

    states: list[TaskRunStateInput]


@strawberry.input
class LogInput:
    """One log line."""

    flow_run_id: str
    message: str
    task_run_id: int | None = None
    level: int = 20
    timestamp: float | None = None


@strawberry.input
class WriteRunLogsInput:
    """write_run_logs's input."""

    logs: list[LogInput]


@strawberry.input
class FlowRunIdInput:
    """An input naming one flow run."""

    flow_run_id: str


@strawberry.type
class IdPayload:
    """The id of what was made."""

    id: str


@strawberry.type
class SuccessPayload:
    """Whether it worked (errors are GraphQL errors)."""

    success: bool


@strawberry.type
class RegisterFlowPayload:
    """The registered version; ``created`` is False when it was already registered."""

    id: str
    version: int
    created: bool


@strawberry.type
class StatePayload:
    """A flow run's new state and version."""

    id: str
    state: str
    version: int


@strawberry.type
class SetFlowRunStatesPayload:
    """The new states and versions."""

    states: list[StatePayload]


@strawberry.type
class TaskRunStatePayload:
    """A task run's new state and version."""

    flow_run_id: str
    task_run_id: int
    state: str
    version: int


@strawberry.type
class SetTaskRunStatesPayload:
    """The new task-run states and versions."""

    states: list[TaskRunStatePayload]


@strawberry.type
class _CoreMutation:
    """The write side, with Prefect Server 1's names."""

    @strawberry.mutation(description="Create a project (a name not yet taken).")
    def create_project(self, info: Info, input: CreateProjectInput) -> IdPayload:
        """create_project."""
        return IdPayload(id=models.create_project(_db(info), input.name, input.description)["id"])

    @strawberry.mutation(description="Delete a project and its flows (their runs stay).")
    def delete_project(self, info: Info, input: ProjectIdInput) -> SuccessPayload:
        """delete_project."""
        models.delete_project(_db(info), input.project_id)
        return SuccessPayload(success=True)

    @strawberry.mutation(description="Register a flow: same structure, same version.")
    def register_flow(self, info: Info, input: RegisterFlowInput) -> RegisterFlowPayload:
        """register_flow."""
        row = models.register_flow(
            _db(info),
            project_name=input.project_name,
            name=input.name,
            structure=input.structure,  # type: ignore[arg-type]
            storage=input.storage,  # type: ignore[arg-type]
            labels=input.labels,
            idempotency_key=input.idempotency_key,
            set_schedule_active=input.set_schedule_active,
        )
        return RegisterFlowPayload(
            id=row["id"], version=int(row["version"]), created=row["created"]
        )

    @strawberry.mutation(description="Archive one flow version (its runs stay).")
    def archive_flow(self, info: Info, input: FlowIdInput) -> SuccessPayload:
        """archive_flow."""
        models.archive_flow(_db(info), input.flow_id)
        return SuccessPayload(success=True)

    @strawberry.mutation(description="Create a Scheduled flow run of a registered flow.")
    def create_flow_run(self, info: Info, input: CreateFlowRunInput) -> IdPayload:
        """create_flow_run."""
        params = input.parameters
        if params is not None and not isinstance(params, dict):
            raise models.ApiError("parameters must be a JSON object of name: value")
        row = models.create_flow_run(
            _db(info),
            flow_id=input.flow_id,
            flow_name=input.flow_name,
            project=input.project,
            parameters=params,
            run_name=input.run_name,
            scheduled_start_time=input.scheduled_start_time,
            labels=input.labels,
            idempotency_key=input.idempotency_key,
        )
        return IdPayload(id=row["id"])

    @strawberry.mutation(description="Set flow-run states; each names its expected version.")
    def set_flow_run_states(
        self, info: Info, input: SetFlowRunStatesInput
    ) -> SetFlowRunStatesPayload:
        """set_flow_run_states."""
        for s in input.states:
            auth.require_run(_db(info), auth.principal_of(info), s.flow_run_id)
        done = models.set_flow_run_states(_db(info), [vars(s) for s in input.states])
        return SetFlowRunStatesPayload(states=[StatePayload(**d) for d in done])

    @strawberry.mutation(description="Set task-run states; each names its expected version.")
    def set_task_run_states(
        self, info: Info, input: SetTaskRunStatesInput
    ) -> SetTaskRunStatesPayload:
        """set_task_run_states."""
        done = models.set_task_run_states(_db(info), [vars(s) for s in input.states])
        return SetTaskRunStatesPayload(
            states=[
                TaskRunStatePayload(
                    flow_run_id=d["flow_run_id"],
                    task_run_id=d["task_run_id"],
                    state=d["state"],
                    version=d["version"],
                )
                for d in done
            ]
        )

    @strawberry.mutation(description="Add log lines to flow runs.")
    def write_run_logs(self, info: Info, input: WriteRunLogsInput) -> SuccessPayload:
        """write_run_logs."""
        models.write_run_logs(_db(info), [vars(x) for x in input.logs])
        return SuccessPayload(success=True)

    @strawberry.mutation(description="Cancel a flow run that has not finished.")
    def cancel_flow_run(self, info: Info, input: FlowRunIdInput) -> StatePayload:
        """cancel_flow_run."""
        return StatePayload(**models.cancel_flow_run(_db(info), input.flow_run_id))

    @strawberry.mutation(description="Turn a flow's schedule on.")
    def set_schedule_active(self, info: Info, input: FlowIdInput) -> SuccessPayload:
        """set_schedule_active."""
        models.set_schedule_active(_db(info), input.flow_id, True)
        return SuccessPayload(success=True)

    @strawberry.mutation(description="Turn a flow's schedule off.")
    def set_schedule_inactive(self, info: Info, input: FlowIdInput) -> SuccessPayload:
        """set_schedule_inactive."""
        models.set_schedule_active(_db(info), input.flow_id, False)
        return SuccessPayload(success=True)


# ------------------------------------------------------------------ agents (issue 13)
# The mutations ferroflow.agent uses, with Prefect Server 1's names. All of them are
# what a ``runner`` role does: register an agent, read its queue, claim a run (one
# conditional UPDATE: one agent wins), renew its leases.


@strawberry.input(description="register_agent's input.")
class RegisterAgentInput:
    """An agent's name and labels (and its id, to refresh an earlier registration)."""

    name: str
    labels: list[str] | None = None
    agent_id: str | None = None


@strawberry.input(description="get_runs_in_queue's input.")
class RunsInQueueInput:
    """Which agent asks, and due by when (now)."""

    agent_id: str
    before: float | None = None
    limit: int = 100


@strawberry.input(description="claim_flow_run's input.")
class ClaimFlowRunInput:
    """The agent, the run and the version it was read at."""

    agent_id: str
    flow_run_id: str
    version: int


@strawberry.input(description="heartbeat's input.")
class AgentHeartbeatInput:
    """The agent and the runs it holds."""

    agent_id: str
    flow_run_ids: list[str] | None = None


@strawberry.type(description="What a heartbeat renewed and what to stop.")
class AgentHeartbeatPayload:
    """Runs renewed, to cancel, and no longer held."""

    held: list[str]
    cancelling: list[str]
    lost: list[str]


@strawberry.type(description="The agent side of the API.")
class AgentMutation:
    """register_agent, get_runs_in_queue, claim_flow_run, heartbeat."""

    @strawberry.mutation(description="Register an agent (or refresh its registration).")
    def register_agent(self, info: Info, input: RegisterAgentInput) -> Agent:
        """register_agent."""
        return Agent.of(
            auth.register_agent(
                _db(info), auth.principal_of(info), input.name, input.labels, input.agent_id
            )
        )

    @strawberry.mutation(description="The due Scheduled runs an agent's labels cover.")
    def get_runs_in_queue(self, info: Info, input: RunsInQueueInput) -> list[FlowRun]:
        """get_runs_in_queue (a mutation: it marks the agent as seen)."""
        db = _db(info)
        auth.require_agent(db, auth.principal_of(info), input.agent_id)
        models.agent_heartbeat(db, input.agent_id)
        rows = models.get_runs_in_queue(db, input.agent_id, input.before, input.limit)
        return [FlowRun.of(r) for r in rows]

    @strawberry.mutation(description="Claim a Scheduled run: exactly one agent wins.")
    def claim_flow_run(self, info: Info, input: ClaimFlowRunInput) -> FlowRun:
        """claim_flow_run."""
        auth.require_agent(_db(info), auth.principal_of(info), input.agent_id)
        return FlowRun.of(
            models.claim_flow_run(_db(info), input.agent_id, input.flow_run_id, input.version)
        )

    @strawberry.mutation(description="Renew an agent's leases; what to stop.")
    def heartbeat(self, info: Info, input: AgentHeartbeatInput) -> AgentHeartbeatPayload:
        """heartbeat."""
        auth.require_agent(_db(info), auth.principal_of(info), input.agent_id)
        got = models.agent_heartbeat(_db(info), input.agent_id, input.flow_run_ids or [])
        return AgentHeartbeatPayload(**got)


@strawberry.input(description="report_attempt's input.")
class ReportAttemptInput:
    """The agent, the run, and the id of the local run that runs it."""

    agent_id: str
    flow_run_id: str
    local_run_id: str


@strawberry.type(description="Where a claimed run starts from.")
class AttemptPayload:
    """The local run id of its latest attempt (resume from it), or None."""

    resume_from: str | None


@strawberry.type(description="The agent side of the API: attempts and resumes.")
class AttemptMutation:
    """begin_attempt, report_attempt, resume_flow_run."""

    @strawberry.mutation(description="Where a claimed run starts: its last attempt, if any.")
    def begin_attempt(self, info: Info, input: FlowRunIdInput) -> AttemptPayload:
        """begin_attempt."""
        auth.require_run(_db(info), auth.principal_of(info), input.flow_run_id)
        return AttemptPayload(resume_from=models.last_attempt(_db(info), input.flow_run_id))

    @strawberry.mutation(description="Record the local run that runs a claimed run.")
    def report_attempt(self, info: Info, input: ReportAttemptInput) -> SuccessPayload:
        """report_attempt."""
        auth.require_agent(_db(info), auth.principal_of(info), input.agent_id)
        models.report_attempt(_db(info), input.agent_id, input.flow_run_id, input.local_run_id)
        return SuccessPayload(success=True)

    @strawberry.mutation(description="Queue a run that ended unsuccessfully again, as a resume.")
    def resume_flow_run(self, info: Info, input: FlowRunIdInput) -> StatePayload:
        """resume_flow_run."""
        r = models.resume_flow_run(_db(info), input.flow_run_id)
        return StatePayload(id=r["id"], version=int(r["version"]), state=r["state"])


# ----------------------------------------------------------------- secrets (issue 14)
# Names and dates for everyone; a value only through secret_value, to the run an agent
# holds (see ferroflow.server.secrets.check_reader). Setting and removing: admin.


@strawberry.type(description="A secret's name and dates (never its value).")
class Secret:
    """A secrets row without its ciphertext."""

    name: str
    created: float
    updated: float


@strawberry.type(description="Secrets: names for everyone, a value for the run that needs it.")
class SecretQuery:
    """secrets, secret_value."""

    @strawberry.field(description="Every secret's name and dates, by name.")
    def secrets(self, info: Info, limit: int = 1000, offset: int = 0) -> list[Secret]:
        """Secret names."""
        return [Secret(**r) for r in server_secrets.list_secrets(_db(info), limit, offset)]

    @strawberry.field(
        description="A secret's value, for a flow run an agent holds (its runner token)."
    )
    def secret_value(self, info: Info, flow_run_id: str, name: str) -> str:
        """secret_value."""
        principal = info.context.get("principal")
        return server_secrets.secret_value(_db(info), flow_run_id, name, principal)


@strawberry.input(description="set_secret's input.")
class SetSecretInput:
    """A secret's name and its new value."""

    name: str
    value: str


@strawberry.input(description="delete_secret's input.")
class SecretNameInput:
    """A secret's name."""

    name: str


@strawberry.type(description="Setting and removing secrets.")
class SecretMutation:
    """set_secret, delete_secret."""

    @strawberry.mutation(description="Set a secret (encrypted at rest).")
    def set_secret(self, info: Info, input: SetSecretInput) -> SuccessPayload:
        """set_secret."""
        server_secrets.set_secret(_db(info), input.name, input.value)
        return SuccessPayload(success=True)

    @strawberry.mutation(description="Remove a secret.")
    def delete_secret(self, info: Info, input: SecretNameInput) -> SuccessPayload:
        """delete_secret."""
        server_secrets.delete_secret(_db(info), input.name)
        return SuccessPayload(success=True)


# ------------------------------------------------------------------ end of secrets block


#: The write side: the core mutations and the agents' ones.
Mutation = merge_types(
    "Mutation",
    (_CoreMutation, AgentMutation, AttemptMutation, AuthMutation, OpsMutation, SecretMutation),
)

# ------------------------------------------------------------------ end of agents block


class _Schema(strawberry.Schema):
    """Logs only unexpected errors: bad input is the client's to read, not the log's."""

    def process_errors(self, errors: list[Any], execution_context: Any = None) -> None:
        """Log the errors whose cause is not a typed ferroflow or GraphQL error."""
        from graphql import GraphQLError

        from ferroflow.exceptions import FerroflowError

        for err in errors:
            original = getattr(err, "original_error", None)
            if original is not None and not isinstance(original, (FerroflowError, GraphQLError)):
                super().process_errors([err], execution_context)


def make_schema() -> strawberry.Schema:
    """The schema with its limits (depth, aliases, tokens)."""
    return _Schema(
        query=merge_types("Query", (Query, AuthQuery, OpsQuery, SecretQuery)),
        mutation=Mutation,
        config=StrawberryConfig(auto_camel_case=False),
        extensions=[
            partial(QueryDepthLimiter, max_depth=MAX_DEPTH),
            partial(MaxAliasesLimiter, max_alias_count=MAX_ALIASES),
            partial(MaxTokensLimiter, max_token_count=MAX_TOKENS),
        ],
    )
