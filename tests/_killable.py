"""A flow to kill with SIGKILL part-way through its map and then resume, in a subprocess:
for the checkpoints of targets (test_durable.py) and of pack files (test_packs.py).

Its mapped ``child(x)`` appends ``x`` to a side file each time it runs and returns
``3 * x``; a reduce sums the children. The side file tells how often each child ran over
the killed run and the resumed one.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from string import Template

from ferroflow.store import open_store

_SCRIPT = Template(
    """
import sys, time
from ferroflow import Flow, task
from ferroflow.results import LocalResult

results_dir, side, mode = sys.argv[1], sys.argv[2], sys.argv[3]

@task($checkpoint, result=LocalResult(dir=results_dir))
def child(x):
    with open(side, "a") as f:
        f.write(f"{x}\\n")
    time.sleep($sleep)
    return x * 3

@task
def total(xs):
    return sum(xs)

with Flow("killable") as flow:
    s = total(child.map(list(range($n))))

if mode == "run":
    flow.run()
else:
    state = flow.run(resume=mode)
    print("RESULT", state.result[s].result, type(state).__name__)
"""
)


class KillableFlow:
    """The script in ``tmp_path``: ``checkpoint`` is how ``child`` checkpoints (the
    ``@task`` arguments besides its ``LocalResult`` in ``results``), ``n`` its number of
    children, ``sleep`` how long each one takes."""

    def __init__(self, tmp_path: Path, checkpoint: str, n: int, sleep: float) -> None:
        self.n = n
        self.results = tmp_path / "results"
        self.side = tmp_path / "executions.txt"
        self.script = tmp_path / "flow.py"
        self.script.write_text(_SCRIPT.substitute(checkpoint=checkpoint, n=n, sleep=sleep))

    def _command(self, mode: str) -> list[str]:
        return [sys.executable, str(self.script), str(self.results), str(self.side), mode]

    def start(self) -> subprocess.Popen[str]:
        """Start a fresh run."""
        return subprocess.Popen(self._command("run"), text=True)

    def wait_for_children(self, proc: subprocess.Popen[str], started: int) -> None:
        """Return once ``started`` children have started; fail (killing the run) if it
        ends first or a minute passes."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.side.exists() and self.side.read_text().count("\n") >= started:
                return
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        proc.kill()
        raise AssertionError("the flow never got far enough to be interrupted")

    @staticmethod
    def kill(proc: subprocess.Popen[str]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    @staticmethod
    def interrupted_run() -> str:
        """The id of the killed run, which the store now shows as interrupted."""
        with open_store() as store:
            store.fixup_interrupted()
            (killed,) = store.list_flow_runs()
            assert killed.state == "Interrupted"
        return killed.id

    def resume(self, run_id: str) -> Counter[int]:
        """Resume ``run_id`` to success with the right total; how many times each child
        ran over both runs (every one of them ran)."""
        out = subprocess.run(
            self._command(run_id), capture_output=True, text=True, timeout=150, check=True
        )
        assert f"RESULT {3 * sum(range(self.n))} Success" in out.stdout
        executions = Counter(int(line) for line in self.side.read_text().split())
        assert set(executions) == set(range(self.n))
        return executions
