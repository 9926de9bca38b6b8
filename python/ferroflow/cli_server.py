"""The command line of the platform: the commands that talk to a ferroflow server.

- ``ferroflow server start [--host 127.0.0.1] [--port 4200] [--database-url URL]``;
- ``ferroflow projects create NAME | ls | rm NAME``;
- ``ferroflow flows ls [--project P]``, ``ferroflow flows schedule FLOW --on|--off``;
- ``ferroflow register --project P path/to/flows.py[:flow] [--label L]...``;
- ``ferroflow run --project P --name FLOW [--param k=v] [--watch]``: create a flow run
  on the server; ``--watch`` follows its states and logs until it ends, with the exit
  status of a local run (0 Success, 1 otherwise);
- ``ferroflow runs ls|show|logs`` against the server when ``--api URL`` or
  ``FERROFLOW_API_URL`` is set (``--json`` prints the same fields as against the local
  store), and ``ferroflow runs cancel RUN_ID`` (server only).

Every command finds the server at ``--api``, else ``$FERROFLOW_API_URL``, else
``http://127.0.0.1:4200``, and talks to it only through :class:`ferroflow.client.Client`.
:func:`install` adds these commands to the ``ferroflow`` group (``cli.py`` calls it).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from ferroflow import cli as base
from ferroflow._cli_api import FLOWS_COMMANDS, api_option, server_wanted, wrap_callback
from ferroflow.cli import EXIT_FAILED, EXIT_OK, CliError

__all__ = ["WATCH_INTERVAL", "install"]

#: Seconds between two polls of ``run --watch``.
WATCH_INTERVAL = 0.5

#: Flow-run states after which ``--watch`` stops.
_FINISHED = frozenset(
    {"Success", "Failed", "TimedOut", "TriggerFailed", "Cancelled", "Skipped", "Interrupted"}
)


def _client(api: str | None) -> Any:
    from ferroflow.client import Client

    return Client(api)


# ------------------------------------------------------------------------------ server


@click.group("server")
def server_group() -> None:
    """Run the ferroflow server (the API over the run store)."""


@server_group.command("start")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="The address to listen on (another than loopback needs an API token).",
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=4200, show_default=True, help="0: any."
)
@click.option(
    "--database-url",
    default=None,
    metavar="URL",
    help="postgresql://... or sqlite:///path [$FERROFLOW_DATABASE_URL, else the run store "
    "at $FERROFLOW_HOME].",
)
@click.option(
    "--scheduler-interval",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Seconds between two passes of the scheduler, 0: none "
    "[$FERROFLOW_SCHEDULER_INTERVAL, else 5].",
)
@click.option("--ssl-certfile", default=None, metavar="PEM", help="Serve HTTPS: the certificate.")
@click.option("--ssl-keyfile", default=None, metavar="PEM", help="The certificate's private key.")
def server_start_cmd(
    host: str,
    port: int,
    database_url: str | None,
    scheduler_interval: float | None,
    ssl_certfile: str | None,
    ssl_keyfile: str | None,
) -> int:
    """Serve the API at /graphql (and /health, /) and schedule the runs of active
    schedules, until Ctrl-C or SIGTERM. Without an API token (see 'ferroflow tokens')
    only a loopback --host is accepted."""
    try:
        from ferroflow.server import serve
    except ImportError as exc:
        raise CliError(
            f"the server needs its extra packages ({exc.name} is missing): "
            "pip install 'ferroflow[server]'"
        ) from exc
    serve(
        host,
        port,
        database_url,
        scheduler_interval=scheduler_interval,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )
    return EXIT_OK


# ---------------------------------------------------------------------------- projects


@click.group("projects")
def projects_group() -> None:
    """Create, list and remove projects on the server."""


@projects_group.command("create")
@click.argument("name")
@click.option("--description", "-d", default=None, help="What the project is for.")
@api_option
def projects_create_cmd(name: str, description: str | None, api: str | None) -> int:
    """Create project NAME."""
    project_id = _client(api).create_project(name, description)
    click.echo(f"Created project {name!r} ({project_id})")
    return EXIT_OK


@projects_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@api_option
def projects_ls_cmd(as_json: bool, api: str | None) -> int:
    """List the projects."""
    projects = _client(api).get_projects()
    if as_json:
        base._echo_json(projects)
        return EXIT_OK
    table = Table(title="Projects", title_justify="left")
    table.add_column("Name")
    table.add_column("Description")
    table.add_column("Created", no_wrap=True)
    for p in projects:
        table.add_row(Text(p["name"]), Text(p["description"] or ""), base._fmt_time(p["created"]))
    base._out().print(table)
    return EXIT_OK


@projects_group.command("rm")
@click.argument("name")
@api_option
def projects_rm_cmd(name: str, api: str | None) -> int:
    """Remove project NAME and its flows (their runs stay)."""
    _client(api).delete_project(name)
    click.echo(f"Removed project {name!r}")
    return EXIT_OK


# ------------------------------------------------------------------------------- flows


@click.group("flows")
def flows_group() -> None:
    """The flows registered on the server."""


@flows_group.command("ls")
@click.option("--project", "-p", default=None, help="Only this project's flows.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@api_option
def flows_ls_cmd(project: str | None, as_json: bool, api: str | None) -> int:
    """List the registered flows (newest versions)."""
    flows = _client(api).get_flows(project)
    if as_json:
        base._echo_json(flows)
        return EXIT_OK
    table = Table(title="Flows", title_justify="left")
    for col in ("Project", "Flow", "Version", "ID"):
        table.add_column(col)
    for f in flows:
        table.add_row(Text(f["project"]["name"]), Text(f["name"]), str(f["version"]), f["id"])
    base._out().print(table)
    return EXIT_OK


@flows_group.command("schedule")
@click.argument("flow")
@click.option("--on/--off", "on", required=True, help="Turn the flow's schedule on or off.")
@click.option("--project", "-p", default=None, help="The flow's project (when names clash).")
@api_option
def flows_schedule_cmd(flow: str, on: bool, project: str | None, api: str | None) -> int:
    """Turn the schedule of FLOW (a name or a flow id) on or off; off removes its
    future automatic runs that have not started."""
    client = _client(api)
    found = [f for f in client.get_flows(project) if flow in (f["name"], f["id"])]
    if not found:
        where = f" in project {project!r}" if project else ""
        raise CliError(f"no flow {flow!r}{where} (see 'ferroflow flows ls')")
    if len(found) > 1:
        projects = ", ".join(sorted(f["project"]["name"] for f in found))
        raise CliError(f"flow {flow!r} is in several projects ({projects}): give --project")
    client.set_schedule_active(found[0]["id"], on)
    click.echo(f"Schedule of flow {found[0]['name']!r} is {'on' if on else 'off'}")
    return EXIT_OK


@click.command("register")
@click.argument("target", metavar="PATH[:FLOW_NAME]")
@click.option("--project", "-p", required=True, help="The project to register into.")
@click.option("--label", "-l", "labels", multiple=True, help="A label for its runs.")
@api_option
def register_cmd(target: str, project: str, labels: tuple[str, ...], api: str | None) -> int:
    """Register the flow defined in PATH with the server (same structure: same version)."""
    path, name = base.split_target(target)
    flow = base.pick_flow(base.find_flows(base.load_module(path)), name, path)
    got = _client(api).register(flow, project, list(labels), source=path)
    if got["created"]:
        click.echo(f"Registered flow {flow.name!r} version {got['version']} ({got['id']})")
    else:
        click.echo(f"Flow {flow.name!r} is unchanged: version {got['version']} ({got['id']})")
    return EXIT_OK


# -------------------------------------------------------------------------- flow runs


def _watch(client: Any, run_id: str) -> int:
    """Follow a flow run's states and logs until it ends; the exit status."""
    last_state = None
    seen_logs = 0
    while True:
        run = client.get_flow_run(run_id)
        logs = client.get_logs(run_id, offset=seen_logs)
        for line in logs:
            click.echo(f"  [{line['level']}] {line['message']}")
        seen_logs += len(logs)
        if run["state"] != last_state:
            last_state = run["state"]
            message = f": {run['message']}" if run["message"] else ""
            click.echo(f"{base._fmt_time(time.time())} {last_state}{message}")
            sys.stdout.flush()
        if last_state in _FINISHED:
            return EXIT_OK if last_state == "Success" else EXIT_FAILED
        time.sleep(WATCH_INTERVAL)


def run_on_server(
    project: str | None, name: str | None, params: tuple[str, ...], watch: bool, api: str | None
) -> int:
    """``ferroflow run --project P --name FLOW``: create the run, maybe watch it."""
    if not project or not name:
        raise CliError("a run on the server needs both --project and --name")
    client = _client(api)
    run_id = client.create_flow_run(
        flow_name=name, project=project, parameters=base.parse_params(params)
    )
    click.echo(f"Created flow run {run_id} of {name!r} in project {project!r}")
    sys.stdout.flush()
    return _watch(client, run_id) if watch else EXIT_OK


def _local_fields(run: dict[str, Any]) -> dict[str, Any]:
    """A server flow run with the fields ``runs ls --json`` prints for a local one."""
    ended, started = run["ended"], run["started"]
    return {
        "id": run["id"],
        "flow_name": run["flow_name"],
        "parameters": run["parameters"],
        "state": run["state"],
        "message": run["message"],
        "started": started,
        "ended": ended,
        "duration": None if ended is None else max(0.0, ended - started),
        "pid": run["pid"],
        "host": run["host"],
        "resumed_from": run["resumed_from"],
    }


def runs_ls_server(limit: int, as_json: bool, api: str | None) -> int:
    """``ferroflow runs ls`` against the server."""
    client = _client(api)
    runs = client.get_flow_runs(limit=limit)
    if as_json:
        base._echo_json([_local_fields(r) for r in runs])
        return EXIT_OK
    table = Table(title=f"Recent runs ({client.url})", title_justify="left")
    for col in ("ID", "Flow", "State", "Started"):
        table.add_column(col, no_wrap=True)
    for r in runs:
        table.add_row(
            r["id"][:8],
            Text(r["flow_name"]),
            base._state_text(r["state"]),
            base._fmt_time(r["started"]),
        )
    base._out().print(table)
    return EXIT_OK


def runs_show_server(run_id: str, as_json: bool, limit: int, api: str | None) -> int:
    """``ferroflow runs show`` against the server."""
    client = _client(api)
    run = client.get_flow_run(run_id)
    total, task_runs = client.get_task_runs(run["id"], limit=min(limit or 1000, 1000))
    if as_json:
        out = _local_fields(run)
        out["task_runs"] = task_runs
        out["task_run_total"] = total
        base._echo_json(out)
        return EXIT_OK
    out_console = base._out()
    out_console.print(
        Text(f"Flow run {run['id']} of {run['flow_name']!r}: ").append(
            base._state_text(run["state"])
        )
    )
    table = Table(title=f"Task runs ({total})", title_justify="left")
    for col in ("Run", "Task", "State", "Message"):
        table.add_column(col)
    for t in task_runs:
        full = t["task_name"] if t["map_index"] is None else f"{t['task_name']}[{t['map_index']}]"
        table.add_row(
            str(t["id"]), Text(full), base._state_text(t["state"]), Text(t["message"] or "")
        )
    out_console.print(table)
    return EXIT_OK


_LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}


def runs_logs_server(
    run_id: str, task: str | None, level: str | None, as_json: bool, api: str | None
) -> int:
    """``ferroflow runs logs`` against the server."""
    if task is not None:
        raise CliError("--task works on the local store only; on a server, filter by level")
    min_level = 0
    if level is not None:
        named = _LEVELS.get(level.upper())
        if named is None and not level.isdigit():
            raise CliError(f"bad --level {level!r}: DEBUG, INFO, WARNING, ERROR or a number")
        min_level = named if named is not None else int(level)
    client = _client(api)
    run = client.get_flow_run(run_id)
    logs = client.get_logs(run["id"], min_level=min_level)
    if as_json:
        base._echo_json(logs)
        return EXIT_OK
    for line in logs:
        click.echo(f"{base._fmt_time(line['at'])} [{line['level']}] {line['message']}")
    return EXIT_OK


def _logs_wrapper(original: Callable[..., Any], **kw: Any) -> Any:
    api = kw.pop("api")
    if server_wanted(api):
        return runs_logs_server(kw["run_id"], kw["task"], kw["level"], kw["as_json"], api)
    return original(**kw)


@click.command("cancel")
@click.argument("run_id")
@api_option
def runs_cancel_cmd(run_id: str, api: str | None) -> int:
    """Cancel flow run RUN_ID on the server."""
    client = _client(api)
    run = client.get_flow_run(run_id)
    state = client.cancel_flow_run(run["id"])
    click.echo(f"Flow run {run['id']} is {state}")
    return EXIT_OK


# ----------------------------------------------------------------------------- install


def _run_wrapper(original: Callable[..., Any], **kw: Any) -> Any:
    project, name = kw.pop("project"), kw.pop("name")
    watch, api = kw.pop("watch"), kw.pop("api")
    if project is not None or name is not None:
        if kw.get("target") is not None:
            raise CliError("give either PATH (a local run) or --project and --name, not both")
        return run_on_server(project, name, kw["params"], watch, api)
    if kw.get("target") is None:
        ctx = click.get_current_context()
        target = next(p for p in ctx.command.params if p.name == "target")
        raise click.MissingParameter(
            ctx=ctx, param=target, message="give a file to run, or --project and --name"
        )
    if watch or api:
        raise CliError("--watch and --api go with --project and --name (a run on the server)")
    return original(**kw)


def _ls_wrapper(original: Callable[..., Any], **kw: Any) -> Any:
    api = kw.pop("api")
    if server_wanted(api):
        return runs_ls_server(kw["limit"], kw["as_json"], api)
    return original(**kw)


def _show_wrapper(original: Callable[..., Any], **kw: Any) -> Any:
    api = kw.pop("api")
    if server_wanted(api):
        return runs_show_server(kw["run_id"], kw["as_json"], kw["limit"], api)
    return original(**kw)


def install(cli: click.Group) -> None:
    """Add the platform's commands to the ``ferroflow`` group: ``server``, ``projects``,
    ``flows``, ``register``, ``runs cancel``, and the server options of ``run`` and
    ``runs ls|show|logs``."""
    for command in (server_group, projects_group, flows_group, register_cmd):
        cli.add_command(command)
    for command in FLOWS_COMMANDS:
        flows_group.add_command(command)
    run = cli.commands["run"]
    for param in run.params:
        if param.name == "target":
            param.required = False
    run.params.extend(
        [
            click.Option(
                ["--project"], default=None, help="Run a registered flow of this project."
            ),
            click.Option(
                ["--name"], default=None, help="The registered flow's name (with --project)."
            ),
            click.Option(["--watch"], is_flag=True, help="Follow the server run until it ends."),
            click.Option(["--api"], default=None, metavar="URL", help="The ferroflow server."),
        ]
    )
    wrap_callback(run, _run_wrapper)
    runs = cli.commands["runs"]
    assert isinstance(runs, click.Group)
    for sub, wrapper in (("ls", _ls_wrapper), ("show", _show_wrapper), ("logs", _logs_wrapper)):
        command = runs.commands[sub]
        command.params.append(
            click.Option(
                ["--api"],
                default=None,
                metavar="URL",
                help="Ask this ferroflow server [$FERROFLOW_API_URL when set] instead of "
                "the local run store.",
            )
        )
        wrap_callback(command, wrapper)
    runs.add_command(runs_cancel_cmd)


# Registered on import (ferroflow.cli imports this module at its end, after `cli` is
# defined; importing this module first imports ferroflow.cli, which then finds it).
install(base.cli)
