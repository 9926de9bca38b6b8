"""Shared fixtures: every behaviour that must not depend on the executor runs on each."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from _dask import local_cluster
from ferroflow.executors import LocalExecutor, ProcessExecutor, ThreadExecutor

EXECUTORS = ["dask", "local", "processes", "threads"]


@pytest.fixture(scope="session")
def dask_cluster() -> Iterator[object]:
    """One real Dask LocalCluster (two worker processes, loopback) for the session."""
    with local_cluster() as cluster:
        yield cluster


@pytest.fixture(params=EXECUTORS)
def executor(request: pytest.FixtureRequest) -> object:
    """Each executor in turn: local, threads, processes and a real Dask cluster."""
    kind = request.param
    if kind == "local":
        return LocalExecutor()
    if kind == "threads":
        return ThreadExecutor(max_workers=4)
    if kind == "processes":
        return ProcessExecutor(max_workers=2)
    from ferroflow.executors import DaskExecutor

    cluster = request.getfixturevalue("dask_cluster")
    return DaskExecutor(address=cluster.scheduler_address)  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _ferroflow_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Every test gets its own FERROFLOW_HOME (a real directory, never ~/.ferroflow)."""
    with tempfile.TemporaryDirectory(prefix="ferroflow-home-") as home:
        monkeypatch.setenv("FERROFLOW_HOME", home)
        yield home
    assert not os.path.exists(home)


# A real PostgreSQL for the server's tests (session-scoped; started on first use).
from _postgres import postgres_server  # noqa: E402, F401


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The server's database on each backend: the run store at FERROFLOW_HOME, or a fresh
    database on the session's PostgreSQL (a module may define its own ``db``)."""
    from ferroflow.server.database import open_database  # the server loads on first use

    if request.param == "sqlite":
        database = open_database()
    else:
        database = open_database(request.getfixturevalue("postgres_server").create_database())
    try:
        yield database
    finally:
        database.close()
