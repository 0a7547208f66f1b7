"""`cascadeq bench batching`: each batching mode under steady, bursty, trickle and
saturating traffic, on the large digits model and the variable-length model.

Open loop: arrivals follow a fixed schedule whatever the system does, so a slow system
shows as latency, not as a politely slower load generator. Each mode runs on its own
copy of the catalog with one router and one worker process, so one batch window decides.
Rates are set from the saturating run of the same mode (its capacity on this machine).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cascadeq.bench.harness import Run, System, collect, live_system, progress, run_paced
from cascadeq.config.settings import Settings
from cascadeq.infra.connection import connect
from cascadeq.ops.calibration import edit_task

MODES = ("static", "dynamic", "adaptive", "continuous")
PATTERNS = ("saturate", "steady", "bursty", "trickle")
ROW_FIELDS = (
    "mode",
    "pattern",
    "model",
    "throughput_rps",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "mean_batch",
    "max_wait_ms",
    "batch_compute_ms",
    "padding_overhead",
)
LOAD_FRACTIONS = (0.1, 0.25, 0.5, 0.75, 0.9, 1.1)  # of capacity, for the plot


@dataclass(frozen=True)
class Scale:
    """How much traffic each pattern sends; `quick` keeps the suite's run short."""

    saturate: int = 4000
    seconds: float = 2.0
    trickle_rps: float = 25.0
    burst: int = 64

    @classmethod
    def quick(cls) -> Scale:
        return cls(saturate=400, seconds=0.4, trickle_rps=25.0, burst=16)


def tag(line: str) -> None:
    progress("bench batching", line)


@dataclass(frozen=True)
class Workload:
    model: str
    make: Callable[[int], dict[str, np.ndarray]]  # request i's inputs


def workloads(models_dir: Path) -> list[Workload]:
    digits = np.load(models_dir / "digits_test.npz")["X"]
    seq = np.load(models_dir / "seq" / "seq_test.npz")
    tokens, lengths = seq["tokens"], seq["lengths"]

    def one_digit(i: int) -> dict[str, np.ndarray]:
        return {"input": digits[i % len(digits)][None, :]}

    def one_sequence(i: int) -> dict[str, np.ndarray]:
        j = i % len(tokens)
        return {"tokens": tokens[j : j + 1, : lengths[j]]}  # its own length, unpadded

    return [Workload("digits-large", one_digit), Workload("seq-digits", one_sequence)]


def prepare(models_dir: Path, work: Path, mode: str) -> Path:
    """One catalog with both models in `mode`: the digits pair plus the sequence model."""
    for f in models_dir.iterdir():
        if f.is_file():
            shutil.copy(f, work / f.name)
    seq_dir = models_dir / "seq"
    for f in seq_dir.iterdir():
        if f.is_file() and f.suffix in (".onnx", ".npz"):
            shutil.copy(f, work / f.name)
    seq_models = (seq_dir / "catalog.toml").read_text(encoding="utf-8")
    path = work / "catalog.toml"
    path.write_text(path.read_text(encoding="utf-8") + "\n" + seq_models, encoding="utf-8")
    text = path.read_text(encoding="utf-8").replace('mode = "dynamic"', f'mode = "{mode}"')
    path.write_text(text, encoding="utf-8")
    edit_task(path, "digits", lambda table: table.pop("load", None))
    return path


def requests_for(work: Workload, n: int, offset: int = 0) -> list[Any]:
    from cascadeq.producer import Request  # noqa: PLC0415 - the core imports roles lazily

    return [Request(work.make(offset + i), model=work.model) for i in range(n)]


def run_pattern(client: Any, work: Workload, pattern: str, capacity: float, scale: Scale) -> Run:
    if pattern == "saturate":
        n = scale.saturate
        started = time.perf_counter()
        ids = client.submit_many(requests_for(work, n))
        return collect(client, ids, np.zeros(n), started, 300)
    if pattern == "trickle":
        n = max(20, int(scale.trickle_rps * scale.seconds * 2))
        return run_paced(client, requests_for(work, n), np.zeros(n), scale.trickle_rps)
    rate = 0.5 * capacity
    n = max(scale.burst * 2, int(rate * scale.seconds))
    if pattern == "steady":
        return run_paced(client, requests_for(work, n), np.zeros(n), rate)
    bursts = [requests_for(work, scale.burst, k * scale.burst) for k in range(n // scale.burst)]
    return run_bursts(client, bursts, rate / scale.burst)


def run_bursts(client: Any, bursts: list[list[Any]], bursts_per_s: float) -> Run:
    """Bursty: groups submitted together, the groups on a fixed schedule."""
    started = time.perf_counter()
    ids: list[str] = []
    for k, burst in enumerate(bursts):
        delay = started + k / bursts_per_s - time.perf_counter()
        if delay > 0:
            time.sleep(delay)  # the arrival schedule, not a wait for a result
        ids += client.submit_many(burst)
    return collect(client, ids, np.zeros(len(ids)), started, 300)


def row(mode: str, pattern: str, work: Workload, run: Run, max_wait_ms: float) -> dict[str, Any]:
    ok = [r for r in run.results if r.ok]
    totals = np.array([r.timings.get("total_ms", 0.0) for r in ok] or [0.0])
    hops = [h for r in ok for h in r.path if h.get("model") == work.model and "compute_ms" in h]
    pads = [float(r.info["padding_overhead"]) for r in ok if "padding_overhead" in r.info]
    return {
        "mode": mode,
        "pattern": pattern,
        "model": work.model,
        "throughput_rps": round(len(ok) / run.seconds, 1),
        "p50_ms": round(float(np.percentile(totals, 50)), 3),
        "p95_ms": round(float(np.percentile(totals, 95)), 3),
        "p99_ms": round(float(np.percentile(totals, 99)), 3),
        "mean_batch": round(float(np.mean([h["batch_size"] for h in hops] or [0])), 2),
        "max_wait_ms": max_wait_ms,
        "batch_compute_ms": round(float(np.mean([h["compute_ms"] for h in hops] or [0])), 3),
        "padding_overhead": round(float(np.mean(pads)) if pads else 1.0, 4),
    }


def overlap(system: System, model: str) -> float | None:
    r = connect(system.url)
    raw: Any = r.hget(system.settings.keys().observed(model), "overlap")
    r.close()
    return None if raw is None else float(raw)


def run_mode(
    settings: Settings, models_dir: Path, mode: str, scale: Scale, curve: bool
) -> tuple[list[dict[str, Any]], list[tuple[float, float, float]], dict[str, float]]:
    """Rows for one mode, its latency curve on the large model, and its overlap."""
    from cascadeq.producer import Producer  # noqa: PLC0415

    rows: list[dict[str, Any]] = []
    points: list[tuple[float, float, float]] = []
    overlaps: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="cascadeq-batching-") as tmp:
        path = prepare(models_dir, Path(tmp), mode)
        with live_system(settings, path, f"bench-{mode}", workers=1) as system:
            catalog = system.catalog()
            with Producer(system.url, settings=system.settings, catalog=catalog) as client:
                for work in workloads(models_dir):
                    max_wait = catalog.models[work.model].batching.max_wait_ms
                    run_pattern(client, work, "trickle", 1.0, Scale.quick())  # warm-up
                    capacity = 0.0
                    for pattern in PATTERNS:
                        run = run_pattern(client, work, pattern, capacity, scale)
                        rows.append(row(mode, pattern, work, run, max_wait))
                        if pattern == "saturate":
                            capacity = rows[-1]["throughput_rps"]
                        tag(_line(rows[-1]))
                    found = overlap(system, work.model)
                    if found is not None:
                        overlaps[work.model] = found
                    if curve and work.model == "digits-large":
                        points = latency_curve(client, work, capacity, scale)
    return rows, points, overlaps


def latency_curve(
    client: Any, work: Workload, capacity: float, scale: Scale
) -> list[tuple[float, float, float]]:
    """(offered req/s, p50 ms, p99 ms) at fractions of this mode's capacity."""
    points = []
    for fraction in LOAD_FRACTIONS:
        rate = fraction * capacity
        n = max(20, int(rate * scale.seconds))
        run = run_paced(client, requests_for(work, n), np.zeros(n), rate)
        totals = np.array([r.timings.get("total_ms", 0.0) for r in run.results if r.ok] or [0])
        points.append((rate, float(np.percentile(totals, 50)), float(np.percentile(totals, 99))))
    return points


def _line(r: dict[str, Any]) -> str:
    return (
        f"{r['mode']:<10} {r['pattern']:<8} {r['model']:<12} {r['throughput_rps']:>8.0f} req/s "
        f"p50 {r['p50_ms']:>7.2f} p99 {r['p99_ms']:>8.2f} ms  batch {r['mean_batch']:>5.1f}  "
        f"compute {r['batch_compute_ms']:.2f} ms  padding {r['padding_overhead']:.3f}"
    )


def plot(curves: dict[str, list[tuple[float, float, float]]], out: Path) -> None:
    import matplotlib as mpl  # noqa: PLC0415 - only the plot needs it (the bench extra)

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, points in curves.items():
        rates = [p[0] for p in points]
        (line,) = ax.plot(rates, [p[1] for p in points], marker="o", label=f"{mode} p50")
        ax.plot(rates, [p[2] for p in points], ls="--", color=line.get_color(), label=f"{mode} p99")
    ax.set_xlabel("offered load (requests/s, open loop)")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_yscale("log")
    ax.set_title("digits-large: latency vs offered load per batching mode")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def render(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'mode':<11}{'pattern':<9}{'model':<13}{'req/s':>8}{'p50':>8}{'p95':>8}{'p99':>8}"
        f"{'batch':>7}{'wait':>6}{'compute':>9}{'padding':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['mode']:<11}{r['pattern']:<9}{r['model']:<13}{r['throughput_rps']:>8.0f}"
            f"{r['p50_ms']:>8.2f}{r['p95_ms']:>8.2f}{r['p99_ms']:>8.2f}{r['mean_batch']:>7.1f}"
            f"{r['max_wait_ms']:>6.1f}{r['batch_compute_ms']:>9.3f}{r['padding_overhead']:>9.3f}"
        )
    return "\n".join(lines)


def main(
    settings: Settings, models_dir: Path, *, as_json: bool, quick: bool, plot_to: Path | None
) -> int:
    from cascadeq.examples import digits, seqdigits  # noqa: PLC0415

    digits.ensure_built(models_dir, log=tag)
    if not seqdigits.is_built(models_dir / seqdigits.SUBDIR):
        seqdigits.build(models_dir / seqdigits.SUBDIR, log=tag)
    scale = Scale.quick() if quick else Scale()
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[tuple[float, float, float]]] = {}
    for mode in MODES:
        mode_rows, points, overlaps = run_mode(
            settings, models_dir, mode, scale, plot_to is not None
        )
        rows += mode_rows
        if points:
            curves[mode] = points
        for model, value in overlaps.items():
            tag(f"{mode}: {model} fetched {value:.0%} of its samples while a batch computed")
    print(render(rows))
    if plot_to is not None and curves:
        plot(curves, plot_to)
        tag(f"plot: {plot_to}")
    if as_json:
        print(json.dumps({"rows": rows}))
    return 0
