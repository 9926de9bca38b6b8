"""What masking secret values costs the server (issue 14): one ``write_run_logs`` batch
of 10,000 lines into a SQLite server store, best of 5, through the models and through
the GraphQL mutation, with

- masking off (``models._masker`` made to give None: the code before masking),
- no secret stored (one read of the empty ``secrets`` table per batch),
- 1 secret, no line holds its value,
- 1 secret, every line holds it (each is rewritten),
- 10 secrets, no line holds a value.

Nothing here is a test: it prints the figures. The masking itself is Python, so a debug
build measures it as well as a release build::

    .venv/bin/python benches/secret_mask_bench.py [--lines N] [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ferroflow-mask-bench-") as home:
        os.environ["FERROFLOW_HOME"] = home
        os.environ.pop("FERROFLOW_SECRET_KEY", None)
        run(Path(home), args.lines, args.repeat)


def run(home: Path, n: int, repeat: int) -> None:
    from ferroflow.server import models
    from ferroflow.server.app import execute
    from ferroflow.server.database import SqliteDatabase
    from ferroflow.server.secrets import delete_secret, set_secret

    db = SqliteDatabase(home / "ferroflow.db")
    models.create_project(db, "p")
    structure = {"tasks": [], "edges": [], "parameters": [], "schedule": None}
    flow = models.register_flow(
        db,
        project_name="p",
        name="f",
        structure=structure,
        storage={"type": "module", "module": "m"},
    )
    run_id = models.create_flow_run(db, flow_id=flow["id"])["id"]
    value = "s3cr3t-" + "0123456789abcdef" * 2

    def lines(holding: bool) -> list[dict[str, Any]]:
        tail = f" with {value}" if holding else ""
        return [
            {"flow_run_id": run_id, "message": f"line {i}: processed record {i}{tail}"}
            for i in range(n)
        ]

    mutation = "mutation($i: WriteRunLogsInput!) { write_run_logs(input: $i) { success } }"

    real = models._masker

    def off(db: Any) -> None:
        return None

    def with_masker(masker: Any, fn: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            models._masker = masker  # type: ignore[assignment]
            try:
                return fn()
            finally:
                models._masker = real  # type: ignore[assignment]

        return call

    def setup_secrets(k: int) -> Callable[[], None]:
        def go() -> None:
            for name in [r["name"] for r in db.fetchall("SELECT name FROM secrets")]:
                delete_secret(db, name)
            for i in range(k):
                v = value if i == 0 else f"other-secret-value-{i}-" + "x" * 16
                set_secret(db, f"S{i}", v)

        return go

    cases = [
        ("masking off (before)", 0, False, off),
        ("no secret stored", 0, False, real),
        ("1 secret, no line holds it", 1, False, real),
        ("1 secret, every line holds it", 1, True, real),
        ("10 secrets, no line holds one", 10, False, real),
    ]
    print(f"write_run_logs, {n:,} lines per batch, best of {repeat} (SQLite, {home})")
    print("(cases interleaved; 'mask only' is the masking of the batch's messages alone)")
    batches = {False: lines(False), True: lines(True)}
    models.write_run_logs(db, batches[False])  # warm up
    best: dict[str, list[float]] = {c[0]: [1e9, 1e9, 1e9] for c in cases}
    for _ in range(repeat):
        for label, k, holding, masker in cases:
            setup_secrets(k)()
            batch = batches[holding]
            timings = []
            for fn in (
                with_masker(masker, lambda b=batch: models.write_run_logs(db, b)),  # type: ignore[misc]
                with_masker(masker, lambda b=batch: execute(db, mutation, {"i": {"logs": b}})),  # type: ignore[misc]
            ):
                t0 = time.perf_counter()
                fn()
                timings.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            mask = masker(db)
            if mask is not None:
                mask.batch([line["message"] for line in batch])
            timings.append(time.perf_counter() - t0)
            best[label] = [min(a, b) for a, b in zip(best[label], timings, strict=True)]
            db.execute("DELETE FROM logs")  # every case writes into the same table size
    for label, _k, _h, _m in cases:
        direct, api, only = best[label]
        print(
            f"{label:<32} models {direct * 1e3:7.1f} ms   graphql {api * 1e3:7.1f} ms   "
            f"mask only {only * 1e3:6.2f} ms"
        )
    setup_secrets(0)()
    rows = db.fetchone("SELECT COUNT(*) AS n FROM logs WHERE message LIKE ?", (f"%{value}%",))
    assert rows is not None and rows["n"] == 0, "a value was stored"
    db.close()


if __name__ == "__main__":
    main()
