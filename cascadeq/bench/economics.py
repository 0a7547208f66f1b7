"""`cascadeq bench cascade`: large-only against the calibrated cascade on the held-out
digits split (the demo's comparison, through the same harness.figures), sent as one
burst of the split repeated, so throughput is not a 360-request blip.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cascadeq.bench.harness import figures, run_burst
from cascadeq.bench.workbench import LARGE, Bench, tag

TASK = "digits"
FIELDS = ("requests", "accuracy", "large_share", "relative_cost", "throughput_rps", "p50_ms")


def measure(bench: Bench) -> list[dict[str, Any]]:
    from cascadeq.producer import Request  # noqa: PLC0415 - the core imports roles lazily

    test = np.load(bench.models_dir / "digits_test.npz")
    x = np.tile(test["X"], (bench.scale.cascade_repeats, 1)).astype(np.float32)
    y = np.tile(test["y"], bench.scale.cascade_repeats)
    catalog = bench.catalog()
    rows = []
    targets: tuple[tuple[str, dict[str, Any]], ...] = (
        ("large-only", {"model": LARGE}),
        ("cascade", {"task": TASK}),
    )
    for name, target in targets:
        reqs = [Request({"input": x[i : i + 1]}, **target) for i in range(len(x))]
        row = figures(run_burst(bench.client, reqs, y), catalog, LARGE)
        rows.append({"strategy": name, **{k: row[k] for k in (*FIELDS, "p99_ms", "lost")}})
        tag(
            f"cascade economics {name:<10}: accuracy {row['accuracy']:.4f}  "
            f"large {row['large_share']:.1%}  cost {row['relative_cost']:.3f}  "
            f"{row['throughput_rps']:.0f} req/s"
        )
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    large, cascade = rows
    return {
        "accuracy": cascade["accuracy"],
        "large_only_accuracy": large["accuracy"],
        "relative_cost": cascade["relative_cost"],
        "throughput_rps": cascade["throughput_rps"],
        "large_only_throughput_rps": large["throughput_rps"],
        "large_share": cascade["large_share"],
    }


def render(rows: list[dict[str, Any]]) -> str:
    head = f"{'strategy':<12}{'requests':>9}{'accuracy':>9}{'large%':>8}{'compute':>8}{'req/s':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['strategy']:<12}{r['requests']:>9}{r['accuracy']:>9.4f}"
            f"{r['large_share'] * 100:>7.1f}%{r['relative_cost']:>8.3f}{r['throughput_rps']:>8.0f}"
        )
    return "\n".join(lines)
