"""The UI's admin pages (tokens, secrets, audit) and its sign-in page, over HTTP.

Every test talks to a real ``ferroflow server start`` on 127.0.0.1 with its own home
(:class:`test_auth.Server`); tokens are made in the server's store file, then the pages
are used with a bearer token or, as a browser does, a session cookie and its CSRF token.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from starlette.routing import Route

import test_auth
import test_ui
from ferroflow.server import auth, models
from ferroflow.server import secrets as server_secrets
from ferroflow.server.ui import admin
from test_auth import Server, request

# The fixtures of the server's permission tests and of the UI's tests.
server = test_auth.server
served_app = test_ui.served_app

ADMIN_PAGES = ("/tokens", "/secrets", "/audit")
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
TOKEN_RE = re.compile(r"ff_[A-Za-z0-9_-]{43,128}")


def bearer(token: str, **more: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **more}


def get(server: Server, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], str]:
    status, h, raw = request(server.url, path, headers=headers)
    text = raw.decode()
    assert "Traceback" not in text, text
    return status, h, text


def post(
    server: Server, path: str, fields: dict[str, str], headers: dict[str, str]
) -> tuple[int, dict[str, str], str]:
    body = urlencode(fields).encode()
    status, h, raw = request(server.url, path, body=body, headers={**FORM, **headers})
    text = raw.decode()
    assert "Traceback" not in text, text
    return status, h, text


class Session:
    """A signed-in browser: its cookie, its CSRF token, and every answer it got."""

    def __init__(self, server: Server, token: str) -> None:
        self.server = server
        status, h, _ = post(server, "/signin", {"token": token, "next": "/"}, {})
        assert status == 303, status
        self.cookie = h["set-cookie"].split(";")[0]
        _status, _h, page = get(server, "/", {"Cookie": self.cookie})
        found = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert found is not None
        self.csrf = found.group(1)
        self.seen: list[str] = []

    def get(self, path: str, **headers: str) -> tuple[int, dict[str, str], str]:
        got = get(self.server, path, {"Cookie": self.cookie, **headers})
        self.seen.append(got[2])
        return got

    def post(
        self, path: str, fields: dict[str, str], csrf: bool = True, **headers: str
    ) -> tuple[int, dict[str, str], str]:
        sent = {**fields, **({"csrf_token": self.csrf} if csrf else {})}
        got = post(self.server, path, sent, {"Cookie": self.cookie, **headers})
        self.seen.append(got[2])
        self.seen.append(got[1].get("location", ""))
        return got


def _notice(location: str) -> str:
    from urllib.parse import parse_qs, urlsplit

    q = parse_qs(urlsplit(location).query)
    return (q.get("notice") or q.get("error") or [""])[0]


# ------------------------------------------------------------------------------ roles


def test_admin_pages_and_their_json_twins_per_role(server: Server) -> None:
    tokens = {role: server.token(f"t-{role}", role) for role in auth.ROLES}
    for path in ADMIN_PAGES:
        status, h, page = get(server, path, bearer(tokens["admin"]))
        assert status == 200 and h["content-type"].startswith("text/html"), (path, page[:300])
        assert '<link rel="stylesheet" href="/static/ui.css">' in page
        status, h, text = get(server, "/api" + path, bearer(tokens["admin"]))
        assert status == 200 and h["content-type"].startswith("application/json")
        assert json.loads(text) == json.loads(
            get(server, path + "?format=json", bearer(tokens["admin"]))[2]
        )
        for role in ("read_only", "user"):
            status, h, page = get(server, path, bearer(tokens[role]))
            assert status == 403 and h["content-type"].startswith("text/html"), (path, role)
            assert f"token &#39;t-{role}&#39; (role {role}) is not an admin" in page
            assert "<h1>403</h1>" in page and 'href="/tokens"' not in page
            status, h, text = get(server, "/api" + path, bearer(tokens[role]))
            assert status == 403 and "is not an admin" in json.loads(text)["error"]
        # A runner may not use the UI at all: the server's guard answers first.
        for p in (path, "/api" + path):
            status, _h, text = get(server, p, bearer(tokens["runner"]))
            assert status == 403 and "may not use" in text
    # The navigation links to the admin pages only for admins.
    assert 'href="/tokens"' in get(server, "/", bearer(tokens["admin"]))[2]
    for role in ("read_only", "user"):
        assert 'href="/audit"' not in get(server, "/", bearer(tokens[role]))[2]


def _admin_routes() -> list[tuple[str, str]]:
    from ferroflow.server.database import open_database
    from ferroflow.server.ui import UI

    out = []
    for route in UI(lambda: open_database("sqlite://")).routes():
        assert isinstance(route, Route)
        path = route.path
        if any(path.startswith(p) or path.startswith("/api" + p) for p in ADMIN_PAGES):
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    out.append((method, path.replace("{name}", "T_1")))
    return out


def test_every_admin_route_and_action_refuses_non_admins(server: Server) -> None:
    routes = _admin_routes()
    # Every page, its twin and each action (create, revoke, set, remove) is there.
    assert len(routes) == 10, routes
    server.token("T_1", "read_only")
    with server.db.transaction():
        server_secrets.set_secret(server.db, "T_1", "value-of-t1")
    before = (auth.list_tokens(server.db), server_secrets.list_secrets(server.db))
    fields = {"name": "T_2", "role": "admin", "value": "x"}
    for role in ("read_only", "user"):
        token = server.token(f"not-admin-{role}", role)
        for method, path in routes:
            if method == "GET":
                status, _h, text = get(server, path, bearer(token))
            else:
                status, _h, text = post(server, path, fields, bearer(token))
            assert status == 403 and "is not an admin" in text, (role, method, path, text[:200])
    after = auth.list_tokens(server.db)
    assert [t for t in after if t["name"] in ("T_1", "T_2")] == before[0][:1]
    assert server_secrets.list_secrets(server.db) == before[1]


def test_open_mode_shows_the_admin_pages_and_a_read_only_ui_refuses_them(
    server: Server, served_app: Callable[..., str]
) -> None:
    # No token yet: this machine may do everything, as with GraphQL.
    status, _h, page = get(server, "/tokens", {})
    assert status == 200 and "No tokens" in page and 'href="/secrets"' in page
    from ferroflow.ui import create_ui_app

    app = create_ui_app(server.home / "ferroflow.db", read_only=True)
    try:
        url = served_app(app)
        for path in ADMIN_PAGES:
            status, _h, raw = request(url, path)
            assert status == 403 and b"the admin pages are turned off" in raw
        status, _h, raw = request(url, "/")
        assert status == 200 and b'href="/tokens"' not in raw
    finally:
        app.state.store.close()


def test_ui_actions_are_audited_as_the_signed_in_token(server: Server) -> None:
    flow_id = test_ui._registered(server.db)
    me = Session(server, server.token("carol", "user"))
    status, h, _ = me.post(f"/flows/{flow_id}/run", {"param.n": "2"})
    assert status == 303 and h["location"].startswith("/runs/")
    run_id = h["location"].split("/runs/", 1)[1].split("?", 1)[0]
    status, h, _ = me.post(f"/runs/{run_id}/cancel", {})
    assert status == 303 and "cancelled" in _notice(h["location"])
    lines = [e for e in models.list_audit(server.db, 100) if e["action"] != "create_api_key"]
    done = {(e["actor"], e["action"], e["address"]) for e in lines}
    assert ("carol", "cancel_flow_run", "127.0.0.1") in done
    assert ("carol", "create_flow_run", "127.0.0.1") in done
    registered = next(e["seq"] for e in lines if e["action"] == "register_flow")
    assert {e["actor"] for e in lines if e["seq"] > registered} == {"carol"}, lines


# ----------------------------------------------------------------------------- tokens


def test_a_token_made_on_the_page_is_shown_once_works_and_stops_when_revoked(
    server: Server,
) -> None:
    me = Session(server, server.token("root", "admin"))
    status, _h, page = me.get("/tokens")
    assert status == 200 and "root <span" in page and "(you)" in page
    status, _h, page = me.post("/tokens", {"name": "ci", "role": "user", "expires": "30d"})
    assert status == 200, page[:500]
    shown = TOKEN_RE.findall(page)
    assert len(shown) == 1, shown
    new = shown[0]
    assert "shown this once and cannot be shown again" in page
    assert "no-store" in me.get("/tokens")[1]["cache-control"]
    # The token works for the API, with the role chosen.
    status, _h, text = get(server, "/api/runs", bearer(new))
    assert status == 200 and json.loads(text)["runs"] == []
    assert get(server, "/api/tokens", bearer(new))[0] == 403
    listed = {t["name"]: t for t in json.loads(me.get("/api/tokens")[2])["tokens"]}
    assert listed["ci"]["role"] == "user" and listed["ci"]["status"] == "active"
    assert 29 * 86400 < listed["ci"]["expires"] - listed["ci"]["created"] <= 30 * 86400
    # It is never shown again, nor is any token's hash.
    hashes = [r["hash"] for r in server.db.fetchall("SELECT hash FROM tokens")]
    for path in ("/tokens", "/api/tokens", "/audit", "/api/audit"):
        text = me.get(path)[2]
        assert new not in text and not TOKEN_RE.search(text), path
        assert not any(h in text for h in hashes), path
    # Revoke it: it stops working at once.
    status, h, _ = me.post("/tokens/ci/revoke", {})
    assert status == 303 and h["location"].startswith("/tokens?")
    assert "token 'ci' revoked" in _notice(h["location"])
    status, _h, text = get(server, "/api/runs", bearer(new))
    assert status == 401 and "was revoked" in text
    page = me.get("/tokens")[2]
    row = page.split('data-token="ci"', 1)[1].split("</tr>", 1)[0]
    assert "revoked</span>" in row and "Revoke" not in row
    # Both are in the audit log, as the signed-in admin, from this machine.
    entries = json.loads(me.get("/api/audit")[2])["entries"]
    done = [(e["actor"], e["action"], e["target"], e["address"]) for e in entries[:2]]
    assert done == [
        ("root", "revoke_api_key", "ci", "127.0.0.1"),
        ("root", "create_api_key", "ci", "127.0.0.1"),
    ]
    # A name with '@' and '.': the page's own revoke form works for it.
    status, _h, page = me.post("/tokens", {"name": "bot@ci.example", "role": "runner"})
    assert status == 200
    found = re.search(r'action="(/tokens/[^"]+/revoke)"', page.split('data-token="bot@', 1)[1])
    assert found is not None and found.group(1) == "/tokens/bot%40ci.example/revoke"
    status, h, _ = me.post(found.group(1), {})
    assert "token 'bot@ci.example' revoked" in _notice(h["location"])
    # The name may be used again once revoked (as with the command line).
    status, _h, page = me.post("/tokens", {"name": "ci", "role": "read_only"})
    assert status == 200 and len(TOKEN_RE.findall(page)) == 1


def test_token_form_bad_inputs_are_readable_errors(server: Server) -> None:
    me = Session(server, server.token("root", "admin"))
    server.token("taken", "user")
    for fields, message in (
        ({"name": "", "role": "user"}, "a token name must be 1 to 100 letters"),
        ({"name": "has space", "role": "user"}, "a token name must be 1 to 100 letters"),
        ({"name": "ok", "role": "boss"}, "unknown role &#39;boss&#39;"),
        ({"name": "ok", "role": "user", "expires": "soon"}, "bad duration &#39;soon&#39;"),
        ({"name": "ok", "role": "user", "expires": "0s"}, "more than 0 and under 100 years"),
        ({"name": "taken", "role": "user"}, "a token named &#39;taken&#39; exists"),
    ):
        status, _h, page = me.post("/tokens", fields)
        assert status == 400 and message in page, (fields, page[:2000])
        assert 'id="token-error"' in page and not TOKEN_RE.search(page)
        assert f'value="{fields["name"]}"' in page  # the form keeps what was typed
    status, _h, text = me.post("/tokens?format=json", {"name": "x y", "role": "user"})
    assert status == 400 and "a token name must be" in json.loads(text)["form_error"]
    assert "ok" not in [t["name"] for t in auth.list_tokens(server.db)]
    status, h, _ = me.post("/tokens/nobody/revoke", {})
    assert status == 303 and "no token named 'nobody'" in _notice(h["location"])
    assert "error=" in h["location"]
    me.post("/tokens/taken/revoke", {})
    status, h, _ = me.post("/tokens/taken/revoke", {})
    assert "revoked already" in _notice(h["location"])
    status, _h, text = me.post("/tokens/nobody/revoke?format=json", {})
    assert status == 400 and "no token named" in json.loads(text)["error"]


def test_admin_forms_need_the_session_csrf_token(server: Server) -> None:
    me = Session(server, server.token("root", "admin"))
    for path, fields in (
        ("/tokens", {"name": "sneaky", "role": "admin"}),
        ("/tokens/root/revoke", {}),
        ("/secrets", {"name": "SNEAKY", "value": "v"}),
    ):
        status, _h, text = me.post(path, fields, csrf=False)
        assert status == 403 and "CSRF" in text, path
        status, _h, text = me.post(path, {**fields, "csrf_token": "forged"}, csrf=False)
        assert status == 403 and "CSRF" in text, path
        status, _h, text = me.post(path, fields, Origin="http://evil.example")
        assert status == 403 and "another origin" in text, path
    assert [t["name"] for t in auth.list_tokens(server.db)] == ["root"]
    assert auth.list_tokens(server.db)[0]["active"]
    assert server_secrets.list_secrets(server.db) == []


# ---------------------------------------------------------------------------- secrets


def _store_bytes(home: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(home.glob("ferroflow.db*")))


def test_a_secret_set_on_the_page_is_listed_by_name_and_its_value_is_never_shown(
    server: Server,
) -> None:
    me = Session(server, server.token("root", "admin"))
    value = "hunter2-" + "Q7zX" * 8
    status, h, _ = me.post("/secrets", {"name": "DB_PASSWORD", "value": value})
    assert status == 303 and _notice(h["location"]) == "secret DB_PASSWORD set"
    status, _h, page = me.get(h["location"])
    assert status == 200 and 'data-secret="DB_PASSWORD"' in page
    assert "secret DB_PASSWORD set" in page
    listed = json.loads(me.get("/api/secrets")[2])["secrets"]
    assert [s["name"] for s in listed] == ["DB_PASSWORD"]
    assert set(listed[0]) == {"name", "created", "created_at", "updated", "updated_at"}
    # Stored (the run that needs it would read this), encrypted.
    assert server_secrets.read_secret(server.db, "DB_PASSWORD") == value
    ciphertext = server.db.fetchone("SELECT ciphertext FROM secrets")["ciphertext"]  # type: ignore[index]
    # Replace it; a bad input on the way back shows the form without the value.
    newer = "second-" + "Zz9" * 10
    status, h, _ = me.post("/secrets", {"name": "DB_PASSWORD", "value": newer})
    assert _notice(h["location"]) == "secret DB_PASSWORD replaced"
    status, _h, page = me.post("/secrets", {"name": "9lives", "value": value})
    assert status == 400 and "the secret name &#39;9lives&#39; is not valid" in page
    for path in ("/secrets", "/api/secrets", "/audit", "/api/audit", "/", "/tokens"):
        me.get(path)
    for text in me.seen:
        assert value not in text and newer not in text and ciphertext not in text
    store = _store_bytes(server.home)
    assert store and value.encode() not in store and newer.encode() not in store
    audited = json.loads(me.get("/api/audit?target=DB_PASSWORD")[2])["entries"]
    assert [e["action"] for e in audited] == ["set_secret", "set_secret"]
    # Remove it; again is a readable error.
    status, h, _ = me.post("/secrets/DB_PASSWORD/delete", {})
    assert status == 303 and _notice(h["location"]) == "secret DB_PASSWORD removed"
    assert json.loads(me.get("/api/secrets")[2])["secrets"] == []
    status, h, _ = me.post("/secrets/DB_PASSWORD/delete", {})
    assert "error=" in h["location"]
    assert "no secret named 'DB_PASSWORD'" in _notice(h["location"])


def test_secret_form_bad_inputs_are_readable_errors(server: Server) -> None:
    me = Session(server, server.token("root", "admin"))
    for fields, message in (
        ({"name": "", "value": "Vx-1-hidden"}, "the secret name &#39;&#39; is not valid"),
        ({"name": "has-dash", "value": "Vx-2"}, "the secret name &#39;has-dash&#39; is not"),
        ({"name": "1ST", "value": "Vx-3-hidden"}, "not starting with a digit"),
        ({"name": "EMPTY", "value": ""}, "the value of secret &#39;EMPTY&#39; must be"),
        ({"name": "EMPTY"}, "must be non-empty text"),
        ({"name": "BIG", "value": "Vx-4-" * 14000}, "is larger than 65536 bytes"),
    ):
        status, _h, page = me.post("/secrets", fields)
        assert status == 400 and message in page, (fields, page[:3000])
        assert 'id="secret-error"' in page
        assert "Vx-" not in page  # the value is never sent back
    status, _h, text = me.post("/secrets?format=json", {"name": "a b", "value": "v"})
    assert status == 400 and "is not valid" in json.loads(text)["form_error"]
    assert server_secrets.list_secrets(server.db) == []
    status, h, _ = me.post("/secrets/no%20such/delete", {})
    assert status == 303 and "is not valid" in _notice(h["location"])


def test_a_secret_key_others_may_read_is_a_readable_error(server: Server) -> None:
    me = Session(server, server.token("root", "admin"))
    key = server.home / server_secrets.KEY_FILE_NAME
    key.write_text("not-a-key\n")
    key.chmod(0o644)
    status, _h, page = me.post("/secrets", {"name": "A", "value": "value-a-123"})
    assert status == 503 and "may be read or written by others" in page
    assert "chmod 600" in page and "value-a-123" not in page


# ------------------------------------------------------------------------------ audit


def test_the_audit_page_is_newest_first_paged_and_filtered_in_the_url(server: Server) -> None:
    token = server.token("root", "admin")
    with server.db.transaction(), models.acting_as("writer", "10.1.2.3"):
        for i in range(120):
            models.audit(server.db, "create_project" if i % 2 else "delete_project", f"p{i}")
    h = bearer(token)
    first = json.loads(get(server, "/api/audit", h)[2])
    seqs = [e["seq"] for e in first["entries"]]
    assert len(seqs) == 50 and seqs == sorted(seqs, reverse=True)
    assert first["entries"][0]["target"] == "p119" and first["next_offset"] == 50
    assert first["prev_offset"] is None
    second = json.loads(get(server, "/api/audit?offset=50", h)[2])
    assert second["entries"][0]["seq"] == seqs[-1] - 1 and second["prev_offset"] == 0
    last = json.loads(get(server, "/api/audit?offset=100", h)[2])
    # 120 lines and the token's own create_api_key line.
    assert len(last["entries"]) == 21 and last["next_offset"] is None
    # Filters: by action, by target, both; the page links keep them.
    made = json.loads(get(server, "/api/audit?action=create_project&limit=1000", h)[2])
    assert len(made["entries"]) == 60
    assert {e["action"] for e in made["entries"]} == {"create_project"}
    one = json.loads(get(server, "/api/audit?target=p7", h)[2])["entries"]
    assert [(e["actor"], e["action"], e["target"], e["address"]) for e in one] == [
        ("writer", "create_project", "p7", "10.1.2.3")
    ]
    assert (
        json.loads(get(server, "/api/audit?target=p7&action=delete_project", h)[2])["entries"] == []
    )
    status, _h, page = get(server, "/audit?action=create_project", h)
    assert status == 200 and page.count("<tr data-seq=") == 50
    assert 'href="/audit?action=create_project&amp;offset=50"' in page
    assert 'value="create_project"' in page
    assert f'href="/audit?action=create_project&amp;target=p{119}"' in page
    status, _h, page = get(server, "/audit?action=nothing", h)
    assert status == 200 and "No audit lines match." in page
    # Bad paging: readable errors.
    for q, message in (
        ("offset=x", "offset must be a whole number"),
        ("offset=-1", "offset must be 0 or more"),
        ("limit=0", "limit must be 1 or more"),
    ):
        status, _h, text = get(server, f"/api/audit?{q}", h)
        assert status == 400 and message in json.loads(text)["error"], q
        status, _h, page = get(server, f"/audit?{q}", h)
        assert status == 400 and message in page


# ---------------------------------------------------------------------------- sign in


def test_the_sign_in_page_is_styled_keeps_next_and_says_why_a_token_fails(
    server: Server,
) -> None:
    good = server.token("alice", "admin")
    revoked = server.token("gone", "user")
    auth.revoke_token(server.db, "gone")
    expired = server.token("old", "user", expires_in=0.001)
    time.sleep(0.01)  # past its expiry
    status, h, _ = get(server, "/tokens?x=1", {})
    assert status == 303 and h["location"] == "/signin?next=/tokens%3Fx%3D1"
    # The page's style sheet and script need no token (nothing of the store is in them).
    for name, kind in (("ui.css", "text/css"), ("ui.js", "javascript")):
        status, h, text = get(server, f"/static/{name}", {})
        assert status == 200 and kind in h["content-type"] and len(text) > 100, name
    status, _h, page = get(server, "/static/nothing.css", {})
    assert status == 404 and 'href="/tokens"' not in page and 'href="/runs"' in page
    # An API client is answered, not sent to a form: no token, or a bad one.
    for headers in ({}, bearer("ff_" + "C" * 43)):
        status, _h, text = get(server, "/api/tokens?x=1", headers)
        assert status == 401 and json.loads(text)["errors"][0]["extensions"]["code"] == (
            "UNAUTHENTICATED"
        )
    status, _h, text = get(server, "/tokens", bearer("ff_" + "C" * 43))
    assert status == 401 and "unknown API token" in text
    status, _h, page = get(server, "/signin?next=" + quote("/tokens?x=1"), {})
    assert status == 200 and '<link rel="stylesheet" href="/static/ui.css">' in page
    assert '<input type="password" name="token"' in page
    assert 'name="next" value="/tokens?x=1"' in page
    assert 'href="/runs"' not in page and "this page as JSON" not in page
    for token, status_, why in (
        ("ff_" + "B" * 43, 401, "Cannot sign in: unknown API token."),
        ("not-a-token", 401, "Cannot sign in: malformed API token"),
        (revoked, 401, "Cannot sign in: API token &#39;gone&#39; was revoked."),
        (expired, 401, "Cannot sign in: API token &#39;old&#39; has expired."),
        (server.token("bot", "runner"), 403, "A runner token cannot use the UI."),
        ("", 400, "Give an API token."),
    ):
        status, _h, page = post(server, "/signin", {"token": token, "next": "/tokens?x=1"}, {})
        assert status == status_ and why in page, (why, page[:2000])
        assert 'id="signin-error"' in page and "/static/ui.css" in page
        assert 'name="next" value="/tokens?x=1"' in page
        assert not token or token not in page
    status, h, _ = post(server, "/signin", {"token": good, "next": "/tokens?x=1"}, {})
    assert status == 303 and h["location"] == "/tokens?x=1"
    # Signing in from another site stays refused.
    status, _h, _ = post(server, "/signin", {"token": good}, {"Origin": "http://evil.example"})
    assert status == 403


def test_the_admin_views_on_each_backend(db: Any) -> None:
    """What the pages show, through the functions they use, on SQLite and PostgreSQL."""
    with models.acting_as("ops", "127.0.0.1"):
        page, status = admin.create_token(db, {"name": "x y", "role": "user"})
        assert status == 400 and "a token name must be" in page["form_error"]
        page = admin.create_token(db, {"name": "ci", "role": "user", "expires": "2h"})
        assert page["new_token"]["name"] == "ci" and TOKEN_RE.fullmatch(page["new_token"]["token"])
        assert admin.revoke_token(db, "ci")[0] is not None
        assert "revoked already" in str(admin.revoke_token(db, "ci")[1])
        assert admin.set_secret(db, {"name": "PW", "value": "pw-value-9"}) == (
            "secret PW set",
            None,
        )
        assert admin.delete_secret(db, "PW") == ("secret PW removed", None)
    (listed,) = admin.tokens_page(db, "ci")["tokens"]
    assert listed["status"] == "revoked" and listed["is_you"] and "token" not in listed
    assert admin.secrets_page(db)["secrets"] == []
    got = admin.audit_page(db, {"target": "ci"})["entries"]
    assert [(e["actor"], e["action"]) for e in got] == [
        ("ops", "revoke_api_key"),
        ("ops", "create_api_key"),
    ]
    got = admin.audit_page(db, {"action": "set_secret", "target": "PW"})["entries"]
    assert [e["target"] for e in got] == ["PW"]
    assert admin.audit_page(db, {"action": "set_secret", "target": "ci"})["entries"] == []
    assert "pw-value-9" not in json.dumps(admin.audit_page(db, {}), default=str)
