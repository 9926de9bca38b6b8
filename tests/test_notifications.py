"""Notifications: ``webhook_notifier`` as a flow and task state handler, and the
server's rules (``ferroflow notify``), received by a real HTTP server on 127.0.0.1 that
answers, hangs, fails with 500 or is not there; with a real ferroflow server and agent."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ferroflow import Flow, Parameter, task
from ferroflow.cli import run_cli
from ferroflow.exceptions import OpsError
from ferroflow.server.database import SqliteDatabase
from ferroflow.server.notify import Notifier, add_rule, list_notifications, remove_rule
from ferroflow.states import Failed, Success
from ferroflow.store import store_path
from ferroflow.utilities.notifications import webhook_notifier
from test_agent import AgentProcess, Server, finished, register, wait_for


class Receiver:
    """A webhook receiver on 127.0.0.1: records each POSTed JSON body; ``mode`` says how
    it answers: ``ok`` (200), ``fail`` (500), ``hang`` (never, until closed), or
    ``fail-first-N`` (500 N times, then 200)."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.bodies: list[Any] = []
        self.requests = 0
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length))
                receiver.requests += 1
                status = 200
                if receiver.mode == "hang":
                    receiver.release.wait(60)
                    return
                if receiver.mode == "fail":
                    status = 500
                elif receiver.mode.startswith("fail-first-"):
                    if receiver.requests <= int(receiver.mode.rsplit("-", 1)[1]):
                        status = 500
                if status == 200:
                    receiver.bodies.append(body)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[Any]:
    made: list[Receiver] = []

    def make(mode: str = "ok") -> Receiver:
        r = Receiver(mode)
        made.append(r)
        return r

    try:
        yield make
    finally:
        for r in made:
            r.close()


def unreachable_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}/hook"


@task
def maybe_fail(n: int) -> int:
    if n:
        raise ValueError("boom")
    return n


def failing_flow(*handlers: Any, task_handlers: tuple[Any, ...] = ()) -> Flow:
    step = maybe_fail.copy()
    step.state_handlers = list(task_handlers)
    with Flow("nightly", state_handlers=list(handlers)) as flow:
        step(Parameter("n"))
    return flow


def test_the_state_handler_posts_a_slack_message_for_the_states_asked(receiver: Any) -> None:
    r = receiver()
    flow = failing_flow(
        webhook_notifier(r.url, only_states=[Failed]),
        task_handlers=(webhook_notifier(r.url, only_states=[Failed]),),
    )
    assert flow.run(n=0).is_successful()
    assert r.bodies == []
    state = flow.run(n=1)
    assert state.is_failed()
    assert len(r.bodies) == 2, r.bodies
    task_body, flow_body = r.bodies
    assert task_body["text"] == "Task 'maybe_fail' is now in a Failed state"
    assert "boom" in task_body["attachments"][0]["text"]
    assert flow_body["text"] == "Flow 'nightly' is now in a Failed state"
    attachment = flow_body["attachments"][0]
    assert attachment["color"] == "#eb0000" and attachment["fallback"] == flow_body["text"]
    assert attachment["fields"][0] == {"title": "State", "value": "Failed", "short": True}
    fields = {f["title"]: f["value"] for f in task_body["attachments"][0]["fields"]}
    assert fields["Flow"] == "nightly" and len(fields["Flow run"]) >= 32


def test_every_change_and_ignore_states(receiver: Any) -> None:
    r = receiver()
    flow = failing_flow(webhook_notifier(r.url, ignore_states=[Success]))
    assert flow.run(n=0).is_successful()
    assert [b["attachments"][0]["fields"][0]["value"] for b in r.bodies] == ["Running"]


@pytest.mark.parametrize("mode", ["hang", "fail", "unreachable"])
def test_a_receiver_that_hangs_fails_or_is_gone_leaves_the_run_alone(
    mode: str, receiver: Any, caplog: pytest.LogCaptureFixture
) -> None:
    url = unreachable_url() if mode == "unreachable" else receiver(mode).url
    flow = failing_flow(webhook_notifier(url, only_states=[Failed], timeout=0.5))
    with caplog.at_level(logging.WARNING, logger="ferroflow.notifications"):
        ok = flow.run(n=0)
        bad = flow.run(n=1)
    assert ok.is_successful() and bad.is_failed()
    assert "boom" in str(bad.result[next(iter(bad.result))].message) or bad.message
    expected = {
        "hang": "did not answer within 0.5 s",
        "fail": "failed: HTTP 500",
        "unreachable": "failed: URLError",
    }[mode]
    messages = [r.getMessage() for r in caplog.records]
    assert any(expected in m for m in messages), messages
    if mode == "hang":  # whichever timeout notices first: "did not answer", once per call
        assert sum(expected in m for m in messages) == 1, messages
        assert not any("failed" in m for m in messages), messages


def test_bad_notifier_arguments() -> None:
    for bad in ("ftp://x/h", "not a url", "", None):
        with pytest.raises(OpsError, match="webhook URL"):
            webhook_notifier(bad)  # type: ignore[arg-type]
    with pytest.raises(OpsError, match="State classes"):
        webhook_notifier("http://127.0.0.1:9/h", only_states=["Failed"])
    with pytest.raises(OpsError, match="timeout"):
        webhook_notifier("http://127.0.0.1:9/h", timeout=0)


# ----------------------------------------------------------------------- server rules


def local_runs(*ns: int) -> None:
    flow = failing_flow()
    for n in ns:
        flow.run(n=n)


def test_rules_fire_once_per_event_and_retry_with_backoff(receiver: Any) -> None:
    """The service steps by hand over the local store (a server's database)."""
    down = receiver("fail-first-2")
    ok = receiver()
    db = SqliteDatabase(store_path())
    try:
        before = add_rule(db, "Failed", ok.url)
        local_runs(1)  # ended before... no: after the rule; counted
        rule = add_rule(db, "Failed", down.url, flow_name="nightly")
        other = add_rule(db, "Failed", ok.url, flow_name="another")
        local_runs(0, 1)
        service = Notifier(db, timeout=2, backoff=0.05)
        service.run_once()
        assert len(ok.bodies) == 2  # both failures, for the rule made before them
        assert down.requests == 1 and down.bodies == []
        deadline = time.monotonic() + 30
        while not down.bodies:
            assert time.monotonic() < deadline
            time.sleep(0.05)
            service.run_once()
        assert down.requests == 3 and len(down.bodies) == 1
        for _ in range(5):
            service.run_once()
        assert len(ok.bodies) == 2 and len(down.bodies) == 1 and down.requests == 3
        (row,) = list_notifications(db, rule["id"])
        assert row["status"] == "sent" and row["attempts"] == 3 and row["last_error"] is None
        assert list_notifications(db, other["id"]) == []
        # A fresh service (a restart) notifies nothing twice.
        Notifier(db, backoff=0.05).run_once()
        assert len(ok.bodies) == 2 and len(down.bodies) == 1
        assert remove_rule(db, before["id"][:8]) == before["id"]
    finally:
        db.close()


def test_a_receiver_that_stays_down_is_given_up_and_logged(
    receiver: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from ferroflow.server import notify

    hang = receiver("hang")
    db = SqliteDatabase(store_path())
    try:
        dead = add_rule(db, "Failed", unreachable_url())
        slow = add_rule(db, "Failed", hang.url)
        local_runs(1)
        service = Notifier(db, timeout=0.3, backoff=0.01)
        with caplog.at_level(logging.WARNING, logger="ferroflow.server.notify"):
            deadline = time.monotonic() + 60
            service.run_once()
            while any(n["status"] == "pending" for n in list_notifications(db)):
                assert time.monotonic() < deadline
                time.sleep(0.05)
                service.run_once()
        for rule, why in ((dead, "URLError"), (slow, "timed out")):
            (row,) = list_notifications(db, rule["id"])
            assert row["status"] == "failed" and row["attempts"] == notify.MAX_ATTEMPTS, row
            assert why in row["last_error"], row
        assert any("gave up notifying" in r.getMessage() for r in caplog.records)
    finally:
        db.close()


def test_bad_rules_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    db = SqliteDatabase(store_path())
    try:
        with pytest.raises(OpsError, match="give a finished state"):
            add_rule(db, "Running", "http://127.0.0.1:9/h")
        with pytest.raises(OpsError, match="webhook URL"):
            add_rule(db, "Failed", "file:///etc/passwd")
    finally:
        db.close()
    code = run_cli(
        ["notify", "add", "--on", "Failed", "--webhook", "nope", "--api", "http://127.0.0.1:9"]
    )
    assert code == 2 and "webhook URL" in capsys.readouterr().err


FLOWS = """
from ferroflow import Flow, Parameter, task

@task
def maybe_fail(n):
    if n:
        raise ValueError("boom")
    return n

with Flow("nightly") as nightly:
    maybe_fail(Parameter("n", default=0))
"""


def test_a_server_rule_notifies_an_agents_failed_run_once(
    tmp_path: Path,
    receiver: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FERROFLOW_NOTIFY_INTERVAL", "0.2")
    monkeypatch.setenv("FERROFLOW_NOTIFY_BACKOFF", "0.2")
    server = Server(tmp_path / "server")
    agent = AgentProcess(server.url, tmp_path / "agent")
    r = receiver("fail-first-1")
    try:
        ids = register(server, tmp_path, FLOWS, "nightly")
        api = ("--api", server.url)
        assert (
            run_cli(
                ["notify", "add", "--on", "Failed", "--flow", "nightly", "--webhook", r.url, *api]
            )
            == 0
        )
        assert "added" in capsys.readouterr().out
        good = server.client.create_flow_run(flow_id=ids["nightly"], parameters={"n": 0})
        bad = server.client.create_flow_run(flow_id=ids["nightly"], parameters={"n": 1})
        for run_id in (good, bad):
            wait_for(f"run {run_id}", lambda rid=run_id: finished(server.client, rid))
        assert server.client.get_flow_run(bad)["state"] == "Failed"
        wait_for("the notification", lambda: r.bodies)
        time.sleep(1.0)  # several more passes of the service
        assert len(r.bodies) == 1 and r.requests == 2
        fields = {f["title"]: f["value"] for f in r.bodies[0]["attachments"][0]["fields"]}
        assert fields["Flow run"] == bad
        assert run_cli(["notify", "ls", "--json", *api]) == 0
        (rule,) = json.loads(capsys.readouterr().out)
        assert (rule["sent"], rule["pending"], rule["failed"]) == (1, 0, 0)
        assert run_cli(["notify", "rm", rule["id"], *api]) == 0
        assert run_cli(["notify", "rm", rule["id"], *api]) == 2
        assert "no notification rule" in capsys.readouterr().err
    finally:
        agent.stop()
        server.stop()
    assert os.path.exists(tmp_path / "server")


def test_rules_on_postgresql(postgres_server: Any, receiver: Any) -> None:
    from ferroflow.server.database import open_database
    from ferroflow.server.notify import list_rules
    from test_server import copy_local_runs

    r = receiver()
    db = open_database(postgres_server.create_database())
    try:
        rule = add_rule(db, "Failed", r.url, flow_name="nightly")
        local_runs(0, 1)
        copy_local_runs(db)
        service = Notifier(db, backoff=0.05)
        assert service.run_once() == 1
        assert service.run_once() == 0
        assert len(r.bodies) == 1 and r.bodies[0]["text"].startswith("Flow 'nightly'")
        (row,) = list_rules(db)
        assert (row["sent"], row["pending"], row["failed"]) == (1, 0, 0)
        (sent,) = list_notifications(db, rule["id"])
        assert sent["status"] == "sent"
        assert remove_rule(db, rule["id"]) == rule["id"]
        assert list_rules(db) == []
    finally:
        db.close()
