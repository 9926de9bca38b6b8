"""Cache validators (Prefect 1.x semantics) and canonical_hash."""

from __future__ import annotations

import dataclasses
import enum
import os
import re
import subprocess
import sys
import textwrap
from collections import OrderedDict, namedtuple
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from pathlib import Path, PurePosixPath, PureWindowsPath
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import pydantic
import pytest

from ferroflow.cache_validators import (
    CacheEntry,
    all_inputs,
    all_parameters,
    canonical_hash,
    duration_only,
    never_use,
    partial_inputs_only,
    partial_parameters_only,
)
from ferroflow.results import Result

NOW = datetime.now(timezone.utc)
FUTURE = NOW + timedelta(hours=1)
PAST = NOW - timedelta(seconds=1)


# ---------------------------------------------------------------------------- validators


def test_never_use() -> None:
    assert never_use(CacheEntry(FUTURE, {"x": 1}), {"x": 1}, {}) is False
    assert never_use(CacheEntry(None), {}, {}) is False


def test_duration_only() -> None:
    assert duration_only(CacheEntry(FUTURE), {"x": 1}, {"n": 2}) is True
    assert duration_only(CacheEntry(PAST), {}, {}) is False
    assert duration_only(CacheEntry(None), {}, {}) is True  # no expiration: never expires
    # A naive expiration is taken as UTC.
    naive_future = (NOW + timedelta(hours=1)).replace(tzinfo=None)
    naive_past = (NOW - timedelta(hours=1)).replace(tzinfo=None)
    assert duration_only(CacheEntry(naive_future), {}, {}) is True
    assert duration_only(CacheEntry(naive_past), {}, {}) is False
    # Another time zone is the same instant.
    plus5 = timezone(timedelta(hours=5))
    assert duration_only(CacheEntry(FUTURE.astimezone(plus5)), {}, {}) is True
    assert duration_only(CacheEntry(PAST.astimezone(plus5)), {}, {}) is False


def test_expiry_boundary() -> None:
    moment = datetime(2030, 1, 1, tzinfo=timezone.utc)
    entry = CacheEntry(moment)
    assert not entry.is_expired(moment - timedelta(microseconds=1))
    assert entry.is_expired(moment)  # valid while now < expiration
    assert entry.is_expired(moment.replace(tzinfo=None) + timedelta(seconds=1))
    assert not CacheEntry(None).is_expired()


def test_all_inputs() -> None:
    entry = CacheEntry(FUTURE, inputs={"x": 1, "y": [1, 2]})
    assert all_inputs(entry, {"x": 1, "y": [1, 2]}, {}) is True
    assert all_inputs(entry, {"x": 2, "y": [1, 2]}, {}) is False
    assert all_inputs(entry, {"x": 1}, {}) is False  # a missing input
    assert all_inputs(entry, {"x": 1, "y": [1, 2], "z": 0}, {}) is False  # an extra input
    assert all_inputs(CacheEntry(PAST, inputs={"x": 1}), {"x": 1}, {}) is False
    assert all_inputs(CacheEntry(FUTURE), {}, {}) is True


def test_all_parameters() -> None:
    entry = CacheEntry(FUTURE, inputs={"x": 1}, parameters={"n": 3, "mode": "fast"})
    assert all_parameters(entry, {"x": 999}, {"n": 3, "mode": "fast"}) is True
    assert all_parameters(entry, {}, {"n": 4, "mode": "fast"}) is False
    assert all_parameters(entry, {}, {"n": 3}) is False
    expired = CacheEntry(PAST, parameters={"n": 3})
    assert all_parameters(expired, {}, {"n": 3}) is False


def test_partial_inputs_only() -> None:
    entry = CacheEntry(FUTURE, inputs={"x": 1, "y": 2})
    only_x = partial_inputs_only(["x"])
    assert only_x(entry, {"x": 1, "y": 100}, {}) is True
    assert only_x(entry, {"x": 5, "y": 2}, {}) is False
    assert only_x(CacheEntry(PAST, inputs={"x": 1}), {"x": 1}, {}) is False
    assert only_x(entry, {"y": 2}, {}) is False  # named input missing now, present before
    assert partial_inputs_only(["z"])(entry, {"x": 0}, {}) is True  # missing on both sides
    assert partial_inputs_only(("x", "y"))(entry, {"x": 1, "y": 2}, {}) is True
    nothing = partial_inputs_only(None)
    assert nothing(entry, {"x": "anything"}, {}) is True
    assert nothing(CacheEntry(PAST), {}, {}) is False
    assert partial_inputs_only()(entry, {}, {}) is True
    assert only_x.validate_on == ["x"]  # type: ignore[attr-defined]


def test_partial_parameters_only() -> None:
    entry = CacheEntry(FUTURE, parameters={"n": 1, "m": 2})
    only_n = partial_parameters_only(["n"])
    assert only_n(entry, {}, {"n": 1, "m": 3}) is True
    assert only_n(entry, {}, {"n": 2, "m": 2}) is False
    assert only_n(CacheEntry(PAST, parameters={"n": 1}), {}, {"n": 1}) is False
    assert partial_parameters_only(None)(entry, {}, {"n": 99}) is True


def test_validate_on_must_be_a_list_of_names() -> None:
    with pytest.raises(TypeError, match="takes a list of names, not the string 'x'"):
        partial_inputs_only("x")
    with pytest.raises(TypeError, match="partial_parameters_only"):
        partial_parameters_only("n")


def test_prefect_style_state_objects_work() -> None:
    state = SimpleNamespace(
        cache_expiration=FUTURE, cached_inputs={"x": 1}, cached_parameters={"n": 2}
    )
    assert all_inputs(state, {"x": 1}, {}) is True
    assert all_parameters(state, {}, {"n": 2}) is True
    assert duration_only(SimpleNamespace(cache_expiration=PAST), {}, {}) is False
    bare = SimpleNamespace()  # no fields at all: never expires, no inputs
    assert all_inputs(bare, {}, {}) is True
    entry = CacheEntry(FUTURE, {"x": 1}, {"n": 2})
    assert (entry.cache_expiration, entry.cached_inputs, entry.cached_parameters) == (
        FUTURE,
        {"x": 1},
        {"n": 2},
    )


def test_cached_inputs_held_as_results_compare_by_value() -> None:
    held = Result()
    held.value = [1, 2]
    assert all_inputs(CacheEntry(FUTURE, {"x": held}), {"x": [1, 2]}, {}) is True
    assert all_inputs(CacheEntry(FUTURE, {"x": held}), {"x": [1, 3]}, {}) is False


def test_value_comparison_uses_equality_and_never_raises() -> None:
    # Plain entries follow Prefect: == decides, so 1 and 1.0 match.
    assert all_inputs(CacheEntry(FUTURE, {"x": 1}), {"x": 1.0}, {}) is True

    class Ambiguous:
        def __eq__(self, other: object) -> bool:
            raise ValueError("truth value is ambiguous")

        def __repr__(self) -> str:
            return "Ambiguous()"

    # == raises: fall back to canonical hashes (equal here), never an exception.
    assert all_inputs(CacheEntry(FUTURE, {"x": Ambiguous()}), {"x": Ambiguous()}, {}) is True

    class Opaque:
        def __eq__(self, other: object) -> bool:
            raise ValueError("no")

    assert all_inputs(CacheEntry(FUTURE, {"x": Opaque()}), {"x": Opaque()}, {}) is False


def test_hashed_entries() -> None:
    entry = CacheEntry.with_hashes(FUTURE, {"x": [1, 2], "y": "a"}, {"n": 3})
    assert entry.hashed
    assert entry.inputs == {"x": canonical_hash([1, 2]), "y": canonical_hash("a")}
    assert all_inputs(entry, {"x": [1, 2], "y": "a"}, {}) is True
    assert all_inputs(entry, {"x": [1, 2], "y": "b"}, {}) is False
    assert all_inputs(entry, {"x": [1, 2]}, {}) is False
    assert all_parameters(entry, {}, {"n": 3}) is True
    assert all_parameters(entry, {}, {"n": 3.0}) is False  # hashes are type-tagged
    assert partial_inputs_only(["y"])(entry, {"x": 0, "y": "a"}, {}) is True
    assert partial_parameters_only(["n"])(entry, {}, {"n": 4}) is False
    expired = CacheEntry.with_hashes(PAST, {"x": 1})
    assert all_inputs(expired, {"x": 1}, {}) is False
    assert CacheEntry.with_hashes(None).inputs == {}


def test_hashed_entry_with_unhashable_input_never_matches() -> None:
    entry = CacheEntry.with_hashes(FUTURE, {"x": object(), "y": 1})
    assert entry.inputs["x"] is None
    assert all_inputs(entry, {"x": object(), "y": 1}, {}) is False
    assert partial_inputs_only(["y"])(entry, {"x": object(), "y": 1}, {}) is True
    # The current value unhashable: no match, no exception.
    entry2 = CacheEntry.with_hashes(FUTURE, {"x": 1})
    assert all_inputs(entry2, {"x": object()}, {}) is False


def test_cache_entry_is_frozen_and_picklable() -> None:
    import pickle

    entry = CacheEntry.with_hashes(FUTURE, {"x": 1}, {"n": 2})
    assert pickle.loads(pickle.dumps(entry)) == entry
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.expiration = None  # type: ignore[misc]


# ------------------------------------------------------------------------ canonical_hash


class Color(enum.Enum):
    RED = 1
    ALSO_RED = 1.0


@dataclasses.dataclass
class Point:
    x: int
    y: Any = None
    note: str = dataclasses.field(default="", compare=False)


class Model(pydantic.BaseModel):
    name: str
    tags: list[str] = []
    inner: Point | None = None


Pair = namedtuple("Pair", "a b")


class WithRepr:
    def __init__(self, v: int) -> None:
        self.v = v

    def __repr__(self) -> str:
        return f"WithRepr({self.v})"


class NoRepr:
    pass


class Shouty(str):
    def __str__(self) -> str:
        return "SHOUT"


def test_hash_is_sha256_hex() -> None:
    assert re.fullmatch("[0-9a-f]{64}", canonical_hash("x"))


def test_hash_is_pinned() -> None:
    # The canonical encoding is a stored format (cache keys in the run store): changing it
    # invalidates every durable cache. Bump _CANON_VERSION deliberately if it must change.
    value = {"a": [1, 2.5, None, True], "b": ("x", b"y"), "c": {3, 4}}
    assert canonical_hash(value) == PINNED


PINNED = "7ac17bc9c7ec039d55eb4c74b545d93e7b6a63557aca1a95b06551d046e1fb6e"


def test_type_tagging_keeps_equal_values_of_other_types_apart() -> None:
    groups: list[list[Any]] = [
        [1, 1.0, True, Decimal(1), Fraction(1), 1 + 0j],
        [0, 0.0, False, None, "", b"", [], (), {}, set(), frozenset()],
        [(1, 2), [1, 2]],
        [b"ab", bytearray(b"ab"), "ab"],
        [{1, 2}, frozenset({1, 2})],
        [{"a": 1}, OrderedDict(a=1), Pair(1, 2), (1, 2)],
        [0.0, -0.0],
        [Decimal("1.0"), Decimal("1.00")],
        [date(2024, 1, 2), datetime(2024, 1, 2)],
        [datetime(2024, 1, 2, 3), datetime(2024, 1, 2, 3, tzinfo=timezone.utc)],
        [Color.RED, 1],
        [PurePosixPath("a/b"), PureWindowsPath("a/b"), "a/b"],
        ["x", Shouty("x")],
    ]
    for group in groups:
        hashes = [canonical_hash(v) for v in group]
        assert len(set(hashes)) == len(group), group


def test_equal_values_hash_equal() -> None:
    assert canonical_hash({"a": 1, "b": 2}) == canonical_hash({"b": 2, "a": 1})
    assert canonical_hash({3, 1, 2}) == canonical_hash({2, 3, 1})
    assert canonical_hash({1: "a", "1": "b"}) == canonical_hash({"1": "b", 1: "a"})
    assert canonical_hash(float("nan")) == canonical_hash(float("-nan"))
    assert canonical_hash(Path("a/b")) == canonical_hash(PurePosixPath("a/b"))
    assert canonical_hash(Point(1, [2])) == canonical_hash(Point(1, [2], note="ignored"))
    assert canonical_hash(Point(1, [2])) != canonical_hash(Point(1, [3]))
    assert canonical_hash(WithRepr(3)) == canonical_hash(WithRepr(3))
    assert canonical_hash(WithRepr(3)) != canonical_hash(WithRepr(4))


def test_many_types_have_canonical_forms() -> None:
    values: list[Any] = [
        None,
        True,
        10**5000,  # beyond int->str digit limits
        -7,
        3.25,
        2 - 1j,
        "é\ud800",  # a lone surrogate
        b"\x00",
        memoryview(b"mv"),
        datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=2))),
        date(2024, 2, 29),
        time(12, 30),
        timedelta(days=1, seconds=2),
        Decimal("3.14"),
        Fraction(1, 3),
        UUID(int=5),
        Path("/tmp/x"),
        Color.ALSO_RED,
        Point(1, Point(2)),
        Model(name="m", tags=["a"], inner=Point(3)),
        Pair(1, [2]),
        [[[]]],
        {"k": ({1}, frozenset({(1, 2)}))},
        WithRepr(1),
        NoRepr,  # a class: its repr names it, no address
        enum.Enum,
    ]
    hashes = [canonical_hash(v) for v in values]
    assert len(set(hashes)) == len(values)
    assert hashes == [canonical_hash(v) for v in values]


def test_pydantic_models_hash_by_class_and_fields() -> None:
    assert canonical_hash(Model(name="m")) == canonical_hash(Model(name="m", tags=[]))
    assert canonical_hash(Model(name="m")) != canonical_hash(Model(name="n"))

    class Other(pydantic.BaseModel):
        name: str
        tags: list[str] = []
        inner: Point | None = None

    assert canonical_hash(Other(name="m")) != canonical_hash(Model(name="m"))


def test_no_canonical_form_raises_type_error_naming_the_type() -> None:
    with pytest.raises(TypeError, match=r"type builtins\.object .*no custom __repr__"):
        canonical_hash(object())
    with pytest.raises(TypeError, match=r"test_cache_validators\.NoRepr"):
        canonical_hash({"deep": [1, (2, NoRepr())]})
    with pytest.raises(TypeError, match="depends on a memory address"):
        canonical_hash(lambda: 1)
    with pytest.raises(TypeError, match="depends on a memory address"):
        canonical_hash(test_hash_is_sha256_hex)


def test_self_reference_raises_value_error() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(ValueError, match="contains itself"):
        canonical_hash(loop)
    point = Point(1)
    point.y = point
    with pytest.raises(ValueError, match="contains itself"):
        canonical_hash(point)
    shared = [1]
    assert canonical_hash([shared, shared]) == canonical_hash([[1], [1]])  # not a cycle


STABILITY_SCRIPT = textwrap.dedent(
    """
    from ferroflow.cache_validators import canonical_hash
    value = {"b": {3, 1, 2}, "a": [1, 2.5, "x", b"y", None, True], "c": frozenset({"p", "q"})}
    print(canonical_hash(value))
    """
)


def test_hash_is_stable_across_processes_and_hash_seeds() -> None:
    outputs = set()
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", STABILITY_SCRIPT],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        outputs.add(done.stdout.strip())
    assert len(outputs) == 1
    (only,) = outputs
    assert len(only) == 64
