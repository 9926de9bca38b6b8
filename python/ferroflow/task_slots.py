"""Task-tag concurrency limits in a flow-run process (the client side of
:mod:`ferroflow.server.limits`).

An agent's flow-run process calls :func:`install` once it has built the flow: every
task carrying a tag that has a limit on the server (``ferroflow limits set TAG N``)
gets a state handler that, when the task run is about to run (``Running``), takes one
slot of each of its limited tags from the server (``acquire_task_slots``: all or
none) and waits, asking again every :data:`POLL` seconds or so, until it has them;
whatever state comes next (``Success``, ``Failed``, ``Retrying``, ...) gives them back
(``release_task_slots``). A task run that waits is neither failed nor timed out, and
the other task runs of the flow go on. Slots of a flow run that dies are released by
the server once the run is found lost.

The limits are read when the run starts: a tag limited later applies to runs started
later; changing a limit's number applies at once (the server counts at each acquire).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

__all__ = ["POLL", "SlotHandler", "install"]

#: Longest wait, in seconds, between two asks for a slot.
POLL = 1.0

log = logging.getLogger("ferroflow.task_slots")


class SlotHandler:
    """The state handler that holds a task run's slots while it runs.

    Args:
        api_url: the server.
        flow_run_id: the server's id of the flow run.
        tags: the task's tags that have a limit.
    """

    def __init__(self, api_url: str, flow_run_id: str, tags: list[str]) -> None:
        self.api_url = api_url
        self.flow_run_id = flow_run_id
        self.tags = sorted(tags)

    def _holder(self) -> str:
        from ferroflow.runtime import context

        run = context.get("task_run_id")
        if run is None:
            run = f"thread-{threading.get_ident()}"
        return f"{run}:{context.get('map_index')}"

    def _ask(self, mutation: str, holder: str) -> Any:
        from ferroflow.client import Client

        data = Client(self.api_url).graphql(
            f"mutation($i: TaskSlotsInput!) {{ {mutation}(input: $i) }}",
            {"i": {"flow_run_id": self.flow_run_id, "holder": holder, "tags": self.tags}},
        )
        return data[mutation]

    def __call__(self, task: Any, old_state: Any, new_state: Any) -> Any:
        """Acquire on ``Running`` (waiting as long as it takes), release afterwards."""
        from ferroflow.exceptions import ServerUnavailableError
        from ferroflow.states import Running

        holder = self._holder()
        if isinstance(new_state, Running):
            wait = 0.05
            told = False
            while True:
                try:
                    if self._ask("acquire_task_slots", holder):
                        break
                except ServerUnavailableError as exc:
                    log.warning("cannot reach the server for task slots: %s", exc)
                if not told:
                    log.info("task %r waits for a slot of %s", task.name, ", ".join(self.tags))
                    told = True
                time.sleep(wait)
                wait = min(wait * 2, POLL)
            return new_state
        if isinstance(old_state, Running):  # the run that held the slots ended
            try:
                self._ask("release_task_slots", holder)
            except Exception as exc:  # the server releases them when the run ends
                log.warning("could not release the task slots of %r: %s", task.name, exc)
        return new_state


def install(flow: Any, client: Any, flow_run_id: str) -> int:
    """Give every task of ``flow`` with a limited tag a :class:`SlotHandler`; how many
    tasks got one."""
    # A new attempt of the run: slots its earlier attempt (a process that died) still
    # holds are its own, and nothing of it runs yet.
    client.graphql(
        "mutation($i: TaskSlotsInput!) { release_task_slots(input: $i) }",
        {"i": {"flow_run_id": flow_run_id, "holder": None}},
    )
    limited = {str(r["tag"]) for r in client.graphql("{ tag_limits { tag } }")["tag_limits"]}
    if not limited:
        return 0
    n = 0
    for task in flow.tasks:
        tags = sorted(set(task.tags) & limited)
        if tags:
            task.state_handlers = [*task.state_handlers, SlotHandler(client.url, flow_run_id, tags)]
            n += 1
    return n
