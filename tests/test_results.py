"""Results: serializers, the framed checkpoint format, LocalResult, confinement, packs."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from ferroflow.exceptions import FerroflowError, ResultError
from ferroflow.results import (
    FORMAT_VERSION,
    JSONSerializer,
    LocalResult,
    MsgpackSerializer,
    PackWriter,
    PickleSerializer,
    Result,
    Serializer,
    decode_checkpoint,
    encode_checkpoint,
    render_location,
    template_keys,
)

PY = f"{sys.version_info[0]}.{sys.version_info[1]}"
OTHER_PY = f"{sys.version_info[0]}.{sys.version_info[1] + 1}"
SERIALIZERS = [PickleSerializer(), JSONSerializer(), MsgpackSerializer()]
PLAIN = {"a": [1, 2.5, None, True], "b": "é", "n": -(2**40)}


class Point:
    def __init__(self, x: int) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and other.x == self.x

    __hash__ = None  # type: ignore[assignment]


# ------------------------------------------------------------------------- serializers


@pytest.mark.parametrize("serializer", SERIALIZERS, ids=lambda s: s.name)
def test_serializer_round_trip_plain_data(serializer: Serializer) -> None:
    data = serializer.serialize(PLAIN)
    assert isinstance(data, bytes)
    assert serializer.deserialize(data) == PLAIN


def test_serializer_names() -> None:
    assert [s.name for s in SERIALIZERS] == ["pickle", "json", "msgpack"]
    assert PickleSerializer().python_version_sensitive
    assert not JSONSerializer().python_version_sensitive
    assert not MsgpackSerializer().python_version_sensitive


def test_pickle_serializer_handles_what_cloudpickle_handles() -> None:
    s = PickleSerializer()
    offset = 10

    def local_function(x: int) -> int:
        return x + offset

    class Local:
        def __init__(self) -> None:
            self.v = 3

    assert s.deserialize(s.serialize(lambda x: x * 2))(21) == 42
    assert s.deserialize(s.serialize(local_function))(1) == 11
    assert s.deserialize(s.serialize(Local())).v == 3
    assert s.deserialize(s.serialize(Point(4))) == Point(4)
    value = (1, {2, 3}, frozenset({"x"}), b"raw", 1.5 + 2j, None, [{"k": (1,)}])
    assert s.deserialize(s.serialize(value)) == value
    big = list(range(10_000))  # beyond the plain fast path's budget: cloudpickle
    assert s.deserialize(s.serialize(big)) == big


def test_json_and_msgpack_turn_tuples_into_lists() -> None:
    for s in (JSONSerializer(), MsgpackSerializer()):
        assert s.deserialize(s.serialize((1, 2))) == [1, 2]
    assert MsgpackSerializer().deserialize(MsgpackSerializer().serialize(b"\x00")) == b"\x00"
    assert JSONSerializer(sort_keys=True).serialize({"b": 1, "a": 2}) == b'{"a": 2, "b": 1}'


def test_importing_results_imports_no_serializer_library() -> None:
    code = (
        "import sys, ferroflow.results, ferroflow.cache_validators; "
        "bad = [m for m in ('cloudpickle', 'msgpack', 'json', 'pydantic') if m in sys.modules]; "
        "print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------------ framed format


@pytest.mark.parametrize("serializer", SERIALIZERS, ids=lambda s: s.name)
def test_checkpoint_header_records_serializer_python_and_format(serializer: Serializer) -> None:
    data = encode_checkpoint(PLAIN, serializer)
    header = data.split(b"\n", 1)[0].decode()
    assert header == f"ferroflow {FORMAT_VERSION} value {serializer.name} {PY}"
    assert decode_checkpoint(data, serializer) == PLAIN


def test_reading_with_another_serializer_names_both(tmp_path: Path) -> None:
    LocalResult(dir=tmp_path, serializer=JSONSerializer(), location="x.bin").write([1])
    with pytest.raises(ResultError) as info:
        LocalResult(dir=tmp_path).read("x.bin")
    assert str(info.value) == (
        f"checkpoint 'x.bin' was written with serializer 'json' on Python {PY}; "
        f"this task reads it with 'pickle' on Python {PY}"
    )


def test_reading_a_pickle_from_another_python_names_both(tmp_path: Path) -> None:
    payload = PickleSerializer().serialize({"a": 1})
    (tmp_path / "old.bin").write_bytes(f"ferroflow 1 value pickle {OTHER_PY}\n".encode() + payload)
    with pytest.raises(ResultError) as info:
        LocalResult(dir=tmp_path).read("old.bin")
    message = str(info.value)
    assert f"written with serializer 'pickle' on Python {OTHER_PY}" in message
    assert f"reads it with 'pickle' on Python {PY}" in message
    assert "'old.bin'" in message


def test_json_from_another_python_is_readable(tmp_path: Path) -> None:
    # JSON and msgpack bytes do not depend on the Python version: only pickles are refused.
    (tmp_path / "j.json").write_bytes(f"ferroflow 1 value json {OTHER_PY}\n[1, 2]".encode())
    assert LocalResult(dir=tmp_path, serializer=JSONSerializer()).read("j.json").value == [1, 2]


def test_other_serializer_and_python_both_named(tmp_path: Path) -> None:
    (tmp_path / "m").write_bytes(f"ferroflow 1 value msgpack {OTHER_PY}\n\x01".encode())
    with pytest.raises(ResultError, match=rf"'msgpack' on Python {OTHER_PY}.*'pickle' on Python"):
        LocalResult(dir=tmp_path).read("m")


def test_newer_format_not_a_checkpoint_and_corrupt_payload(tmp_path: Path) -> None:
    r = LocalResult(dir=tmp_path)
    (tmp_path / "new.bin").write_bytes(f"ferroflow 99 value pickle {PY}\n".encode())
    with pytest.raises(ResultError, match="format 99, newer than this ferroflow reads"):
        r.read("new.bin")
    (tmp_path / "plain.txt").write_text("hello")
    with pytest.raises(ResultError, match="not a ferroflow checkpoint"):
        r.read("plain.txt")
    (tmp_path / "bad.bin").write_bytes(f"ferroflow 1 value pickle {PY}\nnot a pickle".encode())
    with pytest.raises(ResultError, match=r"cannot deserialize checkpoint 'bad.bin' with 'pickle'"):
        r.read("bad.bin")
    (tmp_path / "short.bin").write_bytes(b"ferroflow 1\n")
    with pytest.raises(ResultError, match="corrupt header"):
        r.read("short.bin")


def test_serializer_name_must_fit_the_header() -> None:
    class Spacey(JSONSerializer):
        name = "my json"

    with pytest.raises(ResultError, match="cannot go in a checkpoint header"):
        encode_checkpoint(1, Spacey())


# ---------------------------------------------------------------------------- templates


def test_render_location_and_unknown_key() -> None:
    assert render_location("{a}/{b:03d}.bin", a="x", b=7) == "x/007.bin"
    assert render_location("{p[n]}-{d.year}", p={"n": 1}, d=date(2024, 1, 2)) == "1-2024"
    with pytest.raises(ResultError) as info:
        render_location("{task_name}/{mpa_index}.bin", task_name="t", map_index=0)
    message = str(info.value)
    assert "unknown key 'mpa_index'" in message
    assert "available keys: map_index, task_name" in message


def test_bad_templates_raise_result_error() -> None:
    with pytest.raises(ResultError, match="cannot render location template"):
        render_location("{a", a=1)
    with pytest.raises(ResultError, match="cannot render location template"):
        render_location("{a.missing}", a=1)
    with pytest.raises(ResultError, match="cannot render location template"):
        render_location("{a:%Y}", a=1)
    with pytest.raises(ResultError, match="available keys: none"):
        render_location("{a}")


def test_template_keys() -> None:
    assert template_keys("{task_name}/{params[n]}/{today:%Y}-{x.y}.bin") == {
        "task_name",
        "params",
        "today",
        "x",
    }
    with pytest.raises(ResultError, match="malformed"):
        template_keys("{oops")


def test_result_format_and_copy() -> None:
    r = Result(location="{flow}/{task}.bin")
    assert r.format(flow="f", task="t") == "f/t.bin"
    with pytest.raises(ResultError, match="unknown key 'task'"):
        r.format(flow="f")
    c = r.copy()
    c.location = "other"
    assert r.location == "{flow}/{task}.bin"
    assert c.serializer is r.serializer
    assert isinstance(r.serializer, PickleSerializer)
    a, b = Result().format(), Result().format()
    assert a != b and a.endswith(".result")
    for call in (lambda: r.exists("x"), lambda: r.read("x"), lambda: r.write(1)):
        with pytest.raises(NotImplementedError):
            call()
    assert issubclass(ResultError, FerroflowError)


# -------------------------------------------------------------------------- LocalResult


@pytest.mark.parametrize("serializer", SERIALIZERS, ids=lambda s: s.name)
def test_local_result_write_read_exists(tmp_path: Path, serializer: Serializer) -> None:
    r = LocalResult(dir=tmp_path, location="{task_name}/{map_index}.bin", serializer=serializer)
    written = r.write(PLAIN, task_name="load", map_index=3)
    assert written.location == "load/3.bin"
    assert written.value == PLAIN
    assert r.location == "{task_name}/{map_index}.bin" and r.value is None
    assert (tmp_path / "load" / "3.bin").is_file()
    assert r.exists("load/3.bin")
    assert r.exists("{task_name}/{map_index}.bin", task_name="load", map_index=3)
    assert not r.exists("load/4.bin")
    assert not r.exists("load")  # a directory is not a checkpoint
    read = r.read("load/3.bin")
    assert read.value == PLAIN and read.location == "load/3.bin"
    assert read.serializer is r.serializer and isinstance(read, LocalResult)


def test_write_overwrites_atomically_and_leaves_no_temp_files(tmp_path: Path) -> None:
    r = LocalResult(dir=tmp_path, location="v.bin")
    r.write(1)
    r.write(2)
    assert r.read("v.bin").value == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.bin"]


def test_concurrent_writes_to_one_location_leave_a_whole_checkpoint(tmp_path: Path) -> None:
    r = LocalResult(dir=tmp_path, location="same.bin")
    values = [list(range(i, i + 2000)) for i in range(8)]
    threads = [threading.Thread(target=r.write, args=(v,)) for v in values]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert r.read("same.bin").value in values
    assert [p.name for p in tmp_path.iterdir()] == ["same.bin"]


def test_unserializable_value_is_a_result_error_and_writes_nothing(tmp_path: Path) -> None:
    r = LocalResult(dir=tmp_path, location="x.json", serializer=JSONSerializer())
    with pytest.raises(ResultError, match=r"cannot serialize a value of type set with 'json'"):
        r.write({1, 2})
    p = LocalResult(dir=tmp_path, location="lock.bin")
    with pytest.raises(ResultError, match="cannot serialize a value of type lock with 'pickle'"):
        p.write(threading.Lock())
    assert list(tmp_path.iterdir()) == []


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ResultError, match=r"checkpoint 'nope\.bin' not found in result directory"):
        LocalResult(dir=tmp_path).read("nope.bin")


def test_default_dir_is_under_ferroflow_home(
    _ferroflow_home: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    r = LocalResult(location="x.bin")
    assert r.dir == Path(_ferroflow_home) / "results"
    assert r.dir.is_dir()  # validate_dir created it
    r.write(5)
    assert (Path(_ferroflow_home) / "results" / "x.bin").is_file()
    # Looked up on use: a later FERROFLOW_HOME is followed.
    monkeypatch.setenv("FERROFLOW_HOME", str(tmp_path / "home2"))
    assert r.dir == tmp_path / "home2" / "results"
    monkeypatch.delenv("FERROFLOW_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert LocalResult(validate_dir=False).dir == tmp_path / "user" / ".ferroflow" / "results"


def test_dir_is_absolute_and_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert LocalResult(dir="rel").dir == tmp_path / "rel"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert LocalResult(dir="~/res", validate_dir=False).dir == tmp_path / "res"
    assert "LocalResult(dir=" in repr(LocalResult(dir="rel"))


def test_unwritable_dir_names_the_directory_and_the_os_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    bad = blocker / "sub"
    with pytest.raises(ResultError) as info:
        LocalResult(dir=bad)
    message = str(info.value)
    assert str(bad) in message
    assert "Not a directory" in message or "File exists" in message

    r = LocalResult(dir=bad, location="x.bin", validate_dir=False)
    with pytest.raises(ResultError) as info:
        r.write(1)
    assert str(bad) in str(info.value) and "errno" in str(info.value)
    with pytest.raises(ResultError, match=str(bad)):
        r.pack_writer("p.pack")
    with pytest.raises(ResultError, match=r"a file is in the way \(not a directory\)"):
        LocalResult(dir=blocker)


def test_subdirectory_blocked_by_a_file(tmp_path: Path) -> None:
    r = LocalResult(dir=tmp_path, location="{a}/{b}.bin")
    (tmp_path / "taken").write_text("file")
    with pytest.raises(
        ResultError, match=r"cannot create directory .*taken': a file is in the way"
    ):
        r.write(1, a="taken", b="x")


# -------------------------------------------------------------------------- confinement


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("/etc/passwd", "is an absolute path"),
        ("~/x.bin", "looks like a home-relative path"),
        ("../x.bin", "escapes the result directory"),
        ("a/../../x.bin", "escapes the result directory"),
        ("a/../..", "escapes the result directory"),
        (".", "escapes the result directory"),
        ("", "is not a valid file name"),
        ("a\x00b", "is not a valid file name"),
    ],
)
def test_locations_must_stay_inside_dir(tmp_path: Path, location: str, reason: str) -> None:
    r = LocalResult(dir=tmp_path / "res")
    for call in (
        lambda: r.write(1),
        lambda: r.read(location),
        lambda: r.exists(location),
        lambda: r.pack_writer(location),
        lambda: r.path_of(location),
    ):
        r.location = location
        with pytest.raises(ResultError) as info:
            call()
        assert reason in str(info.value)
        assert "result locations must be relative paths inside the result directory" in str(
            info.value
        )
    assert sorted(os.listdir(tmp_path)) == ["res"]


def test_template_values_cannot_climb_out(tmp_path: Path) -> None:
    r = LocalResult(dir=tmp_path / "res", location="{name}/out.bin")
    with pytest.raises(ResultError, match=r"location '\.\./\.\./evil/out\.bin' escapes"):
        r.write(1, name="../../evil")
    assert not (tmp_path / "evil").exists()
    assert r.write(1, name="a/../b").location == "a/../b/out.bin"
    assert (tmp_path / "res" / "b" / "out.bin").is_file()


def test_symlinks_resolving_outside_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(encode_checkpoint("secret", PickleSerializer()))
    res = tmp_path / "res"
    res.mkdir()
    (res / "link").symlink_to(outside, target_is_directory=True)
    (res / "file_link.bin").symlink_to(outside / "secret.bin")
    r = LocalResult(dir=res, location="link/x.bin")
    with pytest.raises(ResultError, match="through a symlink, outside the result directory"):
        r.write(1)
    assert not (outside / "x.bin").exists()
    for location in ("link/secret.bin", "file_link.bin"):
        with pytest.raises(ResultError, match="through a symlink"):
            r.read(location)
        with pytest.raises(ResultError, match="through a symlink"):
            r.exists(location)
    with pytest.raises(ResultError, match="through a symlink"):
        r.pack_writer("link/p.pack")


def test_symlinks_inside_and_a_symlinked_dir_are_fine(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "sub").mkdir()
    (real / "alias").symlink_to(real / "sub", target_is_directory=True)
    via_link = tmp_path / "dirlink"
    via_link.symlink_to(real, target_is_directory=True)
    r = LocalResult(dir=via_link, location="alias/x.bin")
    assert r.write(7).location == "alias/x.bin"
    assert r.read("alias/x.bin").value == 7
    assert (real / "sub" / "x.bin").is_file()


def test_write_refuses_pack_like_locations(tmp_path: Path) -> None:
    r = LocalResult(dir=tmp_path, location="x#1:2")
    with pytest.raises(ResultError, match="ends like a pack record"):
        r.write(1)
    with pytest.raises(ResultError, match="ends like a pack record"):
        r.pack_writer("p#1:2")
    plain = LocalResult(dir=tmp_path, location="x#y.bin")
    written = plain.write(3).location
    assert written == "x#y.bin"  # '#' alone is fine
    assert plain.read(written).value == 3


# -------------------------------------------------------------------------------- packs


def test_pack_round_trip(tmp_path: Path) -> None:
    r = LocalResult(dir=tmp_path)
    values: list[Any] = [0, "two", [3], {"four": 4}, None, b"\x00" * 70_000, Point(1)]
    with r.pack_writer("runs/abc/task.pack") as w:
        assert isinstance(w, PackWriter) and not w.closed
        locations = [w.append(v) for v in values]
    assert w.closed
    assert all(loc.startswith("runs/abc/task.pack#") for loc in locations)
    assert [p.name for p in (tmp_path / "runs" / "abc").iterdir()] == ["task.pack"]
    assert [r.read(loc).value for loc in locations] == values
    assert r.read_many(locations) == values
    assert r.read_many(list(reversed(locations))) == list(reversed(values))
    assert all(r.exists(loc) for loc in locations)
    offset, length = map(int, locations[-1].rsplit("#", 1)[1].split(":"))
    assert not r.exists(f"runs/abc/task.pack#{offset}:{length + 1}")
    assert not r.exists("runs/abc/none.pack#40:1")
    header = (tmp_path / "runs/abc/task.pack").read_bytes().split(b"\n", 1)[0]
    assert header == f"ferroflow 1 pack pickle {PY}".encode()


def test_read_many_mixes_packs_and_files(tmp_path: Path) -> None:
    r = LocalResult(dir=tmp_path, location="{i}.bin", serializer=MsgpackSerializer())
    single = r.write("file", i=1).location
    assert single is not None
    with r.pack_writer("a.pack") as a, r.pack_writer("b.pack") as b:
        locs = [a.append(1), b.append(2), a.append(3)]
    assert r.read_many([locs[0], single, locs[1], locs[2]]) == [1, "file", 2, 3]
    assert r.read_many([]) == []


def test_pack_locations_are_readable_after_flush(tmp_path: Path) -> None:
    r = LocalResult(dir=tmp_path)
    w = r.pack_writer("p.pack")
    loc = w.append(123)
    with pytest.raises(ResultError, match=r"truncated .*was the writer flushed"):
        r.read(loc)
    w.flush()
    assert r.read(loc).value == 123
    w.flush(fsync=True)
    w.close()
    w.close()
    w.flush()
    with pytest.raises(ResultError, match="is closed"):
        w.append(1)
    assert "closed" in repr(w)


def test_concurrent_appends_from_threads(tmp_path: Path) -> None:
    r = LocalResult(dir=tmp_path)
    per_thread, n_threads = 2000, 8
    results: dict[int, list[str]] = {}
    start = threading.Barrier(n_threads)
    with r.pack_writer("many.pack") as w:

        def work(t: int) -> None:
            start.wait()
            results[t] = [w.append((t, i, "x" * (i % 7))) for i in range(per_thread)]

        threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    all_locations = [loc for t in range(n_threads) for loc in results[t]]
    assert len(set(all_locations)) == per_thread * n_threads
    values = r.read_many(all_locations)
    expected = [(t, i, "x" * (i % 7)) for t in range(n_threads) for i in range(per_thread)]
    assert values == expected
    # Records tile the file exactly: no overlap, no gap.
    spans = sorted(tuple(map(int, loc.rsplit("#", 1)[1].split(":"))) for loc in all_locations)
    for (o1, l1), (o2, _) in itertools.pairwise(spans):
        assert o1 + l1 + 4 == o2
    assert spans[-1][0] + spans[-1][1] == (tmp_path / "many.pack").stat().st_size


def test_reopening_a_pack_appends_and_survives_a_torn_tail(tmp_path: Path) -> None:
    r = LocalResult(dir=tmp_path)
    with r.pack_writer("p.pack") as w:
        first = [w.append(i) for i in range(3)]
    with open(tmp_path / "p.pack", "ab") as f:  # a crash in the middle of an append
        f.write(b"\x00\x00\x10\x00partial")
    with r.pack_writer("p.pack") as w:
        second = [w.append(i) for i in range(3, 6)]
    assert r.read_many(first + second) == list(range(6))


def test_pack_writer_refuses_incompatible_or_busy_files(tmp_path: Path) -> None:
    r = LocalResult(dir=tmp_path, location="single.bin")
    with r.pack_writer("p.pack") as w:
        w.append(1)
        with pytest.raises(ResultError, match="being written by another writer"):
            r.pack_writer("p.pack")
    json_result = LocalResult(dir=tmp_path, serializer=JSONSerializer())
    with pytest.raises(
        ResultError, match=r"written with serializer 'pickle'.*reads it with 'json'"
    ):
        json_result.pack_writer("p.pack")
    r.write(1)
    with pytest.raises(ResultError, match="single 'value' checkpoint, not a pack"):
        r.pack_writer("single.bin")
    (tmp_path / "junk.pack").write_bytes(b"junk")
    with pytest.raises(ResultError, match="not a ferroflow checkpoint"):
        r.pack_writer("junk.pack")


def test_pack_read_errors(tmp_path: Path) -> None:
    r = LocalResult(dir=tmp_path, location="single.bin")
    with r.pack_writer("p.pack") as w:
        loc = w.append("hello")
    offset, length = map(int, loc.rsplit("#", 1)[1].split(":"))
    with pytest.raises(ResultError, match="is a 'pack' file; read one of its records"):
        r.read("p.pack")
    with pytest.raises(ResultError, match="points into the header"):
        r.read("p.pack#2:3")
    with pytest.raises(ResultError, match="does not start a record of that length"):
        r.read(f"p.pack#{offset}:{length - 1}")
    with pytest.raises(ResultError, match="does not start a record of that length"):
        r.read_many([loc, f"p.pack#{offset}:{length - 1}"])
    with pytest.raises(ResultError, match="truncated"):
        r.read(f"p.pack#{offset}:{length + 100}")
    with pytest.raises(ResultError, match=r"pack file for 'gone\.pack' not found"):
        r.read("gone.pack#40:2")
    r.write(1)
    with pytest.raises(ResultError, match="not a pack; read it without"):
        r.read("single.bin#40:2")
    with pytest.raises(ResultError, match=r"written with serializer 'pickle'.*'msgpack'"):
        LocalResult(dir=tmp_path, serializer=MsgpackSerializer()).read(loc)
    header = f"ferroflow 1 pack json {PY}\n".encode()
    (tmp_path / "bad.pack").write_bytes(header + b"\x00\x00\x00\x03{{{")
    bad = f"bad.pack#{len(header) + 4}:3"
    json_result = LocalResult(dir=tmp_path, serializer=JSONSerializer())
    for call in (lambda: json_result.read(bad), lambda: json_result.read_many([bad, bad])):
        with pytest.raises(ResultError, match=r"cannot deserialize checkpoint 'bad\.pack#\d+:3'"):
            call()


def test_pack_is_fast_for_many_small_values(tmp_path: Path) -> None:
    r = LocalResult(dir=tmp_path)
    n = 100_000
    with r.pack_writer("runs/1/map.pack") as w:
        locations = [w.append(i) for i in range(n)]
    assert r.read_many(locations[::1000]) == list(range(0, n, 1000))
    assert len(os.listdir(tmp_path / "runs" / "1")) == 1
