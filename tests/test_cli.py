"""The command line, run as a user runs it: ``python -m ferroflow ...`` in a subprocess
(FERROFLOW_HOME comes from the conftest fixture and is inherited)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ferroflow import _native
from ferroflow.cli import parse_params, split_target
from ferroflow.exceptions import FerroflowError

OK_FLOW = """
from ferroflow import Flow, Parameter, task

@task
def double(x):
    return 2 * x

@task
def total(xs):
    return sum(xs)

with Flow("numbers") as flow:
    items = Parameter("items", default=[1, 2, 3])
    total(double.map(items))
"""

FAILING_FLOW = """
from ferroflow import Flow, task

@task
def extract():
    return 1

@task
def explode(x):
    raise ValueError("the widget exploded")

with Flow("failing") as flow:
    explode(extract())
"""

PARAMS_FLOW = """
from ferroflow import Flow, Parameter, task

@task
def check(n, name, xs):
    assert n == 5 and name == "abc" and xs == [1, 2], (n, name, xs)
    return "ok"

with Flow("params") as flow:
    check(Parameter("n", default=0), Parameter("name", default=""), Parameter("xs", default=[]))
"""

TWO_FLOWS = """
from ferroflow import Flow, task

@task
def one():
    return 1

with Flow("first") as a:
    one()

with Flow("second") as b:
    one()
"""

RUN_A = "c0ffee00-0000-4000-8000-000000000001"
RUN_B = "c0ffee11-0000-4000-8000-000000000002"


def ff(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ferroflow *args`` and capture its output."""
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1")
    return subprocess.run(
        [sys.executable, "-m", "ferroflow", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


def write(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def store_file() -> Path:
    return Path(os.environ["FERROFLOW_HOME"]) / "ferroflow.db"


def record(run_id: str, flow_name: str = "etl", *, started: float = 1000.0) -> None:
    """Record a finished, failed flow run with three task runs through the native Recorder."""
    with _native.Recorder(str(store_file())) as rec:
        rec.flow_run_started(run_id, flow_name, '{"n": 3}', started, 4242, "host-1")
        rec.task_runs(run_id, [(0, 0, "extract", None), (1, 1, "load", None)])
        rec.task_runs(run_id, [(2, 2, "square", None)])
        rec.map_children(run_id, 2, "square", 3, 2)
        rec.transition(run_id, 0, "Running", None, 1, started + 1)
        rec.transition(run_id, 0, "Success", None, 1, started + 2)
        rec.transition(run_id, 1, "Running", None, 1, started + 3)
        rec.transition(run_id, 1, "Failed", "ValueError: the widget exploded", 1, started + 4)
        rec.transition(run_id, 2, "Mapped", None, 1, started + 5)
        rec.transition(run_id, 3, "Success", None, 1, started + 6)
        rec.transition(run_id, 4, "Success", None, 1, started + 7)
        rec.log(
            run_id,
            1,
            40,
            'Traceback (most recent call last):\n  File "etl.py", line 9, in load\n'
            "ValueError: the widget exploded",
            started + 4,
        )
        rec.flow_run_ended(run_id, "Failed", "Some reference tasks failed: 'load'", started + 9)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in proc.stderr + proc.stdout
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# --- in-process helpers ------------------------------------------------------------


def test_parse_params() -> None:
    assert parse_params(["n=3", "s=abc", "xs=[1, 2]", 'q="3"', "e=", "eq=a=b"]) == {
        "n": 3,
        "s": "abc",
        "xs": [1, 2],
        "q": "3",
        "e": "",
        "eq": "a=b",
    }


def test_split_target(tmp_path: Path) -> None:
    assert split_target("dir/flows.py:etl") == (Path("dir/flows.py"), "etl")
    assert split_target("dir/flows.py") == (Path("dir/flows.py"), None)
    odd = tmp_path / "a:b.py"
    odd.write_text("")
    assert split_target(str(odd)) == (odd, None)


# --- ferroflow run ---------------------------------------------------------------------


def test_run_success(tmp_path: Path) -> None:
    path = write(tmp_path, "numbers_flow.py", OK_FLOW)
    proc = ff("run", str(path))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "numbers" in out and "Success" in out
    for name in ("double", "total", "items"):
        assert name in out
    assert "3 children: 3 Success" in out
    assert "task runs:" in out


@pytest.mark.parametrize("executor", ["local", "threads", "processes", "dask"])
def test_run_with_each_executor(tmp_path: Path, executor: str) -> None:
    path = write(tmp_path, "numbers_flow.py", OK_FLOW)
    args = ["run", str(path), "--executor", executor]
    if executor != "local":
        args += ["--workers", "2"]
    proc = ff(*args)
    assert proc.returncode == 0, proc.stderr
    assert "Success" in proc.stdout


def test_run_failing_flow_exits_1(tmp_path: Path) -> None:
    path = write(tmp_path, "failing.py", FAILING_FLOW)
    proc = ff("run", str(path))
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Failed" in proc.stdout
    assert "explode" in proc.stdout and "the widget exploded" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_run_failing_flow_with_debug_shows_the_task_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "failing.py", FAILING_FLOW)
    proc = ff("run", str(path), "--debug")
    assert proc.returncode == 1
    assert "Traceback" in proc.stdout and 'raise ValueError("the widget exploded")' in proc.stdout


def test_run_params_are_json_or_strings(tmp_path: Path) -> None:
    path = write(tmp_path, "params.py", PARAMS_FLOW)
    proc = ff("run", str(path), "--param", "n=5", "-p", "name=abc", "--param", "xs=[1,2]")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert ff("run", str(path), "--param", "n=4").returncode == 1


def test_run_relative_path_and_sibling_import(tmp_path: Path) -> None:
    write(tmp_path, "helpers.py", "OFFSET = 10\n")
    write(
        tmp_path,
        "flow_with_import.py",
        """
        from ferroflow import Flow, task
        from helpers import OFFSET

        @task
        def add(x):
            assert x + OFFSET == 11
            return x + OFFSET

        with Flow("imports") as flow:
            add(1)
        """,
    )
    proc = ff("run", "flow_with_import.py", cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)


def test_run_no_such_file(tmp_path: Path) -> None:
    assert_one_line_error(ff("run", str(tmp_path / "missing.py")), "no such file", "missing.py")


def test_run_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.py", "def f(:\n    pass\n")
    assert_one_line_error(ff("run", str(path)), "syntax error", "broken.py", "line 1")


def test_run_error_while_loading(tmp_path: Path) -> None:
    path = write(tmp_path, "raises.py", "x = 1 / 0\n")
    assert_one_line_error(ff("run", str(path)), "raises.py", "ZeroDivisionError")


def test_run_no_flow(tmp_path: Path) -> None:
    path = write(tmp_path, "empty.py", "x = 1\n")
    assert_one_line_error(ff("run", str(path)), "no flow in", "empty.py")


def test_run_two_flows_need_a_name(tmp_path: Path) -> None:
    path = write(tmp_path, "two.py", TWO_FLOWS)
    assert_one_line_error(ff("run", str(path)), "2 flows", "'first'", "'second'", ":FLOW_NAME")
    proc = ff("run", f"{path}:second")
    assert proc.returncode == 0, proc.stderr
    assert "second" in proc.stdout
    proc = ff("run", f"{path}:a")  # the variable name works too
    assert proc.returncode == 0, proc.stderr
    assert "first" in proc.stdout


def test_run_unknown_flow_name(tmp_path: Path) -> None:
    path = write(tmp_path, "two.py", TWO_FLOWS)
    assert_one_line_error(ff("run", f"{path}:third"), "no flow named 'third'", "'first'")


def test_run_bad_params(tmp_path: Path) -> None:
    path = write(tmp_path, "numbers_flow.py", OK_FLOW)
    assert_one_line_error(ff("run", str(path), "--param", "novalue"), "bad --param 'novalue'")
    assert_one_line_error(ff("run", str(path), "--param", "=3"), "bad --param")
    assert_one_line_error(ff("run", str(path), "--param", "nope=1"), "nope")


def test_run_bad_options(tmp_path: Path) -> None:
    path = write(tmp_path, "numbers_flow.py", OK_FLOW)
    assert_one_line_error(ff("run", str(path), "--executor", "gpu"), "gpu")
    assert_one_line_error(ff("run", str(path), "--workers", "0", "-e", "threads"), "--workers")
    assert_one_line_error(ff("run", str(path), "--workers", "2"), "--workers")
    assert_one_line_error(ff("run"), "Missing argument")
    assert_one_line_error(ff("nonsense"), "nonsense")


def test_debug_shows_a_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "raises.py", "def helper():\n    return 1 / 0\n\nhelper()\n")
    proc = ff("run", str(path), "--debug")
    assert proc.returncode == 2
    assert "Traceback (most recent call last)" in proc.stderr
    assert "helper()" in proc.stderr and "ZeroDivisionError" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("Error: ")
    proc = ff("--debug", "run", str(tmp_path / "broken.py"))
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_help_and_console_script() -> None:
    proc = ff("--help")
    assert proc.returncode == 0
    assert "run" in proc.stdout and "runs" in proc.stdout
    assert "visualize" in proc.stdout
    run_help = ff("run", "--help")
    assert run_help.returncode == 0 and "--param" in run_help.stdout
    # The [project.scripts] entry point, installed next to the interpreter.
    script = Path(sys.executable).parent / "ferroflow"
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1")
    same = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    assert same.returncode == 0 and same.stdout == proc.stdout


# --- ferroflow runs ------------------------------------------------------------------


def test_runs_ls_empty_store() -> None:
    proc = ff("runs", "ls")
    assert proc.returncode == 0, proc.stderr
    assert "No runs recorded" in proc.stdout
    proc = ff("runs", "ls", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout) == []


def test_runs_ls(tmp_path: Path) -> None:
    record(RUN_A, "etl", started=1000.0)
    record(RUN_B, "report", started=2000.0)
    proc = ff("runs", "ls")
    assert proc.returncode == 0, proc.stderr
    assert RUN_A[:8] in proc.stdout and RUN_B[:8] in proc.stdout
    assert "etl" in proc.stdout and "report" in proc.stdout and "Failed" in proc.stdout
    assert "9.00s" in proc.stdout
    runs = json.loads(ff("runs", "ls", "--json").stdout)
    assert [r["id"] for r in runs] == [RUN_B, RUN_A]
    assert runs[1]["flow_name"] == "etl" and runs[1]["parameters"] == {"n": 3}
    assert runs[1]["state"] == "Failed" and runs[1]["duration"] == 9.0
    limited = json.loads(ff("runs", "ls", "--json", "--limit", "1").stdout)
    assert [r["id"] for r in limited] == [RUN_B]


def test_runs_show(tmp_path: Path) -> None:
    record(RUN_A)
    proc = ff("runs", "show", RUN_A[:6])
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert RUN_A in out and "etl" in out
    for name in ("extract", "load", "square"):
        assert name in out
    assert "Failures (1)" in out
    assert "the widget exploded" in out
    assert 'File "etl.py", line 9, in load' in out  # the logged traceback

    data = json.loads(ff("runs", "show", RUN_A[:6], "--json").stdout)
    assert data["flow_run"]["id"] == RUN_A
    assert [(t["full_name"], t["state"]) for t in data["task_runs"]] == [
        ("extract", "Success"),
        ("load", "Failed"),
        ("square", "Mapped"),
        ("square[0]", "Success"),
        ("square[1]", "Success"),
    ]
    assert data["task_runs"][1]["message"] == "ValueError: the widget exploded"
    assert data["logs"][0]["level"] == 40

    limited = ff("runs", "show", RUN_A, "--limit", "2")
    assert limited.returncode == 0 and "3 more" in limited.stdout


def test_runs_show_unknown_and_ambiguous_ids() -> None:
    assert_one_line_error(ff("runs", "show", "deadbeef"), "no flow run with id 'deadbeef'")
    record(RUN_A)
    record(RUN_B)
    assert_one_line_error(ff("runs", "show", "c0ffee"), "ambiguous", RUN_A, RUN_B)
    assert_one_line_error(ff("runs", "show", "deadbeef", "--json"), "deadbeef")


def test_runs_resume_unknown_id() -> None:
    assert_one_line_error(ff("runs", "resume", "deadbeef"), "no flow run with id 'deadbeef'")


def test_runs_resume_needs_a_run_started_by_the_cli() -> None:
    record(RUN_A)
    assert_one_line_error(
        ff("runs", "resume", RUN_A[:8]), "was not started with 'ferroflow run'", "--resume"
    )


def test_corrupt_store_is_exit_2_and_left_untouched(tmp_path: Path) -> None:
    path = store_file()
    garbage = b"not a database at all" * 100
    path.write_bytes(garbage)
    for args in (["runs", "ls"], ["runs", "show", "abc"], ["runs", "ls", "--json"]):
        assert_one_line_error(ff(*args), str(path), "move the file aside")
    flow_file = write(tmp_path, "numbers_flow.py", OK_FLOW)
    # Runs are recorded by default: a bad store stops the run before it starts.
    assert_one_line_error(ff("run", str(flow_file)), str(path), "--no-record")
    assert ff("run", str(flow_file), "--no-record").returncode == 0
    assert path.read_bytes() == garbage


def test_newer_store_schema_is_exit_2() -> None:
    import sqlite3

    record(RUN_A)
    con = sqlite3.connect(store_file())
    con.execute(f"PRAGMA user_version = {_native.STORE_SCHEMA_VERSION + 1}")
    con.commit()
    con.close()
    assert_one_line_error(ff("runs", "ls"), "newer", str(store_file()))


def test_runs_of_dead_processes_show_as_interrupted() -> None:
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with _native.Recorder(str(store_file())) as rec:
        rec.flow_run_started(RUN_A, "etl", "{}", 1000.0, dead.pid, socket.gethostname())
    runs = json.loads(ff("runs", "ls", "--json").stdout)
    assert runs[0]["state"] == "Interrupted"


def test_run_is_listed_when_recorded(tmp_path: Path) -> None:
    """A CLI run shows up in `runs ls` / `runs show`."""
    path = write(tmp_path, "failing.py", FAILING_FLOW)
    assert ff("run", str(path)).returncode == 1
    runs = json.loads(ff("runs", "ls", "--json").stdout)
    assert runs[0]["flow_name"] == "failing" and runs[0]["state"] == "Failed"
    data = json.loads(ff("runs", "show", runs[0]["id"], "--json").stdout)
    states = {t["task_name"]: t["state"] for t in data["task_runs"]}
    assert states == {"extract": "Success", "explode": "Failed"}


FLAKY_FLOW = """
import os
from ferroflow import Flow, task

@task
def first():
    return 1

@task
def flaky(x):
    if not os.path.exists(os.environ["FLAKY_MARKER"]):
        raise RuntimeError("marker missing")
    return x

with Flow("flaky") as flow:
    flaky(first())
"""


def test_run_resume_and_no_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "marker"
    monkeypatch.setenv("FLAKY_MARKER", str(marker))
    path = write(tmp_path, "flaky.py", FLAKY_FLOW)
    first = ff("run", str(path))
    assert first.returncode == 1
    runs = json.loads(ff("runs", "ls", "--json").stdout)
    old = runs[0]["id"]
    assert f"Recorded as run {old[:8]}" in first.stdout
    marker.write_text("")
    again = ff("run", str(path), "--resume", old[:8])
    assert again.returncode == 0, (again.stdout, again.stderr)
    runs = json.loads(ff("runs", "ls", "--json").stdout)
    assert [r["resumed_from"] for r in runs] == [old, None]
    assert_one_line_error(ff("run", str(path), "--resume", "nosuchid"), "nosuchid")

    assert ff("run", str(path), "--no-record").returncode == 0
    assert len(json.loads(ff("runs", "ls", "--json").stdout)) == 2


def test_runs_resume_reloads_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "marker"
    monkeypatch.setenv("FLAKY_MARKER", str(marker))
    path = write(tmp_path, "flaky.py", FLAKY_FLOW)
    assert ff("run", str(path)).returncode == 1
    old = json.loads(ff("runs", "ls", "--json").stdout)[0]["id"]
    marker.write_text("")
    resumed = ff("runs", "resume", old[:8])
    assert resumed.returncode == 0, (resumed.stdout, resumed.stderr)
    runs = json.loads(ff("runs", "ls", "--json").stdout)
    assert runs[0]["resumed_from"] == old and runs[0]["state"] == "Success"
    assert_one_line_error(ff("runs", "resume", runs[0]["id"][:8]), "already succeeded")


def test_store_error_is_a_ferroflow_error() -> None:
    from ferroflow.exceptions import StoreError

    assert issubclass(StoreError, FerroflowError)


def test_visualize_writes_dot_and_colours_a_recorded_run(tmp_path: Path) -> None:
    path = write(tmp_path, "failing.py", FAILING_FLOW)
    out = tmp_path / "graph.dot"
    done = ff("visualize", str(path), "-o", str(out))
    assert done.returncode == 0, done.stderr
    dot = out.read_text()
    assert dot.startswith('digraph "failing"') and "extract" in dot and "->" in dot
    assert ff("run", str(path)).returncode == 1
    run_id = json.loads(ff("runs", "ls", "--json").stdout)[0]["id"]
    coloured = tmp_path / "coloured.dot"
    assert ff("visualize", str(path), "-o", str(coloured), "--run", run_id[:8]).returncode == 0
    text = coloured.read_text()
    assert 'tooltip="Failed"' in text and 'tooltip="Success"' in text
    assert_one_line_error(ff("visualize", str(tmp_path / "missing.py")), "missing.py")


def test_platform_commands_whichever_module_is_imported_first() -> None:
    # ferroflow.cli and ferroflow.cli_server import each other: either order works
    # and the platform's commands are registered once.
    code = (
        "import ferroflow.cli_server\n"
        "from ferroflow.cli import cli\n"
        "print(sorted(cli.commands))\n"
        "print(sum(1 for p in cli.commands['run'].params if p.name == 'project'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    names, count = proc.stdout.splitlines()
    assert "server" in names and "register" in names and "runs" in names
    assert count == "1"
