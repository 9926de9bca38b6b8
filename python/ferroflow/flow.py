"""Flows: a graph of tasks, built with the functional API (``with Flow(...)``) or the
imperative one (``add_task``, ``add_edge``, ``set_dependencies``, ``chain``).

A :class:`Flow` keeps its tasks in insertion order and indexes edges by task both ways, so
``edges_to(t)`` and ``upstream_tasks(t)`` cost O(degree). Constant arguments live in
``flow.constants[task]``, outside the graph. Errors surface as early as they can: bad binds,
self-edges, edges into a Parameter and duplicate argument keys when they are made; cycles,
required arguments never bound and foreign reference tasks in :meth:`Flow.validate`.

Example:
    >>> from ferroflow import Flow, Parameter, task
    >>> @task
    ... def inc(x):
    ...     return x + 1
    >>> with Flow("example") as flow:
    ...     n = Parameter("n", default=1)
    ...     out = inc(inc(n))
    >>> [t.name for t in flow.sorted_tasks()]
    ['n', 'inc', 'inc']
    >>> flow.terminal_tasks() == {out}
    True

Engine contract: :meth:`Flow._compile` returns a :class:`CompiledFlow` (tasks by id, edges,
integer edge tuples, per-task constants, reference ids), validated and cached until the
flow changes; :meth:`Flow._resolve_parameters` checks and coerces parameter values.
"""

from __future__ import annotations

import heapq
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from itertools import pairwise
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from ferroflow import _build
from ferroflow.edge import Edge, EdgeAnnotation, _unwrap
from ferroflow.exceptions import (
    BindError,
    CycleError,
    EdgeError,
    GraphError,
    MappingError,
    ParameterError,
)
from ferroflow.task import Parameter, Task
from ferroflow.tasks.core import Constant, Dict, List, Set, Tuple

if TYPE_CHECKING:
    from ferroflow.states import State

__all__ = ["CompiledFlow", "Flow", "OrderedSetView", "UnusedTaskWarning"]

_T = TypeVar("_T")

# Exact types that are always constants: checked with one ``type(x) in`` test.
_PLAIN: frozenset[type] = frozenset({int, float, str, bool, type(None), bytes, complex})


class UnusedTaskWarning(UserWarning):
    """Tasks were created inside a ``with Flow(...)`` block but never added to the flow.

    Example:
        >>> import warnings
        >>> from ferroflow import Flow, Task
        >>> from ferroflow.flow import UnusedTaskWarning
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     with Flow("example"):
        ...         forgotten = Task(name="forgotten")
        >>> caught[0].category is UnusedTaskWarning
        True
    """


class CompiledFlow(NamedTuple):
    """The flow as the engine consumes it; made by :meth:`Flow._compile`.

    A task's id is its index in ``tasks`` (insertion order). Treat every field as
    read-only: the dicts in ``constants`` are shared with the flow (copy one before adding
    arguments to it).

    Attributes:
        tasks: the tasks, by id.
        edges: the edges, in insertion order.
        edge_ids: ``(upstream id, downstream id, key, mapped, flattened)`` per edge, in the
            order of ``edges``.
        constants: per task id, its constant (unmapped, non-task) arguments by name.
        reference: the ids of the reference tasks (default: the terminal tasks).

    Example:
        >>> from ferroflow import Flow, task
        >>> @task
        ... def add(x, y):
        ...     return x + y
        >>> with Flow("example") as flow:
        ...     a = add(1, 2)
        ...     b = add(a, 3)
        >>> c = flow._compile()
        >>> c.edge_ids, c.constants, c.reference
        ([(0, 1, 'x', False, False)], [{'x': 1, 'y': 2}, {'y': 3}], [1])
    """

    tasks: list[Task]
    edges: list[Edge]
    edge_ids: list[tuple[int, int, str | None, bool, bool]]
    constants: list[dict[str, Any]]
    reference: list[int]


class OrderedSetView(AbstractSet[_T]):
    """A read-only, insertion-ordered set: what the flow's queries return.

    It compares equal to a ``set`` with the same items and supports ``in``, ``len``,
    ``&``, ``|`` and ``-``; iteration follows insertion order, so results are
    deterministic.

    Example:
        >>> from ferroflow.flow import OrderedSetView
        >>> view = OrderedSetView(dict.fromkeys([3, 1, 2]))
        >>> list(view), view == {1, 2, 3}, 2 in view
        ([3, 1, 2], True, True)
    """

    __slots__ = ("_items",)

    def __init__(self, items: dict[_T, None]) -> None:
        self._items = items

    @classmethod
    def _from_iterable(cls, it: Iterable[_T]) -> OrderedSetView[_T]:  # type: ignore[override]
        return cls(dict.fromkeys(it))

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __iter__(self) -> Iterator[_T]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return "{" + ", ".join(map(repr, self._items)) + "}" if self._items else "set()"


def _ordered(items: Iterable[_T]) -> OrderedSetView[_T]:
    return OrderedSetView(dict.fromkeys(items))


def _contains_task(x: Any) -> bool:
    tp = type(x)
    if tp in _PLAIN:
        return False
    if isinstance(x, (Task, EdgeAnnotation)):
        return True
    if tp is list or tp is tuple or tp is set or tp is frozenset:
        return any(_contains_task(v) for v in x)
    if tp is dict:
        return any(_contains_task(k) or _contains_task(v) for k, v in x.items())
    return False


def _is_mappable(x: Any) -> bool:
    return hasattr(x, "__len__") and hasattr(x, "__getitem__") and not isinstance(x, Mapping)


class Flow:
    """A workflow: tasks, the edges between them, and the constants bound to them.

    Args:
        name: the flow's name.
        tasks: tasks to add.
        edges: :class:`~ferroflow.edge.Edge` objects to add.
        reference_tasks: the tasks whose states decide the flow's state [terminal tasks].
        state_handlers: ``handler(flow, old_state, new_state)`` callables.
        on_failure: ``on_failure(flow, failed_state)``.
        terminal_state_handler: ``handler(flow, state, reference_task_states)``.
        result: the default ``Result`` for checkpointed task values.
        executor: the default executor for :meth:`run`.
        schedule: an optional schedule (``ferroflow.schedules``).

    Example:
        >>> from ferroflow import Flow, task
        >>> @task
        ... def hello(who):
        ...     return f"hello {who}"
        >>> with Flow("greetings") as flow:
        ...     greeting = hello("world")
        >>> flow.name, len(flow.tasks), flow.constants[greeting]
        ('greetings', 1, {'who': 'world'})
    """

    def __init__(
        self,
        name: str,
        tasks: Iterable[Task] | None = None,
        edges: Iterable[Edge] | None = None,
        reference_tasks: Iterable[Task] | None = None,
        state_handlers: Iterable[Any] | None = None,
        on_failure: Any = None,
        terminal_state_handler: Any = None,
        result: Any = None,
        executor: Any = None,
        schedule: Any = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise GraphError(f"a Flow needs a non-empty string name, got {name!r}")
        self.name = name
        self.state_handlers: list[Any] = list(state_handlers or ())
        self.on_failure = on_failure
        self.terminal_state_handler = terminal_state_handler
        self.result = result
        self.executor = executor
        self.schedule = schedule
        self.constants: defaultdict[Task, dict[str, Any]] = defaultdict(dict)
        self._tasks: dict[Task, None] = {}
        self._edges: dict[Edge, None] = {}
        # Edge indexes by task (read them with .get or `in`: indexing inserts).
        self._in: defaultdict[Task, list[Edge]] = defaultdict(list)
        self._out: defaultdict[Task, list[Edge]] = defaultdict(list)
        self._explicit_slugs: dict[str, Task] = {}
        self._reference: dict[Task, None] | None = None
        # Tasks never chosen as default reference tasks (resource cleanups): a terminal one
        # is replaced by its upstream tasks.
        self._not_reference: dict[Task, None] = {}
        self._version = 0
        self._compiled: tuple[int, CompiledFlow] | None = None
        self._slugs: tuple[int, dict[Task, str]] | None = None
        frame = _build.current()
        for t in tasks or ():
            self._add_task(t, frame)
        for e in edges or ():
            self.add_edge(e.upstream_task, e.downstream_task, e.key, e.mapped, e.flattened)
        if reference_tasks is not None:
            self.set_reference_tasks(reference_tasks)

    # ------------------------------------------------------------- the context

    def __enter__(self) -> Flow:
        frame = _build.current().derive(
            flow=self, case=None, resource=None, in_apply_map=False, tracker={}
        )
        _build.push(frame)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        frame = _build.current()
        if frame.flow is not self:
            raise RuntimeError(f"flow {self.name!r}: `with` blocks exited out of order")
        _build.pop(frame)
        unused = frame.tracker
        if exc_type is None and unused:
            names = ", ".join(repr(t) for t in unused)
            warnings.warn(
                UnusedTaskWarning(
                    f"flow {self.name!r}: tasks were created inside the `with Flow(...)` "
                    f"block but never added to the flow: {names}. Call them, pass them to "
                    "another task, or add them with flow.add_task()."
                ),
                stacklevel=2,
            )

    # ------------------------------------------------------------------ tasks

    @property
    def tasks(self) -> OrderedSetView[Task]:
        """The tasks, in insertion order (a set-like view).

        Example:
            >>> from ferroflow import Flow, Task
            >>> flow = Flow("example", tasks=[Task(name="a")])
            >>> [t.name for t in flow.tasks]
            ['a']
        """
        return OrderedSetView(self._tasks)

    @property
    def edges(self) -> OrderedSetView[Edge]:
        """The edges, in insertion order (a set-like view).

        Example:
            >>> from ferroflow import Flow, Task
            >>> a, b = Task(name="a"), Task(name="b")
            >>> flow = Flow("example")
            >>> _ = flow.add_edge(a, b)
            >>> list(flow.edges)
            [<Edge: a to b>]
        """
        return OrderedSetView(self._edges)

    @property
    def slugs(self) -> dict[Task, str]:
        """Every task's slug in this flow: its own ``slug``, else ``"{name}-{n}"`` with ``n``
        counting tasks of that name in insertion order.

        Example:
            >>> from ferroflow import Flow, task
            >>> @task
            ... def inc(x):
            ...     return x + 1
            >>> with Flow("example") as flow:
            ...     a = inc(inc(1))
            >>> sorted(flow.slugs.values())
            ['inc-1', 'inc-2']
        """
        cached = self._slugs
        if cached is not None and cached[0] == self._version:
            return cached[1]
        taken = set(self._explicit_slugs)
        counts: dict[str, int] = {}
        slugs: dict[Task, str] = {}
        for t in self._tasks:
            slug = t.slug
            if slug is None:
                name = t.name
                n = counts.get(name, 0) + 1
                slug = f"{name}-{n}"
                while slug in taken:
                    n += 1
                    slug = f"{name}-{n}"
                counts[name] = n
                taken.add(slug)
            slugs[t] = slug
        self._slugs = (self._version, slugs)
        return slugs

    def add_task(self, task: Task) -> Task:
        """Add a task (no-op if present); return it.

        Raises:
            TypeError: ``task`` is not a Task.
            EdgeError: a different Parameter with the same name is in the flow.
            GraphError: a different task with the same explicit slug is in the flow.

        Example:
            >>> from ferroflow import Flow, Task
            >>> flow = Flow("example")
            >>> t = flow.add_task(Task(name="t"))
            >>> t in flow.tasks
            True
        """
        self._add_task(task, _build.current())
        return task

    def _add_task(self, task: Task, frame: _build.Frame) -> None:
        if task in self._tasks:
            return
        if not isinstance(task, Task):
            raise TypeError(f"flow {self.name!r}: can only add Tasks, got {task!r}")
        slug = task.slug
        if slug is not None:
            other = self._explicit_slugs.get(slug)
            if other is not None:
                if isinstance(task, Parameter) and isinstance(other, Parameter):
                    raise EdgeError(
                        f"flow {self.name!r} already has a different Parameter named "
                        f"{slug!r}; parameter names must be unique within a flow"
                    )
                raise GraphError(
                    f"flow {self.name!r} already has a task with slug {slug!r} ({other!r}); "
                    "slugs must be unique within a flow (a task with an explicit slug can be "
                    "called only once per flow)"
                )
            self._explicit_slugs[slug] = task
        self._tasks[task] = None
        self._version += 1
        if frame.case is not None or frame.resource is not None:
            if not isinstance(task, Parameter):
                if frame.case is not None:
                    frame.case._add_task(task, self)
                if frame.resource is not None:
                    frame.resource._add_task(task, self)
        tracker = frame.tracker
        if tracker:
            tracker.pop(task, None)

    def get_tasks(
        self,
        name: str | None = None,
        slug: str | None = None,
        tags: Iterable[str] | None = None,
        task_type: type | None = None,
    ) -> list[Task]:
        """The tasks matching every given filter, in insertion order.

        Args:
            name: the task name.
            slug: the task's slug in this flow (see :attr:`slugs`).
            tags: tags the task must all have.
            task_type: a class the task must be an instance of.

        Example:
            >>> from ferroflow import Flow, Task
            >>> flow = Flow("example", tasks=[Task(name="a", tags=["x"]), Task(name="b")])
            >>> [t.name for t in flow.get_tasks(tags=["x"])]
            ['a']
        """
        if isinstance(tags, str):
            tags = [tags]
        wanted = frozenset(tags or ())
        slugs = self.slugs if slug is not None else None
        out = []
        for t in self._tasks:
            if name is not None and t.name != name:
                continue
            if slugs is not None and slugs[t] != slug:
                continue
            if wanted and not wanted <= t.tags:
                continue
            if task_type is not None and not isinstance(t, task_type):
                continue
            out.append(t)
        return out

    def parameters(self) -> OrderedSetView[Parameter]:
        """The Parameters of the flow, in insertion order (a set-like view).

        Example:
            >>> from ferroflow import Flow, Parameter
            >>> flow = Flow("example", tasks=[Parameter("x")])
            >>> [p.name for p in flow.parameters()]
            ['x']
        """
        return _ordered(t for t in self._explicit_slugs.values() if isinstance(t, Parameter))

    # ------------------------------------------------------------------ edges

    def add_edge(
        self,
        upstream_task: Task | EdgeAnnotation[Any],
        downstream_task: Task,
        key: str | None = None,
        mapped: bool = False,
        flattened: bool = False,
        validate: bool | None = None,
    ) -> Edge:
        """Add an edge (and both tasks); return it.

        Args:
            upstream_task: the task that runs first (an annotation sets the flags).
            downstream_task: the task that waits.
            key: the argument of ``downstream_task.run`` that gets the upstream result, or
                ``None`` for an ordering-only edge.
            mapped: map ``downstream_task`` over the upstream result.
            flattened: un-nest one level of the upstream result first.
            validate: accepted for Prefect compatibility; checks always run.

        Raises:
            EdgeError: a self-edge, an edge into a Parameter, or a ``key`` already bound
                for ``downstream_task``.
            BindError: ``key`` is not an argument of ``downstream_task.run``, or a side is
                not a Task.

        Example:
            >>> from ferroflow import Flow, task
            >>> @task
            ... def inc(x):
            ...     return x + 1
            >>> flow = Flow("example")
            >>> a, b = inc.copy(), inc.copy()
            >>> flow.add_edge(a, b, key="x")
            <Edge (key=x): inc to inc>
        """
        del validate
        edge = Edge(upstream_task, downstream_task, key, mapped, flattened)
        up, down = edge[0], edge[1]
        if not isinstance(up, Task) or not isinstance(down, Task):
            bad = up if not isinstance(up, Task) else down
            raise BindError(f"flow {self.name!r}: edges join Tasks, got {bad!r}")
        if key is not None:
            self._check_key(down, key)
            if key in self._bound_keys(down):
                raise _already_bound(self, down, key)
        self._check_edge(up, down)
        frame = _build.current()
        self._add_task(up, frame)
        self._add_task(down, frame)
        return self._link(edge)

    def _check_key(self, task: Task, key: str) -> None:
        sig = task._signature()
        if not sig.var_kw and key not in sig.names:
            raise BindError(
                f"task {task.name!r} got an unexpected argument {key!r} "
                f"(run accepts: {', '.join(sig.positional + sig.kwonly) or 'no arguments'})"
            )

    def _bound_keys(self, task: Task) -> set[str]:
        """Argument names of ``task`` already bound in this flow (edges and constants)."""
        keys = {e[2] for e in self._in.get(task, ()) if e[2] is not None}
        keys.update(self.constants.get(task, ()))
        return keys

    def _check_edge(self, up: Task, down: Task) -> None:
        if up is down:
            raise EdgeError(f"task {up.name!r} cannot depend on itself")
        if isinstance(down, Parameter):
            raise EdgeError(
                f"Parameter {down.name!r} cannot have upstream tasks (an edge from "
                f"{up.name!r}); parameters are root tasks whose values come from flow.run"
            )

    def _link(self, edge: Edge) -> Edge:
        """Record a checked edge whose tasks are in the flow (an ordering duplicate is a
        no-op)."""
        if edge[2] is None and edge in self._edges:
            return edge
        self._edges[edge] = None
        self._in[edge[1]].append(edge)
        self._out[edge[0]].append(edge)
        self._version += 1
        return edge

    def set_dependencies(
        self,
        task: Task,
        upstream_tasks: Iterable[Any] | None = None,
        downstream_tasks: Iterable[Any] | None = None,
        keyword_tasks: Mapping[str, Any] | None = None,
        mapped: bool = False,
        validate: bool | None = None,
    ) -> None:
        """Add ``task`` with its dependencies.

        Args:
            task: the task.
            upstream_tasks: tasks ``task`` waits for (ordering edges; mapped when ``mapped``
                unless wrapped in ``unmapped``).
            downstream_tasks: tasks that wait for ``task`` (ordering edges).
            keyword_tasks: ``{argument: value}``: tasks become data edges, plain values
                constants, collections holding tasks collection tasks.
            mapped: map over the keyword and upstream tasks.
            validate: accepted for Prefect compatibility; checks always run.

        Raises:
            BindError: an argument ``task.run`` does not accept.
            EdgeError: an argument already bound, a self-edge or an edge into a Parameter.

        Example:
            >>> from ferroflow import Flow, task
            >>> @task
            ... def add(x, y):
            ...     return x + y
            >>> flow = Flow("example")
            >>> one, total = add.copy(), add.copy()
            >>> flow.set_dependencies(one, keyword_tasks={"x": 1, "y": 2})
            >>> flow.set_dependencies(total, keyword_tasks={"x": one, "y": 3})
            >>> [t.name for t in flow.sorted_tasks()], flow.constants[total]
            (['add', 'add'], {'y': 3})
        """
        del validate
        if not isinstance(task, Task):
            raise BindError(f"flow {self.name!r}: set_dependencies needs a Task, got {task!r}")
        frame = _build.current()
        items = list((keyword_tasks or {}).items())
        for key, _ in items:
            self._check_key(task, key)
        self._bind_values(task, items, bool(mapped), upstream_tasks, frame, True)
        for t in downstream_tasks or ():
            d = self._as_task(t, frame)
            if d is None:
                raise BindError(f"downstream_tasks of {task.name!r} must be tasks, got {t!r}")
            self._check_edge(task, d)
            self._add_task(d, frame)
            self._link(Edge(task, d))

    def chain(self, *tasks: Task, validate: bool | None = None) -> list[Edge]:
        """Add ordering edges ``tasks[0] -> tasks[1] -> ...``; return them.

        Example:
            >>> from ferroflow import Flow, Task
            >>> a, b, c = Task(name="a"), Task(name="b"), Task(name="c")
            >>> flow = Flow("example")
            >>> flow.chain(a, b, c)
            [<Edge: a to b>, <Edge: b to c>]
        """
        del validate
        for t in tasks:
            if not isinstance(t, Task):
                raise BindError(f"flow {self.name!r}: chain() takes Tasks, got {t!r}")
        for a, b in pairwise(tasks):
            self._check_edge(a, b)
        frame = _build.current()
        for t in tasks:
            self._add_task(t, frame)
        return [self._link(Edge(a, b)) for a, b in pairwise(tasks)]

    # ---------------------------------------------------------------- binding

    def _bind_call(
        self,
        task: Task,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        mapped: bool,
        upstream_tasks: Iterable[Any] | None,
        frame: _build.Frame,
        fresh: bool = True,
    ) -> None:
        """Bind a call's arguments to ``task`` (``fresh``: a new copy, not yet bound)."""
        sig = task.__dict__.get("_ff_sig") or task._signature()
        items: Iterable[tuple[str, Any]]
        if args:
            pos = sig.positional
            if len(args) > len(pos):
                raise BindError(
                    f"task {task.name!r} takes {len(pos)} positional argument"
                    f"{'' if len(pos) == 1 else 's'} but {len(args)} were given"
                )
            if kwargs:
                taken = pos[: len(args)]
                for key in kwargs:
                    if key in taken:
                        raise BindError(
                            f"task {task.name!r} got multiple values for argument {key!r}"
                        )
                items = [*zip(pos, args, strict=False), *kwargs.items()]
            else:
                items = zip(pos, args, strict=False)
        else:
            items = kwargs.items()
        if kwargs and not sig.var_kw and not sig.names.issuperset(kwargs):
            bad = next(k for k in kwargs if k not in sig.names)
            accepted = ", ".join(sig.positional + sig.kwonly) or "no arguments"
            raise BindError(
                f"task {task.name!r} got an unexpected keyword argument {bad!r} "
                f"(run accepts: {accepted})"
            )
        self._bind_values(task, items, bool(mapped), upstream_tasks, frame, not fresh)

    def _bind_values(
        self,
        task: Task,
        items: Iterable[tuple[str, Any]],
        mapped: bool,
        upstream_tasks: Iterable[Any] | None,
        frame: _build.Frame,
        check: bool,
    ) -> None:
        """Bind ``(argument, value)`` pairs to ``task``: constants, data edges, collection
        tasks; then ordering edges to ``upstream_tasks``. Upstream tasks are added to the
        flow before ``task``. With ``check``, arguments already bound are an error (raised
        before anything changes)."""
        tasks = self._tasks
        if check:
            items = list(items)
            bound = self._bound_keys(task)
            for key, _ in items:
                if key in bound:
                    raise _already_bound(self, task, key)
        consts: dict[str, Any] | None = None
        links: list[Edge] | None = None  # built before `task` is added: upstream first
        new_edge = tuple.__new__
        for key, value in items:
            if not mapped and type(value) in _PLAIN:
                if consts is None:
                    consts = {key: value}
                else:
                    consts[key] = value
                continue
            if isinstance(value, Task):
                if value not in tasks:
                    self._add_task(value, frame)
                if links is None:
                    links = [new_edge(Edge, (value, task, key, mapped, False))]
                else:
                    links.append(new_edge(Edge, (value, task, key, mapped, False)))
                continue
            m, f = mapped, False
            if isinstance(value, EdgeAnnotation):
                value, flags = _unwrap(value)
                m = flags.get("mapped", m)
                f = flags.get("flattened", False)
            up = self._as_task(value, frame)
            if up is None:  # a constant
                if not m and not f:
                    if consts is None:
                        consts = {key: value}
                    else:
                        consts[key] = value
                    continue
                if m and not _is_mappable(value):
                    raise MappingError(
                        f"task {task.name!r}: cannot map over argument {key!r}: "
                        f"{type(value).__name__} {value!r:.60} is not a sized sequence"
                    )
                up = Constant(value)
                up._ff_auto = True  # type: ignore[attr-defined]
            self._add_task(up, frame)
            if links is None:
                links = []
            links.append(new_edge(Edge, (up, task, key, m, f)))
        if upstream_tasks:
            for value in upstream_tasks:
                m = mapped
                if isinstance(value, EdgeAnnotation):
                    value, flags = _unwrap(value)
                    m = flags.get("mapped", m)
                up = self._as_task(value, frame)
                if up is None:
                    raise BindError(
                        f"task {task.name!r}: upstream_tasks must hold tasks, got {value!r}"
                    )
                self._add_task(up, frame)
                if links is None:
                    links = []
                links.append(new_edge(Edge, (up, task, None, m, False)))
        if links is not None and (check or isinstance(task, Parameter)):
            for edge in links:
                self._check_edge(edge[0], task)
        if task not in tasks:
            if task.slug is None and frame.case is None and frame.resource is None:
                tasks[task] = None  # the common case of _add_task, inlined
                self._version += 1
                if frame.tracker:
                    frame.tracker.pop(task, None)
            else:
                self._add_task(task, frame)
        if links is not None:
            edges, ins, outs = self._edges, self._in[task], self._out
            for edge in links:
                if edge[2] is None and edge in edges:
                    continue
                edges[edge] = None
                ins.append(edge)
                outs[edge[0]].append(edge)
            self._version += 1
        if consts:
            existing = self.constants.get(task)
            if existing is None:
                self.constants[task] = consts
            else:
                existing.update(consts)
            self._version += 1

    def _as_task(self, value: Any, frame: _build.Frame) -> Task | None:
        """``value`` as a task in this flow: itself, or a collection task for a collection
        holding tasks; ``None`` for a constant."""
        if isinstance(value, Task):
            return value
        if not _contains_task(value):
            return None
        tp = type(value)
        coll: Task
        if tp is dict:
            coll = Dict()
            items: list[tuple[str, Any]] = []
            for i, (k, v) in enumerate(value.items()):
                items.append((f"key_{i}", k))
                items.append((f"value_{i}", v))
        else:
            coll = List() if tp is list else Tuple() if tp is tuple else Set()
            items = [(f"arg_{i}", v) for i, v in enumerate(value)]
        self._bind_values(coll, items, False, None, frame, False)
        return coll

    # ---------------------------------------------------------------- queries

    def edges_to(self, task: Task) -> OrderedSetView[Edge]:
        """The edges into ``task`` (set-like, in insertion order).

        Example:
            >>> from ferroflow import Flow, Task
            >>> a, b = Task(name="a"), Task(name="b")
            >>> flow = Flow("example")
            >>> _ = flow.add_edge(a, b)
            >>> flow.edges_to(b)
            {<Edge: a to b>}
        """
        return _ordered(self._in.get(task, ()))

    def edges_from(self, task: Task) -> OrderedSetView[Edge]:
        """The edges out of ``task`` (set-like, in insertion order)."""
        return _ordered(self._out.get(task, ()))

    def upstream_tasks(self, task: Task) -> OrderedSetView[Task]:
        """The tasks ``task`` depends on (set-like, in insertion order of the edges).

        Example:
            >>> from ferroflow import Flow, Task
            >>> a, b = Task(name="a"), Task(name="b")
            >>> flow = Flow("example")
            >>> flow.chain(a, b) and [t.name for t in flow.upstream_tasks(b)]
            ['a']
        """
        return _ordered(e.upstream_task for e in self._in.get(task, ()))

    def downstream_tasks(self, task: Task) -> OrderedSetView[Task]:
        """The tasks that depend on ``task`` (set-like, in insertion order of the edges)."""
        return _ordered(e.downstream_task for e in self._out.get(task, ()))

    def root_tasks(self) -> OrderedSetView[Task]:
        """The tasks with no upstream edge (set-like, in insertion order).

        Example:
            >>> from ferroflow import Flow, Task
            >>> a, b = Task(name="a"), Task(name="b")
            >>> flow = Flow("example")
            >>> flow.chain(a, b) and [t.name for t in flow.root_tasks()]
            ['a']
        """
        inc = self._in
        return _ordered(t for t in self._tasks if t not in inc)

    def terminal_tasks(self) -> OrderedSetView[Task]:
        """The tasks with no downstream edge (set-like, in insertion order)."""
        out = self._out
        return _ordered(t for t in self._tasks if t not in out)

    def reference_tasks(self) -> OrderedSetView[Task]:
        """The tasks whose states decide the flow's state [the terminal tasks].

        Example:
            >>> from ferroflow import Flow, Task
            >>> a, b = Task(name="a"), Task(name="b")
            >>> flow = Flow("example")
            >>> _ = flow.chain(a, b)
            >>> [t.name for t in flow.reference_tasks()]
            ['b']
            >>> flow.set_reference_tasks([a])
            >>> [t.name for t in flow.reference_tasks()]
            ['a']
        """
        if self._reference is None:
            return _ordered(self._default_reference())
        return OrderedSetView(self._reference)

    def _default_reference(self) -> list[Task]:
        out = self._out
        terminal = [t for t in self._tasks if t not in out]
        skip = self._not_reference
        if not skip:
            return terminal
        chosen: dict[Task, None] = {}
        for t in terminal:
            if t in skip:
                for e in self._in.get(t, ()):
                    if e.upstream_task not in skip:
                        chosen[e.upstream_task] = None
            else:
                chosen[t] = None
        return list(chosen)

    def set_reference_tasks(self, tasks: Iterable[Task]) -> None:
        """Set the reference tasks (an empty iterable restores the default).

        Raises:
            GraphError: a task that is not in the flow.
        """
        chosen = dict.fromkeys(tasks)
        for t in chosen:
            if t not in self._tasks:
                raise GraphError(
                    f"flow {self.name!r}: reference task {t!r} is not in the flow (add it first)"
                )
        self._reference = chosen or None
        self._version += 1

    def sorted_tasks(self, root_tasks: Iterable[Task] | None = None) -> tuple[Task, ...]:
        """The tasks in a topological order; ties break by insertion order.

        Args:
            root_tasks: only these tasks and everything downstream of them.

        Raises:
            CycleError: the graph has a cycle.

        Example:
            >>> from ferroflow import Flow, Task
            >>> a, b, c = Task(name="a"), Task(name="b"), Task(name="c")
            >>> flow = Flow("example", tasks=[c])
            >>> _ = flow.chain(a, b)
            >>> [t.name for t in flow.sorted_tasks()]
            ['c', 'a', 'b']
        """
        tasks = list(self._tasks)
        index = {t: i for i, t in enumerate(tasks)}
        keep: set[int] | None = None
        if root_tasks is not None:
            keep = set()
            stack = [index[t] for t in root_tasks if t in index]
            while stack:
                i = stack.pop()
                if i in keep:
                    continue
                keep.add(i)
                stack.extend(index[e.downstream_task] for e in self._out.get(tasks[i], ()))
        indeg = [0] * len(tasks)
        succ: list[list[int]] = [[] for _ in tasks]
        for e in self._edges:
            u, d = index[e.upstream_task], index[e.downstream_task]
            if keep is not None and (u not in keep or d not in keep):
                continue
            indeg[d] += 1
            succ[u].append(d)
        ready = [i for i, n in enumerate(indeg) if n == 0 and (keep is None or i in keep)]
        heapq.heapify(ready)
        order: list[Task] = []
        while ready:
            i = heapq.heappop(ready)
            order.append(tasks[i])
            for d in succ[i]:
                indeg[d] -= 1
                if indeg[d] == 0:
                    heapq.heappush(ready, d)
        expected = len(tasks) if keep is None else len(keep)
        if len(order) != expected:
            self.validate()  # raises CycleError naming the tasks
        return tuple(order)

    # -------------------------------------------------------------- validation

    def validate(self) -> None:
        """Check the whole graph before it runs.

        Raises:
            CycleError: the graph has a cycle; the message names the tasks on it in order.
            BindError: a required argument of a task is never bound (names both).
            GraphError: a reference task is not in the flow.

        Example:
            >>> from ferroflow import Flow, task
            >>> @task
            ... def add(x, y):
            ...     return x + y
            >>> with Flow("example") as flow:
            ...     add(1)
            <FunctionTask: add>
            >>> flow.validate()  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ferroflow.exceptions.BindError: task 'add' (slug 'add-1'): required argument 'y' ...
        """
        self._compile()

    def _compile(self) -> CompiledFlow:
        """Validate the flow and return it in the engine's integer form (cached until the
        flow changes).

        Raises:
            CycleError, BindError, GraphError: as :meth:`validate`.
        """
        cached = self._compiled
        if cached is not None and cached[0] == self._version:
            return cached[1]
        tasks = list(self._tasks)
        index = {t: i for i, t in enumerate(tasks)}
        edges = list(self._edges)
        edge_ids = [(index[u], index[d], k, m, f) for u, d, k, m, f in edges]
        if edge_ids:
            from ferroflow._native import find_cycle

            cycle = find_cycle(len(tasks), [(u, d) for u, d, _, _, _ in edge_ids])
            if cycle:
                if len(cycle) > 1 and cycle[0] == cycle[-1]:
                    cycle = cycle[:-1]  # the native path repeats its first task at the end
                on_cycle = [tasks[i] for i in cycle]
                names = [t.name for t in on_cycle]
                if len(set(names)) != len(names):
                    slugs = self.slugs
                    names = [slugs[t] for t in on_cycle]
                raise CycleError(names)

        empty: dict[str, Any] = {}
        get_consts = self.constants.get
        inc = self._in
        constants: list[dict[str, Any]] = []
        append = constants.append
        for t in tasks:
            consts = get_consts(t, empty)
            append(consts)
            sig = t.__dict__.get("_ff_sig") or t._signature()
            for name in sig.required:
                if name in consts:
                    continue
                for e in inc.get(t, ()):
                    if e[2] == name:
                        break
                else:
                    raise BindError(
                        f"task {t.name!r} (slug {self.slugs[t]!r}): required argument "
                        f"{name!r} is never bound"
                    )
        if self._reference is None and not self._not_reference:
            out = self._out
            reference = [i for i, t in enumerate(tasks) if t not in out]
        elif self._reference is None:
            reference = [index[t] for t in self._default_reference()]
        else:
            reference = []
            for t in self._reference:
                i = index.get(t)
                if i is None:
                    raise GraphError(f"flow {self.name!r}: reference task {t!r} is not in the flow")
                reference.append(i)
        compiled = CompiledFlow(tasks, edges, edge_ids, constants, reference)
        self._compiled = (self._version, compiled)
        return compiled

    def _resolve_parameters(self, values: Mapping[str, Any] | None) -> dict[str, Any]:
        """Check parameter values and fill in defaults, before anything runs.

        Args:
            values: ``{parameter name: value}`` given to ``flow.run``.

        Returns:
            ``{name: value}`` for every Parameter of the flow (validated and coerced when
            the parameter declares a type; the default when not given).

        Raises:
            ParameterError: an unknown name, a missing required parameter, or a value
                that fails its parameter's type.
        """
        values = dict(values or {})
        params = {p.name: p for p in self.parameters()}
        unknown = [k for k in values if k not in params]
        if unknown:
            known = ", ".join(params) or "none"
            raise ParameterError(
                f"flow {self.name!r} has no parameter {unknown[0]!r} (parameters: {known})",
                parameter=unknown[0],
            )
        out: dict[str, Any] = {}
        for name, p in params.items():
            if name in values:
                out[name] = p.validate_value(values[name])
            elif p.required:
                raise ParameterError(
                    f"flow {self.name!r}: missing required parameter {name!r}", parameter=name
                )
            else:
                out[name] = p.default
        return out

    # ---------------------------------------------------------------- misc

    def copy(self) -> Flow:
        """A new flow with the same tasks, edges, constants and options (tasks are shared,
        not copied).

        Example:
            >>> from ferroflow import Flow, Task
            >>> flow = Flow("example", tasks=[Task(name="a")])
            >>> twin = flow.copy()
            >>> twin.add_task(Task(name="b")) and (len(flow.tasks), len(twin.tasks))
            (1, 2)
        """
        new = Flow(
            self.name,
            state_handlers=self.state_handlers,
            on_failure=self.on_failure,
            terminal_state_handler=self.terminal_state_handler,
            result=self.result,
            executor=self.executor,
            schedule=self.schedule,
        )
        new._tasks = dict(self._tasks)
        new._edges = dict(self._edges)
        new._in = defaultdict(list, {t: list(v) for t, v in self._in.items()})
        new._out = defaultdict(list, {t: list(v) for t, v in self._out.items()})
        new._explicit_slugs = dict(self._explicit_slugs)
        new.constants = defaultdict(dict, {t: dict(c) for t, c in self.constants.items()})
        new._reference = None if self._reference is None else dict(self._reference)
        new._not_reference = dict(self._not_reference)
        return new

    def visualize(self, flow_state: Any = None, filename: str | None = None) -> str:
        """Draw the graph as Graphviz DOT, coloured by state when given a finished run.

        Args:
            flow_state: the State ``flow.run()`` returned (tasks are coloured by their
                final states), or None.
            filename: also write it there: ``.dot`` as text, ``.svg``/``.png``/``.pdf``
                through Graphviz's ``dot`` (which must be installed).

        Returns:
            The DOT source.

        Example:
            >>> from ferroflow import Flow, task
            >>> @task
            ... def one() -> int:
            ...     return 1
            >>> with Flow("tiny") as flow:
            ...     x = one()
            >>> "one" in flow.visualize()
            True
        """
        from ferroflow.visualize import render, to_dot

        states = flow_state.result if flow_state is not None else None
        dot = to_dot(self, states)
        if filename is not None:
            render(dot, filename)
        return dot

    def run(
        self,
        parameters: Mapping[str, Any] | None = None,
        executor: Any = None,
        run_on_schedule: bool = True,
        **kw: Any,
    ) -> State:
        """Run the flow to the end and return its final state (see the engine).

        A flow with a ``schedule`` runs at each of its times until the schedule ends or
        Ctrl-C, and returns the last run's state (see ``ferroflow.schedules._local``).

        Args:
            parameters: ``{name: value}`` for the flow's Parameters.
            executor: where tasks run [``self.executor``, else local].
            run_on_schedule: with a ``schedule``, wait for and run each scheduled time
                (each time's ``parameter_defaults`` under the given parameters) until the
                schedule ends, and return the last run's state; False runs once now.
            **kw: the run's options ``record``, ``resume``, ``progress``,
                ``release_results``, ``on_start`` and ``wait_for_approval`` (see
                ``engine.run_flow``), and more parameter values by name.

        A Parameter whose name is also one of these options (``executor`` too) takes
        its value only from ``parameters={...}``: a keyword with that name is then the
        option. Such a keyword without the parameter in ``parameters`` is ambiguous and
        raises ``OptionCollisionError`` (a ``ParameterError``) before anything runs.

        Raises:
            KeyboardInterrupt: Ctrl-C, after the run was recorded ``Cancelled``.

        Example:
            >>> from ferroflow import Flow, Parameter, task
            >>> @task
            ... def echo(x):
            ...     return x
            >>> with Flow("example") as flow:
            ...     e = echo(Parameter("record"))
            >>> flow.run(parameters={"record": "on"}, record=False).result[e].result
            'on'
            >>> flow.run(record=False)  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ferroflow.exceptions.OptionCollisionError: flow 'example' has a parameter named ...
        """
        from ferroflow.engine import run_flow

        given = None if parameters is None else dict(parameters)
        options = [k for k in RUN_OPTIONS if k in kw]
        if executor is not None:
            options.append("executor")
        if options:
            names = {p.name for p in self.parameters()}
            for option in options:
                if option in names and (given is None or option not in given):
                    from ferroflow.exceptions import OptionCollisionError

                    raise OptionCollisionError(
                        f"flow '{self.name}' has a parameter named '{option}', which is also "
                        f"an option of flow.run: pass the parameter as "
                        f"parameters={{'{option}': ...}} (a '{option}=' keyword then sets "
                        "the option)",
                        parameter=option,
                    )
        if run_on_schedule and self.schedule is not None:
            return self._run_on_schedule(given, executor, kw)
        return run_flow(self, parameters=given, executor=executor, **kw)

    def _run_on_schedule(
        self, given: dict[str, Any] | None, executor: Any, kw: dict[str, Any]
    ) -> State:
        from ferroflow.engine import run_flow
        from ferroflow.schedules._local import run_on_schedule

        # The run options go to every run; every other keyword is a parameter value.
        options = {k: v for k, v in kw.items() if k in RUN_OPTIONS}
        explicit = {**(given or {}), **{k: v for k, v in kw.items() if k not in RUN_OPTIONS}}

        def check(params: dict[str, Any]) -> None:
            self.validate()
            self._resolve_parameters(params)

        return run_on_schedule(
            self.schedule,
            lambda params: run_flow(self, parameters=params, executor=executor, **options),
            explicit,
            check=check,
            flow_name=self.name,
        )

    def register(
        self,
        project_name: str,
        labels: Iterable[str] | None = None,
        idempotency_key: str | None = None,
        set_schedule_active: bool = True,
    ) -> str:
        """Register the flow with the server (``$FERROFLOW_API_URL``) in a project; the
        id of its version (the same structure again: the same version). A flow with a
        ``schedule`` sends it along, and the server's scheduler creates its runs ahead of
        time (``set_schedule_active=False`` registers it off). See
        :meth:`ferroflow.client.Client.register`."""
        from ferroflow.client import Client

        labels = list(labels) if labels is not None else None
        got = Client().register(self, project_name, labels, idempotency_key, set_schedule_active)
        return str(got["id"])

    def __repr__(self) -> str:
        return f"<Flow: {self.name!r}, {len(self._tasks)} tasks>"


#: The keyword options of ``Flow.run`` besides ``parameters`` and ``executor``.
RUN_OPTIONS = ("record", "resume", "progress", "release_results", "on_start", "wait_for_approval")


def _already_bound(flow: Flow, task: Task, key: str) -> EdgeError:
    return EdgeError(
        f"argument {key!r} of task {task.name!r} is already bound in flow {flow.name!r}"
    )
