"""Checkpointing map children in pack files on the native path (rust/py/src/packs.rs):
what it writes is what pickle (or the chosen serializer) writes, every recorded location
reads back its value, bad values fail only their own child, and a kill loses no child
the store had recorded as finished."""

from __future__ import annotations

import math
import pickle
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

from _killable import KillableFlow
from ferroflow import Flow, task
from ferroflow.exceptions import ResultError
from ferroflow.executors import ThreadExecutor
from ferroflow.results import JSONSerializer, LocalResult, MsgpackSerializer, PickleSerializer
from ferroflow.states import Failed, Success
from ferroflow.store import open_store

# Every encoding branch of the native scalar pickler, at its edges.
SCALARS: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    255,
    256,
    65535,
    65536,
    -1,
    -255,
    -256,
    -65536,
    2**31 - 1,
    -(2**31),
    2**31,
    -(2**31) - 1,
    2**32,
    -(2**32),
    2**39,
    -(2**39) - 7,
    2**47,
    -(2**47),
    2**55 + 3,
    -(2**55),
    2**63 - 1,
    -(2**63),
    -(2**63) + 1,
    2**63,  # past 64 bits: the C pickler's turn
    -(2**100),
    0.0,
    -0.0,
    1.5,
    -2.25e-300,
    math.inf,
    -math.inf,
    math.nan,
    "",
    "a",
    "héllo wörld",
    "日本語",
    "x" * 255,
    "x" * 256,
    "é" * 128,  # 256 bytes of UTF-8
    "\ud800",  # a lone surrogate
    b"",
    b"\x00\xff",
    b"y" * 255,
    b"y" * 256,
]


def _locations(run_id: str) -> dict[int, str]:
    with open_store() as store:
        done = store.finished_task_runs_with_results(run_id)
    return {d.map_index: d.result_location for d in done if d.map_index is not None}


def _wait_for_locations(proc: subprocess.Popen[Any], n: int) -> dict[int, str]:
    """Poll the store until the newest flow run has ``n`` checkpointed children, the
    process ends, or a minute passes; return what was found."""
    found: dict[int, str] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(found) < n and proc.poll() is None:
        time.sleep(0.05)
        with open_store() as store:
            runs = store.list_flow_runs()
        if runs:
            found = _locations(runs[0].id)
    return found


def _raw(results: Path, location: str) -> bytes:
    pack, _, span = location.partition("#")
    offset, _, length = span.partition(":")
    with open(results / pack, "rb") as f:
        f.seek(int(offset))
        return f.read(int(length))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and a == b


def test_records_are_byte_for_byte_what_pickle_writes(tmp_path: Path) -> None:
    @task(checkpoint=True, result=LocalResult(dir=tmp_path))
    def same(x: Any) -> Any:
        return x

    with Flow("scalars") as flow:
        same.map(SCALARS)
    state = flow.run()
    assert state.is_successful()
    with open_store() as store:
        (run,) = store.list_flow_runs()
    locations = _locations(run.id)
    assert sorted(locations) == list(range(len(SCALARS)))
    result = LocalResult(dir=tmp_path)
    for i, value in enumerate(SCALARS):
        assert _raw(tmp_path, locations[i]) == pickle.dumps(value, 5), repr(value)
        assert _same(result.read(locations[i]).value, value), repr(value)


class Point:
    """A class defined in a test module: cloudpickle's job."""

    def __init__(self, x: int) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and other.x == self.x


VALUES: list[Any] = [
    [1, 2, 3],
    (1, "a", None),
    {"k": [1.5, {"n": b"raw"}]},
    {1, 2},
    frozenset({"x"}),
    Point(7),
    [Point(1), Point(2)],
    b"z" * 200_000,  # written without a copy into the block
    "s" * 70_000,
    list(range(1000)),  # past the plain-value budget: cloudpickle
]


@pytest.mark.parametrize("how", ["local", "threads"])
def test_values_of_every_kind_read_back(tmp_path: Path, how: str) -> None:
    @task(checkpoint=True, result=LocalResult(dir=tmp_path))
    def pick(i: int) -> Any:
        return VALUES[i]

    with Flow("kinds") as flow:
        pick.map(list(range(len(VALUES))))
    executor = ThreadExecutor(max_workers=3) if how == "threads" else None
    assert flow.run(executor=executor).is_successful()
    with open_store() as store:
        (run,) = store.list_flow_runs()
    locations = _locations(run.id)
    result = LocalResult(dir=tmp_path)
    for i, value in enumerate(VALUES):
        assert result.read(locations[i]).value == value
    # One pack file for the whole map.
    assert [p.suffix for p in tmp_path.rglob("*") if p.is_file()] == [".pack"]


def test_a_lambda_value_reads_back_callable(tmp_path: Path) -> None:
    @task(checkpoint=True, result=LocalResult(dir=tmp_path))
    def adder(n: int) -> Any:
        return lambda x: x + n

    with Flow("callables") as flow:
        adder.map([1, 2])
    assert flow.run().is_successful()
    with open_store() as store:
        (run,) = store.list_flow_runs()
    read = LocalResult(dir=tmp_path).read
    assert [read(loc).value(10) for _i, loc in sorted(_locations(run.id).items())] == [11, 12]


def test_a_value_that_cannot_be_written_fails_only_its_child(tmp_path: Path) -> None:
    @task(checkpoint=True, result=LocalResult(dir=tmp_path))
    def make(x: int) -> Any:
        if x == 2:
            return (i for i in range(3))  # generators cannot be pickled
        return x

    with Flow("unpicklable") as flow:
        m = make.map(list(range(5)))
    state = flow.run()
    children = state.result[m].map_states
    assert [type(c) for c in children] == [Success, Success, Failed, Success, Success]
    message = children[2].message
    assert "could not be written" in message and "generator" in message
    with open_store() as store:
        (run,) = store.list_flow_runs()
    assert sorted(_locations(run.id)) == [0, 1, 3, 4]


def test_an_unusable_result_dir_fails_each_child_clearly(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("in the way")

    @task(checkpoint=True, result=LocalResult(dir=blocked / "sub", validate_dir=False))
    def work(x: int) -> int:
        return x

    with Flow("no-dir") as flow:
        m = work.map([1, 2, 3])
    state = flow.run()
    children = state.result[m].map_states
    assert all(isinstance(c, Failed) for c in children)
    assert all("could not be written" in c.message for c in children)
    assert str(blocked) in children[0].message


@pytest.mark.parametrize("serializer", [MsgpackSerializer(), JSONSerializer()])
def test_other_serializers_on_the_native_path(tmp_path: Path, serializer: Any) -> None:
    values = [1, "two", [3, 4.5], {"five": None}]

    @task(checkpoint=True, result=LocalResult(dir=tmp_path, serializer=serializer))
    def pick(i: int) -> Any:
        return values[i] if i < len(values) else Point(i)  # not msgpack/JSON data

    with Flow("serializers") as flow:
        m = pick.map(list(range(len(values) + 1)))
    state = flow.run()
    children = state.result[m].map_states
    assert all(isinstance(c, Success) for c in children[:-1])
    assert isinstance(children[-1], Failed)
    assert "could not be written" in children[-1].message
    with open_store() as store:
        (run,) = store.list_flow_runs()
    locations = _locations(run.id)
    result = LocalResult(dir=tmp_path, serializer=serializer)
    assert [result.read(locations[i]).value for i in range(len(values))] == values
    # Another serializer refuses to read them, naming both.
    with pytest.raises(
        ResultError, match=rf"serializer '{serializer.name}' .*reads it with 'pickle'"
    ):
        LocalResult(dir=tmp_path, serializer=PickleSerializer()).read(locations[0])


class Zipped(PickleSerializer):
    """A serializer of the user's own that builds on pickle."""

    name = "zpickle"

    def serialize(self, value: Any) -> bytes:
        return zlib.compress(super().serialize(value))

    def deserialize(self, data: bytes) -> Any:
        return super().deserialize(zlib.decompress(data))


def test_a_pickle_serializer_subclass_is_not_bypassed(tmp_path: Path) -> None:
    """The native path pickles scalars itself and calls ``pickle.dumps`` for plain values
    only for ``PickleSerializer`` proper: a subclass's own encoding is used for every value."""
    values: list[Any] = [1, "a", None, 2.5, [1, 2], 2**70]
    serializer = Zipped()

    @task(checkpoint=True, result=LocalResult(dir=tmp_path, serializer=serializer))
    def same(x: Any) -> Any:
        return x

    with Flow("subclassed") as flow:
        same.map(values)
    assert flow.run().is_successful()
    with open_store() as store:
        (run,) = store.list_flow_runs()
    locations = _locations(run.id)
    result = LocalResult(dir=tmp_path, serializer=serializer)
    for i, value in enumerate(values):
        assert _raw(tmp_path, locations[i]) == serializer.serialize(value), repr(value)
        assert result.read(locations[i]).value == value


@pytest.mark.timeout(180)
def test_sigkill_loses_no_child_the_store_recorded(tmp_path: Path) -> None:
    flow = KillableFlow(tmp_path, "checkpoint=True", n=3000, sleep=0.002)
    proc = flow.start()
    # Kill once the store shows finished children (while more are running).
    recorded = _wait_for_locations(proc, 300)
    flow.kill(proc)
    assert len(recorded) >= 300, "the flow never got far enough to be interrupted"
    killed = flow.interrupted_run()
    finished = _locations(killed)  # a superset of what was seen before the kill
    assert set(recorded) <= set(finished) and len(finished) < 3000
    read = LocalResult(dir=flow.results).read
    assert all(read(loc).value == 3 * i for i, loc in finished.items())
    executions = flow.resume(killed)
    again = sorted(i for i in finished if executions[i] > 1)
    assert again == [], f"children re-executed after the store recorded them: {again[:10]}"


WAITING_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from ferroflow import Flow, task
    from ferroflow.results import LocalResult

    results_dir, release = sys.argv[1], sys.argv[2]

    @task(checkpoint=True, result=LocalResult(dir=results_dir))
    def first(x):
        return x + 1

    @task
    def blocked(xs):
        while not os.path.exists(release):  # until the test has seen `first` stored
            time.sleep(0.01)
        return sum(xs)

    with Flow("slow-after-fast") as flow:
        blocked(first.map([1, 2, 3]))
    print("STATE", type(flow.run()).__name__)
    """
)


@pytest.mark.timeout(120)
def test_finished_runs_reach_the_store_while_a_long_task_runs(tmp_path: Path) -> None:
    """Records and checkpoints of finished runs are not held back until the task that
    runs next ends: the test releases the blocked task only once it has read them."""
    script = tmp_path / "flow.py"
    script.write_text(WAITING_SCRIPT)
    release = tmp_path / "release"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "r"), str(release)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        found = _wait_for_locations(proc, 3)
        read = LocalResult(dir=tmp_path / "r").read
        assert sorted(found) == [0, 1, 2], "the finished children never reached the store"
        assert [read(found[i]).value for i in range(3)] == [2, 3, 4]
    finally:
        release.touch()
        out, _ = proc.communicate(timeout=60)
    assert "STATE Success" in out


def test_resume_restores_from_packs_and_reruns_what_is_damaged(tmp_path: Path) -> None:
    calls: list[int] = []
    broken = {"on": True}

    @task(checkpoint=True, result=LocalResult(dir=tmp_path))
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    @task
    def total(xs: list[int]) -> int:
        if broken["on"]:
            raise RuntimeError("transient")
        return sum(xs)

    with Flow("restore-packs") as flow:
        s = total(square.map(list(range(100))))
    assert not flow.run().is_successful()
    with open_store() as store:
        (old,) = store.list_flow_runs()
    (pack,) = [p for p in tmp_path.rglob("*.pack")]
    # Tear the last records off, as a kill in the middle of a write would.
    size = pack.stat().st_size
    with open(pack, "r+b") as f:
        f.truncate(size - 30)
    broken["on"] = False
    calls.clear()
    state = flow.run(resume=old.id)
    assert state.is_successful() and state.result[s].result == sum(x * x for x in range(100))
    # The damaged tail ran again; everything before it was restored.
    assert calls and calls == list(range(100 - len(calls), 100))
    assert len(calls) < 10


FULL_DISK_SCRIPT = textwrap.dedent(
    """
    import resource, signal, sys, warnings
    from ferroflow import Flow, task
    from ferroflow.results import LocalResult

    # Files may not grow past 256 KB: writing a pack block fails like a full disk.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))

    @task(checkpoint=True, result=LocalResult(dir=sys.argv[1]))
    def blob(i):
        return bytes([i % 256]) * 20_000

    with Flow("full-disk") as flow:
        m = blob.map(list(range(200)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = flow.run(record=False)
    children = state.result[m].map_states
    print("STATE", type(state).__name__)
    print("KINDS", sorted({type(c).__name__ for c in children}))
    failed = [c for c in children if c.is_failed()]
    print("FAILED", len(failed), failed[0].message if failed else "")
    for w in caught:
        print("WARNING", w.category.__name__, w.message)
    """
)


def test_a_pack_write_that_fails_is_reported_and_fails_the_rest(tmp_path: Path) -> None:
    script = tmp_path / "flow.py"
    script.write_text(FULL_DISK_SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "STATE Failed" in out
    assert "KINDS ['Failed', 'Success']" in out
    failed = next(line for line in out.splitlines() if line.startswith("FAILED"))
    assert "could not be written" in failed and "File too large" in failed
    warning = next(line for line in out.splitlines() if line.startswith("WARNING"))
    assert "RecordingWarning" in warning and "checkpoints of task 'blob'" in warning
    assert "run again on resume" in warning


def test_a_resumed_run_can_itself_be_resumed_without_rerunning(tmp_path: Path) -> None:
    """Restored children are recorded with their checkpoint in the resuming run too."""
    calls: list[int] = []
    broken = {"on": True}

    @task(checkpoint=True, result=LocalResult(dir=tmp_path))
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    @task(checkpoint=True, result=LocalResult(dir=tmp_path, location="one.bin"))
    def single() -> int:
        calls.append(-1)
        return 10

    @task
    def total(xs: list[int], extra: int) -> int:
        if broken["on"]:
            raise RuntimeError("still broken")
        return sum(xs) + extra

    with Flow("resume-twice") as flow:
        s = total(square.map(list(range(20))), single())
    assert not flow.run().is_successful()
    for attempt in range(2):  # resume the newest run: fails again, then succeeds
        with open_store() as store:
            newest = store.list_flow_runs(1)[0]
        calls.clear()
        broken["on"] = attempt == 0
        state = flow.run(resume=newest.id)
        assert calls == [], "restored runs were executed again"
    assert state.is_successful() and state.result[s].result == sum(x * x for x in range(20)) + 10
