"""Building: case/switch/ifelse/merge structure, FilterTask, tags, resource_manager, and
the public names of the package."""

from __future__ import annotations

import subprocess
import sys

import pytest

import ferroflow
from ferroflow import (
    FilterTask,
    Flow,
    Parameter,
    Task,
    case,
    ifelse,
    merge,
    resource_manager,
    signals,
    switch,
    tags,
    task,
    triggers,
)
from ferroflow.exceptions import BindError, FlowContextError, TaskDefinitionError
from ferroflow.tasks.control_flow import CompareValue, Merge
from ferroflow.tasks.resource_manager import (
    ResourceCleanupTask,
    ResourceSetupTask,
    resource_cleanup_trigger,
)


@task
def cond():
    return True


@task
def inc(x):
    return x + 1


@task
def one():
    return 1


def conditions(flow, t):
    return [u for u in flow.upstream_tasks(t) if isinstance(u, CompareValue)]


# ------------------------------------------------------------------------------ case


def test_case_roots_get_the_condition():
    with Flow("f") as flow:
        c = cond()
        outside = one()
        with case(c, True):
            a = inc(outside)
            b = inc(a)
    (compare,) = conditions(flow, a)
    assert compare.value is True and compare.name == "case(True)"
    assert flow.upstream_tasks(compare) == {c}
    assert [e.key for e in flow.edges_to(compare)] == ["value"]
    assert conditions(flow, b) == []  # skipped through `a`
    assert conditions(flow, outside) == []


def test_compare_value_runs():
    assert CompareValue(1).run(1) is None
    with pytest.raises(signals.SKIP):
        CompareValue(1).run(2)


def test_empty_case_adds_nothing():
    with Flow("f") as flow:
        c = cond()
        with case(c, True):
            pass
    assert list(flow.tasks) == [c]


def test_nested_cases():
    with Flow("f") as flow:
        c = cond()
        with case(c, True):
            d = cond()
            with case(d, "x"):
                r = inc(1)
    (inner,) = conditions(flow, r)
    assert inner.value == "x"
    assert flow.upstream_tasks(inner) == {d}
    (outer,) = conditions(flow, d)
    assert outer.value is True


def test_nested_case_on_outside_task():
    with Flow("f") as flow:
        c = cond()
        with case(c, 1), case(c, 2):
            r = inc(1)
    (inner,) = conditions(flow, r)
    assert inner.value == 2
    (outer,) = conditions(flow, inner)
    assert outer.value == 1


def test_case_value_must_not_be_a_task():
    with pytest.raises(BindError, match="constant"):
        case(cond, cond)
    with pytest.raises(BindError, match="task"):
        case(1, 1)  # type: ignore[arg-type]


def test_parameters_are_never_in_a_case():
    p = Parameter("p")
    with Flow("f") as flow:
        c = cond()
        with case(c, True):
            r = inc(p)
    assert flow.upstream_tasks(p) == set()
    assert len(conditions(flow, r)) == 1
    flow.validate()


# ------------------------------------------------------------------- switch / ifelse


def test_switch():
    with Flow("f") as flow:
        c = cond()
        a, b = inc(1), inc(2)
        switch(c, {"a": a, "b": b})
    (ca,) = conditions(flow, a)
    (cb,) = conditions(flow, b)
    assert (ca.value, cb.value) == ("a", "b")
    assert flow.upstream_tasks(ca) == {c} == flow.upstream_tasks(cb)
    assert "switch" in ca.tags
    with pytest.raises(FlowContextError):
        switch(cond, {1: inc})


def test_ifelse():
    with Flow("f") as flow:
        c = cond()
        yes, no = inc(1), inc(2)
        ifelse(c, yes, no)
    (cy,) = conditions(flow, yes)
    (cn,) = conditions(flow, no)
    assert (cy.value, cn.value) == (True, False)
    (as_bool,) = flow.upstream_tasks(cy)
    assert as_bool.name == "as_bool" and flow.upstream_tasks(as_bool) == {c}
    assert as_bool.run(3) is True


# ----------------------------------------------------------------------------- merge


def test_merge():
    with Flow("f") as flow:
        a, b = inc(1), inc(2)
        m = merge(a, b)
    assert isinstance(m, Merge)
    assert m.trigger is triggers.not_all_skipped
    assert m.skip_on_upstream_skip is False
    assert {(e.upstream_task, e.key) for e in flow.edges_to(m)} == {(a, "task_1"), (b, "task_2")}


def test_merge_run_order():
    m = Merge()
    assert m.run(task_1=None, task_2=2, task_3=3) == 2
    assert m.run(task_1=None, task_2=None) is None
    many = {f"task_{i}": None for i in range(1, 12)}
    many["task_10"], many["task_2"] = "ten", "two"
    assert m.run(**many) == "two"
    with pytest.raises(TaskDefinitionError):
        Merge(skip_on_upstream_skip=True)


# ------------------------------------------------------------------------ FilterTask


def test_filter_task():
    f = FilterTask()
    assert f.trigger is triggers.all_finished
    assert f.skip_on_upstream_skip is False
    assert f.run([1, None, ValueError("x"), 0, signals.FAIL("y")]) == [1, 0]
    assert FilterTask(filter_func=lambda r: r > 1).run([1, 2, 3]) == [2, 3]
    with pytest.raises(TaskDefinitionError):
        FilterTask(filter_func=3)  # type: ignore[arg-type]
    with Flow("flow") as flow:
        kept = f(inc.map([1, 2]))
    assert [e.mapped for e in flow.edges_to(kept)] == [False]


# ------------------------------------------------------------------------------ tags


def test_tags_context():
    with Flow("f") as flow, tags("a"):
        x = inc(1)
        with tags("b", "c"):
            y = inc(x)
            made = Task(name="made")
            flow.add_task(made)
    assert x.tags == {"a"}
    assert y.tags == {"a", "b", "c"}
    assert made.tags == {"a", "b", "c"}
    assert inc.tags == frozenset()
    with pytest.raises(TaskDefinitionError), tags(1):  # type: ignore[arg-type]
        pass


def test_tags_merge_with_task_tags():
    tagged = inc.copy(tags=["own"])
    with Flow("f"), tags("ctx"):
        t = tagged(1)
    assert t.tags == {"own", "ctx"}
    assert tagged.tags == {"own"}


# ------------------------------------------------------------------- resource manager


@resource_manager
class Resource:
    def __init__(self, size):
        self.size = size

    def setup(self):
        return list(range(self.size))

    def cleanup(self, resource):
        resource.clear()


def test_resource_manager_structure():
    @task
    def use(r):
        return len(r)

    with Flow("f") as flow:
        n = Parameter("n", default=2)
        with Resource(n) as res:
            a = use(res)
            b = inc(a)
            c = one()
        after = one()
    init = next(t for t in flow.tasks if t.name == "Resource")
    setup = next(t for t in flow.tasks if isinstance(t, ResourceSetupTask))
    cleanup = next(t for t in flow.tasks if isinstance(t, ResourceCleanupTask))
    assert res is setup
    assert init.run is Resource.resource_class
    assert flow.upstream_tasks(init) == {n}
    assert flow.upstream_tasks(setup) == {init}
    assert {e.key for e in flow.edges_to(cleanup) if e.key} == {"mgr", "resource"}
    # tasks of the block wait for setup; the last ones precede cleanup
    assert setup in flow.upstream_tasks(c)
    assert b in flow.upstream_tasks(cleanup) and c in flow.upstream_tasks(cleanup)
    assert a not in flow.upstream_tasks(cleanup)
    assert after not in flow.downstream_tasks(setup)
    assert cleanup.trigger is resource_cleanup_trigger
    assert cleanup.skip_on_upstream_skip is False
    # cleanup never decides the flow's state by default
    assert cleanup not in flow.reference_tasks()
    assert {b, c, after} <= set(flow.reference_tasks())
    compiled = flow._compile()
    assert compiled.tasks.index(cleanup) not in compiled.reference


def test_resource_manager_options_and_errors():
    @resource_manager(name="db", setup_task_kwargs={"max_retries": 2, "retry_delay": 1})
    class Database:
        def setup(self):
            return "conn"

        def cleanup(self, conn):
            pass

    with Flow("f"), Database() as conn:
        pass
    assert conn.name == "db.setup" and conn.max_retries == 2
    with pytest.raises(FlowContextError):
        Database()
    with pytest.raises(TaskDefinitionError, match="cleanup"):

        @resource_manager
        class NoCleanup:
            def setup(self):
                pass


# ------------------------------------------------------------------------ public API


def test_public_names():
    expected = {
        "Flow",
        "Task",
        "task",
        "Parameter",
        "unmapped",
        "mapped",
        "flatten",
        "apply_map",
        "case",
        "switch",
        "ifelse",
        "merge",
        "FilterTask",
        "resource_manager",
        "tags",
        "context",
        "get_run_logger",
        "__version__",
    }
    assert set(ferroflow.__all__) == expected
    for name in expected:
        assert getattr(ferroflow, name) is not None
    assert isinstance(ferroflow.__version__, str)


def test_public_names_have_docstrings():
    for name in ferroflow.__all__:
        if name in ("__version__", "context"):
            continue
        assert getattr(ferroflow, name).__doc__, name


def test_import_loads_no_heavy_dependency():
    # What keeps `import ferroflow` fast (its time is a benchmark figure, not a test):
    # the heavy optional dependencies load only when a feature needs them.
    heavy = ("pydantic", "cloudpickle", "msgpack", "dask", "distributed", "rich", "click")
    code = f"import sys, ferroflow; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"
