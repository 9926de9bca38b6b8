"""Mapping (SPEC "Mapping (fan-out)"): map, unmapped, mapped, flatten, map over map,
reduce, apply_map, failures inside maps, depth-first order, releasing results."""

from __future__ import annotations

from typing import Any

import pytest

from _tasks import Ledger, add, inc, total
from ferroflow import (
    Flow,
    apply_map,
    case,
    context,
    flatten,
    mapped,
    signals,
    task,
    triggers,
    unmapped,
)
from ferroflow.executors import LocalExecutor, ThreadExecutor
from ferroflow.states import Failed, Mapped, Skipped, Success, TriggerFailed


@task
def numbers(n: int) -> list[int]:
    return list(range(n))


def test_map_and_reduce(executor: Any) -> None:
    with Flow("map") as flow:
        xs = numbers(5)
        ys = inc.map(xs)
        s = total(ys)
    state = flow.run(executor=executor)
    assert state.is_successful()
    ms = state.result[ys]
    assert isinstance(ms, Mapped)
    assert ms.result == [1, 2, 3, 4, 5]
    assert [type(c) for c in ms.map_states] == [Success] * 5
    assert state.result[s].result == 15


def test_map_over_constant_list_unmapped_and_zip(executor: Any) -> None:
    with Flow("zip") as flow:
        a = add.map([1, 2, 3], y=unmapped(10))
        b = add.map([1, 2, 3, 4], numbers(2))  # zips to the shortest
        c = add(x=mapped(numbers(3)), y=100)
    state = flow.run(executor=executor)
    assert state.result[a].result == [11, 12, 13]
    assert state.result[b].result == [1, 3]
    assert state.result[c].result == [100, 101, 102]


def test_empty_map_gives_zero_children(executor: Any) -> None:
    with Flow("empty") as flow:
        ys = inc.map(numbers(0))
        zs = inc.map(ys)
        s = total(zs)
    state = flow.run(executor=executor)
    assert state.result[ys].map_states == []
    assert state.result[zs].result == []
    assert state.result[s].result == 0


def test_map_over_map_failure_only_affects_its_branch(executor: Any) -> None:
    @task
    def fragile(x: int) -> int:
        if x == 3:
            raise ValueError("three")
        return x * 10

    @task(trigger=triggers.all_finished)
    def count(xs: list[Any]) -> int:
        return len(xs)

    with Flow("branches") as flow:
        a = inc.map(numbers(4))  # 1..4
        b = fragile.map(a)
        c = inc.map(b)
        strict = total(c)
        lenient = count(c)
    state = flow.run(executor=executor)
    cs = state.result[c].map_states
    assert [type(s) for s in cs] == [Success, Success, TriggerFailed, Success]
    assert [s.result for s in cs if isinstance(s, Success)] == [11, 21, 41]
    assert isinstance(state.result[b].map_states[2], Failed)
    assert isinstance(state.result[strict], TriggerFailed)
    assert state.result[lenient].result == 4
    assert isinstance(state, Failed)


def test_each_child_retries_on_its_own(executor: Any, tmp_path: Any) -> None:
    ledger = Ledger(tmp_path / "attempts")

    @task(max_retries=2, retry_delay=0.01)
    def flaky(x: int) -> int:
        ledger.add(x)
        if x == 2 and context.task_run_count == 1:
            raise RuntimeError("first try fails")
        return x

    with Flow("child-retry") as flow:
        ys = flaky.map(numbers(4))
    state = flow.run(executor=executor)
    assert state.result[ys].result == [0, 1, 2, 3]
    attempts = ledger.items()
    assert {x: attempts.count(x) for x in attempts} == {0: 1, 1: 1, 2: 2, 3: 1}


def test_child_context_and_full_name(executor: Any) -> None:
    @task
    def who(x: int) -> str:
        return f"{context.task_full_name}:{context.map_index}:{x}"

    with Flow("ctx") as flow:
        ys = who.map([5, 6])
    assert flow.run(executor=executor).result[ys].result == ["who[0]:0:5", "who[1]:1:6"]


def test_flatten_across_children_and_in_a_reduce(executor: Any) -> None:
    @task
    def upto(n: int) -> list[int]:
        return list(range(n))

    with Flow("flatten") as flow:
        nested = upto.map([1, 2, 3])
        flat = inc.map(flatten(nested))
        everything = total(flatten(nested))
        from_list = inc.map(flatten(task(lambda: [[1], [2, 3]], name="lists")()))
    state = flow.run(executor=executor)
    assert state.result[flat].result == [1, 1, 2, 1, 2, 3]
    assert state.result[everything].result == 0 + 0 + 1 + 0 + 1 + 2
    assert state.result[from_list].result == [2, 3, 4]


@pytest.mark.parametrize(
    ("bad", "why"),
    [(lambda: 5, "int"), (lambda: None, "NoneType"), (lambda: (i for i in range(3)), "generator")],
)
def test_unmappable_input_fails_the_parent(bad: Any, why: str, executor: Any) -> None:
    with Flow("bad-map") as flow:
        src = task(bad, name="src")()
        ys = inc.map(src)
        zs = inc.map(ys)
    state = flow.run(executor=executor)
    parent = state.result[ys]
    assert isinstance(parent, Failed)
    if why == "generator" and not isinstance(executor, (LocalExecutor, ThreadExecutor)):
        # A generator cannot travel back from a worker process (SPEC: "values that
        # cannot travel"): the source fails saying so, and nothing is mapped.
        assert isinstance(state.result[src], Failed)
        assert why in state.result[src].message
        assert isinstance(parent, TriggerFailed) and "src" in parent.message
    else:
        assert why in parent.message and "src" in parent.message
    assert isinstance(state.result[zs], TriggerFailed)


def test_generator_that_raises_fails_the_source() -> None:
    def gen() -> Any:
        yield 1
        raise RuntimeError("broken generator")

    with Flow("gen") as flow:
        src = task(lambda: list(gen()), name="src")()
        ys = inc.map(src)
    state = flow.run()
    assert isinstance(state.result[src], Failed)
    assert isinstance(state.result[ys], TriggerFailed)


def test_skip_in_a_child_propagates_down_its_branch(executor: Any) -> None:
    @task
    def skip_odd(x: int) -> int:
        if x % 2:
            raise signals.SKIP("odd")
        return x

    with Flow("skip") as flow:
        a = skip_odd.map(numbers(4))
        b = inc.map(a)
    state = flow.run(executor=executor)
    assert [type(s) for s in state.result[b].map_states] == [Success, Skipped, Success, Skipped]


def test_loop_inside_mapped_children(executor: Any) -> None:
    @task
    def countdown(n: int) -> int:
        left = context.task_loop_result if context.task_loop_count > 1 else n
        if left > 0:
            raise signals.LOOP(result=left - 1)
        return context.task_loop_count

    with Flow("loop-map") as flow:
        ys = countdown.map([0, 1, 3])
    assert flow.run(executor=executor).result[ys].result == [1, 2, 4]


def test_apply_map_with_case(executor: Any) -> None:
    @task
    def is_even(x: int) -> bool:
        return x % 2 == 0

    @task
    def half(x: int) -> int:
        return x // 2

    @task
    def triple(x: int) -> int:
        return 3 * x + 1

    def step(x: Any) -> None:
        cond = is_even(x)
        with case(cond, True):
            half(x)
        with case(cond, False):
            triple(x)

    with Flow("apply-map") as flow:
        apply_map(step, numbers(4))
    state = flow.run(executor=executor)
    halves = next(t for t in flow.tasks if t.name == "half")
    triples = next(t for t in flow.tasks if t.name == "triple")
    hs = state.result[halves].map_states
    ts = state.result[triples].map_states
    assert [type(s) for s in hs] == [Success, Skipped, Success, Skipped]
    assert [s.result for s in hs if type(s) is Success] == [0, 1]
    assert [s.result for s in ts if type(s) is Success] == [4, 10]


def test_depth_first_order_in_a_map_chain() -> None:
    order: list[tuple[str, int]] = []

    @task
    def load(x: int) -> int:
        order.append(("load", x))
        return x

    @task
    def save(x: int) -> int:
        order.append(("save", x))
        return x

    with Flow("df") as flow:
        save.map(load.map(numbers(3)))
    flow.run()
    assert order == [("load", 0), ("save", 0), ("load", 1), ("save", 1), ("load", 2), ("save", 2)]


def test_release_results_keeps_terminal_results() -> None:
    @task
    def load(i: int) -> bytes:
        return bytes(1000)

    @task
    def size(b: bytes) -> int:
        return len(b)

    with Flow("release") as flow:
        loaded = load.map(numbers(50))
        sizes = size.map(loaded)
        s = total(sizes)
    state = flow.run(release_results=True)
    assert state.result[s].result == 50_000
    # Intermediate results were dropped once their consumers finished.
    assert state.result[loaded].result == [None] * 50
    assert state.result[sizes].result == [None] * 50
    assert all(type(c) is Success for c in state.result[sizes].map_states)
    full = flow.run()
    assert full.result[loaded].result == [bytes(1000)] * 50


def test_reduce_trigger_sees_every_child() -> None:
    seen: list[int] = []

    def count_children(upstream: dict[Any, Any]) -> bool:
        for s in upstream.values():
            seen.append(len(s.map_states))
        return True

    @task(trigger=count_children)
    def reduce(xs: list[int]) -> int:
        return len(xs)

    with Flow("reduce-trigger") as flow:
        r = reduce(inc.map(numbers(7)))
    assert flow.run().result[r].result == 7
    assert seen == [7]


def test_flatten_over_something_that_is_not_nested(executor: Any) -> None:
    with Flow("bad-flatten") as flow:
        src = task(lambda: [[1, 2], 3], name="src")()
        mapped_flat = inc.map(flatten(src))
        reduced_flat = total(flatten(src))
    state = flow.run(executor=executor)
    parent = state.result[mapped_flat]
    assert isinstance(parent, Failed)
    assert "item 1" in parent.message and "int" in parent.message
    reduced = state.result[reduced_flat]
    assert isinstance(reduced, Failed)
    assert "inputs" in reduced.message and "int" in reduced.message


class _Shouting(list):  # type: ignore[type-arg]
    """A list whose items read through its own ``__getitem__`` (as mapped inputs must)."""

    def __getitem__(self, i: Any) -> Any:
        return f"{super().__getitem__(i)}!"


class _Doubled(tuple):  # type: ignore[type-arg]
    def __getitem__(self, i: Any) -> Any:
        return 2 * super().__getitem__(i)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: [1, 2, 3], [1, 2, 3]),
        (lambda: (1, 2, 3), [1, 2, 3]),
        (lambda: range(1, 4), [1, 2, 3]),
        (lambda: _Shouting([1, 2, 3]), ["1!", "2!", "3!"]),
        (lambda: _Doubled((1, 2, 3)), [2, 4, 6]),
    ],
    ids=["list", "tuple", "range", "list-subclass", "tuple-subclass"],
)
def test_a_map_reads_each_element_as_its_sequence_gives_it(make: Any, expected: Any) -> None:
    """Exact lists and tuples are read directly; any other sequence through its
    ``__getitem__`` (a subclass that overrides it is honoured), flattened ones too."""

    @task
    def same(x: Any) -> Any:
        return x

    with Flow("kinds") as flow:
        src = task(make, name="src")()
        ys = same.map(src)
        flat = same.map(flatten(task(lambda: [make()], name="nested")()))
    state = flow.run()
    assert state.is_successful(), state
    assert state.result[ys].result == expected
    assert state.result[flat].result == expected
