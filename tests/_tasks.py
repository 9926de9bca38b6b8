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
