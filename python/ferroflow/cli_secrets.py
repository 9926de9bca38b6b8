"""The ``ferroflow secrets`` commands: set, list and remove secrets, rotate their key.

- ``ferroflow secrets set NAME``: the value comes from stdin when stdin is not a
  terminal (``printf %s "$PW" | ferroflow secrets set DB_PASSWORD``; one trailing
  newline is dropped), else from a hidden prompt, asked twice. Never from an argument,
  which would land in the shell's history.
- ``ferroflow secrets ls [--json]``: names and dates, never values.
- ``ferroflow secrets rm NAME``.
- ``ferroflow secrets rotate-key``: re-encrypt every secret with a new key (see
  :func:`ferroflow.server.secrets.rotate_key`); on the database itself, never through
  the API.

``set``, ``ls`` and ``rm`` ask the server when ``--api URL`` or ``$FERROFLOW_API_URL``
is given, and otherwise work on the server's database directly
(``$FERROFLOW_DATABASE_URL``, else the run store at ``$FERROFLOW_HOME``) with the key
beside it, like ``ferroflow runs ls``. ``ferroflow.cli`` imports this module, which
adds the group.
"""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from ferroflow import cli as base
from ferroflow._cli_api import api_option, server_wanted
from ferroflow.cli import EXIT_OK, CliError

__all__ = ["install", "read_value", "secrets_group"]


def _database(database_url: str | None = None) -> Any:
    try:
        from ferroflow.server.database import open_database
        from ferroflow.server.secrets import key_file_for  # noqa: F401 - needs the extra
    except ImportError as exc:  # pragma: no cover - the server extra is installed in dev
        raise CliError(
            f"secrets need the server's packages ({exc.name} is missing): "
            "pip install 'ferroflow[server]'"
        ) from exc
    return open_database(database_url)


def read_value(name: str) -> str:
    """The value for secret ``name``: all of stdin when it is not a terminal (without
    one trailing newline), else a hidden prompt asked twice. CliError when empty."""
    stream = sys.stdin
    if stream is None or stream.isatty():
        value = str(
            click.prompt(
                f"Value of secret {name}", hide_input=True, confirmation_prompt=True, err=True
            )
        )
    else:
        value = stream.read()
        if value.endswith("\r\n"):
            value = value[:-2]
        elif value.endswith("\n"):
            value = value[:-1]
    if not value:
        raise CliError(f"no value for secret {name!r}: give it on stdin or at the prompt")
    return value


@click.group("secrets")
def secrets_group() -> None:
    """Set, list and remove secrets (stored encrypted; values are never shown)."""


@secrets_group.command("set")
@click.argument("name")
@api_option
def secrets_set_cmd(name: str, api: str | None) -> int:
    """Set secret NAME: the value from stdin, or a hidden prompt."""
    from ferroflow.server.secrets import check_name

    check_name(name)
    value = read_value(name)
    if server_wanted(api):
        from ferroflow.client import Client

        Client(api).set_secret(name, value)
    else:
        from ferroflow.server.secrets import set_secret

        db = _database()
        try:
            set_secret(db, name, value)
        finally:
            db.close()
    click.echo(f"Set secret {name!r}")
    return EXIT_OK


@secrets_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@api_option
def secrets_ls_cmd(as_json: bool, api: str | None) -> int:
    """List the secrets: names and dates, never values."""
    if server_wanted(api):
        from ferroflow.client import Client

        rows = Client(api).secret_list()
    else:
        from ferroflow.server.secrets import list_secrets

        db = _database()
        try:
            rows = list_secrets(db)
        finally:
            db.close()
    if as_json:
        base._echo_json(rows)
        return EXIT_OK
    table = Table(title="Secrets", title_justify="left")
    table.add_column("Name")
    table.add_column("Created", no_wrap=True)
    table.add_column("Updated", no_wrap=True)
    for r in rows:
        table.add_row(Text(r["name"]), base._fmt_time(r["created"]), base._fmt_time(r["updated"]))
    base._out().print(table)
    return EXIT_OK


@secrets_group.command("rm")
@click.argument("name")
@api_option
def secrets_rm_cmd(name: str, api: str | None) -> int:
    """Remove secret NAME."""
    if server_wanted(api):
        from ferroflow.client import Client

        Client(api).delete_secret(name)
    else:
        from ferroflow.server.secrets import delete_secret

        db = _database()
        try:
            delete_secret(db, name)
        finally:
            db.close()
    click.echo(f"Removed secret {name!r}")
    return EXIT_OK


@secrets_group.command("rotate-key")
@click.option(
    "--database-url",
    default=None,
    metavar="URL",
    help="postgresql://... or sqlite:///path [$FERROFLOW_DATABASE_URL, else the run store "
    "at $FERROFLOW_HOME].",
)
def secrets_rotate_key_cmd(database_url: str | None) -> int:
    """Re-encrypt every secret with a new key. With the key file beside the store, a new
    key replaces the old one; with $FERROFLOW_SECRET_KEY, the secrets are re-encrypted
    with its first key (set it to NEW,OLD, rotate, then to NEW)."""
    from ferroflow.server.secrets import rotate_key

    db = _database(database_url)
    try:
        count, where = rotate_key(db)
    finally:
        db.close()
    click.echo(f"Re-encrypted {count} secret{'s' if count != 1 else ''} with the new key ({where})")
    sys.stdout.flush()
    return EXIT_OK


def install(cli: click.Group) -> None:
    """Add the ``secrets`` group to the ``ferroflow`` command line."""
    cli.add_command(secrets_group)


# Registered on import, as cli_server is (ferroflow.cli imports this module at its end).
install(base.cli)
