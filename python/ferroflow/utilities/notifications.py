"""Notifications: tell a webhook when a flow or a task changes state.

:func:`webhook_notifier` makes a state handler in the shape of Prefect 1's
``slack_notifier``: put it in a flow's or a task's ``state_handlers`` and it POSTs a
Slack-compatible JSON body (``text`` plus one ``attachments`` entry with the state,
message and ids, :func:`slack_message`) to the URL on each state change it is asked to
report. It never changes the state and never holds the run up for long: the POST runs
in a thread the handler waits for at most ``timeout`` seconds; a receiver that fails,
answers an error status, hangs or cannot be reached is logged (logger
``ferroflow.notifications``) and the run goes on as if nothing happened.

The server's notification rules (``ferroflow notify add``) send the same body.

Example:
    >>> from ferroflow import Flow
    >>> from ferroflow.states import Failed
    >>> handler = webhook_notifier("http://127.0.0.1:9/hook", only_states=[Failed])
    >>> flow = Flow("etl", state_handlers=[handler])
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

from ferroflow.exceptions import OpsError

__all__ = [
    "DEFAULT_TIMEOUT",
    "check_webhook_url",
    "describe_error",
    "post_json",
    "slack_message",
    "webhook_notifier",
]

#: Seconds a state handler waits for the receiver before leaving the POST to finish in
#: the background.
DEFAULT_TIMEOUT = 2.0

log = logging.getLogger("ferroflow.notifications")

#: Attachment colours by state family (Slack's ``color``).
_COLOURS = {"Failed": "#eb0000", "Success": "#28a745", "Cancelled": "#bdbdbd"}


def check_webhook_url(url: Any) -> str:
    """``url`` if it is an http(s) URL with a host.

    Raises:
        OpsError: anything else, naming it.

    Example:
        >>> check_webhook_url("https://hooks.slack.com/services/T/B/X")
        'https://hooks.slack.com/services/T/B/X'
    """
    from urllib.parse import urlsplit

    if not isinstance(url, str):
        raise OpsError(f"a webhook URL is a string, got {url!r}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OpsError(f"a webhook URL must be http:// or https:// with a host, got {url!r}")
    return url


def slack_message(
    kind: str, name: str, state: str, message: str | None, fields: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A Slack-compatible body: ``{"text", "attachments": [{"fallback", "color",
    "title", "text", "fields", "footer"}]}``.

    Example:
        >>> slack_message("Flow", "etl", "Failed", "boom")["text"]
        "Flow 'etl' is now in a Failed state"
    """
    title = f"{kind} {name!r} is now in a {state} state"
    family = "Failed" if state in ("Failed", "TimedOut", "TriggerFailed") else state
    extra = [
        {"title": str(k), "value": str(v), "short": True}
        for k, v in (fields or {}).items()
        if v is not None
    ]
    return {
        "text": title,
        "attachments": [
            {
                "fallback": title,
                "color": _COLOURS.get(family, "#1f77b4"),
                "title": title,
                "text": message or "",
                "fields": [{"title": "State", "value": state, "short": True}, *extra],
                "footer": "ferroflow",
            }
        ],
    }


def post_json(url: str, body: dict[str, Any], timeout: float) -> None:
    """POST ``body`` as JSON; raises OSError (including urllib's errors) on a failure
    or an answer outside 2xx."""
    data = json.dumps(body, default=str).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()
        if not 200 <= response.status < 300:  # pragma: no cover - urlopen raises first
            raise OSError(f"HTTP {response.status}")


def describe_error(exc: BaseException) -> str:
    """A receiver's failure in one line (``HTTP 500``, ``URLError: timed out``)."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    reason = getattr(exc, "reason", None)
    return f"{type(exc).__name__}: {reason if reason is not None else exc}"


def _is_timeout(exc: BaseException) -> bool:
    """Whether a failure of :func:`post_json` is the receiver not answering in time."""
    reason = getattr(exc, "reason", None)
    return isinstance(exc, TimeoutError) or isinstance(reason, TimeoutError)


def _state_classes(states: Iterable[Any] | None, what: str) -> tuple[type, ...] | None:
    from ferroflow.states import State

    if states is None:
        return None
    if isinstance(states, (str, type)):
        states = [states]
    out = []
    for s in states:
        if not (isinstance(s, type) and issubclass(s, State)):
            raise OpsError(f"{what} takes State classes (e.g. ferroflow.states.Failed), got {s!r}")
        out.append(s)
    return tuple(out)


def webhook_notifier(
    url: str,
    only_states: Iterable[Any] | None = None,
    ignore_states: Iterable[Any] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Callable[[Any, Any, Any], Any]:
    """A state handler that POSTs a Slack-compatible message to ``url``.

    Args:
        url: the webhook (a Slack incoming webhook, or any http(s) receiver).
        only_states: report only changes into these State classes (subclasses count:
            ``Failed`` covers ``TimedOut``) [every change].
        ignore_states: never report these.
        timeout: seconds the handler waits for the receiver (> 0) [2].

    Returns:
        ``handler(flow_or_task, old_state, new_state)``, returning ``new_state``.

    Raises:
        OpsError: a URL that is not http(s), states that are not State classes, a
            timeout that is not a positive number.

    Example:
        >>> from ferroflow import task
        >>> from ferroflow.states import Failed
        >>> @task(state_handlers=[webhook_notifier("https://example.com/h", [Failed])])
        ... def load() -> None: ...
    """
    check_webhook_url(url)
    only = _state_classes(only_states, "only_states")
    ignore = _state_classes(ignore_states, "ignore_states") or ()
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise OpsError(f"a webhook timeout must be a number of seconds > 0, got {timeout!r}")

    def handler(obj: Any, old_state: Any, new_state: Any) -> Any:
        if only is not None and not isinstance(new_state, only):
            return new_state
        if ignore and isinstance(new_state, ignore):
            return new_state
        from ferroflow.flow import Flow
        from ferroflow.runtime import context

        kind = "Flow" if isinstance(obj, Flow) else "Task"
        name = str(getattr(obj, "name", obj))
        fields = {
            "Flow run": context.get("flow_run_id"),
            "Flow": context.get("flow_name") if kind == "Task" else None,
            "Map index": context.get("map_index") if kind == "Task" else None,
        }
        body = slack_message(kind, name, type(new_state).__name__, new_state.message, fields)
        problem: list[str] = []
        # One warning per call: a receiver that does not answer in time is "did not
        # answer" whether the join or urlopen's own timeout notices it first.
        said = threading.Lock()
        told: list[bool] = []

        def warn(message: str, *args: Any) -> None:
            with said:
                if told:
                    return
                told.append(True)
            log.warning(message, *args)

        def slow() -> None:
            warn(
                "webhook %s for %s %r did not answer within %s s: the run goes on",
                url,
                kind.lower(),
                name,
                timeout,
            )

        def send() -> None:
            try:
                post_json(url, body, timeout)
            except Exception as exc:  # any failure of the receiver: logged, never raised
                if _is_timeout(exc):
                    slow()
                    return
                problem.append(describe_error(exc))
                warn("webhook %s for %s %r failed: %s", url, kind.lower(), name, problem[0])

        sender = threading.Thread(target=send, name="ferroflow-webhook", daemon=True)
        sender.start()
        sender.join(timeout)
        if sender.is_alive():
            slow()
        return new_state

    handler.__name__ = "webhook_notifier"
    handler.__qualname__ = "webhook_notifier"
    return handler
