"""The run page at scale: a big run's logs read by index (schema version 8), the
timeline kept live by the polled JSON, and the schematic of a flow of many tasks.
A real store in this test's FERROFLOW_HOME, a real UI server on 127.0.0.1, and for the
live timeline a real flow run in a process of its own watched by Chromium."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ferroflow import _native
from ferroflow.server import models
from ferroflow.server.database import SqliteDatabase
from ferroflow.store import open_store, store_path
from test_ui import ui

__all__ = ["ui"]  # a fixture, used by name

CHROMIUM = "/usr/bin/chromium"
WAIT = 60_000  # ms: a hang guard for what the page must come to show, not a speed check


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, r.read().decode("utf-8")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8")


LOGGED = "feed0100-0000-4000-8000-000000000001"


def _record_logged_run(lines: list[tuple[int | None, int, float, str]]) -> None:
    """A finished run of one task whose lines are ``lines`` (in the order written)."""
    now = time.time()
    with _native.Recorder(str(store_path())) as rec:
        rec.flow_run_started(LOGGED, "logged", "{}", now - 5)
        rec.task_runs(LOGGED, [(0, 0, "work", None)])
        rec.logs(LOGGED, lines)
        rec.flow_run_ended(LOGGED, "Success", None, now)


def _lines(n: int) -> list[tuple[int | None, int, float, str]]:
    """``n`` lines: every 97th a warning, every 301st an error, task runs 0 to 4 and the
    flow itself, and pairs of lines at one instant (ties kept in the order written)."""
    out: list[tuple[int | None, int, float, str]] = []
    for i in range(n):
        level = 40 if i % 301 == 5 else 30 if i % 97 == 3 else 20 if i % 2 else 10
        run = None if i % 6 == 5 else i % 5
        # Written out of time order in places (a batch from another thread, later).
        at = 1000.0 + (i // 2) * 0.5 + (3.0 if i % 500 == 499 else 0.0)
        out.append((run, level, at, f"line {i} {'Needle' if i % 400 == 7 else 'hay'}"))
    return out


def _expected(
    lines: list[tuple[int | None, int, float, str]],
    *,
    task_run_id: int | None = None,
    min_level: int = 0,
    search: str | None = None,
    since: float | None = None,
) -> list[str]:
    """The messages the log query must give: filtered, by time then order written."""
    keep = [
        (at, i, msg)
        for i, (run, level, at, msg) in enumerate(lines)
        if (task_run_id is None or run == task_run_id)
        and level >= min_level
        and (search is None or search.lower() in msg.lower())
        and (since is None or at >= since)
    ]
    return [msg for _at, _i, msg in sorted(keep)]


def _plans(db: SqliteDatabase, run: Any) -> list[str]:
    """The query plans of the log queries ``run()`` makes (SQLite's own trace of the
    statements it ran, each explained again)."""
    ran: list[str] = []
    db._conn.set_trace_callback(ran.append)
    try:
        run()
    finally:
        db._conn.set_trace_callback(None)
    con = sqlite3.connect(store_path())
    try:
        return [
            " | ".join(row[-1] for row in con.execute("EXPLAIN QUERY PLAN " + sql))
            for sql in ran
            if sql.lstrip().upper().startswith("SELECT") and "FROM logs" in sql
        ]
    finally:
        con.close()


def test_log_pages_filters_search_and_follow_read_an_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every form of the log query gives the lines in time order (ties in the order
    written) and reads one of the version-8 indexes: no sort of the run's lines, but
    for a narrow level filter (the few warnings and errors, sorted)."""
    lines = _lines(3000)
    _record_logged_run(lines)
    db = SqliteDatabase(store_path())
    try:
        cases: list[tuple[dict[str, Any], dict[str, Any], str]] = [
            ({}, {}, "logs_by_time"),
            ({"offset": 1500}, {}, "logs_by_time"),
            ({"min_level": 20}, {"min_level": 20}, "logs_by_time"),
            ({"min_level": 30}, {"min_level": 30}, "logs_by_level"),
            ({"min_level": 40}, {"min_level": 40}, "logs_by_level"),
            ({"search": "needle"}, {"search": "needle"}, "logs_by_time"),
            ({"search": "NEEDLE", "min_level": 10}, {"search": "needle"}, "logs_by_time"),
            ({"task_run_id": 3}, {"task_run_id": 3}, "logs_by_task_run"),
            ({"task_run_id": 3, "min_level": 40}, {"task_run_id": 3, "min_level": 40}, ""),
            ({"since": 1500.0}, {"since": 1500.0}, "logs_by_time"),
            ({"since": 1500.0, "offset": 3}, {"since": 1500.0}, "logs_by_time"),
            ({"since": 1500.0, "min_level": 40}, {"since": 1500.0, "min_level": 40}, ""),
        ]
        for args, filters, index in cases:
            offset = args.get("offset", 0)
            want = _expected(lines, **filters)[offset : offset + 200]
            got: list[dict[str, Any]] = []

            def read(args: dict[str, Any] = args, got: list[dict[str, Any]] = got) -> None:
                got.extend(models.list_logs(db, LOGGED, limit=200, **args))

            plans = _plans(db, read)
            assert [g["message"] for g in got] == want, args
            page = plans[-1]  # the page itself (a narrow level filter counts first)
            index = index or ("logs_by_task_run" if "task_run_id" in args else "logs_by_level")
            assert f"USING INDEX {index} " in page, (args, page)
            if index == "logs_by_level":
                assert "TEMP B-TREE" in page  # the few lines found are sorted
            else:
                assert "TEMP B-TREE" not in page, (args, page)
        # More warnings than a narrow filter reads by level: walked in time order.
        monkeypatch.setattr(models, "NARROW_LEVEL", 10)
        got = []
        plans = _plans(db, lambda: got.extend(models.list_logs(db, LOGGED, min_level=30)))
        assert [g["message"] for g in got] == _expected(lines, min_level=30)[:100]
        assert "USING INDEX logs_by_time " in plans[-1] and "TEMP B-TREE" not in plans[-1]
    finally:
        db.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_every_log_query_form_gives_the_same_lines_on_both_backends(
    backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index hints (a literal level, ``+level``, SQLite's INDEXED BY) change how a
    page is read, never which lines: the same answers on SQLite and PostgreSQL, for a
    narrow level filter and (fewer lines read by level) a wide one."""
    from ferroflow.server.database import open_database

    if backend == "sqlite":
        db = open_database()
    else:
        db = open_database(request.getfixturevalue("postgres_server").create_database())
    try:
        db.execute(
            "INSERT INTO flow_runs(id, flow_name, parameters, state, started) "
            "VALUES (?, 'logged', '{}', 'Success', 1.0)",
            (LOGGED,),
        )
        lines = _lines(1200)
        models.write_run_logs(
            db,
            [
                {"flow_run_id": LOGGED, "task_run_id": r, "level": lv, "timestamp": at}
                | {"message": m}
                for r, lv, at, m in lines
            ],
        )
        forms: list[dict[str, Any]] = [
            {},
            {"offset": 700},
            {"min_level": 20},
            {"min_level": 30},
            {"min_level": 40},
            {"search": "NEEDLE"},
            {"task_run_id": 2, "min_level": 30},
            {"since": 1250.0, "offset": 2},
            {"since": 1250.0, "min_level": 30},
        ]
        for narrow in (models.NARROW_LEVEL, 5):
            monkeypatch.setattr(models, "NARROW_LEVEL", narrow)
            for form in forms:
                offset = form.get("offset", 0)
                filters = {k: v for k, v in form.items() if k != "offset"}
                if "search" in filters:
                    filters["search"] = filters["search"].lower()
                want = _expected(lines, **filters)[offset : offset + 200]
                got = models.list_logs(db, LOGGED, limit=200, **form)
                assert [g["message"] for g in got] == want, (backend, narrow, form)
    finally:
        db.close()


def test_bad_follow_input_is_a_readable_error(ui: str) -> None:
    _record_logged_run(_lines(10))
    for query, message in [
        ("log_since=soon", "log_since must be a number, not 'soon'"),
        ("log_since=nan", "log_since must be a finite number"),
        ("log_since=1&level=LOUD", "unknown log level 'LOUD'"),
        ("log_offset=-1", "log_offset must be 0 or more"),
    ]:
        status, body = _get(f"{ui}runs/{LOGGED}/live?{query}")
        assert status == 400 and message in body, (query, body)


RUNNING = "feed0101-0000-4000-8000-000000000001"


def _running_map(rid: str, children: int) -> None:
    """A run in this very process (so not taken for an interrupted one): ``src`` done,
    a map of ``children`` whose children have all started and half ended, and its
    lines: 3 at one instant, then one more."""
    now = time.time()
    with _native.Recorder(str(store_path())) as rec:
        rec.flow_run_started(rid, "busy", "{}", now - 10, os.getpid(), socket.gethostname())
        rec.task_runs(rid, [(0, 0, "src", None), (1, 1, "work", None)])
        rec.transition(rid, 0, "Running", at=now - 9)
        rec.transition(rid, 0, "Success", at=now - 8)
        rec.transition(rid, 1, "Mapped", at=now - 8)
        rec.map_children(rid, 1, "work", 2, children)
        for i in range(children):
            rec.transition(rid, 2 + i, "Running", at=now - 7)
            if i % 2:
                rec.transition(rid, 2 + i, "Success", at=now - 6)
        rec.logs(rid, [(0, 20, now - 9, f"same instant {i}") for i in range(3)])
        rec.logs(rid, [(None, 20, now - 5, "later")])


def test_the_live_json_carries_the_timeline_and_follows_logs_by_time(ui: str) -> None:
    """The JSON a live page polls has the timeline (one bar per task; a mapped task's
    children are one bar, so its size does not grow with them; a running bar reaches
    now) and the log lines after the ones the page shows, from the time of its last."""
    _running_map(RUNNING, 20_000)
    status, live_text = _get(f"{ui}runs/{RUNNING}/live")
    assert status == 200
    live = json.loads(live_text)
    bars = live["timeline"]["bars"]
    assert [b["label"] for b in bars] == ["src", "work \u00d720000"]
    right = max(t["x"] for t in live["timeline"]["ticks"])
    children = bars[1]
    assert children["cls"] == "run"
    assert abs(children["x"] + children["w"] - right) < 1  # still running: up to now
    assert bars[0]["x"] + bars[0]["w"] < right - 100  # src ended long before
    # The page follows from its last line's time, the one line of that instant shown.
    _status, page = _get(f"{ui}runs/{RUNNING}")
    table = page.split('id="log-table"', 1)[1].split(">", 1)[0]
    assert 'data-follow="4"' in table and 'data-skip="1"' in table
    since = table.split('data-since="', 1)[1].split('"', 1)[0]
    # Nothing new yet; then two more lines, of which the page gets exactly those.
    _status, body = _get(f"{ui}runs/{RUNNING}/live?log_since={since}&log_offset=1")
    assert json.loads(body)["logs"] == []
    with _native.Recorder(str(store_path())) as rec:
        rec.logs(RUNNING, [(None, 20, float(since), "also then"), (None, 40, 2e9, "new")])
    _status, body = _get(f"{ui}runs/{RUNNING}/live?log_since={since}&log_offset=1")
    assert [x["message"] for x in json.loads(body)["logs"]] == ["also then", "new"]
    # (a page filtered to errors shows none of that instant: it skips none)
    _status, body = _get(f"{ui}runs/{RUNNING}/live?log_since={since}&log_offset=0&level=ERROR")
    assert [x["message"] for x in json.loads(body)["logs"]] == ["new"]
    # As small with 20,000 children as with 2 (the bar's label aside).
    size = len(live_text)
    other = "feed0102-0000-4000-8000-000000000001"
    _running_map(other, 2)
    _status, small = _get(f"{ui}runs/{other}/live")
    assert len(json.loads(small)["timeline"]["bars"]) == 2
    assert abs(len(small) - size) < 200


LIVE_FLOW = """
import sys, time
from pathlib import Path
from ferroflow import Flow, task

@task
def first() -> int:
    return 1

@task
def wait_for(x: int, path: str) -> int:
    while not Path(path).exists():
        time.sleep(0.02)
    return x

@task
def after(x: int) -> int:
    return x + 1

with Flow("live-timeline") as flow:
    after(wait_for(first(), sys.argv[1]))
assert flow.run().is_successful()
"""


def test_the_timeline_of_an_open_run_page_gains_bars_without_a_reload(
    ui: str, tmp_path: Path
) -> None:
    """A flow runs in a process of its own; its page, opened while a task waits, grows
    that task's bar, then gains the next task's bar, without a reload."""
    from playwright.sync_api import expect, sync_playwright

    script, go = tmp_path / "live_flow.py", tmp_path / "go"
    script.write_text(LIVE_FLOW)
    proc = subprocess.Popen([sys.executable, str(script), str(go)])
    try:
        deadline = time.monotonic() + 60
        while True:  # until the UI shows the run with wait_for running
            with open_store() as store:
                runs = store.list_flow_runs(10)
            run_id = next((r.id for r in runs if r.flow_name == "live-timeline"), None)
            if run_id is not None:
                live = json.loads(_get(f"{ui}runs/{run_id}/live")[1])
                if any(t["state"] == "Running" for t in live["tasks"].values()):
                    break
            assert time.monotonic() < deadline, "the run did not start"
            time.sleep(0.05)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{ui}runs/{run_id}")
            page.evaluate("window.__same_page = true")
            labels = page.locator("#timeline-svg text.lbl")
            expect(labels).to_have_text(["first", "wait_for"])
            bar = page.locator("#timeline-svg rect.bar").nth(1)
            expect(bar).to_have_class("bar st-run")
            # While it runs, the axis reaches further and the running bar with it.
            last_tick = page.locator("#timeline-svg text.tick").last
            shown = last_tick.text_content()
            expect(last_tick).not_to_have_text(shown or "", timeout=WAIT)
            right = page.evaluate(
                "Math.max(...[...document.querySelectorAll('#timeline-svg line.grid-line')]"
                ".map(l => Number(l.getAttribute('x1'))))"
            )
            ends = page.evaluate(
                "(() => { const b = document.querySelectorAll('#timeline-svg rect.bar')[1];"
                " return Number(b.getAttribute('x')) + Number(b.getAttribute('width')); })()"
            )
            assert abs(ends - right) < 1
            go.touch()
            expect(page.locator("h1 [data-run-state]")).to_have_text("✓ Success", timeout=WAIT)
            expect(labels).to_have_text(["first", "wait_for", "after"], timeout=WAIT)
            expect(page.locator("#timeline-svg rect.bar").nth(2)).to_have_class("bar st-ok")
            # Redrawn with the hatching that failed bars are filled with.
            expect(page.locator("#timeline-svg pattern#hatch")).to_have_count(1)
            # The bars still link to their task.
            href = page.locator("#timeline-svg a").nth(2).get_attribute("href") or ""
            assert f"/runs/{run_id}?task=" in href and href.endswith("#task-runs")
            assert page.evaluate("window.__same_page") is True
            browser.close()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _chain(name: str, n: int, extra: int = 0) -> str:
    """Run a flow of a chain of ``n`` ``inc`` (and ``extra`` independent ``dbl``);
    returns the run's id."""
    from ferroflow import Flow, task

    @task
    def inc(x: int) -> int:
        return x + 1

    @task
    def dbl(x: int) -> int:
        return 2 * x

    with Flow(name) as flow:
        x = inc(0)
        for _ in range(n - 1):
            x = inc(x)
        for i in range(extra):
            dbl(i)
    assert flow.run().is_successful()
    with open_store() as store:
        return next(r.id for r in store.list_flow_runs(10) if r.flow_name == name)


def test_a_chain_of_a_thousand_tasks_is_drawn_task_by_task(ui: str) -> None:
    """Past the full schematic's size, every task is a small square in its layer (the
    layers wrapped into bands), every edge drawn, each square linking to its task."""
    run_id = _chain("chain-1000", 1000)
    status, data_text = _get(f"{ui}api/runs/{run_id}")
    assert status == 200
    s = json.loads(data_text)["schematic"]
    assert s["mode"] == "compact" and len(s["nodes"]) == 1000
    assert s["path"].count("M") == 999 and s["edges_cut"] == 0
    # One layer per task: the chain runs left to right and wraps into bands below.
    ys = sorted({n["y"] for n in s["nodes"]})
    assert len(ys) == -(-1000 // 60)
    by_task = {n["task"]: n for n in s["nodes"]}
    assert by_task[1]["x"] > by_task[0]["x"] and by_task[60]["y"] > by_task[59]["y"]
    _status, page = _get(f"{ui}runs/{run_id}")
    svg = page.split('id="schematic-svg"', 1)[1].split("</svg>", 1)[0]
    assert svg.count("<a href=") == 1000 and svg.count("<title>inc: ✓ Success</title>") == 1000
    assert '<a href="?task=500#task-runs" class="node st-ok" data-task="500"><use href="#sq"' in svg
    status, task_page = _get(f"{ui}runs/{run_id}?task=500")
    assert status == 200 and '<h2 id="task-runs">Runs of inc</h2>' in task_page


def test_a_bigger_flow_is_condensed_to_groups_linking_to_their_tasks(ui: str) -> None:
    """Past the compact size, one node per name in a band of layers, with how many
    tasks and their states; a group links to the task table filtered by its name."""
    from ferroflow.server.ui import svg as svg_module

    n_inc, n_dbl = 2000, svg_module.COMPACT_NODES - 2000 + 100
    run_id = _chain("chain-big", n_inc, extra=n_dbl)
    s = json.loads(_get(f"{ui}api/runs/{run_id}")[1])["schematic"]
    assert s["mode"] == "condensed" and s["groups_cut"] == 0
    assert sum(n["count"] for n in s["nodes"]) == n_inc + n_dbl
    names = {n["full_name"] for n in s["nodes"]}
    assert names == {"inc", "dbl"}
    # The independent dbl are all in the first band; the chain spreads over the bands.
    dbl = [n for n in s["nodes"] if n["full_name"] == "dbl"]
    assert len(dbl) == 1 and dbl[0]["count"] == n_dbl and dbl[0]["label"] == f"✓ {n_dbl}"
    inc = [n for n in s["nodes"] if n["full_name"] == "inc"]
    assert len(inc) == 64 and len({(n["x"], n["y"]) for n in inc}) == 64
    # Six bands across, then the next six below (a band's groups one above the other).
    # (band 0 holds dbl above inc; every later band holds inc alone)
    assert len({n["x"] for n in inc}) == 6 and len({n["y"] for n in inc[1:]}) == -(-64 // 6)
    assert len(s["edges"]) == 63  # the chain, band to band
    _status, page = _get(f"{ui}runs/{run_id}")
    assert f"{n_inc + n_dbl} tasks, too many to draw one by one" in page
    link = f'<a href="/runs/{run_id}?name=dbl#tasks" class="node group st-ok"'
    assert link in page
    _status, table = _get(f"{ui}runs/{run_id}?name=dbl")
    assert f"{n_dbl} of {n_inc + n_dbl} tasks" in table


def test_clicking_a_square_of_a_compact_schematic_opens_its_task(ui: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    run_id = _chain("chain-click", 600)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{ui}runs/{run_id}")
            square = page.locator('#schematic-svg a.node[data-task="321"]')
            expect(square).to_have_count(1)
            square.click()
            expect(page).to_have_url(f"{ui}runs/{run_id}?task=321#task-runs")
            expect(page.locator("#task-run-table")).to_contain_text("inc")
        finally:
            browser.close()


def _tasks(n: int, name: str, first: int = 0) -> list[dict[str, Any]]:
    """``n`` successful tasks named ``name`` as the run page has them, ids from ``first``."""
    return [
        {"task": first + i, "name": name, "cls": "ok", "state": "Success", "glyph": "✓"}
        | {"mapped": False, "by_state": [], "children": {}, "own": "Success"}
        for i in range(n)
    ]


def test_long_task_names_or_unknown_edges_condense_the_schematic_early() -> None:
    """A compact schematic is bounded in bytes, not only in tasks: tasks with long names
    are condensed sooner; without edges (not recorded) the groups are by name alone."""
    from ferroflow.server.ui import svg

    chain = [(i, i + 1, False) for i in range(1999)]
    assert svg.schematic(_tasks(2000, "inc"), chain)["mode"] == "compact"
    long = svg.schematic(_tasks(2000, "a_task_with_a_rather_long_name_" * 2), chain)
    assert long["mode"] == "condensed" and len(long["nodes"]) == 64
    assert svg.schematic(_tasks(svg.COMPACT_NODES + 1, "inc"), None)["mode"] == "condensed"
    unknown = svg.schematic(_tasks(1500, "inc") + _tasks(1500, "dbl", 1500), None)
    assert [(n["full_name"], n["count"]) for n in unknown["nodes"]] == [
        ("dbl", 1500),
        ("inc", 1500),
    ]
    assert unknown["edges"] == [] and not unknown["edges_known"]
