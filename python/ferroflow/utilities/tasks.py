"""Building helpers: the ``tags`` context manager, ``apply_map`` and ``as_task``.

Example:
    >>> from ferroflow import Flow, tags, task
    >>> @task
    ... def fetch(url):
    ...     pass
    >>> with Flow("example") as flow:
    ...     with tags("io", "web"):
    ...         page = fetch("https://example.com")
    >>> sorted(page.tags)
    ['io', 'web']
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ferroflow import _build
from ferroflow.edge import _unwrap, flatten, mapped, unmapped
from ferroflow.exceptions import FlowContextError, MappingError, TaskDefinitionError
from ferroflow.flow import Flow, _is_mappable
from ferroflow.task import Task
from ferroflow.tasks.core import Constant

__all__ = ["apply_map", "as_task", "tags"]


def _mapped_as(value: Task, is_mapped: bool, flattened: bool) -> Any:
    """``value`` wrapped in the annotations that give exactly these edge flags."""
    wrapped: Any = mapped(value) if is_mapped else unmapped(value)
    return flatten(wrapped) if flattened else wrapped


@contextmanager
def tags(*names: str) -> Iterator[None]:
    """Add tags to every task created or called inside the block (blocks nest).

    Args:
        *names: the tags.

    Raises:
        TaskDefinitionError: a tag that is not a string.

    Example:
        >>> from ferroflow import Flow, Task, tags
        >>> with Flow("example") as flow:
        ...     with tags("a"):
        ...         with tags("b"):
        ...             t = flow.add_task(Task(name="t"))
        >>> sorted(t.tags)
        ['a', 'b']
    """
    for name in names:
        if not isinstance(name, str):
            raise TaskDefinitionError(f"tags() takes strings, got {name!r}")
    outer = _build.current()
    frame = _build.push(outer.derive(tags=outer.tags | frozenset(names)))
    try:
        yield
    finally:
        _build.pop(frame)


def as_task(x: Any, flow: Flow | None = None) -> Task:
    """``x`` as a task: a task itself; a collection holding tasks becomes a collection task
    bound in ``flow``; any other value a (new, unattached) ``Constant``.

    Args:
        x: a task, annotation, collection or constant.
        flow: where collection tasks are bound [the active flow].

    Raises:
        FlowContextError: a collection of tasks without a flow.

    Example:
        >>> from ferroflow.utilities.tasks import as_task
        >>> as_task(3)
        <Constant: Constant[int]>
    """
    x = _unwrap(x)[0]
    if isinstance(x, Task):
        return x
    frame = _build.current()
    target = flow or frame.flow
    if target is None:
        from ferroflow.flow import _contains_task

        if _contains_task(x):
            raise FlowContextError("as_task: a collection of tasks needs a flow")
        return Constant(x)
    made = target._as_task(x, frame)
    return Constant(x) if made is None else made


def apply_map(func: Callable[..., Any], *args: Any, flow: Flow | None = None, **kwargs: Any) -> Any:
    """Map a whole sub-pipeline: ``func`` builds tasks, and each element of the mapped
    arguments gets its own copy of that pipeline (including ``case`` blocks).

    ``func`` is called once, inside a temporary flow, with tasks standing for one element
    of each argument. Its tasks are then added to the flow, and every edge among them, and
    from the mapped arguments, becomes mapped: child ``i`` of a task depends on child ``i``
    of its upstream tasks. Arguments wrapped in ``unmapped`` are passed whole, and so are
    tasks that existed before ``apply_map`` and that ``func`` uses without receiving them as
    arguments. Each task of the pipeline that has no upstream task inside it gets every
    argument (but unmapped constants) as an upstream task, so all mapped arguments must
    have one length and the whole pipeline waits for its inputs.

    Args:
        func: a function that calls tasks; it must not call ``Task.map`` itself.
        *args: arguments to map over (tasks, sequences, or ``unmapped(x)``).
        flow: the flow [the active one]; when given, ``func`` is called with
            ``flow=<the temporary flow>`` too.
        **kwargs: keyword arguments to map over.

    Returns:
        Whatever ``func`` returns (usually its last task).

    Raises:
        FlowContextError: no flow.
        MappingError: a mapped constant that is not a sized sequence, a task passed both
            mapped and unmapped, nested ``apply_map``, or ``Task.map`` inside ``func``.

    Example:
        >>> from ferroflow import Flow, apply_map, case, merge, task
        >>> @task
        ... def inc(x):
        ...     return x + 1
        >>> @task
        ... def is_even(x):
        ...     return x % 2 == 0
        >>> def inc_if_even(x):
        ...     with case(is_even(x), True):
        ...         x2 = inc(x)
        ...     return merge(x2, x)
        >>> with Flow("example") as flow:
        ...     out = apply_map(inc_if_even, range(4))
        >>> all(e.mapped for e in flow.edges if e.downstream_task is not out)
        True
    """
    frame = _build.current()
    if frame.in_apply_map:
        raise MappingError("apply_map cannot be nested inside the function given to apply_map")
    no_flow_given = flow is None
    if flow is None:
        flow = frame.flow
        if flow is None:
            raise FlowContextError(
                "apply_map must be used inside `with Flow(...):` (or pass flow=...)"
            )

    # task standing for an argument -> (mapped, constant, flattened)
    arg_info: dict[Task, tuple[bool, bool, bool]] = {}

    def prepare(name: str, a: Any) -> Task:
        value, flags = _unwrap(a)
        is_mapped = flags.get("mapped", True)
        flattened = flags.get("flattened", False)
        made = value if isinstance(value, Task) else flow._as_task(value, frame)
        is_constant = made is None
        if made is None:
            if is_mapped and not _is_mappable(value):
                raise MappingError(
                    f"apply_map({getattr(func, '__name__', 'func')}): cannot map over "
                    f"argument {name}: {type(value).__name__} {value!r:.60} is not a sized "
                    "sequence (wrap it in unmapped() to pass it whole)"
                )
            made = Constant(value)
            made._ff_auto = True  # type: ignore[attr-defined]
            if frame.tracker:  # added later only if used: never "unused"
                frame.tracker.pop(made, None)
        else:
            flow._add_task(made, frame)
        known = arg_info.get(made)
        if known is not None and known != (is_mapped, is_constant, flattened):
            raise MappingError(f"apply_map: task {made.name!r} is passed both mapped and unmapped")
        arg_info[made] = (is_mapped, is_constant, flattened)
        return made

    args2 = [prepare(f"#{i}", a) for i, a in enumerate(args)]
    kwargs2 = {k: prepare(repr(k), v) for k, v in kwargs.items()}

    sub = Flow(f"apply_map({getattr(func, '__name__', 'func')})")
    with sub:
        inner = _build.push(_build.current().derive(in_apply_map=True))
        try:
            if no_flow_given:
                result = func(*args2, **kwargs2)
            else:
                result = func(*args2, flow=sub, **kwargs2)
        finally:
            _build.pop(inner)

    def link(up: Task, down: Task, key: str | None, is_mapped: bool, flattened: bool) -> None:
        if key is not None:
            flow._bind_values(
                down, [(key, _mapped_as(up, is_mapped, flattened))], False, None, frame, True
            )
        else:
            flow._bind_values(down, [], False, [_mapped_as(up, is_mapped, flattened)], frame, True)

    # ``func`` built into ``sub``: tasks of ``flow`` it used are not new.
    known = flow._tasks
    new_tasks = [t for t in sub._tasks if t not in arg_info and t not in known]
    new_set = set(new_tasks)
    for t in new_tasks:
        flow._add_task(t, frame)
    for up, down, key, edge_mapped, edge_flat in sub._edges:
        info = arg_info.get(up)
        if info is not None:
            is_mapped, is_constant, flattened = info
            if is_constant and not is_mapped:
                if key is not None:  # an unmapped constant is a plain constant again
                    flow._bind_values(down, [(key, up.value)], False, None, frame, True)  # type: ignore[attr-defined]
                continue
            link(up, down, key, is_mapped, flattened or edge_flat)
        elif up in new_set:
            link(up, down, key, True, edge_flat)
        else:  # a task that existed before apply_map: passed whole
            link(up, down, key, edge_mapped, edge_flat)
    for t, consts in sub.constants.items():
        if consts:
            flow._bind_values(t, list(consts.items()), False, None, frame, True)

    for t in new_tasks:
        ups = flow.upstream_tasks(t)
        if any(u in new_set for u in ups):
            continue
        for arg_task, (is_mapped, is_constant, _flat) in arg_info.items():
            if arg_task not in ups and (is_mapped or not is_constant):
                link(arg_task, t, None, is_mapped, False)
    return result
