"""The examples in the docstrings and in README.md run, and say what they print.

Docstring examples run as doctests (``ELLIPSIS``), every module of the package; README's
``python`` blocks run in order in one namespace, in a temporary directory, and each
``print(...)  # text`` line must print ``text``. A block right after an
``<!-- not run: why -->`` comment is left out (only for examples that need something that
cannot exist here, e.g. a run id of the reader's store).
"""

from __future__ import annotations

import contextlib
import doctest
import importlib
import io
import pkgutil
import re
from pathlib import Path

import pytest

import ferroflow

ROOT = Path(__file__).resolve().parent.parent
MODULES = [
    "ferroflow",
    *sorted(
        m.name
        for m in pkgutil.walk_packages(ferroflow.__path__, "ferroflow.")
        if "._" not in m.name
    ),
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=True)
    assert result.failed == 0, out.getvalue()


def readme_blocks() -> list[tuple[int, str]]:
    """The README's ``python`` blocks to run, with their line numbers."""
    text = (ROOT / "README.md").read_text()
    blocks = []
    for m in re.finditer(r"(<!-- not run:[^>]*-->\s*)?```python\n(.*?)```", text, re.S):
        if m.group(1) is None:
            blocks.append((text.count("\n", 0, m.start(2)) + 1, m.group(2)))
    return blocks


def test_readme_examples_run_and_print_what_they_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme"}
    blocks = readme_blocks()
    assert len(blocks) >= 4
    for line, code in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"README.md:{line}", "exec"), namespace)
        printed = out.getvalue()
        for said in re.findall(r"^\s*print\(.*\)\s*#\s*(.+)$", code, re.M):
            assert said.strip() in printed, f"README.md:{line}: {said!r} not in {printed!r}"
