"""The command line of operations (issue 17): retention, backfills, notification rules
and concurrency limits.

- ``ferroflow runs rm ID...`` and ``ferroflow runs prune --older-than 30d [--state S]...
  [--dry-run] [--vacuum]``: on the local run store, or on the server with ``--api URL``
  / ``$FERROFLOW_API_URL`` (see :mod:`ferroflow.server.retention`);
- ``ferroflow flows backfill FLOW --start 2026-11-01 --end 2026-11-30 [--project P]
  [--max-concurrent N]`` (see :mod:`ferroflow.server.backfill`);
- ``ferroflow flows limit FLOW N|none [--project P]``, ``ferroflow limits set TAG N``,
  ``limits ls``, ``limits rm TAG`` (see :mod:`ferroflow.server.limits`);
- ``ferroflow notify add --on Failed [--flow F] --webhook URL``, ``notify ls``,
  ``notify rm ID`` (see :mod:`ferroflow.server.notify`).

:func:`install` adds these commands to the ``ferroflow`` group (``cli.py`` imports this
module at its end).
"""

from __future__ import annotations

from typing import Any

import click

from ferroflow import cli as base
from ferroflow._cli_api import FLOWS_COMMANDS, api_option, server_wanted
from ferroflow.cli import EXIT_OK

__all__ = ["install"]

_PRUNE_FIELDS = (
    "count flow_run_ids skipped files_removed files_kept bytes_before bytes_after dry_run note"
)


def _client(api: str | None) -> Any:
    from ferroflow.client import Client

    return Client(api)


def _local_db() -> Any:
    from ferroflow.server.database import SqliteDatabase
    from ferroflow.store import store_path

    return SqliteDatabase(store_path())


def _size(n: Any) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - the loop returns


def _print_prune(got: dict[str, Any], as_json: bool, verb: str) -> int:
    if as_json:
        base._echo_json(got)
        return EXIT_OK
    if got["dry_run"]:
        click.echo(f"Would remove {got['count']} flow run(s) (dry run: nothing changed)")
        for run_id in got["flow_run_ids"][:20]:
            click.echo(f"  {run_id}")
        if got["count"] > 20:
            click.echo(f"  ... and {got['count'] - 20} more")
    else:
        click.echo(
            f"{verb} {got['count']} flow run(s); checkpoint directories: "
            f"{got['files_removed']} removed, {got['files_kept']} kept (still referenced)"
        )
        if got["bytes_before"] is not None:
            click.echo(
                f"Store: {_size(got['bytes_before'])} before, {_size(got['bytes_after'])} after"
            )
    for run_id, why in sorted((got.get("skipped") or {}).items())[:20]:
        click.echo(f"Kept {run_id}: {why}")
    if got.get("note"):
        click.echo(f"Note: {got['note']}")
    return EXIT_OK


@click.command("rm")
@click.argument("run_ids", nargs=-1, required=True, metavar="ID...")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@api_option
def runs_rm_cmd(run_ids: tuple[str, ...], as_json: bool, api: str | None) -> int:
    """Remove finished flow runs (ids or unique prefixes) with their records and
    checkpoint files; a run that has not finished is refused."""
    if server_wanted(api):
        data = _client(api).graphql(
            f"mutation($i: DeleteFlowRunsInput!) {{ delete_flow_runs(input: $i) "
            f"{{ {_PRUNE_FIELDS} }} }}",
            {"i": {"flow_run_ids": list(run_ids)}},
        )
        return _print_prune(data["delete_flow_runs"], as_json, "Removed")
    from ferroflow.server.retention import remove_runs

    db = _local_db()
    try:
        got = remove_runs(db, list(run_ids)).to_dict()
    finally:
        db.close()
    return _print_prune(got, as_json, "Removed")


@click.command("prune")
@click.option(
    "--older-than",
    required=True,
    metavar="DURATION",
    help="Remove finished runs that started longer ago than this (30d, 12h, 90m, 2w).",
)
@click.option(
    "--state",
    "states",
    multiple=True,
    metavar="STATE",
    help="Only runs that ended in this state (repeatable) [every finished state].",
)
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.option(
    "--vacuum",
    is_flag=True,
    help="Local store only: rewrite an older store once (full VACUUM) to give the space "
    "back and switch it to incremental vacuum; blocks writers while it runs.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@api_option
def runs_prune_cmd(
    older_than: str,
    states: tuple[str, ...],
    dry_run: bool,
    vacuum: bool,
    as_json: bool,
    api: str | None,
) -> int:
    """Remove old finished flow runs with their records and checkpoint files (files a
    remaining run or the cache still uses stay); a running run is never removed."""
    from ferroflow.server.retention import parse_duration, prune_runs

    seconds = parse_duration(older_than)
    if server_wanted(api):
        if vacuum:
            raise base.CliError("--vacuum works on the local store; the server vacuums itself")
        data = _client(api).graphql(
            f"mutation($i: PruneFlowRunsInput!) {{ prune_flow_runs(input: $i) "
            f"{{ {_PRUNE_FIELDS} }} }}",
            {"i": {"older_than": older_than, "states": list(states) or None, "dry_run": dry_run}},
        )
        return _print_prune(data["prune_flow_runs"], as_json, "Pruned")
    db = _local_db()
    try:
        got = prune_runs(db, seconds, states or None, dry_run=dry_run, vacuum=vacuum).to_dict()
    finally:
        db.close()
    return _print_prune(got, as_json, "Pruned")


@click.command("backfill")
@click.argument("flow")
@click.option(
    "--start", required=True, metavar="DATE", help="The first day (2026-11-01) or instant."
)
@click.option("--end", required=True, metavar="DATE", help="The last day (included) or instant.")
@click.option("--project", "-p", default=None, help="The flow's project (when names clash).")
@click.option(
    "--max-concurrent",
    type=click.IntRange(min=1),
    default=None,
    help="At most this many of the backfill's runs at once [no bound].",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@api_option
def flows_backfill_cmd(
    flow: str,
    start: str,
    end: str,
    project: str | None,
    max_concurrent: int | None,
    as_json: bool,
    api: str | None,
) -> int:
    """Create a run of FLOW (a name or a flow version id) for every scheduled time of
    its schedule from --start to --end that has none yet (running it again creates
    nothing new)."""
    from ferroflow.server.backfill import parse_instant

    parse_instant(start, "--start")  # a bad date is reported before asking the server
    parse_instant(end, "--end", end=True)
    looks_like_id = len(flow) == 32 and all(c in "0123456789abcdef" for c in flow)
    data = _client(api).graphql(
        "mutation($i: BackfillInput!) { backfill_flow_runs(input: $i) "
        "{ id flow_id created existing flow_run_ids } }",
        {
            "i": {
                "start": start,
                "end": end,
                "flow_id": flow if looks_like_id else None,
                "flow_name": None if looks_like_id else flow,
                "project": project,
                "max_concurrent": max_concurrent,
            }
        },
    )
    got = data["backfill_flow_runs"]
    if as_json:
        base._echo_json(got)
        return EXIT_OK
    bound = f", at most {max_concurrent} at once" if max_concurrent else ""
    click.echo(
        f"Backfill {got['id']}: created {got['created']} run(s){bound}; "
        f"{got['existing']} scheduled time(s) had a run already"
    )
    return EXIT_OK


def _limit_value(text: str) -> int | None:
    if text.lower() in ("none", "off"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise base.CliError(f"a limit is an int >= 0 or 'none', got {text!r}") from None
    if value < 0:
        raise base.CliError(f"a limit is an int >= 0 or 'none', got {text!r}")
    return value


@click.command("limit")
@click.argument("flow")
@click.argument("max_running", metavar="N|none")
@click.option("--project", "-p", default=None, help="The flow's project (when names clash).")
@api_option
def flows_limit_cmd(flow: str, max_running: str, project: str | None, api: str | None) -> int:
    """At most N runs of FLOW run at once (the others wait, Scheduled); 'none' removes
    the limit."""
    got = _client(api).graphql(
        "mutation($i: FlowLimitInput!) { set_flow_limit(input: $i) { flow_name max_running } }",
        {"i": {"flow": flow, "max_running": _limit_value(max_running), "project": project}},
    )["set_flow_limit"]
    if got["max_running"] is None:
        click.echo(f"Flow {got['flow_name']!r} has no run limit")
    else:
        click.echo(f"Flow {got['flow_name']!r}: at most {got['max_running']} run(s) at once")
    return EXIT_OK


@click.group("limits")
def limits_group() -> None:
    """Task-tag concurrency limits on the server (across every run and agent)."""


@limits_group.command("set")
@click.argument("tag")
@click.argument("max_running", type=click.IntRange(min=0), metavar="N")
@api_option
def limits_set_cmd(tag: str, max_running: int, api: str | None) -> int:
    """At most N task runs tagged TAG run at once; the rest wait."""
    got = _client(api).graphql(
        "mutation($i: TagLimitInput!) { set_tag_limit(input: $i) { tag max_running running } }",
        {"i": {"tag": tag, "max_running": max_running}},
    )["set_tag_limit"]
    click.echo(
        f"Tag {got['tag']!r}: at most {got['max_running']} at once ({got['running']} running)"
    )
    return EXIT_OK


@limits_group.command("rm")
@click.argument("tag")
@api_option
def limits_rm_cmd(tag: str, api: str | None) -> int:
    """Remove the limit of TAG."""
    _client(api).graphql(
        "mutation($i: TagLimitInput!) { set_tag_limit(input: $i) { tag } }",
        {"i": {"tag": tag, "max_running": None}},
    )
    click.echo(f"Tag {tag!r} has no limit")
    return EXIT_OK


@limits_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@api_option
def limits_ls_cmd(as_json: bool, api: str | None) -> int:
    """List the tag limits and the flow limits, with what runs now."""
    data = _client(api).graphql(
        "{ tag_limits { tag max_running running } flow_limits { flow_name max_running running } }"
    )
    if as_json:
        base._echo_json(data)
        return EXIT_OK
    from rich.table import Table

    table = Table(title="Concurrency limits", title_justify="left")
    for col in ("Kind", "Name", "Limit", "Running"):
        table.add_column(col)
    for r in data["tag_limits"]:
        table.add_row("tag", r["tag"], str(r["max_running"]), str(r["running"]))
    for r in data["flow_limits"]:
        table.add_row("flow", str(r["flow_name"]), str(r["max_running"]), str(r["running"]))
    base._out().print(table)
    return EXIT_OK


@click.group("notify")
def notify_group() -> None:
    """Notification rules on the server: POST to a webhook when runs end in a state."""


@notify_group.command("add")
@click.option("--on", "on_state", required=True, metavar="STATE", help="e.g. Failed, Success.")
@click.option("--flow", "flow_name", default=None, help="Only runs of this flow [any flow].")
@click.option("--webhook", required=True, metavar="URL", help="Where to POST (Slack-compatible).")
@api_option
def notify_add_cmd(on_state: str, flow_name: str | None, webhook: str, api: str | None) -> int:
    """Add a rule: POST to URL once for every run (of FLOW) that ends in STATE; a
    receiver that is down is retried with backoff."""
    from ferroflow.utilities.notifications import check_webhook_url

    check_webhook_url(webhook)
    got = _client(api).graphql(
        "mutation($i: NotifyRuleInput!) { add_notify_rule(input: $i) { id } }",
        {"i": {"on_state": on_state, "flow_name": flow_name, "webhook": webhook}},
    )["add_notify_rule"]
    click.echo(f"Notification rule {got['id']} added")
    return EXIT_OK


@notify_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@api_option
def notify_ls_cmd(as_json: bool, api: str | None) -> int:
    """List the rules with their deliveries (sent, pending, failed)."""
    rules = _client(api).graphql(
        "{ notify_rules { id on_state flow_name webhook created sent pending failed } }"
    )["notify_rules"]
    if as_json:
        base._echo_json(rules)
        return EXIT_OK
    from rich.table import Table

    table = Table(title="Notification rules", title_justify="left")
    for col in ("ID", "On", "Flow", "Webhook", "Sent", "Pending", "Failed"):
        table.add_column(col)
    for r in rules:
        table.add_row(
            r["id"][:8],
            r["on_state"],
            r["flow_name"] or "(any)",
            r["webhook"],
            str(r["sent"]),
            str(r["pending"]),
            str(r["failed"]),
        )
    base._out().print(table)
    return EXIT_OK


@notify_group.command("rm")
@click.argument("rule_id", metavar="ID")
@api_option
def notify_rm_cmd(rule_id: str, api: str | None) -> int:
    """Remove a rule (ID may be a unique prefix)."""
    found = _client(api).graphql(
        "mutation($id: String!) { delete_notify_rule(id: $id) }", {"id": rule_id}
    )["delete_notify_rule"]
    click.echo(f"Notification rule {found} removed")
    return EXIT_OK


def install(cli: click.Group) -> None:
    """Add the ops commands to the ``ferroflow`` group: ``runs rm``, ``runs prune``,
    ``flows backfill``, ``flows limit``, ``limits`` and ``notify``."""
    runs = cli.commands["runs"]
    assert isinstance(runs, click.Group)
    runs.add_command(runs_rm_cmd)
    runs.add_command(runs_prune_cmd)
    FLOWS_COMMANDS.extend([flows_backfill_cmd, flows_limit_cmd])
    flows = cli.commands.get("flows")
    if isinstance(flows, click.Group):  # cli_server came first; else it adds them
        for command in FLOWS_COMMANDS:
            flows.add_command(command)
    cli.add_command(limits_group)
    cli.add_command(notify_group)


install(base.cli)
