"""Secrets: stored encrypted, never shown, read only by the run an agent holds.

Real SQLite stores in each test's FERROFLOW_HOME, the real ``ferroflow`` command line in
subprocesses (values on stdin), a real server process on 127.0.0.1 and a real agent for
the end-to-end run; every test that sets a value then greps the files and answers it
can reach for that value and finds none.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from _postgres import PostgresServer
from _tasks import Ledger
from ferroflow import Flow, get_run_logger, task
from ferroflow.client import Client
from ferroflow.exceptions import (
    ApiError,
    SecretError,
    SecretKeyError,
    SecretNotFoundError,
    TaskDefinitionError,
)
from ferroflow.executors import ProcessExecutor, ThreadExecutor
from ferroflow.results import LocalResult
from ferroflow.server import models
from ferroflow.server.app import execute
from ferroflow.server.database import Database, PostgresDatabase, SqliteDatabase
from ferroflow.server.secrets import (
    KEY_ENV,
    check_reader,
    delete_secret,
    key_file_for,
    list_secrets,
    read_secret,
    rotate_key,
    secret_value,
    set_secret,
)
from ferroflow.store import open_store, store_path
from ferroflow.tasks.secrets import SERVER_RUN_ENV, EnvVarSecret, FerroflowSecret
from test_agent import AgentProcess, Server, finished, register, wait_for

TESTS = Path(__file__).parent


def _workers_find_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Put this directory on PYTHONPATH, so worker processes started meanwhile can import
    the tasks defined in these modules."""
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    )


def fresh_value() -> str:
    """A value that appears nowhere unless something leaks it."""
    return f"s3cr3t-{uuid.uuid4().hex}"


def ff(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> Any:
    """``python -m ferroflow *args`` with ``stdin`` (not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "ferroflow", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})},
        timeout=120,
    )


def files_containing(root: Path, needle: str) -> list[Path]:
    """Every file under ``root`` whose bytes contain ``needle``."""
    raw = needle.encode()
    return [p for p in root.rglob("*") if p.is_file() and raw in p.read_bytes()]


def home() -> Path:
    return Path(os.environ["FERROFLOW_HOME"])


@pytest.fixture
def db() -> Iterator[Database]:
    database = SqliteDatabase(store_path())
    try:
        yield database
    finally:
        database.close()


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(SERVER_RUN_ENV, raising=False)
    monkeypatch.delenv("FERROFLOW_API_URL", raising=False)


# --------------------------------------------------------------- storage and the CLI


def test_cli_sets_lists_and_removes_secrets_encrypted_at_rest() -> None:
    value = fresh_value()
    got = ff("secrets", "set", "DB_PASSWORD", stdin=value + "\n")
    assert got.returncode == 0, got.stderr
    assert value not in got.stdout + got.stderr
    assert ff("secrets", "set", "API_TOKEN", stdin=fresh_value()).returncode == 0

    listed = ff("secrets", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["name"] for r in rows] == ["API_TOKEN", "DB_PASSWORD"]
    assert all(set(r) == {"name", "created", "updated"} for r in rows)
    table = ff("secrets", "ls")
    assert "DB_PASSWORD" in table.stdout and value not in table.stdout

    with _open() as database:
        assert read_secret(database, "DB_PASSWORD") == value  # the trailing newline dropped
    # Encrypted at rest: the value is in no file of the home (store, WAL, key file).
    assert files_containing(home(), value) == []
    key_file = home() / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    assert ff("secrets", "rm", "DB_PASSWORD").returncode == 0
    assert [r["name"] for r in json.loads(ff("secrets", "ls", "--json").stdout)] == ["API_TOKEN"]


class _open:
    """The home's store as a server Database, closed on exit."""

    def __enter__(self) -> Database:
        self.db = SqliteDatabase(store_path())
        return self.db

    def __exit__(self, *exc: object) -> None:
        self.db.close()


def test_cli_refuses_bad_input_with_one_line_errors() -> None:
    cases = [
        (("secrets", "set", "1BAD"), "x", "not valid"),
        (("secrets", "set", "has-dash"), "x", "not valid"),
        (("secrets", "set", "EMPTY"), "", "no value for secret 'EMPTY'"),
        (("secrets", "set", "EMPTY"), "\n", "no value for secret 'EMPTY'"),
        (("secrets", "set", "HUGE"), "x" * (64 * 1024 + 1), "larger than"),
        (("secrets", "rm", "MISSING"), "", "no secret named 'MISSING'"),
        (("secrets", "set", "X' OR 1=1 --"), "x", "not valid"),
    ]
    for args, stdin, needle in cases:
        got = ff(*args, stdin=stdin)
        assert got.returncode == 2, (args, got.stdout, got.stderr)
        lines = [x for x in got.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: "), got.stderr
        assert needle in lines[0], (needle, lines[0])
        assert "Traceback" not in got.stderr
    # The value is never an argument.
    got = ff("secrets", "set", "NAME", "value")
    assert got.returncode == 2 and "unexpected extra argument" in got.stderr.lower()


def test_a_key_file_others_may_read_is_refused(db: Database) -> None:
    set_secret(db, "A", fresh_value())
    key_file = key_file_for(db)
    assert key_file == home() / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key_file.chmod(0o644)
    with pytest.raises(SecretKeyError, match=r"chmod 600"):
        read_secret(db, "A")
    got = ff("secrets", "set", "B", stdin="x")
    assert got.returncode == 2 and "chmod 600" in got.stderr, got.stderr
    key_file.chmod(0o600)
    assert read_secret(db, "A")


def test_the_key_file_is_created_0600_whatever_the_umask(db: Database) -> None:
    old = os.umask(0o000)
    try:
        set_secret(db, "A", fresh_value())
    finally:
        os.umask(old)
    assert stat.S_IMODE(key_file_for(db).stat().st_mode) == 0o600


def test_a_wrong_or_malformed_key_is_a_typed_error(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryptography.fernet import Fernet

    value = fresh_value()
    monkeypatch.setenv(KEY_ENV, Fernet.generate_key().decode())
    set_secret(db, "A", value)
    assert not (home() / "secret.key").exists()  # the env key is used, no file made
    assert read_secret(db, "A") == value
    monkeypatch.setenv(KEY_ENV, Fernet.generate_key().decode())
    with pytest.raises(SecretKeyError, match="secret 'A' cannot be decrypted") as err:
        read_secret(db, "A")
    assert value not in str(err.value)
    monkeypatch.setenv(KEY_ENV, "not-a-key")
    with pytest.raises(SecretKeyError, match="not a Fernet key"):
        read_secret(db, "A")
    with pytest.raises(SecretNotFoundError, match="no secret named 'B'"):
        read_secret(db, "B")


def test_rotation_with_the_key_file_reencrypts_everything(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = {"A": fresh_value(), "B": fresh_value()}
    for name, value in values.items():
        set_secret(db, name, value)
    key_file = key_file_for(db)
    old_key = key_file.read_text().strip()
    before = {r["name"]: r["ciphertext"] for r in db.fetchall("SELECT * FROM secrets")}

    got = ff("secrets", "rotate-key")
    assert got.returncode == 0, got.stderr
    assert "Re-encrypted 2 secrets" in got.stdout

    new_key = key_file.read_text().strip()
    assert new_key != old_key and "\n" not in new_key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    after = {r["name"]: r["ciphertext"] for r in db.fetchall("SELECT * FROM secrets")}
    assert after.keys() == before.keys()
    assert all(after[n] != before[n] for n in after)
    assert {n: read_secret(db, n) for n in values} == values
    # The old key alone no longer reads them.
    monkeypatch.setenv(KEY_ENV, old_key)
    with pytest.raises(SecretKeyError):
        read_secret(db, "A")
    assert files_containing(home(), values["A"]) == []


def test_rotation_with_the_env_key_reads_with_both_and_writes_with_the_first(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryptography.fernet import Fernet

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    value = fresh_value()
    monkeypatch.setenv(KEY_ENV, old)
    set_secret(db, "A", value)
    monkeypatch.setenv(KEY_ENV, f"{new},{old}")
    assert read_secret(db, "A") == value  # MultiFernet: read with both
    assert rotate_key(db) == (1, f"${KEY_ENV}")
    monkeypatch.setenv(KEY_ENV, new)
    assert read_secret(db, "A") == value
    monkeypatch.setenv(KEY_ENV, old)
    with pytest.raises(SecretKeyError):
        read_secret(db, "A")


def test_a_secret_that_no_key_decrypts_stops_rotation_untouched(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryptography.fernet import Fernet

    monkeypatch.setenv(KEY_ENV, Fernet.generate_key().decode())
    set_secret(db, "A", fresh_value())
    monkeypatch.delenv(KEY_ENV)
    set_secret(db, "B", fresh_value())  # with the (new) key file
    keys_before = key_file_for(db).read_text()
    rows_before = db.fetchall("SELECT * FROM secrets ORDER BY name")
    with pytest.raises(SecretKeyError, match="secret 'A' does not decrypt"):
        rotate_key(db)
    assert db.fetchall("SELECT * FROM secrets ORDER BY name") == rows_before
    assert key_file_for(db).read_text() == keys_before


def test_secrets_on_postgresql_with_the_key_in_ferroflow_home(
    postgres_server: PostgresServer,
) -> None:
    db = PostgresDatabase(postgres_server.create_database())
    try:
        values = {"A": fresh_value(), "B": fresh_value()}
        for name, value in values.items():
            set_secret(db, name, value)
        assert key_file_for(db) == home() / "secret.key"
        assert stat.S_IMODE(key_file_for(db).stat().st_mode) == 0o600
        stored = db.fetchall("SELECT name, ciphertext FROM secrets ORDER BY name")
        assert [r["name"] for r in stored] == ["A", "B"]
        assert not any(v in json.dumps(stored) for v in values.values())
        assert rotate_key(db)[0] == 2
        assert {n: read_secret(db, n) for n in values} == values
        delete_secret(db, "A")
        assert [r["name"] for r in list_secrets(db)] == ["B"]
    finally:
        db.close()


# ------------------------------------------------------------------- the GraphQL API


def _held_run(db: Database) -> dict[str, Any]:
    """A flow run claimed by an agent (Pending, held), through the models."""
    models.create_project(db, "p")
    structure = {"tasks": [], "edges": [], "parameters": [], "schedule": None}
    flow = models.register_flow(
        db,
        project_name="p",
        name="f",
        structure=structure,
        storage={"type": "module", "module": "m"},
    )
    run = models.create_flow_run(db, flow_id=flow["id"])
    agent = models.register_agent(db, "a", [], None)
    return models.claim_flow_run(db, agent["id"], run["id"], int(run["version"]))


def test_secret_value_only_for_a_run_an_agent_holds(db: Database) -> None:
    value = fresh_value()
    set_secret(db, "A", value)
    models.create_project(db, "other")
    held = _held_run(db)
    q = "query($r: String!, $n: String!) { secret_value(flow_run_id: $r, name: $n) }"
    out = execute(db, q, {"r": held["id"], "n": "A"})
    assert out == {"data": {"secret_value": value}}
    # A run nobody holds: Scheduled.
    flow_id = held["flow_id"]
    scheduled = models.create_flow_run(db, flow_id=flow_id)
    out = execute(db, q, {"r": scheduled["id"], "n": "A"})
    assert out["data"] is None and "not held by an agent" in out["errors"][0]["message"]
    assert value not in json.dumps(out)
    # A finished run.
    models.set_flow_run_states(
        db, [{"flow_run_id": held["id"], "version": held["version"], "state": "Failed"}]
    )
    out = execute(db, q, {"r": held["id"], "n": "A"})
    assert "is Failed and not held" in out["errors"][0]["message"]
    # Unknown run, unknown secret, bad name.
    assert (
        "no flow run"
        in execute(db, q, {"r": str(uuid.uuid4()), "n": "A"})["errors"][0]["message"].lower()
    )
    held2 = models.claim_flow_run(
        db,
        models.register_agent(db, "b", [], None)["id"],
        models.create_flow_run(db, flow_id=flow_id)["id"],
        0,
    )
    assert (
        "no secret named 'B'"
        in execute(db, q, {"r": held2["id"], "n": "B"})["errors"][0]["message"]
    )
    assert "not valid" in execute(db, q, {"r": held2["id"], "n": "a b"})["errors"][0]["message"]
    # Names for everyone, never values; each read is audited without the value.
    listed = execute(db, "{ secrets { name created updated } }")["data"]["secrets"]
    assert [s["name"] for s in listed] == ["A"]
    audit = db.fetchall("SELECT action, target, detail FROM audit WHERE target = 'A' ORDER BY seq")
    assert [a["action"] for a in audit] == ["set_secret", "read_secret"]
    assert value not in json.dumps(audit)
    assert files_containing(home(), value) == []


def test_with_tokens_only_the_runner_holding_the_run_reads_a_value(db: Database) -> None:
    value = fresh_value()
    set_secret(db, "A", value)
    held = _held_run(db)
    # The agent holding the run was registered with the runner token "bot".
    db.execute("UPDATE agents SET token_name = 'bot' WHERE id = ?", (held["agent_id"],))
    holder = SimpleNamespace(name="bot", role="runner")
    assert secret_value(db, held["id"], "A", holder) == value
    for principal, needle in [
        (SimpleNamespace(name="bot", role="admin"), "admin role may not"),
        (SimpleNamespace(name="bot", role="user"), "user role may not"),
        (SimpleNamespace(name="bot", role="read_only"), "read_only role may not"),
        (SimpleNamespace(name="other-runner", role="runner"), "not held by an agent of token"),
    ]:
        with pytest.raises(ApiError, match=needle) as err:
            check_reader(db, held, principal)
        assert value not in str(err.value)


def test_set_and_delete_through_the_api(db: Database) -> None:
    value = fresh_value()
    m = "mutation($i: SetSecretInput!) { set_secret(input: $i) { success } }"
    assert execute(db, m, {"i": {"name": "A", "value": value}}) == {
        "data": {"set_secret": {"success": True}}
    }
    again = fresh_value()
    execute(db, m, {"i": {"name": "A", "value": again}})
    assert read_secret(db, "A") == again
    rows = list_secrets(db)
    assert len(rows) == 1 and rows[0]["updated"] >= rows[0]["created"]
    bad = execute(db, m, {"i": {"name": "A", "value": ""}})
    assert "must be non-empty" in bad["errors"][0]["message"]
    d = "mutation($i: SecretNameInput!) { delete_secret(input: $i) { success } }"
    assert execute(db, d, {"i": {"name": "A"}})["data"] == {"delete_secret": {"success": True}}
    assert "no secret named 'A'" in execute(db, d, {"i": {"name": "A"}})["errors"][0]["message"]


def test_client_and_cli_against_a_server(tmp_path: Path) -> None:
    server = Server(tmp_path / "server")
    try:
        client = Client(server.url)
        value = fresh_value()
        client.set_secret("DB_PASSWORD", value)
        got = ff("secrets", "set", "API_TOKEN", "--api", server.url, stdin=fresh_value())
        assert got.returncode == 0, got.stderr
        assert client.secrets() == ["API_TOKEN", "DB_PASSWORD"]
        listed = ff("secrets", "ls", "--json", env={"FERROFLOW_API_URL": server.url})
        assert [r["name"] for r in json.loads(listed.stdout)] == ["API_TOKEN", "DB_PASSWORD"]
        assert ff("secrets", "rm", "API_TOKEN", "--api", server.url).returncode == 0
        client.delete_secret("DB_PASSWORD")
        assert client.secrets() == []
        with pytest.raises(ApiError, match="no secret named 'DB_PASSWORD'"):
            client.delete_secret("DB_PASSWORD")
        got = ff("secrets", "rm", "DB_PASSWORD", "--api", server.url)
        assert got.returncode == 2 and "no secret named" in got.stderr
        with pytest.raises(ApiError, match="not held by an agent"):
            client.secret_value(_scheduled_run(client), "X")
    finally:
        server.stop()
    assert files_containing(tmp_path, value) == []


def _scheduled_run(client: Client) -> str:
    client.create_project("p")
    flow = Flow("plain")
    with flow:
        _noop()
    flow_id = client.register(flow, "p")["id"]
    return client.create_flow_run(flow_id)


@task
def _noop() -> None:
    return None


# -------------------------------------------------------------------------- in flows


@task(checkpoint=True)
def _use(token: str) -> int:
    get_run_logger().info("the token is %s", token)
    return len(token)


@task(checkpoint=True)
def _length(token: str) -> int:
    return len(token)


@task(log_stdout=True, checkpoint=True)
def _print(token: str) -> int:
    print(f"printed {token}")
    return len(token)


@task
def _explode(token: str) -> None:
    raise ValueError(f"cannot use {token!r}")


EXECUTORS: dict[str, Callable[[], Any]] = {
    "local": lambda: None,
    "threads": lambda: ThreadExecutor(max_workers=2),
    # spawn: the workers see this test's environment (a forkserver started by an
    # earlier test keeps the environment it started with).
    "processes": lambda: ProcessExecutor(max_workers=2, mp_context="spawn"),
}


@pytest.mark.parametrize("executor", sorted(EXECUTORS))
def test_ferroflow_secret_locally_reads_the_env_var_and_is_masked_everywhere(
    executor: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _workers_find_tests(monkeypatch)
    value = fresh_value()
    monkeypatch.setenv("FERROFLOW__CONTEXT__SECRETS__API_TOKEN", value)
    results = tmp_path / "results"
    with Flow("local-secret", result=LocalResult(dir=str(results))) as flow:
        s = FerroflowSecret("API_TOKEN")
        n = _use(s)
        p = _print(s)
        e = _explode(s)
        _length(FerroflowSecret("MISSING"))
    state = flow.run(executor=EXECUTORS[executor]())
    assert state.result[s].result == value  # in memory, inside the run: the value
    assert state.result[n].result == len(value)
    assert state.result[p].result == len(value)
    assert state.result[e].is_failed()
    missing = next(t for t in flow.tasks if t.name == "MISSING")
    assert state.result[missing].is_failed()
    assert "secret 'MISSING' is not set" in state.result[missing].message
    assert "FERROFLOW__CONTEXT__SECRETS__MISSING" in state.result[missing].message

    with open_store() as store:
        run = store.list_flow_runs(1)[0]
        messages = [t.message or "" for t in store.task_runs(run.id)]
        logs = [line.message for line in store.logs(run.id)]
    assert any("cannot use '****'" in m for m in messages), messages
    assert any("the token is ****" in line for line in logs), logs
    assert any("printed ****" in line for line in logs), logs
    assert not any(value in x for x in messages + logs)
    # Checkpoints were written (for the other tasks), never the secret.
    assert any(results.rglob("*")) and files_containing(results, value) == []
    assert files_containing(home(), value) == []
    # Other handlers of the logging tree see the masked record too.
    shown = [r.getMessage() for r in caplog.records]
    assert not any(value in m for m in shown)
    if executor != "processes":  # worker records reach the store, not this logger
        assert "the token is ****" in shown


def test_env_var_secret_reads_a_variable_and_a_missing_one_is_a_typed_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    value = fresh_value()
    monkeypatch.setenv("MY_TOKEN", value)
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    assert EnvVarSecret("MY_TOKEN").run() == value
    with pytest.raises(SecretNotFoundError, match="'NOT_SET_ANYWHERE' is not set"):
        EnvVarSecret("NOT_SET_ANYWHERE").run()
    assert EnvVarSecret("NOT_SET_ANYWHERE", raise_if_missing=False).run() is None
    with Flow("env-secret") as flow:
        ok = _use(EnvVarSecret("MY_TOKEN"))
        gone = EnvVarSecret("NOT_SET_ANYWHERE")
        _length(gone)
    state = flow.run()
    assert state.result[ok].result == len(value)
    assert state.result[gone].is_failed()
    assert isinstance(state.result[gone].result, SecretNotFoundError)
    assert files_containing(home(), value) == []


def test_secret_tasks_refuse_options_that_would_write_the_value() -> None:
    for kwargs in (
        {"checkpoint": True},
        {"cache_for": 60},
        {"target": "x.txt"},
        {"result": LocalResult()},
    ):
        with pytest.raises(TaskDefinitionError, match="never checkpointed"):
            FerroflowSecret("A", **kwargs)
    with pytest.raises(TaskDefinitionError, match="needs a name"):
        EnvVarSecret("")
    s = FerroflowSecret("A", max_retries=1, retry_delay=0)
    assert s.checkpoint is False and s.name == "A" and s.secret_name == "A"


def test_secret_names_are_checked_before_anything_is_stored(db: Database) -> None:
    for bad in ("", "a b", "9X", "x" * 201, "DROP TABLE secrets;--"):
        with pytest.raises(SecretError, match="not valid"):
            set_secret(db, bad, "v")
    assert list_secrets(db) == []


# ------------------------------------------------------------- under a real agent

AGENT_FLOWS = """
import hashlib, os
from ferroflow import Flow, get_run_logger, task
from ferroflow.tasks.secrets import FerroflowSecret
from _tasks import Ledger

LEDGER = Ledger(os.environ.get("AGENT_TEST_LEDGER", "/nonexistent"))

@task(checkpoint=True)
def use(token):
    LEDGER.add(hashlib.sha256(token.encode()).hexdigest())
    get_run_logger().info("using %s", token)
    return len(token)

@task
def count(token):
    return len(token)

@task
def explode(token):
    raise RuntimeError("refused " + token)

with Flow("secretive") as secretive:
    token = FerroflowSecret("DB_PASSWORD")
    use(token)
    explode(token)
    count(FerroflowSecret("NOT_THERE"))
"""


def run_answers(
    client: Any, run_id: str, responses: list[str]
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """A finished run as the API shows it: its task runs by name and its log lines; every
    answer (the run, each task run's transitions) is added to ``responses`` (grepped
    for the secret's value later)."""
    got = client.graphql(
        "query($id: String!) { flow_run(id: $id) { state message "
        "task_runs(limit: 100) { items { id task_name state message result_location } } "
        "logs(limit: 1000) { message } } }",
        {"id": run_id},
    )
    responses.append(json.dumps(got))
    items = {t["task_name"]: t for t in got["flow_run"]["task_runs"]["items"]}
    for t in items.values():
        detail = client.graphql(
            "query($r: String!, $i: Int!) { task_run(flow_run_id: $r, id: $i) "
            "{ transitions { state message } } }",
            {"r": run_id, "i": t["id"]},
        )
        responses.append(json.dumps(detail))
    return items, [x["message"] for x in got["flow_run"]["logs"]]


def test_a_flow_under_an_agent_gets_the_value_and_nothing_else_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = Ledger(tmp_path / "ledger")
    monkeypatch.setenv("AGENT_TEST_LEDGER", str(tmp_path / "ledger"))
    value = fresh_value()
    server = Server(tmp_path / "server")
    agents: list[AgentProcess] = []
    responses: list[str] = []
    try:
        client = Client(server.url)
        client.set_secret("DB_PASSWORD", value)
        ids = register(server, tmp_path, AGENT_FLOWS, "secretive")
        run_id = client.create_flow_run(ids["secretive"])
        agents.append(AgentProcess(server.url, tmp_path / "agent"))
        run = wait_for("the run to finish", lambda: finished(client, run_id))
        output = agents[0].output()
        assert run["state"] == "Failed", output  # explode and NOT_THERE fail
        # The value reached the task: the ledger holds its hash.
        assert ledger.items() == [hashlib.sha256(value.encode()).hexdigest()]

        items, logs = run_answers(client, run_id, responses)
        assert items["DB_PASSWORD"]["state"] == "Success"
        assert items["DB_PASSWORD"]["result_location"] is None
        assert items["use"]["result_location"] is not None  # it did checkpoint
        assert "refused ****" in (items["explode"]["message"] or "")
        assert items["NOT_THERE"]["state"] == "Failed"
        assert "no secret named 'NOT_THERE'" in (items["NOT_THERE"]["message"] or "")
        assert any("using ****" in x for x in logs), logs
        responses.append(json.dumps(client.graphql("{ secrets { name created updated } }")))
        # The run is over: nobody gets the value now.
        with pytest.raises(ApiError, match="not held by an agent") as err:
            client.secret_value(run_id, "DB_PASSWORD")
        responses.append(str(err.value))
    finally:
        for a in agents:
            a.stop()
        server.stop()
    assert not any(value in r for r in responses)
    # Store files (server's and agent's), checkpoints, agent and flow-run logs: none.
    assert files_containing(tmp_path, value) == []
    assert list((tmp_path / "agent").rglob("*.pack")), "the checkpoint dir was checked"


def _in_a_terminal(args: list[str], answers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    """Run ``python -m ferroflow *args`` with a pseudo-terminal as its controlling
    terminal and stdin/stdout/stderr; answer each prompt (``(prompt, reply)``) when it
    appears. The exit status and everything the terminal showed."""
    import pty
    import select

    leader, follower = pty.openpty()
    start = (
        "import fcntl, os, sys, termios; os.setsid(); fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
        "os.execv(sys.executable, [sys.executable, '-m', 'ferroflow', *sys.argv[1:]])"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", start, *args],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**os.environ, "NO_COLOR": "1"},
    )
    os.close(follower)
    shown = b""
    pending = list(answers)
    try:
        while True:
            ready, _, _ = select.select([leader], [], [], 60)
            assert ready, f"no output from the terminal: {shown!r}"
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
            if pending and pending[0][0] in shown.split(b"\n")[-1]:
                os.write(leader, pending.pop(0)[1])
        return proc.wait(timeout=60), shown
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_in_a_terminal_the_value_comes_from_a_hidden_prompt_asked_twice(db: Database) -> None:
    value = fresh_value()
    code, shown = _in_a_terminal(
        ["secrets", "set", "PROMPTED"],
        [
            (b"Value of secret PROMPTED", value.encode() + b"\n"),
            (b"Repeat", value.encode() + b"\n"),
        ],
    )
    assert code == 0, shown
    assert b"Set secret 'PROMPTED'" in shown
    assert value.encode() not in shown  # never echoed
    assert read_secret(db, "PROMPTED") == value
    # Two different answers: asked again, nothing stored until they match.
    other = fresh_value()
    code, shown = _in_a_terminal(
        ["secrets", "set", "PROMPTED"],
        [
            (b"Value of secret PROMPTED", b"one\n"),
            (b"Repeat", b"two\n"),
            (b"Value of secret PROMPTED", other.encode() + b"\n"),
            (b"Repeat", other.encode() + b"\n"),
        ],
    )
    assert code == 0, shown
    assert b"do not match" in shown.lower() and other.encode() not in shown
    assert read_secret(db, "PROMPTED") == other


# ------------------------------------------- secret tasks run in the driver (issue 14)


class DriverPid(EnvVarSecret):
    """An EnvVarSecret whose value says which process read it (``VALUE:pid``)."""

    def run(self, name: str | None = None) -> str | None:
        value = super().run(name)
        return None if value is None else self._got(f"{value}:{os.getpid()}")


@task
def _on_worker(token: str) -> tuple[int, str, int]:
    from ferroflow.runtime import mask_text

    get_run_logger().info("worker got %s", token)
    return len(token), mask_text(token), os.getpid()


def _dask_executor(cluster: Any) -> Any:
    from ferroflow.executors import DaskExecutor

    return DaskExecutor(address=cluster.scheduler_address)


@pytest.mark.parametrize("executor", ["dask", "processes"])
def test_secret_tasks_run_in_the_driver_and_workers_mask_the_value(
    executor: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    _workers_find_tests(monkeypatch)
    if executor == "dask":
        # The session's workers started before this variable was set: a secret task
        # that ran on one of them would fail with "not set".
        chosen = _dask_executor(request.getfixturevalue("dask_cluster"))
    else:
        chosen = EXECUTORS["processes"]()
    value, other = fresh_value(), fresh_value()
    monkeypatch.setenv("FERROFLOW__CONTEXT__SECRETS__API_TOKEN", value)
    monkeypatch.setenv("DRIVER_PID_SECRET", other)
    with Flow("driver-secrets") as flow:
        s = FerroflowSecret("API_TOKEN", max_retries=1, retry_delay=0)
        got = _on_worker(s)
        pid = DriverPid("DRIVER_PID_SECRET")
        got_pid = _on_worker(pid)
        e = _explode(s)
    state = flow.run(executor=chosen)
    assert state.result[s].result == value
    assert state.result[pid].result == f"{other}:{os.getpid()}"  # read in this process
    length, masked, worker_pid = state.result[got].result
    assert length == len(value)
    assert masked == "****"  # the worker masks the value too (its console, its records)
    assert worker_pid != os.getpid()  # ... and the downstream task did run on a worker
    assert state.result[got_pid].result[1] == "****"
    assert "cannot use '****'" in (state.result[e].message or "")
    with open_store() as store:
        run = store.list_flow_runs(1)[0]
        messages = [t.message or "" for t in store.task_runs(run.id)]
        logs = [line.message for line in store.logs(run.id)]
    assert any("worker got ****" in line for line in logs), logs
    assert not any(value in x or other in x for x in messages + logs)
    assert files_containing(home(), value) == [] and files_containing(home(), other) == []


def test_a_failing_secret_task_in_the_driver_is_retried_as_usual(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOT_SET_FOR_RETRY", raising=False)
    chosen = _dask_executor(request.getfixturevalue("dask_cluster"))
    with Flow("driver-retries") as flow:
        gone = EnvVarSecret("NOT_SET_FOR_RETRY", max_retries=2, retry_delay=0)
        after = _length(gone)
    state = flow.run(executor=chosen)
    assert state.result[gone].is_failed()
    assert isinstance(state.result[gone].result, SecretNotFoundError)
    assert state.result[after].is_failed() or state.result[after].is_skipped()
    with open_store() as store:
        run = store.list_flow_runs(1)[0]
        row = next(t for t in store.task_runs(run.id) if t.task_name == "NOT_SET_FOR_RETRY")
        states = [t.state for t in store.transitions(run.id, row.run)]
    assert states.count("Retrying") == 2, states


# ------------------------------- under an agent on Dask and on processes (issue 14)

EXECUTOR_FLOWS = """
import hashlib, os
from ferroflow import Flow, get_run_logger, task
from ferroflow.executors import ProcessExecutor
from ferroflow.runtime import mask_text
from ferroflow.tasks.secrets import FerroflowSecret
from _tasks import Ledger

LEDGER = Ledger(os.environ.get("AGENT_TEST_LEDGER", "/nonexistent"))

@task
def length(token):
    # What the task got, seen from its worker: its length, its hash, and whether the
    # worker masks it.
    LEDGER.add(len(token), hashlib.sha256(token.encode()).hexdigest(), mask_text(token))
    return len(token)

@task
def tell(token):
    get_run_logger().info("telling %s", token)

@task
def explode(token):
    raise RuntimeError("refused " + token)

def build(name, executor=None):
    with Flow(name, executor=executor) as flow:
        token = FerroflowSecret("DB_PASSWORD")
        length(token)
        tell(token)
        explode(token)
    return flow

on_dask = build("on_dask")
on_processes = build("on_processes", ProcessExecutor(max_workers=2, mp_context="spawn"))
"""


class ClusterProcess:
    """A Dask LocalCluster (``_dask.local_cluster``) in a process of its own, whose
    output (its workers' too) goes to ``log``: a file the test greps."""

    def __init__(self, log: Path) -> None:
        code = (
            "import sys, time\n"
            "from _dask import local_cluster\n"
            "with local_cluster() as cluster:\n"
            "    print(cluster.scheduler_address, flush=True)\n"
            "    sys.stdin.read()\n"
        )
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        }
        self.log = open(log, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=env,
        )
        assert self.process.stdout is not None
        self.address = self.process.stdout.readline().decode().strip()
        assert self.address.startswith("tcp://127.0.0.1:"), log.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()  # the cluster closes
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.log.close()


@pytest.mark.parametrize("where", ["dask", "processes"])
def test_under_an_agent_on_dask_or_processes_the_task_gets_the_server_value_and_nothing_else_does(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = Ledger(tmp_path / "ledger")
    monkeypatch.setenv("AGENT_TEST_LEDGER", str(tmp_path / "ledger"))
    value = fresh_value()
    # Everything (the agent, its flow-run process, the cluster's workers) sees a local
    # value of another length: a task that read it would show.
    decoy = "decoy-" + fresh_value()
    monkeypatch.setenv("FERROFLOW__CONTEXT__SECRETS__DB_PASSWORD", decoy)
    server = Server(tmp_path / "server")
    cluster: ClusterProcess | None = None
    agent: AgentProcess | None = None
    responses: list[str] = []
    try:
        client = Client(server.url)
        client.set_secret("DB_PASSWORD", value)
        name = "on_dask" if where == "dask" else "on_processes"
        flow_id = register(server, tmp_path, EXECUTOR_FLOWS, name)[name]
        run_id = client.create_flow_run(flow_id)
        args: tuple[str, ...] = ()
        if where == "dask":
            cluster = ClusterProcess(tmp_path / "cluster.log")
            args = ("--dask-address", cluster.address)
        agent = AgentProcess(server.url, tmp_path / "agent", *args)
        run = wait_for("the run to finish", lambda: finished(client, run_id))
        output = agent.output()
        assert run["state"] == "Failed", output  # explode fails
        # The task on the worker got the server's value (not the local one), and the
        # worker masks it.
        digest = hashlib.sha256(value.encode()).hexdigest()
        assert ledger.items() == [(len(value), digest, "****")], output

        items, logs = run_answers(client, run_id, responses)
        assert items["DB_PASSWORD"]["state"] == "Success"
        assert items["length"]["state"] == "Success"
        assert "refused ****" in (items["explode"]["message"] or "")
        assert any("telling ****" in x for x in logs), logs
        responses.append(json.dumps(client.get_logs(run_id)))
    finally:
        if agent is not None:
            agent.stop()
        if cluster is not None:
            cluster.stop()
        server.stop()
    assert not any(value in r for r in responses)
    # The server's database, the agent's store, its flow-run logs, the agent's and the
    # cluster's output: none holds the value.
    assert files_containing(tmp_path, value) == []
    if cluster is not None:
        assert (tmp_path / "cluster.log").exists()
    assert (tmp_path / "agent" / "agent.log").exists()


# -------------------------------------------------- the server masks what it stores


def _leak_value() -> str:
    return os.environ["LEAK_FOR_THE_SERVER"]


@task
def _leaky() -> None:
    """Sends the value back unmasked: this process never read it as a secret."""
    get_run_logger().info("leaking %s", _leak_value())
    raise RuntimeError(f"leaked {_leak_value()}")


def test_the_server_masks_secret_values_that_a_run_sends_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ferroflow.agent_run import _ServerIdReporter
    from test_auth import Server as TokenServer

    value = fresh_value()
    srv = TokenServer(tmp_path / "server")
    try:
        admin = Client(srv.url, api_key=srv.token("admin", "admin"))
        admin.create_project("p")
        admin.set_secret("DB_PASSWORD", value)
        user = Client(srv.url, api_key=srv.token("user", "user"))
        with Flow("leaky") as flow:
            _leaky()
        flow_id = user.register(flow, "p")["id"]
        run_id = user.create_flow_run(flow_id)
        runner_token = srv.token("bot", "runner")
        runner = Client(srv.url, api_key=runner_token)
        agent = runner.register_agent("a", [])
        claimed = runner.claim_flow_run(agent, run_id, 0)
        assert runner.secret_value(run_id, "DB_PASSWORD") == value
        # The runner holding the run sends the value back: in a state message...
        runner.set_flow_run_state(
            run_id, int(claimed["version"]), "Running", f"connecting with {value}"
        )
        row = srv.db.fetchone("SELECT message FROM flow_runs WHERE id = ?", (run_id,))
        assert row == {"message": "connecting with ****"}
        # ... and in the log lines and task-run messages of a run it streams (a local
        # run that never read the value as a secret, so it did not mask it).
        monkeypatch.setenv("LEAK_FOR_THE_SERVER", value)
        local = flow.run()
        assert local.is_failed()
        with open_store() as store:
            local_id = store.list_flow_runs(1)[0].id
            assert any(value in x.message for x in store.logs(local_id))  # unmasked here
        monkeypatch.setenv("FERROFLOW_API_KEY", runner_token)
        reporter = _ServerIdReporter(srv.url, store_path(), local_id, run_id).start()
        assert reporter.stop() is None
        version = int(runner.get_flow_run(run_id)["version"])
        runner.set_flow_run_state(run_id, version, "Failed", f"gave up on {value!r}")
        # A user's log line and task-run state message.
        user.write_run_logs([{"flow_run_id": run_id, "message": f"user wrote {value}"}])
        first = user.graphql(
            "query($id: String!) { flow_run(id: $id) { task_runs { items { id } } } }",
            {"id": run_id},
        )["flow_run"]["task_runs"]["items"][0]
        task_run = user.graphql(
            "query($r: String!, $i: Int!) { task_run(flow_run_id: $r, id: $i) { id version } }",
            {"r": run_id, "i": int(first["id"])},
        )["task_run"]
        user.set_task_run_state(
            run_id, int(task_run["id"]), int(task_run["version"]), "Failed", f"no: {value}"
        )
        # A new value: the cached one is replaced (it is masked too from now on).
        new = fresh_value()
        admin.set_secret("DB_PASSWORD", new)
        user.write_run_logs([{"flow_run_id": run_id, "message": f"then {new}"}])
        # A rotated key: the server still reads (and masks) the value.
        rotated = ff("secrets", "rotate-key", env={"FERROFLOW_HOME": str(tmp_path / "server")})
        assert rotated.returncode == 0, rotated.stderr
        user.write_run_logs([{"flow_run_id": run_id, "message": f"after rotation {new}"}])

        db = srv.db
        logs = [r["message"] for r in db.fetchall("SELECT message FROM logs ORDER BY rowid")]
        assert any("leaking ****" in x for x in logs), logs
        assert "user wrote ****" in logs and "then ****" in logs, logs
        assert "after rotation ****" in logs, logs
        row = db.fetchone("SELECT message FROM flow_runs WHERE id = ?", (run_id,))
        assert row is not None and row["message"] == "gave up on '****'"
        transitions = user.graphql(
            "query($r: String!, $i: Int!) { task_run(flow_run_id: $r, id: $i) "
            "{ transitions { state message } } }",
            {"r": run_id, "i": int(task_run["id"])},
        )["task_run"]["transitions"]
        messages = [t["message"] or "" for t in transitions]
        assert any("leaked ****" in m for m in messages), messages  # the ingested journal
        assert messages[-1] == "no: ****", messages
        audit = db.fetchall("SELECT detail FROM audit")
        assert not any(value in json.dumps(a) for a in audit)
    finally:
        srv.stop()
    for secret in (value, new):
        assert files_containing(tmp_path / "server", secret) == []


@task
def _names() -> list[str]:
    return ["MAPPED_A", "MAPPED_B"]


@pytest.mark.parametrize("executor", ["dask", "processes"])
def test_a_mapped_secret_task_reads_names_computed_on_the_workers(
    executor: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    _workers_find_tests(monkeypatch)
    values = {"MAPPED_A": fresh_value(), "MAPPED_B": fresh_value() + "-longer"}
    for name, value in values.items():
        monkeypatch.setenv(f"FERROFLOW__CONTEXT__SECRETS__{name}", value)
    if executor == "dask":
        chosen = _dask_executor(request.getfixturevalue("dask_cluster"))
    else:
        chosen = EXECUTORS["processes"]()
    with Flow("mapped-secrets") as flow:
        names = _names()
        secrets = FerroflowSecret("unused").map(name=names)
        lengths = _length.map(secrets)
    state = flow.run(executor=chosen)
    assert state.is_successful(), state.message
    assert state.result[secrets].result == list(values.values())
    assert state.result[lengths].result == [len(v) for v in values.values()]
    assert all(files_containing(home(), v) == [] for v in values.values())
