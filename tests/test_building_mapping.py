"""Building: mapped calls, unmapped/mapped/flatten annotations, apply_map structure."""

from __future__ import annotations

import pytest

from _tasks import add, inc
from ferroflow import Flow, Parameter, apply_map, case, flatten, mapped, merge, task, unmapped
from ferroflow.exceptions import FlowContextError, MappingError
from ferroflow.tasks.control_flow import CompareValue, Merge
from ferroflow.tasks.core import Constant, List


@task
def nums():
    return [1, 2, 3]


@task
def is_even(x):
    return x % 2 == 0


def flags(flow, task):
    return {(e.key, e.mapped, e.flattened) for e in flow.edges_to(task)}


def test_map_over_task_with_unmapped_constant():
    with Flow("f") as flow:
        xs = nums()
        out = add.map(xs, y=unmapped(10))
    assert flags(flow, out) == {("x", True, False)}
    assert flow.constants[out] == {"y": 10}


def test_map_over_constant_list_makes_constant_task():
    with Flow("f") as flow:
        out = inc.map([1, 2, 3])
    (edge,) = flow.edges_to(out)
    assert isinstance(edge.upstream_task, Constant)
    assert edge.upstream_task.value == [1, 2, 3]
    assert edge.mapped is True
    assert out not in flow.constants


def test_map_over_plain_value_errors_at_build():
    with Flow("f"):
        for bad in (5, None, (i for i in range(3)), {"a": 1}):
            with pytest.raises(MappingError, match="'x'"):
                inc.map(bad)


def test_unmapped_task_and_collection():
    with Flow("f") as flow:
        xs, other = nums(), nums()
        out = add.map(xs, unmapped(other))
        out2 = add.map(xs, unmapped([other, 1]))
    assert flags(flow, out) == {("x", True, False), ("y", False, False)}
    coll = next(e.upstream_task for e in flow.edges_to(out2) if e.key == "y")
    assert isinstance(coll, List)
    assert flags(flow, out2) == {("x", True, False), ("y", False, False)}
    # the collection itself is built unmapped
    assert flags(flow, coll) == {("arg_0", False, False)}


def test_map_of_list_of_tasks():
    with Flow("f") as flow:
        a, b = nums(), nums()
        out = inc.map([a, b])
    (edge,) = flow.edges_to(out)
    assert isinstance(edge.upstream_task, List) and edge.mapped


def test_map_over_map_and_reduce():
    with Flow("f") as flow:
        first = inc.map(nums())
        second = inc.map(first)
        reduced = add(second, 1)
    assert flags(flow, second) == {("x", True, False)}
    assert flags(flow, reduced) == {("x", False, False)}


def test_mapped_in_normal_call():
    with Flow("f") as flow:
        xs = nums()
        out = add(mapped(xs), 10)
        out2 = add(mapped([1, 2]), 10)
    assert flags(flow, out) == {("x", True, False)}
    assert flow.constants[out] == {"y": 10}
    (edge,) = flow.edges_to(out2)
    assert isinstance(edge.upstream_task, Constant) and edge.mapped


def test_flatten_in_map_and_in_normal_call():
    with Flow("f") as flow:
        nested = inc.map(nums())
        flat_map = inc.map(flatten(nested))
        flat_reduce = add(flatten(nested), 0)
        flat_unmapped = add.map(nums(), unmapped(flatten(nested)))
    assert flags(flow, flat_map) == {("x", True, True)}
    assert flags(flow, flat_reduce) == {("x", False, True)}
    assert ("y", False, True) in flags(flow, flat_unmapped)


def test_flatten_constant_becomes_constant_task():
    with Flow("f") as flow:
        out = inc.map(flatten([[1], [2, 3]]))
    (edge,) = flow.edges_to(out)
    assert isinstance(edge.upstream_task, Constant)
    assert (edge.mapped, edge.flattened) == (True, True)


def test_map_upstream_tasks_are_mapped_unless_unmapped():
    with Flow("f") as flow:
        a, b = nums(), nums()
        out = inc.map([1, 2], upstream_tasks=[a, unmapped(b)])
    ordering = {(e.upstream_task, e.mapped) for e in flow.edges_to(out) if e.key is None}
    assert ordering == {(a, True), (b, False)}


def test_annotations_repr_and_nesting():
    assert repr(unmapped(1)) == "unmapped(1)"
    assert unmapped(flatten(1)).annotations() == {"mapped": False, "flattened": True}
    assert flatten(mapped(1)).annotations() == {"flattened": True, "mapped": True}


# ------------------------------------------------------------------------ apply_map


def inc_if_even(x):
    with case(is_even(x), True):
        x2 = inc(x)
    return merge(x2, x)


def test_apply_map_structure():
    with Flow("f") as flow:
        out = apply_map(inc_if_even, range(4))
    assert isinstance(out, Merge)
    const = next(t for t in flow.tasks if isinstance(t, Constant))
    assert const.value == range(4)
    by_name = {t.name: t for t in flow.tasks}
    cond = next(t for t in flow.tasks if isinstance(t, CompareValue))
    inc_task = by_name["inc"]
    even = by_name["is_even"]
    # every edge inside the mapped pipeline is mapped
    assert all(e.mapped for e in flow.edges)
    assert flags(flow, even) == {("x", True, False)}
    assert flags(flow, cond) == {("value", True, False)}
    assert flags(flow, inc_task) == {("x", True, False), (None, True, False)}
    assert flags(flow, out) == {("task_1", True, False), ("task_2", True, False)}
    flow.validate()


def test_apply_map_unmapped_arguments():
    def pipeline(x, y, z):
        return add(add(x, y), z)

    with Flow("f") as flow:
        xs = nums()
        other = nums()
        out = apply_map(pipeline, xs, unmapped(other), unmapped(100))
    inner = next(t for t in flow.upstream_tasks(out) if t.name == "add")
    assert flags(flow, inner) == {("x", True, False), ("y", False, False)}
    assert flags(flow, out) == {("x", True, False)}
    assert flow.constants[out] == {"y": 100}
    # no Constant task for the unmapped constant
    assert not any(isinstance(t, Constant) for t in flow.tasks)


def test_apply_map_roots_get_every_argument():
    @task
    def noargs():
        return 1

    def pipeline(x):
        a = noargs()  # uses no argument: still waits for (and maps with) x
        return add(a, x)

    with Flow("f") as flow:
        xs = nums()
        out = apply_map(pipeline, xs)
    root = next(t for t in flow.tasks if t.name == "noargs")
    assert {(e.upstream_task, e.key, e.mapped) for e in flow.edges_to(root)} == {(xs, None, True)}
    assert flags(flow, out) == {("x", True, False), ("y", True, False)}


def test_apply_map_captured_outer_task_is_passed_whole():
    with Flow("f") as flow:
        offset = nums()

        def pipeline(x):
            return add(x, offset)

        out = apply_map(pipeline, [1, 2, 3])
    assert ("y", False, False) in flags(flow, out)
    assert flow.upstream_tasks(offset) == set()


def test_apply_map_with_explicit_flow():
    def pipeline(x, flow):
        return inc(x, flow=flow)

    flow = Flow("f")
    xs = Parameter("xs")
    out = apply_map(pipeline, xs, flow=flow)
    assert flags(flow, out) == {("x", True, False)}
    assert xs in flow.tasks


def test_apply_map_inside_case():
    @task
    def cond():
        return True

    with Flow("f") as flow:
        c = cond()
        with case(c, True):
            out = apply_map(lambda x: inc(x), [1, 2])
    compare = next(t for t in flow.tasks if isinstance(t, CompareValue))
    # the mapped pipeline still depends on the outer condition, through its input
    (source,) = flow.upstream_tasks(out)
    assert isinstance(source, Constant) and source.value == [1, 2]
    assert flow.upstream_tasks(source) == {compare}
    assert flow.upstream_tasks(compare) == {c}


def test_map_inside_apply_map_is_an_error():
    def bad(x):
        return inc.map(x)

    with Flow("f"), pytest.raises(MappingError, match="apply_map"):
        apply_map(bad, [1, 2])


def test_apply_map_errors():
    with pytest.raises(FlowContextError):
        apply_map(inc_if_even, [1])
    with Flow("f"):
        with pytest.raises(MappingError, match="sized sequence"):
            apply_map(inc_if_even, 5)
        with pytest.raises(MappingError, match="nested"):
            apply_map(lambda x: apply_map(inc, x), [1])
        xs = nums()
        with pytest.raises(MappingError, match="both mapped and unmapped"):
            apply_map(add, xs, unmapped(xs))
