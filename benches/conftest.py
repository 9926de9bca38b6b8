"""pytest-benchmark set-up for ``pytest benches --benchmark-only``.

Puts this directory on ``sys.path`` (whatever pytest's import mode) so the suites can
share ``_workloads``, whose import points ``FERROFLOW_HOME`` at a throw-away directory
before ferroflow is first used.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import _workloads  # noqa: E402  (sets FERROFLOW_HOME)


def pytest_report_header(config):
    path, debug, _ = _workloads.native_build()
    kind = "DEBUG build: run `make build-release` first" if debug else "release build"
    return [f"ferroflow._native: {path} ({kind})"]
