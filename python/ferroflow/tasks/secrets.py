"""Secret tasks: read a secret inside a flow without it landing anywhere else.

* :class:`FerroflowSecret` ``("NAME")`` returns the value of secret ``NAME``. In a flow
  run started by an agent it asks the server (``secret_value``, allowed only for the
  run the agent holds); anywhere else (a local ``flow.run()``) it reads the
  environment variable ``FERROFLOW__CONTEXT__SECRETS__NAME``.
* :class:`EnvVarSecret` ``("VAR")`` returns the environment variable ``VAR``.

Both are Prefect 1's shapes: tasks whose ``run()`` returns the value. They never
checkpoint, cache or target (those options are refused), so the value is never
written as a result; and the moment a value is read it is masked for the rest of the
process (:func:`ferroflow.runtime.mask_secret`): every state message and log line
recorded from then on shows ``****`` in its place (a downstream task that fails with
the value in its message, or logs it, included). A missing secret is a
:class:`~ferroflow.exceptions.SecretNotFoundError` that names the secret (never a
value); the task is then ``Failed`` with it.

Secret tasks run in the flow-run process on every executor (``run_in_driver``): with
the process or Dask executor too, the driver executes a secret task itself, as the
local executor would (states, retries, handlers and timeouts as usual), and only its
downstream tasks go to the workers. So :class:`FerroflowSecret` reads the value with
the flow-run process's credentials (under an agent, for the run the agent holds, also
with ``--dask-address``; the workers never get the API key), and the value is masked in
the driver before any task that uses it runs; the executors send the masked values to
their workers before their next task run, so a worker's own console masks them too.

Example:
    >>> import os
    >>> from ferroflow import Flow, task
    >>> from ferroflow.tasks.secrets import FerroflowSecret
    >>> os.environ["FERROFLOW__CONTEXT__SECRETS__API_TOKEN"] = "doctest-t0ken"
    >>> @task
    ... def length(token: str) -> int:
    ...     return len(token)
    >>> with Flow("uses-a-secret") as flow:
    ...     n = length(FerroflowSecret("API_TOKEN"))
    >>> flow.run().result[n].result
    13
    >>> del os.environ["FERROFLOW__CONTEXT__SECRETS__API_TOKEN"]
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from ferroflow.exceptions import ApiError, SecretError, SecretNotFoundError, TaskDefinitionError
from ferroflow.runtime import mask_secret
from ferroflow.task import Task

__all__ = ["LOCAL_PREFIX", "SERVER_RUN_ENV", "EnvVarSecret", "FerroflowSecret", "SecretBase"]

#: Locally, secret ``NAME`` is the environment variable ``LOCAL_PREFIX + NAME``.
LOCAL_PREFIX = "FERROFLOW__CONTEXT__SECRETS__"

#: Set by the agent's flow-run process (``ferroflow.agent_run``): the server's id of the
#: flow run, for which :class:`FerroflowSecret` asks the server (``$FERROFLOW_API_URL``).
SERVER_RUN_ENV = "FERROFLOW_SERVER_FLOW_RUN_ID"

# Options that would write the value somewhere: refused.
_REFUSED = ("cache_for", "cache_validator", "cache_key", "target", "result")


class SecretBase(Task):
    """A task that returns a secret value: never checkpointed, cached or targeted, and
    run in the flow-run process whatever the executor (``run_in_driver``).

    Args:
        name: the secret's name (also the task's name unless ``task_name`` is given).
        task_name: the task's name [``name``].
        **kwargs: other :class:`~ferroflow.Task` options (retries, tags, ...); the ones
            that write results (``checkpoint=True``, ``cache_for``, ``target``,
            ``result``, ...) raise TaskDefinitionError.
    """

    #: Executors that send tasks elsewhere (processes, Dask) run this task's runs in
    #: the driver: the value is read with its credentials and masked there first.
    run_in_driver: ClassVar[bool] = True

    def __init__(self, name: str, task_name: str | None = None, **kwargs: Any) -> None:
        if not isinstance(name, str) or not name:
            raise TaskDefinitionError(f"{type(self).__name__} needs a name, got {name!r}")
        given = sorted(k for k in _REFUSED if kwargs.get(k) is not None)
        if kwargs.get("checkpoint"):
            given.append("checkpoint")
        if given:
            raise TaskDefinitionError(
                f"{type(self).__name__}({name!r}) may not have {', '.join(given)}: a "
                "secret's value is never checkpointed, cached or written as a result"
            )
        kwargs["checkpoint"] = False
        self.secret_name = name
        super().__init__(name=task_name or name, **kwargs)

    def _got(self, value: str) -> str:
        mask_secret(value)
        return value


class FerroflowSecret(SecretBase):
    """The value of secret ``name``: from the server in a run started by an agent, else
    from ``$FERROFLOW__CONTEXT__SECRETS__<name>``.

    Example:
        >>> import os
        >>> os.environ["FERROFLOW__CONTEXT__SECRETS__DB_PASSWORD"] = "doctest-pw"
        >>> FerroflowSecret("DB_PASSWORD").run()
        'doctest-pw'
        >>> del os.environ["FERROFLOW__CONTEXT__SECRETS__DB_PASSWORD"]
    """

    def run(self, name: str | None = None) -> str:
        """Read the secret (``name`` overrides the one given at creation).

        Raises:
            SecretNotFoundError: no such secret (the message names it).
            SecretError: the server refused to give it to this run.
        """
        secret = name or self.secret_name
        run_id = os.environ.get(SERVER_RUN_ENV)
        if run_id:
            return self._got(_from_server(run_id, secret))
        value = os.environ.get(LOCAL_PREFIX + secret)
        if value is None:
            raise SecretNotFoundError(
                f"secret {secret!r} is not set: without a server it is read from the "
                f"environment variable {LOCAL_PREFIX}{secret}"
            )
        return self._got(value)


def _from_server(run_id: str, name: str) -> str:
    from ferroflow.client import Client

    try:
        return Client().secret_value(run_id, name)
    except ApiError as exc:
        message = str(exc)
        if message.startswith("no secret named"):
            raise SecretNotFoundError(f"{message} on the server") from None
        raise SecretError(f"the server did not give secret {name!r}: {message}") from None


class EnvVarSecret(SecretBase):
    """The value of environment variable ``name``, as a secret (masked once read).

    Args:
        name: the variable.
        raise_if_missing: a missing variable fails the task with SecretNotFoundError
            [True]; False returns None instead.
        **kwargs: as :class:`SecretBase`.

    Example:
        >>> import os
        >>> os.environ["MY_TOKEN"] = "doctest-token"
        >>> EnvVarSecret("MY_TOKEN").run()
        'doctest-token'
        >>> del os.environ["MY_TOKEN"]
    """

    def __init__(self, name: str, raise_if_missing: bool = True, **kwargs: Any) -> None:
        self.raise_if_missing = raise_if_missing
        super().__init__(name, **kwargs)

    def run(self, name: str | None = None) -> str | None:
        """Read the variable (``name`` overrides the one given at creation).

        Raises:
            SecretNotFoundError: it is not set (and ``raise_if_missing``).
        """
        var = name or self.secret_name
        value = os.environ.get(var)
        if value is None:
            if self.raise_if_missing:
                raise SecretNotFoundError(f"the environment variable {var!r} is not set")
            return None
        return self._got(value)
