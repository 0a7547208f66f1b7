"""`cascadeq bench latency`: end-to-end latency of the small model under open-loop load at
fractions of its measured capacity (the saturating rate of the same run).

Open loop (harness.run_paced): request i is due at i / rate whatever came back; what is
due goes in one submit call. Beside the offered rate, the completed rate (requests over
the time to the last result) shows whether the system kept up. Latency is the result's
total_ms (submit to result stored; delivery to the waiter is not in it), with its parts:
route, queue, batch wait, compute.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cascadeq.bench.harness import run_paced
from cascadeq.bench.workbench import SMALL, Bench, burst, ok_rps, requests, tag

PARTS = ("route_ms", "queue_ms", "batch_wait_ms", "compute_ms")


def capacity(bench: Bench) -> float:
    """Small-model saturating throughput, when no other part of the run measured it."""
    return ok_rps(burst(bench, SMALL, bench.scale.saturate[SMALL]))


def level(bench: Bench, fraction: float, cap: float) -> dict[str, Any]:
    rate = fraction * cap
    n = max(30, int(rate * bench.scale.latency_s))
    run = run_paced(bench.client, requests(SMALL, bench.inputs[SMALL], n), np.zeros(n), rate)
    ok = [r for r in run.results if r.ok]
    totals = np.array([r.timings.get("total_ms", 0.0) for r in ok] or [0.0])
    row: dict[str, Any] = {
        "fraction": fraction,
        "offered_rps": round(rate, 1),
        "completed_rps": round(n / run.seconds, 1),
        "requests": n,
        "p50_ms": round(float(np.percentile(totals, 50)), 3),
        "p95_ms": round(float(np.percentile(totals, 95)), 3),
        "p99_ms": round(float(np.percentile(totals, 99)), 3),
        "mean_batch": round(float(np.mean([r.batch_size for r in ok] or [0])), 2),
        "lost": run.lost,
    }
    for part in PARTS:
        values = np.array([r.timings.get(part, 0.0) for r in ok] or [0.0])
        row[part] = {
            "mean": round(float(values.mean()), 3),
            "p50": round(float(np.percentile(values, 50)), 3),
        }
    tag(
        f"latency at {fraction:.0%} ({rate:.0f}/s offered, {row['completed_rps']:.0f}/s done): "
        f"p50 {row['p50_ms']:.2f}  p95 {row['p95_ms']:.2f}  p99 {row['p99_ms']:.2f} ms"
    )
    return row


def measure(bench: Bench, cap: float) -> list[dict[str, Any]]:
    return [level(bench, fraction, cap) for fraction in bench.scale.latency_levels]


def summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The JSON's `latency`: keyed by percent of capacity."""
    return {
        str(round(r["fraction"] * 100)): {k: r[k] for k in ("p50_ms", "p95_ms", "p99_ms")}
        for r in rows
    }


def render(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'load':>5}{'offered/s':>10}{'completed/s':>12}{'p50':>8}{'p95':>8}{'p99':>8}"
        f"{'batch':>7}  mean (p50) ms: route, queue, batch wait, compute"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        parts = ", ".join(f"{r[p]['mean']:.2f} ({r[p]['p50']:.2f})" for p in PARTS)
        lines.append(
            f"{r['fraction']:>5.0%}{r['offered_rps']:>10.0f}{r['completed_rps']:>12.0f}"
            f"{r['p50_ms']:>8.2f}{r['p95_ms']:>8.2f}{r['p99_ms']:>8.2f}{r['mean_batch']:>7.1f}"
            f"  {parts}"
        )
    return "\n".join(lines)
