"""`cascadeq demo`: the held-out digits split through the live system, three ways.

Starts its own Redis (unless REDIS_URL is set), one router and two worker processes,
and measures small-only, large-only and the cascade on the same requests.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cascadeq.bench import harness
from cascadeq.bench.harness import System, figures, live_system, run_burst
from cascadeq.config.settings import Settings

TASK = "digits"
WORKERS = 2  # worker processes; `cascadeq cost` divides throughput by it


def progress(line: str) -> None:
    harness.progress("demo", line)


@dataclass(frozen=True)
class Row:
    strategy: str
    requests: int
    accuracy: float
    large_share: float
    large_calls: int
    throughput_rps: float
    p50_ms: float
    p99_ms: float
    relative_cost: float
    compute_us: float  # per answered request, the models' compute only
    total_cpu_us: float | None  # per answered request, every process's CPU (None: no psutil)
    roles_us: dict[str, float]
    errors: int


ROW_FIGURES = (
    "requests",
    "accuracy",
    "large_share",
    "large_calls",
    "throughput_rps",
    "p50_ms",
    "p99_ms",
    "relative_cost",
    "compute_us",
    "total_cpu_us",
    "roles_us",
    "errors",
)


def run_strategies(system: System, x: np.ndarray, y: np.ndarray) -> list[Row]:
    from cascadeq.producer import Producer, Request  # noqa: PLC0415 - the core imports roles lazily

    catalog = system.catalog()
    task = catalog.tasks[TASK]
    small, large = task.cascade[0].model, task.cascade[-1].model
    strategies: list[tuple[str, dict[str, Any]]] = [
        ("small-only", {"model": small}),
        ("large-only", {"model": large}),
        ("cascade", {"task": TASK}),
    ]
    rows = []
    with Producer(system.url, settings=system.settings, catalog=catalog) as client:
        for _, target in strategies:  # warm-up: proves router and workers are serving
            client.wait_many(client.submit_many([Request({"input": x[:1]}, **target)]), 120)
        for name, target in strategies:
            progress(f"{name}: {len(x)} requests")
            requests = [Request({"input": x[i : i + 1]}, **target) for i in range(len(x))]
            with harness.cpu_spent(system) as spent:
                run = run_burst(client, requests, y)
            row = figures(run, catalog, large, spent)
            rows.append(Row(strategy=name, **{f: row[f] for f in ROW_FIGURES}))
    return rows


def render(rows: list[Row]) -> str:
    head = (
        f"{'strategy':<12}{'requests':>9}{'accuracy':>10}{'large%':>8}{'large':>7}"
        f"{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'compute':>8}{'total':>7}{'cpu us':>8}"
        f"{'errors':>8}"
    )
    base = next((r.total_cpu_us for r in rows if r.strategy == "large-only"), None)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.strategy:<12}{r.requests:>9}{r.accuracy:>10.4f}"
            f"{r.large_share * 100:>7.1f}%{r.large_calls:>7}{r.throughput_rps:>9.0f}"
            f"{r.p50_ms:>9.1f}{r.p99_ms:>9.1f}{r.relative_cost:>8.2f}"
            f"{_relative(r.total_cpu_us, base):>7}{_us(r.total_cpu_us):>8}{r.errors:>8}"
        )
    lines.append(
        "compute: the models' per-sample compute relative to large-only (compute only: the "
        "queue's own CPU is not in it)"
    )
    lines.append(
        "total: CPU per answered request of every process (producer, router, workers, Redis; "
        "compute included) relative to large-only; cpu us: the same in µs"
    )
    return "\n".join(lines)


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _relative(value: float | None, base: float | None) -> str:
    return "-" if value is None or not base else f"{value / base:.2f}"


def main(settings: Settings, models_dir: Path, *, as_json: bool) -> int:
    started = time.perf_counter()
    try:
        from cascadeq.examples import digits  # noqa: PLC0415
    except ImportError as exc:
        print(
            f"the demo builds models and needs: pip install 'cascadeq[demo]' ({exc})",
            file=sys.stderr,
        )
        return 2
    catalog_path = digits.ensure_built(models_dir, log=progress)
    split = np.load(models_dir / "digits_test.npz")
    x, y = split["X"].astype(np.float32), split["y"]
    with live_system(settings, catalog_path, "demo", workers=WORKERS) as system:
        rows = run_strategies(system, x, y)
        memory = system.memory()
        catalog = system.catalog()
    print(render(rows))
    progress(f"done in {time.perf_counter() - started:.1f}s")
    if as_json:
        large = catalog.tasks[TASK].cascade[-1].model
        doc = {
            "rows": [asdict(r) for r in rows],
            "workers": WORKERS,
            "models": memory,
            "large": large,
        }
        print(json.dumps(doc))
    return 0
