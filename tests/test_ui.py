"""The read-only web view of the run store (``ferroflow ui``), served on 127.0.0.1 by a
real server and read over HTTP."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ferroflow import Flow, _native, task
from ferroflow.store import open_store, store_path
from ferroflow.ui import RunStoreUI


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.headers["Content-Type"], r.read().decode("utf-8")
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode("utf-8")


@pytest.fixture
def ui() -> Iterator[str]:
    server = RunStoreUI(port=0)
    try:
        yield server.start()
    finally:
        server.close()


def _record_runs() -> tuple[str, str]:
    """A failed run (with a traceback, a task whose name needs escaping and a map) and a
    successful one; returns their ids."""

    @task(name="<b>risky</b>")
    def risky(x: int) -> int:
        if x == 2:
            raise ValueError("two is not allowed")
        return x

    @task
    def inc(x: int) -> int:
        return x + 1

    with Flow("ui-failing") as failing:
        risky.map([1, 2, 3])
    with Flow("ui-ok") as ok:
        inc(1)
    assert not failing.run().is_successful()
    assert ok.run().is_successful()
    with open_store() as store:
        runs = {r.flow_name: r.id for r in store.list_flow_runs()}
    return runs["ui-failing"], runs["ui-ok"]


def test_index_lists_runs_with_links(ui: str) -> None:
    failed_id, ok_id = _record_runs()
    status, kind, body = _get(ui)
    assert status == 200 and kind.startswith("text/html")
    assert f'href="/runs/{failed_id}"' in body and f'href="/runs/{ok_id}"' in body
    assert "ui-failing" in body and "ui-ok" in body
    assert "✗ Failed</span>" in body and "✓ Success</span>" in body


def test_run_page_shows_tasks_failures_and_escapes_names(ui: str) -> None:
    failed_id, _ = _record_runs()
    status, _kind, body = _get(f"{ui}runs/{failed_id[:8]}")
    assert status == 200
    assert failed_id in body
    # Names are shown, never interpreted as markup.
    assert "&lt;b&gt;risky&lt;/b&gt;" in body and "<b>risky</b>" not in body
    # The failure, with the traceback the store kept for it.
    assert "Failures (1)" in body
    assert "two is not allowed" in body and "Traceback (most recent call last)" in body
    # One row per task: the mapped task's own run and its children counted by state.
    status, _kind, text = _get(f"{ui}api/runs/{failed_id[:8]}")
    tasks = {t["name"]: t for t in json.loads(text)["tasks"]}
    risky = tasks["<b>risky</b>"]
    assert risky["own"] == "Mapped" and risky["children"] == {"Failed": 1, "Success": 2}
    assert risky["state"] == "Failed" and risky["total"] == 4
    row = body.split(f'<tr data-task="{risky["task"]}"', 1)[1].split("</tr>", 1)[0]
    assert '1 <span class="badge st-fail">✗ Failed</span>' in row
    assert '2 <span class="badge st-ok">✓ Success</span>' in row


def test_json_api_matches_the_store(ui: str) -> None:
    failed_id, ok_id = _record_runs()
    status, kind, body = _get(f"{ui}api/runs")
    assert status == 200 and kind.startswith("application/json")
    listed = {r["id"]: r for r in json.loads(body)["runs"]}
    assert set(listed) == {failed_id, ok_id}
    assert listed[failed_id]["state"] == "Failed"
    # Every page's JSON twin is the same data: /api/<path> and <path>?format=json.
    status, _kind, body = _get(f"{ui}api/runs/{failed_id}")
    data: dict[str, Any] = json.loads(body)
    assert json.loads(_get(f"{ui}runs/{failed_id}?format=json")[2])["tasks"] == data["tasks"]
    with open_store() as store:
        expected = store.task_runs(failed_id)
    assert data["flow_run"]["id"] == failed_id
    assert data["task_run_count"] == len(expected)
    assert sum(t["total"] for t in data["tasks"]) == len(expected)
    assert any("two is not allowed" in entry["message"] for entry in data["logs"])
    (failure,) = data["failures"]
    assert failure["map_index"] == 1 and failure["state"] == "Failed"
    assert "Traceback" in failure["errors"][0]


RUNNING = "feed0001-0000-4000-8000-000000000001"
RESUMED = "feed0002-0000-4000-8000-000000000002"


def test_a_running_run_is_live_and_children_are_paged(ui: str) -> None:
    """A running run's page polls its live JSON (a finished one does not); a mapped
    task is one row of counts, its children come 50 a page; a resumed run links back."""
    now = time.time()
    with _native.Recorder(str(store_path())) as rec:
        # Running in this very process: not taken for an interrupted run.
        rec.flow_run_started(RUNNING, "busy", "{}", now - 5, os.getpid(), socket.gethostname())
        rec.task_runs(RUNNING, [(0, 0, "src", None), (1, 1, "work", None)])
        rec.map_children(RUNNING, 1, "work", 2, 120)
        rec.flow_run_started(RESUMED, "busy", "{}", now - 1, resumed_from=RUNNING)
        rec.flow_run_ended(RESUMED, "Success", None, now)
    _status, _kind, runs = _get(f"{ui}runs")
    assert re.search(r"<td class=\"num\">[0-9.]+ s\+</td>", runs)  # still counting
    status, _kind, running = _get(f"{ui}runs/{RUNNING}")
    assert status == 200 and f'data-live="/runs/{RUNNING}/live"' in running
    assert "122: " in running  # every task run is counted...
    assert "task-run-table" not in running  # ...none listed until a task is chosen
    live = json.loads(_get(f"{ui}runs/{RUNNING}/live")[2])
    assert live["state"] == "Running" and not live["finished"]
    assert live["tasks"]["1"]["total"] == 121
    _status, _kind, page = _get(f"{ui}runs/{RUNNING}?task=1")
    rows = page.split('id="task-run-table"', 1)[1].split("</table>", 1)[0]
    assert rows.count('<tr><td class="num">') == 50
    assert f'href="/runs/{RUNNING}?task=1&amp;offset=50#task-runs" rel="next"' in page
    _status, _kind, last = _get(f"{ui}runs/{RUNNING}?task=1&offset=100")
    rows = last.split('id="task-run-table"', 1)[1].split("</table>", 1)[0]
    assert rows.count('<tr><td class="num">') == 21 and 'rel="next"' not in last
    assert "work[119]" in rows
    status, _kind, resumed = _get(f"{ui}runs/{RESUMED}")
    assert status == 200 and "data-live=" not in resumed
    assert f'<a href="/runs/{RUNNING}"><code>{RUNNING[:8]}</code></a>' in resumed


def test_a_big_map_is_drawn_once_and_timed_per_task(ui: str) -> None:
    """The schematic draws the graph's edges and a mapped task once with its counts;
    the timeline has one bar per task and one for all its children."""

    @task
    def src() -> list[int]:
        return list(range(300))

    @task
    def inc(x: int) -> int:
        return x + 1

    @task
    def total(xs: list[int]) -> int:
        return sum(xs)

    with Flow("ui-big") as flow:
        total(inc.map(src()))
    assert flow.run().is_successful()
    with open_store() as store:
        (run,) = store.list_flow_runs()
    _status, _kind, body = _get(f"{ui}runs/{run.id}")
    svg = body.split('id="schematic-svg"', 1)[1].split("</svg>", 1)[0]
    assert svg.count('class="node ') == 3 and svg.count('class="edge') == 2
    assert svg.count('class="edge mapped"') == 1
    assert "✓ 300</text>" in svg
    timeline = body.split('id="timeline-svg"', 1)[1].split("</svg>", 1)[0]
    # src, inc's 300 children, total (inc's own run, Mapped, never ran)
    assert timeline.count('class="bar ') == 3
    assert "inc \u00d7300" in timeline
    # The bars' spans: the children's earliest start and latest end, from the fold.
    from ferroflow.server.database import SqliteDatabase
    from ferroflow.server.ui import data

    with open_store() as store:
        children = [t for t in store.task_runs(run.id) if t.map_index is not None]
    db = SqliteDatabase(store_path())
    try:
        key = db.fetchone("SELECT key FROM flow_runs WHERE id = ?", (run.id,))
        assert key is not None
        spans = {
            (s["task_name"], s["mapped_child"]): s for s in data.task_run_spans(db, key["key"])
        }
    finally:
        db.close()
    got = spans[("inc", True)]
    assert got["runs"] == 300
    assert got["started"] == min(t.started for t in children if t.started is not None)
    assert got["ended"] == max(t.ended for t in children if t.ended is not None)
    assert spans[("inc", False)]["runs"] == 1


def test_bad_requests_are_readable_errors(ui: str) -> None:
    _record_runs()
    status, _kind, body = _get(f"{ui}runs/feedbeef")
    assert status == 404 and "no flow run with id &#39;feedbeef&#39;" in body
    status, _kind, body = _get(f"{ui}api/runs/feedbeef")
    assert status == 404 and json.loads(body) == {"error": "no flow run with id 'feedbeef'"}
    status, _kind, body = _get(f"{ui}nowhere")
    assert status == 404 and "nothing at /nowhere" in body
    status, _kind, body = _get(f"{ui}runs?limit=lots")
    assert status == 400 and "limit must be a whole number" in body
    failed_id, _ = _record_runs()
    status, _kind, body = _get(f"{ui}runs/{failed_id}?level=LOUD")
    assert status == 400 and "unknown log level &#39;LOUD&#39;" in body
    status, _kind, body = _get(f"{ui}api/runs/{failed_id}?task=99")
    assert status == 400 and json.loads(body)["error"].endswith("has no task 99")
    status, _kind, body = _get(f"{ui}runs/{failed_id}?offset=x&task=0")
    assert status == 400 and "offset must be a whole number" in body
    status, _kind, body = _get(f"{ui}api/runs?limit=-1")
    assert status == 400 and "limit" in json.loads(body)["error"]


def test_no_store_yet_and_a_damaged_store(ui: str) -> None:
    status, _kind, body = _get(ui)
    assert status == 404 and "no run store" in body
    path = store_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a database" * 100)
    status, _kind, body = _get(ui)
    assert status == 503 and str(path) in body
    assert path.read_bytes().startswith(b"this is not a database")  # left untouched


def test_the_command_serves_until_interrupted(tmp_path: Path) -> None:
    _record_runs()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferroflow", "ui", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "Serving the runs in" in line, line
        url = line.split(" at ", 1)[1].split(" ", 1)[0]
        assert url.startswith("http://127.0.0.1:")
        status, _kind, body = _get(url)
        assert status == 200 and "ui-failing" in body
    finally:
        proc.send_signal(2)  # Ctrl-C
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def test_a_taken_port_is_a_usage_error() -> None:
    with RunStoreUI(port=0) as taken:
        port = taken.url.rsplit(":", 1)[1].strip("/")
        out = subprocess.run(
            [sys.executable, "-m", "ferroflow", "ui", "--port", port],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 2
    assert f"cannot serve on 127.0.0.1:{port}" in out.stderr


# ------------------------------------------------------------- the server's UI and actions


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _post(
    url: str, fields: dict[str, str], headers: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """POST a form; (status, Location or "", body), redirects not followed."""
    data = urllib.parse.urlencode(fields).encode()
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST")
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(req, timeout=30) as r:
            return r.status, r.headers.get("Location", ""), r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Location", ""), err.read().decode()


@pytest.fixture
def served_app() -> Iterator[Callable[..., str]]:
    """Serve an ASGI app with uvicorn on 127.0.0.1 (a free port) in a thread."""
    import threading

    import uvicorn

    servers: list[tuple[Any, threading.Thread]] = []

    def serve(app: Any) -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        servers.append((server, thread))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    yield serve
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=30)


def _registered(db: Any) -> str:
    from ferroflow import Parameter
    from ferroflow.client import flow_structure
    from ferroflow.server import models

    @task
    def scale(n: int, factors: list[float], label: str) -> list[float]:
        return [n * f for f in factors]

    with Flow("scaler") as flow:
        scale(
            Parameter("n", type=int),
            Parameter("factors", default=[1.0], type=list),
            Parameter("label", default="x"),
        )
    models.create_project(db, "team")
    got = models.register_flow(
        db,
        project_name="team",
        name="scaler",
        structure=flow_structure(flow),
        storage={"type": "source", "source": "", "filename": "x.py", "flow_name": "scaler"},
    )
    return str(got["id"])


def test_the_server_serves_the_ui_and_its_run_form_validates(
    served_app: Callable[..., str],
) -> None:
    from ferroflow.server import models
    from ferroflow.server.app import create_app
    from ferroflow.server.database import SqliteDatabase

    db = SqliteDatabase(store_path())
    try:
        flow_id = _registered(db)
        url = served_app(create_app(db))
        status, _kind, body = _get(f"{url}/")
        assert status == 200 and "Dashboard" in body
        status, _kind, body = _get(f"{url}/flows/{flow_id}")
        assert status == 200 and 'name="param.n"' in body and "(int, required)" in body
        flows = json.loads(_get(f"{url}/api/flows")[2])
        assert flows["projects"] == [
            {
                "name": "team",
                "flows": [{"id": flow_id, "name": "scaler", "version": 1, "schedule": None}],
            }
        ]
        run_url = f"{url}/flows/{flow_id}/run"
        # Each bad value is a readable error naming the parameter; nothing is created.
        for fields, message in [
            ({"param.n": "three"}, "parameter &#39;n&#39; must be int"),
            ({"param.n": ""}, "parameter &#39;n&#39; is required"),
            ({"param.n": "2.5"}, "parameter &#39;n&#39; must be int"),
            ({"param.n": "2", "param.factors": "7"}, "parameter &#39;factors&#39; must be list"),
        ]:
            status, _loc, body = _post(run_url, fields)
            assert status == 400 and message in body, (fields, body)
            assert 'class="field-error"' in body
        assert models.list_flow_runs(db, flow_id=flow_id) == []
        # Good values, coerced as flow.run coerces them.
        status, location, _body = _post(
            run_url, {"param.n": "3", "param.factors": "[0.5, 2]", "param.label": "big"}
        )
        assert status == 303 and location.startswith("/runs/")
        run_id = location.split("/runs/", 1)[1].split("?", 1)[0]
        run = models.get_flow_run(db, run_id)
        assert json.loads(run["parameters"]) == {"n": 3, "factors": [0.5, 2.0], "label": "big"}
        assert run["state"] == "Scheduled"
        status, _kind, body = _get(f"{url}{location}")
        assert "flow run created" in body and "○ Scheduled" in body
        # The JSON twin of the form: errors as data.
        status, _loc, body = _post(run_url + "?format=json", {"param.n": "x"})
        assert status == 400 and "n" in json.loads(body)["errors"]
        # Actions: cancel a run that has not started, then again; resume it; approve
        # something that is not paused; a schedule the flow does not have.
        status, location, _ = _post(f"{url}/runs/{run_id}/cancel", {})
        assert status == 303 and "notice=flow+run+cancelled" in location
        assert models.get_flow_run(db, run_id)["state"] == "Cancelled"
        _status, location, _ = _post(f"{url}/runs/{run_id}/cancel", {})
        assert "already+finished" in location
        body = _get(url + location)[2]
        assert "already finished (Cancelled)" in body and 'role="alert"' in body
        _status, location, _ = _post(f"{url}/runs/{run_id}/resume", {})
        assert "queued+again" in location
        assert models.get_flow_run(db, run_id)["state"] == "Scheduled"
        _status, location, _ = _post(f"{url}/runs/{run_id}/task-runs/0/approve", {})
        assert "has+no+task+run+0" in location
        _status, location, _ = _post(f"{url}/flows/{flow_id}/schedule", {"active": "1"})
        assert "has+no+schedule" in location
        # A form posted from another site is refused (by the server's guard, before the
        # UI's own check); so is a GET of an action.
        status, _loc, body = _post(
            f"{url}/runs/{run_id}/cancel", {}, {"Origin": "http://elsewhere.example"}
        )
        assert status == 403 and "from another origin (http://elsewhere.example)" in body
        assert _get(f"{url}/runs/{run_id}/cancel")[0] == 404
        # The API and health routes are still the server's.
        assert json.loads(_get(f"{url}/health")[2])["status"] == "ok"
    finally:
        db.close()


def test_a_read_only_ui_refuses_actions(served_app: Callable[..., str]) -> None:
    from ferroflow.ui import create_ui_app

    failed_id, _ = _record_runs()
    app = create_ui_app(read_only=True)
    try:
        url = served_app(app)
        status, _kind, body = _get(f"{url}/runs/{failed_id}")
        assert status == 200 and "This UI is read-only." in body and 'id="cancel"' not in body
        status, _loc, body = _post(f"{url}/runs/{failed_id}/resume", {})
        assert status == 403 and "read-only" in body
        status, _loc, body = _post(f"{url}/runs/{failed_id}/resume?format=json", {})
        assert status == 403 and json.loads(body) == {
            "error": "this UI is read-only: actions are turned off"
        }
    finally:
        app.state.store.close()


def test_a_local_run_is_resumed_where_it_ran(ui: str) -> None:
    failed_id, _ = _record_runs()
    status, location, _ = _post(f"{ui}runs/{failed_id}/resume", {})
    assert status == 303
    body = _get(ui.rstrip("/") + location)[2]
    assert "is a local run: resume it where it ran" in body


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The server's database on each backend (a fresh PostgreSQL database, or the run
    store at FERROFLOW_HOME)."""
    from ferroflow.server.database import open_database

    if request.param == "sqlite":
        database = open_database()
    else:
        pg = request.getfixturevalue("postgres_server")
        database = open_database(pg.create_database())
    try:
        yield database
    finally:
        database.close()


def test_every_page_and_its_json_twin_on_both_backends(
    backend: Any, served_app: Callable[..., str]
) -> None:
    """A run copied into the server's database as the ingest stores it (its row, its
    journal blobs, its logs), a registered flow with a scheduled run, an agent: every
    page answers, with the same data as its JSON twin."""
    import sqlite3

    from ferroflow.server import models
    from ferroflow.server.app import create_app

    failed_id, _ok_id = _record_runs()
    local = sqlite3.connect(store_path())
    key, started, ended = local.execute(
        "SELECT key, started, ended FROM flow_runs WHERE id = ?", (failed_id,)
    ).fetchone()
    blobs = [
        bytes(b) for (b,) in local.execute("SELECT data FROM journal WHERE flow_run = ?", (key,))
    ]
    local.close()
    copied = "c0bb1ed0-0000-4000-8000-000000000001"
    with backend.transaction():
        backend.execute(
            "INSERT INTO flow_runs(id, flow_name, state, started, ended) "
            "VALUES (?, 'ui-failing', 'Failed', ?, ?)",
            (copied, started, ended),
        )
        row = backend.fetchone("SELECT key FROM flow_runs WHERE id = ?", (copied,))
        for b in blobs:
            backend.execute("INSERT INTO journal(flow_run, data) VALUES (?, ?)", (row["key"], b))
    models.write_run_logs(
        backend,
        [{"flow_run_id": copied, "task_run_id": 3, "level": 40, "message": "Traceback: two!"}],
    )
    flow_id = _registered(backend)
    scheduled = models.create_flow_run(
        backend, flow_id=flow_id, parameters={"n": 1}, scheduled_start_time=time.time() + 600
    )
    models.register_agent(backend, "agent-7", ["x"])
    url = served_app(create_app(backend))
    pages = {
        "/": lambda d: (
            d["upcoming"][0]["id"] == scheduled["id"]
            and d["agents"][0]["name"] == "agent-7"
            and sum(x["failed"] for x in d["failures"]["by_day"]) == d["failures"]["last_week"]
        ),
        "/runs": lambda d: {r["id"] for r in d["runs"]} >= {copied, scheduled["id"]},
        f"/runs/{copied}": lambda d: (
            d["failure_count"] == 1
            and d["task_run_count"] == 5
            and d["failures"][0]["errors"] == ["Traceback: two!"]
        ),
        f"/runs/{copied}?task=1&state=Failed": lambda d: (
            [r["map_index"] for r in d["selected"]["runs"]] == [1]
        ),
        f"/runs/{copied}?q=TWO&level=ERROR": lambda d: (
            [x["message"] for x in d["logs"]] == ["Traceback: two!"]
        ),
        f"/runs/{copied}/task-runs/3": lambda d: d["task_run"]["state"] == "Failed",
        f"/runs/{scheduled['id']}": lambda d: d["flow_run"]["state"] == "Scheduled",
        "/flows": lambda d: d["projects"][0]["flows"][0]["id"] == flow_id,
        f"/flows/{flow_id}": lambda d: (
            {p["name"] for p in d["parameters"]} == {"factors", "label", "n"}
        ),
        "/local-flows/ui-failing": lambda d: copied in {r["id"] for r in d["recent"]},
        "/agents": lambda d: [a["name"] for a in d["agents"]] == ["agent-7"],
    }
    for path, check in pages.items():
        status, kind, html = _get(url + path)
        assert status == 200 and kind.startswith("text/html"), (path, html[:500])
        status, kind, body = _get(url + "/api" + (path if path != "/" else "/dashboard"))
        assert status == 200 and kind.startswith("application/json"), (path, body[:500])
        data = json.loads(body)
        assert check(data), (path, data)
        sep = "&" if "?" in path else "?"
        twin = json.loads(_get(f"{url}{path}{sep}format=json")[2])
        assert set(twin) == set(data) and check(twin), path  # (times of live runs move)


def test_a_flow_of_many_tasks_pages_its_task_table(ui: str) -> None:
    @task
    def inc(x: int) -> int:
        return x + 1

    with Flow("ui-wide") as flow:
        for i in range(450):
            inc(i)
    assert flow.run().is_successful()
    with open_store() as store:
        (run,) = store.list_flow_runs()
    data = json.loads(_get(f"{ui}api/runs/{run.id}")[2])
    assert len(data["tasks"]) == 200 and data["task_matches"] == 450
    assert data["task_next"] == 200 and data["task_prev"] is None
    assert data["schematic"]["mode"] == "compact"  # over MAX_NODES: a square per task
    assert len(data["schematic"]["nodes"]) == 450
    last = json.loads(_get(f"{ui}api/runs/{run.id}?task_offset=400")[2])
    assert len(last["tasks"]) == 50 and last["task_next"] is None and last["task_prev"] == 200
    body = _get(f"{ui}runs/{run.id}?task_offset=200")[2]
    assert "201\u2013400 of 450 matching" in body and 'id="tasks-next"' in body
    assert body.count('class="node st-ok" data-task=') == 450


def test_cancel_signals_only_the_process_that_runs_the_run(ui: str) -> None:
    """A local run is cancelled with Ctrl-C to its process (the browser tests show it
    stop), never to this process, nor to a process that started after the run (its pid
    was reused)."""
    now = time.time()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with _native.Recorder(str(store_path())) as rec:
            rec.flow_run_started(RUNNING, "busy", "{}", now - 5, os.getpid(), socket.gethostname())
            rec.flow_run_started(
                RESUMED, "old", "{}", now - 3600, sleeper.pid, socket.gethostname()
            )
        _status, location, _ = _post(f"{ui}runs/{RUNNING}/cancel", {})
        assert "own+process" in location
        _status, location, _ = _post(f"{ui}runs/{RESUMED}/cancel", {})
        assert "is+gone" in location
        assert sleeper.poll() is None  # left alone
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_flow_page_turns_its_schedule_off_and_on(served_app: Callable[..., str]) -> None:
    from datetime import datetime, timedelta, timezone

    from ferroflow.client import flow_structure
    from ferroflow.schedules import IntervalSchedule
    from ferroflow.server import models
    from ferroflow.server.app import create_app
    from ferroflow.server.database import SqliteDatabase
    from ferroflow.server.services import Scheduler

    @task
    def tick() -> int:
        return 1

    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with Flow(
        "ticker", schedule=IntervalSchedule(start_date=start, interval=timedelta(hours=1))
    ) as flow:
        tick()
    db = SqliteDatabase(store_path())
    try:
        models.create_project(db, "team")
        flow_id = models.register_flow(
            db,
            project_name="team",
            name="ticker",
            structure=flow_structure(flow),
            storage={"type": "source", "source": "", "filename": "x.py", "flow_name": "ticker"},
        )["id"]
        Scheduler(db).run_once()
        url = served_app(create_app(db))
        data = json.loads(_get(f"{url}/api/flows/{flow_id}")[2])
        assert data["schedule"]["active"] is True and len(data["upcoming"]) == 10
        body = _get(f"{url}/flows/{flow_id}")[2]
        assert '<strong id="schedule-state">on</strong>' in body
        status, location, _ = _post(f"{url}/flows/{flow_id}/schedule", {"active": "0"})
        assert status == 303 and "schedule+turned+off" in location
        data = json.loads(_get(f"{url}/api/flows/{flow_id}")[2])
        assert data["schedule"]["active"] is False and data["upcoming"] == []
        _post(f"{url}/flows/{flow_id}/schedule", {"active": "1"})
        Scheduler(db).run_once()
        data = json.loads(_get(f"{url}/api/flows/{flow_id}")[2])
        assert data["schedule"]["active"] is True and len(data["upcoming"]) == 10
        assert json.loads(_get(f"{url}/api/dashboard")[2])["upcoming"][0]["flow_name"] == "ticker"
        # The backfill form: 2026-01-01 and -02 at every hour, then again (nothing new).
        assert 'id="backfill-form"' in _get(f"{url}/flows/{flow_id}")[2]
        form = {"start": "2026-01-01", "end": "2026-01-02", "max_concurrent": "2"}
        status, location, _ = _post(f"{url}/flows/{flow_id}/backfill", form)
        assert status == 303 and "48+run%28s%29+created" in location, location
        status, location, _ = _post(f"{url}/flows/{flow_id}/backfill", form)
        assert "0+run%28s%29+created%2C+48+already" in location, location
        for bad, needle in [
            ({"start": "soon", "end": "2026-01-02"}, "start"),
            ({"start": "2026-01-03", "end": "2026-01-02"}, "end+is+before+its+start"),
            ({**form, "max_concurrent": "two"}, "whole+number"),
            ({**form, "max_concurrent": "0"}, "max-concurrent+must+be"),
        ]:
            status, location, _ = _post(f"{url}/flows/{flow_id}/backfill", bad)
            assert status == 303 and "error=" in location and needle in location, location
    finally:
        db.close()
