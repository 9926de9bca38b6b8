"""The agent: runs registered flows where it is, as the server hands them out.

An :class:`Agent` registers itself with the server (``register_agent``), then loops:
it renews its leases (``heartbeat``: the server answers which of its runs are being
cancelled and which it no longer holds), asks for the due ``Scheduled`` runs its labels
cover (``get_runs_in_queue``: a run's labels must all be among the agent's), and claims
them one by one (``claim_flow_run``: one conditional UPDATE on the run's state and
version, so of many agents racing exactly one wins, and a retried claim of the winner
is answered with the same run). Each claimed run goes to its own flow-run process,
``python -m ferroflow.agent_run RUN_ID`` (:mod:`ferroflow.agent_run`), which rebuilds
the flow from its registered storage and runs it with the normal engine, streaming it
to the server. At most ``max_concurrent_runs`` run at once.

A run being cancelled (``ferroflow runs cancel ID``) gets SIGINT, which the flow-run
process takes as Ctrl-C: the run is recorded ``Cancelled`` (resumable); one that has
not stopped after :data:`CANCEL_GRACE` seconds is killed and set ``Cancelled``. A run
the server says the agent no longer holds is killed (it runs elsewhere, not twice).
When the server cannot be reached the agent keeps its runs going and retries with a
backoff up to :data:`MAX_BACKOFF` seconds.

The flow-run processes inherit the agent's environment (``FERROFLOW_API_URL``,
``FERROFLOW_API_KEY``, ...) with ``FERROFLOW_HOME`` set to the agent's work directory,
whose run store records their runs locally first.

``import ferroflow`` does not import this module.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferroflow.exceptions import ApiError, FerroflowError, ServerUnavailableError
from ferroflow.store import FINISHED_STATES

__all__ = ["CANCEL_GRACE", "MAX_BACKOFF", "POLL_INTERVAL", "Agent", "AgentError"]

#: Seconds between two polls of an agent with room for more runs.
POLL_INTERVAL = 0.5

#: Seconds a cancelled flow-run process has to stop after SIGINT before it is killed.
CANCEL_GRACE = 3.0

#: The longest wait between two attempts to reach an unreachable server, in seconds.
MAX_BACKOFF = 30.0

logger = logging.getLogger("ferroflow.agent")


class AgentError(FerroflowError):
    """An agent was configured wrongly (a concurrency below 1, a work directory that
    cannot be created).

    Example:
        >>> issubclass(AgentError, FerroflowError)
        True
    """


@dataclass
class _Held:
    """A run this agent holds and the process running it."""

    flow_run_id: str
    process: subprocess.Popen[bytes]
    cancel_sent: float | None = None
    renewed: float = field(default_factory=time.monotonic)
    log: Any = field(default=None, repr=False)


class Agent:
    """Polls the server for flow runs and runs them in child processes.

    Args:
        labels: the labels this agent covers; a run is taken only when all its labels
            are among them.
        max_concurrent_runs: how many flow runs at once [1].
        dask_address: run every flow on this ``dask.distributed`` scheduler
            (``tcp://host:port``) instead of its own executor.
        api_url: the server [``$FERROFLOW_API_URL``].
        name: shown in ``ferroflow agents ls`` [host name and pid].
        work_dir: the flow-run processes' ``FERROFLOW_HOME`` (their local run store,
            the rebuilt flow files, their logs) [``$FERROFLOW_HOME/agent``].
        poll_interval: seconds between polls [:data:`POLL_INTERVAL`].
        api_key: the agent's API token (a ``runner`` one), also given to its flow-run
            processes [``$FERROFLOW_API_KEY``].

    Raises:
        AgentError: ``max_concurrent_runs`` below 1, ``poll_interval`` not positive.
        PlatformError: a malformed ``$FERROFLOW_LEASE_TIMEOUT`` (see
            :func:`ferroflow.server.lease_timeout`).

    Example:
        >>> Agent(labels=["gpu"], max_concurrent_runs=2).labels
        ['gpu']
    """

    def __init__(
        self,
        labels: list[str] | None = None,
        max_concurrent_runs: int = 1,
        dask_address: str | None = None,
        api_url: str | None = None,
        name: str | None = None,
        work_dir: str | Path | None = None,
        poll_interval: float = POLL_INTERVAL,
        api_key: str | None = None,
    ) -> None:
        from ferroflow.client import Client
        from ferroflow.server import lease_timeout
        from ferroflow.store import store_path

        if max_concurrent_runs < 1:
            raise AgentError(f"max_concurrent_runs must be at least 1, got {max_concurrent_runs}")
        if poll_interval <= 0:
            raise AgentError(f"poll_interval must be positive, got {poll_interval}")
        self.labels = sorted(set(labels or []))
        self.max_concurrent_runs = max_concurrent_runs
        self.dask_address = dask_address
        self.client = Client(api_url, api_key=api_key)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.work_dir = Path(work_dir) if work_dir else store_path().parent / "agent"
        self.poll_interval = poll_interval
        self.lease_timeout = lease_timeout()
        self.agent_id: str | None = None
        self.held: dict[str, _Held] = {}
        self.runs_started = 0
        self._stop = threading.Event()

    def __repr__(self) -> str:
        return f"Agent(labels={self.labels!r}, max_concurrent_runs={self.max_concurrent_runs})"

    # -------------------------------------------------------------------- the loop

    def register(self) -> str:
        """Register with the server (again, keeping the id, after it was unreachable);
        the agent's id."""
        self.agent_id = self.client.register_agent(self.name, self.labels, self.agent_id)
        return self.agent_id

    def start(self, max_runs: int | None = None) -> None:
        """Run until :meth:`stop` (or SIGTERM/Ctrl-C from the command line), or until
        ``max_runs`` runs were started and have ended. The server being unreachable
        does not end it: it retries with a growing backoff."""
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AgentError(
                f"cannot create the agent's work directory {self.work_dir}: {exc}"
            ) from exc
        backoff = self.poll_interval
        while not self._stop.is_set():
            try:
                if self.agent_id is None:
                    self.register()
                    logger.info("agent %s registered (labels %s)", self.agent_id, self.labels)
                self.step(max_runs)
                backoff = self.poll_interval
            except ServerUnavailableError as exc:
                self._reap()
                self._stop_expired()
                logger.warning("%s; retrying in %.1f s", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            if max_runs is not None and self.runs_started >= max_runs and not self.held:
                return
            self._stop.wait(self.poll_interval)
        self._shutdown()

    def stop(self) -> None:
        """Ask :meth:`start` to return (its runs are cancelled first)."""
        self._stop.set()

    def step(self, max_runs: int | None = None) -> None:
        """One round: reap ended processes, renew leases (stopping runs being cancelled
        or no longer held), then claim and start due runs while there is room."""
        assert self.agent_id is not None
        self._reap()
        beat = self.client.agent_heartbeat(self.agent_id, list(self.held))
        now = time.monotonic()
        for run_id in beat["held"]:
            if run_id in self.held:
                self.held[run_id].renewed = now
        for run_id in beat["lost"]:
            held = self.held.get(run_id)
            if held is not None:
                logger.warning("flow run %s is no longer held by this agent: stopping it", run_id)
                held.process.kill()
        for run_id in beat["cancelling"]:
            self._cancel(run_id)
        room = self.max_concurrent_runs - len(self.held)
        if max_runs is not None:
            room = min(room, max_runs - self.runs_started)
        if room <= 0:
            return
        for run in self.client.get_runs_in_queue(self.agent_id, limit=room * 4):
            if room <= 0:
                break
            try:
                claimed = self.client.claim_flow_run(self.agent_id, run["id"], int(run["version"]))
            except ApiError:
                continue  # another agent won it
            self._launch(str(claimed["id"]))
            room -= 1

    # --------------------------------------------------------------- the processes

    def _launch(self, run_id: str) -> None:
        env = dict(os.environ)
        env["FERROFLOW_HOME"] = str(self.work_dir)
        env["FERROFLOW_API_URL"] = self.client.url
        if self.client.api_key:
            env["FERROFLOW_API_KEY"] = self.client.api_key
        cmd = [
            sys.executable,
            "-m",
            "ferroflow.agent_run",
            run_id,
            "--work-dir",
            str(self.work_dir),
        ]
        cmd += ["--agent-id", str(self.agent_id)]
        if self.dask_address:
            cmd += ["--dask-address", self.dask_address]
        logs = self.work_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        out = open(logs / f"{run_id}.log", "wb")
        process = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.held[run_id] = _Held(run_id, process, log=out)
        self.runs_started += 1
        logger.info("flow run %s started (pid %s)", run_id, process.pid)

    def _cancel(self, run_id: str) -> None:
        held = self.held.get(run_id)
        if held is None:
            return
        now = time.monotonic()
        if held.cancel_sent is None:
            held.cancel_sent = now
            self._signal_group(held, signal.SIGINT)
        elif now - held.cancel_sent > CANCEL_GRACE:
            self._signal_group(held, signal.SIGKILL)

    @staticmethod
    def _signal_group(held: _Held, sig: int) -> None:
        try:
            os.killpg(held.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _reap(self) -> None:
        for run_id, held in list(self.held.items()):
            code = held.process.poll()
            if code is None:
                continue
            del self.held[run_id]
            if held.log is not None:
                held.log.close()
            # Whatever the process left behind (processes of its own) goes with it.
            self._signal_group(held, signal.SIGKILL)
            if code < 0 and held.cancel_sent is None:
                # Killed: no longer renewed, the server queues it again as a resume.
                logger.warning("flow run %s: its process was killed (%s)", run_id, code)
            elif code != 0:
                self._settle(run_id, code, held.cancel_sent is not None)
            logger.info("flow run %s ended (exit status %s)", run_id, code)

    def _settle(self, run_id: str, code: int, cancelled: bool) -> None:
        """A flow-run process that ended without finishing its run: record why.

        A process the server would not let start the run (``agent_run.EXIT_REFUSED``)
        leaves it as it is unless the run is still ``Pending`` and held by this agent:
        otherwise it changed since the claim (another agent holds it, say), and marking
        it ``Failed`` would overwrite the state of whoever has it."""
        from ferroflow.agent_run import EXIT_REFUSED

        try:
            run = self.client.get_flow_run(run_id)
            if run["state"] in FINISHED_STATES:
                return
            ours = run["state"] == "Pending" and run.get("agent_id") == self.agent_id
            if code == EXIT_REFUSED and not ours:
                logger.warning(
                    "flow run %s: the server refused to start it here (it is %s, held by "
                    "%s): left as it is",
                    run_id,
                    run["state"],
                    run.get("agent_id"),
                )
                return
            state = "Cancelled" if cancelled else "Failed"
            self.client.set_flow_run_state(
                run_id,
                int(run["version"]),
                state,
                "cancelled through the API"
                if cancelled
                else f"the flow-run process exited with status {code}",
            )
        except (ApiError, ServerUnavailableError) as exc:
            logger.warning("flow run %s: could not record its end: %s", run_id, exc)

    def _stop_expired(self) -> None:
        """Kill the runs whose lease could not be renewed for most of its time: the
        server queues them again, so they must not go on here too."""
        if not self.lease_timeout:
            return  # no leases: the server never runs it elsewhere
        now = time.monotonic()
        for run_id, held in self.held.items():
            if now - held.renewed > self.lease_timeout * 0.8:
                logger.warning(
                    "flow run %s: lease not renewed for %.0f s: stopping it (the server "
                    "runs it again elsewhere)",
                    run_id,
                    now - held.renewed,
                )
                self._signal_group(held, signal.SIGKILL)

    def _shutdown(self) -> None:
        for held in self.held.values():
            self._signal_group(held, signal.SIGINT)
        deadline = time.monotonic() + CANCEL_GRACE
        while self.held and time.monotonic() < deadline:
            for run_id, held in list(self.held.items()):
                if held.process.poll() is not None:
                    self.held.pop(run_id)
            time.sleep(0.05)
        for held in self.held.values():
            self._signal_group(held, signal.SIGKILL)
