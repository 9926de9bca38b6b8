"""Tasks that ferroflow creates for you while a flow is built.

* :class:`Constant` holds a plain value that must be an edge (a mapped constant such as
  ``t.map([1, 2, 3])``, or a constant argument of ``apply_map``).
* :class:`List`, :class:`Tuple`, :class:`Set` and :class:`Dict` rebuild a collection that
  holds tasks: ``t([a, b, 3])`` binds a ``List`` task whose inputs are keyed ``arg_0``,
  ``arg_1``, ... (constants among them are ordinary constants). ``Dict`` takes ``key_i`` /
  ``value_i`` pairs, so keys may be tasks too.
* :class:`GetItem` is ``t[key]``; the operator tasks (:class:`Add`, :class:`GreaterThan`,
  ...) are ``t + 1``, ``t > 0``, ... and ``t.is_equal(x)``, ``t.not_()``, ``t.or_(x)``.

Example:
    >>> from ferroflow import Flow, task
    >>> @task
    ... def total(xs):
    ...     return sum(xs)
    >>> @task
    ... def one():
    ...     return 1
    >>> with Flow("example") as flow:
    ...     t = total([one(), 2, one()])
    >>> lst = flow.upstream_tasks(t)
    >>> [type(x).__name__ for x in lst], flow.constants[next(iter(lst))]
    (['List'], {'arg_1': 2})
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, ClassVar

from ferroflow.task import Task

__all__ = [
    "Add",
    "And",
    "Constant",
    "Dict",
    "Div",
    "Equal",
    "FloorDiv",
    "GetItem",
    "GreaterThan",
    "GreaterThanOrEqual",
    "LessThan",
    "LessThanOrEqual",
    "List",
    "Mod",
    "Mul",
    "Not",
    "NotEqual",
    "Or",
    "Pow",
    "Set",
    "Sub",
    "Tuple",
    "Xor",
]


class Constant(Task):
    """A task that returns a fixed value.

    Args:
        value: the value ``run`` returns.
        name: [``"Constant[<type name>]"``].
        **kwargs: any :class:`~ferroflow.Task` option.

    Example:
        >>> from ferroflow.tasks.core import Constant
        >>> c = Constant([1, 2, 3])
        >>> c.name, c.run()
        ('Constant[list]', [1, 2, 3])
    """

    value: Any

    def __init__(self, value: Any, name: str | None = None, **kwargs: Any) -> None:
        self.value = value
        super().__init__(name=name or f"Constant[{type(value).__name__}]", **kwargs)

    def run(self) -> Any:
        """Return the value."""
        return self.value


class List(Task):
    """Rebuilds a list from inputs keyed ``arg_0``, ``arg_1``, ... (in index order).

    Example:
        >>> from ferroflow.tasks.core import List
        >>> List().run(arg_1="b", arg_0="a")
        ['a', 'b']
    """

    def run(self, **kwargs: Any) -> list[Any]:
        """Return ``[arg_0, arg_1, ...]``."""
        return [kwargs[f"arg_{i}"] for i in range(len(kwargs))]


class Tuple(Task):
    """Rebuilds a tuple from inputs keyed ``arg_0``, ``arg_1``, ....

    Example:
        >>> from ferroflow.tasks.core import Tuple
        >>> Tuple().run(arg_0=1, arg_1=2)
        (1, 2)
    """

    def run(self, **kwargs: Any) -> tuple[Any, ...]:
        """Return ``(arg_0, arg_1, ...)``."""
        return tuple(kwargs[f"arg_{i}"] for i in range(len(kwargs)))


class Set(Task):
    """Rebuilds a set from inputs keyed ``arg_0``, ``arg_1``, ....

    Example:
        >>> from ferroflow.tasks.core import Set
        >>> Set().run(arg_0=1, arg_1=1)
        {1}
    """

    def run(self, **kwargs: Any) -> set[Any]:
        """Return ``{arg_0, arg_1, ...}``."""
        return {kwargs[f"arg_{i}"] for i in range(len(kwargs))}


class Dict(Task):
    """Rebuilds a dict from inputs keyed ``key_i`` / ``value_i`` (in index order).

    Example:
        >>> from ferroflow.tasks.core import Dict
        >>> Dict().run(key_0="a", value_0=1, key_1="b", value_1=2)
        {'a': 1, 'b': 2}
    """

    def run(self, **kwargs: Any) -> dict[Any, Any]:
        """Return ``{key_0: value_0, key_1: value_1, ...}``."""
        return {kwargs[f"key_{i}"]: kwargs[f"value_{i}"] for i in range(len(kwargs) // 2)}


class GetItem(Task):
    """``task_result[key]``; made by ``t[key]``.

    Example:
        >>> from ferroflow.tasks.core import GetItem
        >>> GetItem().run({"a": 1}, "a")
        1
    """

    def run(self, task_result: Any, key: Any) -> Any:
        """Return ``task_result[key]``."""
        return task_result[key]


class _BinaryOperator(Task):
    _op: ClassVar[Callable[[Any, Any], Any]]

    def run(self, x: Any, y: Any) -> Any:
        """Return ``x <op> y``."""
        return type(self)._op(x, y)


def _binary(name: str, op: Callable[[Any, Any], Any], symbol: str) -> type[_BinaryOperator]:
    doc = f"""``x {symbol} y``.

    Example:
        >>> from ferroflow.tasks.core import {name}
        >>> {name}().run(6, 3)
        {op(6, 3)!r}
    """
    return type(
        name, (_BinaryOperator,), {"_op": staticmethod(op), "__doc__": doc, "__module__": __name__}
    )


Add = _binary("Add", operator.add, "+")
Sub = _binary("Sub", operator.sub, "-")
Mul = _binary("Mul", operator.mul, "*")
Div = _binary("Div", operator.truediv, "/")
FloorDiv = _binary("FloorDiv", operator.floordiv, "//")
Mod = _binary("Mod", operator.mod, "%")
Pow = _binary("Pow", operator.pow, "**")
And = _binary("And", lambda x, y: x and y, "and")
Or = _binary("Or", lambda x, y: x or y, "or")
Xor = _binary("Xor", operator.xor, "^")
Equal = _binary("Equal", operator.eq, "==")
NotEqual = _binary("NotEqual", operator.ne, "!=")
GreaterThan = _binary("GreaterThan", operator.gt, ">")
GreaterThanOrEqual = _binary("GreaterThanOrEqual", operator.ge, ">=")
LessThan = _binary("LessThan", operator.lt, "<")
LessThanOrEqual = _binary("LessThanOrEqual", operator.le, "<=")


class Not(Task):
    """``not x``; made by ``t.not_()``.

    Example:
        >>> from ferroflow.tasks.core import Not
        >>> Not().run(0)
        True
    """

    def run(self, x: Any) -> bool:
        """Return ``not x``."""
        return not x
