"""The small tasks many test modules build their flows from.

Defined once, at module level in an importable module: the process and Dask executors'
workers find them by reference (the tests put this directory on their PYTHONPATH).
"""

from __future__ import annotations

from ferroflow import task


@task
def inc(x: int) -> int:
    return x + 1


@task
def add(x: int, y: int) -> int:
    return x + y


@task
def total(xs: list[int]) -> int:
    return sum(xs)


class Ledger:
    """An append-only record that tasks write on any executor (a file: worker
    processes and Dask workers append to it too), read back by the test."""

    def __init__(self, path: object) -> None:
        self.path = str(path)

    def add(self, *value: object) -> None:
        """Append one entry (a tuple of JSON values; one value is stored alone)."""
        import json

        entry = value[0] if len(value) == 1 else list(value)
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def items(self) -> list[object]:
        """Every entry, in the order written (tuples come back as tuples)."""
        import json
        import os

        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            out = [json.loads(line) for line in f if line.strip()]
        return [tuple(x) if isinstance(x, list) else x for x in out]
