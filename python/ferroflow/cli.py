"""The ``ferroflow`` command line (also ``python -m ferroflow``).

Commands:

- ``ferroflow run PATH[:FLOW] [--param k=v ...] [--executor E] [--workers N]``: load a
  Python file, run the flow it defines, print a summary of the task states.
- ``ferroflow runs ls [--limit N] [--json]``: the recent runs recorded in the run store.
- ``ferroflow runs show RUN_ID [--json]``: one run (an id prefix is enough) with its task
  runs and failures.
- ``ferroflow runs logs RUN_ID [--task NAME] [--level LEVEL] [--json]``: the log lines
  of one run (run-logger records, printed lines of ``log_stdout`` tasks, tracebacks).
- ``ferroflow runs resume RUN_ID``: resume an interrupted or failed run.
- ``ferroflow ui [--host H] [--port P]``: serve the web UI over the run store (on
  127.0.0.1 unless told otherwise; elsewhere without actions) until Ctrl-C.

Exit status: 0 when the flow succeeded (or the command did its job), 1 when the flow ran
and did not succeed, 2 for bad usage or input (no such file, syntax error, no flow in
the file, unknown flow name, bad ``--param``, unknown run id, an unusable run store).
Errors print as one line on stderr; ``--debug`` adds the traceback.

``import ferroflow`` does not import this module.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import traceback
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ferroflow.store import FAILED_STATES, errors_by_run

if TYPE_CHECKING:
    from ferroflow.flow import Flow
    from ferroflow.states import State
    from ferroflow.store import FlowRunInfo, RunStore, TaskRunInfo

__all__ = ["CliError", "cli", "main"]

#: Exit statuses.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: At most this many rows in the tables of ``run`` and ``runs show`` (by default).
MAX_TASK_ROWS = 50
MAX_FAILURE_ROWS = 20

_STATE_STYLES = {
    "Success": "green",
    "Cached": "green",
    "Mapped": "green",
    "Skipped": "yellow",
    "Looped": "cyan",
    "Running": "cyan",
    "Pending": "dim",
    "Scheduled": "dim",
    "Retrying": "yellow",
    "Paused": "yellow",
    "Resume": "yellow",
    "Cancelled": "magenta",
    "Interrupted": "magenta",
    "Failed": "red",
    "TimedOut": "red",
    "TriggerFailed": "red",
}


class CliError(Exception):
    """An error the command line reports as one line, with an exit status.

    Args:
        message: what went wrong and, where it helps, what to do.
        code: the exit status [2: bad usage or input].
    """

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass
class _Options:
    """Options shared by every command (set by callbacks while parsing)."""

    debug: bool = False


_OPTIONS = _Options()


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        _OPTIONS.debug = True
    return value


_debug_option = click.option(
    "--debug",
    is_flag=True,
    expose_value=False,
    callback=_set_debug,
    help="Show full tracebacks for errors.",
)


def _out() -> Console:
    return Console(highlight=False, soft_wrap=False)


def _err() -> Console:
    return Console(stderr=True, highlight=False)


def _one_line(text: str) -> str:
    """The first non-empty line of ``text`` (errors print as one line)."""
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return ""


def _exc_line(exc: BaseException) -> str:
    msg = _one_line(str(exc))
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _state_text(name: str) -> Text:
    return Text(name, style=_STATE_STYLES.get(name, ""))


def _fmt_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 0.001:
        return "<1ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


# ---------------------------------------------------------------------------
# Loading a flow from a file.


def split_target(target: str) -> tuple[Path, str | None]:
    """Split ``path/to/file.py[:flow_name]`` into the path and the flow name.

    A path that exists as given is taken whole (so a ``:`` inside a file name works).

    Example:
        >>> split_target("flows/etl.py:nightly")
        (PosixPath('flows/etl.py'), 'nightly')
        >>> split_target("flows/etl.py")
        (PosixPath('flows/etl.py'), None)
    """
    if Path(target).exists():
        return Path(target), None
    head, sep, tail = target.rpartition(":")
    if sep and head and tail and "/" not in tail and "\\" not in tail:
        return Path(head), tail
    return Path(target), None


def load_module(path: Path) -> Any:
    """Execute the Python file at ``path`` as a fresh module and return it.

    Its directory goes first on ``sys.path`` (as with ``python path``), so it can import
    its neighbours; its functions travel to worker processes by value.

    Raises:
        CliError: no such file, not a file, a syntax error, or an exception while the
            module runs (the traceback goes with it under ``--debug``).
    """
    if not path.exists():
        raise CliError(f"no such file: {path}")
    if not path.is_file():
        raise CliError(f"not a file: {path}")
    resolved = path.resolve()
    name = "__ferroflow_flow_" + "".join(c if c.isalnum() else "_" for c in resolved.stem)
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise CliError(f"cannot load {path} as Python: give a .py file")
    module = importlib.util.module_from_spec(spec)
    folder = str(resolved.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(name, None)
        where = f"{exc.filename or path}, line {exc.lineno}" if exc.lineno else str(path)
        raise CliError(f"syntax error in {where}: {exc.msg}") from exc
    except (Exception, SystemExit) as exc:
        sys.modules.pop(name, None)
        raise CliError(f"error while loading {path}: {_exc_line(exc)}") from exc
    try:
        import cloudpickle  # type: ignore[import-untyped]

        cloudpickle.register_pickle_by_value(module)
    except (ImportError, ValueError):  # pragma: no cover - cloudpickle is a dependency
        pass
    return module


def find_flows(module: Any) -> list[tuple[str, Flow]]:
    """The ``Flow`` objects defined at module level, as ``(variable name, flow)``, each
    flow once, in definition order."""
    from ferroflow.flow import Flow

    seen: set[int] = set()
    found: list[tuple[str, Flow]] = []
    for var, value in vars(module).items():
        if isinstance(value, Flow) and id(value) not in seen:
            seen.add(id(value))
            found.append((var, value))
    return found


def pick_flow(flows: Sequence[tuple[str, Flow]], name: str | None, path: Path) -> Flow:
    """Choose the flow to run: the only one, or the one named ``name`` (its flow name,
    else its variable name).

    Raises:
        CliError: no flow, several flows and no name, or no flow with that name.
    """
    listing = ", ".join(f"{f.name!r}" + (f" ({var})" if var != f.name else "") for var, f in flows)
    if not flows:
        raise CliError(
            f"no flow in {path}: define one at module level (with Flow('name') as flow: ...)"
        )
    if name is None:
        if len(flows) == 1:
            return flows[0][1]
        raise CliError(
            f"{path} defines {len(flows)} flows ({listing}): choose one with {path}:FLOW_NAME"
        )
    by_flow_name = [f for _, f in flows if f.name == name]
    if len(by_flow_name) == 1:
        return by_flow_name[0]
    by_var = [f for var, f in flows if var == name]
    if by_var:
        return by_var[0]
    if len(by_flow_name) > 1:
        raise CliError(
            f"{path} defines {len(by_flow_name)} flows named {name!r}: "
            "give the variable name instead"
        )
    raise CliError(f"no flow named {name!r} in {path}: it defines {listing}")


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """Parse ``k=v`` items; each value is read as JSON when it is valid JSON, else taken
    as a string.

    Example:
        >>> parse_params(["n=3", "name=alice", "xs=[1, 2]", 'raw="3"'])
        {'n': 3, 'name': 'alice', 'xs': [1, 2], 'raw': '3'}

    Raises:
        CliError: an item without ``=`` or with an empty name.
    """
    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CliError(f"bad --param {item!r}: write it as NAME=VALUE (e.g. --param n=3)")
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    return params


def make_executor(kind: str | None, workers: int | None) -> Any:
    """The executor for ``--executor`` / ``--workers`` (None: the flow's own, else local).

    Raises:
        CliError: ``--workers`` without a parallel executor, or an executor that is not
            available in this installation.
    """
    if kind is None:
        if workers is not None:
            raise CliError("--workers needs --executor threads, processes or dask")
        return None
    from ferroflow import executors

    if kind == "local":
        if workers is not None:
            raise CliError("--workers needs --executor threads, processes or dask")
        return executors.LocalExecutor()
    if kind == "threads":
        return executors.ThreadExecutor(max_workers=workers)
    try:
        if kind == "processes":
            return executors.ProcessExecutor(max_workers=workers)
        dask_executor = executors.DaskExecutor
    except (ImportError, AttributeError) as exc:
        raise CliError(f"the {kind} executor is not available: {_exc_line(exc)}") from exc
    if workers is None:
        return dask_executor()
    return dask_executor(cluster_kwargs={"n_workers": workers})


# ---------------------------------------------------------------------------
# Running, and the summary of a final state.


#: Names of the failed states (``store.FAILED_STATES``, in order).
FAILED_NAMES = tuple(sorted(FAILED_STATES))

_FINISHED = (
    "Success",
    "Cached",
    "Mapped",
    "Skipped",
    "Failed",
    "TimedOut",
    "TriggerFailed",
    "Cancelled",
)


class RunDisplay:
    """What the terminal shows while a flow runs: a live progress bar on stderr (only on
    a terminal) with the number of task runs finished and the counts per state, which
    the tasks' own output scrolls above. The engine calls :meth:`update_counts` a few
    times a second.
    """

    def __init__(self, flow_name: str, console: Console) -> None:
        self.flow_name = flow_name
        self.console = console
        self._progress: Any = None
        self._task: Any = None
        self._started = time.perf_counter()

    def __enter__(self) -> RunDisplay:
        if self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.fields[flow]}[/bold]"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[states]}"),
                console=self.console,
                transient=True,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(
                "run", total=None, flow=_escape(self.flow_name), states=""
            )
        return self

    def update(self, done: int, total: int, states: str = "") -> None:
        """Show that ``done`` of ``total`` task runs are finished."""
        if self._progress is not None:
            self._progress.update(self._task, completed=done, total=total, states=states)

    def update_counts(self, counts: dict[str, int]) -> None:
        """Show the engine's counts of task runs per state."""
        total = sum(counts.values())
        done = sum(counts.get(name, 0) for name in _FINISHED)
        shown = " ".join(
            f"{n} {name}" for name, n in sorted(counts.items()) if n and name in _FINISHED
        )
        self.update(done, total, shown)

    @property
    def elapsed(self) -> float:
        """Seconds since the display started."""
        return time.perf_counter() - self._started

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)
            self._progress = None


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _task_states(state: State) -> list[tuple[Any, State]]:
    result = state.result
    if not isinstance(result, dict) and not hasattr(result, "items"):
        return []
    return list(result.items())


def _children(st: State) -> list[State]:
    if not st.is_mapped():
        return []
    return list(getattr(st, "map_states", None) or [])


def _state_message(st: State) -> str:
    msg = st.message
    if msg:
        return _one_line(str(msg))
    if st.is_failed() and isinstance(st.result, BaseException):
        return _exc_line(st.result)
    return ""


def summarize_state(
    state: State, flow_name: str, elapsed: float, console: Console, tracebacks: bool = False
) -> None:
    """Print the summary of a finished run: its verdict, the count of task runs per
    state, one row per task (up to a limit), and the failed task runs with their
    messages (and, with ``tracebacks``, the tracebacks of their exceptions)."""
    verdict = type(state).__name__
    pairs = _task_states(state)
    counts: Counter[str] = Counter()
    failures: list[tuple[str, State]] = []
    rows: list[tuple[str, State, str]] = []
    for task, st in pairs:
        name = str(getattr(task, "name", task))
        counts[type(st).__name__] += 1
        if st.is_failed():
            failures.append((name, st))
        children = _children(st)
        detail = ""
        if children:
            child_counts: Counter[str] = Counter()
            for i, child in enumerate(children):
                child_counts[type(child).__name__] += 1
                counts[type(child).__name__] += 1
                if child.is_failed():
                    failures.append((f"{name}[{i}]", child))
            parts = ", ".join(f"{n} {k}" for k, n in sorted(child_counts.items()))
            detail = f"{len(children)} children: {parts}" if parts else "0 children"
        rows.append((name, st, detail))

    title = Text.assemble(
        "Flow ",
        (flow_name, "bold"),
        " finished ",
        _state_text(verdict),
        f" in {_fmt_duration(elapsed)}",
    )
    console.print(title)
    if state.message:
        console.print(Text(_one_line(str(state.message))))

    table = Table(title="Tasks", title_justify="left")
    table.add_column("Task", overflow="fold")
    table.add_column("State")
    table.add_column("Details", overflow="fold")
    for name, st, detail in rows[:MAX_TASK_ROWS]:
        # Failures get their messages in the table below; other unsuccessful states
        # (paused, cancelled, still running) say why here.
        quiet = st.is_successful() or st.is_failed()
        note = detail or ("" if quiet else _state_message(st))
        table.add_row(Text(name), _state_text(type(st).__name__), Text(note))
    if len(rows) > MAX_TASK_ROWS:
        table.add_row(Text(f"... {len(rows) - MAX_TASK_ROWS} more tasks"), "", "")
    if rows:
        console.print(table)

    total = sum(counts.values())
    summary = Text(f"{total} task run{'' if total == 1 else 's'}: ")
    for i, (name, n) in enumerate(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))):
        if i:
            summary.append(", ")
        summary.append(f"{n} ")
        summary.append(name, style=_STATE_STYLES.get(name, ""))
    console.print(summary)

    if failures:
        ft = Table(title="Failed task runs", title_justify="left")
        ft.add_column("Task", overflow="fold")
        ft.add_column("State")
        ft.add_column("Message", overflow="fold")
        for name, st in failures[:MAX_FAILURE_ROWS]:
            ft.add_row(Text(name), _state_text(type(st).__name__), Text(_state_message(st)))
        if len(failures) > MAX_FAILURE_ROWS:
            ft.add_row(Text(f"... {len(failures) - MAX_FAILURE_ROWS} more"), "", "")
        console.print(ft)
        if tracebacks:
            for name, st in failures[:MAX_FAILURE_ROWS]:
                exc = st.result
                if isinstance(exc, BaseException) and exc.__traceback__ is not None:
                    console.print(Text(f"Traceback of {name}:", style="bold red"))
                    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
                    console.print(Text("".join(lines).rstrip()))


def _run_flow(
    flow: Flow,
    values: dict[str, Any],
    exe: Any,
    resume: str | None,
    record: bool | None,
    display: RunDisplay | None = None,
    on_start: Any = None,
    wait_for_approval: bool = False,
) -> State:
    from ferroflow import engine

    progress = display.update_counts if display is not None else None
    return engine.run_flow(
        flow,
        parameters=values,
        executor=exe,
        resume=resume,
        record=record,
        progress=progress,
        wait_for_approval=wait_for_approval,
        on_start=on_start,
    )


def run_command(
    target: str,
    params: Sequence[str],
    executor: str | None,
    workers: int | None,
    resume: str | None = None,
    record: bool | None = None,
    wait_for_approval: bool = False,
) -> int:
    """``ferroflow run``: load, run, summarize. Returns the exit status.

    ``record`` None records unless ``FERROFLOW_RECORD=0``. A recorded run's file, flow
    and executor are saved when it starts, so ``ferroflow runs resume`` works even after
    the process was killed. Ctrl-C prints the summary and returns 130.
    """
    values = parse_params(params)
    path, name = split_target(target)
    module = load_module(path)
    flow = pick_flow(find_flows(module), name, path)
    exe = make_executor(executor, workers)
    from ferroflow.exceptions import FerroflowError

    out = _out()
    started: list[str] = []

    def on_start(run_id: str) -> None:
        started.append(run_id)
        _remember_source(run_id, path, name or flow.name, executor, workers)

    interrupted = False
    with RunDisplay(flow.name, _err()) as display:
        try:
            state = _run_flow(
                flow, values, exe, resume, record, display, on_start, wait_for_approval
            )
        except FerroflowError as exc:
            message = _one_line(str(exc))
            if message.endswith("or run with recording off"):
                message += " (--no-record)"
            raise CliError(message) from exc
        except KeyboardInterrupt as exc:
            got = getattr(exc, "state", None)
            if got is None:
                raise
            state, interrupted = got, True
    summarize_state(state, flow.name, display.elapsed, out, tracebacks=_OPTIONS.debug)
    if started:
        short = started[0][:8]
        if interrupted:
            out.print(
                Text(
                    f"Interrupted; recorded as run {short}: resume it with "
                    f"'ferroflow runs resume {short}'"
                )
            )
        else:
            out.print(Text(f"Recorded as run {short}: see 'ferroflow runs show {short}'"))
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if state.is_successful() else EXIT_FAILED


# ---------------------------------------------------------------------------
# The run store.


@contextmanager
def _store() -> Iterator[RunStore]:
    """The run store, with runs of dead processes on this machine marked interrupted."""
    from ferroflow.store import open_store

    store = open_store()
    try:
        store.fixup_interrupted()
        yield store
    finally:
        store.close()


def _resolve_run(store: RunStore, run_id: str) -> FlowRunInfo:
    run = store.flow_run(run_id)
    if run is None:
        raise CliError(f"no flow run with id {run_id!r} in {store.path} (see 'ferroflow runs ls')")
    return run


def _runs_ls(limit: int, as_json: bool) -> int:
    with _store() as store:
        runs = store.list_flow_runs(limit)
        path = store.path
    if as_json:
        _echo_json([r.to_dict() for r in runs])
        return EXIT_OK
    out = _out()
    if not runs:
        out.print(Text(f"No runs recorded in {path} yet."))
        return EXIT_OK
    table = Table(title=f"Recent runs ({path})", title_justify="left")
    table.add_column("ID", no_wrap=True)
    table.add_column("Flow", overflow="fold")
    table.add_column("State", no_wrap=True)
    table.add_column("Started", no_wrap=True)
    table.add_column("Duration", justify="right", no_wrap=True)
    now = time.time()
    for r in runs:
        duration = _fmt_duration(r.duration)
        if r.state == "Running":
            duration = f"{_fmt_duration(max(0.0, now - r.started))}+"
        table.add_row(
            r.short_id, Text(r.flow_name), _state_text(r.state), _fmt_time(r.started), duration
        )
    out.print(table)
    return EXIT_OK


def _cut(text: str, width: int) -> Text:
    out = Text(text)
    out.truncate(width, overflow="ellipsis")
    return out


def _offset(ts: float | None, origin: float) -> str:
    return "-" if ts is None else f"+{_fmt_duration(max(0.0, ts - origin))}"


def _task_runs_table(
    task_runs: Sequence[TaskRunInfo], limit: int, origin: float, width: int
) -> Table:
    # One line per run where the terminal allows: messages are cut to what is left
    # of the width (the failures below give them in full).
    room = max(12, width - 66)
    table = Table(title="Task runs", title_justify="left")
    table.add_column("Run", justify="right", no_wrap=True)
    table.add_column("Task", min_width=8, overflow="fold")
    table.add_column("Map", justify="right", no_wrap=True)
    table.add_column("State", no_wrap=True)
    table.add_column("Tries", justify="right", no_wrap=True)
    table.add_column("Start", justify="right", no_wrap=True)
    table.add_column("Took", justify="right", no_wrap=True)
    table.add_column("Message", min_width=12, overflow="fold")
    shown = task_runs if limit <= 0 else task_runs[:limit]
    for t in shown:
        table.add_row(
            str(t.run),
            Text(t.task_name),
            "-" if t.map_index is None else str(t.map_index),
            _state_text(t.state),
            str(t.run_count),
            _offset(t.started, origin),
            _fmt_duration(t.duration),
            _cut(_one_line(t.message or ""), room),
        )
    if len(shown) < len(task_runs):
        more = Text(f"... {len(task_runs) - len(shown)} more (use --limit 0)")
        table.add_row("", more, *[""] * 6)
    return table


def _runs_show(run_id: str, as_json: bool, limit: int) -> int:
    with _store() as store:
        run = _resolve_run(store, run_id)
        task_runs = store.task_runs(run.id)
        logs = store.logs(run.id)
    if as_json:
        _echo_json(
            {
                "flow_run": run.to_dict(),
                "task_runs": [t.to_dict() for t in task_runs],
                "logs": [entry.to_dict() for entry in logs],
            }
        )
        return EXIT_OK
    out = _out()
    out.print(Text.assemble("Flow run ", (run.id, "bold"), " of flow ", (run.flow_name, "bold")))
    info = Table.grid(padding=(0, 2))
    info.add_column(style="dim")
    info.add_column(overflow="fold")
    info.add_row("State", _state_text(run.state))
    if run.message:
        info.add_row("Message", Text(run.message))
    info.add_row("Started", _fmt_time(run.started))
    info.add_row("Ended", _fmt_time(run.ended))
    info.add_row("Duration", _fmt_duration(run.duration))
    info.add_row("Parameters", Text(json.dumps(run.parameters)))
    if run.host or run.pid:
        info.add_row("Process", Text(f"pid {run.pid} on {run.host}"))
    if run.resumed_from:
        info.add_row("Resumed from", run.resumed_from)
    counts = Counter(t.state for t in task_runs)
    info.add_row(
        "Task runs",
        Text(
            f"{len(task_runs)}"
            + (": " + ", ".join(f"{n} {k}" for k, n in counts.most_common()) if counts else "")
        ),
    )
    if logs:
        info.add_row(
            "Logs",
            Text(f"{len(logs)} {'line' if len(logs) == 1 else 'lines'} ")
            + Text(f"(ferroflow runs logs {run.short_id})"),
        )
    out.print(info)
    if task_runs:
        out.print(_task_runs_table(task_runs, limit, run.started, out.width))
    failed = [t for t in task_runs if t.state in FAILED_STATES]
    if failed:
        errors = errors_by_run(logs)
        out.print(Text(f"Failures ({len(failed)})", style="bold red"))
        for t in failed[:MAX_FAILURE_ROWS]:
            out.print(
                Text.assemble(
                    "- ",
                    (t.full_name, "bold"),
                    " ",
                    _state_text(t.state),
                    f" after {t.run_count} attempt{'s' if t.run_count != 1 else ''}",
                )
            )
            if t.message:
                out.print(Text(t.message), style="red")
            for message in errors.get(t.run, []):
                if message != t.message:
                    out.print(Text(message))
        if len(failed) > MAX_FAILURE_ROWS:
            out.print(Text(f"... {len(failed) - MAX_FAILURE_ROWS} more failed task runs"))
    return EXIT_OK


def _parse_level(text: str) -> int:
    """A logging level given as a name (``info``, ``WARNING``) or a number.

    Example:
        >>> _parse_level("warning"), _parse_level("15")
        (30, 15)
    """
    import logging

    if text.strip().isdigit():
        return int(text)
    level = logging.getLevelName(text.strip().upper())
    if not isinstance(level, int):
        raise CliError(
            f"unknown log level {text!r}: use DEBUG, INFO, WARNING, ERROR, CRITICAL or a number"
        )
    return level


def _runs_logs(run_id: str, task: str | None, level: str | None, as_json: bool) -> int:
    import logging

    minimum = _parse_level(level) if level is not None else 0
    with _store() as store:
        run = _resolve_run(store, run_id)
        task_runs = store.task_runs(run.id)
        logs = store.logs(run.id)
    names = {t.run: t for t in task_runs}
    if task is not None and not any(task in (t.task_name, t.full_name) for t in task_runs):
        known = sorted({t.task_name for t in task_runs})
        raise CliError(
            f"flow run {run.id} has no task named {task!r} (its tasks: {', '.join(known)})"
        )
    shown = []
    for line in logs:
        if line.level < minimum:
            continue
        tr = names.get(line.run) if line.run is not None else None
        if task is not None and (tr is None or task not in (tr.task_name, tr.full_name)):
            continue
        shown.append((line, tr))
    if as_json:
        _echo_json(
            [
                {**line.to_dict(), "task_name": tr.full_name if tr is not None else None}
                for line, tr in shown
            ]
        )
        return EXIT_OK
    out = _out()
    if not shown:
        out.print(Text(f"No log lines recorded for flow run {run.id} (with these filters)."))
        return EXIT_OK
    for line, tr in shown:
        stamp = datetime.fromtimestamp(line.at).strftime("%H:%M:%S.%f")[:-3]
        level_name = logging.getLevelName(line.level)
        style = "red" if line.level >= logging.ERROR else "yellow" if line.level >= 30 else ""
        who = tr.full_name if tr is not None else run.flow_name
        out.print(
            Text.assemble(
                (stamp, "dim"),
                " ",
                (f"{level_name:<8}", style),
                " ",
                (who, "bold"),
                " | ",
                line.message,
            )
        )
    return EXIT_OK


def _sources_dir() -> Path:
    from ferroflow.store import store_path

    return store_path().parent / "sources"


def _remember_source(
    run_id: str, path: Path, flow: str, executor: str | None, workers: int | None
) -> None:
    """Note which file and flow a run came from, so ``runs resume`` can load it again."""
    record = {"path": str(path.resolve()), "flow": flow, "executor": executor, "workers": workers}
    try:
        folder = _sources_dir()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{run_id}.json").write_text(json.dumps(record))
    except OSError:
        pass  # resume then asks for the file explicitly


def _runs_resume(run_id: str) -> int:
    with _store() as store:
        run = _resolve_run(store, run_id)
    if run.state in ("Success", "Cached"):
        raise CliError(f"flow run {run.id} already succeeded: there is nothing to resume")
    source = _sources_dir() / f"{run.id}.json"
    try:
        info = json.loads(source.read_text())
    except (OSError, ValueError):
        raise CliError(
            f"flow run {run.id} was not started with 'ferroflow run', so its file is unknown: "
            f"resume it with 'ferroflow run PATH --resume {run.id[:8]}'"
        ) from None
    target = f"{info['path']}:{info['flow']}"
    return run_command(target, [], info.get("executor"), info.get("workers"), resume=run.id)


# ---------------------------------------------------------------------------
# The click commands.


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    None, "--version", "-V", package_name="ferroflow", message="%(prog)s %(version)s"
)
@_debug_option
def cli() -> None:
    """ferroflow: run flows and look at recorded runs.

    Exit status: 0 on success, 1 when a flow ran and failed, 2 for bad usage or input.
    """


@cli.command("run")
@click.argument("target", metavar="PATH[:FLOW_NAME]")
@click.option(
    "--param",
    "-p",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="A parameter value (JSON if it parses as JSON, else a string). Repeatable.",
)
@click.option(
    "--executor",
    "-e",
    type=click.Choice(["local", "threads", "processes", "dask"]),
    default=None,
    help="Where tasks run [the flow's executor, else local].",
)
@click.option(
    "--workers",
    "-w",
    type=click.IntRange(min=1),
    default=None,
    help="Number of workers for threads, processes or dask.",
)
@click.option(
    "--resume",
    metavar="RUN_ID",
    default=None,
    help="Resume this earlier run of the flow (an id prefix is enough): tasks that "
    "finished there with a saved result are not run again.",
)
@click.option(
    "--no-record",
    "no_record",
    is_flag=True,
    help="Do not record the run in the run store (also: FERROFLOW_RECORD=0).",
)
@click.option(
    "--wait-for-approval",
    is_flag=True,
    help="When only paused tasks are left, wait until 'ferroflow runs approve' "
    "approves them (Ctrl-C stops waiting).",
)
@_debug_option
def run_cmd(
    target: str,
    params: tuple[str, ...],
    executor: str | None,
    workers: int | None,
    resume: str | None,
    no_record: bool,
    wait_for_approval: bool,
) -> int:
    """Run the flow defined in the Python file PATH.

    When the file defines several flows, name one: PATH:FLOW_NAME (its flow name or
    its variable name). Prints a summary of the task states; exits 0 only when the
    flow succeeded, 1 when it failed.
    """
    return run_command(
        target,
        params,
        executor,
        workers,
        resume,
        False if no_record else None,
        wait_for_approval,
    )


@cli.command("visualize")
@click.argument("target", metavar="PATH[:FLOW_NAME]")
@click.option(
    "--output",
    "-o",
    default=None,
    metavar="FILE",
    help="Where to write the graph: .dot (text) or .svg/.png/.pdf (needs Graphviz) "
    "[FLOW_NAME.dot].",
)
@click.option(
    "--run",
    "run_id",
    default=None,
    metavar="RUN_ID",
    help="Colour the tasks by their states in this recorded run of the flow.",
)
@_debug_option
def visualize_cmd(target: str, output: str | None, run_id: str | None) -> int:
    """Write the graph of the flow defined in PATH (DOT, or SVG with Graphviz)."""
    from ferroflow.exceptions import FerroflowError
    from ferroflow.visualize import render, to_dot

    path, name = split_target(target)
    flow = pick_flow(find_flows(load_module(path)), name, path)
    states: dict[Any, str] | None = None
    if run_id is not None:
        with _store() as store:
            run = _resolve_run(store, run_id)
            task_runs = store.task_runs(run.id)
        tasks = list(flow._compile().tasks)
        states = {}
        for t in task_runs:
            if t.map_index is None and t.task < len(tasks) and tasks[t.task].name == t.task_name:
                states[tasks[t.task]] = t.state
        children_failed = {
            t.task for t in task_runs if t.map_index is not None and t.state in FAILED_STATES
        }
        for tid in children_failed:
            if tid < len(tasks):
                states[tasks[tid]] = "Failed"
    out = Path(output) if output is not None else Path(f"{flow.name}.dot")
    try:
        written = render(to_dot(flow, states), out)
    except (FerroflowError, OSError) as exc:
        raise CliError(_one_line(str(exc))) from exc
    _out().print(Text(f"Wrote {written}"))
    return EXIT_OK


@cli.group("runs")
def runs_group() -> None:
    """Look at (and resume) the runs recorded in the run store ($FERROFLOW_HOME)."""


@runs_group.command("ls")
@click.option("--limit", "-n", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_debug_option
def runs_ls_cmd(limit: int, as_json: bool) -> int:
    """List the most recent flow runs, newest first."""
    return _runs_ls(limit, as_json)


@runs_group.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option(
    "--limit",
    "-n",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Show at most this many task runs (0: all).",
)
@_debug_option
def runs_show_cmd(run_id: str, as_json: bool, limit: int) -> int:
    """Show one flow run (RUN_ID may be a unique prefix): its task runs and failures."""
    return _runs_show(run_id, as_json, limit)


@runs_group.command("logs")
@click.argument("run_id")
@click.option("--task", "-t", default=None, metavar="NAME", help="Only this task's lines.")
@click.option(
    "--level",
    "-l",
    default=None,
    metavar="LEVEL",
    help="Only lines at this level or above (DEBUG, INFO, WARNING, ERROR or a number).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of lines.")
@_debug_option
def runs_logs_cmd(run_id: str, task: str | None, level: str | None, as_json: bool) -> int:
    """Show the log lines of flow run RUN_ID (a unique prefix is enough)."""
    return _runs_logs(run_id, task, level, as_json)


@runs_group.command("resume")
@click.argument("run_id")
@_debug_option
def runs_resume_cmd(run_id: str) -> int:
    """Resume flow run RUN_ID, reusing every finished task whose result was saved."""
    return _runs_resume(run_id)


@runs_group.command("approve")
@click.argument("task_run_id")
@_debug_option
def runs_approve_cmd(task_run_id: str) -> int:
    """Approve the paused task run TASK_RUN_ID ('FLOW_RUN_ID/RUN', as 'runs show'
    lists it). A flow run still waiting for it goes on; one that has ended is resumed
    here, and this command then exits as 'ferroflow run' would."""
    from ferroflow.approvals import approve

    approval = approve(task_run_id)
    task = approval.task_name
    if approval.map_index is not None:
        task += f"[{approval.map_index}]"
    _out().print(f"Approved {task} of flow run {approval.flow_run_id}.")
    with _store() as store:
        run = _resolve_run(store, approval.flow_run_id)
    if run.state == "Running":
        _out().print("The flow run is still going: it runs the task when it sees the approval.")
        return EXIT_OK
    if run.state in ("Success", "Cached"):
        # It was waiting, saw the approval and finished before this look.
        _out().print("The flow run went on and has finished.")
        return EXIT_OK
    return _runs_resume(approval.flow_run_id)


@cli.command("ui")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind (the default serves this machine only).",
)
@click.option(
    "--port",
    type=click.IntRange(min=0, max=65535),
    default=8765,
    show_default=True,
    help="Port to serve on (0: any free port).",
)
@_debug_option
def ui_cmd(host: str, port: int) -> int:
    """Serve the web UI over the recorded runs until Ctrl-C."""
    from ferroflow.store import store_path
    from ferroflow.ui import RunStoreUI

    try:
        ui = RunStoreUI(host=host, port=port, quiet=False)
    except OSError as err:
        raise CliError(f"cannot serve on {host}:{port}: {err.strerror or err}") from err
    click.echo(f"Serving the runs in {store_path()} at {ui.url} (Ctrl-C to stop)")
    sys.stdout.flush()
    try:
        ui.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        ui.close()
    return EXIT_OK


# ---------------------------------------------------------------------------
# Entry point.


def _report(message: str, exc: BaseException | None) -> None:
    if _OPTIONS.debug and exc is not None:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    click.echo(f"Error: {message}", err=True)


def run_cli(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit
    status instead of exiting."""
    from ferroflow.exceptions import FerroflowError

    _OPTIONS.debug = False
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        rv = cli.main(args, prog_name="ferroflow", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.format_message())
        return EXIT_USAGE
    except click.ClickException as exc:
        hint = ""
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            hint = f" (see '{exc.ctx.command_path} --help')"
        _report(_one_line(exc.format_message()) + hint, None)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return EXIT_FAILED
    except CliError as exc:
        _report(exc.message, exc.__cause__ or exc)
        return exc.code
    except FerroflowError as exc:  # a store error, or another typed error on bad input
        _report(_one_line(str(exc)), exc)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        _report("interrupted", exc)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, and keep Python from
        # complaining when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        hint = "" if _OPTIONS.debug else " (run with --debug for the traceback)"
        _report(f"unexpected error: {_exc_line(exc)}{hint}", exc)
        return EXIT_FAILED
    return rv if isinstance(rv, int) else EXIT_OK


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``ferroflow`` console script: run the command line and exit with its status."""
    sys.exit(run_cli(argv))


# The platform's commands (server, projects, flows, register, runs on a server):
# cli_server adds them to `cli` when it is imported, whichever module comes first.
from ferroflow import cli_agent as _cli_agent  # noqa: E402, F401
from ferroflow import cli_ops as _cli_ops  # noqa: E402, F401
from ferroflow import cli_secrets as _cli_secrets  # noqa: E402, F401
from ferroflow import cli_server as _cli_server  # noqa: E402, F401
from ferroflow import cli_tokens as _cli_tokens  # noqa: E402, F401
