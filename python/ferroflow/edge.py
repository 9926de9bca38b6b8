"""Edges between tasks, and the annotations that mark how an argument is bound.

An :class:`Edge` says that ``downstream_task`` waits for ``upstream_task``; with a ``key`` it
also receives the upstream result as the argument of that name (a *data* edge), without
one it only waits (an *ordering* edge). ``mapped`` edges fan out one child run per element
of the upstream result; ``flattened`` edges un-nest one level of a list of lists first.

The annotations :class:`unmapped`, :class:`mapped` and :class:`flatten` wrap an argument
of a task call to set those flags for that one argument.

Example:
    >>> from ferroflow import Flow, task, unmapped
    >>> @task
    ... def add(x, y):
    ...     return x + y
    >>> with Flow("example") as flow:
    ...     total = add.map([1, 2, 3], y=unmapped(10))
    >>> [(e.key, e.mapped) for e in flow.edges_to(total)]
    [('x', True)]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ferroflow.exceptions import EdgeError

if TYPE_CHECKING:
    from ferroflow.task import Task

__all__ = ["Edge", "EdgeAnnotation", "flatten", "mapped", "unmapped"]

_T = TypeVar("_T")


class EdgeAnnotation(Generic[_T]):
    """Base class of the argument annotations (:class:`unmapped`, :class:`mapped`,
    :class:`flatten`).

    Annotations nest; the innermost one wins for a flag both set, e.g.
    ``unmapped(flatten(x))`` is an unmapped, flattened edge.

    Args:
        value: the wrapped argument: a task, a collection or a constant.

    Example:
        >>> from ferroflow import flatten, unmapped
        >>> unmapped(flatten([1])).annotations()
        {'mapped': False, 'flattened': True}
    """

    __slots__ = ("value",)

    _mapped: bool | None = None
    _flattened: bool | None = None

    def __init__(self, value: _T) -> None:
        self.value = value

    def annotations(self) -> dict[str, bool]:
        """The flags this annotation (and the ones nested in it) set.

        Returns:
            A dict with ``"mapped"`` and/or ``"flattened"``.
        """
        return _unwrap(self)[1]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value!r})"


def _unwrap(x: Any) -> tuple[Any, dict[str, bool]]:
    """The value inside any annotations wrapped around ``x``, and the flags they set
    (``"mapped"`` and/or ``"flattened"``; the innermost annotation wins; empty for a bare
    value)."""
    flags: dict[str, bool] = {}
    while isinstance(x, EdgeAnnotation):
        if x._mapped is not None:
            flags["mapped"] = x._mapped
        if x._flattened is not None:
            flags["flattened"] = x._flattened
        x = x.value
    return x, flags


class unmapped(EdgeAnnotation[_T]):
    """Marks an argument of ``task.map(...)`` as *not* mapped: every child gets it whole.

    Args:
        value: a task, collection or constant.

    Example:
        >>> from ferroflow import Flow, task, unmapped
        >>> @task
        ... def scale(x, factor):
        ...     return x * factor
        >>> with Flow("example") as flow:
        ...     scaled = scale.map([1, 2, 3], factor=unmapped(10))
        >>> flow.constants[scaled]
        {'factor': 10}
    """

    __slots__ = ()
    _mapped = False


class mapped(EdgeAnnotation[_T]):
    """Marks one argument of a normal (non-``map``) call as mapped.

    Args:
        value: a task, collection or constant.

    Example:
        >>> from ferroflow import Flow, mapped, task
        >>> @task
        ... def add(x, y):
        ...     return x + y
        >>> with Flow("example") as flow:
        ...     total = add(mapped([1, 2, 3]), 10)  # three children: 11, 12, 13
        >>> [e.mapped for e in flow.edges_to(total)]
        [True]
    """

    __slots__ = ()
    _mapped = True


class flatten(EdgeAnnotation[_T]):
    """Marks an argument as flattened: a list of lists is un-nested one level first.

    In ``task.map(...)`` the flattened argument is mapped too (one child per inner element);
    in a normal call the task receives the flattened list.

    Args:
        value: a task (usually a mapped one), collection or constant.

    Example:
        >>> from ferroflow import Flow, flatten, task
        >>> @task
        ... def count_to(n):
        ...     return list(range(n))
        >>> @task
        ... def inc(x):
        ...     return x + 1
        >>> with Flow("example") as flow:
        ...     nested = count_to.map([1, 2, 3])
        ...     flat = inc.map(flatten(nested))  # six children
        >>> [(e.mapped, e.flattened) for e in flow.edges_to(flat)]
        [(True, True)]
    """

    __slots__ = ()
    _flattened = True


class Edge(tuple):  # type: ignore[type-arg]
    """A dependency of ``downstream_task`` on ``upstream_task``.

    An edge is an immutable named 5-tuple ``(upstream_task, downstream_task, key, mapped,
    flattened)``, so hashing and comparing edges runs at C speed.

    Args:
        upstream_task: the task that runs first (an annotation is unwrapped and its flags
            applied).
        downstream_task: the task that waits.
        key: the name of the argument of ``downstream_task`` that receives the upstream
            result, or ``None`` for an ordering-only edge. Must be a valid identifier.
        mapped: one downstream child per element of the upstream result.
        flattened: un-nest one level of the upstream result first.

    Raises:
        EdgeError: if ``key`` is not a string that is a valid identifier.

    Example:
        >>> from ferroflow import Task
        >>> from ferroflow.edge import Edge
        >>> a, b = Task(name="a"), Task(name="b")
        >>> Edge(a, b, key="x") == Edge(a, b, key="x")
        True
        >>> Edge(a, b, key="x")
        <Edge (key=x): a to b>
        >>> up, down, key, mapped, flattened = Edge(a, b, mapped=True)
        >>> mapped
        True
    """

    __slots__ = ()

    def __new__(
        cls,
        upstream_task: Task | EdgeAnnotation[Any],
        downstream_task: Task,
        key: str | None = None,
        mapped: bool = False,
        flattened: bool = False,
    ) -> Edge:
        if isinstance(upstream_task, EdgeAnnotation):
            upstream_task, flags = _unwrap(upstream_task)
            mapped = flags.get("mapped", mapped)
            flattened = flags.get("flattened", flattened)
        if key is not None and not (type(key) is str and key.isidentifier()):
            raise EdgeError(f"edge keys must be valid Python identifiers, got {key!r}")
        return tuple.__new__(
            cls, (upstream_task, downstream_task, key, bool(mapped), bool(flattened))
        )

    def __getnewargs__(self) -> tuple[Any, ...]:
        return tuple(self)

    @property
    def upstream_task(self) -> Task:
        """The task that runs first."""
        return self[0]  # type: ignore[no-any-return]

    @property
    def downstream_task(self) -> Task:
        """The task that waits."""
        return self[1]  # type: ignore[no-any-return]

    @property
    def key(self) -> str | None:
        """The argument name that receives the upstream result (``None``: ordering only)."""
        return self[2]  # type: ignore[no-any-return]

    @property
    def mapped(self) -> bool:
        """Whether the downstream task maps over the upstream result."""
        return self[3]  # type: ignore[no-any-return]

    @property
    def flattened(self) -> bool:
        """Whether the upstream result is un-nested one level first."""
        return self[4]  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        up, down, key, mapped, flattened = self
        flags = []
        if key is not None:
            flags.append(f"key={key}")
        if mapped:
            flags.append("mapped")
        if flattened:
            flags.append("flattened")
        extra = f" ({', '.join(flags)})" if flags else ""
        return f"<Edge{extra}: {up.name} to {down.name}>"
