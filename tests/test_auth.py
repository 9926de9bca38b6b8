"""Permissions (issue 14): tokens, roles, open mode, sessions, CSRF, audit, TLS.

Every test talks to a real ``ferroflow server start`` process on 127.0.0.1 with its own
FERROFLOW_HOME; tokens are made in the server's real store file (as ``ferroflow tokens
create`` does) while it runs. No test binds another address than 127.0.0.1: the
refusal to serve on 0.0.0.0 is checked with an audit hook that records every bind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ferroflow.client import Client
from ferroflow.exceptions import ApiError, AuthenticationError, ForbiddenError
from ferroflow.server import check_host
from ferroflow.server.auth import PERMISSIONS, ROLES, create_token, parse_duration
from ferroflow.server.database import open_database


class Server:
    """``ferroflow server start --port 0`` in a subprocess with its own home."""

    def __init__(self, home: Path, *extra: str) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.home = home
        self.env = {**os.environ, "FERROFLOW_HOME": str(home)}
        self.env.pop("FERROFLOW_API_KEY", None)
        self.env.pop("FERROFLOW_API_URL", None)
        argv = [sys.executable, "-m", "ferroflow", "server", "start", "--port", "0"]
        argv += ["--scheduler-interval", "0", *extra]
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.startswith("ferroflow server at "), line + self._stderr()
        self.url = line.split()[3]
        self.db = open_database(f"sqlite:///{home / 'ferroflow.db'}")

    def _stderr(self) -> str:
        self.process.kill()
        assert self.process.stderr is not None
        return self.process.stderr.read()

    def token(self, name: str, role: str, expires_in: float | None = None) -> str:
        return str(create_token(self.db, name, role, expires_in)["token"])

    def stop(self) -> str:
        self.db.close()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        assert self.process.stdout is not None and self.process.stderr is not None
        self.process.stdout.close()
        err = self.process.stderr.read()
        self.process.stderr.close()
        return err


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path / "server")
    try:
        yield s
    finally:
        if s.process.poll() is None:
            err = s.stop()
            assert "Traceback" not in err, err


def request(
    url: str,
    path: str = "/graphql",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request, redirects not followed: status, headers, body."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    req = urllib.request.Request(url + path, data=body, headers=headers or {}, method=method)
    try:
        with opener.open(req, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def gql(
    url: str,
    query: str,
    token: str | None = None,
    variables: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    operation_name: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """POST a GraphQL query; status and JSON answer (never a traceback)."""
    h = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    payload: dict[str, Any] = {"query": query, "variables": variables or {}}
    if operation_name:
        payload["operationName"] = operation_name
    status, _h, raw = request(url, body=json.dumps(payload).encode(), headers=h)
    text = raw.decode()
    assert "Traceback" not in text and "internal server error" not in text, text
    assert status != 500, text
    return status, json.loads(text)


def central_refusal(answer: dict[str, Any]) -> bool:
    """Whether the role check refused the document as a whole (before running it)."""
    errors = answer.get("errors") or []
    return bool(errors) and "may not use" in errors[0]["message"] and answer["data"] is None


def code(answer: dict[str, Any]) -> str | None:
    errors = answer.get("errors") or []
    return (errors[0].get("extensions") or {}).get("code") if errors else None


# ------------------------------------------------------------------------ open mode


def test_open_mode_answers_loopback_clients_and_nobody_else(server: Server) -> None:
    status, answer = gql(server.url, "{ projects { id } }")
    assert status == 200 and answer == {"data": {"projects": []}}
    status, _h, raw = request(server.url, "/health")
    assert status == 200 and json.loads(raw)["database"] == "sqlite"
    # A request relayed by a proxy on this machine is not this machine's.
    status, answer = gql(server.url, "{ projects { id } }", headers={"X-Forwarded-For": "10.1.2.3"})
    assert status == 403 and code(answer) == "FORBIDDEN"
    status, answer = gql(server.url, "{ projects { id } }", headers={"Forwarded": "for=10.1.2.3"})
    assert status == 403 and "proxy" in answer["errors"][0]["message"]
    # DNS rebinding: a page of evil.example whose name resolves to 127.0.0.1.
    status, answer = gql(server.url, "{ projects { id } }", headers={"Host": "evil.example:80"})
    assert status == 403 and "loopback Host" in answer["errors"][0]["message"]
    # A web page posting to the local server (a text/plain form that parses as JSON).
    body = json.dumps({"query": 'mutation { create_project(input: {name: "x"}) { id } }'})
    status, _h, raw = request(
        server.url,
        body=body.encode(),
        headers={"Content-Type": "text/plain", "Origin": "http://evil.example"},
    )
    assert status == 403 and b"another origin" in raw
    status, _h, raw = request(
        server.url, body=body.encode(), headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert status == 403
    assert gql(server.url, "{ projects { id } }")[1]["data"] == {"projects": []}


def test_server_without_a_token_refuses_another_address_before_binding(tmp_path: Path) -> None:
    # An audit hook records every bind the server process attempts: none may happen.
    code_text = (
        "import sys\n"
        "binds = []\n"
        "sys.addaudithook(lambda e, a: binds.append(a) if e == 'socket.bind' else None)\n"
        "from ferroflow.cli import run_cli\n"
        "rc = run_cli(['server', 'start', '--host', '0.0.0.0', '--port', '0'])\n"
        "print('BINDS', binds, flush=True)\n"
        "sys.exit(rc)\n"
    )
    env = {**os.environ, "FERROFLOW_HOME": str(tmp_path)}
    env.pop("FERROFLOW_API_URL", None)
    done = subprocess.run(
        [sys.executable, "-c", code_text], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "BINDS []" in done.stdout
    assert "refusing to serve on 0.0.0.0" in done.stderr
    assert "Create an admin token first" in done.stderr
    assert "ferroflow tokens create --name admin --role admin" in done.stderr
    assert "Traceback" not in done.stderr
    # IPv6 and a host name are refused the same way; loopback ones pass.
    for host in ("::", "example.com", "10.0.0.1"):
        with pytest.raises(Exception, match="Create an admin token first"):
            check_host(host)
    for host in ("127.0.0.1", "::1", "localhost"):
        check_host(host)
    check_host("0.0.0.0", have_tokens=True)  # with a token, any address may be served


def test_a_key_without_a_certificate_is_refused(tmp_path: Path) -> None:
    env = {**os.environ, "FERROFLOW_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "ferroflow", "server", "start", "--ssl-keyfile", "k.pem"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2 and "--ssl-keyfile needs --ssl-certfile" in done.stderr


# ------------------------------------------------------------------------ bad tokens


def test_missing_malformed_unknown_revoked_and_expired_tokens(server: Server) -> None:
    admin = server.token("admin", "admin")
    ok = server.token("reader", "read_only")
    gone = server.token("gone", "user")
    old = server.token("old", "user", expires_in=3600)
    server.db.execute("UPDATE tokens SET expires = ? WHERE name = 'old'", (time.time() - 1,))
    gql(server.url, "{ projects { id } }", token=gone)  # works until revoked
    Client(server.url, api_key=admin).revoke_api_key("gone")
    query = "{ projects { id } }"
    cases = {
        "no token": ({}, "needs an API token"),
        "basic auth": ({"Authorization": "Basic YWRtaW46YWRtaW4="}, "malformed Authorization"),
        "empty bearer": ({"Authorization": "Bearer "}, "malformed Authorization"),
        "short": ({"Authorization": "Bearer abc"}, "malformed API token"),
        "bad characters": (
            {"Authorization": "Bearer ff_" + "'; DROP TABLE tokens;--" * 3},
            "malformed",
        ),
        "unknown": ({"Authorization": "Bearer ff_" + "A" * 43}, "unknown API token"),
        "revoked": ({"Authorization": f"Bearer {gone}"}, "'gone' was revoked"),
        "expired": ({"Authorization": f"Bearer {old}"}, "'old' has expired"),
    }
    for what, (headers, message) in cases.items():
        status, answer = gql(server.url, query, headers=headers)
        assert status == 401, what
        assert code(answer) == "UNAUTHENTICATED", what
        assert message in answer["errors"][0]["message"], (what, answer)
        assert answer["data"] is None
    # The token itself is never echoed back.
    status, answer = gql(server.url, query, headers=cases["revoked"][0])
    assert gone not in json.dumps(answer)
    # The client raises the typed error.
    with pytest.raises(AuthenticationError, match="needs an API token"):
        Client(server.url).get_projects()
    with pytest.raises(AuthenticationError, match="was revoked"):
        Client(server.url, api_key=gone).get_projects()
    assert Client(server.url, api_key=ok).get_projects() == []
    # A UI page without a session goes to the sign-in form; the ingest route refuses.
    status, headers, _ = request(server.url, "/")
    assert status == 303 and headers["location"] == "/signin?next=/"
    status, _h, raw = request(server.url, "/ingest", body=b"\x80", method="POST")
    assert status == 401 and b"UNAUTHENTICATED" in raw
    # /health tells an anonymous caller only that it is up.
    status, _h, raw = request(server.url, "/health")
    assert status == 200 and json.loads(raw) == {"status": "ok"}
    status, _h, raw = request(server.url, "/health", headers={"Authorization": f"Bearer {ok}"})
    assert json.loads(raw)["database"] == "sqlite"


def test_tokens_are_random_stored_hashed_and_names_are_checked(server: Server) -> None:
    a, b = server.token("a", "user"), server.token("b", "user")
    assert a != b and a.startswith("ff_") and len(a) >= 3 + 43  # 256 bits
    rows = server.db.fetchall("SELECT * FROM tokens")
    assert all(a not in json.dumps(r) and b not in json.dumps(r) for r in rows)
    with pytest.raises(ApiError, match="exists: revoke it first"):
        create_token(server.db, "a", "user")
    with pytest.raises(ApiError, match="unknown role 'root'"):
        create_token(server.db, "c", "root")
    for bad in ("", " x", "a" * 101, "x'; DROP TABLE tokens; --", "é"):
        with pytest.raises(ApiError, match="a token name must be"):
            create_token(server.db, bad, "user")
    for bad_duration in ("", "3x", "-1d", "0s", "1e9d"):
        with pytest.raises(ApiError, match="duration"):
            parse_duration(bad_duration)
    assert parse_duration("90m") == 5400.0


# ------------------------------------------------------------------------ role matrix

#: Every mutation with a minimal call (made-up ids: an allowed role gets a typed
#: "no such ..." error or success, never FORBIDDEN).
MUTATIONS: dict[str, str] = {
    "create_project": 'create_project(input: {name: "p-%s"}) { id }',
    "delete_project": 'delete_project(input: {project_id: "nope"}) { success }',
    "register_flow": (
        'register_flow(input: {project_name: "nope", name: "f", structure: {tasks: []}, '
        'storage: {type: "source"}}) { id }'
    ),
    "archive_flow": 'archive_flow(input: {flow_id: "nope"}) { success }',
    "create_flow_run": 'create_flow_run(input: {flow_id: "nope"}) { id }',
    "set_flow_run_states": (
        'set_flow_run_states(input: {states: [{flow_run_id: "nope", version: 0, '
        'state: "Running"}]}) { states { id } }'
    ),
    "set_task_run_states": (
        'set_task_run_states(input: {states: [{flow_run_id: "nope", task_run_id: 0, '
        'version: 0, state: "Running"}]}) { states { version } }'
    ),
    "write_run_logs": 'write_run_logs(input: {logs: [{flow_run_id: "nope", message: "m"}]}) '
    "{ success }",
    "cancel_flow_run": 'cancel_flow_run(input: {flow_run_id: "nope"}) { state }',
    "resume_flow_run": 'resume_flow_run(input: {flow_run_id: "nope"}) { state }',
    "set_schedule_active": 'set_schedule_active(input: {flow_id: "nope"}) { success }',
    "set_schedule_inactive": 'set_schedule_inactive(input: {flow_id: "nope"}) { success }',
    "register_agent": 'register_agent(input: {name: "a-%s"}) { id }',
    "get_runs_in_queue": 'get_runs_in_queue(input: {agent_id: "nope"}) { id }',
    "claim_flow_run": (
        'claim_flow_run(input: {agent_id: "nope", flow_run_id: "nope", version: 0}) { id }'
    ),
    "heartbeat": 'heartbeat(input: {agent_id: "nope"}) { held }',
    "begin_attempt": 'begin_attempt(input: {flow_run_id: "nope"}) { resume_from }',
    "report_attempt": (
        'report_attempt(input: {agent_id: "nope", flow_run_id: "nope", local_run_id: "x"}) '
        "{ success }"
    ),
    "create_api_key": 'create_api_key(input: {name: "k-%s", role: "read_only"}) { name }',
    "revoke_api_key": 'revoke_api_key(input: {name: "nope"}) { success }',
    "delete_flow_runs": 'delete_flow_runs(input: {flow_run_ids: ["nope"]}) { count }',
    "prune_flow_runs": ('prune_flow_runs(input: {older_than: "3650d", dry_run: true}) { count }'),
    "backfill_flow_runs": (
        'backfill_flow_runs(input: {flow_id: "nope", start: "2026-11-01", end: "2026-11-02"}) '
        "{ id }"
    ),
    "set_flow_limit": 'set_flow_limit(input: {flow: "nope", max_running: 1}) { max_running }',
    "set_tag_limit": 'set_tag_limit(input: {tag: "t-%s", max_running: 2}) { tag }',
    "acquire_task_slots": (
        'acquire_task_slots(input: {flow_run_id: "nope", holder: "h", tags: ["t"]})'
    ),
    "release_task_slots": 'release_task_slots(input: {flow_run_id: "nope", holder: "h"})',
    "add_notify_rule": (
        'add_notify_rule(input: {on_state: "Failed", webhook: "http://127.0.0.1:9/h"}) { id }'
    ),
    "delete_notify_rule": 'delete_notify_rule(id: "nope")',
    "set_secret": 'set_secret(input: {name: "S_%s", value: "v"}) { success }',
    "delete_secret": 'delete_secret(input: {name: "NOPE"}) { success }',
}

#: What each role may do (written out, not read from PERMISSIONS: this is the spec).
ALLOWED: dict[str, set[str]] = {
    "read_only": set(),
    "user": {
        "register_flow",
        "archive_flow",
        "create_flow_run",
        "set_flow_run_states",
        "set_task_run_states",
        "write_run_logs",
        "cancel_flow_run",
        "resume_flow_run",
        "set_schedule_active",
        "set_schedule_inactive",
        "backfill_flow_runs",
        "set_flow_limit",
        "set_tag_limit",
        "acquire_task_slots",
        "release_task_slots",
        "add_notify_rule",
        "delete_notify_rule",
    },
    "runner": {
        "register_agent",
        "get_runs_in_queue",
        "claim_flow_run",
        "heartbeat",
        "begin_attempt",
        "report_attempt",
        "set_flow_run_states",
        "acquire_task_slots",
        "release_task_slots",
    },
    "admin": set(MUTATIONS),
}

QUERIES: dict[str, str] = {
    "projects": "projects { id }",
    "flows": "flows { id }",
    "flow_runs": "flow_runs { id }",
    "agents": "agents { id }",
    "flow_run": 'flow_run(id: "nope") { id }',
    "flow": 'flow(id: "nope") { id }',
    "logs": 'logs(flow_run_id: "nope") { message }',
    "audit": "audit { seq }",
    "api_keys": "api_keys { name }",
    "flow_run_records": 'flow_run_records(id: "nope") { state }',
    "retention": "retention { older_than }",
    "flow_limits": "flow_limits { flow_group }",
    "tag_limits": "tag_limits { tag }",
    "notify_rules": "notify_rules { id }",
    "notifications": "notifications { seq }",
    "secrets": "secrets { name }",
    "secret_value": 'secret_value(flow_run_id: "nope", name: "S")',
}

ALLOWED_QUERIES: dict[str, set[str]] = {
    "read_only": set(QUERIES)
    - {"audit", "api_keys", "notify_rules", "notifications", "secret_value"},
    "user": set(QUERIES) - {"audit", "api_keys", "secret_value"},
    "runner": {"flow_run", "flow", "flow_run_records", "tag_limits", "secret_value"},
    "admin": set(QUERIES),
}


def test_every_field_of_the_schema_has_a_permission(server: Server) -> None:
    answer = gql(
        server.url,
        "{ __schema { queryType { fields { name } } mutationType { fields { name } } } }",
    )[1]["data"]["__schema"]
    queries = {f["name"] for f in answer["queryType"]["fields"]}
    mutations = {f["name"] for f in answer["mutationType"]["fields"]}
    assert mutations == set(MUTATIONS)
    assert mutations == set(PERMISSIONS["mutation"]) - {"__typename"}
    assert queries == set(PERMISSIONS["query"]) - {"__typename", "__schema", "__type"}


def test_role_matrix_every_role_every_mutation(server: Server) -> None:
    tokens = {role: server.token(f"t-{role}", role) for role in ROLES}
    for role, token in tokens.items():
        for name, call in MUTATIONS.items():
            text = "mutation { " + (call % role if "%s" in call else call) + " }"
            status, answer = gql(server.url, text, token=token)
            assert status == 200, (role, name, answer)
            if name in ALLOWED[role]:
                assert not central_refusal(answer), (role, name, answer)
            else:
                assert code(answer) == "FORBIDDEN", (role, name, answer)
                assert answer["data"] is None
                assert f"may not use mutation field {name!r}" in answer["errors"][0]["message"]
        for name, call in QUERIES.items():
            status, answer = gql(server.url, "{ " + call + " }", token=token)
            assert status == 200, (role, name, answer)
            allowed = name in ALLOWED_QUERIES[role]
            # (A runner allowed a field still gets FORBIDDEN for a run it does not hold.)
            assert (not central_refusal(answer)) is allowed, (role, name, answer)
    # What was refused changed nothing: only the admin's and the runner's calls did.
    projects = gql(server.url, "{ projects { name } }", token=tokens["admin"])[1]["data"]
    assert projects == {"projects": [{"name": "p-admin"}]}
    keys = {k["name"] for k in Client(server.url, api_key=tokens["admin"]).get_api_keys()}
    assert keys == {f"t-{r}" for r in ROLES} | {"k-admin"}
    agents = gql(server.url, "{ agents { name } }", token=tokens["admin"])[1]["data"]["agents"]
    assert sorted(a["name"] for a in agents) == ["a-admin", "a-runner"]
    # The typed error on the client side.
    with pytest.raises(ForbiddenError, match="role read_only"):
        Client(server.url, api_key=tokens["read_only"]).create_project("x")


def test_aliases_fragments_and_several_operations_do_not_bypass_the_roles(
    server: Server,
) -> None:
    reader = server.token("reader", "read_only")
    user = server.token("user", "user")
    create = 'create_project(input: {name: "sneaky"}) { id }'
    documents = [
        f"mutation {{ projects: {create} }}",
        f"mutation {{ a: {create} b: {create} }}",
        f"mutation {{ ...M }} fragment M on Mutation {{ {create} }}",
        f"mutation {{ ... on Mutation {{ {create} }} }}",
        f"mutation {{ ... {{ ...M }} }} fragment M on Mutation {{ x: {create} }}",
        f"mutation {{ __typename {create} }}",
        # A loop of fragments is invalid, and still refused before it is looked at.
        f"mutation {{ ...A }} fragment A on Mutation {{ ...B {create} }} "
        "fragment B on Mutation { ...A }",
    ]
    for doc in documents:
        status, answer = gql(server.url, doc, token=reader)
        assert status == 200 and code(answer) == "FORBIDDEN", (doc, answer)
    # The read is allowed, but the document also holds a mutation: refused as a whole.
    multi = f"query Q {{ projects {{ id }} }} mutation M {{ {create} }}"
    for op in ("Q", "M"):
        answer = gql(server.url, multi, token=reader, operation_name=op)[1]
        assert code(answer) == "FORBIDDEN", (op, answer)
    # An admin-only read hidden behind an alias or a fragment.
    for doc in (
        "{ projects: audit { seq } }",
        "{ ...Q } fragment Q on Query { api_keys { name } }",
        "{ ... on Query { x: audit { seq } } }",
    ):
        answer = gql(server.url, doc, token=user)[1]
        assert code(answer) == "FORBIDDEN", (doc, answer)
    # Introspection shows the schema (names only), never data.
    answer = gql(server.url, '{ __type(name: "ApiKey") { fields { name } } }', token=reader)[1]
    assert {f["name"] for f in answer["data"]["__type"]["fields"]} == {
        "name",
        "role",
        "created",
        "expires",
        "revoked",
        "active",
    }
    admin = server.token("admin", "admin")
    assert gql(server.url, "{ projects { name } }", token=admin)[1]["data"] == {"projects": []}


def test_a_runner_acts_only_for_its_own_agents_and_runs(server: Server) -> None:
    one = Client(server.url, api_key=server.token("runner-1", "runner"))
    two = Client(server.url, api_key=server.token("runner-2", "runner"))
    agent = one.register_agent("agent-1", [])
    assert one.agent_heartbeat(agent, []) == {"held": [], "cancelling": [], "lost": []}
    with pytest.raises(ForbiddenError, match="not registered with token 'runner-2'"):
        two.agent_heartbeat(agent, [])
    with pytest.raises(ForbiddenError, match="not registered with token 'runner-2'"):
        two.get_runs_in_queue(agent)
    with pytest.raises(ForbiddenError, match="not registered"):
        two.claim_flow_run(agent, "nope", 0)
    with pytest.raises(ForbiddenError, match="not registered"):
        two.register_agent("stolen", [], agent_id=agent)
    # A run nobody holds: a runner may not set its state, nor ingest into it.
    admin = Client(server.url, api_key=server.token("admin", "admin"))
    admin.create_project("p")
    user = Client(server.url, api_key=server.token("user", "user"))
    flow_id = gql(
        server.url,
        'mutation($s: JSON!, $t: JSON!) { register_flow(input: {project_name: "p", '
        'name: "f", structure: $s, storage: $t}) { id } }',
        token=user.api_key,
        variables={
            "s": {"tasks": [], "edges": [], "parameters": [], "schedule": None},
            "t": {"type": "source", "source": "x = 1\n", "filename": "f.py"},
        },
    )[1]["data"]["register_flow"]["id"]
    run_id = user.create_flow_run(flow_id)
    with pytest.raises(ForbiddenError, match="is not held by an agent of token 'runner-1'"):
        one.set_flow_run_state(run_id, 0, "Running")
    with pytest.raises(ForbiddenError, match="not held"):
        one.begin_attempt(run_id)
    # Nor read it or its flow's source before it claims it.
    with pytest.raises(ForbiddenError, match="not held"):
        one.get_flow_run(run_id)
    with pytest.raises(ForbiddenError, match="no run of flow"):
        one.get_flow(flow_id)
    claimed = one.claim_flow_run(agent, run_id, 0)
    assert claimed["agent_id"] == agent
    assert one.begin_attempt(run_id) is None
    assert one.get_flow_run(run_id[:8])["id"] == run_id  # a prefix, as the CLI gives
    assert one.get_flow(flow_id)["storage"]["source"] == "x = 1\n"
    with pytest.raises(ForbiddenError, match="not held"):
        two.get_flow_run(run_id)
    with pytest.raises(ForbiddenError, match="no run of flow"):
        two.get_flow(flow_id)
    one.set_flow_run_state(run_id, int(claimed["version"]), "Running")
    with pytest.raises(ForbiddenError, match="not held by an agent of token 'runner-2'"):
        two.set_flow_run_state(run_id, int(claimed["version"]) + 1, "Failed")
    import msgpack

    batch = msgpack.packb({"flow_run": {"id": run_id, "flow_name": "f", "state": "Success"}})
    status, _h, raw = request(
        server.url, "/ingest", body=batch, headers={"Authorization": f"Bearer {two.api_key}"}
    )
    assert status == 403 and b"not held" in raw
    # A runner cannot use the UI.
    status, _h, raw = request(server.url, "/", headers={"Authorization": f"Bearer {two.api_key}"})
    assert status == 403 and b"may not use /" in raw


# --------------------------------------------------------------------------- sessions


def signin(server: Server, token: str, **headers: str) -> tuple[int, dict[str, str]]:
    body = f"token={token}&next=/".encode()
    status, h, _ = request(
        server.url,
        "/signin",
        body=body,
        headers={"Content-Type": "application/x-www-form-urlencoded", **headers},
    )
    return status, h


def test_signin_session_cookie_csrf_signout(server: Server) -> None:
    token = server.token("alice", "read_only")
    status, _h, raw = request(server.url, "/signin")
    assert status == 200 and b'name="token"' in raw
    # A wrong token, a runner's token, no token.
    assert signin(server, "ff_" + "B" * 43)[0] == 401
    assert signin(server, server.token("bot", "runner"))[0] == 403
    assert signin(server, "")[0] == 400
    status, headers = signin(server, token)
    assert status == 303 and headers["location"] == "/"
    cookie_header = headers["set-cookie"]
    assert "HttpOnly" in cookie_header and "SameSite=strict" in cookie_header
    assert "Secure" not in cookie_header  # plain HTTP here; see the TLS test
    assert token not in cookie_header
    cookie = cookie_header.split(";")[0]
    status, _h, page = request(server.url, "/", headers={"Cookie": cookie})
    assert status == 200 and b"alice (read_only)" in page
    csrf = re.search(rb'name="csrf_token" value="([^"]+)"', page)
    assert csrf is not None
    csrf_value = csrf.group(1).decode()
    # The API with the cookie: reads work, and an unsafe request needs the CSRF token.
    body = json.dumps({"query": "{ projects { id } }"}).encode()
    json_h = {"Cookie": cookie, "Content-Type": "application/json"}
    status, _h, raw = request(server.url, body=body, headers=json_h)
    assert status == 403 and b"CSRF" in raw
    status, _h, raw = request(server.url, body=body, headers={**json_h, "X-CSRF-Token": csrf_value})
    assert status == 200 and json.loads(raw) == {"data": {"projects": []}}
    # Cross-site form posts: another origin, or ours without the CSRF token.
    form = {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}
    evil = {**form, "Origin": "http://evil.example"}
    status, _h, raw = request(
        server.url, "/signout", body=f"csrf_token={csrf_value}".encode(), headers=evil
    )
    assert status == 403 and b"another origin" in raw
    status, _h, raw = request(server.url, "/signout", body=b"x=1", headers=form)
    assert status == 403 and b"CSRF" in raw
    status, _h, raw = request(server.url, "/signout", body=b"csrf_token=forged", headers=form)
    assert status == 403
    # After signing in, only a path of this site is followed.
    for given, goes in (
        ("/runs/abc?x=1", "/runs/abc?x=1"),
        ("//evil.example", "/"),
        ("/%09/evil.example", "/%09/evil.example"),
        ("/\t/evil.example", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example", "/"),
    ):
        from urllib.parse import urlencode

        status, h, _ = request(
            server.url,
            "/signin",
            body=urlencode({"token": token, "next": given}).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert status == 303 and h["location"] == goes, given
    # Sign-in from another site is refused too (login CSRF).
    assert signin(server, token, Origin="http://evil.example")[0] == 403
    # A forged cookie is nobody.
    status, headers, _ = request(
        server.url, "/", headers={"Cookie": "ferroflow_session=" + "A" * 43}
    )
    assert status == 303 and headers["location"].startswith("/signin")
    # Sign out; the same cookie replayed afterwards is refused.
    status, headers, _ = request(
        server.url, "/signout", body=f"csrf_token={csrf_value}".encode(), headers=form
    )
    assert status == 303 and headers["location"] == "/signin"
    assert "ferroflow_session=" in headers["set-cookie"] and "Max-Age=0" in headers["set-cookie"]
    status, headers, _ = request(server.url, "/", headers={"Cookie": cookie})
    assert status == 303 and headers["location"] == "/signin?next=/"
    status, _h, raw = request(server.url, body=body, headers={**json_h, "X-CSRF-Token": csrf_value})
    assert status == 401
    import hashlib

    gone = hashlib.sha256(cookie.split("=", 1)[1].encode()).hexdigest()
    assert server.db.fetchone("SELECT hash FROM sessions WHERE hash = ?", (gone,)) is None
    assert server.db.fetchone("SELECT count(*) AS n FROM sessions")["n"] == 6  # type: ignore[index]


def test_ui_actions_need_a_user_session_and_its_csrf_token(server: Server) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    sessions = {}
    for role in ("read_only", "user"):
        cookie = signin(server, server.token(f"ui-{role}", role))[1]["set-cookie"].split(";")[0]
        status, _h, page = request(server.url, "/", headers={"Cookie": cookie})
        assert status == 200 and f"ui-{role} ({role})".encode() in page
        found = re.search(rb'name="csrf_token" value="([^"]+)"', page)
        assert found is not None
        sessions[role] = (cookie, found.group(1).decode())
    path = "/runs/no-such-run/cancel"
    cookie, csrf = sessions["read_only"]
    status, _h, raw = request(
        server.url, path, body=f"csrf_token={csrf}".encode(), headers={**form, "Cookie": cookie}
    )
    assert status == 403 and b"may only read" in raw, raw[:300]
    cookie, csrf = sessions["user"]
    status, _h, raw = request(server.url, path, body=b"", headers={**form, "Cookie": cookie})
    assert status == 403 and b"CSRF" in raw  # the session's token is missing
    status, _h, raw = request(
        server.url, path, body=f"csrf_token={csrf}".encode(), headers={**form, "Cookie": cookie}
    )
    # Past every check: the action itself answers (there is no such run).
    assert status == 404 and b"no flow run" in raw, raw[:300]


def test_revoking_a_token_ends_its_sessions(server: Server) -> None:
    admin = Client(server.url, api_key=server.token("admin", "admin"))
    token = server.token("bob", "user")
    cookie = signin(server, token)[1]["set-cookie"].split(";")[0]
    assert request(server.url, "/", headers={"Cookie": cookie})[0] == 200
    admin.revoke_api_key("bob")
    assert request(server.url, "/", headers={"Cookie": cookie})[0] == 303
    with pytest.raises(ApiError, match="revoked already"):
        admin.revoke_api_key("bob")
    with pytest.raises(ApiError, match="no token named 'nobody'"):
        admin.revoke_api_key("nobody")


# ------------------------------------------------------------------------------ audit


def test_every_mutation_is_audited_with_who_and_where(server: Server) -> None:
    admin = Client(server.url, api_key=server.token("admin", "admin"))
    reader = Client(server.url, api_key=server.token("reader", "read_only"))
    admin.create_project("etl")
    with pytest.raises(ApiError, match="already exists"):
        admin.create_project("etl")
    with pytest.raises(ForbiddenError):
        reader.create_project("mine")
    with pytest.raises(ForbiddenError):
        reader.get_audit()
    admin.register_agent("a")
    entries = admin.get_audit()
    seen = [(e["actor"], e["action"], e["detail"].get("outcome")) for e in reversed(entries)]
    assert seen[-4:] == [
        ("admin", "create_project", None),
        ("admin", "create_project", "error"),
        ("reader", "create_project", "forbidden"),
        ("admin", "register_agent", None),
    ]
    assert all(e["address"] == "127.0.0.1" for e in entries[:4])
    assert entries[0]["at"] >= entries[-1]["at"]
    # Token creation is audited, never with the token.
    assert any(e["action"] == "create_api_key" and e["target"] == "reader" for e in entries)
    assert "ff_" not in json.dumps(entries)


# --------------------------------------------------------------------- hostile input


def test_sql_metacharacters_and_huge_strings_get_typed_errors(server: Server) -> None:
    admin = server.token("admin", "admin")
    nasty = [
        "'; DROP TABLE projects; --",
        '" OR 1=1 --',
        "%_\\",
        "\x00nul",
        "x" * 200_000,
        "😀" * 1000,
        "{{7*7}}<script>alert(1)</script>",
    ]
    calls = [
        ("mutation($s: String!) { create_project(input: {name: $s, description: $s}) { id } }"),
        "mutation($s: String!) { delete_project(input: {project_id: $s}) { success } }",
        "mutation($s: String!) { create_flow_run(input: {flow_name: $s, project: $s, "
        "run_name: $s, idempotency_key: $s, labels: [$s]}) { id } }",
        "mutation($s: String!) { cancel_flow_run(input: {flow_run_id: $s}) { state } }",
        "mutation($s: String!) { register_agent(input: {name: $s, labels: [$s]}) { id } }",
        "mutation($s: String!) { create_api_key(input: {name: $s, role: $s}) { name } }",
        "mutation($s: String!) { revoke_api_key(input: {name: $s}) { success } }",
        "mutation($s: String!) { archive_flow(input: {flow_id: $s}) { success } }",
        "mutation($s: String!) { write_run_logs(input: {logs: [{flow_run_id: $s, "
        "message: $s}]}) { success } }",
        "query($s: String!) { flow_run(id: $s) { id } }",
        "query($s: String!) { project(name: $s) { id } }",
        "query($s: String!) { flows(project: $s, name: $s) { id } }",
        "query($s: String!) { flow_runs(filter: {flow_name: $s, project: $s, states: [$s], "
        "labels: [$s]}) { id } }",
    ]
    for call in calls:
        for value in nasty:
            status, answer = gql(server.url, call, token=admin, variables={"s": value})
            assert status == 200, (call, value[:20], answer)
            text = json.dumps(answer)
            assert "Traceback" not in text and "sqlite3" not in text.lower()
    # The store is intact and still answers.
    names = gql(server.url, "{ projects(limit: 1000) { name } }", token=admin)[1]["data"]
    assert {p["name"] for p in names["projects"]} <= set(nasty)
    # Over the body limit: 413, a GraphQL error.
    status, _h, raw = request(
        server.url,
        body=json.dumps({"query": "{ x }", "variables": {"s": "x" * (2 << 20)}}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {admin}"},
    )
    assert status == 413 and b"larger than" in raw
    # A huge Authorization header or cookie is refused as malformed / nobody.
    status, answer = gql(
        server.url, "{ projects { id } }", headers={"Authorization": "Bearer ff_" + "A" * 60_000}
    )
    assert status == 401 and code(answer) == "UNAUTHENTICATED"
    status, _h, _ = request(
        server.url, "/", headers={"Cookie": "ferroflow_session=" + "A" * 60_000}
    )
    assert status == 303


# ------------------------------------------------------------------------ the CLI


def cli(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferroflow", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        input=stdin,
    )


def test_tokens_cli_create_ls_revoke(server: Server) -> None:
    env = server.env
    made = cli(env, "tokens", "create", "--name", "ci", "--role", "user", "--expires", "30d")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("ff_") and "\n" not in token
    assert "shown only now" in made.stderr and "role user" in made.stderr
    assert Client(server.url, api_key=token).get_projects() == []
    listed = cli(env, "tokens", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["role"], r["active"]) for r in rows] == [("ci", "user", True)]
    assert rows[0]["expires"] - rows[0]["created"] == pytest.approx(30 * 86400, abs=5)
    assert token not in listed.stdout
    table = cli(env, "tokens", "ls")
    assert table.returncode == 0 and "ci" in table.stdout and "active" in table.stdout
    # The store file holds no token.
    assert token.encode() not in (server.home / "ferroflow.db").read_bytes()
    wal = server.home / "ferroflow.db-wal"
    assert not wal.exists() or token.encode() not in wal.read_bytes()
    again = cli(env, "tokens", "create", "--name", "ci", "--role", "user")
    assert again.returncode == 2 and "exists: revoke it first" in again.stderr
    bad = cli(env, "tokens", "create", "--name", "x", "--role", "root")
    assert bad.returncode == 2 and "root" in bad.stderr
    bad = cli(env, "tokens", "create", "--name", "x", "--role", "user", "--expires", "soon")
    assert bad.returncode == 2 and "bad duration 'soon'" in bad.stderr
    revoked = cli(env, "tokens", "revoke", "ci")
    assert revoked.returncode == 0 and "Revoked token 'ci'" in revoked.stdout
    audited = server.db.fetchall("SELECT actor, action, target FROM audit ORDER BY seq")
    assert [(a["action"], a["target"]) for a in audited] == [
        ("create_api_key", "ci"),
        ("revoke_api_key", "ci"),
    ]
    assert all(a["actor"].startswith("cli:") for a in audited)
    with pytest.raises(AuthenticationError, match="revoked"):
        Client(server.url, api_key=token).get_projects()
    missing = cli(env, "tokens", "revoke", "ci")
    assert missing.returncode == 2 and "revoked already" in missing.stderr
    # Through the API (an admin's key), and the same refusal for a user's.
    admin = cli(env, "tokens", "create", "--name", "root", "--role", "admin").stdout.strip()
    via_api = cli(
        {**env, "FERROFLOW_API_KEY": admin}, "tokens", "ls", "--json", "--api", server.url
    )
    assert via_api.returncode == 0 and {r["name"] for r in json.loads(via_api.stdout)} == {
        "ci",
        "root",
    }
    user = cli(env, "tokens", "create", "--name", "u", "--role", "user").stdout.strip()
    refused = cli({**env, "FERROFLOW_API_KEY": user}, "tokens", "ls", "--api", server.url)
    assert refused.returncode == 2 and "forbidden" in refused.stderr
    # Server commands use FERROFLOW_API_KEY.
    env_user = {**env, "FERROFLOW_API_KEY": user, "FERROFLOW_API_URL": server.url}
    assert cli(env_user, "flows", "ls", "--json").returncode == 0
    no_key = cli({**env, "FERROFLOW_API_URL": server.url}, "flows", "ls")
    assert no_key.returncode == 2 and "needs an API token" in no_key.stderr


# ------------------------------------------------------------------------------- TLS


def make_cert(tmp_path: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (its own CA), with openssl."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return str(cert), str(key)


def test_tls_serves_https_and_the_session_cookie_is_secure(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    s = Server(tmp_path / "tls", "--ssl-certfile", cert, "--ssl-keyfile", key)
    try:
        assert s.url.startswith("https://127.0.0.1:")
        token = s.token("alice", "user")
        client = Client(s.url, api_key=token, ca_file=cert)
        assert client.get_projects() == []
        with pytest.raises(ApiError, match=r"is not trusted .* Client\(ca_file"):
            Client(s.url, api_key=token).get_projects()  # the system CAs do not know it
        import ssl

        context = ssl.create_default_context(cafile=cert)
        req = urllib.request.Request(
            s.url + "/signin",
            data=f"token={token}".encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: Any, **kwargs: Any) -> None:
                return None

        opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=context), NoRedirect
        )
        with pytest.raises(urllib.error.HTTPError) as got:
            opener.open(req, timeout=30)
        assert got.value.code == 303
        cookie = got.value.headers["set-cookie"]
        got.value.close()
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    finally:
        err = s.stop()
    assert "Traceback" not in err


# ------------------------------------------------------------------- an agent's token


FLOW = """
from ferroflow import Flow, Parameter, task

@task
def inc(x):
    return x + 1

with Flow("adder") as adder:
    inc(Parameter("n", default=1))
"""


def test_an_agent_with_a_runner_token_runs_a_flow(server: Server, tmp_path: Path) -> None:
    admin = Client(server.url, api_key=server.token("admin", "admin"))
    admin.create_project("p")
    user = Client(server.url, api_key=server.token("user", "user"))
    flows = tmp_path / "flows.py"
    flows.write_text(FLOW)
    env = {**server.env, "FERROFLOW_API_URL": server.url, "FERROFLOW_API_KEY": user.api_key}
    reg = cli(env, "register", "--project", "p", str(flows))
    assert reg.returncode == 0, reg.stderr
    run_id = user.create_flow_run(flow_name="adder", project="p", parameters={"n": 41})
    runner = server.token("agent", "runner")
    agent_env = {
        **server.env,
        "FERROFLOW_API_URL": server.url,
        "FERROFLOW_API_KEY": runner,
        "FERROFLOW_HOME": str(tmp_path / "agent-home"),
    }
    work = tmp_path / "agent-work"
    agent = subprocess.Popen(
        [sys.executable, "-m", "ferroflow", "agent", "start", "--work-dir", str(work)],
        env=agent_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            run = user.get_flow_run(run_id)
            if run["state"] in ("Success", "Failed"):
                break
            assert time.monotonic() < deadline, run
            time.sleep(0.2)
    finally:
        agent.send_signal(signal.SIGTERM)
        out, _ = agent.communicate(timeout=60)
    assert run["state"] == "Success", out
    counts = {(c["task_name"], c["state"]) for c in run["task_run_counts"]}
    assert ("inc", "Success") in counts
    agents = admin.get_agents()
    assert len(agents) == 1
    row = server.db.fetchone("SELECT token_name FROM agents")
    assert row == {"token_name": "agent"}
    actions = {(e["actor"], e["action"]) for e in admin.get_audit(limit=1000)}
    assert ("agent", "claim_flow_run") in actions and ("agent", "register_agent") in actions
    # A local run streamed by a user's token is audited once, when it first arrives.
    local = tmp_path / "local.py"
    local.write_text(FLOW + "\nadder.run()\n")
    ran = subprocess.run(
        [sys.executable, str(local)],
        env={**env, "FERROFLOW_HOME": str(tmp_path / "local-home")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    ingested = [e for e in admin.get_audit(limit=1000) if e["action"] == "ingest_flow_run"]
    assert [(e["actor"], e["detail"]) for e in ingested] == [("user", {"flow_name": "adder"})]


# ------------------------------------------------------------------- both backends


def test_tokens_sessions_and_audit_on_each_backend(db: Any) -> None:
    from ferroflow.server.app import execute
    from ferroflow.server.auth import (
        Principal,
        authenticate,
        create_session,
        delete_session,
        revoke_token,
        session_of,
        tokens_exist,
    )

    assert not tokens_exist(db)
    made = create_token(db, "ops", "user", expires_in=60)
    assert tokens_exist(db)
    me = authenticate(db, made["token"])
    assert me == Principal("ops", "user")
    cookie, csrf = create_session(db, me)
    assert session_of(db, cookie) == (me, csrf)
    delete_session(db, cookie)
    assert session_of(db, cookie) is None
    out = execute(
        db,
        'mutation { create_project(input: {name: "p"}) { id } }',
        principal=me,
        address="::1",
    )
    assert out["errors"][0]["extensions"] == {"code": "FORBIDDEN"}
    out = execute(db, "{ flow_runs { id } }", principal=me)
    assert out == {"data": {"flow_runs": []}}
    revoke_token(db, "ops")
    with pytest.raises(AuthenticationError, match="revoked"):
        authenticate(db, made["token"])
    assert not tokens_exist(db)
    admin = Principal("root", "admin")
    rows = execute(db, "{ audit { actor action address detail } }", principal=admin)["data"]
    assert [(r["actor"], r["action"], r["address"]) for r in rows["audit"]] == [
        ("anonymous", "revoke_api_key", None),
        ("ops", "create_project", "::1"),
        ("anonymous", "create_api_key", None),
    ]
    assert rows["audit"][1]["detail"]["outcome"] == "forbidden"


# ------------------------------------------------------------------------------ fuzz


def test_fuzz_the_whole_schema_with_every_role(server: Server) -> None:
    """hypothesis-graphql writes valid (and invalid) queries and mutations over the
    whole schema; every role's token sends them to the real server: no 500, no
    traceback, always a JSON GraphQL answer, FORBIDDEN exactly where the role says."""
    from graphql import GraphQLError
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from hypothesis_graphql import Mode, mutations, nodes, queries

    from ferroflow.server.api import make_schema
    from ferroflow.server.auth import operation_fields

    sdl = make_schema().as_str()
    json_values = st.recursive(
        st.none().map(lambda _: nodes.Null)
        | st.integers(-(2**31), 2**31 - 1).map(nodes.Int)
        | st.text(max_size=20).map(nodes.String),
        lambda inner: st.lists(inner, max_size=3).map(nodes.List),
        max_leaves=5,
    )
    scalars = {"JSON": json_values}
    tokens = {role: server.token(f"fuzz-{role}", role) for role in ROLES}
    documents = st.one_of(
        queries(sdl, custom_scalars=scalars),
        mutations(sdl, custom_scalars=scalars),
        queries(sdl, custom_scalars=scalars, mode=Mode.NEGATIVE),
        mutations(sdl, custom_scalars=scalars, mode=Mode.NEGATIVE),
    )

    seen: dict[str, int] = {"data": 0, "forbidden": 0}

    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(document=documents, role=st.sampled_from(ROLES))
    def check(document: str, role: str) -> None:
        status, answer = gql(server.url, document, token=tokens[role])  # no 500, no traceback
        assert status in (200, 400, 413), (status, answer)
        assert set(answer) <= {"data", "errors"}
        for error in answer.get("errors") or []:
            assert isinstance(error["message"], str) and "Traceback" not in error["message"]
        try:
            fields = operation_fields(document)
        except GraphQLError:
            return
        refused = any(role not in PERMISSIONS[k].get(name, set()) for k, name, _ in fields)
        if refused:
            assert central_refusal(answer), (role, document, answer)
            seen["forbidden"] += 1
        else:
            assert not central_refusal(answer), (role, document, answer)
            seen["data"] += answer.get("data") is not None

    check()
    # Both sides were reached: answers with data, and refusals.
    assert seen["data"] > 0 and seen["forbidden"] > 0, seen
    # The fuzzing revoked nobody it should not have, and the server is still well.
    assert Client(server.url, api_key=tokens["read_only"]).get_projects() is not None
