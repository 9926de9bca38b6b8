"""Building: binding arguments, edges, constants, collections, flow queries, validation and
the compiled form the engine consumes."""

from __future__ import annotations

import threading
import warnings

import pytest

from _tasks import add, inc, total
from ferroflow import Flow, Parameter, Task, mapped, task
from ferroflow.edge import Edge
from ferroflow.exceptions import (
    BindError,
    CycleError,
    EdgeError,
    FlowContextError,
    GraphError,
    ParameterError,
)
from ferroflow.flow import CompiledFlow, UnusedTaskWarning
from ferroflow.tasks.core import Constant, Dict, GetItem, List, Set, Tuple


@task
def one():
    return 1


def names(tasks):
    return [t.name for t in tasks]


# --------------------------------------------------------------------------- binding


def test_too_many_positional():
    with Flow("f"), pytest.raises(BindError, match=r"'add' takes 2 positional arguments but 3"):
        add(1, 2, 3)


def test_same_argument_twice():
    with Flow("f"), pytest.raises(BindError, match="multiple values for argument 'x'"):
        add(1, x=2)


def test_unknown_keyword():
    with Flow("f"), pytest.raises(BindError, match="unexpected keyword argument 'z'"):
        add(1, z=2)


def test_bad_bind_leaves_no_task_behind():
    with Flow("f") as flow, pytest.raises(BindError):
        add(1, 2, 3)
    assert len(flow.tasks) == 0


def test_kwargs_accepts_any_keyword():
    @task
    def anything(**kw):
        return kw

    with Flow("f") as flow:
        t = anything(a=1, b=one())
    assert flow.constants[t] == {"a": 1}
    assert [e.key for e in flow.edges_to(t)] == ["b"]


def test_constants_and_edges():
    with Flow("f") as flow:
        a = one()
        b = add(a, 5)
    assert flow.constants[b] == {"y": 5}
    (edge,) = flow.edges_to(b)
    assert edge == Edge(a, b, key="x")
    assert a not in flow.constants
    assert len(flow.tasks) == 2


def test_none_and_collections_without_tasks_are_constants():
    with Flow("f") as flow:
        t = add([1, 2], {"k": (3, 4)})
        u = inc(None)
    assert flow.constants[t] == {"x": [1, 2], "y": {"k": (3, 4)}}
    assert flow.constants[u] == {"x": None}
    assert len(flow.tasks) == 2
    assert len(flow.edges) == 0


def test_list_with_tasks_becomes_list_task():
    with Flow("f") as flow:
        a, b = one(), one()
        t = total([a, 2, b])
    (coll,) = flow.upstream_tasks(t)
    assert isinstance(coll, List)
    assert flow.constants[coll] == {"arg_1": 2}
    assert {(e.upstream_task, e.key) for e in flow.edges_to(coll)} == {(a, "arg_0"), (b, "arg_2")}
    assert coll.run(arg_0=1, arg_1=2, arg_2=3) == [1, 2, 3]


@pytest.mark.parametrize(
    ("value", "cls", "expected"),
    [
        (("T", 2), Tuple, (1, 2)),
        ({"T"}, Set, {1}),
    ],
)
def test_tuple_and_set_tasks(value, cls, expected):
    with Flow("f") as flow:
        a = one()
        arg = tuple(a if v == "T" else v for v in value)
        t = total(arg if cls is Tuple else set(arg))
    (coll,) = flow.upstream_tasks(t)
    assert isinstance(coll, cls)
    kwargs = {f"arg_{i}": 1 if v == "T" else v for i, v in enumerate(value)}
    assert coll.run(**kwargs) == expected


def test_dict_with_tasks():
    with Flow("f") as flow:
        a = one()
        t = total({"a": a, "b": 2})
    (coll,) = flow.upstream_tasks(t)
    assert isinstance(coll, Dict)
    assert flow.constants[coll] == {"key_0": "a", "key_1": "b", "value_1": 2}
    assert [e.key for e in flow.edges_to(coll)] == ["value_0"]
    assert coll.run(key_0="a", value_0=1, key_1="b", value_1=2) == {"a": 1, "b": 2}


def test_nested_collections():
    with Flow("f") as flow:
        a = one()
        t = total([[a, 1], 2])
    (outer,) = flow.upstream_tasks(t)
    (inner,) = flow.upstream_tasks(outer)
    assert isinstance(outer, List) and isinstance(inner, List)
    assert flow.constants[outer] == {"arg_1": 2}
    assert flow.upstream_tasks(inner) == {a}


def test_upstream_tasks_are_ordering_edges():
    with Flow("f") as flow:
        a = one()
        b = inc(1, upstream_tasks=[a])
    (edge,) = flow.edges_to(b)
    assert edge.key is None and edge.upstream_task is a
    assert flow.constants[b] == {"x": 1}


def test_upstream_tasks_must_be_tasks():
    with Flow("f"), pytest.raises(BindError, match="upstream_tasks"):
        inc(1, upstream_tasks=[3])


def test_duplicate_ordering_edge_is_ignored():
    a, b = Task(name="a"), Task(name="b")
    flow = Flow("f")
    flow.add_edge(a, b)
    flow.add_edge(a, b)
    assert len(flow.edges) == 1


def test_upstream_added_before_downstream():
    p = Parameter("p")
    with Flow("f") as flow:
        t = add(p, Parameter("q"))
    assert names(flow.tasks) == ["p", "q", "add"]
    assert flow._compile().tasks[-1] is t


# ------------------------------------------------------------------- imperative API


def test_add_edge_errors():
    p = Parameter("p")
    a, b = inc.copy(), inc.copy()
    flow = Flow("f")
    with pytest.raises(EdgeError, match="itself"):
        flow.add_edge(a, a)
    with pytest.raises(EdgeError, match="Parameter 'p'"):
        flow.add_edge(a, p)
    flow.add_edge(a, b, key="x")
    with pytest.raises(EdgeError, match="already bound"):
        flow.add_edge(Task(name="c"), b, key="x")
    with pytest.raises(BindError, match="unexpected argument 'z'"):
        flow.add_edge(a, b, key="z")
    with pytest.raises(EdgeError, match="identifier"):
        flow.add_edge(a, b, key="not valid")
    with pytest.raises(BindError):
        flow.add_edge(1, b)  # type: ignore[arg-type]


def test_edge_into_parameter_by_binding():
    p = Parameter("p")
    with Flow("f"), pytest.raises(EdgeError, match="Parameter"):
        p.set_upstream(one())


def test_constant_then_edge_same_key():
    flow = Flow("f")
    b = inc.copy()
    flow.set_dependencies(b, keyword_tasks={"x": 1})
    with pytest.raises(EdgeError, match="already bound"):
        flow.add_edge(one.copy(), b, key="x")
    with pytest.raises(EdgeError, match="already bound"):
        flow.set_dependencies(b, keyword_tasks={"x": 2})


def test_two_parameters_with_one_name():
    flow = Flow("f", tasks=[Parameter("x")])
    with pytest.raises(EdgeError, match="Parameter named 'x'"):
        flow.add_task(Parameter("x"))


def test_same_parameter_twice_is_fine():
    p = Parameter("x")
    with Flow("f") as flow:
        inc(p)
        inc(p)
    assert list(flow.parameters()) == [p]


def test_duplicate_explicit_slug():
    t = Task(name="t", slug="s")
    flow = Flow("f", tasks=[t])
    with pytest.raises(GraphError, match="slug 's'"):
        flow.add_task(Task(name="u", slug="s"))


def test_set_dependencies_and_chain():
    a, b, c, d = (Task(name=n) for n in "abcd")
    flow = Flow("f")
    flow.set_dependencies(b, upstream_tasks=[a], downstream_tasks=[c])
    edges = flow.chain(c, d)
    assert edges == [Edge(c, d)]
    assert names(flow.sorted_tasks()) == ["a", "b", "c", "d"]
    with pytest.raises(BindError, match="unexpected argument"):
        flow.set_dependencies(inc.copy(), keyword_tasks={"nope": 1})


def test_set_upstream_downstream_and_pipe():
    a, b, c, d = (Task(name=n) for n in "abcd")
    with Flow("f") as flow:
        b.set_upstream(a)
        b.set_downstream(c)
        assert (c | d) is d
        x = inc.copy()
        x.set_upstream(a, key="x", mapped=True)
    assert flow.upstream_tasks(b) == {a}
    assert flow.downstream_tasks(b) == {c}
    assert flow.upstream_tasks(d) == {c}
    (edge,) = flow.edges_to(x)
    assert (edge.key, edge.mapped) == ("x", True)
    with pytest.raises(FlowContextError):
        a.set_upstream(b)


def test_flow_constructor_arguments():
    a, b = Task(name="a"), Task(name="b")
    flow = Flow("f", tasks=[a], edges=[Edge(a, b)], reference_tasks=[a])
    assert list(flow.tasks) == [a, b]
    assert flow.reference_tasks() == {a}
    with pytest.raises(GraphError):
        Flow("")


# --------------------------------------------------------------------- get-item etc.


def test_getitem_and_unpacking():
    @task(nout=2)
    def pair():
        return 1, 2

    with Flow("f") as flow:
        p = pair()
        first, second = p
        item = p["key"]
    assert isinstance(first, GetItem) and first.name == "pair[0]"
    assert flow.constants[second] == {"key": 1}
    assert flow.constants[item] == {"key": "key"}
    assert all(flow.upstream_tasks(t) == {p} for t in (first, second, item))


def test_iterating_a_task_without_nout():
    with Flow("f"):
        t = one()
        with pytest.raises(TypeError, match="nout"):
            _a, _b = t


@pytest.mark.parametrize(
    ("build", "cls", "args"),
    [
        (lambda t: t + 1, "Add", (2, 1, 3)),
        (lambda t: 1 + t, "Add", (2, 1, 3)),
        (lambda t: t - 1, "Sub", (2, 1, 1)),
        (lambda t: 10 - t, "Sub", (10, 2, 8)),
        (lambda t: t * 3, "Mul", (2, 3, 6)),
        (lambda t: t / 2, "Div", (3, 2, 1.5)),
        (lambda t: t // 2, "FloorDiv", (3, 2, 1)),
        (lambda t: t % 2, "Mod", (3, 2, 1)),
        (lambda t: t**2, "Pow", (3, 2, 9)),
        (lambda t: t & True, "And", (1, 0, 0)),
        (lambda t: t ^ 1, "Xor", (3, 1, 2)),
        (lambda t: t > 1, "GreaterThan", (2, 1, True)),
        (lambda t: t >= 1, "GreaterThanOrEqual", (1, 1, True)),
        (lambda t: t < 1, "LessThan", (2, 1, False)),
        (lambda t: t <= 1, "LessThanOrEqual", (1, 1, True)),
        (lambda t: t.is_equal(1), "Equal", (1, 1, True)),
        (lambda t: t.is_not_equal(1), "NotEqual", (1, 1, False)),
        (lambda t: t.or_(0), "Or", (0, 5, 5)),
    ],
)
def test_operators(build, cls, args):
    with Flow("f") as flow:
        t = one()
        op = build(t)
    assert type(op).__name__ == cls
    assert flow.upstream_tasks(op) == {t}
    x, y, expected = args
    assert op.run(x, y) == expected


def test_not_and_identity_equality():
    with Flow("f"):
        t = one()
        n = t.not_()
    assert n.run(0) is True
    assert (t == t) is True  # identity: tasks stay usable as dict keys
    assert t != n


def test_operator_outside_flow():
    with pytest.raises(FlowContextError):
        _ = one + 1


# --------------------------------------------------------------------------- queries


def test_queries():
    with Flow("f") as flow:
        a = one()
        b = inc(a)
        c = add(a, b)
        d = one()
    assert names(flow.root_tasks()) == ["one", "one"]
    assert flow.root_tasks() == {a, d}
    assert flow.terminal_tasks() == {c, d}
    assert flow.reference_tasks() == {c, d}
    assert flow.upstream_tasks(c) == {a, b}
    assert flow.downstream_tasks(a) == {b, c}
    assert {e.key for e in flow.edges_to(c)} == {"x", "y"}
    assert len(flow.edges_from(a)) == 2
    assert flow.sorted_tasks() == (a, b, c, d)
    assert flow.sorted_tasks(root_tasks=[b]) == (b, c)
    flow.set_reference_tasks([b])
    assert flow.reference_tasks() == {b}
    flow.set_reference_tasks([])
    assert flow.reference_tasks() == {c, d}
    with pytest.raises(GraphError, match="not in the flow"):
        flow.set_reference_tasks([Task()])


def test_sorted_tasks_ties_by_insertion_order():
    tasks = [Task(name=str(i)) for i in range(6)]
    flow = Flow("f", tasks=tasks)
    flow.add_edge(tasks[4], tasks[1])
    assert names(flow.sorted_tasks()) == ["0", "2", "3", "4", "1", "5"]


def test_get_tasks_and_slugs():
    with Flow("f") as flow:
        a = one(task_args={"tags": ["x", "y"]})
        b = one()
        c = inc(a, task_args={"slug": "special"})
        p = Parameter("p")
        inc(p)
    assert flow.get_tasks(name="one") == [a, b]
    assert flow.get_tasks(tags=["x"]) == [a]
    assert flow.get_tasks(tags=["x", "z"]) == []
    assert flow.get_tasks(slug="one-2") == [b]
    assert flow.get_tasks(slug="special") == [c]
    assert flow.get_tasks(slug="p") == [p]
    assert flow.get_tasks(task_type=Parameter) == [p]
    assert flow.slugs[a] == "one-1"
    assert list(flow.parameters()) == [p]


def test_copy_is_independent():
    with Flow("f") as flow:
        a = one()
        b = inc(a)
    twin = flow.copy()
    c = twin.add_task(Task(name="c"))
    twin.add_edge(b, c)
    assert c not in flow.tasks and len(flow.edges) == 1 and len(twin.edges) == 2
    assert twin.constants == flow.constants
    assert twin.sorted_tasks() == (a, b, c)


def test_edge_equality_hash_repr():
    a, b = Task(name="a"), Task(name="b")
    e = Edge(a, b, key="x", mapped=True)
    assert e == Edge(a, b, "x", True, False)
    assert hash(e) == hash(Edge(a, b, "x", True))
    assert e != Edge(a, b, "x")
    assert len({e, Edge(a, b, "x", True)}) == 1
    assert repr(e) == "<Edge (key=x, mapped): a to b>"
    assert (e.upstream_task, e.downstream_task, e.key, e.mapped, e.flattened) == (
        a,
        b,
        "x",
        True,
        False,
    )
    assert Edge(mapped(a), b).mapped is True


# ------------------------------------------------------------------------ validation


def test_cycle_names_the_tasks():
    a, b, c, d = (Task(name=n) for n in "abcd")
    flow = Flow("f")
    flow.chain(d, a, b, c)
    flow.add_edge(c, a)
    with pytest.raises(CycleError) as info:
        flow.validate()
    msg = str(info.value)
    assert msg.startswith("cycle: ")
    path = msg[len("cycle: ") :].split(" -> ")
    assert path[0] == path[-1]
    assert sorted(path[:-1]) == ["a", "b", "c"]
    # consecutive names follow the edges
    order = path[:-1]
    for x, y in zip(order, path[1:], strict=False):
        assert (x, y) in {("a", "b"), ("b", "c"), ("c", "a")}
    assert sorted(info.value.tasks) == ["a", "b", "c"]
    with pytest.raises(CycleError):
        flow.sorted_tasks()


def test_cycle_with_same_names_uses_slugs():
    with Flow("f") as flow:
        a = inc(1)
        b = inc(a)
    flow.add_edge(b, a)
    with pytest.raises(CycleError, match="inc-1") as info:
        flow._compile()
    assert sorted(info.value.tasks) == ["inc-1", "inc-2"]


def test_missing_required_argument():
    with Flow("f") as flow:
        t = add(1)
    with pytest.raises(BindError, match=r"'add'.*'y' is never bound"):
        flow.validate()
    # bound later through the imperative API: fine
    flow.add_edge(one.copy(), t, key="y")
    flow.validate()


def test_missing_argument_with_default_is_fine():
    @task
    def f(x, y=2):
        return x

    with Flow("f") as flow:
        f(1)
    flow.validate()


# ------------------------------------------------------------------------ compile


def test_compile_contract():
    p = Parameter("n", default=1)
    with Flow("f") as flow:
        a = inc(p)
        b = add(a, 10)
        c = inc.map([1, 2])
        d = inc(one(), upstream_tasks=[b])
    compiled = flow._compile()
    assert isinstance(compiled, CompiledFlow)
    tasks = compiled.tasks
    assert tasks == list(flow.tasks)
    ids = {t: i for i, t in enumerate(tasks)}
    assert compiled.edges == list(flow.edges)
    assert compiled.edge_ids == [
        (ids[e.upstream_task], ids[e.downstream_task], e.key, e.mapped, e.flattened)
        for e in compiled.edges
    ]
    assert compiled.constants[ids[b]] == {"y": 10}
    assert compiled.constants[ids[a]] == {}
    assert len(compiled.constants) == len(tasks)
    assert compiled.reference == [ids[c], ids[d]]
    const = next(t for t in tasks if isinstance(t, Constant))
    assert const.value == [1, 2]
    assert (ids[const], ids[c], "x", True, False) in compiled.edge_ids
    # cached until the flow changes
    assert flow._compile() is compiled
    flow.add_task(Task(name="late"))
    again = flow._compile()
    assert again is not compiled and len(again.tasks) == len(tasks) + 1


def test_compile_invalidated_by_constants_and_references():
    with Flow("f") as flow:
        a = one()
        b = inc(a)
    first = flow._compile()
    flow.set_reference_tasks([a])
    second = flow._compile()
    assert second is not first and second.reference == [0]
    flow.set_dependencies(b, upstream_tasks=[Task(name="t")])
    assert flow._compile() is not second


def test_resolve_parameters():
    with Flow("f") as flow:
        inc(Parameter("n", type=int))
        inc(Parameter("m", default=5))
    assert flow._resolve_parameters({"n": "3"}) == {"n": 3, "m": 5}
    with pytest.raises(ParameterError, match="no parameter 'zz'") as info:
        flow._resolve_parameters({"n": 1, "zz": 2})
    assert info.value.parameter == "zz"
    with pytest.raises(ParameterError, match="missing required parameter 'n'"):
        flow._resolve_parameters({})
    with pytest.raises(ParameterError, match="'n'"):
        flow._resolve_parameters({"n": "three"})


# ------------------------------------------------------------------ context manager


def test_unused_task_warning():
    with pytest.warns(UnusedTaskWarning, match="forgotten"), Flow("f"):
        Task(name="forgotten")
        Parameter("unused_param")


def test_no_warning_for_used_tasks():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Flow("f") as flow:
            t = Task(name="template")
            t()
            p = Parameter("p")
            inc(p)
            u = Task(name="added")
            flow.add_task(u)

            @task
            def local(x):
                return x

            local(1)


def test_no_warning_when_block_raises():
    with pytest.raises(RuntimeError), Flow("f"):
        Task(name="forgotten")
        raise RuntimeError("boom")


def test_nested_flows_innermost_wins():
    with Flow("outer") as outer:
        a = one()
        with Flow("inner") as inner:
            b = one()
        c = one()
    assert list(outer.tasks) == [a, c]
    assert list(inner.tasks) == [b]


def test_flow_context_is_per_thread():
    errors = []

    def worker():
        try:
            one()
        except FlowContextError as err:
            errors.append(err)

    with Flow("f") as flow:
        th = threading.Thread(target=worker)
        th.start()
        th.join()
        one()
    assert len(errors) == 1
    assert len(flow.tasks) == 1


def test_threads_build_flows_concurrently():
    flows = {}

    def build(i):
        with Flow(f"f{i}") as flow:
            x = one()
            for _ in range(200):
                x = inc(x)
        flows[i] = flow

    threads = [threading.Thread(target=build, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(flows) == [0, 1, 2, 3]  # every thread built its flow
    assert all(len(f.tasks) == 201 and len(f.edges) == 200 for f in flows.values())


def test_a_deep_chain_builds_and_compiles():
    # Its speed is a benchmark figure; here: 20k chained tasks need no recursion.
    with Flow("big") as flow:
        x = one()
        for _ in range(20_000):
            x = inc(x)
    compiled = flow._compile()
    assert len(compiled.tasks) == 20_001 and len(compiled.edges) == 20_000
