"""The run store seen from Python: the native Store/Recorder and the ferroflow.store facade."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from ferroflow import _native
from ferroflow.exceptions import FerroflowError, StoreError
from ferroflow.store import (
    CacheEntry,
    FlowRunInfo,
    TaskRunInfo,
    open_store,
    store_path,
)

RUN_A = "aaaa1111-0000-4000-8000-000000000001"
RUN_B = "aaaa2222-0000-4000-8000-000000000002"


def record_example(path: Path, run_id: str = RUN_A, *, ended: bool = True) -> None:
    """Record one flow run: a task that succeeded (with a result), a failed one, and a
    mapped task with three children."""
    with _native.Recorder(str(path)) as rec:
        rec.flow_run_started(run_id, "etl", '{"n": 3, "who": "me"}', 1000.0, 4242, "host-1")
        rec.task_runs(run_id, [(0, 0, "extract", None), (1, 1, "load", None)])
        rec.task_runs(run_id, [(2, 2, "square", None)])
        rec.map_children(run_id, 2, "square", 3, 3)
        rec.transition(run_id, 0, "Running", None, 1, 1001.0)
        rec.transition(run_id, 0, "Success", None, 1, 1002.5, "/results/extract.bin")
        rec.transition(run_id, 1, "Running", None, 1, 1003.0)
        rec.transition(run_id, 1, "Retrying", "boom", 1, 1003.5)
        rec.transition(run_id, 1, "Running", None, 2, 1004.0)
        rec.transition(run_id, 1, "Failed", "ValueError: boom", 2, 1005.0)
        rec.transition(run_id, 2, "Mapped", None, 1, 1006.0)
        for i in range(3):
            rec.transition(run_id, 3 + i, "Success", None, 1, 1007.0 + i)
        rec.result_location(run_id, 4, "/results/square/1.bin")
        rec.log(run_id, None, 20, "flow started", 1000.5)
        rec.log(run_id, 1, 40, "Traceback (most recent call last):\nValueError: boom", 1005.0)
        if ended:
            rec.flow_run_ended(run_id, "Failed", "Some reference tasks failed: 'load'", 1010.0)


def test_store_path_honours_ferroflow_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERROFLOW_HOME", str(tmp_path / "home"))
    assert store_path() == tmp_path / "home" / "ferroflow.db"
    assert Path(_native.default_store_path()) == store_path()
    monkeypatch.setenv("FERROFLOW_HOME", "")
    assert store_path() == Path.home() / ".ferroflow" / "ferroflow.db"


def test_open_store_creates_the_file_and_its_directory(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "ferroflow.db"
    with open_store(path) as store:
        assert store.path == path
        assert store.list_flow_runs() == []
        assert store.flow_run("anything") is None
    assert path.is_file()


def test_default_store_is_under_ferroflow_home(_ferroflow_home: str) -> None:
    with open_store() as store:
        assert store.path == Path(_ferroflow_home) / "ferroflow.db"


def test_round_trip_through_the_recorder(tmp_path: Path) -> None:
    db = tmp_path / "ferroflow.db"
    record_example(db)
    with open_store(db) as store:
        (run,) = store.list_flow_runs(10)
        assert isinstance(run, FlowRunInfo)
        assert run.id == RUN_A and run.short_id == RUN_A[:8]
        assert run.flow_name == "etl"
        assert run.parameters == {"n": 3, "who": "me"}
        assert run.state == "Failed" and run.message == "Some reference tasks failed: 'load'"
        assert (run.started, run.ended, run.duration) == (1000.0, 1010.0, 10.0)
        assert (run.pid, run.host, run.resumed_from) == (4242, "host-1", None)
        assert run.is_finished
        assert run.to_dict()["parameters"] == {"n": 3, "who": "me"}

        runs = store.task_runs(RUN_A)
        assert all(isinstance(t, TaskRunInfo) for t in runs)
        assert [(t.run, t.full_name, t.state) for t in runs] == [
            (0, "extract", "Success"),
            (1, "load", "Failed"),
            (2, "square", "Mapped"),
            (3, "square[0]", "Success"),
            (4, "square[1]", "Success"),
            (5, "square[2]", "Success"),
        ]
        load = runs[1]
        assert load.run_count == 2 and load.message == "ValueError: boom" and load.is_failed
        assert (load.started, load.ended, load.duration) == (1003.0, 1005.0, 2.0)
        assert runs[0].result_location == "/results/extract.bin"
        assert runs[4].map_index == 1 and runs[4].result_location == "/results/square/1.bin"

        history = store.transitions(RUN_A, 1)
        assert [(h.state, h.message, h.at) for h in history] == [
            ("Running", None, 1003.0),
            ("Retrying", "boom", 1003.5),
            ("Running", None, 1004.0),
            ("Failed", "ValueError: boom", 1005.0),
        ]

        logs = store.logs(RUN_A)
        assert [(entry.run, entry.level) for entry in logs] == [(None, 20), (1, 40)]
        assert "ValueError: boom" in logs[1].message

        finished = store.finished_task_runs_with_results(RUN_A)
        assert [(f.run, f.task_name, f.map_index, f.result_location) for f in finished] == [
            (0, "extract", None, "/results/extract.bin"),
            (4, "square", 1, "/results/square/1.bin"),
        ]


def test_list_is_newest_first_and_limited(tmp_path: Path) -> None:
    db = tmp_path / "ferroflow.db"
    with _native.Recorder(str(db)) as rec:
        for i in range(5):
            rec.flow_run_started(f"run-{i}", f"flow{i}", "{}", 100.0 + i)
    with open_store(db) as store:
        assert [r.id for r in store.list_flow_runs(3)] == ["run-4", "run-3", "run-2"]
        assert all(r.state == "Running" and not r.is_finished for r in store.list_flow_runs())


def test_prefix_lookup_and_ambiguous_prefix(tmp_path: Path) -> None:
    db = tmp_path / "ferroflow.db"
    record_example(db, RUN_A)
    record_example(db, RUN_B)
    with open_store(db) as store:
        assert store.flow_run(RUN_A) is not None
        found = store.flow_run("aaaa2")
        assert found is not None and found.id == RUN_B
        assert store.flow_run("zzzz") is None
        assert store.flow_run("") is None
        with pytest.raises(StoreError, match="ambiguous") as info:
            store.flow_run("aaaa")
        assert RUN_A in str(info.value) and RUN_B in str(info.value)
        assert store.task_runs("no-such-run") == []


def test_corrupt_file_is_a_store_error_and_left_untouched(tmp_path: Path) -> None:
    db = tmp_path / "ferroflow.db"
    garbage = b"this is not a database\n" * 200
    db.write_bytes(garbage)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(StoreError) as info:
        open_store(db)
    message = str(info.value)
    assert str(db) in message
    assert "move the file aside" in message and "FERROFLOW_HOME" in message
    assert isinstance(info.value, FerroflowError)
    with pytest.raises(StoreError, match="not a ferroflow run store"):
        _native.Recorder(str(db))
    assert db.read_bytes() == garbage
    assert sorted(os.listdir(tmp_path)) == before


def test_foreign_sqlite_database_is_refused_and_left_untouched(tmp_path: Path) -> None:
    db = tmp_path / "ferroflow.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE notes(text TEXT)")
    con.execute("INSERT INTO notes VALUES ('mine')")
    con.commit()
    con.close()
    data = db.read_bytes()
    with pytest.raises(StoreError, match="another program") as info:
        open_store(db)
    assert str(db) in str(info.value)
    assert db.read_bytes() == data


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "ferroflow.db"
    record_example(db)
    con = sqlite3.connect(db)
    con.execute("PRAGMA user_version = 99")
    con.commit()
    con.close()
    data = db.read_bytes()
    with pytest.raises(StoreError, match="newer") as info:
        open_store(db)
    assert str(db) in str(info.value) and "99" in str(info.value)
    with pytest.raises(StoreError, match="newer"):
        _native.Recorder(str(db))
    assert db.read_bytes() == data


def test_unwritable_home_is_a_store_error(tmp_path: Path) -> None:
    # Tests run as root here, where chmod does not stop writes: make the home
    # impossible to create instead (a regular file stands where a folder must go).
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    home = blocker / "home"
    with pytest.raises(StoreError) as info:
        open_store(home / "ferroflow.db")
    assert str(home) in str(info.value)
    assert "FERROFLOW_HOME" in str(info.value)
    assert blocker.read_text() == ""


def test_interrupted_runs(tmp_path: Path) -> None:
    db = tmp_path / "ferroflow.db"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = socket.gethostname()
    with _native.Recorder(str(db)) as rec:
        rec.flow_run_started("dead-run", "f", "{}", 1.0, dead.pid, here)
        rec.flow_run_started("live-run", "f", "{}", 2.0, os.getpid(), here)
        rec.flow_run_started("other-host", "f", "{}", 3.0, dead.pid, here + "-elsewhere")
        rec.flow_run_started("manual", "f", "{}", 4.0, os.getpid(), here)
    with open_store(db) as store:
        assert store.fixup_interrupted() == ["dead-run"]
        run = store.flow_run("dead-run")
        assert run is not None and run.state == "Interrupted"
        assert run.message is not None and str(dead.pid) in run.message
        assert store.mark_interrupted("manual", "stopped by hand")
        assert not store.mark_interrupted("manual", "again")
        states = {r.id: r.state for r in store.list_flow_runs()}
        assert states == {
            "dead-run": "Interrupted",
            "live-run": "Running",
            "other-host": "Running",
            "manual": "Interrupted",
        }


def test_cache_index(tmp_path: Path) -> None:
    with open_store(tmp_path / "ferroflow.db") as store:
        assert store.cache_get("task", "key") is None
        store.cache_put("task", "key", "/r/1", inputs_hash="h1", created=10.0, expires=100.0)
        store.cache_put("task", "key", "/r/2", inputs_hash="h2", created=20.0, serializer="json")
        entry = store.cache_get("task", "key", now=50.0)
        assert entry == CacheEntry("task", "key", "h2", 20.0, None, "/r/2", "json")
        assert [e.inputs_hash for e in store.cache_candidates("task", "key", now=50.0)] == [
            "h2",
            "h1",
        ]
        assert [e.inputs_hash for e in store.cache_candidates("task", "key", now=200.0)] == ["h2"]
        store.cache_put("task", "key", "/r/3", inputs_hash="h2", created=30.0)
        latest = store.cache_get("task", "key", now=50.0)
        assert latest is not None and latest.result_location == "/r/3"
    # The recorder writes cache entries too.
    with _native.Recorder(str(tmp_path / "ferroflow.db")) as rec:
        rec.cache_put("other", "k", "/r/9", created=5.0)
    with open_store(tmp_path / "ferroflow.db") as store:
        got = store.cache_get("other", "k", now=6.0)
        assert got is not None and got.result_location == "/r/9"


def test_recorder_errors(tmp_path: Path) -> None:
    db = tmp_path / "ferroflow.db"
    rec = _native.Recorder(str(db))
    assert Path(rec.path) == db and not rec.closed
    with pytest.raises(ValueError, match=r"unknown state name .Bogus."):
        rec.transition("x", 0, "Bogus")
    # An event about a flow run that was never started is a bug in the caller: reported.
    rec.transition("never-started", 0, "Running")
    with pytest.raises(StoreError, match="'never-started', which was never started"):
        rec.flush()
    with pytest.raises(StoreError):
        rec.close()
    assert rec.closed
    rec.close()  # closing twice does nothing
    with pytest.raises(StoreError, match="closed"):
        rec.flow_run_started("late", "f")


def test_closed_store_raises(tmp_path: Path) -> None:
    store = open_store(tmp_path / "ferroflow.db")
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.list_flow_runs()


def test_import_ferroflow_does_not_load_the_cli_or_store() -> None:
    code = (
        "import sys, ferroflow\n"
        "loaded = [m for m in ('ferroflow.store', 'ferroflow.cli', 'click', 'rich') "
        "if m in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_restorable_rows_name_pack_records_and_plain_locations(tmp_path: Path) -> None:
    from ferroflow import Flow, task
    from ferroflow.results import LocalResult

    @task(checkpoint=True, result=LocalResult(dir=tmp_path))
    def half(x: int) -> float:
        if x == 3:
            raise ValueError("no")
        return x / 2

    @task(target="t/{x}.bin", result=LocalResult(dir=tmp_path))
    def targeted(x: int) -> int:
        return x

    with Flow("restorable") as flow:
        half.map([1, 2, 3])
        targeted(7)
    flow.run()
    with open_store() as store:
        (run,) = store.list_flow_runs()
        rows = store.restorable(run.id)
    by_key = {(r[2], r[1]): r for r in rows}
    # The failed child and the tasks without a checkpoint have no row.
    assert sorted(by_key) == [("half", 0), ("half", 1), ("targeted", -1)]
    _t, _i, _n, pack, offset, length = by_key[("half", 1)]
    assert pack.endswith(".pack") and offset > 0 and length > 0
    result = LocalResult(dir=tmp_path)
    assert result.read(f"{pack}#{offset}:{length}").value == 1.0
    _t, _i, _n, location, offset, length = by_key[("targeted", -1)]
    assert (location, offset, length) == ("t/7.bin", -1, -1)
