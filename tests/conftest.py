"""Shared fixtures: every behaviour that must not depend on the executor runs on each."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

from ferroflow.executors import LocalExecutor, ThreadExecutor

EXECUTORS = {
    "local": lambda: LocalExecutor(),
    "threads": lambda: ThreadExecutor(max_workers=4),
}


@pytest.fixture(params=sorted(EXECUTORS))
def executor(request: pytest.FixtureRequest) -> object:
    """Each executor in turn."""
    return EXECUTORS[request.param]()


@pytest.fixture(autouse=True)
def _ferroflow_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Every test gets its own FERROFLOW_HOME (a real directory, never ~/.ferroflow)."""
    with tempfile.TemporaryDirectory(prefix="ferroflow-home-") as home:
        monkeypatch.setenv("FERROFLOW_HOME", home)
        yield home
    assert not os.path.exists(home)
