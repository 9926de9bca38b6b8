"""``ferroflow tokens``: the server's API tokens.

- ``ferroflow tokens create --name N --role read_only|user|runner|admin [--expires 30d]``
  prints the new token on stdout, once (nothing keeps it: the store has its hash only);
- ``ferroflow tokens ls [--json]``: names, roles, dates, active or not (never values);
- ``ferroflow tokens revoke N``: at once, and its UI sessions with it.

They work on the server's database directly (``--database-url``, else
``$FERROFLOW_DATABASE_URL``, else the run store at ``$FERROFLOW_HOME``), as ``server
start`` does: that is how the first admin token is made, before the server may listen
on another address than loopback. With ``--api URL`` they ask that server instead
(with an admin's ``$FERROFLOW_API_KEY``).
"""

from __future__ import annotations

import time
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from ferroflow import cli as base
from ferroflow.cli import EXIT_OK, CliError

__all__ = ["tokens_group"]

_database_option = click.option(
    "--database-url",
    default=None,
    metavar="URL",
    help="The server's database [$FERROFLOW_DATABASE_URL, else the run store at $FERROFLOW_HOME].",
)
_api_option = click.option(
    "--api",
    "api",
    default=None,
    metavar="URL",
    help="Ask this ferroflow server (with an admin $FERROFLOW_API_KEY) instead of its database.",
)


def _as_cli() -> Any:
    """Attribute the audit lines of a command to ``cli:<user>`` on this host."""
    import getpass
    import socket

    from ferroflow.server.models import acting_as

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return acting_as(f"cli:{user}", socket.gethostname())


def _db(database_url: str | None) -> Any:
    try:
        from ferroflow.server.database import open_database
    except ImportError as exc:
        raise CliError(
            f"tokens need the server's extra packages ({exc.name} is missing): "
            "pip install 'ferroflow[server]'"
        ) from exc
    return open_database(database_url)


@click.group("tokens")
def tokens_group() -> None:
    """Create, list and revoke the server's API tokens."""


@tokens_group.command("create")
@click.option("--name", "-n", required=True, help="The token's name (unique).")
@click.option(
    "--role",
    "-r",
    required=True,
    type=click.Choice(["read_only", "user", "runner", "admin"]),
    help="What it may do.",
)
@click.option("--expires", default=None, metavar="DURATION", help="e.g. 12h, 30d [never].")
@_database_option
@_api_option
def tokens_create_cmd(
    name: str, role: str, expires: str | None, database_url: str | None, api: str | None
) -> int:
    """Make an API token and print it (once: it is stored only as a hash)."""
    from ferroflow.server.auth import create_token, parse_duration

    expires_in = None if expires is None else parse_duration(expires)
    if api is not None:
        from ferroflow.client import Client

        made = Client(api).create_api_key(name, role, expires_in)
    else:
        db = _db(database_url)
        try:
            with _as_cli():
                made = create_token(db, name, role, expires_in)
        finally:
            db.close()
    until = "never" if made["expires"] is None else base._fmt_time(made["expires"])
    click.echo(
        f"Created token {name!r} (role {role}, expires: {until}). It is shown only now: "
        "keep it in a secret store, e.g. as FERROFLOW_API_KEY.",
        err=True,
    )
    click.echo(made["token"])
    return EXIT_OK


@tokens_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_database_option
@_api_option
def tokens_ls_cmd(as_json: bool, database_url: str | None, api: str | None) -> int:
    """List the tokens (names, roles, dates; never their values)."""
    from ferroflow.server.auth import list_tokens, token_status

    if api is not None:
        from ferroflow.client import Client

        tokens = Client(api).get_api_keys()
    else:
        db = _db(database_url)
        try:
            tokens = list_tokens(db)
        finally:
            db.close()
    if as_json:
        base._echo_json(tokens)
        return EXIT_OK
    table = Table(title="API tokens", title_justify="left")
    for col in ("Name", "Role", "Created", "Expires", "Status"):
        table.add_column(col, no_wrap=True)
    now = time.time()
    for t in tokens:
        status = token_status(t, now)
        table.add_row(
            Text(t["name"]),
            t["role"],
            base._fmt_time(t["created"]),
            "never" if t["expires"] is None else base._fmt_time(t["expires"]),
            status,
        )
    base._out().print(table)
    return EXIT_OK


@tokens_group.command("revoke")
@click.argument("name")
@_database_option
@_api_option
def tokens_revoke_cmd(name: str, database_url: str | None, api: str | None) -> int:
    """Revoke token NAME at once (and end its UI sessions)."""
    from ferroflow.server.auth import revoke_token

    if api is not None:
        from ferroflow.client import Client

        Client(api).revoke_api_key(name)
    else:
        db = _db(database_url)
        try:
            with _as_cli():
                revoke_token(db, name)
        finally:
            db.close()
    click.echo(f"Revoked token {name!r}")
    return EXIT_OK


# Registered on import (ferroflow.cli imports this module at its end).
base.cli.add_command(tokens_group)
