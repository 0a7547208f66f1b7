"""`cascadeq bench cascade`: what a cascade really costs, four ways side by side.

Large-only, the cascade through the queue, the cascade escalating inside the worker
(``escalate = "local"``; the bench's one worker process serves every model) and with
``escalate = "auto"`` (inside the worker where that is the cheaper way), on the
held-out digits split sent as one burst of the split repeated; then the same for the
digits small model in front of the heavy MLP. Cost per answered request is reported
twice: the models' compute (the catalog's per-sample costs) and the total, the CPU every
process spent (producer, router, worker, Redis; psutil and INFO cpu, as `bench overhead`
measures it). Escalated requests' latency is compared at 10% of the cascade's capacity,
where a queued hop's batch window, not a queue, is what they wait for.

The machine's speed drifts minute to minute, so the ways run in turn, round after round
(``Scale.cascade_rounds``; every other round in reverse order, so no way always runs
first), and each way's row is its median round: every way samples the drift alike, and
a figure is never one way's lucky minute against another's slow one.

Each pair also runs its first model alone (``small-only``): one hop through the queue at
almost no compute, the floor every cascade over this queue pays per request. That floor
plus the large model's compute for the share that escalates, over large-only's total,
is the least ratio any threshold or escalation path can reach on this machine
(``*reachable_vs_large_only``): where it is above a target, only a cheaper queue meets it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cascadeq.bench.harness import cpu_spent, figures, run_burst, run_paced
from cascadeq.bench.workbench import (
    AUTO,
    DIGITS,
    HEAVY,
    HEAVY_PAIR,
    LARGE,
    LOCAL,
    SMALL,
    Bench,
    local_available,
    tag,
)

TASK = DIGITS
LOW_LOAD = 0.10  # of the queued cascade's saturating rate
FIELDS = (
    "requests", "accuracy", "large_share", "relative_cost", "compute_us", "total_cpu_us",
    "roles_us", "throughput_rps", "p50_ms", "p99_ms", "escalated", "escalated_p50_ms",
    "escalated_p99_ms", "lost",
)  # fmt: skip
NOT_AVAILABLE = "not available"
LOCAL_WAYS = ("cascade-local", "cascade-auto")  # need a catalog that takes escalate


def pairs() -> tuple[tuple[str, str, str, str], ...]:
    """(pair name, its first model, its large model, its task)."""
    return (("digits", SMALL, LARGE, TASK), ("heavy", SMALL, HEAVY, HEAVY_PAIR))


def ways(first: str, large: str, task: str) -> tuple[tuple[str, dict[str, Any]], ...]:
    return (
        ("small-only", {"model": first}),  # the queue's floor: one hop, ~no compute
        ("large-only", {"model": large}),
        ("cascade", {"task": task}),
        ("cascade-local", {"task": task + LOCAL}),
        ("cascade-auto", {"task": task + AUTO}),
    )


def _split(bench: Bench) -> tuple[np.ndarray, np.ndarray]:
    test = np.load(bench.models_dir / "digits_test.npz")
    x = np.tile(test["X"], (bench.scale.cascade_repeats, 1)).astype(np.float32)
    return x, np.tile(test["y"], bench.scale.cascade_repeats)


def _row(bench: Bench, pair: str, way: str, target: dict[str, Any], large: str) -> dict[str, Any]:
    from cascadeq.producer import Request  # noqa: PLC0415 - the core imports roles lazily

    x, y = _split(bench)
    reqs = [Request({"input": x[i : i + 1]}, **target) for i in range(len(x))]
    with cpu_spent(bench.system) as spent:
        run = run_burst(bench.client, reqs, y)
    row = figures(run, bench.catalog(), large, spent)
    total = row["total_cpu_us"]
    tag(
        f"cascade {pair} {way:<13}: accuracy {row['accuracy']:.4f}  large "
        f"{row['large_share']:.1%}  compute {row['compute_us']:.1f} us  total "
        f"{'-' if total is None else f'{total:.1f}'} us CPU  {row['throughput_rps']:.0f} req/s"
    )
    return {"pair": pair, "strategy": way, "available": True, **{k: row[k] for k in FIELDS}}


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """A way's row: the round of median total CPU (the lower one of an even count), with
    every round's total beside it; the first round where no CPU was measured."""
    totals = [r["total_cpu_us"] for r in rounds]
    if any(t is None for t in totals):
        return {**rounds[0], "rounds": len(rounds)}
    ranked = sorted(range(len(rounds)), key=lambda i: float(totals[i]))
    return {**rounds[ranked[(len(rounds) - 1) // 2]], "rounds": len(rounds),
            "total_cpu_us_rounds": totals}  # fmt: skip


def _escalated_p50(bench: Bench, task: str, rate: float, large: str) -> float:
    """Escalated requests' p50 under an open-loop load of ``rate``."""
    from cascadeq.producer import Request  # noqa: PLC0415

    x, y = _split(bench)
    n = max(50, int(rate * bench.scale.latency_s * 2))
    reqs = [Request({"input": x[i % len(x)][None]}, task=task) for i in range(n)]
    run = run_paced(bench.client, reqs, y[np.arange(n) % len(y)], rate)
    p50 = figures(run, bench.catalog(), large)["escalated_p50_ms"]
    return float("nan") if p50 is None else float(p50)


def measure(bench: Bench) -> list[dict[str, Any]]:
    """Every pair's ways, in turn for each round (every other one reversed); each way's
    row is its median round."""
    local = local_available(bench.catalog())
    plan = [
        (pair, way, target, large)
        for pair, first, large, task in pairs()
        for way, target in ways(first, large, task)
    ]
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for n in range(bench.scale.cascade_rounds):
        tag(f"cascade round {n + 1} of {bench.scale.cascade_rounds}")
        for pair, way, target, large in plan if n % 2 == 0 else plan[::-1]:
            if local or way not in LOCAL_WAYS:
                runs.setdefault((pair, way), []).append(_row(bench, pair, way, target, large))
    rows: list[dict[str, Any]] = []
    for pair, way, _, _ in plan:
        if (pair, way) in runs:
            rows.append(median_round(runs[(pair, way)]))
        else:
            rows.append({"pair": pair, "strategy": way, "available": False})
            tag(f"cascade {pair} {way}: {NOT_AVAILABLE} (the catalog refuses escalate)")
    return rows


def low_load(bench: Bench, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Escalated p50 at LOW_LOAD of the queued digits cascade's burst rate, both ways, in
    turn for each round; each way's figure is the median of its rounds."""
    queued = next(r for r in rows if r["pair"] == "digits" and r["strategy"] == "cascade")
    rate = max(1.0, LOW_LOAD * float(queued["throughput_rps"]))
    out: dict[str, Any] = {"rate_rps": round(rate, 1)}
    tasks = {"queued": TASK}
    if local_available(bench.catalog()):
        tasks["local"] = TASK + LOCAL
    seen: dict[str, list[float]] = {name: [] for name in tasks}
    for _ in range(bench.scale.cascade_rounds):
        for name, task in tasks.items():
            seen[name].append(_escalated_p50(bench, task, rate, LARGE))
    for name, p50s in seen.items():
        out[f"{name}_escalated_p50_ms"] = round(float(np.median(p50s)), 3)
        out[f"{name}_escalated_p50_ms_rounds"] = [round(v, 3) for v in p50s]
    if "local" in tasks:
        local = out["local_escalated_p50_ms"]
        out["local_vs_queued"] = round(local / max(1e-9, out["queued_escalated_p50_ms"]), 3)
    tag(f"escalated p50 at {rate:.0f} req/s: {out}")
    return out


def _ratio(rows: list[dict[str, Any]], pair: str, way: str, key: str) -> float | None:
    by = {r["strategy"]: r for r in rows if r["pair"] == pair}
    row, base = by.get(way, {}), by.get("large-only", {})
    if not row.get("available") or row.get(key) is None or not base.get(key):
        return None
    return round(float(row[key]) / float(base[key]), 4)


def reachable(rows: list[dict[str, Any]], pair: str) -> float | None:
    """The least total-cost ratio to large-only a cascade of ``pair`` can reach here.

    Every request makes the first model's hop (the small-only row's measured total, its
    tiny compute included) and each escalated one needs the large model's compute at
    least (large-only's compute per request, times the cascade's large share); whatever
    a cascade adds above that (confidence, a second hop or a local call) only raises it.
    None where a row it needs was not measured.
    """
    by = {r["strategy"]: r for r in rows if r["pair"] == pair and r.get("available")}
    floor, large, cascade = by.get("small-only"), by.get("large-only"), by.get("cascade")
    if not floor or not large or not cascade:
        return None
    if floor.get("total_cpu_us") is None or not large.get("total_cpu_us"):
        return None
    escalated = float(cascade["large_share"]) * float(large["compute_us"])
    least = float(floor["total_cpu_us"]) + escalated
    return round(least / float(large["total_cpu_us"]), 4)


def summary(rows: list[dict[str, Any]], low: dict[str, Any] | None = None) -> dict[str, Any]:
    """The figures the suite's targets read; a way not measured is absent, never 0."""
    by = {(r["pair"], r["strategy"]): r for r in rows}
    large, cascade = by[("digits", "large-only")], by[("digits", "cascade")]
    out: dict[str, Any] = {
        "accuracy": cascade["accuracy"],
        "large_only_accuracy": large["accuracy"],
        "accuracy_gap_points": round((large["accuracy"] - cascade["accuracy"]) * 100, 3),
        "relative_cost": cascade["relative_cost"],
        "throughput_rps": cascade["throughput_rps"],
        "large_only_throughput_rps": large["throughput_rps"],
        "large_share": cascade["large_share"],
    }
    figures_of = {
        "total_vs_large_only": ("digits", "cascade", "total_cpu_us"),
        "local_total_vs_large_only": ("digits", "cascade-local", "total_cpu_us"),
        "heavy_total_vs_large_only": ("heavy", "cascade", "total_cpu_us"),
        "heavy_local_total_vs_large_only": ("heavy", "cascade-local", "total_cpu_us"),
        "auto_total_vs_large_only": ("digits", "cascade-auto", "total_cpu_us"),
        "heavy_auto_total_vs_large_only": ("heavy", "cascade-auto", "total_cpu_us"),
        "heavy_relative_cost": ("heavy", "cascade", "compute_us"),
    }
    for name, (pair, way, key) in figures_of.items():
        value = _ratio(rows, pair, way, key)
        if value is not None:
            out[name] = value
    for pair, prefix in (("digits", ""), ("heavy", "heavy_")):
        value = reachable(rows, pair)
        if value is not None:
            out[prefix + "reachable_vs_large_only"] = value
    if low and "local_vs_queued" in low:
        out["local_escalated_p50_vs_queued"] = low["local_vs_queued"]
    out["local_available"] = by[("digits", "cascade-local")].get("available", False)
    return out


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'pair':<7}{'strategy':<15}{'requests':>9}{'accuracy':>9}{'large%':>8}"
        f"{'compute us':>11}{'total us':>10}{'req/s':>8}{'p50':>7}{'p99':>7}{'esc p50':>8}"
        f"{'esc p99':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if not r.get("available"):
            lines.append(f"{r['pair']:<7}{r['strategy']:<15}{NOT_AVAILABLE:>9}")
            continue
        total = "-" if r["total_cpu_us"] is None else f"{r['total_cpu_us']:.1f}"
        lines.append(
            f"{r['pair']:<7}{r['strategy']:<15}{r['requests']:>9}{r['accuracy']:>9.4f}"
            f"{r['large_share'] * 100:>7.1f}%{r['compute_us']:>11.1f}{total:>10}"
            f"{r['throughput_rps']:>8.0f}{r['p50_ms']:>7.1f}{r['p99_ms']:>7.1f}"
            f"{_ms(r['escalated_p50_ms']):>8}{_ms(r['escalated_p99_ms']):>8}"
        )
    lines.append(
        "per answered request: compute us = the models' compute only (catalog costs); total "
        "us = CPU of every process (producer, router, worker, Redis), compute included"
    )
    return "\n".join(lines)
