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
import urllib.request
from collections.abc import Iterator
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
    assert ">Failed<" in body and ">Success<" in body


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
    # Counts by state for the mapped task (tags stripped): its own run and its children.
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body.split("Runs by state", 1)[1]))
    row = text.split("&lt;b&gt;risky&lt;/b&gt;", 1)[1].split("Failures", 1)[0]
    assert sorted(part.strip() for part in row.split(",")) == ["1 Failed", "1 Mapped", "2 Success"]


def test_json_api_matches_the_store(ui: str) -> None:
    failed_id, ok_id = _record_runs()
    status, kind, body = _get(f"{ui}api/runs")
    assert status == 200 and kind.startswith("application/json")
    listed = {r["id"]: r for r in json.loads(body)}
    assert set(listed) == {failed_id, ok_id}
    assert listed[failed_id]["state"] == "Failed"
    status, _kind, body = _get(f"{ui}api/runs/{failed_id}")
    data: dict[str, Any] = json.loads(body)
    with open_store() as store:
        expected = [t.to_dict() for t in store.task_runs(failed_id)]
    assert data["flow_run"]["id"] == failed_id
    assert data["task_runs"] == json.loads(json.dumps(expected))
    assert any("two is not allowed" in entry["message"] for entry in data["logs"])


RUNNING = "feed0001-0000-4000-8000-000000000001"
RESUMED = "feed0002-0000-4000-8000-000000000002"


def test_running_runs_refresh_and_long_runs_are_cut(ui: str) -> None:
    """A page with a running run on it refreshes itself, a finished one does not; a run
    page shows ``?limit`` task runs and links to the rest; a resumed run links back."""
    now = time.time()
    with _native.Recorder(str(store_path())) as rec:
        # Running in this very process: not taken for an interrupted run.
        rec.flow_run_started(RUNNING, "busy", "{}", now - 5, os.getpid(), socket.gethostname())
        rec.task_runs(RUNNING, [(0, 0, "src", None), (1, 1, "work", None)])
        rec.map_children(RUNNING, 1, "work", 2, 5)
        rec.flow_run_started(RESUMED, "busy", "{}", now - 1, resumed_from=RUNNING)
        rec.flow_run_ended(RESUMED, "Success", None, now)
    refresh = '<meta http-equiv="refresh"'
    _status, _kind, index = _get(ui)
    assert refresh in index
    assert re.search(r"<td class=\"num\">[0-9.]+ s\+</td>", index)  # still counting
    status, _kind, running = _get(f"{ui}runs/{RUNNING}?limit=3")
    assert status == 200 and refresh in running
    assert "<th>Task runs</th><td>7: " in running  # all seven task runs are counted...
    assert len(re.findall(r"<tr><td class=\"num\">\d+</td>", running)) == 3  # ...3 listed
    assert f'4 more: <a href="/runs/{RUNNING}?limit=0">show all</a>' in running
    _status, _kind, everything = _get(f"{ui}runs/{RUNNING}?limit=0")
    assert len(re.findall(r"<tr><td class=\"num\">\d+</td>", everything)) == 7
    assert "more:" not in everything
    status, _kind, resumed = _get(f"{ui}runs/{RESUMED}")
    assert status == 200 and refresh not in resumed
    assert f'Resumed from</th><td><a href="/runs/{RUNNING}"><code>{RUNNING[:8]}</code>' in resumed


def test_bad_requests_are_readable_errors(ui: str) -> None:
    _record_runs()
    status, _kind, body = _get(f"{ui}runs/feedbeef")
    assert status == 404 and "no flow run with id &#x27;feedbeef&#x27;" in body
    status, _kind, body = _get(f"{ui}api/runs/feedbeef")
    assert status == 404 and json.loads(body) == {"error": "no flow run with id 'feedbeef'"}
    status, _kind, body = _get(f"{ui}nowhere")
    assert status == 404 and "nothing at /nowhere" in body
    status, _kind, body = _get(f"{ui}?limit=lots")
    assert status == 400 and "limit must be a number" in body
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
