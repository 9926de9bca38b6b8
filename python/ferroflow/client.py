"""The client of the ferroflow server: the one Python way to talk to it.

:class:`Client` finds the server at ``$FERROFLOW_API_URL`` (default
``http://127.0.0.1:4200``) and speaks GraphQL over HTTP with the stdlib ``urllib``
(on purpose: the CLI, ``flow.register`` and the agent need no HTTP dependency; the
server's packages are only for the server). A refusal by the server raises
:class:`~ferroflow.exceptions.ApiError` with its message; a server that cannot be
reached raises :class:`~ferroflow.exceptions.ServerUnavailableError` naming the URL.

:func:`flow_structure` and :func:`flow_storage` are what registering sends: the flow's
shape (tasks, edges, parameters with types and defaults, schedule) and its source
module's text, so an agent can rebuild the flow without the author's files.

``import ferroflow`` does not import this module.

Example:
    >>> from ferroflow.client import Client
    >>> client = Client("http://127.0.0.1:4200")
    >>> client.create_project("etl")  # doctest: +SKIP
    '5b0e...'
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ferroflow.exceptions import (
    ApiError,
    AuthenticationError,
    FerroflowError,
    ForbiddenError,
    RegistrationError,
    ServerUnavailableError,
)

if TYPE_CHECKING:
    from ferroflow.flow import Flow

__all__ = [
    "DEFAULT_API_URL",
    "Client",
    "api_url",
    "flow_storage",
    "flow_structure",
    "schedule_blob",
]

#: Where the server is when ``FERROFLOW_API_URL`` is not set.
DEFAULT_API_URL = "http://127.0.0.1:4200"


def api_url() -> str:
    """``$FERROFLOW_API_URL``, else :data:`DEFAULT_API_URL`."""
    return os.environ.get("FERROFLOW_API_URL") or DEFAULT_API_URL


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return {"repr": repr(value)}
    return value


def _type_name(tp: Any) -> str | None:
    if tp is None:
        return None
    name = getattr(tp, "__qualname__", None)
    module = getattr(tp, "__module__", None)
    if isinstance(name, str) and module == "builtins":
        return name
    if isinstance(name, str) and isinstance(module, str):
        return f"{module}.{name}"
    return repr(tp)


def flow_structure(flow: Flow) -> dict[str, Any]:
    """The flow's shape as JSON-ready data: ``tasks`` (id, name, slug, type,
    max_retries), ``edges`` (upstream and downstream task ids, key, mapped, flattened),
    ``parameters`` (name, type, required, default) and ``schedule`` (None, or its repr and
    :func:`schedule_blob`).

    Raises:
        RegistrationError: the flow does not build (a cycle, an unbound argument, ...).
    """
    from ferroflow.task import Parameter

    try:
        flow.validate()
        compiled = flow._compile()
    except FerroflowError as exc:
        raise RegistrationError(f"flow {flow.name!r} does not build: {exc}") from exc
    slugs = flow.slugs
    tasks = [
        {
            "id": i,
            "name": t.name,
            "slug": slugs.get(t, t.name),
            "type": f"{type(t).__module__}.{type(t).__qualname__}",
            "max_retries": int(getattr(t, "max_retries", 0) or 0),
        }
        for i, t in enumerate(compiled.tasks)
    ]
    edges = [
        {"upstream": u, "downstream": d, "key": k, "mapped": m, "flattened": f}
        for u, d, k, m, f in compiled.edge_ids
    ]
    parameters = [
        {
            "name": p.name,
            "type": _type_name(p.type),
            "required": bool(p.required),
            "default": None if p.required else _jsonable(p.default),
        }
        for p in compiled.tasks
        if isinstance(p, Parameter)
    ]
    schedule = None
    if flow.schedule is not None:
        schedule = {"repr": repr(flow.schedule), "cloudpickle": schedule_blob(flow.schedule)}
    return {"tasks": tasks, "edges": edges, "parameters": parameters, "schedule": schedule}


def schedule_blob(schedule: Any) -> str:
    """The schedule as base64 text of its cloudpickle: what the server's scheduler
    rebuilds it from (its clocks, filters and adjustments, user-defined ones included).
    Functions of modules that are not installed packages (a flow file loaded by
    ``ferroflow register``) travel by value.

    Raises:
        RegistrationError: the schedule cannot be pickled.

    Example:
        >>> from datetime import timedelta
        >>> from ferroflow.schedules import IntervalSchedule
        >>> isinstance(schedule_blob(IntervalSchedule(interval=timedelta(hours=1))), str)
        True
    """
    import base64

    import cloudpickle

    by_value = []
    for fn in [
        *getattr(schedule, "filters", ()),
        *getattr(schedule, "or_filters", ()),
        *getattr(schedule, "not_filters", ()),
        *getattr(schedule, "adjustments", ()),
    ]:
        module = sys.modules.get(getattr(fn, "__module__", "") or "")
        file = getattr(module, "__file__", None)
        if (
            module is not None
            and module.__name__.split(".")[0] != "ferroflow"
            and isinstance(file, str)
            and "site-packages" not in file
            and module.__name__ not in sys.stdlib_module_names
            and module.__name__ not in by_value
        ):
            by_value.append(module.__name__)
    registered = []
    try:
        already = cloudpickle.list_registry_pickle_by_value()
        for name in by_value:
            if name not in already:  # e.g. registered by load_module
                cloudpickle.register_pickle_by_value(sys.modules[name])
                registered.append(name)
        blob = cloudpickle.dumps(schedule)
    except Exception as exc:
        raise RegistrationError(f"cannot send the schedule {schedule!r}: {exc}") from exc
    finally:
        for name in registered:
            cloudpickle.unregister_pickle_by_value(sys.modules[name])
    return base64.b64encode(blob).decode("ascii")


def _source_file(flow: Flow) -> Path | None:
    """The file that defines the flow: the module of most of its tasks' functions, else
    the main script."""
    counts: dict[str, int] = {}
    for t in flow.tasks:
        fn = getattr(t, "run", None)
        module = sys.modules.get(getattr(fn, "__module__", "") or "")
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and not file.startswith(str(Path(__file__).parent)):
            counts[file] = counts.get(file, 0) + 1
    if counts:
        return Path(max(counts, key=lambda f: counts[f]))
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    return Path(main) if isinstance(main, str) else None


def flow_storage(flow: Flow, source: str | Path | None = None) -> dict[str, Any]:
    """What an agent needs to rebuild the flow: ``{"type": "source", "filename",
    "source", "flow_name"}`` with the text of the file that defines it (``source``, or
    found from its tasks' functions).

    Raises:
        RegistrationError: the file cannot be found or read.
    """
    path = Path(source) if source is not None else _source_file(flow)
    if path is None:
        raise RegistrationError(
            f"cannot tell which file defines flow {flow.name!r}: register it with "
            "'ferroflow register --project P path/to/flows.py'"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistrationError(
            f"cannot read {path} to register flow {flow.name!r}: {exc}"
        ) from exc
    return {"type": "source", "filename": path.name, "source": text, "flow_name": flow.name}


_FLOW_RUN_FIELDS = (
    "id name flow_name flow_id state message version parameters labels started ended "
    "scheduled_start_time created host pid resumed_from agent_id heartbeat"
)


class Client:
    """Talks to a ferroflow server over GraphQL.

    Args:
        url: the server [``$FERROFLOW_API_URL``, else ``http://127.0.0.1:4200``].
        timeout: seconds to wait for an answer [30].
        api_key: the API token, sent as ``Authorization: Bearer`` [``$FERROFLOW_API_KEY``;
            none: fine for a server without tokens, on this machine].
        ca_file: a PEM file of the certificate authorities to trust for an ``https``
            server [the system's; ``$SSL_CERT_FILE``].

    Example:
        >>> Client("http://127.0.0.1:4200").url
        'http://127.0.0.1:4200'
    """

    def __init__(
        self,
        url: str | None = None,
        timeout: float = 30.0,
        api_key: str | None = None,
        ca_file: str | None = None,
    ) -> None:
        self.url = (url or api_url()).rstrip("/")
        self.timeout = timeout
        self.api_key = api_key or os.environ.get("FERROFLOW_API_KEY") or None
        self._ssl: Any = None
        if ca_file is not None:
            import ssl

            try:
                self._ssl = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ApiError(
                    f"cannot read the certificate authorities in {ca_file}: {exc}"
                ) from exc

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run one GraphQL operation; its ``data``.

        Raises:
            ApiError: the server answered with errors (the first one's message).
            ServerUnavailableError: the server cannot be reached.
        """
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=body,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            method="POST",
        )
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(
                request, timeout=self.timeout, context=self._ssl
            ) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            if not raw:
                raise ApiError(f"the server at {self.url} answered HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if "CERTIFICATE_VERIFY_FAILED" in str(reason):
                raise ApiError(
                    f"the TLS certificate of {self.url} is not trusted ({reason}): give the "
                    "certificate authority that signed it, Client(ca_file=...) or "
                    "$SSL_CERT_FILE"
                ) from exc
            raise ServerUnavailableError(
                f"cannot reach the ferroflow server at {self.url} ({reason}): start it with "
                "'ferroflow server start', or set FERROFLOW_API_URL / --api to its address"
            ) from exc
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            raise ApiError(f"the server at {self.url} did not answer JSON") from exc
        errors = payload.get("errors") if isinstance(payload, dict) else None
        if errors:
            first: dict[str, Any] = (
                errors[0] if isinstance(errors[0], dict) else {"message": str(errors[0])}
            )
            extensions = first.get("extensions")
            code = str(extensions.get("code")) if isinstance(extensions, dict) else ""
            kind = {"FORBIDDEN": ForbiddenError, "UNAUTHENTICATED": AuthenticationError}.get(
                code, ApiError
            )
            raise kind(str(first.get("message", first)), errors)
        data = payload.get("data") if isinstance(payload, dict) else None
        return data if isinstance(data, dict) else {}

    # ------------------------------------------------------------------- projects

    def create_project(self, name: str, description: str | None = None) -> str:
        """Create a project; its id."""
        data = self.graphql(
            "mutation($i: CreateProjectInput!) { create_project(input: $i) { id } }",
            {"i": {"name": name, "description": description}},
        )
        return str(data["create_project"]["id"])

    def get_projects(self) -> list[dict[str, Any]]:
        """Every project (id, name, description, created)."""
        data = self.graphql("{ projects(limit: 1000) { id name description created } }")
        return list(data["projects"])

    def delete_project(self, name: str) -> None:
        """Delete the project named ``name`` and its flows (their runs stay)."""
        data = self.graphql("query($n: String) { project(name: $n) { id } }", {"n": name})
        self.graphql(
            "mutation($i: ProjectIdInput!) { delete_project(input: $i) { success } }",
            {"i": {"project_id": data["project"]["id"]}},
        )

    # ---------------------------------------------------------------------- flows

    def register(
        self,
        flow: Flow,
        project_name: str,
        labels: list[str] | None = None,
        idempotency_key: str | None = None,
        set_schedule_active: bool = True,
        source: str | Path | None = None,
    ) -> dict[str, Any]:
        """Register ``flow`` in a project: ``{"id", "version", "created"}`` (``created``
        False when the same structure and source were registered already).

        Raises:
            RegistrationError: the flow does not build, or its file cannot be read.
            ApiError: e.g. no such project (the message says how to create it).
        """
        data = self.graphql(
            "mutation($i: RegisterFlowInput!) { register_flow(input: $i) { id version created } }",
            {
                "i": {
                    "project_name": project_name,
                    "name": flow.name,
                    "structure": flow_structure(flow),
                    "storage": flow_storage(flow, source),
                    "labels": list(labels or []),
                    "idempotency_key": idempotency_key,
                    "set_schedule_active": set_schedule_active,
                }
            },
        )
        return dict(data["register_flow"])

    def get_flows(self, project: str | None = None) -> list[dict[str, Any]]:
        """The newest version of every flow (of one project)."""
        data = self.graphql(
            "query($p: String) { flows(project: $p, limit: 1000) "
            "{ id name version archived labels created project { name } } }",
            {"p": project},
        )
        return list(data["flows"])

    def set_schedule_active(self, flow_id: str, active: bool) -> None:
        """Turn a flow's schedule on or off."""
        name = "set_schedule_active" if active else "set_schedule_inactive"
        self.graphql(
            f"mutation($i: FlowIdInput!) {{ {name}(input: $i) {{ success }} }}",
            {"i": {"flow_id": flow_id}},
        )

    # ------------------------------------------------------------------ flow runs

    def create_flow_run(
        self,
        flow_id: str | None = None,
        *,
        flow_name: str | None = None,
        project: str | None = None,
        parameters: dict[str, Any] | None = None,
        run_name: str | None = None,
        scheduled_start_time: float | None = None,
        labels: list[str] | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Create a Scheduled run of a registered flow (by id, or by name in a project);
        its id."""
        data = self.graphql(
            "mutation($i: CreateFlowRunInput!) { create_flow_run(input: $i) { id } }",
            {
                "i": {
                    "flow_id": flow_id,
                    "flow_name": flow_name,
                    "project": project,
                    "parameters": parameters,
                    "run_name": run_name,
                    "scheduled_start_time": scheduled_start_time,
                    "labels": labels,
                    "idempotency_key": idempotency_key,
                }
            },
        )
        return str(data["create_flow_run"]["id"])

    def get_flow_run(self, flow_run_id: str) -> dict[str, Any]:
        """One flow run (an id prefix is enough) with its task-run counts."""
        data = self.graphql(
            f"query($id: String!) {{ flow_run(id: $id) {{ {_FLOW_RUN_FIELDS} "
            "task_run_counts { task task_name mapped_child state count } } }",
            {"id": flow_run_id},
        )
        return dict(data["flow_run"])

    def get_flow_runs(
        self, limit: int = 20, states: list[str] | None = None, project: str | None = None
    ) -> list[dict[str, Any]]:
        """The newest flow runs (optionally in some states, of one project)."""
        data = self.graphql(
            f"query($f: FlowRunFilter, $n: Int!) {{ flow_runs(filter: $f, limit: $n) "
            f"{{ {_FLOW_RUN_FIELDS} }} }}",
            {"f": {"states": states, "project": project}, "n": limit},
        )
        return list(data["flow_runs"])

    def get_task_runs(
        self, flow_run_id: str, limit: int = 100, offset: int = 0
    ) -> tuple[int, list[dict[str, Any]]]:
        """A page of a flow run's task runs and how many it has."""
        data = self.graphql(
            "query($id: String!, $n: Int!, $o: Int!) { flow_run(id: $id) { "
            "task_runs(limit: $n, offset: $o) { total items { id task task_name map_index "
            "run_count state message started ended result_location } } } }",
            {"id": flow_run_id, "n": limit, "o": offset},
        )
        page = data["flow_run"]["task_runs"]
        return int(page["total"]), list(page["items"])

    def set_flow_run_state(
        self, flow_run_id: str, version: int, state: str, message: str | None = None
    ) -> int:
        """Set a flow run's state, naming the version it is expected to be at; the new
        version. ApiError when the version is stale."""
        data = self.graphql(
            "mutation($i: SetFlowRunStatesInput!) { set_flow_run_states(input: $i) "
            "{ states { id version } } }",
            {
                "i": {
                    "states": [
                        {
                            "flow_run_id": flow_run_id,
                            "version": version,
                            "state": state,
                            "message": message,
                        }
                    ]
                }
            },
        )
        return int(data["set_flow_run_states"]["states"][0]["version"])

    def set_task_run_state(
        self,
        flow_run_id: str,
        task_run_id: int,
        version: int,
        state: str,
        message: str | None = None,
    ) -> int:
        """Set a task run's state, naming its expected version; the new version."""
        data = self.graphql(
            "mutation($i: SetTaskRunStatesInput!) { set_task_run_states(input: $i) "
            "{ states { version } } }",
            {
                "i": {
                    "states": [
                        {
                            "flow_run_id": flow_run_id,
                            "task_run_id": task_run_id,
                            "version": version,
                            "state": state,
                            "message": message,
                        }
                    ]
                }
            },
        )
        return int(data["set_task_run_states"]["states"][0]["version"])

    def write_run_logs(self, logs: list[dict[str, Any]]) -> None:
        """Add log lines ``{flow_run_id, message, task_run_id?, level?, timestamp?}``."""
        self.graphql(
            "mutation($i: WriteRunLogsInput!) { write_run_logs(input: $i) { success } }",
            {"i": {"logs": logs}},
        )

    def get_logs(
        self, flow_run_id: str, min_level: int = 0, limit: int = 1000, offset: int = 0
    ) -> list[dict[str, Any]]:
        """A flow run's log lines, oldest first."""
        data = self.graphql(
            "query($id: String!, $l: Int!, $n: Int!, $o: Int!) { logs(flow_run_id: $id, "
            "min_level: $l, limit: $n, offset: $o) { task_run_id level at message } }",
            {"id": flow_run_id, "l": min_level, "n": limit, "o": offset},
        )
        return list(data["logs"])

    def cancel_flow_run(self, flow_run_id: str) -> str:
        """Cancel a flow run; its new state (``Cancelled``, or ``Cancelling`` while its
        agent stops it)."""
        data = self.graphql(
            "mutation($i: FlowRunIdInput!) { cancel_flow_run(input: $i) { state } }",
            {"i": {"flow_run_id": flow_run_id}},
        )
        return str(data["cancel_flow_run"]["state"])

    # --------------------------------------------------------------------- agents

    def get_flow(self, flow_id: str) -> dict[str, Any]:
        """One registered flow version with its ``storage`` and ``structure``."""
        data = self.graphql(
            "query($id: String!) { flow(id: $id) { id name version labels storage structure } }",
            {"id": flow_id},
        )
        return dict(data["flow"])

    def get_agents(self) -> list[dict[str, Any]]:
        """Every agent (id, name, labels, created, last_heartbeat, runs_held), last seen
        first."""
        data = self.graphql(
            "{ agents(limit: 1000) { id name labels created last_heartbeat runs_held } }"
        )
        return list(data["agents"])

    def register_agent(
        self, name: str, labels: list[str] | None = None, agent_id: str | None = None
    ) -> str:
        """Register an agent (or refresh the registration ``agent_id``); its id."""
        data = self.graphql(
            "mutation($i: RegisterAgentInput!) { register_agent(input: $i) { id } }",
            {"i": {"name": name, "labels": list(labels or []), "agent_id": agent_id}},
        )
        return str(data["register_agent"]["id"])

    def get_runs_in_queue(self, agent_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The due Scheduled runs the agent's labels cover, soonest first."""
        data = self.graphql(
            "mutation($i: RunsInQueueInput!) { get_runs_in_queue(input: $i) "
            "{ id version flow_id labels } }",
            {"i": {"agent_id": agent_id, "limit": limit}},
        )
        return list(data["get_runs_in_queue"])

    def claim_flow_run(self, agent_id: str, flow_run_id: str, version: int) -> dict[str, Any]:
        """Claim a Scheduled run read at ``version``: the run (now Pending, held by the
        agent). ApiError when another agent won it."""
        data = self.graphql(
            "mutation($i: ClaimFlowRunInput!) { claim_flow_run(input: $i) "
            f"{{ {_FLOW_RUN_FIELDS} }} }}",
            {"i": {"agent_id": agent_id, "flow_run_id": flow_run_id, "version": version}},
        )
        return dict(data["claim_flow_run"])

    def agent_heartbeat(self, agent_id: str, flow_run_ids: list[str]) -> dict[str, list[str]]:
        """Renew the agent's leases: ``{"held", "cancelling", "lost"}`` run ids."""
        data = self.graphql(
            "mutation($i: AgentHeartbeatInput!) { heartbeat(input: $i) { held cancelling lost } }",
            {"i": {"agent_id": agent_id, "flow_run_ids": flow_run_ids}},
        )
        return dict(data["heartbeat"])

    def begin_attempt(self, flow_run_id: str) -> str | None:
        """The local run id of the run's latest attempt (to resume from), or None."""
        data = self.graphql(
            "mutation($i: FlowRunIdInput!) { begin_attempt(input: $i) { resume_from } }",
            {"i": {"flow_run_id": flow_run_id}},
        )
        got = data["begin_attempt"]["resume_from"]
        return None if got is None else str(got)

    def report_attempt(self, agent_id: str, flow_run_id: str, local_run_id: str) -> None:
        """Record that the agent runs ``flow_run_id`` as the local run ``local_run_id``."""
        self.graphql(
            "mutation($i: ReportAttemptInput!) { report_attempt(input: $i) { success } }",
            {
                "i": {
                    "agent_id": agent_id,
                    "flow_run_id": flow_run_id,
                    "local_run_id": local_run_id,
                }
            },
        )

    def flow_run_records(self, flow_run_id: str) -> dict[str, Any]:
        """What resuming the run on this machine needs (see
        :func:`ferroflow.store.import_flow_run`): ``flow_name``, ``parameters``,
        ``state``, ``message``, ``started``, ``structure`` and ``journal`` (the blobs, as
        bytes, in order)."""
        import base64

        data = self.graphql(
            "query($id: String!) { flow_run_records(id: $id) { flow_name parameters state "
            "message started structure journal } }",
            {"id": flow_run_id},
        )
        got = dict(data["flow_run_records"])
        got["journal"] = [base64.b64decode(b) for b in got["journal"]]
        return got

    def resume_flow_run(self, flow_run_id: str) -> str:
        """Queue a run that ended without succeeding again: the next agent resumes it from
        its last attempt's checkpoints. Its new state (``Scheduled``)."""
        data = self.graphql(
            "mutation($i: FlowRunIdInput!) { resume_flow_run(input: $i) { state } }",
            {"i": {"flow_run_id": flow_run_id}},
        )
        return str(data["resume_flow_run"]["state"])

    # -------------------------------------------------------------- tokens, audit

    def create_api_key(
        self, name: str, role: str, expires_in: float | None = None
    ) -> dict[str, Any]:
        """Make an API token (admin): ``{"name", "role", "token", "expires"}``; the
        token is shown in this answer only.

        Raises:
            ForbiddenError: this client's token is not an admin's.
            ApiError: a bad name or role, or a name in use.
        """
        data = self.graphql(
            "mutation($i: CreateApiKeyInput!) { create_api_key(input: $i) "
            "{ name role token expires } }",
            {"i": {"name": name, "role": role, "expires_in": expires_in}},
        )
        return dict(data["create_api_key"])

    def get_api_keys(self) -> list[dict[str, Any]]:
        """Every API token's name, role, dates and whether it is active (admin)."""
        data = self.graphql("{ api_keys { name role created expires revoked active } }")
        return list(data["api_keys"])

    def revoke_api_key(self, name: str) -> None:
        """Revoke the API token ``name`` at once (admin)."""
        self.graphql(
            "mutation($i: RevokeApiKeyInput!) { revoke_api_key(input: $i) { success } }",
            {"i": {"name": name}},
        )

    def get_audit(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """The audit log, newest first (admin): who, what, when, from where."""
        data = self.graphql(
            "query($n: Int!, $o: Int!) { audit(limit: $n, offset: $o) "
            "{ seq at actor action target detail address } }",
            {"n": limit, "o": offset},
        )
        return list(data["audit"])

    # -------------------------------------------------------------------- secrets

    def set_secret(self, name: str, value: str) -> None:
        """Set secret ``name`` to ``value`` on the server (stored encrypted).

        Example:
            >>> Client().set_secret("DB_PASSWORD", "...")  # doctest: +SKIP
        """
        self.graphql(
            "mutation($i: SetSecretInput!) { set_secret(input: $i) { success } }",
            {"i": {"name": name, "value": value}},
        )

    def delete_secret(self, name: str) -> None:
        """Remove secret ``name`` from the server (ApiError when there is none)."""
        self.graphql(
            "mutation($i: SecretNameInput!) { delete_secret(input: $i) { success } }",
            {"i": {"name": name}},
        )

    def secrets(self) -> list[str]:
        """The names of the server's secrets, sorted (never their values)."""
        return [s["name"] for s in self.secret_list()]

    def secret_list(self) -> list[dict[str, Any]]:
        """Every secret's ``name``, ``created`` and ``updated`` (never a value)."""
        data = self.graphql("{ secrets { name created updated } }")
        return list(data["secrets"])

    def secret_value(self, flow_run_id: str, name: str) -> str:
        """The value of secret ``name`` for flow run ``flow_run_id``: what a flow run
        started by an agent asks for. The server answers only while an agent holds the
        run (and, with tokens, only to the runner token holding it); ApiError
        otherwise."""
        data = self.graphql(
            "query($r: String!, $n: String!) { secret_value(flow_run_id: $r, name: $n) }",
            {"r": flow_run_id, "n": name},
        )
        return str(data["secret_value"])
