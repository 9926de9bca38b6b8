"""Resource managers: set a resource up before a block of tasks and clean it up after.

Decorate a class with :func:`resource_manager`; the class takes the resource's options in
``__init__`` and defines ``setup(self) -> resource`` and ``cleanup(self, resource)``. Inside
a flow, ``with MyResource(...) as resource:`` adds three tasks:

* an *init* task that builds the manager object from the arguments,
* a *setup* task that calls ``setup()``; entering the block returns it, so tasks inside the
  block can take the resource as an argument. Every task of the block with no upstream
  task in the block waits for it;
* a *cleanup* task that calls ``cleanup(resource)`` once every task of the block has
  finished (whatever their states), provided init and setup succeeded (otherwise it is
  skipped). The cleanup task is never a default reference task, so it does not decide the
  flow's state.

Example:
    >>> from ferroflow import Flow, resource_manager, task
    >>> @resource_manager
    ... class TempDir:
    ...     def __init__(self, prefix="ff"):
    ...         self.prefix = prefix
    ...     def setup(self):
    ...         import tempfile
    ...         return tempfile.mkdtemp(prefix=self.prefix)
    ...     def cleanup(self, path):
    ...         import shutil
    ...         shutil.rmtree(path)
    >>> @task
    ... def write(path, name):
    ...     pass
    >>> with Flow("example") as flow:
    ...     with TempDir(prefix="job") as path:
    ...         w = write(path, "a.txt")
    >>> [t.name for t in flow.sorted_tasks()]
    ['TempDir', 'TempDir.setup', 'write', 'TempDir.cleanup']
    >>> [t.name for t in flow.reference_tasks()]
    ['TempDir', 'TempDir.setup', 'write']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, overload

from ferroflow import _build, signals
from ferroflow.exceptions import FlowContextError, GraphError, TaskDefinitionError
from ferroflow.task import FunctionTask, Task

if TYPE_CHECKING:
    from ferroflow.flow import Flow
    from ferroflow.states import State

__all__ = [
    "ResourceCleanupTask",
    "ResourceContext",
    "ResourceManager",
    "ResourceSetupTask",
    "resource_cleanup_trigger",
    "resource_manager",
]


class ResourceSetupTask(Task):
    """Calls ``mgr.setup()`` and returns the resource.

    Example:
        >>> from ferroflow.tasks.resource_manager import ResourceSetupTask
        >>> class Mgr:
        ...     def setup(self):
        ...         return "conn"
        >>> ResourceSetupTask().run(Mgr())
        'conn'
    """

    def run(self, mgr: Any) -> Any:
        """Return ``mgr.setup()``."""
        return mgr.setup()


class ResourceCleanupTask(Task):
    """Calls ``mgr.cleanup(resource)``.

    Example:
        >>> from ferroflow.tasks.resource_manager import ResourceCleanupTask
        >>> class Mgr:
        ...     def cleanup(self, resource):
        ...         print("closing", resource)
        >>> ResourceCleanupTask().run(Mgr(), "conn")
        closing conn
    """

    def run(self, mgr: Any, resource: Any) -> None:
        """Call ``mgr.cleanup(resource)``."""
        mgr.cleanup(resource)


def resource_cleanup_trigger(upstream_states: Mapping[Any, State]) -> bool:
    """The cleanup's trigger: run once everything upstream finished, whatever the block's
    tasks ended as, but skip when the init (``mgr``) or setup (``resource``) task did not
    succeed (there is nothing to clean up).

    Raises:
        signals.TRIGGERFAIL: an upstream task is not finished.
        signals.SKIP: init or setup was skipped or failed.

    Example:
        >>> from ferroflow.edge import Edge
        >>> from ferroflow.states import Failed, Success
        >>> from ferroflow.tasks.resource_manager import resource_cleanup_trigger
        >>> from ferroflow import Task
        >>> a, b, c = Task(name="a"), Task(name="b"), Task(name="c")
        >>> resource_cleanup_trigger({Edge(a, c, "mgr"): Success(), Edge(b, c): Failed()})
        True
    """
    for edge, state in upstream_states.items():
        if not state.is_finished():
            raise signals.TRIGGERFAIL(
                "Trigger was 'resource_cleanup_trigger' but some upstream tasks did not finish."
            )
        key = getattr(edge, "key", None)
        if key == "mgr" or key == "resource":
            what = "init" if key == "mgr" else "setup"
            if state.is_skipped():
                raise signals.SKIP(f"Resource manager {what} skipped")
            if not state.is_successful():
                raise signals.SKIP(f"Resource manager {what} failed")
    return True


class ResourceContext:
    """The ``with`` block of a resource manager; made by calling a :class:`ResourceManager`.

    Entering it returns the setup task (the resource).

    Attributes:
        init_task: builds the manager object.
        setup_task: calls ``setup()``; its result is the resource.
        cleanup_task: calls ``cleanup(resource)`` after the block.
    """

    def __init__(self, init_task: Task, setup_task: Task, cleanup_task: Task, flow: Flow) -> None:
        self.init_task = init_task
        self.setup_task = setup_task
        self.cleanup_task = cleanup_task
        self._flow = flow
        self._tasks: dict[Task, None] = {}
        self._frame: _build.Frame | None = None

    def _add_task(self, task: Task, flow: Flow) -> None:
        if flow is not self._flow:
            raise GraphError("one resource block cannot add tasks to two different flows")
        self._tasks[task] = None

    def __enter__(self) -> Task:
        self._frame = _build.push(_build.current().derive(resource=self))
        return self.setup_task

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _build.pop_entered(self._frame, "resource")
        self._frame = None
        if exc_type is not None:
            return
        flow, inside = self._flow, self._tasks
        setup, cleanup = self.setup_task, self.cleanup_task
        for child in list(inside):
            upstream = flow.upstream_tasks(child)
            if setup not in upstream and not any(u in inside for u in upstream):
                child.set_upstream(setup, flow=flow)
            downstream = flow.downstream_tasks(child)
            if cleanup not in downstream and not any(d in inside for d in downstream):
                child.set_downstream(cleanup, flow=flow)


class ResourceManager:
    """Makes the init/setup/cleanup tasks of a resource; made by :func:`resource_manager`.

    Args:
        resource_class: a callable (usually the class) that builds an object with
            ``setup()`` and ``cleanup(resource)``.
        name: [the class name]; the tasks are named ``name``, ``name.setup`` and
            ``name.cleanup``.
        init_task_kwargs: Task options for the init task.
        setup_task_kwargs: Task options for the setup task.
        cleanup_task_kwargs: Task options for the cleanup task [trigger
            :func:`resource_cleanup_trigger`, ``skip_on_upstream_skip=False``].

    Raises:
        TaskDefinitionError: the class lacks ``setup`` or ``cleanup``.
    """

    def __init__(
        self,
        resource_class: Callable[..., Any],
        name: str | None = None,
        init_task_kwargs: dict[str, Any] | None = None,
        setup_task_kwargs: dict[str, Any] | None = None,
        cleanup_task_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(resource_class, type):
            missing = [
                m for m in ("setup", "cleanup") if not callable(getattr(resource_class, m, None))
            ]
            if missing:
                raise TaskDefinitionError(
                    f"resource_manager: {resource_class.__name__} needs the method(s) "
                    f"{' and '.join(missing)}"
                )
        self.resource_class = resource_class
        self.name = name or getattr(resource_class, "__name__", "resource")
        self.init_task_kwargs = dict(init_task_kwargs or {})
        self.setup_task_kwargs = dict(setup_task_kwargs or {})
        self.cleanup_task_kwargs = dict(cleanup_task_kwargs or {})
        self.init_task_kwargs.setdefault("name", self.name)
        self.setup_task_kwargs.setdefault("name", f"{self.name}.setup")
        self.cleanup_task_kwargs.setdefault("name", f"{self.name}.cleanup")
        self.cleanup_task_kwargs.setdefault("trigger", resource_cleanup_trigger)
        self.cleanup_task_kwargs.setdefault("skip_on_upstream_skip", False)
        # Build the task templates now so that bad options fail at decoration time.
        self._init = FunctionTask(resource_class, **self.init_task_kwargs)
        self._setup = ResourceSetupTask(**self.setup_task_kwargs)
        self._cleanup = ResourceCleanupTask(**self.cleanup_task_kwargs)

    def __call__(self, *args: Any, flow: Flow | None = None, **kwargs: Any) -> ResourceContext:
        """Add the init/setup/cleanup tasks for one use of the resource.

        Args:
            *args: arguments of the resource class (tasks or constants).
            flow: the flow [the active one].
            **kwargs: keyword arguments of the resource class.

        Raises:
            FlowContextError: outside a flow block and without ``flow=``.
        """
        if flow is None:
            flow = _build.current().flow
            if flow is None:
                raise FlowContextError(
                    f"resource {self.name!r} must be used inside `with Flow(...):` "
                    "(or pass flow=...)"
                )
        init_task = self._init(*args, flow=flow, **kwargs)
        setup_task = self._setup(init_task, flow=flow)
        cleanup_task = self._cleanup(init_task, setup_task, flow=flow)
        flow._not_reference[cleanup_task] = None
        flow._version += 1
        return ResourceContext(init_task, setup_task, cleanup_task, flow)

    def __repr__(self) -> str:
        return f"<ResourceManager: {self.name}>"


@overload
def resource_manager(resource_class: Callable[..., Any], /) -> ResourceManager: ...


@overload
def resource_manager(
    resource_class: None = None,
    /,
    *,
    name: str | None = None,
    init_task_kwargs: dict[str, Any] | None = None,
    setup_task_kwargs: dict[str, Any] | None = None,
    cleanup_task_kwargs: dict[str, Any] | None = None,
) -> Callable[[Callable[..., Any]], ResourceManager]: ...


def resource_manager(
    resource_class: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    init_task_kwargs: dict[str, Any] | None = None,
    setup_task_kwargs: dict[str, Any] | None = None,
    cleanup_task_kwargs: dict[str, Any] | None = None,
) -> ResourceManager | Callable[[Callable[..., Any]], ResourceManager]:
    """Turn a class with ``setup()`` / ``cleanup(resource)`` into a resource manager:
    ``@resource_manager`` or ``@resource_manager(name=..., setup_task_kwargs=...)``.

    Args:
        resource_class: the class.
        name: the resource's name [the class name].
        init_task_kwargs: Task options for the init task.
        setup_task_kwargs: Task options for the setup task (e.g. retries).
        cleanup_task_kwargs: Task options for the cleanup task.

    Returns:
        A :class:`ResourceManager` (or a decorator that makes one).

    Example:
        >>> from ferroflow import Flow, resource_manager
        >>> @resource_manager(name="db", setup_task_kwargs={"max_retries": 2, "retry_delay": 1})
        ... class Database:
        ...     def __init__(self, url):
        ...         self.url = url
        ...     def setup(self):
        ...         return f"connection to {self.url}"
        ...     def cleanup(self, conn):
        ...         pass
        >>> with Flow("example") as flow:
        ...     with Database("sqlite://") as conn:
        ...         pass
        >>> conn.name, conn.max_retries
        ('db.setup', 2)
    """

    def make(cls: Callable[..., Any]) -> ResourceManager:
        return ResourceManager(
            cls,
            name=name,
            init_task_kwargs=init_task_kwargs,
            setup_task_kwargs=setup_task_kwargs,
            cleanup_task_kwargs=cleanup_task_kwargs,
        )

    if resource_class is None:
        return make
    return make(resource_class)
