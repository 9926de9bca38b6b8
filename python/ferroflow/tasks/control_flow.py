"""Control flow, built into the graph: ``case``, ``switch``, ``ifelse``, ``merge`` and
``FilterTask``.

A branch that is not taken ends ``Skipped``, and the skip propagates downstream through
tasks with ``skip_on_upstream_skip=True`` (the default). A condition is a
:class:`CompareValue` task that raises ``signals.SKIP`` when its input differs from the
value it was made with; the tasks of a branch get it as an upstream task.

Example:
    >>> from ferroflow import Flow, case, merge, task
    >>> @task
    ... def is_big(x):
    ...     return x > 10
    >>> @task
    ... def shout(x):
    ...     return f"{x}!"
    >>> @task
    ... def whisper(x):
    ...     return f"{x}..."
    >>> with Flow("example") as flow:
    ...     big = is_big(5)
    ...     with case(big, True):
    ...         loud = shout(5)
    ...     with case(big, False):
    ...         quiet = whisper(5)
    ...     said = merge(loud, quiet)
    >>> [t.name for t in flow.upstream_tasks(loud)]
    ['case(True)']
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ferroflow import _build, signals, triggers
from ferroflow.exceptions import BindError, FlowContextError, GraphError, TaskDefinitionError
from ferroflow.task import FunctionTask, Task
from ferroflow.utilities.tasks import tags

if TYPE_CHECKING:
    from ferroflow.flow import Flow

__all__ = ["CompareValue", "FilterTask", "Merge", "case", "ifelse", "merge", "switch"]


class CompareValue(Task):
    """Raises ``signals.SKIP`` unless its input equals ``value``: the condition of a branch.

    Args:
        value: the value to match.
        **kwargs: any :class:`~ferroflow.Task` option [name ``"case(<value>)"``].

    Example:
        >>> from ferroflow.tasks.control_flow import CompareValue
        >>> CompareValue("a").run("a") is None
        True
        >>> CompareValue("a").run("b")
        Traceback (most recent call last):
        ...
        ferroflow.signals.SKIP: Provided value 'b' did not match 'a'
    """

    value: Any

    def __init__(self, value: Any, **kwargs: Any) -> None:
        self.value = value
        kwargs.setdefault("name", f"case({value!r})")
        super().__init__(**kwargs)

    def run(self, value: Any) -> None:
        """Raise ``signals.SKIP`` when ``value != self.value``."""
        if value != self.value:
            raise signals.SKIP(f"Provided value {value!r} did not match {self.value!r}")


class case:
    """A block of tasks that run only when ``task``'s result equals ``value``.

    Every task added inside the block that has no upstream task from the same block gets
    the condition (a :class:`CompareValue`) as an upstream task; when the values differ the
    condition is ``Skipped``, and so are the block's tasks. Cases nest.

    Args:
        task: the task whose result is compared.
        value: a constant (not a task) to compare with.

    Raises:
        BindError: ``value`` is a task, or ``task`` is not one.

    Example:
        >>> from ferroflow import Flow, case, task
        >>> @task
        ... def mode():
        ...     return "fast"
        >>> @task
        ... def run_fast():
        ...     return 1
        >>> with Flow("example") as flow:
        ...     m = mode()
        ...     with case(m, "fast"):
        ...         fast = run_fast()
        >>> [t.name for t in flow.upstream_tasks(fast)]
        ["case('fast')"]
    """

    def __init__(self, task: Task, value: Any) -> None:
        if isinstance(value, Task):
            raise BindError(
                f"case(): the value to compare with must be a constant, not a task "
                f"({value!r}); compare inside a task instead, e.g. case(a.is_equal(b), True)"
            )
        if not isinstance(task, Task):
            raise BindError(f"case(): the first argument must be a task, got {task!r}")
        self.task = task
        self.value = value
        self._tasks: dict[Task, None] = {}
        self._flow: Flow | None = None
        self._frame: _build.Frame | None = None

    def _add_task(self, task: Task, flow: Flow) -> None:
        if self._flow is None:
            self._flow = flow
        elif self._flow is not flow:
            raise GraphError("one case block cannot add tasks to two different flows")
        self._tasks[task] = None

    def __enter__(self) -> case:
        self._frame = _build.push(_build.current().derive(case=self))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _build.pop_entered(self._frame, "case")
        self._frame = None
        flow = self._flow
        if exc_type is not None or flow is None or not self._tasks:
            return
        cond = CompareValue(self.value)
        cond.bind(value=self.task, flow=flow)
        inside = self._tasks
        for child in list(inside):
            if not any(up in inside for up in flow.upstream_tasks(child)):
                child.set_upstream(cond, flow=flow)


def _as_branch(t: Any, flow: Flow) -> Task:
    branch = flow._as_task(t, _build.current())
    if branch is None:
        raise BindError(f"a branch must be a task (or a collection of tasks), got {t!r}")
    return branch


def switch(condition: Task, cases: dict[Any, Any]) -> None:
    """Run the task of the matching case; skip the others (and their downstream tasks).

    Args:
        condition: a task whose result is looked up among ``cases``' keys.
        cases: ``{value: task}``.

    Raises:
        FlowContextError: outside a flow block.

    Example:
        >>> from ferroflow import Flow, switch, task
        >>> @task
        ... def pick():
        ...     return "b"
        >>> @task
        ... def a_branch():
        ...     return "A"
        >>> @task
        ... def b_branch():
        ...     return "B"
        >>> with Flow("example") as flow:
        ...     a, b = a_branch(), b_branch()
        ...     switch(pick(), {"a": a, "b": b})
        >>> [t.name for t in flow.upstream_tasks(b)]
        ["case('b')"]
    """
    flow = _build.current().flow
    if flow is None:
        raise FlowContextError("switch() must be used inside `with Flow(...):`")
    with tags("switch"):
        for value, t in cases.items():
            branch = _as_branch(t, flow)
            match = CompareValue(value).bind(value=condition)
            branch.set_dependencies(flow, upstream_tasks=[match])


def _as_bool(x: Any) -> bool:
    return bool(x)


_AS_BOOL = FunctionTask(_as_bool, name="as_bool")


def ifelse(condition: Task, true_task: Any, false_task: Any) -> None:
    """Run ``true_task`` when ``condition``'s result is truthy, else ``false_task``; the
    other branch is skipped.

    Example:
        >>> from ferroflow import Flow, ifelse, task
        >>> @task
        ... def check():
        ...     return True
        >>> @task
        ... def yes():
        ...     return "yes"
        >>> @task
        ... def no():
        ...     return "no"
        >>> with Flow("example") as flow:
        ...     y, n = yes(), no()
        ...     ifelse(check(), y, n)
        >>> [t.name for t in flow.upstream_tasks(n)]
        ['case(False)']
    """
    switch(_AS_BOOL(condition), {True: true_task, False: false_task})


class Merge(Task):
    """Returns the first of its inputs (``task_1``, ``task_2``, ...) that is not ``None``;
    made by :func:`merge`. Skipped only when every input was skipped.

    Args:
        **kwargs: any :class:`~ferroflow.Task` option; ``skip_on_upstream_skip`` must stay
            ``False`` [trigger ``triggers.not_all_skipped``].

    Example:
        >>> from ferroflow.tasks.control_flow import Merge
        >>> Merge().run(task_1=None, task_2="b", task_3="c")
        'b'
    """

    def __init__(self, **kwargs: Any) -> None:
        if kwargs.setdefault("skip_on_upstream_skip", False):
            raise TaskDefinitionError("Merge tasks need skip_on_upstream_skip=False")
        kwargs.setdefault("trigger", triggers.not_all_skipped)
        super().__init__(**kwargs)

    def run(self, **task_results: Any) -> Any:
        """Return the first input, in order, that is not ``None`` (else ``None``)."""
        for i in range(1, len(task_results) + 1):
            value = task_results.get(f"task_{i}")
            if value is not None:
                return value
        return None


def merge(*tasks: Any, flow: Flow | None = None) -> Merge:
    """Join conditional branches: the first result that is not ``None``, in order.

    Args:
        *tasks: the branch tasks (usually all but one are skipped).
        flow: the flow [the active one].

    Returns:
        The :class:`Merge` task.

    Example:
        >>> from ferroflow import Flow, ifelse, merge, task
        >>> @task
        ... def check():
        ...     return True
        >>> @task
        ... def yes():
        ...     return "yes"
        >>> @task
        ... def no():
        ...     return "no"
        >>> with Flow("example") as flow:
        ...     y, n = yes(), no()
        ...     ifelse(check(), y, n)
        ...     answer = merge(y, n)
        >>> sorted(e.key for e in flow.edges_to(answer))
        ['task_1', 'task_2']
    """
    return Merge().bind(**{f"task_{i + 1}": t for i, t in enumerate(tasks)}, flow=flow)


def _keep(result: Any) -> bool:
    return result is not None and not isinstance(result, BaseException)


class FilterTask(Task):
    """Filters a list of results, typically the reduced results of a mapped task.

    By default it drops ``None`` and exceptions (the results of failed children), and it
    runs whatever its upstream states (``trigger=all_finished``,
    ``skip_on_upstream_skip=False``).

    Args:
        filter_func: ``keep(result) -> bool`` [drop ``None`` and exceptions].
        **kwargs: any :class:`~ferroflow.Task` option.

    Example:
        >>> from ferroflow import FilterTask
        >>> FilterTask().run([1, None, ValueError("x"), 2])
        [1, 2]
        >>> FilterTask(filter_func=lambda x: x % 2 == 0).run([1, 2, 3, 4])
        [2, 4]
    """

    filter_func: Callable[[Any], bool]

    def __init__(self, filter_func: Callable[[Any], bool] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("skip_on_upstream_skip", False)
        kwargs.setdefault("trigger", triggers.all_finished)
        if filter_func is not None and not callable(filter_func):
            raise TaskDefinitionError(
                f"FilterTask: filter_func must be callable, got {filter_func!r}"
            )
        self.filter_func = filter_func or _keep
        super().__init__(**kwargs)

    def run(self, task_results: list[Any]) -> list[Any]:
        """Return the results ``filter_func`` keeps, in order."""
        keep = self.filter_func
        return [r for r in task_results if keep(r)]
