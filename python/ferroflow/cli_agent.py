"""The agent's command line.

- ``ferroflow agent start [--label L]... [--max-concurrent N] [--dask-address tcp://...]``:
  run an :class:`ferroflow.agent.Agent` until SIGTERM or Ctrl-C;
- ``ferroflow agents ls [--json]``: the agents the server knows (labels, last seen, runs
  held);
- ``ferroflow runs resume ID --api URL`` (or with ``FERROFLOW_API_URL``): queue a run
  that ended unsuccessfully again, as a resume.

:func:`install` adds them to the ``ferroflow`` group (``cli.py`` calls it).
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from ferroflow import cli as base
from ferroflow._cli_api import api_option, server_wanted, wrap_callback
from ferroflow.agent import POLL_INTERVAL
from ferroflow.cli import EXIT_OK, CliError

__all__ = ["install"]


@click.group("agent")
def agent_group() -> None:
    """Run an agent: it runs the server's flow runs on this machine."""


@agent_group.command("start")
@click.option("--label", "labels", multiple=True, help="A label this agent covers (repeat).")
@click.option("--max-concurrent", default=1, show_default=True, type=int, help="Flow runs at once.")
@click.option(
    "--dask-address", default=None, metavar="tcp://HOST:PORT", help="Run flows on this cluster."
)
@click.option("--name", default=None, help="Shown by 'ferroflow agents ls'.")
@click.option("--work-dir", default=None, help="Where the runs record locally first.")
@click.option(
    "--poll-interval",
    default=POLL_INTERVAL,
    show_default=True,
    type=float,
    help="Seconds between polls.",
)
@api_option
def agent_start_cmd(
    labels: tuple[str, ...],
    max_concurrent: int,
    dask_address: str | None,
    name: str | None,
    work_dir: str | None,
    poll_interval: float,
    api: str | None,
) -> int:
    """Start an agent (until SIGTERM or Ctrl-C)."""
    from ferroflow.agent import Agent, AgentError

    try:
        agent = Agent(
            labels=list(labels),
            max_concurrent_runs=max_concurrent,
            dask_address=dask_address,
            api_url=api,
            name=name,
            work_dir=work_dir,
            poll_interval=poll_interval,
        )
    except AgentError as exc:
        raise CliError(str(exc)) from exc
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    def _stop(signum: int, frame: Any) -> None:
        agent.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    base._out().print(f"agent {agent.name} polling {agent.client.url} (labels {agent.labels})")
    agent.start()
    return EXIT_OK


@click.group("agents")
def agents_group() -> None:
    """The agents the server knows."""


@agents_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@api_option
def agents_ls_cmd(as_json: bool, api: str | None) -> int:
    """List the agents: labels, last seen, runs held."""
    from ferroflow.client import Client

    client = Client(api)
    agents = client.get_agents()
    if as_json:
        base._echo_json(agents)
        return EXIT_OK
    table = Table(title="Agents", title_justify="left")
    for column in ("Id", "Name", "Labels", "Last seen", "Runs held"):
        table.add_column(column)
    for a in agents:
        table.add_row(
            Text(a["id"][:8]),
            Text(a["name"]),
            Text(", ".join(a["labels"])),
            base._fmt_time(a["last_heartbeat"]),
            str(a["runs_held"]),
        )
    base._out().print(table)
    return EXIT_OK


def _resume_wrapper(original: Any, **kw: Any) -> Any:
    api = kw.pop("api")
    if not server_wanted(api):
        return original(**kw)
    from ferroflow.client import Client

    state = Client(api).resume_flow_run(kw["run_id"])
    base._out().print(f"Flow run {kw['run_id']} is {state} again: an agent resumes it.")
    return EXIT_OK


def install(cli: click.Group) -> None:
    """Add ``agent start`` and ``agents ls`` to the ``ferroflow`` group, and ``--api``
    to ``runs resume`` (against a server: queue the run again as a resume)."""
    cli.add_command(agent_group)
    cli.add_command(agents_group)
    runs = cli.commands["runs"]
    assert isinstance(runs, click.Group)
    resume = runs.commands["resume"]
    resume.params.append(
        click.Option(
            ["--api"],
            default=None,
            metavar="URL",
            help="Queue the run again on this ferroflow server [$FERROFLOW_API_URL when "
            "set]: an agent resumes it.",
        )
    )
    wrap_callback(resume, _resume_wrapper)


install(base.cli)
