"""Concurrency limits against a real server and real agents: a flow's runs at once
(``ferroflow flows limit``), task-tag limits across runs and agents (``ferroflow limits
set``), a limit lowered while tasks hold slots, an agent killed holding slots."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from _tasks import Ledger
from ferroflow.cli import run_cli
from ferroflow.exceptions import ApiError, OpsError
from ferroflow.server import limits, models
from ferroflow.server.database import Database
from test_agent import (
    AgentProcess,
    Server,
    agents,
    finished,
    lease_server,
    ledger,
    register,
    server,
    wait_for,
)

__all__ = ["agents", "ledger", "server"]  # fixtures used by name

FLOWS = """
import os, time
from pathlib import Path
from ferroflow import Flow, Parameter, task
from ferroflow.executors import ThreadExecutor
from _tasks import Ledger

LEDGER = Ledger(os.environ.get("AGENT_TEST_LEDGER", "/nonexistent"))
GATE = Path(os.environ.get("AGENT_TEST_LEDGER", "/nonexistent") + ".go")

@task
def slow(n):
    LEDGER.add("start", n, time.time())
    time.sleep(0.5)
    LEDGER.add("end", n, time.time())
    return n

@task(tags=["db"])
def query(i):
    LEDGER.add("start", i, time.time())
    while not GATE.exists():
        time.sleep(0.02)
    LEDGER.add("end", i, time.time())
    return i

with Flow("limited") as limited:
    slow(Parameter("n", default=1))

with Flow("queries", executor=ThreadExecutor(max_workers=4)) as queries:
    query.map(list(range(3)))
"""


def peak(items: list[Any]) -> int:
    running = top = 0
    for _, kind in sorted((t, kind) for kind, _, t in items):
        running += 1 if kind == "start" else -1
        top = max(top, running)
    return top


def cli(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = run_cli(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_flow_limit_holds_runs_back_at_the_claim(
    server: Server, tmp_path: Path, agents: Any, ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = register(server, tmp_path, FLOWS, "limited")
    api = ("--api", server.url)
    code, out, err = cli("flows", "limit", "limited", "1", *api, capsys=capsys)
    assert code == 0 and "at most 1 run(s) at once" in out, err
    runs = [
        server.client.create_flow_run(flow_id=ids["limited"], parameters={"n": i}) for i in range(3)
    ]
    agents("--max-concurrent", "4")
    agents("--max-concurrent", "4")
    wait_for(
        "a run waiting for the flow's limit",
        lambda: any(
            (server.client.get_flow_run(r)["message"] or "").startswith("waiting: flow 'limited'")
            for r in runs
        ),
    )
    for r in runs:
        got = wait_for(f"run {r}", lambda rid=r: finished(server.client, rid))
        assert got["state"] == "Success", got
    # Each exactly once (3 runs x start and end), never two at a time.
    assert len(ledger.items()) == 6 and peak(ledger.items()) == 1, ledger.items()
    code, out, _ = cli("limits", "ls", "--json", *api, capsys=capsys)
    assert json.loads(out)["flow_limits"] == [
        {"flow_name": "limited", "max_running": 1, "running": 0}
    ]
    code, out, _ = cli("flows", "limit", "limited", "none", *api, capsys=capsys)
    assert code == 0 and "no run limit" in out


def test_the_claim_itself_refuses_a_run_over_the_limit(db: Database) -> None:
    """Whatever an agent's queue said: two claims, one slot, one wins (SQLite and
    PostgreSQL)."""
    from test_server import register as register_row

    models.create_project(db, "etl")
    flow = register_row(db)
    a = models.create_flow_run(db, flow_id=flow["id"])
    b = models.create_flow_run(db, flow_id=flow["id"])
    agent = models.register_agent(db, "a", [], None)
    limits.set_flow_limit(db, "f", 1)
    models.claim_flow_run(db, agent["id"], a["id"], 0)
    with pytest.raises(ApiError, match="waits for a concurrency limit"):
        models.claim_flow_run(db, agent["id"], b["id"], 0)
    queue = models.get_runs_in_queue(db, agent["id"])
    assert queue == []
    assert models.get_flow_run(db, b["id"])["message"].startswith("waiting: flow 'f' has 1")
    limits.set_flow_limit(db, flow["id"], 2)
    assert models.claim_flow_run(db, agent["id"], b["id"], 0)["state"] == "Pending"
    with pytest.raises(OpsError, match="int >= 0"):
        limits.set_flow_limit(db, "f", -1)
    with pytest.raises(ApiError, match="no flow 'nope'"):
        limits.set_flow_limit(db, "nope", 1)
    with pytest.raises(OpsError, match="non-empty"):
        limits.set_tag_limit(db, " ", 1)
    with pytest.raises(ApiError, match="not held by an agent"):
        limits.acquire_slots(db, "no-such-run", "h", ["db"])
    # Tag slots: all of a task's limited tags or none; lowering keeps the holders.
    limits.set_tag_limit(db, "db", 1)
    limits.set_tag_limit(db, "api", 2)
    assert limits.acquire_slots(db, a["id"], "t1", ["db", "api", "free"])
    assert not limits.acquire_slots(db, b["id"], "t2", ["api", "db"])
    assert limits.acquire_slots(db, b["id"], "t3", ["api"])
    assert limits.acquire_slots(db, a["id"], "t1", ["db", "api"])  # held already
    limits.set_tag_limit(db, "api", 1)
    assert {r["tag"]: r["running"] for r in limits.list_tag_limits(db)} == {"api": 2, "db": 1}
    assert limits.release_slots(db, a["id"], "t1") == 2
    assert not limits.acquire_slots(db, a["id"], "t4", ["api"])  # 1 held, limit 1
    models.set_flow_run_states(
        db, [{"flow_run_id": b["id"], "version": 1, "state": "Failed", "message": "x"}]
    )
    assert limits.acquire_slots(db, a["id"], "t4", ["api"])  # b's slot went with it


def test_a_tag_limit_holds_across_runs_and_agents_and_can_be_lowered(
    server: Server, tmp_path: Path, agents: Any, ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = register(server, tmp_path, FLOWS, "queries")
    api = ("--api", server.url)
    code, out, _ = cli("limits", "set", "db", "3", *api, capsys=capsys)
    assert code == 0 and "at most 3 at once" in out
    runs = [server.client.create_flow_run(flow_id=ids["queries"]) for _ in range(2)]
    agents()
    agents()
    # Six tagged task runs over two runs on two agents: three hold the slots.
    wait_for("three queries running", lambda: len(ledger.items()) >= 3)
    time.sleep(1.0)  # the other three keep asking meanwhile
    assert len(ledger.items()) == 3, ledger.items()
    code, out, _ = cli("limits", "set", "db", "1", *api, capsys=capsys)
    assert code == 0 and "(3 running)" in out  # lowering takes no slot away
    Path(str(ledger.path) + ".go").touch()
    for r in runs:
        got = wait_for(f"run {r}", lambda rid=r: finished(server.client, rid))
        assert got["state"] == "Success", got
    items = ledger.items()
    assert len(items) == 12, items  # 6 task runs, each started and ended once
    by_time = sorted(items, key=lambda e: e[2])
    assert [kind for kind, _, _ in by_time[:3]] == ["start"] * 3
    # Under the new limit of 1: the first three end before any other query starts, and
    # the later three run one at a time.
    assert [kind for kind, _, _ in by_time[3:6]] == ["end"] * 3, by_time
    assert peak(by_time[6:]) == 1, by_time
    code, out, _ = cli("limits", "ls", "--json", *api, capsys=capsys)
    assert json.loads(out)["tag_limits"] == [{"tag": "db", "max_running": 1, "running": 0}]
    code, out, _ = cli("limits", "rm", "db", *api, capsys=capsys)
    assert code == 0
    code, _, err = cli("limits", "set", "db", "-1", *api, capsys=capsys)
    assert code == 2 and "Error" in err


def test_an_agent_killed_holding_slots_gives_them_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ledger: Ledger
) -> None:
    server = lease_server(tmp_path, monkeypatch)
    first = AgentProcess(server.url, tmp_path / "agent0")
    second = None
    try:
        ids = register(server, tmp_path, FLOWS, "queries")
        server.client.graphql(
            'mutation { set_tag_limit(input: {tag: "db", max_running: 1}) { tag } }'
        )
        run = server.client.create_flow_run(flow_id=ids["queries"])
        wait_for("a query holding the slot", lambda: len(ledger.items()) >= 1)
        held = server.client.graphql("{ tag_limits { running } }")["tag_limits"]
        assert held == [{"running": 1}]
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(30)
        Path(str(ledger.path) + ".go").touch()
        second = AgentProcess(server.url, tmp_path / "agent1")
        got = wait_for(f"run {run}", lambda: finished(server.client, run))
        assert got["state"] == "Success", got
        assert server.client.graphql("{ tag_limits { running } }")["tag_limits"] == [{"running": 0}]
    finally:
        first.stop()
        if second is not None:
            second.stop()
        server.stop()
