"""Tasks: the units of work a flow is built from.

A :class:`Task` is a template: calling it inside ``with Flow(...)`` does not run it, it adds
a *copy* of the task to the flow, binds the call's arguments to the copy, and returns the
copy, which stands for the future result. Write a task either with the :func:`task`
decorator or by subclassing :class:`Task` and defining ``run(self, ...)``.

:class:`Parameter` is the task whose value comes from ``flow.run(parameters=...)``.

Example:
    >>> from ferroflow import Flow, Parameter, task
    >>> @task(max_retries=2, retry_delay=1)
    ... def add(x, y=1):
    ...     return x + y
    >>> with Flow("example") as flow:
    ...     n = Parameter("n", default=3, type=int)
    ...     total = add(n, y=10)
    >>> add.run(1, 2)  # the plain function, called directly
    3
    >>> [e.key for e in flow.edges_to(total)], flow.constants[total]
    (['x'], {'y': 10})

Engine contract: ``task._ff_signature()`` gives ``(positional names, keyword-only names,
accepts **kwargs)`` of ``run`` (without ``self``); ``FunctionTask.run`` is the user's
function itself, so the engine calls it with no wrapper in between.
"""

from __future__ import annotations

import inspect
import math
import typing
import weakref
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from ferroflow import _build, triggers
from ferroflow.exceptions import (
    FlowContextError,
    MappingError,
    ParameterError,
    TaskDefinitionError,
)

if TYPE_CHECKING:
    from ferroflow.flow import Flow

__all__ = ["NO_DEFAULT", "RESERVED_ARGUMENTS", "FunctionTask", "Parameter", "Task", "task"]

P = ParamSpec("P")
R = TypeVar("R")
_TaskT = TypeVar("_TaskT", bound="Task")

#: Keyword names that ``Task.__call__`` / ``Task.map`` take for themselves, so ``run`` may
#: not use them.
RESERVED_ARGUMENTS = frozenset({"upstream_tasks", "mapped", "task_args", "flow"})

_MISSING: Any = object()

#: The largest ``max_retries`` a task may have (the engine counts attempts in 16 bits).
_MAX_RETRIES = 65534

_OPTION_NAMES = (
    "name",
    "slug",
    "tags",
    "max_retries",
    "retry_delay",
    "retry_on",
    "timeout",
    "trigger",
    "skip_on_upstream_skip",
    "cache_for",
    "cache_validator",
    "cache_key",
    "checkpoint",
    "result",
    "target",
    "state_handlers",
    "on_failure",
    "log_stdout",
    "nout",
)


class _Signature:
    """What ``run`` accepts, computed once per function (FunctionTask) or per class.

    Attributes:
        positional: names that can be passed by position, in order (positional-only ones
            first, then positional-or-keyword).
        kwonly: keyword-only names, in order.
        var_kw: whether ``run`` takes ``**kwargs``.
        names: every named parameter.
        required: names without a default (never ``**kwargs``).
        public: ``(positional, kwonly, var_kw)``, the value of ``Task._ff_signature()``.
    """

    __slots__ = ("kwonly", "names", "positional", "public", "required", "var_kw")

    def __init__(
        self,
        positional: tuple[str, ...],
        kwonly: tuple[str, ...],
        var_kw: bool,
        required: tuple[str, ...],
    ) -> None:
        self.positional = positional
        self.kwonly = kwonly
        self.var_kw = var_kw
        self.names = frozenset(positional) | frozenset(kwonly)
        self.required = required
        self.public = (positional, kwonly, var_kw)


def _read_signature(fn: Callable[..., Any], owner: str) -> _Signature:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as err:
        raise TaskDefinitionError(
            f"cannot read the signature of {owner}'s run function ({err}); "
            "wrap it in a `def` with named parameters"
        ) from None
    positional: list[str] = []
    kwonly: list[str] = []
    required: list[str] = []
    var_kw = False
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            raise TaskDefinitionError(
                f"{owner}: run() may not take *{p.name}: ferroflow binds arguments by name; "
                "use named parameters or a list argument instead"
            )
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
            continue
        if p.name in RESERVED_ARGUMENTS:
            raise TaskDefinitionError(
                f"{owner}: run() may not have an argument named {p.name!r}; the names "
                f"{', '.join(sorted(RESERVED_ARGUMENTS))} are reserved for Task.__call__"
            )
        if p.kind is p.KEYWORD_ONLY:
            kwonly.append(p.name)
        else:
            positional.append(p.name)
        if p.default is p.empty:
            required.append(p.name)
    return _Signature(tuple(positional), tuple(kwonly), var_kw, tuple(required))


def _nout_from_annotation(fn: Callable[..., Any]) -> int | None:
    """``N`` when ``fn`` is annotated ``-> tuple[T1, ..., TN]``, else ``None``."""
    try:
        ann = inspect.signature(fn).return_annotation
    except (TypeError, ValueError):
        return None
    if isinstance(ann, str):
        try:
            ann = typing.get_type_hints(fn).get("return")
        except Exception:
            return None
    if typing.get_origin(ann) is not tuple:
        return None
    args = typing.get_args(ann)
    if not args or Ellipsis in args or args == ((),):
        return None
    return len(args)


def _seconds(value: Any, option: str, owner: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise TaskDefinitionError(
        f"{owner}: {option} must be a number of seconds or a datetime.timedelta, got {value!r}"
    )


def _is_exception_type(x: Any) -> bool:
    return isinstance(x, type) and issubclass(x, BaseException)


class Task:
    """Base class of every task.

    Subclass it and define ``run(self, ...)``, or use the :func:`task` decorator. Every
    option is validated here, when the task is constructed.

    Args:
        name: display name [class name, or function name for ``@task``].
        slug: a name unique within a flow [generated per flow: ``"{name}-{n}"``].
        tags: an iterable of strings (not a bare string).
        max_retries: how many times a failed run is retried [0].
        retry_delay: seconds or ``timedelta`` between retries; required when
            ``max_retries > 0``. Stored as a ``timedelta``.
        retry_on: an exception type or a tuple/list of them; only matching errors are
            retried [any error]. Stored as a tuple of types, or ``None`` for any.
        timeout: seconds or ``timedelta`` (> 0). Stored as float seconds or ``None``.
        trigger: ``trigger(upstream_states) -> bool`` [``triggers.all_successful``].
        skip_on_upstream_skip: skip when any upstream task was skipped [True].
        cache_for: how long (``timedelta`` or seconds) a successful result is reused.
        cache_validator: decides whether a cached result is still valid.
        cache_key: share a cache between tasks.
        checkpoint: write successful results with ``result``.
        result: a ``Result`` that stores this task's values.
        target: a location template; if it exists, the task is ``Cached``.
        state_handlers: ``handler(task, old_state, new_state)`` callables. Stored as a
            tuple.
        on_failure: ``on_failure(task, failed_state)``.
        log_stdout: send ``print`` output to the run logger [False].
        nout: how many values ``run`` returns, so ``a, b = t()`` unpacks [from a
            ``tuple[...]`` return annotation of ``run``, else ``None``].

    Raises:
        TaskDefinitionError: for an invalid option or combination of options.

    Example:
        >>> from ferroflow import Flow, Task
        >>> class Double(Task):
        ...     def run(self, x):
        ...         return 2 * x
        >>> double = Double(name="double", max_retries=1, retry_delay=5)
        >>> double.retry_delay
        datetime.timedelta(seconds=5)
        >>> with Flow("example") as flow:
        ...     four = double(2)
        >>> four is double, four.name
        (False, 'double')
    """

    # Option defaults live on the class: an instance stores only the options that differ,
    # so the per-call copy (``__dict__.update``) stays small and cheap.
    name: str
    slug: str | None = None
    tags: frozenset[str] = frozenset()
    max_retries: int = 0
    retry_delay: timedelta | None = None
    retry_on: tuple[type[BaseException], ...] | None = None
    timeout: float | None = None
    trigger: Callable[..., bool] = staticmethod(triggers.all_successful)  # type: ignore[assignment]
    skip_on_upstream_skip: bool = True
    cache_for: timedelta | None = None
    cache_validator: Callable[..., bool] | None = None
    cache_key: str | None = None
    checkpoint: bool | None = None
    result: Any = None
    target: str | Callable[..., str] | None = None
    state_handlers: tuple[Callable[..., Any], ...] = ()
    on_failure: Callable[..., Any] | None = None
    log_stdout: bool = False
    nout: int | None = None

    def __init__(
        self,
        name: str | None = None,
        slug: str | None = None,
        tags: Iterable[str] | None = None,
        max_retries: int = 0,
        retry_delay: timedelta | float | None = None,
        retry_on: type[BaseException] | Iterable[type[BaseException]] | None = None,
        timeout: timedelta | float | None = None,
        trigger: Callable[..., bool] | None = None,
        skip_on_upstream_skip: bool = True,
        cache_for: timedelta | float | None = None,
        cache_validator: Callable[..., bool] | None = None,
        cache_key: str | None = None,
        checkpoint: bool | None = None,
        result: Any = None,
        target: str | Callable[..., str] | None = None,
        state_handlers: Iterable[Callable[..., Any]] | None = None,
        on_failure: Callable[..., Any] | None = None,
        log_stdout: bool = False,
        nout: int | None = None,
    ) -> None:
        self.name = type(self).__name__ if name is None else name
        self.slug = slug
        self.tags = tags  # type: ignore[assignment]  # normalized below
        self.max_retries = max_retries
        self.retry_delay = retry_delay  # type: ignore[assignment]
        self.retry_on = retry_on  # type: ignore[assignment]
        self.timeout = timeout  # type: ignore[assignment]
        self.trigger = trigger  # type: ignore[assignment]
        self.skip_on_upstream_skip = skip_on_upstream_skip
        self.cache_for = cache_for  # type: ignore[assignment]
        self.cache_validator = cache_validator
        self.cache_key = cache_key
        self.checkpoint = checkpoint
        self.result = result
        self.target = target
        self.state_handlers = state_handlers  # type: ignore[assignment]
        self.on_failure = on_failure
        self.log_stdout = log_stdout
        self.nout = nout
        self._ff_sig = self._compute_signature()
        if self.nout is None:
            self.nout = _nout_from_annotation(self.run)
        self._normalize_options()
        self._strip_defaults()

        frame = _build.current()
        if frame.tags:
            self.tags = self.tags | frame.tags
        if frame.tracker is not None:
            frame.tracker[self] = None

    # ------------------------------------------------------------------ options

    def _compute_signature(self) -> _Signature:
        if "run" in self.__dict__:  # a FunctionTask, or a run assigned per instance
            return _read_signature(self.run, f"task {self.name!r}")
        cls = type(self)
        cached = cls.__dict__.get("_ff_class_sig")
        if cached is None:
            cached = _read_signature(self.run, f"task class {cls.__qualname__}")
            cls._ff_class_sig = cached  # type: ignore[attr-defined]
        return cached

    def _strip_defaults(self) -> None:
        """Drop instance options equal to the class default (read through the class)."""
        d = self.__dict__
        cls = type(self)
        for key in _OPTION_NAMES:
            if key in d:
                value = d[key]
                default = getattr(cls, key, _MISSING)
                if value is default or (type(value) is type(default) and value == default):
                    del d[key]

    def _normalize_options(self) -> None:
        """Validate every option and store it in its normal form (idempotent)."""
        name = self.name
        if not isinstance(name, str) or not name:
            raise TaskDefinitionError(f"task name must be a non-empty string, got {name!r}")
        owner = f"task {name!r}"
        if self.slug is not None and (not isinstance(self.slug, str) or not self.slug):
            raise TaskDefinitionError(f"{owner}: slug must be a non-empty string or None")

        tags: Any = self.tags
        if tags is None:
            self.tags = frozenset()
        elif isinstance(tags, (str, bytes)):
            raise TaskDefinitionError(
                f"{owner}: tags must be an iterable of strings, not a bare string "
                f"(write tags=[{tags!r}])"
            )
        elif not isinstance(tags, frozenset):
            try:
                tag_set = frozenset(tags)
            except TypeError:
                raise TaskDefinitionError(
                    f"{owner}: tags must be an iterable of strings, got {tags!r}"
                ) from None
            bad = [t for t in tag_set if not isinstance(t, str)]
            if bad:
                raise TaskDefinitionError(f"{owner}: every tag must be a string, got {bad[0]!r}")
            self.tags = tag_set

        mr = self.max_retries
        if isinstance(mr, bool) or not isinstance(mr, int) or mr < 0:
            raise TaskDefinitionError(f"{owner}: max_retries must be an int >= 0, got {mr!r}")
        if mr > _MAX_RETRIES:  # the engine counts attempts in 16 bits
            raise TaskDefinitionError(
                f"{owner}: max_retries must be at most {_MAX_RETRIES}, got {mr!r}"
            )
        delay = self.retry_delay
        if delay is not None and not isinstance(delay, timedelta):
            secs = _seconds(delay, "retry_delay", owner)
            try:
                delay = self.retry_delay = timedelta(seconds=secs or 0.0)
            except (OverflowError, ValueError):
                raise TaskDefinitionError(
                    f"{owner}: retry_delay must be a finite number of seconds that a "
                    f"datetime.timedelta can hold, got {self.retry_delay!r}"
                ) from None
        if delay is not None and delay < timedelta(0):
            raise TaskDefinitionError(f"{owner}: retry_delay must not be negative, got {delay}")
        if mr > 0 and delay is None:
            raise TaskDefinitionError(
                f"{owner}: max_retries={mr} needs a retry_delay "
                "(e.g. retry_delay=timedelta(seconds=10), or retry_delay=0)"
            )

        retry_on: Any = self.retry_on
        if retry_on is not None:
            if _is_exception_type(retry_on):
                self.retry_on = (retry_on,)
            elif isinstance(retry_on, (tuple, list, set, frozenset)) and retry_on:
                items = tuple(retry_on)
                bad_items = [x for x in items if not _is_exception_type(x)]
                if bad_items:
                    raise TaskDefinitionError(
                        f"{owner}: retry_on must hold exception types, got {bad_items[0]!r}"
                    )
                self.retry_on = items
            else:
                raise TaskDefinitionError(
                    f"{owner}: retry_on must be an exception type or a tuple/list of them, "
                    f"got {retry_on!r}"
                )

        if self.timeout is not None:
            secs = _seconds(self.timeout, "timeout", owner)
            if secs is None or not math.isfinite(secs) or secs <= 0:
                raise TaskDefinitionError(
                    f"{owner}: timeout must be a finite number of seconds > 0, got {secs}"
                )
            self.timeout = secs

        if self.trigger is None:
            self.trigger = triggers.all_successful
        elif not callable(self.trigger):
            raise TaskDefinitionError(f"{owner}: trigger must be callable, got {self.trigger!r}")
        self.skip_on_upstream_skip = bool(self.skip_on_upstream_skip)

        cache_for: Any = self.cache_for
        if cache_for is not None and not isinstance(cache_for, timedelta):
            cache_for = self.cache_for = timedelta(
                seconds=_seconds(cache_for, "cache_for", owner) or 0.0
            )
        if cache_for is not None and cache_for <= timedelta(0):
            raise TaskDefinitionError(f"{owner}: cache_for must be > 0, got {cache_for}")
        if self.cache_validator is not None and not callable(self.cache_validator):
            raise TaskDefinitionError(f"{owner}: cache_validator must be callable")
        if self.cache_key is not None and not isinstance(self.cache_key, str):
            raise TaskDefinitionError(f"{owner}: cache_key must be a string or None")
        if self.target is not None and not (isinstance(self.target, str) or callable(self.target)):
            raise TaskDefinitionError(f"{owner}: target must be a string template or a callable")

        handlers: Any = self.state_handlers
        if handlers is None:
            self.state_handlers = ()
        elif not isinstance(handlers, tuple):
            if callable(handlers) or isinstance(handlers, (str, bytes)):
                raise TaskDefinitionError(
                    f"{owner}: state_handlers must be a list of callables (write [handler])"
                )
            handler_list = tuple(handlers)
            for h in handler_list:
                if not callable(h):
                    raise TaskDefinitionError(f"{owner}: state handler {h!r} is not callable")
            self.state_handlers = handler_list
        if self.on_failure is not None and not callable(self.on_failure):
            raise TaskDefinitionError(f"{owner}: on_failure must be callable")
        self.log_stdout = bool(self.log_stdout)
        nout = self.nout
        if nout is not None and (isinstance(nout, bool) or not isinstance(nout, int) or nout < 1):
            raise TaskDefinitionError(f"{owner}: nout must be an int >= 1 or None, got {nout!r}")

    # ---------------------------------------------------------------- the engine

    def _ff_checkpoints(self) -> bool:
        """Whether a successful run of this task writes its value (cached tasks do:
        the durable cache points at the written value). Here, not in
        ``ferroflow._checkpoint``, so that planning a flow that checkpoints nothing
        does not import the checkpoint machinery (``results``, ``pathlib``).

        Example:
            >>> from ferroflow import task
            >>> @task(checkpoint=True)
            ... def f():
            ...     pass
            >>> f._ff_checkpoints()
            True
        """
        if self.target is not None or self.cache_for is not None:
            return True
        if self.checkpoint is None:
            return self.result is not None
        return bool(self.checkpoint)

    def _ff_signature(self) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
        """The shape of ``run``'s parameters (without ``self``), for the engine.

        Returns:
            ``(positional, keyword_only, var_kw)``: the names that may be passed by
            position in order (positional-only ones first), the keyword-only names in
            order, and whether ``run`` accepts ``**kwargs``. Computed once per function
            or class and shared by every copy.

        Example:
            >>> from ferroflow import task
            >>> @task
            ... def f(a, b=1, *, c, **rest):
            ...     pass
            >>> f._ff_signature()
            (('a', 'b'), ('c',), True)
        """
        return self._signature().public

    def _signature(self) -> _Signature:
        """What ``run`` accepts (see :class:`_Signature`)."""
        sig: _Signature | None = self.__dict__.get("_ff_sig")
        if sig is None:  # a subclass that did not call Task.__init__
            sig = self._ff_sig = self._compute_signature()
        return sig

    if TYPE_CHECKING:
        # Subclasses define run() with any signature.
        run: Callable[..., Any]
    else:

        def run(self) -> Any:
            """The work of the task; override it in a subclass (the base does nothing).

            ``run`` may not take ``*args``; its arguments are bound by name.

            Example:
                >>> from ferroflow import Task
                >>> class Hello(Task):
                ...     def run(self, who="world"):
                ...         return f"hello {who}"
                >>> Hello().run()
                'hello world'
            """
            return None

    # ------------------------------------------------------------------- copies

    def copy(self: _TaskT, **task_args: Any) -> _TaskT:
        """A copy of the task (no flow membership, no edges), with some options changed.

        Args:
            **task_args: task options (or other attributes) to set on the copy; they are
                validated like constructor arguments.

        Raises:
            TaskDefinitionError: for an unknown or invalid option.

        Example:
            >>> from ferroflow import task
            >>> @task
            ... def fetch(url):
            ...     pass
            >>> patient = fetch.copy(name="patient fetch", max_retries=3, retry_delay=10)
            >>> patient.name, patient.max_retries, fetch.max_retries
            ('patient fetch', 3, 0)
        """
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        if task_args:
            new._apply_task_args(task_args)
        return new

    def _apply_task_args(self, task_args: dict[str, Any]) -> None:
        d = self.__dict__
        for key, value in task_args.items():
            if key.startswith("_") or (key not in _OPTION_NAMES and key not in d):
                raise TaskDefinitionError(
                    f"task {self.name!r} has no option {key!r}; options are "
                    + ", ".join(_OPTION_NAMES)
                )
            d[key] = value
        self._normalize_options()
        self._strip_defaults()

    # ------------------------------------------------------------------- binding

    def __call__(
        self: _TaskT,
        *args: Any,
        mapped: bool = False,
        task_args: dict[str, Any] | None = None,
        upstream_tasks: Iterable[Any] | None = None,
        flow: Flow | None = None,
        **kwargs: Any,
    ) -> _TaskT:
        """Add a copy of this task to the active flow, bind the arguments, return the copy.

        Args:
            *args: positional arguments of ``run``.
            mapped: map over every argument (prefer ``task.map(...)``).
            task_args: options for the copy, as for :meth:`copy`.
            upstream_tasks: tasks that must finish first (ordering-only edges).
            flow: the flow to add to [the innermost ``with Flow(...)``].
            **kwargs: keyword arguments of ``run``.

        Arguments may be tasks (a data edge keyed by the argument name), plain values
        (constants, kept out of the graph), or lists/tuples/sets/dicts holding tasks
        (turned into collection tasks).

        Raises:
            FlowContextError: outside a ``with Flow(...)`` block and without ``flow=``.
            BindError: unknown keyword, the same argument twice, or too many positional
                arguments.

        Example:
            >>> from ferroflow import Flow, task
            >>> @task
            ... def add(x, y):
            ...     return x + y
            >>> with Flow("example") as flow:
            ...     a = add(1, 2)
            ...     b = add(a, y=3, upstream_tasks=[a])
            >>> len(flow.tasks)
            2
        """
        frame = _build.current()
        flow, new = self._added_copy("call", flow, task_args, frame)
        flow._bind_call(new, args, kwargs, mapped, upstream_tasks, frame)
        return new

    def bind(
        self: _TaskT,
        *args: Any,
        mapped: bool = False,
        upstream_tasks: Iterable[Any] | None = None,
        flow: Flow | None = None,
        **kwargs: Any,
    ) -> _TaskT:
        """Bind arguments to *this* task (no copy) in the active flow; return the task.

        Like calling the task, but the task itself is added. Useful for tasks built once.

        Raises:
            FlowContextError: outside a flow block and without ``flow=``.
            BindError: for arguments ``run`` does not accept.
            EdgeError: an argument that is already bound in the flow.

        Example:
            >>> from ferroflow import Flow, Task
            >>> class Add(Task):
            ...     def run(self, x, y):
            ...         return x + y
            >>> add = Add()
            >>> with Flow("example") as flow:
            ...     out = add.bind(1, 2)
            >>> out is add, flow.constants[add]
            (True, {'x': 1, 'y': 2})
        """
        frame = _build.current()
        flow = self._flow_or_current(flow, "bind", frame)
        flow._bind_call(self, args, kwargs, mapped, upstream_tasks, frame, fresh=False)
        return self

    def map(
        self: _TaskT,
        *args: Any,
        upstream_tasks: Iterable[Any] | None = None,
        flow: Flow | None = None,
        task_args: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> _TaskT:
        """Add a copy of this task that runs once per element of its arguments.

        Every argument is mapped (several mapped inputs zip to the shortest) except those
        wrapped in :class:`~ferroflow.unmapped`; :class:`~ferroflow.flatten` un-nests one
        level first. ``upstream_tasks`` are mapped too unless wrapped in ``unmapped``.

        Raises:
            MappingError: inside ``apply_map`` (the whole function is mapped already), or a
                constant argument that is not a sized sequence.
            FlowContextError, BindError: as for calling the task.

        Example:
            >>> from ferroflow import Flow, task, unmapped
            >>> @task
            ... def add(x, y):
            ...     return x + y
            >>> with Flow("example") as flow:
            ...     totals = add.map([1, 2, 3], y=unmapped(10))
            >>> [(e.upstream_task.name, e.key, e.mapped) for e in flow.edges_to(totals)]
            [('Constant[list]', 'x', True)]
        """
        frame = _build.current()
        if frame.in_apply_map:
            raise MappingError(
                f"task {self.name!r}: Task.map cannot be used inside the function given to "
                "apply_map, which is mapped as a whole already; call the task normally there"
            )
        flow, new = self._added_copy("map", flow, task_args, frame)
        flow._bind_call(new, args, kwargs, True, upstream_tasks, frame)
        return new

    def _added_copy(
        self: _TaskT, what: str, flow: Flow | None, task_args: dict[str, Any] | None, frame: Any
    ) -> tuple[Flow, _TaskT]:
        """The flow a call adds to, and the cheap copy of this task it adds (with the
        call's task_args and the active tags); the copy no longer counts as unused."""
        flow = self._flow_or_current(flow, what, frame)
        new = Task.copy(self, **(task_args or {}))
        if frame.tags:
            new.tags = new.tags | frame.tags
        tracker = frame.tracker
        if tracker:
            tracker.pop(self, None)
        return flow, new

    def set_dependencies(
        self,
        flow: Flow | None = None,
        upstream_tasks: Iterable[Any] | None = None,
        downstream_tasks: Iterable[Any] | None = None,
        keyword_tasks: dict[str, Any] | None = None,
        mapped: bool = False,
    ) -> None:
        """Add this task and its dependencies to a flow; see :meth:`Flow.set_dependencies`.

        Example:
            >>> from ferroflow import Flow, Task
            >>> a, b = Task(name="a"), Task(name="b")
            >>> flow = Flow("example")
            >>> b.set_dependencies(flow, upstream_tasks=[a])
            >>> [t.name for t in flow.upstream_tasks(b)]
            ['a']
        """
        flow = self._flow_or_current(flow, "set_dependencies")
        flow.set_dependencies(
            self,
            upstream_tasks=upstream_tasks,
            downstream_tasks=downstream_tasks,
            keyword_tasks=keyword_tasks,
            mapped=mapped,
        )

    def set_upstream(
        self, task: Any, key: str | None = None, mapped: bool = False, flow: Flow | None = None
    ) -> None:
        """Make ``task`` an upstream dependency of this task.

        Args:
            task: the upstream task.
            key: bind its result to this argument of ``run`` (else ordering only).
            mapped: map over it.
            flow: the flow [the active one].

        Example:
            >>> from ferroflow import Flow, Task
            >>> a, b = Task(name="a"), Task(name="b")
            >>> with Flow("example") as flow:
            ...     b.set_upstream(a)
            >>> flow.edges_to(b)
            {<Edge: a to b>}
        """
        flow = self._flow_or_current(flow, "set_upstream")
        if key is None:
            flow.set_dependencies(self, upstream_tasks=[task], mapped=mapped)
        else:
            flow.set_dependencies(self, keyword_tasks={key: task}, mapped=mapped)

    def set_downstream(
        self, task: Task, key: str | None = None, mapped: bool = False, flow: Flow | None = None
    ) -> None:
        """Make ``task`` a downstream dependent of this task.

        Args:
            task: the downstream task.
            key: bind this task's result to that argument of ``task.run``.
            mapped: ``task`` maps over this task's result.
            flow: the flow [the active one].

        Example:
            >>> from ferroflow import Flow, Task
            >>> a, b = Task(name="a"), Task(name="b")
            >>> with Flow("example") as flow:
            ...     a.set_downstream(b)
            >>> [t.name for t in flow.downstream_tasks(a)]
            ['b']
        """
        flow = self._flow_or_current(flow, "set_downstream")
        if key is None:
            flow.set_dependencies(task, upstream_tasks=[self], mapped=mapped)
        else:
            flow.set_dependencies(task, keyword_tasks={key: self}, mapped=mapped)

    def _flow_or_current(
        self, flow: Flow | None, what: str, frame: _build.Frame | None = None
    ) -> Flow:
        """``flow``, else the active flow (of ``frame``, if given); raises outside a flow."""
        if flow is None:
            flow = (_build.current() if frame is None else frame).flow
            if flow is None:
                raise _no_flow_error(self, what)
        return flow

    def __or__(self, other: _TaskT) -> _TaskT:
        """``a | b``: an ordering edge ``a -> b`` in the active flow; returns ``b``.

        Example:
            >>> from ferroflow import Flow, Task
            >>> a, b, c = Task(name="a"), Task(name="b"), Task(name="c")
            >>> with Flow("example") as flow:
            ...     _ = a | b | c
            >>> [t.name for t in flow.sorted_tasks()]
            ['a', 'b', 'c']
        """
        self.set_downstream(other)
        return other

    def __ror__(self: _TaskT, other: Any) -> _TaskT:
        self.set_upstream(other)
        return self

    # ------------------------------------------------------------- get-item etc.

    def __getitem__(self, key: Any) -> Task:
        """``t[key]``: a ``GetItem`` task giving ``result[key]``.

        Example:
            >>> from ferroflow import Flow, task
            >>> @task
            ... def pair():
            ...     return {"a": 1}
            >>> with Flow("example") as flow:
            ...     a = pair()["a"]
            >>> a.name
            "pair['a']"
        """
        from ferroflow.tasks.core import GetItem

        label = key.name if isinstance(key, Task) else repr(key)
        return GetItem(name=f"{self.name}[{label}]", checkpoint=self.checkpoint).bind(self, key)

    def __iter__(self) -> Iterator[Task]:
        """Unpack a task declared with ``nout=N`` (or a ``tuple[...]`` return annotation).

        Raises:
            TypeError: the task has no ``nout``.

        Example:
            >>> from ferroflow import Flow, task
            >>> @task(nout=2)
            ... def split():
            ...     return 1, 2
            >>> with Flow("example") as flow:
            ...     a, b = split()
            >>> a.name, b.name
            ('split[0]', 'split[1]')
        """
        n = self.nout
        if n is None:
            raise TypeError(
                f"task {self.name!r} is not iterable: to unpack its result, give it nout=N "
                "(e.g. @task(nout=2)) or annotate run's return type as tuple[...]"
            )
        return (self[i] for i in range(n))

    def _operator(self, cls_name: str, *args: Any) -> Task:
        from ferroflow.tasks import core

        return getattr(core, cls_name)().bind(*args)

    def __add__(self, other: Any) -> Task:
        return self._operator("Add", self, other)

    def __radd__(self, other: Any) -> Task:
        return self._operator("Add", other, self)

    def __sub__(self, other: Any) -> Task:
        return self._operator("Sub", self, other)

    def __rsub__(self, other: Any) -> Task:
        return self._operator("Sub", other, self)

    def __mul__(self, other: Any) -> Task:
        return self._operator("Mul", self, other)

    def __rmul__(self, other: Any) -> Task:
        return self._operator("Mul", other, self)

    def __truediv__(self, other: Any) -> Task:
        return self._operator("Div", self, other)

    def __rtruediv__(self, other: Any) -> Task:
        return self._operator("Div", other, self)

    def __floordiv__(self, other: Any) -> Task:
        return self._operator("FloorDiv", self, other)

    def __rfloordiv__(self, other: Any) -> Task:
        return self._operator("FloorDiv", other, self)

    def __mod__(self, other: Any) -> Task:
        return self._operator("Mod", self, other)

    def __rmod__(self, other: Any) -> Task:
        return self._operator("Mod", other, self)

    def __pow__(self, other: Any) -> Task:
        return self._operator("Pow", self, other)

    def __rpow__(self, other: Any) -> Task:
        return self._operator("Pow", other, self)

    def __and__(self, other: Any) -> Task:
        return self._operator("And", self, other)

    def __rand__(self, other: Any) -> Task:
        return self._operator("And", other, self)

    def __xor__(self, other: Any) -> Task:
        return self._operator("Xor", self, other)

    def __rxor__(self, other: Any) -> Task:
        return self._operator("Xor", other, self)

    def __gt__(self, other: Any) -> Task:
        return self._operator("GreaterThan", self, other)

    def __ge__(self, other: Any) -> Task:
        return self._operator("GreaterThanOrEqual", self, other)

    def __lt__(self, other: Any) -> Task:
        return self._operator("LessThan", self, other)

    def __le__(self, other: Any) -> Task:
        return self._operator("LessThanOrEqual", self, other)

    def is_equal(self, other: Any) -> Task:
        """A task giving ``result == other``.

        ``==`` itself keeps its identity meaning, because tasks are dict keys (e.g.
        ``state.result[task]``), as in Prefect Core.

        Example:
            >>> from ferroflow import Flow, task
            >>> @task
            ... def one():
            ...     return 1
            >>> with Flow("example"):
            ...     check = one().is_equal(1)
            >>> type(check).__name__
            'Equal'
        """
        return self._operator("Equal", self, other)

    def is_not_equal(self, other: Any) -> Task:
        """A task giving ``result != other`` (see :meth:`is_equal`)."""
        return self._operator("NotEqual", self, other)

    def not_(self) -> Task:
        """A task giving ``not result``."""
        return self._operator("Not", self)

    def or_(self, other: Any) -> Task:
        """A task giving ``result or other`` (``|`` is the ordering edge)."""
        return self._operator("Or", self, other)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.name}>"


def _no_flow_error(t: Task, what: str) -> FlowContextError:
    return FlowContextError(
        f"cannot {what} task {t.name!r} outside a flow: do it inside `with Flow(...):` "
        "(or pass flow=...); to run the function itself, call task.run(...)"
    )


class FunctionTask(Task, Generic[P, R]):
    """A task whose ``run`` is a plain function; made by :func:`task`.

    ``self.run`` is the function itself (not a wrapper), so ``fn_task.run(...)`` calls it
    directly; ``__wrapped__``, ``__doc__`` and the signature are kept.

    Args:
        fn: the function.
        name: [the function's name].
        **kwargs: any :class:`Task` option.

    Raises:
        TaskDefinitionError: ``fn`` is not callable, is a coroutine function, or takes
            ``*args`` or a reserved argument name.

    Example:
        >>> from ferroflow.task import FunctionTask
        >>> def inc(x):
        ...     "Add one."
        ...     return x + 1
        >>> t = FunctionTask(inc, max_retries=1, retry_delay=0)
        >>> t.run is inc, t.name, t.__doc__
        (True, 'inc', 'Add one.')
    """

    run: Callable[P, R]

    def __init__(self, fn: Callable[P, R], name: str | None = None, **kwargs: Any) -> None:
        if isinstance(fn, Task) or not callable(fn):
            raise TaskDefinitionError(f"@task needs a function, got {fn!r}")
        if inspect.iscoroutinefunction(fn):
            raise TaskDefinitionError(
                f"@task: {getattr(fn, '__name__', fn)!r} is an async function; "
                "ferroflow tasks are plain functions (use asyncio.run inside if needed)"
            )
        self.run = fn
        self.__wrapped__ = fn
        self.__doc__ = getattr(fn, "__doc__", None)
        if name is None:
            name = getattr(fn, "__name__", None) or type(fn).__name__
        super().__init__(name=name, **kwargs)

    def __call__(  # type: ignore[override]
        self,
        *args: Any,
        mapped: bool = False,
        task_args: dict[str, Any] | None = None,
        upstream_tasks: Iterable[Any] | None = None,
        flow: Flow | None = None,
        **kwargs: Any,
    ) -> FunctionTask[P, R]:
        return Task.__call__(
            self,
            *args,
            mapped=mapped,
            task_args=task_args,
            upstream_tasks=upstream_tasks,
            flow=flow,
            **kwargs,
        )

    # Keep Task.__call__ itself (no extra frame): the override above exists for typing.
    if not TYPE_CHECKING:
        __call__ = Task.__call__


@overload
def task(fn: Callable[P, R], /) -> FunctionTask[P, R]: ...


@overload
def task(
    fn: None = None, /, **task_init_kwargs: Any
) -> Callable[[Callable[P, R]], FunctionTask[P, R]]: ...


def task(
    fn: Callable[P, R] | None = None, /, **task_init_kwargs: Any
) -> FunctionTask[P, R] | Callable[[Callable[P, R]], FunctionTask[P, R]]:
    """Turn a function into a :class:`Task`: ``@task`` or ``@task(**options)``.

    Args:
        fn: the function (when used as ``@task``).
        **task_init_kwargs: :class:`Task` options (``name``, ``max_retries``, ...).

    Returns:
        A :class:`FunctionTask`, or a decorator that makes one.

    Raises:
        TaskDefinitionError: invalid options or an unsupported function signature.

    Example:
        >>> from ferroflow import Flow, task
        >>> @task
        ... def inc(x):
        ...     return x + 1
        >>> @task(name="double", tags=["math"])
        ... def dbl(x):
        ...     return 2 * x
        >>> with Flow("example") as flow:
        ...     out = dbl(inc(1))
        >>> out.name, sorted(out.tags)
        ('double', ['math'])
    """
    if fn is None:

        def decorator(fn: Callable[P, R]) -> FunctionTask[P, R]:
            return FunctionTask(fn, **task_init_kwargs)

        return decorator
    return FunctionTask(fn, **task_init_kwargs)


# --------------------------------------------------------------------- Parameter


class _NoDefault:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<no default>"


NO_DEFAULT: Any = _NoDefault()
"""Marks a :class:`Parameter` created without a default."""

_ADAPTERS: weakref.WeakKeyDictionary[Parameter, Any] = weakref.WeakKeyDictionary()


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return repr(tp).replace("typing.", "")


class Parameter(Task):
    """A root task whose value is given when the flow runs.

    Values come from ``flow.run(parameters={...})`` or keyword arguments of ``flow.run``.
    Beyond Prefect Core, a parameter may declare a ``type`` (any annotation pydantic
    understands: ``int``, ``list[str]``, ``Literal["a", "b"]``, a pydantic model, ...);
    values are then validated and coerced, and a bad value is a :class:`ParameterError`
    naming the parameter.

    Args:
        name: the parameter's name (also its slug; unique within a flow).
        default: the value when none is given.
        required: whether a value must be given [``True`` only when there is no default].
        type: the declared type, or ``None`` for any value.
        tags: task tags.

    Raises:
        ParameterError: an empty name, or a ``default`` that fails ``type``.

    Example:
        >>> from ferroflow import Parameter
        >>> n = Parameter("n", default="3", type=int)
        >>> n.default, n.required
        (3, False)
        >>> n.validate_value("7")
        7
        >>> Parameter("path").required
        True
    """

    default: Any
    required: bool
    type: Any

    def __init__(
        self,
        name: str,
        default: Any = NO_DEFAULT,
        required: bool | None = None,
        type: Any = None,
        tags: Iterable[str] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ParameterError(f"a Parameter needs a non-empty string name, got {name!r}")
        has_default = default is not NO_DEFAULT
        self.default = default if has_default else None
        self.required = (not has_default) if required is None else bool(required)
        self.type = type
        super().__init__(name=name, slug=name, tags=tags)
        if type is not None:
            self._adapter()  # an unusable type is an error now, not at run time
            if has_default:
                self.default = self.validate_value(default, what="default")

    def _adapter(self) -> Any:
        adapter = _ADAPTERS.get(self)
        if adapter is None:
            from pydantic import TypeAdapter

            try:
                adapter = TypeAdapter(self.type)
            except Exception as err:
                raise ParameterError(
                    f"parameter {self.name!r}: cannot validate values of type "
                    f"{_type_name(self.type)}: {err}",
                    parameter=self.name,
                ) from None
            _ADAPTERS[self] = adapter
        return adapter

    def validate_value(self, value: Any, what: str = "value") -> Any:
        """Check ``value`` against the declared type and return it coerced.

        Without a declared type the value is returned unchanged.

        Args:
            value: the candidate value.
            what: how to call it in an error message (``"value"``, ``"default"``).

        Raises:
            ParameterError: the value does not fit; the message names the parameter, the
                expected type and what was wrong.

        Example:
            >>> from ferroflow import Parameter
            >>> Parameter("n", type=int).validate_value("7")
            7
            >>> Parameter("n", type=int).validate_value("x")  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ferroflow.exceptions.ParameterError: invalid value for parameter 'n': expected int, ...
        """
        if self.type is None:
            return value
        from pydantic import ValidationError

        try:
            return self._adapter().validate_python(value)
        except ValidationError as err:
            problems = []
            for e in err.errors():
                loc = ".".join(str(p) for p in e.get("loc", ()))
                problems.append(f"{loc}: {e['msg']}" if loc else e["msg"])
            shown = repr(value)
            if len(shown) > 80:
                shown = shown[:77] + "..."
            raise ParameterError(
                f"invalid {what} for parameter {self.name!r}: expected "
                f"{_type_name(self.type)}, got {shown} ({'; '.join(problems)})",
                parameter=self.name,
            ) from None

    def run(self) -> Any:
        """Return the default (the engine supplies the run's actual value)."""
        return self.default

    def __call__(self, flow: Flow | None = None) -> Parameter:  # type: ignore[override]
        """Add the parameter itself (never a copy) to the active flow and return it."""
        flow = self._flow_or_current(flow, "add")
        flow.add_task(self)
        return self

    def copy(self, name: str | None = None, **task_args: Any) -> Parameter:  # type: ignore[override]
        """A copy of the parameter under a new name (parameter names are unique per flow).

        Raises:
            ParameterError: no new name given.
        """
        if not name:
            raise ParameterError(
                f"Parameter {self.name!r}: a copy needs a new name (parameter names are "
                "unique within a flow)",
                parameter=self.name,
            )
        new = Task.copy(self, **task_args)
        new.name = name
        new.slug = name
        return new

    def _normalize_options(self) -> None:
        super()._normalize_options()
        self.slug = self.name

    def __repr__(self) -> str:
        return f"<Parameter: {self.name}>"
