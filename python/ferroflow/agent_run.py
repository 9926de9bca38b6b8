"""The flow-run process an agent starts: ``python -m ferroflow.agent_run RUN_ID``.

It reads the claimed run and its flow's registered storage from the server
(``$FERROFLOW_API_URL``), rebuilds the flow from that storage (the registered source
text, written to this agent's work directory; never the author's files), sets the run
``Running`` and runs it with the normal engine, the run's parameters and the flow's
executor (``--dask-address``: a :class:`~ferroflow.executors.DaskExecutor` on that
cluster). The run records into the local store of ``$FERROFLOW_HOME`` first, and a
:class:`~ferroflow.reporting.Reporter` streams it to the server under the server's run
id. SIGINT or SIGTERM stops it the way Ctrl-C stops a local run: the run is recorded
``Cancelled`` and stays resumable.

Exit status: 0 when the run ran (whatever its final state), 3 when the flow did not
build (the run is then ``Failed`` on the server with the error), 4 when the server
refused the run (another process holds it).

``$FERROFLOW_SERVER_FLOW_RUN_ID`` is set to the server's run id, so that
:class:`~ferroflow.tasks.secrets.FerroflowSecret` asks the server for the run's secrets.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

from ferroflow.reporting import Reporter

__all__ = ["EXIT_BUILD_FAILED", "EXIT_REFUSED", "build_flow", "main"]

#: Exit status when the registered flow does not build.
EXIT_BUILD_FAILED = 3

#: Exit status when the server refused the run.
EXIT_REFUSED = 4


class _ServerIdReporter(Reporter):
    """A Reporter that follows the local run but reports it as the server's run."""

    def __init__(self, api_url: str, store: Path, local_id: str, server_id: str) -> None:
        super().__init__(api_url, store, local_id)
        self.server_id = server_id

    def _batch(self) -> tuple[dict[str, Any], bool] | None:
        got = super()._batch()
        if got is not None:
            got[0]["flow_run"]["id"] = self.server_id
        return got


def build_flow(storage: dict[str, Any], work_dir: Path) -> Any:
    """The flow that ``storage`` (what :func:`ferroflow.client.flow_storage` made)
    describes, rebuilt: its source written under ``work_dir`` and loaded, or its module
    imported; the :class:`~ferroflow.flow.Flow` named ``flow_name`` in it.

    Raises:
        RegistrationError: the storage is malformed, the module does not load, or it
            defines no such flow.
    """
    from ferroflow.exceptions import FerroflowError, RegistrationError
    from ferroflow.flow import Flow

    name = storage.get("flow_name")
    kind = storage.get("type")
    try:
        if kind == "source":
            text = str(storage["source"])
            digest = hashlib.sha256(text.encode()).hexdigest()[:16]
            folder = work_dir / "flows" / digest
            folder.mkdir(parents=True, exist_ok=True)
            filename = Path(str(storage.get("filename") or "flow.py")).name
            path = folder / filename
            _write_source(path, text)
            from ferroflow.cli import load_module

            module = load_module(path)
        elif kind == "module":
            module = importlib.import_module(str(storage["module"]))
        else:
            raise RegistrationError(f"unknown flow storage type {kind!r}: re-register the flow")
    except FerroflowError as exc:
        if isinstance(exc, RegistrationError):
            raise
        raise RegistrationError(f"the registered flow {name!r} does not build: {exc}") from exc
    except Exception as exc:
        raise RegistrationError(
            f"the registered flow {name!r} does not build: {type(exc).__name__}: {exc}"
        ) from exc
    found = [v for v in vars(module).values() if isinstance(v, Flow) and v.name == name]
    if not found:
        raise RegistrationError(
            f"the registered source defines no flow named {name!r}: register it again"
        )
    flow = found[0]
    try:
        flow.validate()
    except FerroflowError as exc:
        raise RegistrationError(f"the registered flow {name!r} does not build: {exc}") from exc
    return flow


def _write_source(path: Path, text: str) -> None:
    """Make ``path`` hold ``text``, never seen half-written: the flow-run processes of
    one agent (``--max-concurrent``) build the same flow at the same moment, and one
    that found the file while another was still writing it loaded a partial module
    (the run failed: "defines no flow"). Written to a unique temporary file beside it
    and renamed over it; a file left partial or different (a crash) is written again."""
    import tempfile

    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except (OSError, UnicodeDecodeError):
        pass  # missing or unreadable: write it
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _fetch_attempt(client: Any, run_id: str, local_id: str) -> None:
    """Make the earlier attempt ``local_id`` of server run ``run_id`` resumable here: when
    this agent's store does not have it (it ran on another agent, with another work
    directory), copy the run's records from the server into the store."""
    from ferroflow.store import import_flow_run, open_store, store_path

    path = store_path()
    if path.exists():
        with open_store(path) as store:
            if store.flow_run(local_id) is not None:
                return
    if import_flow_run(path, local_id, client.flow_run_records(run_id)):
        print(f"flow run {run_id}: copied attempt {local_id} from the server", file=sys.stderr)


def _fail(client: Any, run_id: str, message: str) -> None:
    run = client.get_flow_run(run_id)
    client.set_flow_run_state(run_id, int(run["version"]), "Failed", message)


def _stop_as_ctrl_c(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def _die_with_parent() -> None:
    """Linux: be killed when the agent dies (a lost agent's runs are run again elsewhere,
    so they must not go on here)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the agent died before the call
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    """Run one claimed flow run (see the module docstring); the exit status."""
    from ferroflow.client import Client, api_url
    from ferroflow.exceptions import ApiError, RegistrationError, ResumeError, StoreError
    from ferroflow.store import store_path
    from ferroflow.tasks.secrets import SERVER_RUN_ENV

    parser = argparse.ArgumentParser(prog="python -m ferroflow.agent_run")
    parser.add_argument("flow_run_id")
    parser.add_argument("--dask-address", default=None)
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--agent-id", default=None)
    args = parser.parse_args(argv)
    _die_with_parent()
    signal.signal(signal.SIGINT, _stop_as_ctrl_c)
    signal.signal(signal.SIGTERM, _stop_as_ctrl_c)
    # The engine's own reporter would report under the local id: this process reports.
    os.environ["FERROFLOW_REPORT"] = "0"
    client = Client()
    run_id = args.flow_run_id
    # FerroflowSecret asks the server for this run's secrets (see ferroflow.tasks.secrets).
    os.environ[SERVER_RUN_ENV] = run_id
    run = client.get_flow_run(run_id)
    work_dir = Path(args.work_dir) if args.work_dir else store_path().parent
    try:
        flow_row = client.get_flow(str(run["flow_id"]))
        flow = build_flow(dict(flow_row["storage"] or {}), work_dir)
    except (RegistrationError, ApiError) as exc:
        _fail(client, run_id, str(exc))
        print(f"flow run {run_id}: {exc}", file=sys.stderr)
        return EXIT_BUILD_FAILED
    from ferroflow import task_slots

    task_slots.install(flow, client, run_id)  # task-tag concurrency limits
    try:
        client.set_flow_run_state(run_id, int(run["version"]), "Running", "started by an agent")
    except ApiError as exc:
        print(f"flow run {run_id}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    executor = None
    if args.dask_address:
        from ferroflow.executors import DaskExecutor

        executor = DaskExecutor(address=args.dask_address)
    reporters: list[Reporter] = []

    def on_start(local_id: str) -> None:
        if args.agent_id:
            client.report_attempt(args.agent_id, run_id, local_id)
        reporters.append(_ServerIdReporter(api_url(), store_path(), local_id, run_id).start())

    resume = client.begin_attempt(run_id)
    options: dict[str, Any] = {"executor": executor, "run_on_schedule": False}
    try:
        if resume is not None:
            try:
                _fetch_attempt(client, run_id, resume)
                flow.run(resume=resume, on_start=on_start, **options)
                return 0
            except (ApiError, ResumeError, StoreError) as exc:
                print(f"flow run {run_id}: cannot resume {resume} here ({exc})", file=sys.stderr)
        flow.run(parameters=dict(run["parameters"] or {}), on_start=on_start, **options)
    except KeyboardInterrupt:
        pass  # recorded Cancelled by the engine; reported below
    finally:
        for reporter in reporters:
            problem = reporter.stop()
            if problem:
                print(f"flow run {run_id}: {problem}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover - the process entry
    sys.exit(main())
