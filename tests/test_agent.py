"""Agents: a real server process, real agent processes, real flow-run processes.

Each test starts ``ferroflow server start --port 0`` (its own FERROFLOW_HOME) and
``ferroflow agent start`` subprocesses with their own work directories, registers flows
from files the test then deletes (the agent rebuilds them from the registered source),
and reads the outcome back from the server and from a Ledger file the tasks append to.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from _tasks import Ledger
from ferroflow.agent import Agent, AgentError
from ferroflow.cli import load_module
from ferroflow.client import Client
from ferroflow.exceptions import ApiError

TESTS = Path(__file__).parent

FINISHED = {"Success", "Failed", "Cancelled", "TimedOut", "Skipped"}


class Server:
    """``ferroflow server start --port 0`` with its own home."""

    def __init__(self, home: Path, port: int = 0) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "FERROFLOW_HOME": str(home)}
        self.env.pop("FERROFLOW_API_URL", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ferroflow", "server", "start", "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.startswith("ferroflow server at http://127.0.0.1:"), (
            line + self.process.stderr.read()  # type: ignore[union-attr]
        )
        self.url = line.split()[3]
        self.client = Client(self.url)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


class AgentProcess:
    """``ferroflow agent start`` in a subprocess with its own work directory."""

    def __init__(self, url: str, work: Path, *args: str) -> None:
        work.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "FERROFLOW_HOME": str(work), "FERROFLOW_API_URL": url}
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
        self.log = open(work / "agent.log", "wb")
        self.work = work
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ferroflow",
                "agent",
                "start",
                "--work-dir",
                str(work / "runs"),
                "--poll-interval",
                "0.2",
                *args,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self.log.close()

    def output(self) -> str:
        self.log.flush()
        return (self.work / "agent.log").read_text(errors="replace")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path / "server")
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def agents(server: Server, tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    started: list[AgentProcess] = []

    def start(*args: str) -> AgentProcess:
        a = AgentProcess(server.url, tmp_path / f"agent{len(started)}", *args)
        started.append(a)
        return a

    try:
        yield start
    finally:
        for a in started:
            a.stop()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def finished(client: Client, run_id: str) -> dict[str, Any] | None:
    run = client.get_flow_run(run_id)
    return run if run["state"] in FINISHED else None


FLOWS = """
import os, time
from ferroflow import Flow, Parameter, task
from _tasks import Ledger

LEDGER = Ledger(os.environ.get("AGENT_TEST_LEDGER", "/nonexistent"))

@task
def record(n):
    LEDGER.add(n)
    return n * 2

@task
def slow(n):
    for _ in range(600):
        time.sleep(0.1)
    return n

with Flow("doubler") as doubler:
    record(Parameter("n"))

with Flow("sleeper") as sleeper:
    slow(Parameter("n", default=1))
"""


def register(server: Server, tmp_path: Path, source: str, *names: str, **kw: Any) -> dict[str, str]:
    """Register the flows ``names`` of ``source`` (a file deleted afterwards); their ids."""
    path = tmp_path / "flows_src" / "agent_flows.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    sys.path.insert(0, str(TESTS))
    module = load_module(path)
    try:
        server.client.create_project("p")
    except ApiError:
        pass
    ids = {}
    for name in names:
        flow = getattr(module, name)
        ids[name] = str(server.client.register(flow, "p", source=path, **kw)["id"])
    path.unlink()
    return ids


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Ledger:
    path = tmp_path / "ledger"
    monkeypatch.setenv("AGENT_TEST_LEDGER", str(path))
    return Ledger(path)


def test_an_agent_runs_a_registered_flow_from_its_storage(
    server: Server, agents: Callable[..., AgentProcess], tmp_path: Path, ledger: Ledger
) -> None:
    ids = register(server, tmp_path, FLOWS, "doubler")
    run_id = server.client.create_flow_run(ids["doubler"], parameters={"n": 21})
    agent = agents()
    run = wait_for("the run to finish", lambda: finished(server.client, run_id))
    assert run["state"] == "Success", agent.output()
    assert run["agent_id"] is not None
    counts = server.client.get_flow_run(run_id)["task_run_counts"]
    assert {(c["task_name"], c["state"], c["count"]) for c in counts} >= {("record", "Success", 1)}
    assert ledger.items() == [21]
    listed = server.client.get_agents()
    assert [a["id"] for a in listed] == [run["agent_id"]]
    ls = subprocess.run(
        [sys.executable, "-m", "ferroflow", "agents", "ls", "--json", "--api", server.url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ls.returncode == 0, ls.stderr
    assert json.loads(ls.stdout)[0]["id"] == run["agent_id"]


def test_unknown_labels_stay_scheduled(
    server: Server, agents: Callable[..., AgentProcess], tmp_path: Path, ledger: Ledger
) -> None:
    ids = register(server, tmp_path, FLOWS, "doubler")
    gpu = server.client.create_flow_run(ids["doubler"], parameters={"n": 1}, labels=["gpu"])
    plain = server.client.create_flow_run(ids["doubler"], parameters={"n": 2})
    later = server.client.create_flow_run(ids["doubler"], parameters={"n": 3}, labels=["cpu"])
    agents("--label", "cpu")
    assert wait_for("plain", lambda: finished(server.client, plain))["state"] == "Success"
    assert wait_for("later", lambda: finished(server.client, later))["state"] == "Success"
    assert server.client.get_flow_run(gpu)["state"] == "Scheduled"
    assert sorted(ledger.items()) == [2, 3]  # type: ignore[type-var]


BROKEN = """
import os
from pathlib import Path
from ferroflow import Flow, Parameter, task

Path(os.environ["AGENT_TEST_MARKER"]).read_text()  # gone after registering

@task
def one(n):
    return n

with Flow("fragile") as fragile:
    one(Parameter("n", default=1))
"""


def test_a_flow_that_no_longer_builds_fails_and_the_agent_carries_on(
    server: Server,
    agents: Callable[..., AgentProcess],
    tmp_path: Path,
    ledger: Ledger,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    marker = tmp_path / "marker"
    marker.write_text("here")
    monkeypatch.setenv("AGENT_TEST_MARKER", str(marker))
    broken = register(server, tmp_path, BROKEN, "fragile")["fragile"]
    good = register(server, tmp_path, FLOWS, "doubler")["doubler"]
    marker.unlink()
    bad_run = server.client.create_flow_run(broken)
    good_run = server.client.create_flow_run(good, parameters={"n": 5})
    agents()
    bad = wait_for("the broken run", lambda: finished(server.client, bad_run))
    assert bad["state"] == "Failed"
    assert "does not build" in bad["message"] and "marker" in bad["message"], bad["message"]
    assert wait_for("the good run", lambda: finished(server.client, good_run))["state"] == (
        "Success"
    )
    assert ledger.items() == [5]


def test_a_source_file_left_partial_is_written_again(tmp_path: Path) -> None:
    # A flow-run process killed while it wrote the flow's source (or another still
    # writing it) left a partial file where every later run of that version looks:
    # each of them failed with "defines no flow named ...".
    from ferroflow.agent_run import build_flow

    source = textwrap.dedent(FLOWS)
    storage = {"type": "source", "source": source, "filename": "f.py", "flow_name": "doubler"}
    work = tmp_path / "runs"
    assert build_flow(storage, work).name == "doubler"
    (written,) = (work / "flows").glob("*/f.py")
    written.write_text(source[: len(source) // 3])
    assert build_flow(storage, work).name == "doubler"
    assert written.read_text() == source
    left = sorted(p.name for p in written.parent.iterdir() if p.name != "__pycache__")
    assert left == ["f.py"]  # no temporary file left beside it


def test_two_agents_racing_run_each_run_once(
    server: Server, agents: Callable[..., AgentProcess], tmp_path: Path, ledger: Ledger
) -> None:
    n = int(os.environ.get("AGENT_TEST_RACE_RUNS", "100"))
    flow_id = register(server, tmp_path, FLOWS, "doubler")["doubler"]
    runs = [server.client.create_flow_run(flow_id, parameters={"n": i}) for i in range(n)]
    agents("--max-concurrent", "3")
    agents("--max-concurrent", "3")

    def all_done() -> list[dict[str, Any]] | None:
        got = server.client.get_flow_runs(limit=n)
        return got if all(r["state"] in FINISHED for r in got) else None

    done = wait_for("every run to finish", all_done, timeout=600)
    assert {r["id"] for r in done} == set(runs)
    failed = [(r["id"], r["state"], r.get("message")) for r in done if r["state"] != "Success"]
    assert {r["state"] for r in done} == {"Success"}, failed
    assert sorted(ledger.items()) == list(range(n))  # type: ignore[type-var]
    holders = {r["agent_id"] for r in done}
    assert len(holders) == 2  # both agents took part


def test_cancel_stops_the_flow_run_process_and_records_cancelled(
    server: Server, agents: Callable[..., AgentProcess], tmp_path: Path, ledger: Ledger
) -> None:
    flow_id = register(server, tmp_path, FLOWS, "sleeper")["sleeper"]
    run_id = server.client.create_flow_run(flow_id)
    agents()

    def running() -> bool:
        counts = server.client.get_flow_run(run_id)["task_run_counts"]
        return any(c["task_name"] == "slow" and c["state"] == "Running" for c in counts)

    wait_for("the slow task to start", running)
    cancel = subprocess.run(
        [sys.executable, "-m", "ferroflow", "runs", "cancel", run_id, "--api", server.url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cancel.returncode == 0, cancel.stderr
    run = wait_for("the run to stop", lambda: finished(server.client, run_id), timeout=60)
    assert run["state"] == "Cancelled"

    def task_cancelled() -> bool:
        counts = server.client.get_flow_run(run_id)["task_run_counts"]
        return any(c["task_name"] == "slow" and c["state"] == "Cancelled" for c in counts)

    wait_for("the task to be recorded Cancelled", task_cancelled, timeout=30)


def test_claims_are_atomic_and_retried_claims_are_answered(server: Server, tmp_path: Path) -> None:
    flow_id = register(server, tmp_path, FLOWS, "doubler")["doubler"]
    run_id = server.client.create_flow_run(flow_id, parameters={"n": 1})
    a = server.client.register_agent("a")
    b = server.client.register_agent("b")
    queued = server.client.get_runs_in_queue(a)
    assert [r["id"] for r in queued] == [run_id]
    version = int(queued[0]["version"])
    won = server.client.claim_flow_run(a, run_id, version)
    assert (won["state"], won["agent_id"]) == ("Pending", a)
    again = server.client.claim_flow_run(a, run_id, version)  # a retried request
    assert again["id"] == run_id and again["agent_id"] == a
    with pytest.raises(ApiError, match="was not claimed"):
        server.client.claim_flow_run(b, run_id, version)
    assert server.client.get_runs_in_queue(b) == []
    with pytest.raises(ApiError, match="no agent with id"):
        server.client.claim_flow_run("nobody", run_id, version)
    with pytest.raises(ApiError, match="is not held by agent"):
        server.client.report_attempt(b, run_id, "local-id")
    beat = server.client.agent_heartbeat(b, [run_id])
    assert beat["lost"] == [run_id] and beat["held"] == []
    assert server.client.agent_heartbeat(a, [run_id])["held"] == [run_id]


def test_bad_agent_settings_are_typed_errors() -> None:
    with pytest.raises(AgentError, match="max_concurrent_runs must be at least 1"):
        Agent(max_concurrent_runs=0)
    with pytest.raises(AgentError, match="poll_interval must be positive"):
        Agent(poll_interval=0)


MAPPER = """
import os, time
from ferroflow import Flow, Parameter, task, unmapped
from ferroflow.results import LocalResult
from _tasks import Ledger

LEDGER = Ledger(os.environ.get("AGENT_TEST_LEDGER", "/nonexistent"))
TOTALS = Ledger(os.environ.get("AGENT_TEST_LEDGER", "/nonexistent") + ".totals")
RESULTS = os.environ.get("AGENT_TEST_RESULTS", "/nonexistent")

@task(target="child/{map_index}.bin", result=LocalResult(dir=RESULTS))
def child(x, pause):
    LEDGER.add(x)
    time.sleep(pause)
    return 3 * x

@task
def total(xs):
    TOTALS.add(sum(xs))
    return sum(xs)

with Flow("mapper") as mapper:
    pause = Parameter("pause", default=0.0)
    total(child.map(Parameter("xs"), pause=unmapped(pause)))
"""


def lease_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lease: str = "2") -> Server:
    monkeypatch.setenv("FERROFLOW_LEASE_TIMEOUT", lease)
    return Server(tmp_path / "lease-server")


@pytest.mark.parametrize(
    ("victim", "n", "pause"),
    [
        ("agent", 2000, 0.002),
        ("agent, own work directories", 2000, 0.002),
        ("flow-run process", 2000, 0.002),
        ("agent", 10_000, 0.0),
        ("agent on dask", 1000, 0.005),
    ],
)
def test_a_sigkilled_run_finishes_on_another_agent_without_recomputing(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ledger: Ledger,
    victim: str,
    n: int,
    pause: float,
) -> None:
    results = tmp_path / "results"
    monkeypatch.setenv("AGENT_TEST_RESULTS", str(results))
    srv = lease_server(tmp_path, monkeypatch)
    started: list[AgentProcess] = []
    try:
        flow_id = register(srv, tmp_path, MAPPER, "mapper")["mapper"]
        run_id = srv.client.create_flow_run(
            flow_id, parameters={"xs": list(range(n)), "pause": pause}
        )
        # Both agents' work directory (their run store), unless each has its own: then
        # the second copies the first attempt's records from the server. The
        # checkpoints are in AGENT_TEST_RESULTS, where both agents can read them.
        shared = tmp_path / "shared"
        own = victim == "agent, own work directories"
        extra: list[str] = []
        if victim == "agent on dask":
            cluster = request.getfixturevalue("dask_cluster")
            extra = ["--dask-address", cluster.scheduler_address]
        work = tmp_path / "w1" if own else shared
        first = AgentProcess(srv.url, tmp_path / "a1", "--work-dir", str(work), *extra)
        started.append(first)
        wait_for("children to run", lambda: len(ledger.items()) >= n // 4, timeout=120)
        assert finished(srv.client, run_id) is None, srv.client.get_flow_run(run_id)
        if victim.startswith("agent"):
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(timeout=30)
        else:
            run = srv.client.get_flow_run(run_id)
            assert run["state"] == "Running"
            child_pids = [
                int(p)
                for p in subprocess.run(
                    ["pgrep", "-f", f"ferroflow.agent_run {run_id}"],
                    capture_output=True,
                    text=True,
                    timeout=30,
                ).stdout.split()
            ]
            assert child_pids, "no flow-run process found"
            for pid in child_pids:
                os.kill(pid, signal.SIGKILL)
        finished_before = {int(p.stem) for p in (results / "child").glob("*.bin")}
        assert 0 < len(finished_before) < n
        work = tmp_path / "w2" if own else shared
        second = AgentProcess(srv.url, tmp_path / "a2", "--work-dir", str(work), *extra)
        started.append(second)
        run = wait_for("the run to finish", lambda: finished(srv.client, run_id), timeout=300)
        assert run["state"] == "Success", run["message"]
        counts = {}
        for item in ledger.items():
            counts[item] = counts.get(item, 0) + 1
        assert set(counts) == set(range(n))
        again = sorted(i for i in finished_before if counts[i] > 1)
        assert again == [], f"children computed again after they finished: {again[:10]}"
        assert Ledger(str(ledger.path) + ".totals").items() == [3 * sum(range(n))]
        if own:
            logs = "".join(p.read_text() for p in (tmp_path / "w2" / "logs").iterdir())
            assert "copied attempt" in logs, logs
    finally:
        for a in started:
            a.stop()
        srv.stop()


FAILS_HARD = """
import os
from ferroflow import Flow, task

@task
def die():
    os.kill(os.getpid(), 9)

with Flow("doomed") as doomed:
    die()
"""


def test_a_run_lost_three_times_is_failed_saying_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv = lease_server(tmp_path, monkeypatch)
    agent = None
    try:
        flow_id = register(srv, tmp_path, FAILS_HARD, "doomed")["doomed"]
        run_id = srv.client.create_flow_run(flow_id)
        agent = AgentProcess(srv.url, tmp_path / "a1")
        run = wait_for("the run to fail", lambda: finished(srv.client, run_id), timeout=300)
        assert run["state"] == "Failed"
        assert "after 3 recoveries" in run["message"], run["message"]
    finally:
        if agent is not None:
            agent.stop()
        srv.stop()


def test_resume_through_the_server_queues_a_failed_run_again(
    server: Server, agents: Callable[..., AgentProcess], tmp_path: Path, ledger: Ledger
) -> None:
    flow_id = register(server, tmp_path, FLOWS, "sleeper")["sleeper"]
    run_id = server.client.create_flow_run(flow_id)
    with pytest.raises(ApiError, match="only a run that ended without succeeding"):
        server.client.resume_flow_run(run_id)
    assert server.client.cancel_flow_run(run_id) == "Cancelled"
    out = subprocess.run(
        [sys.executable, "-m", "ferroflow", "runs", "resume", run_id, "--api", server.url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "Scheduled" in out.stdout, out.stderr
    assert server.client.get_flow_run(run_id)["state"] == "Scheduled"


def test_an_agent_runs_its_flows_on_a_dask_cluster(
    server: Server,
    agents: Callable[..., AgentProcess],
    tmp_path: Path,
    ledger: Ledger,
    dask_cluster: Any,
) -> None:
    flow_id = register(server, tmp_path, FLOWS, "doubler")["doubler"]
    run_id = server.client.create_flow_run(flow_id, parameters={"n": 7})
    agents("--dask-address", dask_cluster.scheduler_address)
    run = wait_for("the run to finish", lambda: finished(server.client, run_id))
    assert run["state"] == "Success", run["message"]
    assert ledger.items() == [7]
    log = next((tmp_path / "agent0" / "runs" / "logs").glob("*.log")).read_text()
    assert "Traceback" not in log


def test_a_server_restart_mid_run_loses_and_doubles_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ledger: Ledger
) -> None:
    from _postgres import free_port

    n = 600
    results = tmp_path / "results"
    monkeypatch.setenv("AGENT_TEST_RESULTS", str(results))
    port = free_port()
    srv = Server(tmp_path / "server", port)
    agent = None
    try:
        flow_id = register(srv, tmp_path, MAPPER, "mapper")["mapper"]
        run_id = srv.client.create_flow_run(
            flow_id, parameters={"xs": list(range(n)), "pause": 0.005}
        )
        agent = AgentProcess(srv.url, tmp_path / "a1")
        wait_for("children to run", lambda: len(ledger.items()) >= n // 5, timeout=120)
        srv.stop()
        srv = Server(tmp_path / "server", port)
        run = wait_for("the run to finish", lambda: finished(srv.client, run_id), timeout=300)
        assert run["state"] == "Success", run["message"]
        assert [r["id"] for r in srv.client.get_flow_runs(limit=10)] == [run_id]
        assert sorted(ledger.items()) == list(range(n))  # type: ignore[type-var]
        assert Ledger(str(ledger.path) + ".totals").items() == [3 * sum(range(n))]
        total, _ = srv.client.get_task_runs(run_id, limit=1)
        assert total == n + 4  # the children, their parent, the two parameters, total
    finally:
        if agent is not None:
            agent.stop()
        srv.stop()


def test_a_bad_lease_timeout_is_a_typed_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from ferroflow.exceptions import PlatformError
    from ferroflow.server import serve

    monkeypatch.setenv("FERROFLOW_LEASE_TIMEOUT", "soon")
    with pytest.raises(PlatformError, match="FERROFLOW_LEASE_TIMEOUT must be a number"):
        serve(port=0)


@pytest.mark.parametrize("ours", [False, True])
def test_a_refused_flow_run_process_leaves_the_run_to_its_holder(
    server: Server, tmp_path: Path, ours: bool
) -> None:
    # The flow-run process exits EXIT_REFUSED when the server will not let it start the
    # run (it changed since the claim: another process holds it). The agent marked the
    # run Failed on top of whoever held it. A run this agent still holds, Pending, is
    # settled Failed as before (nobody else would end it).
    from ferroflow.agent import _Held
    from ferroflow.agent_run import EXIT_REFUSED

    flow_id = register(server, tmp_path, FLOWS, "doubler")["doubler"]
    run_id = server.client.create_flow_run(flow_id, parameters={"n": 1})
    agent = Agent(api_url=server.url)
    agent.agent_id = server.client.register_agent("this")
    holder = agent.agent_id if ours else server.client.register_agent("holder")
    (queued,) = server.client.get_runs_in_queue(holder)
    server.client.claim_flow_run(holder, run_id, int(queued["version"]))
    refused = subprocess.Popen(
        [sys.executable, "-c", f"raise SystemExit({EXIT_REFUSED})"], start_new_session=True
    )
    refused.wait(timeout=60)
    agent.held[run_id] = _Held(run_id, refused)
    agent._reap()
    assert run_id not in agent.held
    run = server.client.get_flow_run(run_id)
    if ours:
        assert run["state"] == "Failed", run
        assert f"exited with status {EXIT_REFUSED}" in run["message"], run
    else:
        assert (run["state"], run["agent_id"]) == ("Pending", holder), run


def _sleeper() -> subprocess.Popen[bytes]:
    """A real process in a session of its own, as the agent starts its flow-run processes."""
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )


@pytest.mark.parametrize(
    ("lease", "silent", "stopped"),
    [
        ("2", 100.0, True),  # not renewed for longer than most of the lease: stopped
        ("2", 0.0, False),  # renewed just now: goes on
        ("0", 100.0, False),  # leases off: the server never runs it elsewhere
    ],
)
def test_an_unrenewed_run_is_stopped_only_when_leases_are_on(
    monkeypatch: pytest.MonkeyPatch, lease: str, silent: float, stopped: bool
) -> None:
    from ferroflow.agent import _Held

    monkeypatch.setenv("FERROFLOW_LEASE_TIMEOUT", lease)
    agent = Agent(api_url="http://127.0.0.1:9")
    process = _sleeper()
    try:
        agent.held["run"] = _Held("run", process, renewed=time.monotonic() - silent)
        agent._stop_expired()
        try:
            # A SIGKILLed process is reaped at once; one left alone sleeps for a minute.
            process.wait(timeout=10 if stopped else 1)
        except subprocess.TimeoutExpired:
            pass
        assert (process.poll() is not None) is stopped
    finally:
        process.kill()
        process.wait()


def test_an_agent_with_a_bad_lease_timeout_is_a_typed_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ferroflow.exceptions import PlatformError

    monkeypatch.setenv("FERROFLOW_LEASE_TIMEOUT", "-1")
    with pytest.raises(PlatformError, match="FERROFLOW_LEASE_TIMEOUT must be a number"):
        Agent()
