"""A small ETL flow that shows what ferroflow does when things go wrong.

- ``Parameter``s choose how many records to load and how strict to be;
- ``fetch`` fails on its first attempt and is retried;
- the records fan out over a map, and the ``case`` branch for strict mode is skipped;
- a reduce fans back in and a report is built from every branch.

Run it with ``make demo`` (or ``python examples/demo.py``), or through the command line:
``ferroflow run examples/demo.py --param n=50`` (live progress, a summary, the run recorded)
and ``ferroflow visualize examples/demo.py -o demo.dot`` (its graph).
"""

from __future__ import annotations

import random
import time
from datetime import timedelta

from ferroflow import Flow, Parameter, case, context, get_run_logger, merge, task
from ferroflow.states import State

ATTEMPTS: dict[str, int] = {}


@task(max_retries=2, retry_delay=timedelta(milliseconds=100))
def fetch(n: int) -> list[dict[str, float]]:
    """Pretend to call a flaky API: the first attempt times out."""
    ATTEMPTS["fetch"] = context.task_run_count
    if context.task_run_count == 1:
        raise ConnectionError("upstream API timed out")
    rng = random.Random(42)
    return [{"id": i, "amount": round(rng.uniform(-5, 100), 2)} for i in range(n)]


@task
def clean(record: dict[str, float]) -> float:
    """Negative amounts are refunds: count them as zero."""
    return max(0.0, record["amount"])


@task
def total(amounts: list[float]) -> float:
    """Fan in: one number from every mapped branch."""
    return round(sum(amounts), 2)


@task
def is_strict(strict: bool) -> bool:
    return strict


@task
def audit(amount: float) -> str:
    """Only runs in strict mode."""
    get_run_logger().info("auditing %.2f", amount)
    return f"audited {amount:.2f}"


@task
def lenient(amount: float) -> str:
    return f"accepted {amount:.2f} without audit"


@task
def report(verdict: str, n: int) -> str:
    return f"{n} records: {verdict}"


def build() -> Flow:
    with Flow("demo-etl") as flow:
        n = Parameter("n", default=1000, type=int)
        strict = Parameter("strict", default=False, type=bool)
        records = fetch(n)
        amounts = clean.map(records)
        money = total(amounts)
        strict_mode = is_strict(strict)
        with case(strict_mode, True):
            audited = audit(money)
        with case(strict_mode, False):
            accepted = lenient(money)
        verdict = merge(audited, accepted)
        report(verdict, n)
    return flow


# At module level, so that ``ferroflow run`` and ``ferroflow visualize`` find it.
flow = build()


def summarize(flow: Flow, state: State, seconds: float) -> None:
    print(f"flow {flow.name!r} finished {type(state).__name__} in {seconds * 1000:.1f} ms")
    print(f"  {state.message}")
    print()
    print(f"  {'task':<22} {'state':<14} result / message")
    for t in flow.sorted_tasks():
        s = state.result[t]
        if s.is_mapped():
            kinds: dict[str, int] = {}
            for child in s.map_states:
                kinds[type(child).__name__] = kinds.get(type(child).__name__, 0) + 1
            shown = ", ".join(f"{v} {k}" for k, v in sorted(kinds.items()))
            detail = f"{len(s.map_states)} children ({shown})"
        elif s.is_skipped():
            detail = s.message or "skipped"
        else:
            value = s.result
            detail = repr(value) if not isinstance(value, list) else f"list of {len(value)}"
            if len(detail) > 50:
                detail = detail[:47] + "..."
        print(f"  {t.name:<22} {type(s).__name__:<14} {detail}")
    print()
    print(f"  fetch ran {ATTEMPTS.get('fetch', 0)} times (one retry after a failure)")


def main() -> None:
    start = time.perf_counter()
    state = flow.run(n=1000)
    summarize(flow, state, time.perf_counter() - start)
    if not state.is_successful():
        raise SystemExit(1)


if __name__ == "__main__":
    main()
