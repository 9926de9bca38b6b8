"""The flow-building context: which flow, tags, ``case`` block and ``apply_map`` call are
active while a graph is built.

One :class:`~contextvars.ContextVar` holds an immutable-in-spirit :class:`Frame`; every
``with Flow(...)``, ``with case(...)``, ``with tags(...)`` and ``apply_map`` pushes a new
frame and pops it on exit. Being a context variable, the state is per thread (and per
asyncio task), so two threads can build two flows at once. Reading it costs one
``ContextVar.get()``, which keeps ``Task.__call__`` cheap.

This module is private: users reach it only through ``Flow``, ``case``, ``tags`` and
``apply_map``.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ferroflow.flow import Flow
    from ferroflow.task import Task
    from ferroflow.tasks.control_flow import case
    from ferroflow.tasks.resource_manager import ResourceContext

__all__ = ["ROOT", "Frame", "current", "pop", "pop_entered", "push"]


class Frame:
    """One level of the building context.

    Attributes:
        flow: the flow that tasks called now are added to, or ``None``.
        tags: tags given to tasks created or called now.
        case: the innermost active ``case`` block, or ``None``.
        resource: the innermost active resource-manager block, or ``None``.
        in_apply_map: ``True`` while the function given to ``apply_map`` runs.
        tracker: tasks created inside the innermost ``with Flow`` block and not yet used
            (an insertion-ordered set), or ``None`` outside any flow block.
        token: the token that restores the previous frame.
    """

    __slots__ = ("case", "flow", "in_apply_map", "resource", "tags", "token", "tracker")

    def __init__(
        self,
        flow: Flow | None,
        tags: frozenset[str],
        case: case | None,
        in_apply_map: bool,
        tracker: dict[Task, None] | None,
        resource: ResourceContext | None = None,
    ) -> None:
        self.flow = flow
        self.tags = tags
        self.case = case
        self.resource = resource
        self.in_apply_map = in_apply_map
        self.tracker = tracker
        self.token: Token[Frame] | None = None

    def derive(self, **changes: Any) -> Frame:
        """A copy of this frame with some fields replaced."""
        new = Frame(self.flow, self.tags, self.case, self.in_apply_map, self.tracker, self.resource)
        for name, value in changes.items():
            setattr(new, name, value)
        return new


ROOT = Frame(None, frozenset(), None, False, None)
"""The frame in force outside every building block."""

_FRAME: ContextVar[Frame] = ContextVar("ferroflow_build_frame", default=ROOT)

current = _FRAME.get
"""Return the active :class:`Frame` (``ROOT`` outside every block)."""


def push(frame: Frame) -> Frame:
    """Make ``frame`` the active frame; :func:`pop` restores the previous one."""
    frame.token = _FRAME.set(frame)
    return frame


def pop(frame: Frame) -> None:
    """Restore the frame that was active before ``frame`` was pushed.

    Raises:
        RuntimeError: if ``frame`` is not the active frame (blocks exited out of order).
    """
    if _FRAME.get() is not frame or frame.token is None:
        raise RuntimeError("ferroflow building blocks (Flow, case, tags) exited out of order")
    _FRAME.reset(frame.token)
    frame.token = None


def pop_entered(frame: Frame | None, block: str) -> None:
    """:func:`pop` the frame a ``block`` (``"case"``, ``"resource"``) pushed on entry.

    Raises:
        RuntimeError: ``frame`` is ``None`` (the block was never entered), or as :func:`pop`.
    """
    if frame is None:
        raise RuntimeError(f"{block} block exited without being entered")
    pop(frame)
