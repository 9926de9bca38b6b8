"""The typed errors ferroflow raises.

Every error raised because of bad input derives from one base class,
:class:`FerroflowError`, so ``except FerroflowError`` catches them all. Failures of user
code inside a task are never raised: they become the task's ``Failed`` state.

Example:
    >>> from ferroflow.exceptions import CycleError, FerroflowError, GraphError
    >>> err = CycleError(["a", "b"])
    >>> str(err)
    'cycle: a -> b -> a'
    >>> isinstance(err, GraphError) and isinstance(err, FerroflowError)
    True
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = [
    "ApiError",
    "ApprovalError",
    "AuthenticationError",
    "BindError",
    "CycleError",
    "EdgeError",
    "ExecutorError",
    "FerroflowError",
    "FlowContextError",
    "ForbiddenError",
    "GraphError",
    "MappingError",
    "OpsError",
    "OptionCollisionError",
    "ParameterError",
    "PlatformError",
    "RegistrationError",
    "ResultError",
    "ResumeError",
    "ScheduleError",
    "SecretError",
    "SecretKeyError",
    "SecretNotFoundError",
    "ServerUnavailableError",
    "StoreError",
    "TaskDefinitionError",
]


class FerroflowError(Exception):
    """Base class of every error ferroflow raises on bad input.

    Example:
        >>> try:
        ...     raise ExecutorError("cannot reach tcp://scheduler:8786")
        ... except FerroflowError as err:
        ...     print(type(err).__name__)
        ExecutorError
    """


class GraphError(FerroflowError):
    """Base class of the errors raised while a flow's graph is built or validated.

    Example:
        >>> issubclass(CycleError, GraphError)
        True
    """


class CycleError(GraphError):
    """The flow's graph has a cycle.

    Raised at the latest by ``flow.validate()`` / ``flow.run()``, before anything runs.

    Args:
        tasks: the names of the tasks on the cycle, each once, in edge order (the first
            task is not repeated at the end; the message closes the loop itself).
        message: overrides the default message ``"cycle: a -> b -> a"``.

    Attributes:
        tasks: the names of the tasks on the cycle, in edge order.

    Example:
        >>> err = CycleError(["load", "clean"])
        >>> err.tasks
        ['load', 'clean']
        >>> str(err)
        'cycle: load -> clean -> load'
    """

    tasks: list[str]

    def __init__(self, tasks: Iterable[str], message: str | None = None) -> None:
        self.tasks = list(tasks)
        if message is None:
            path = [*self.tasks, self.tasks[0]] if self.tasks else []
            message = "cycle: " + " -> ".join(path)
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.tasks, str(self)))


class BindError(GraphError, TypeError):
    """Arguments bound to a task do not fit its signature.

    Raised when a task is called in a flow (or bound with ``flow.set_dependencies``) with an
    unknown keyword, the same argument twice, too many positional arguments, or when a
    required argument is never bound (reported by ``flow.validate()``). It is also a
    ``TypeError``, like calling a function with bad arguments.

    Example:
        >>> isinstance(BindError("add() got an unexpected keyword argument 'z'"), TypeError)
        True
    """


class EdgeError(GraphError):
    """An edge that the graph cannot hold.

    Raised when it is made: an edge into a ``Parameter``, an edge from a task to itself,
    two edges for the same argument key of one task, or two Parameters with one name.

    Example:
        >>> issubclass(EdgeError, GraphError)
        True
    """


class FlowContextError(FerroflowError):
    """A task was called outside a ``with Flow(...):`` block.

    Calling a task only builds the graph; to run the function directly use ``task.run()``.

    Example:
        >>> str(FlowContextError("call tasks inside `with Flow(...)`"))
        'call tasks inside `with Flow(...)`'
    """


class TaskDefinitionError(FerroflowError, ValueError):
    """Invalid task options, raised when the task is constructed.

    For example ``max_retries`` without ``retry_delay``, a ``retry_on`` that is not an
    exception type, a bare string for ``tags``, a zero or negative ``timeout``, or bad
    trigger bounds. It is also a ``ValueError``.

    Example:
        >>> isinstance(TaskDefinitionError("timeout must be > 0"), ValueError)
        True
    """


class ParameterError(FerroflowError, ValueError):
    """A parameter value is unknown, missing or invalid.

    Raised by ``flow.run`` before anything runs for an unknown parameter name, a missing
    required parameter, or a value that fails the parameter's declared type; and when a
    ``Parameter``'s own default fails its declared type.

    Args:
        message: what went wrong and what to do.
        parameter: the name of the parameter at fault, when there is one.

    Attributes:
        parameter: the name of the parameter at fault, or ``None``.

    Example:
        >>> err = ParameterError("missing required parameter 'n'", parameter="n")
        >>> err.parameter
        'n'
    """

    parameter: str | None

    def __init__(self, message: str, parameter: str | None = None) -> None:
        self.parameter = parameter
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.parameter))


class ResumeError(ParameterError):
    """A resume was asked with parameter values other than the resumed run's.

    A resume reuses the original run's parameters (its restored results were computed
    from them); giving a different value would mix results of two inputs. Start a new
    run instead, or resume without those values.

    Args:
        message: what went wrong and what to do.
        parameters: the names of the parameters whose values differ.

    Attributes:
        parameters: the names of the parameters whose values differ, sorted.

    Example:
        >>> err = ResumeError("cannot resume: 'n' was 100, not 50", parameters=["n"])
        >>> err.parameters, err.parameter
        (['n'], 'n')
    """

    parameters: list[str]

    def __init__(self, message: str, parameters: list[str] | None = None) -> None:
        self.parameters = sorted(parameters or [])
        super().__init__(message, self.parameters[0] if self.parameters else None)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.parameters))


class OptionCollisionError(ParameterError):
    """A keyword of ``flow.run`` names both one of its options and a Parameter of the flow.

    ``flow.run(record=False)`` on a flow with a Parameter named ``record`` is ambiguous;
    pass the parameter's value in ``parameters={"record": ...}`` (then the keyword sets
    the option).

    Example:
        >>> OptionCollisionError("ambiguous", parameter="record").parameter
        'record'
    """


class MappingError(FerroflowError):
    """A mapped call cannot be built, e.g. a constant input that is not a sized sequence.

    At run time an unmappable input is not raised: the mapped task ends ``Failed``.

    Example:
        >>> issubclass(MappingError, FerroflowError)
        True
    """


class ExecutorError(FerroflowError):
    """An executor cannot start or was given bad options (e.g. ``max_workers < 1``,
    an unreachable Dask scheduler).

    Example:
        >>> str(ExecutorError("max_workers must be >= 1, got 0"))
        'max_workers must be >= 1, got 0'
    """


class StoreError(FerroflowError):
    """The run store cannot be used: a corrupt database file, a read-only
    ``FERROFLOW_HOME``, or an unknown run id. The message names the path and what to do.

    Example:
        >>> issubclass(StoreError, FerroflowError)
        True
    """


class ResultError(FerroflowError):
    """A result or target cannot be written or read (bad location template, a path
    outside the result directory, an unknown template key, a serializer failure).

    Example:
        >>> issubclass(ResultError, FerroflowError)
        True
    """


class ApprovalError(FerroflowError):
    """A task run could not be approved: a malformed id, an unknown flow run or task
    run, or a task run that is not paused.

    Example:
        >>> raise ApprovalError("task run 3f2a/4 (deploy) is Success, not Paused")
        Traceback (most recent call last):
        ...
        ferroflow.exceptions.ApprovalError: task run 3f2a/4 (deploy) is Success, not Paused
    """


class ScheduleError(FerroflowError, ValueError):
    """A schedule, clock, filter or adjustment was given a bad argument.

    For example a naive ``start_date`` (no time zone), a bad cron string, a zero or
    negative interval, an ``end_date`` before the ``start_date``, or a filter that is not
    callable. It is also a ``ValueError``.

    Args:
        message: what went wrong and what to do.
        argument: the name of the argument at fault (``"start_date"``, ``"cron"``,
            ``"filters[1]"``...), when there is one.

    Attributes:
        argument: the name of the argument at fault, or ``None``.

    Example:
        >>> err = ScheduleError("start_date is naive", argument="start_date")
        >>> err.argument, isinstance(err, ValueError)
        ('start_date', True)
    """

    argument: str | None

    def __init__(self, message: str, argument: str | None = None) -> None:
        self.argument = argument
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.argument))


class PlatformError(FerroflowError):
    """Base class of the errors of the platform: the server, its database, the client.

    Example:
        >>> issubclass(ApiError, PlatformError)
        True
    """


class ApiError(PlatformError):
    """The server refused a request: an unknown id, a stale state version, a duplicate
    project, a malformed or oversized query. The message is the server's.

    Args:
        message: what the server said.
        errors: every GraphQL error of the answer, as the server sent them.

    Example:
        >>> str(ApiError("no project named 'etl'"))
        "no project named 'etl'"
    """

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = list(errors or [])


class AuthenticationError(ApiError):
    """The server needs a token and got none, or one that is malformed, unknown,
    revoked or expired (HTTP 401, GraphQL error code ``UNAUTHENTICATED``). Set
    ``FERROFLOW_API_KEY`` or pass ``Client(api_key=...)``.

    Example:
        >>> issubclass(AuthenticationError, ApiError)
        True
    """


class ForbiddenError(ApiError):
    """The token's role does not allow what was asked (GraphQL error code
    ``FORBIDDEN``): e.g. a ``read_only`` token trying a mutation.

    Example:
        >>> issubclass(ForbiddenError, ApiError)
        True
    """


class ServerUnavailableError(PlatformError):
    """The server, or the database behind it, cannot be reached. The message names the
    URL and says what to do.

    Example:
        >>> issubclass(ServerUnavailableError, PlatformError)
        True
    """


class RegistrationError(PlatformError):
    """A flow cannot be registered: its file does not load, defines no such flow, or the
    flow does not build (a cycle, an unbound argument).

    Example:
        >>> issubclass(RegistrationError, FerroflowError)
        True
    """


class OpsError(FerroflowError, ValueError):
    """Bad input to the operations commands and settings: a malformed duration
    (``--older-than 30x``), removing a run that is still running, a backfill range that
    ends before it starts, a webhook URL that is not http(s), a negative limit.

    Example:
        >>> issubclass(OpsError, FerroflowError)
        True
    """


class SecretError(FerroflowError, ValueError):
    """A secret cannot be set or read: a bad name, an empty or oversized value. The
    message names the secret, never its value.

    Example:
        >>> issubclass(SecretNotFoundError, SecretError)
        True
    """


class SecretNotFoundError(SecretError):
    """No secret of that name: not on the server, or (locally) no
    ``FERROFLOW__CONTEXT__SECRETS__<NAME>`` / environment variable.

    Example:
        >>> str(SecretNotFoundError("no secret named 'DB_PASSWORD'"))
        "no secret named 'DB_PASSWORD'"
    """


class SecretKeyError(SecretError):
    """The key that encrypts secrets is unusable: malformed, a key file that others may
    read, or not the key the secrets were encrypted with.

    Example:
        >>> issubclass(SecretKeyError, SecretError)
        True
    """
