"""`cascadeq bench limit`: the system against the same model run in-process, no queue.

Efficiency is end-to-end samples/s (producer -> router -> worker, saturating burst of
one-sample requests) over what ONNX Runtime alone does at the model's max_batch with the
catalog's thread count and the worker's session options. The reference runs right
before and right after the system run, and their mean is the denominator, so a machine
that gets busier or quieter during the run moves both sides alike.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from cascadeq.bench.workbench import (
    HEAVY,
    LARGE,
    SMALL,
    WORKERS,
    Bench,
    burst,
    ok_rps,
    tag,
    warm_up,
)
from cascadeq.config.catalog import ModelSpec

MODELS = (SMALL, LARGE, HEAVY)
SWEEP_MODEL = LARGE


class Reference:
    """One warm session (the worker's OnnxRunner) fed full batches in a loop."""

    def __init__(self, spec: ModelSpec, x: np.ndarray, batch: int) -> None:
        from cascadeq.workers.runner import OnnxRunner  # noqa: PLC0415 - roles are imported lazily

        self.runner = OnnxRunner(spec)
        self.batch = batch
        rows = np.ascontiguousarray(np.resize(x, (batch, x.shape[1])), dtype=np.float32)
        self.inputs = {spec.inputs[0].name: rows}
        for _ in range(3):
            self.runner.run(self.inputs, batch)

    def samples_per_s(self, seconds: float) -> float:
        runs, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds or runs < 3:
            self.runner.run(self.inputs, self.batch)
            runs += 1
        return runs * self.batch / elapsed


def side_by_side(bench: Bench, model: str, spec: ModelSpec, n: int) -> dict[str, Any]:
    """Reference, system, reference: one row of the efficiency table."""
    batch = spec.batching.max_batch
    ref = Reference(spec, bench.inputs[model], batch)
    before = ref.samples_per_s(bench.scale.reference_s)
    run = burst(bench, model, n)
    after = ref.samples_per_s(bench.scale.reference_s)
    in_process = (before + after) / 2
    system = ok_rps(run)
    hops = [h for r in run.results for h in r.path if "compute_ms" in h]
    row = {
        "model": model,
        "max_batch": batch,
        "intra_op_threads": spec.intra_op_threads,
        "requests": n,
        "system_sps": round(system, 1),
        "in_process_sps": round(in_process, 1),
        "in_process_before": round(before, 1),
        "in_process_after": round(after, 1),
        "efficiency": round(system / in_process, 4),
        "mean_batch": round(float(np.mean([r.batch_size for r in run.results] or [0])), 2),
        # Where the gap is: a batch's compute inside the loaded system against alone.
        "system_batch_compute_ms": round(float(np.mean([h["compute_ms"] for h in hops] or [0])), 3),
        "in_process_batch_ms": round(batch / in_process * 1000, 3),
        "errors": sum(not r.ok for r in run.results),
        "lost": run.lost,
    }
    tag(
        f"limit {model:<13} batch {batch:>3}: system {system:>8.0f}/s  in-process "
        f"{in_process:>8.0f}/s ({before:.0f}, {after:.0f})  efficiency {row['efficiency']:.3f}  "
        f"mean batch {row['mean_batch']}; batch compute {row['system_batch_compute_ms']} ms in "
        f"the system, {row['in_process_batch_ms']} ms alone"
    )
    return row


def measure(bench: Bench) -> list[dict[str, Any]]:
    catalog = bench.catalog()
    return [side_by_side(bench, m, catalog.models[m], bench.scale.saturate[m]) for m in MODELS]


def sweep(bench: Bench) -> list[dict[str, Any]]:
    """Throughput vs max_batch for one model: the catalog edited, the roles restarted."""
    import tomlkit  # noqa: PLC0415

    path = bench.system.catalog_path
    original = path.read_text(encoding="utf-8")
    rows = []
    try:
        for batch in bench.scale.sweep:
            doc: Any = tomlkit.parse(original)
            doc["models"][SWEEP_MODEL]["batching"]["max_batch"] = batch
            path.write_text(tomlkit.dumps(doc), encoding="utf-8")
            bench.system.restart(workers=WORKERS)
            warm_up(bench, [SWEEP_MODEL])
            spec = bench.spec(SWEEP_MODEL)  # read back: what the restarted worker runs
            rows.append(side_by_side(bench, SWEEP_MODEL, spec, bench.scale.saturate[LARGE]))
    finally:
        path.write_text(original, encoding="utf-8")
        if rows:
            bench.system.restart(workers=WORKERS)
            warm_up(bench, [SWEEP_MODEL])
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'model':<14}{'batch':>6}{'system/s':>10}{'in-proc/s':>11}{'before':>9}{'after':>9}"
        f"{'effic.':>8}{'mean batch':>11}{'compute ms':>11}{'alone ms':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['model']:<14}{r['max_batch']:>6}{r['system_sps']:>10.0f}"
            f"{r['in_process_sps']:>11.0f}{r['in_process_before']:>9.0f}"
            f"{r['in_process_after']:>9.0f}{r['efficiency']:>8.3f}{r['mean_batch']:>11.1f}"
            f"{r['system_batch_compute_ms']:>11.2f}{r['in_process_batch_ms']:>9.2f}"
        )
    return "\n".join(lines)
