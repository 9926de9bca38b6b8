"""Building: Task construction, options, the @task decorator, signatures, Parameters."""

from __future__ import annotations

import inspect
from datetime import timedelta

import pytest

from ferroflow import Flow, Parameter, Task, task, triggers
from ferroflow.exceptions import (
    BindError,
    FerroflowError,
    FlowContextError,
    ParameterError,
    TaskDefinitionError,
)
from ferroflow.task import FunctionTask


@task
def add(x, y=1):
    """Add two numbers."""
    return x + y


# --------------------------------------------------------------------------- options


def test_defaults():
    t = Task()
    assert t.name == "Task"
    assert t.slug is None
    assert t.tags == frozenset()
    assert t.max_retries == 0
    assert t.retry_delay is None
    assert t.retry_on is None
    assert t.timeout is None
    assert t.trigger is triggers.all_successful
    assert t.skip_on_upstream_skip is True
    assert t.cache_for is None and t.cache_validator is None and t.cache_key is None
    assert t.checkpoint is None and t.result is None and t.target is None
    assert tuple(t.state_handlers) == ()
    assert t.on_failure is None
    assert t.log_stdout is False
    assert t.nout is None


def test_retry_delay_normalized_to_timedelta():
    assert Task(max_retries=1, retry_delay=5).retry_delay == timedelta(seconds=5)
    assert Task(max_retries=1, retry_delay=0.5).retry_delay == timedelta(seconds=0.5)
    delay = timedelta(minutes=1)
    assert Task(max_retries=2, retry_delay=delay).retry_delay == delay
    assert Task(max_retries=1, retry_delay=0).retry_delay == timedelta(0)


def test_retries_without_delay():
    with pytest.raises(TaskDefinitionError, match="retry_delay"):
        Task(max_retries=3)


@pytest.mark.parametrize("value", [-1, 1.5, "2", True, 65535, 10**9])
def test_bad_max_retries(value):
    with pytest.raises(TaskDefinitionError, match="max_retries"):
        Task(max_retries=value, retry_delay=1)


def test_max_retries_fits_the_engines_attempt_counter():
    assert Task(max_retries=65534, retry_delay=0).max_retries == 65534


def test_negative_retry_delay():
    with pytest.raises(TaskDefinitionError, match="retry_delay"):
        Task(max_retries=1, retry_delay=-1)


def test_retry_on_forms():
    assert Task(retry_on=ValueError).retry_on == (ValueError,)
    assert Task(retry_on=[ValueError, KeyError]).retry_on == (ValueError, KeyError)
    assert Task(retry_on=(OSError,)).retry_on == (OSError,)


@pytest.mark.parametrize("value", [3, "ValueError", [ValueError, 3], [], int, ValueError("x")])
def test_bad_retry_on(value):
    with pytest.raises(TaskDefinitionError, match="retry_on"):
        Task(retry_on=value)


def test_tags():
    assert Task(tags=["a", "b"]).tags == {"a", "b"}
    assert Task(tags=("a",)).tags == frozenset({"a"})
    with pytest.raises(TaskDefinitionError, match="bare string"):
        Task(tags="a")
    with pytest.raises(TaskDefinitionError, match="string"):
        Task(tags=[1])


def test_timeout_forms():
    assert Task(timeout=3).timeout == 3.0
    assert Task(timeout=0.25).timeout == 0.25
    assert Task(timeout=timedelta(minutes=1)).timeout == 60.0
    assert isinstance(Task(timeout=3).timeout, float)


@pytest.mark.parametrize("value", [0, -1, timedelta(0), timedelta(seconds=-3), "10", True])
def test_bad_timeout(value):
    with pytest.raises(TaskDefinitionError, match="timeout"):
        Task(timeout=value)


def test_other_option_errors():
    with pytest.raises(TaskDefinitionError, match="trigger"):
        Task(trigger="all_successful")
    with pytest.raises(TaskDefinitionError, match="state_handlers"):
        Task(state_handlers=lambda t, o, n: n)
    with pytest.raises(TaskDefinitionError, match="not callable"):
        Task(state_handlers=[1])
    with pytest.raises(TaskDefinitionError, match="on_failure"):
        Task(on_failure=1)
    with pytest.raises(TaskDefinitionError, match="nout"):
        Task(nout=0)
    with pytest.raises(TaskDefinitionError, match="cache_for"):
        Task(cache_for=-5)
    with pytest.raises(TaskDefinitionError, match="name"):
        Task(name="")


def test_option_values_kept():
    def handler(t, old, new):
        return new

    t = Task(
        name="n",
        slug="s",
        trigger=triggers.all_finished,
        skip_on_upstream_skip=False,
        cache_for=60,
        cache_key="k",
        checkpoint=True,
        target="{task_name}.bin",
        state_handlers=[handler],
        on_failure=print,
        log_stdout=True,
        nout=2,
    )
    assert (t.name, t.slug, t.nout) == ("n", "s", 2)
    assert t.trigger is triggers.all_finished
    assert t.skip_on_upstream_skip is False
    assert t.cache_for == timedelta(seconds=60)
    assert list(t.state_handlers) == [handler]
    assert t.on_failure is print
    assert t.log_stdout is True and t.checkpoint is True


def test_errors_are_typed():
    assert issubclass(TaskDefinitionError, FerroflowError)
    assert issubclass(TaskDefinitionError, ValueError)


# ------------------------------------------------------------------------ decorator


def test_decorator_forms():
    @task
    def plain(x):
        return x

    @task(name="renamed", max_retries=2, retry_delay=1)
    def opts(x):
        return x

    assert isinstance(plain, FunctionTask) and isinstance(plain, Task)
    assert plain.name == "plain"
    assert opts.name == "renamed" and opts.max_retries == 2


def test_run_is_the_raw_function():
    def raw(x, y=1):
        "Doc."
        return x + y

    t = task(raw)
    assert t.run is raw
    assert t.__wrapped__ is raw
    assert t.__doc__ == "Doc."
    assert inspect.signature(t) == inspect.signature(raw)
    assert t.run(1, 2) == 3
    assert add.__doc__ == "Add two numbers."


def test_decorator_rejects_bad_functions():
    with pytest.raises(TaskDefinitionError, match=r"\*args"):

        @task
        def star(*args):
            pass

    with pytest.raises(TaskDefinitionError, match="reserved"):

        @task
        def reserved(upstream_tasks):
            pass

    with pytest.raises(TaskDefinitionError, match="async"):

        @task
        async def coro():
            pass

    with pytest.raises(TaskDefinitionError):
        task(3)


def test_subclass_signature_and_errors():
    class Star(Task):
        def run(self, *items):
            return items

    with pytest.raises(TaskDefinitionError, match=r"\*items"):
        Star()

    class Mapped(Task):
        def run(self, mapped):
            return mapped

    with pytest.raises(TaskDefinitionError, match="mapped"):
        Mapped()


def test_ff_signature():
    @task
    def f(a, b=1, *, c, d=2, **rest):
        pass

    assert f._ff_signature() == (("a", "b"), ("c", "d"), True)

    class Sub(Task):
        def run(self, x, y=3):
            return x

    s = Sub()
    assert s._ff_signature() == (("x", "y"), (), False)
    assert Task()._ff_signature() == ((), (), False)
    with Flow("f"):
        copy = s(1)
    # computed once, shared by every copy
    assert copy._ff_signature() is s._ff_signature()


def test_nout_from_annotation():
    @task
    def two() -> tuple[int, str]:
        return 1, "a"

    @task
    def many() -> tuple[int, ...]:
        return (1,)

    class Three(Task):
        def run(self) -> tuple[int, int, int]:
            return 1, 2, 3

    assert two.nout == 2
    assert many.nout is None
    assert Three().nout == 3
    assert add.nout is None


def test_calling_outside_a_flow():
    with pytest.raises(FlowContextError, match="outside a flow"):
        add(1, 2)
    with pytest.raises(FlowContextError):
        add.map([1, 2])
    with pytest.raises(FlowContextError):
        add.bind(1)


def test_copy():
    fetch = add.copy(name="other", max_retries=1, retry_delay=2)
    assert fetch.name == "other" and fetch.max_retries == 1
    assert add.name == "add" and add.max_retries == 0
    assert fetch.run is add.run
    with pytest.raises(TaskDefinitionError, match="no option"):
        add.copy(bogus=1)
    with pytest.raises(TaskDefinitionError, match="retry_delay"):
        add.copy(max_retries=3)


def test_call_with_task_args():
    with Flow("f") as flow:
        t = add(1, task_args={"name": "custom", "tags": ["x"]})
    assert t.name == "custom" and t.tags == {"x"}
    assert add.name == "add"
    assert [x.name for x in flow.tasks] == ["custom"]


def test_call_returns_a_copy():
    with Flow("f") as flow:
        a = add(1)
        b = add(2)
    assert a is not add and b is not add and a is not b
    assert type(a) is type(add)
    assert a.run is add.run
    assert add not in flow.tasks
    assert list(flow.tasks) == [a, b]


def test_bind_adds_the_task_itself():
    class Add(Task):
        def run(self, x, y):
            return x + y

    t = Add()
    with Flow("f") as flow:
        out = t.bind(1, y=2)
    assert out is t
    assert flow.constants[t] == {"x": 1, "y": 2}


# ------------------------------------------------------------------------- Parameter


def test_parameter_basics():
    p = Parameter("n")
    assert p.name == "n" and p.slug == "n"
    assert p.required is True and p.default is None
    assert Parameter("n", default=None).required is False
    assert Parameter("n", default=3).required is False
    assert Parameter("n", default=3, required=True).required is True
    assert Parameter("n", default=3).run() == 3
    assert p._ff_signature() == ((), (), False)


def test_parameter_needs_a_name():
    with pytest.raises(ParameterError):
        Parameter("")


def test_typed_parameter_coerces():
    p = Parameter("n", default="3", type=int)
    assert p.default == 3
    assert p.validate_value("7") == 7
    assert Parameter("xs", type=list[int]).validate_value(["1", 2]) == [1, 2]
    assert Parameter("any").validate_value(object) is object


def test_typed_parameter_bad_value_names_the_parameter():
    p = Parameter("count", type=int)
    with pytest.raises(ParameterError, match="'count'") as info:
        p.validate_value("many")
    assert info.value.parameter == "count"
    assert "int" in str(info.value)


def test_typed_parameter_bad_default_at_construction():
    with pytest.raises(ParameterError, match="default") as info:
        Parameter("n", default="x", type=int)
    assert info.value.parameter == "n"


def test_parameter_copy_needs_new_name():
    p = Parameter("a", default=1)
    q = p.copy("b")
    assert (q.name, q.slug, q.default) == ("b", "b", 1)
    with pytest.raises(ParameterError):
        p.copy()


def test_parameter_call_adds_itself():
    p = Parameter("p")
    with Flow("f") as flow:
        assert p() is p
    assert list(flow.tasks) == [p]


def test_bind_error_is_type_error():
    assert issubclass(BindError, TypeError)
