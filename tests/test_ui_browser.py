"""The UI in a real browser: Playwright driving Debian's Chromium (``/usr/bin/chromium``,
``make sysdeps``; never ``playwright install``) against a real ``ferroflow server start``
on 127.0.0.1 whose store holds real runs (success, failed with retries, mapped with
failed children, paused, running). Each test saves a screenshot of every page it opens
under its temp dir; the run page's is also written to ``docs/run-page.png`` (the
README shows it) when that file is missing or ``FERROFLOW_UPDATE_SCREENSHOTS=1`` (so a
test run does not change a committed file every time).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from ferroflow import Flow, task
from ferroflow.cli import load_module
from ferroflow.client import Client
from ferroflow.store import open_store
from test_agent import wait_for

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
WAIT = 60_000  # ms: a hang guard for what the page must come to show, not a speed check

FLOWS = """
import time
from pathlib import Path
from ferroflow import Flow, Parameter, get_run_logger, task, triggers

@task
def prepare() -> int:
    return 20

@task(trigger=triggers.manual_only)
def deploy(x: int) -> int:
    return x + 1

with Flow("approval") as approval:
    deploy(prepare())

@task
def wait_for(path: str) -> str:
    get_run_logger().info("waiting for %s", path)
    while not Path(path).exists():
        time.sleep(0.05)
    get_run_logger().warning("found it, going on")
    return path

with Flow("waiting") as waiting:
    wait_for(Parameter("path"))

@task
def double(n: int) -> int:
    return 2 * n

with Flow("doubler") as doubler:
    double(Parameter("n", default=2, type=int))
"""


class Server:
    """``ferroflow server start --port 0`` over this test's FERROFLOW_HOME."""

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "FERROFLOW_API_URL"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ferroflow", "server", "start", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.startswith("ferroflow server at http://127.0.0.1:"), line
        self.url = line.split()[3]
        self.client = Client(self.url)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.communicate(timeout=60)


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def flows_file(tmp_path: Path) -> Path:
    path = tmp_path / "ui_flows.py"
    path.write_text(FLOWS)
    return path


@pytest.fixture
def shoot(tmp_path: Path) -> Callable[[Page, str], None]:
    def take(page: Page, name: str) -> None:
        page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)

    return take


def _newest(flow_name: str) -> Any:
    with open_store() as store:
        return next(r for r in store.list_flow_runs(100) if r.flow_name == flow_name)


def _started(flow_name: str, state: str = "Running") -> Any:
    def check() -> Any:
        try:
            run = _newest(flow_name)
        except StopIteration:
            return None
        with open_store() as store:
            if state == "Running":
                return run if run.state == "Running" and store.task_runs(run.id) else None
            return run if any(t.state == state for t in store.task_runs(run.id)) else None

    return wait_for(f"a {state} run of {flow_name}", check)


def _ferroflow(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "FERROFLOW_API_URL"}
    return subprocess.Popen(
        [sys.executable, "-m", "ferroflow", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _record_finished_runs() -> dict[str, str]:
    """A successful run, one that failed after its retries, and a map with failed
    children, recorded in the store the server reads; their ids."""

    @task
    def hello() -> str:
        return "hello"

    @task(max_retries=2, retry_delay=0)
    def flaky() -> None:
        raise RuntimeError("boom: the service is down")

    @task
    def numbers() -> list[int]:
        return list(range(30))

    @task
    def check(x: int) -> int:
        if x % 10 == 3:
            raise ValueError(f"bad input {x}")
        return x

    @task
    def total(xs: list[int]) -> int:
        return sum(xs)

    with Flow("ui-success") as ok:
        hello()
    with Flow("ui-retries") as retries:
        flaky()
    with Flow("ui-mapped") as mapped:
        total(check.map(numbers()))
    assert ok.run().is_successful()
    assert retries.run().is_failed()
    assert mapped.run().is_failed()
    return {name: _newest(name).id for name in ("ui-success", "ui-retries", "ui-mapped")}


def test_dashboard_run_pages_schematic_task_runs_and_logs(
    server: Server, browser: Browser, shoot: Callable[[Page, str], None]
) -> None:
    ids = _record_finished_runs()
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server.url + "/")
    expect(page.locator("h1")).to_have_text("Dashboard")
    expect(page.locator("#failed-day")).to_have_text("2")
    for name in ids:
        expect(page.get_by_role("link", name=name).first).to_be_visible()
    shoot(page, "dashboard")

    page.goto(server.url + "/runs")
    expect(page.locator("h1")).to_have_text("Runs")
    page.select_option("select[name=state]", "Failed")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("td .badge")).to_have_text(["✗ Failed", "✗ Failed"])
    shoot(page, "runs-failed")
    page.get_by_role("link", name="ui-retries").click()  # the flow's page
    expect(page.locator("h1")).to_contain_text("Flow ui-retries")
    page.goto(server.url + "/local-flows/ui-success")
    expect(page.locator("h1")).to_contain_text("Flow ui-success")
    expect(page.locator(".bar")).to_have_count(1)
    shoot(page, "local-flow")
    page.goto(server.url + "/")

    # The mapped run: one node for the mapped task, with its counts.
    page.get_by_role("link", name=ids["ui-mapped"][:8]).click()
    expect(page.locator("h1")).to_contain_text("✗ Failed")
    node = page.locator('#schematic-svg a.node[data-name="check"]')
    expect(node).to_have_count(1)
    expect(node.locator("[data-task-label]")).to_have_text("✗ 3 ✓ 27")
    expect(page.locator("#schematic-svg .edge")).to_have_count(2)
    # numbers, and check's 30 children as one bar (total never started: TriggerFailed)
    expect(page.locator("#timeline-svg .bar")).to_have_count(2)
    readme_shot = ROOT / "docs" / "run-page.png"
    if os.environ.get("FERROFLOW_UPDATE_SCREENSHOTS") == "1" or not readme_shot.exists():
        page.screenshot(path=str(readme_shot), full_page=True)
    shoot(page, "run-mapped")

    # Click through the schematic into the task: its runs, filtered by state.
    node.click()
    expect(page.locator("#task-runs")).to_have_text("Runs of check")
    assert "task=" in page.url
    expect(page.locator("#task-run-table tr")).to_have_count(32)  # header, own run, 30
    page.select_option("#filter-state", "Failed")
    page.get_by_role("button", name="Filter", exact=True).click()
    rows = page.locator("#task-run-table tr")
    expect(rows).to_have_count(4)
    expect(rows.nth(1)).to_contain_text("check[3]")
    assert "state=Failed" in page.url  # the filtered view is a link to share
    shoot(page, "run-mapped-task")
    page.goto(page.url)  # ...and reloads as it was
    expect(page.locator("#task-run-table tr")).to_have_count(4)

    # Filter the task table by name.
    page.goto(f"{server.url}/runs/{ids['ui-mapped']}")
    page.fill("#filter-name", "tot")
    page.get_by_role("button", name="Filter", exact=True).click()
    expect(page.locator("#task-table tr[data-task]")).to_have_count(1)
    expect(page.locator("#task-table")).to_contain_text("total")

    # Logs: the level filter and the search.
    page.goto(f"{server.url}/runs/{ids['ui-mapped']}#logs")
    page.fill("#log-search", "bad input 13")
    page.click("#log-filter")
    lines = page.locator("#log-table tr.log-line")
    expect(lines).to_have_count(1)
    expect(lines.first).to_contain_text("ValueError: bad input 13")
    page.select_option("#log-level", "CRITICAL")
    page.click("#log-filter")
    expect(page.locator("#log-table tr.log-line")).to_have_count(0)
    expect(page.locator("#log-table")).to_contain_text("No log lines match")
    shoot(page, "run-mapped-logs")

    # A failure with retries: every attempt labelled, with its traceback.
    page.goto(f"{server.url}/runs/{ids['ui-retries']}")
    failure = page.locator(".failure")
    expect(failure).to_have_count(1)
    expect(failure.locator("h3")).to_contain_text("after 3 attempts")
    expect(failure.locator("summary")).to_have_text(["attempt 1", "attempt 2", "attempt 3 (last)"])
    expect(failure.locator("pre").last).to_contain_text("RuntimeError: boom")
    shoot(page, "run-retries")
    failure.locator("h3 a").click()
    expect(page.locator("#transitions")).to_contain_text("Retrying")
    attempts = page.locator("#transitions tr td:first-child")
    expect(attempts.last).to_have_text("3")
    shoot(page, "task-run")

    # A phone's width: nothing wider than the screen but the scrolling pictures.
    phone = browser.new_page(viewport={"width": 390, "height": 844})
    phone.goto(f"{server.url}/runs/{ids['ui-mapped']}")
    expect(phone.locator("h1")).to_contain_text("Failed")
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    shoot(phone, "run-phone")
    phone.goto(server.url + "/")
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    shoot(phone, "dashboard-phone")


def test_a_live_run_page_updates_in_place_and_cancel_stops_a_run(
    server: Server,
    browser: Browser,
    flows_file: Path,
    tmp_path: Path,
    shoot: Callable[[Page, str], None],
) -> None:
    go = tmp_path / "go"
    # The dashboard, open before the run starts, shows it without a reload.
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server.url + "/")
    expect(page.get_by_role("link", name="waiting")).to_have_count(0)
    page.evaluate("window.__same_page = true")
    first = _ferroflow("run", f"{flows_file}:waiting", "--param", f"path={go}")
    try:
        run = _started("waiting")
        row = page.locator("tr", has=page.get_by_role("link", name="waiting"))
        expect(row).to_contain_text("▶ Running", timeout=WAIT)
        assert page.evaluate("window.__same_page") is True
        shoot(page, "dashboard-live")
        page.goto(f"{server.url}/runs/{run.id}")
        state = page.locator("h1 [data-run-state]")
        expect(state).to_have_text("▶ Running")
        shoot(page, "run-running")
        page.evaluate("window.__same_page = true")
        go.touch()
        expect(state).to_have_text("✓ Success", timeout=WAIT)
        # The logs were followed: the new line is there, after the first one.
        lines = page.locator("#log-table tr.log-line")
        expect(lines.last).to_contain_text("found it, going on")
        expect(lines.first).to_contain_text("waiting for")
        assert page.evaluate("window.__same_page") is True  # updated without a reload
        expect(page.locator("#task-table tr[data-task] [data-task-label]").last).to_have_text(
            "✓ Success"
        )
        assert first.wait(timeout=60) == 0
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate()

    second = _ferroflow("run", f"{flows_file}:waiting", "--param", f"path={tmp_path / 'never'}")
    try:
        first_id = run.id
        run = _started("waiting")
        assert run.id != first_id
        page.goto(f"{server.url}/runs/{run.id}")
        page.click("#cancel")
        expect(page.locator(".notice")).to_contain_text("cancel sent")
        expect(page.locator("h1 [data-run-state]")).to_have_text("⊘ Cancelled", timeout=WAIT)
        shoot(page, "run-cancelled")
        second.wait(timeout=60)
    finally:
        if second.poll() is None:
            second.kill()
        second.communicate()
    assert _newest("waiting").state == "Cancelled"


def test_approving_a_paused_task_lets_the_run_finish(
    server: Server, browser: Browser, flows_file: Path, shoot: Callable[[Page, str], None]
) -> None:
    proc = _ferroflow("run", f"{flows_file}:approval", "--wait-for-approval")
    try:
        run = _started("approval", state="Paused")
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{server.url}/runs/{run.id}")
        node = page.locator('#schematic-svg a.node[data-name="deploy"]')
        expect(node.locator("[data-task-label]")).to_have_text("‖ Paused")
        shoot(page, "run-paused")
        page.locator("button.approve").click()
        expect(page.locator(".notice")).to_contain_text("approved deploy")
        expect(page.locator("h1 [data-run-state]")).to_have_text("✓ Success", timeout=WAIT)
        expect(node.locator("[data-task-label]")).to_have_text("✓ Success")
        shoot(page, "run-approved")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_flows_the_run_form_and_agents(
    server: Server, browser: Browser, flows_file: Path, shoot: Callable[[Page, str], None]
) -> None:
    module = load_module(flows_file)
    server.client.create_project("team")
    flow_id = server.client.register(module.doubler, "team", source=flows_file)["id"]
    server.client.register_agent("builder-1", labels=["gpu"])
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server.url + "/flows")
    expect(page.locator("h2").first).to_have_text("Project team")
    shoot(page, "flows")
    page.get_by_role("link", name="doubler").click()
    expect(page.locator("h1")).to_contain_text("Flow doubler")
    expect(page.locator("label[for=param-n]")).to_contain_text("(int)")

    # A bad value: the form comes back with a readable error, and no run is made.
    page.fill("#param-n", "lots")
    page.click("#run-submit")
    expect(page.locator(".field-error")).to_contain_text("parameter 'n' must be int")
    expect(page.locator("#form-errors")).to_be_visible()
    shoot(page, "flow-bad-value")
    assert server.client.get_flow_runs(project="team") == []

    # A good one: a Scheduled run with the value as flow.run would take it.
    page.fill("#param-n", "21")
    page.click("#run-submit")
    expect(page.locator(".notice")).to_have_text("flow run created")
    expect(page.locator("h1 [data-run-state]")).to_have_text("○ Scheduled")
    run_id = page.url.split("/runs/", 1)[1].split("?", 1)[0]
    run = server.client.get_flow_run(run_id)
    assert run["parameters"] == {"n": 21}
    shoot(page, "run-scheduled")

    page.goto(f"{server.url}/flows/{flow_id}")
    expect(page.locator(".bar")).to_have_count(1)  # the run in the durations chart
    page.goto(server.url + "/agents")
    expect(page.locator("#agents")).to_contain_text("builder-1")
    expect(page.locator("#agents")).to_contain_text("gpu")
    shoot(page, "agents")
    # The JSON twin of the page.
    with urllib.request.urlopen(server.url + "/api/agents", timeout=30) as r:
        assert [a["name"] for a in json.loads(r.read())["agents"]] == ["builder-1"]
