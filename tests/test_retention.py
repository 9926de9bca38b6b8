"""Retention: ``ferroflow runs rm|prune`` on the local store and on a real server, the
server's retention service, checkpoint files that go (or stay), and space given back."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ferroflow import Flow, Parameter, task
from ferroflow.cli import run_cli
from ferroflow.exceptions import OpsError
from ferroflow.server.database import Database, SqliteDatabase, open_database
from ferroflow.server.retention import (
    Retention,
    parse_duration,
    prune_runs,
    remove_runs,
    retention_from_env,
)
from ferroflow.store import open_store, store_path

DAY = 86400.0


@pytest.fixture(autouse=True)
def _no_api_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FERROFLOW_API_URL", raising=False)
    monkeypatch.delenv("FERROFLOW_DATABASE_URL", raising=False)


@task(checkpoint=True)
def square(x: int) -> int:
    return x * x


@task
def add(xs: list[int]) -> int:
    return sum(xs)


def checkpointed_flow() -> Flow:
    with Flow("squares") as flow:
        add(square.map(list(range(4))))
    return flow


def run_ids() -> list[str]:
    with open_store() as store:
        return [r.id for r in store.list_flow_runs(limit=100_000)]


def age(run_ids: list[str], days: float) -> None:
    """Make runs look as if they started ``days`` ago."""
    conn = sqlite3.connect(store_path())
    with conn:
        conn.executemany(
            "UPDATE flow_runs SET started = started - ?, ended = ended - ? WHERE id = ?",
            [(days * DAY, days * DAY, i) for i in run_ids],
        )
    conn.close()


def counts(path: Path, run_id: str) -> tuple[int, int, int]:
    conn = sqlite3.connect(path)
    try:
        key = conn.execute("SELECT key FROM flow_runs WHERE id = ?", (run_id,)).fetchone()
        if key is None:
            journal = 0
        else:
            journal = conn.execute(
                "SELECT count(*) FROM journal WHERE flow_run = ?", (key[0],)
            ).fetchone()[0]
        logs = conn.execute(
            "SELECT count(*) FROM logs WHERE flow_run_id = ?", (run_id,)
        ).fetchone()[0]
        return (0 if key is None else 1), journal, logs
    finally:
        conn.close()


def wait_for(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def running(flow_name: str) -> Any:
    with open_store() as store:
        found = [r for r in store.list_flow_runs() if r.flow_name == flow_name]
    return found[0] if found else None


def pack_dir(run_id: str) -> Path:
    return Path(os.environ["FERROFLOW_HOME"]) / "results" / "runs" / run_id


def cli(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = run_cli(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_parse_duration_and_bad_durations() -> None:
    assert parse_duration("30d") == 30 * DAY
    assert parse_duration("12h") == 12 * 3600
    assert parse_duration("2w") == 14 * DAY
    assert parse_duration(" 90m ") == 5400
    for bad in ("30", "30x", "-1d", "", "d", "1e3d"):
        with pytest.raises(OpsError, match="duration"):
            parse_duration(bad)


def test_prune_removes_old_runs_records_and_checkpoints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    flow = checkpointed_flow()
    for _ in range(3):
        assert flow.run().is_successful()
    old, *_ = ids = run_ids()
    assert all(pack_dir(i).is_dir() for i in ids)
    age(ids[:2], 40)
    code, out, _ = cli("runs", "prune", "--older-than", "30d", "--dry-run", capsys=capsys)
    assert code == 0 and "Would remove 2 flow run(s)" in out
    assert len(run_ids()) == 3
    code, out, _ = cli("runs", "prune", "--older-than", "30d", "--json", capsys=capsys)
    assert code == 0, out
    got = json.loads(out)
    assert got["count"] == 2 and got["files_removed"] == 2 and not got["dry_run"]
    assert sorted(got["flow_run_ids"]) == sorted(ids[:2])
    assert run_ids() == ids[2:]
    for gone in ids[:2]:
        assert counts(store_path(), gone) == (0, 0, 0)
        assert not pack_dir(gone).exists()
    assert counts(store_path(), ids[2])[:2] != (0, 0)
    assert pack_dir(ids[2]).is_dir()
    code, _, err = cli("runs", "show", old, capsys=capsys)
    assert code == 2, err


def test_prune_by_state_and_rm(capsys: pytest.CaptureFixture[str]) -> None:
    @task
    def boom(n: int) -> int:
        if n:
            raise ValueError("boom")
        return n

    with Flow("maybe") as flow:
        boom(Parameter("n"))
    assert flow.run(n=0).is_successful()
    assert flow.run(n=1).is_failed()
    assert flow.run(n=0).is_successful()
    newest, failed, ok = run_ids()
    age([ok, failed], 40)
    code, out, _ = cli(
        "runs", "prune", "--older-than", "30d", "--state", "Success", "--json", capsys=capsys
    )
    assert code == 0 and json.loads(out)["flow_run_ids"] == [ok]
    assert run_ids() == [newest, failed]
    code, out, _ = cli("runs", "rm", failed[:8], capsys=capsys)
    assert code == 0 and "Removed 1 flow run(s)" in out
    assert run_ids() == [newest]


def test_bad_input_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli("runs", "prune", "--older-than", "30x", capsys=capsys)
    assert code == 2 and "cannot read the duration '30x'" in err
    code, _, err = cli("runs", "prune", "--older-than", "1d", "--state", "Running", capsys=capsys)
    assert code == 2 and "only finished runs are removed" in err
    code, _, err = cli("runs", "rm", "nosuchrun", capsys=capsys)
    assert code == 2 and "no flow run with id 'nosuchrun'" in err
    code, _, err = cli("runs", "rm", capsys=capsys)
    assert code == 2
    db = SqliteDatabase(store_path())
    try:
        with pytest.raises(OpsError, match=">= 0"):
            prune_runs(db, -1.0)
    finally:
        db.close()


WRITER = """
import sys, threading, time
from pathlib import Path
from ferroflow import Flow, task

ctl = Path(sys.argv[1])

@task
def wait():
    (ctl / "started").touch()
    while not (ctl / "release").exists():
        time.sleep(0.02)
    return 1

@task
def step(x):
    return x + 1

with Flow("long") as long_flow:
    step.map([wait()] * 3)
with Flow("short") as short_flow:
    step.map(list(range(20)))

out = {}
t = threading.Thread(target=lambda: out.setdefault("s", long_flow.run()))
t.start()
while not (ctl / "started").exists():
    time.sleep(0.02)

def write():
    while not (ctl / "stop").exists():
        assert short_flow.run().is_successful()
        (ctl / "wrote").touch()

writers = [threading.Thread(target=write) for _ in range(2)]
for w in writers:
    w.start()
for w in writers:
    w.join()
(ctl / "release").touch()
t.join()
print(out["s"].is_successful())
"""


def rows(path: Path) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.execute("SELECT id, flow_name, state FROM flow_runs"))
    finally:
        conn.close()


def test_a_running_run_is_never_removed_even_while_runs_are_written(tmp_path: Path) -> None:
    """Another process runs a long flow and writes short runs as fast as it can, while
    this one prunes everything finished: the long run is refused by ``rm``, skipped by
    every prune, and ends with all its task runs recorded; the store stays whole.

    (Pruning runs in a process of its own, as ``ferroflow runs prune`` and the server
    do: the recorder's SQLite and Python's ``sqlite3`` are two SQLite libraries, which
    must not share a database file inside one process.)"""
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(ctl)], stdout=subprocess.PIPE, text=True
    )
    path = store_path()
    removed = 0
    try:
        wait_for("the long run", lambda: (ctl / "started").exists() and path.exists())
        long_id = wait_for(
            "the long run's row", lambda: [r[0] for r in rows(path) if r[1] == "long"]
        )[0]
        wait_for("short runs", lambda: (ctl / "wrote").exists())
        db = SqliteDatabase(path)
        try:
            with pytest.raises(OpsError, match="has not finished"):
                remove_runs(db, [long_id])
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline or not removed:
                removed += prune_runs(db, 0.0).count
                assert (long_id, "long", "Running") in rows(path)
        finally:
            db.close()
    finally:
        (ctl / "stop").touch()
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and out.strip() == "True"
    assert removed > 0
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    with open_store() as store:
        info = store.flow_run(long_id)
        assert info is not None and info.state == "Success"
        # wait, the list of its three results, the mapped parent and its 3 children
        assert len(store.task_runs(long_id)) == 6
        # Every short run that is left is whole: its row and its task runs together.
        for r in store.list_flow_runs(limit=1000):
            assert r.state == "Success"
            assert store.task_runs(r.id)


def test_checkpoints_a_resume_still_uses_are_kept() -> None:
    broken = {"on": True}

    @task(checkpoint=True)
    def work(x: int) -> int:
        if x == 3 and broken["on"]:
            raise RuntimeError("transient")
        return x * x

    with Flow("resumable") as flow:
        add(work.map(list(range(5))))
    assert flow.run().is_failed()
    (first,) = run_ids()
    broken["on"] = False
    assert flow.run(resume=first).is_successful()
    second, _ = run_ids()
    db = SqliteDatabase(store_path())
    try:
        got = remove_runs(db, [first])
        assert got.count == 1 and got.files_kept == 1 and got.files_removed == 0
        assert pack_dir(first).is_dir()  # the resume restored its values from these packs
        got = remove_runs(db, [second])
        assert got.count == 1 and got.files_removed == 1
    finally:
        db.close()
    assert not pack_dir(second).exists()
    # The first run's packs stay: the run that used them is gone, but nothing is
    # removed that was not asked for (the first run was already pruned).
    assert pack_dir(first).is_dir()


RESUMER = """
import sys, time
from pathlib import Path
from ferroflow import Flow, task

ctl = Path(sys.argv[1])

@task(checkpoint=True)
def work(x):
    if x == 1:
        if not (ctl / "fixed").exists():
            raise RuntimeError("transient")
        (ctl / "started").touch()
        while not (ctl / "release").exists():
            time.sleep(0.02)
    return x

@task
def add(xs):
    return sum(xs)

with Flow("held") as flow:
    add(work.map([0, 1]))

if sys.argv[2] == "first":
    assert flow.run().is_failed()
else:
    assert flow.run(resume=sys.argv[2]).is_successful()
"""


def test_a_run_resumed_from_is_in_use_while_the_resume_runs(tmp_path: Path) -> None:
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    script = tmp_path / "resumer.py"
    script.write_text(RESUMER)
    subprocess.run([sys.executable, str(script), str(ctl), "first"], check=True)
    (first,) = run_ids()
    (ctl / "fixed").touch()
    proc = subprocess.Popen([sys.executable, str(script), str(ctl), first])
    try:
        wait_for("the resume", lambda: (ctl / "started").exists() and len(rows(store_path())) == 2)
        db = SqliteDatabase(store_path())
        try:
            with pytest.raises(OpsError, match="in use"):
                remove_runs(db, [first])
            got = prune_runs(db, 0.0)
            assert got.count == 0 and first in got.skipped, got
        finally:
            db.close()
    finally:
        (ctl / "release").touch()
        assert proc.wait(120) == 0
    assert pack_dir(first).is_dir()


def test_a_new_store_is_incremental_and_shrinks_after_a_prune() -> None:
    @task
    def noisy(i: int) -> int:
        from ferroflow import get_run_logger

        get_run_logger().info("x" * 2000)
        return i

    with Flow("noisy") as flow:
        noisy.map(list(range(100)))
    for _ in range(6):
        assert flow.run().is_successful()
    db = SqliteDatabase(store_path())
    try:
        assert db.fetchone("PRAGMA auto_vacuum") == {"auto_vacuum": 2}
        got = prune_runs(db, 0.0)
        assert got.count == 6
        assert got.bytes_before is not None and got.bytes_after is not None
        assert got.bytes_after < got.bytes_before / 2, got
        assert got.note is None
    finally:
        db.close()


def test_an_older_store_is_switched_to_incremental_by_prune_vacuum(
    capsys: pytest.CaptureFixture[str],
) -> None:
    flow = checkpointed_flow()
    assert flow.run().is_successful()
    conn = sqlite3.connect(store_path(), isolation_level=None)
    conn.execute("PRAGMA auto_vacuum = NONE")
    conn.execute("VACUUM")
    assert conn.execute("PRAGMA auto_vacuum").fetchone() == (0,)
    conn.close()
    age(run_ids(), 40)
    code, out, _ = cli("runs", "prune", "--older-than", "30d", capsys=capsys)
    assert code == 0 and "ferroflow runs prune --vacuum" in out
    code, out, _ = cli("runs", "prune", "--older-than", "30d", "--vacuum", capsys=capsys)
    assert code == 0 and "Note" not in out, out
    conn = sqlite3.connect(store_path())
    assert conn.execute("PRAGMA auto_vacuum").fetchone() == (2,)
    conn.close()


def test_retention_setting_is_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FERROFLOW_RETENTION", raising=False)
    assert retention_from_env() is None
    monkeypatch.setenv("FERROFLOW_RETENTION", "30d")
    monkeypatch.setenv("FERROFLOW_RETENTION_STATES", "Success, Skipped")
    monkeypatch.setenv("FERROFLOW_RETENTION_INTERVAL", "60")
    assert retention_from_env() == (30 * DAY, ("Success", "Skipped"), 60.0)
    monkeypatch.setenv("FERROFLOW_RETENTION", "soon")
    with pytest.raises(OpsError, match="FERROFLOW_RETENTION: cannot read"):
        retention_from_env()
    monkeypatch.setenv("FERROFLOW_RETENTION", "1d")
    monkeypatch.setenv("FERROFLOW_RETENTION_STATES", "Running")
    with pytest.raises(OpsError, match="FERROFLOW_RETENTION_STATES"):
        retention_from_env()
    monkeypatch.setenv("FERROFLOW_RETENTION_STATES", "Failed")
    monkeypatch.setenv("FERROFLOW_RETENTION_INTERVAL", "0")
    with pytest.raises(OpsError, match="FERROFLOW_RETENTION_INTERVAL"):
        retention_from_env()


def test_prune_on_postgresql(postgres_server: Any) -> None:
    from test_server import copy_local_runs

    flow = checkpointed_flow()
    for _ in range(3):
        assert flow.run().is_successful()
    ids = run_ids()
    db: Database = open_database(postgres_server.create_database())
    try:
        copy_local_runs(db)
        db.execute("UPDATE flow_runs SET started = started - ? WHERE id = ?", (40 * DAY, ids[0]))
        got = Retention(db, 30 * DAY).run_once()
        assert got == 1
        left = [r["id"] for r in db.fetchall("SELECT id FROM flow_runs ORDER BY key")]
        assert ids[0] not in left and len(left) == 2
        assert db.fetchone("SELECT count(*) AS n FROM logs WHERE flow_run_id = ?", (ids[0],)) == {
            "n": 0
        }
        got2 = remove_runs(db, [ids[1]])
        assert got2.count == 1 and got2.bytes_before is None
    finally:
        db.close()


# --------------------------------------------------------------------------- the server


class _Server:
    def __init__(self, home: Path, **env: str) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "FERROFLOW_HOME": str(home), **env}
        self.env.pop("FERROFLOW_API_URL", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ferroflow", "server", "start", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.startswith("ferroflow server at "), line + self.process.stderr.read()  # type: ignore[union-attr]
        self.url = line.split()[3]

    def stop(self) -> str:
        self.process.terminate()
        _, err = self.process.communicate(timeout=30)
        return err


@pytest.fixture
def retention_server(_ferroflow_home: str) -> Iterator[_Server]:
    s = _Server(
        Path(_ferroflow_home),
        FERROFLOW_RETENTION="30d",
        FERROFLOW_RETENTION_INTERVAL="0.2",
        FERROFLOW_SCHEDULER_INTERVAL="0",
    )
    try:
        yield s
    finally:
        s.stop()


def test_the_server_prunes_on_its_setting_and_through_the_api(
    retention_server: _Server, capsys: pytest.CaptureFixture[str]
) -> None:
    flow = checkpointed_flow()
    for _ in range(4):
        assert flow.run().is_successful()
    ids = run_ids()
    age(ids[:2], 40)  # the service removes these on its next pass
    deadline = time.monotonic() + 60
    while set(run_ids()) != set(ids[2:]):
        assert time.monotonic() < deadline, run_ids()
        time.sleep(0.1)
    assert not pack_dir(ids[0]).exists() and pack_dir(ids[2]).is_dir()
    api = ("--api", retention_server.url)
    age(ids[2:], 1)
    code, out, _ = cli("runs", "prune", "--older-than", "12h", "--dry-run", *api, capsys=capsys)
    assert code == 0 and "Would remove 2 flow run(s)" in out, out
    code, out, _ = cli("runs", "rm", ids[2], "--json", *api, capsys=capsys)
    assert code == 0 and json.loads(out)["flow_run_ids"] == [ids[2]]
    code, _, err = cli("runs", "rm", ids[2], *api, capsys=capsys)
    assert code == 2 and "no flow run" in err
    code, _, err = cli("runs", "prune", "--older-than", "ever", *api, capsys=capsys)
    assert code == 2 and "cannot read the duration" in err
    code, _, err = cli("runs", "prune", "--older-than", "1s", "--vacuum", *api, capsys=capsys)
    assert code == 2 and "--vacuum" in err
    assert run_ids() == [ids[3]]
