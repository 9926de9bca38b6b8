"""The command line of operations (issue 17): retention, backfills, notification rules
and concurrency limits.

- ``ferroflow runs rm ID...`` and ``ferroflow runs prune --older-than 30d [--state S]...
  [--dry-run] [--vacuum]``: on the local run store, or on the server with ``--api URL``
  / ``$FERROFLOW_API_URL`` (see :mod:`ferroflow.server.retention`).

:func:`install` adds these commands to the ``ferroflow`` group (``cli.py`` imports this
module at its end).
"""

from __future__ import annotations

from typing import Any

import click

from ferroflow import cli as base
from ferroflow._cli_api import api_option, server_wanted
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


def install(cli: click.Group) -> None:
    """Add the ops commands to the ``ferroflow`` group: ``runs rm``, ``runs prune``."""
    runs = cli.commands["runs"]
    assert isinstance(runs, click.Group)
    runs.add_command(runs_rm_cmd)
    runs.add_command(runs_prune_cmd)


install(base.cli)
