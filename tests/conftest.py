"""Shared fixtures: every behaviour that must not depend on the executor runs on each."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

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
