"""What the platform's command-line modules share (``cli_server``, ``cli_agent``).

Kept apart from both, and importing neither, so that each can use it whichever of
them is imported first (``ferroflow.cli`` imports both at its end).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click

__all__ = ["FLOWS_COMMANDS", "api_option", "server_wanted", "wrap_callback"]

#: Subcommands other modules add to ``ferroflow flows`` (``cli_ops``): ``cli_server``
#: adds them when it builds the group, whichever module is imported first.
FLOWS_COMMANDS: list[click.Command] = []

#: The ``--api URL`` option of every command that talks to a server.
api_option = click.option(
    "--api",
    "api",
    default=None,
    metavar="URL",
    help="The ferroflow server [$FERROFLOW_API_URL, else http://127.0.0.1:4200].",
)


def server_wanted(api: str | None) -> bool:
    """Whether a command that also works on the local store should ask a server instead:
    ``--api`` was given or ``$FERROFLOW_API_URL`` is set."""
    return api is not None or bool(os.environ.get("FERROFLOW_API_URL"))


def wrap_callback(command: click.Command, wrapper: Callable[..., Any]) -> None:
    """Make ``command`` call ``wrapper(original_callback, **kwargs)`` instead of its
    callback (how the platform adds server behaviour to the local commands)."""
    original = command.callback
    assert original is not None

    def callback(**kwargs: Any) -> Any:
        return wrapper(original, **kwargs)

    command.callback = callback
