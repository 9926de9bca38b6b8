"""What lets a run lost on one agent go on elsewhere: the server's queue never hides a
run an agent can take behind runs it cannot, and a run's records travel from the server
into another machine's store (``flow_run_records`` → ``import_flow_run``) so that a
resume there restores the finished, checkpointed tasks.

The end-to-end case (two agents with separate work directories, the first SIGKILLed)
is ``test_agent.py::test_a_sigkilled_run_finishes_on_another_agent_without_recomputing``.
"""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from ferroflow import Flow, task
from ferroflow.exceptions import StoreError
from ferroflow.results import LocalResult
from ferroflow.server import models
from ferroflow.server.app import execute
from ferroflow.server.database import Database, open_database
from ferroflow.store import import_flow_run, open_store, store_path

STRUCTURE = {"tasks": [], "edges": [], "parameters": [], "schedule": None}


def _flow(db: Database) -> str:
    models.create_project(db, "etl")
    row = models.register_flow(
        db,
        project_name="etl",
        name="f",
        structure=STRUCTURE,
        storage={"type": "source", "source": "x = 1\n", "filename": "f.py"},
    )
    return str(row["id"])


def test_runs_an_agent_can_take_are_found_behind_many_it_cannot(db: Database) -> None:
    flow_id = _flow(db)
    blocked = models.MAX_PAGE + 5
    with db.transaction():
        for i in range(blocked):
            models.create_flow_run(
                db, flow_id=flow_id, labels=["gpu"], scheduled_start_time=1000.0 + i
            )
    wanted = models.create_flow_run(db, flow_id=flow_id, scheduled_start_time=5000.0)
    agent = models.register_agent(db, "cpu-only")
    queued = models.get_runs_in_queue(db, agent["id"], before=10_000.0)
    assert [r["id"] for r in queued] == [wanted["id"]]
    gpu = models.register_agent(db, "gpu", labels=["gpu"])
    queued = models.get_runs_in_queue(db, gpu["id"], before=10_000.0, limit=3)
    assert len(queued) == 3
    assert [r["scheduled_start"] for r in queued] == [1000.0, 1001.0, 1002.0]


CALLS: list[int] = []
BROKEN = {"on": True}


def _two_step_flow(results: Path) -> Flow:
    @task(checkpoint=True, result=LocalResult(dir=str(results)))
    def first() -> int:
        CALLS.append(1)
        return 20

    @task
    def second(x: int) -> int:
        if BROKEN["on"]:
            raise RuntimeError("not yet")
        return x + 1

    with Flow("two-steps") as flow:
        second(first())
    return flow


def _result(state: Any, flow: Flow, name: str) -> Any:
    (t,) = flow.get_tasks(name=name)
    return state.result[t].result


def test_a_run_copied_from_the_server_resumes_in_another_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = tmp_path / "results"  # the checkpoints, readable from both "machines"
    flow = _two_step_flow(results)
    CALLS.clear()
    BROKEN["on"] = True
    assert flow.run().is_failed()
    with open_store() as store:
        (old,) = store.list_flow_runs()
    run_id = old.id
    # The server's database is this store; ask it through the GraphQL API.
    server_db = open_database()
    try:
        out = execute(
            server_db,
            "query($id: String!) { flow_run_records(id: $id) { flow_name parameters state "
            "structure journal } }",
            {"id": run_id},
        )
    finally:
        server_db.close()
    assert "errors" not in out, out
    records = dict(out["data"]["flow_run_records"])
    assert records["flow_name"] == "two-steps" and records["structure"]
    records["journal"] = [base64.b64decode(b) for b in records["journal"]]
    assert records["journal"]

    elsewhere = tmp_path / "other-machine"
    monkeypatch.setenv("FERROFLOW_HOME", str(elsewhere))
    assert import_flow_run(store_path(), run_id, records) is True
    assert import_flow_run(store_path(), run_id, records) is False  # already there
    with open_store() as store:
        copied = store.flow_run(run_id)
        assert copied is not None and copied.state == "Interrupted"
    BROKEN["on"] = False
    resumed = flow.run(resume=run_id)
    assert resumed.is_successful(), resumed
    assert _result(resumed, flow, "second") == 21
    assert CALLS == [1], "the checkpointed task ran again after the copy"


def test_malformed_records_are_a_store_error_and_change_nothing(tmp_path: Path) -> None:
    target = tmp_path / "store" / "ferroflow.db"
    with pytest.raises(StoreError, match="malformed records"):
        import_flow_run(target, "abc", {"journal": []})
    with pytest.raises(StoreError, match="malformed records"):
        import_flow_run(target, "abc", {"flow_name": "f", "started": "soon"})
    con = sqlite3.connect(target)
    try:
        assert con.execute("SELECT count(*) FROM flow_runs").fetchone() == (0,)
    finally:
        con.close()


def test_records_of_an_unknown_run_are_a_typed_error(db: Database) -> None:
    out: dict[str, Any] = execute(
        db, 'query { flow_run_records(id: "no-such-run") { state } }', None
    )
    assert out["errors"][0]["message"] == "no flow run with id 'no-such-run'"


def test_a_lost_run_s_running_task_runs_are_marked_lost(tmp_path: Path) -> None:
    from ferroflow import _native

    @task
    def one() -> int:
        return 1

    with Flow("lost-one") as flow:
        one()
    assert flow.run().is_successful()
    with open_store() as store:
        (run,) = store.list_flow_runs()
    db = open_database()
    try:
        agent = models.register_agent(db, "gone")
        row = db.fetchone("SELECT key FROM flow_runs WHERE id = ?", (run.id,))
        assert row is not None
        # As the store looks when the flow-run process dies mid-task: the task run was
        # Running again, and the run is held by an agent whose lease ran out long ago.
        blob = _native.journal_encode_transitions([(0, "Running", None, 2, 1.0)])
        db.execute("INSERT INTO journal(flow_run, data) VALUES (?, ?)", (row["key"], blob))
        db.execute(
            "UPDATE flow_runs SET state = 'Running', agent_id = ?, heartbeat = 1.0 WHERE key = ?",
            (agent["id"], row["key"]),
        )
        assert models.requeue_lost_runs(db, lease_timeout=30.0) == 1
        after = models.task_run(db, run.id, 0)
        assert after["state"] == "Failed"
        assert "lost with its flow run" in after["transitions"][-1]["message"]
        assert models.get_flow_run(db, run.id)["state"] == "Scheduled"
        assert models.requeue_lost_runs(db, lease_timeout=30.0) == 0
    finally:
        db.close()


def test_agents_show_the_runs_they_hold(db: Database) -> None:
    flow_id = _flow(db)
    busy = models.register_agent(db, "busy")
    models.register_agent(db, "idle")
    runs = [models.create_flow_run(db, flow_id=flow_id, scheduled_start_time=1.0) for _ in "abc"]
    for run in runs[:2]:
        models.claim_flow_run(db, busy["id"], run["id"], int(run["version"]))
    out = execute(db, "{ agents { name runs_held } }", None)
    assert "errors" not in out, out
    assert sorted((a["name"], a["runs_held"]) for a in out["data"]["agents"]) == [
        ("busy", 2),
        ("idle", 0),
    ]


def test_report_batches_page_through_a_run_in_order() -> None:
    from ferroflow import _native, get_run_logger

    @task
    def say(i: int) -> int:
        get_run_logger().info("line %d", i)
        return i

    with Flow("talker") as flow:
        say.map(list(range(30)))
    assert flow.run().is_successful()
    with open_store() as store:
        (run,) = store.list_flow_runs()
    native = _native.Store(str(store_path()))
    assert native.report_batch("no-such-run", 0, 0, 1 << 20, 100) is None
    whole = native.report_batch(run.id, 0, 0, 1 << 30, 10_000)
    assert whole is not None and whole["complete"]
    assert whole["run"]["flow_name"] == "talker" and whole["structure"]
    assert len(whole["logs"]) >= 30
    seqs = [seq for seq, _ in whole["journal"]]
    assert seqs and seqs == sorted(seqs)
    # One blob and 7 lines at a time: the same records, in the same order.
    journal, logs, after_j, after_l, batches = [], [], 0, 0, 0
    while True:
        got = native.report_batch(run.id, after_j, after_l, 1, 7)
        assert got is not None
        assert len(got["journal"]) <= 1 and len(got["logs"]) <= 7
        journal += got["journal"]
        logs += got["logs"]
        after_j = journal[-1][0] if journal else 0
        after_l = logs[-1][0] if logs else 0
        batches += 1
        if got["complete"]:
            break
    assert journal == whole["journal"] and logs == whole["logs"]
    assert batches >= len(whole["logs"]) // 7 >= 4
