"""``cascadeq bench bulk``: interactive latency idle and during a bulk job, side by side.

One live system (router, one worker, an rq worker) on a copy of the catalog whose models
have two lanes, ``interactive`` and ``batch``: interactive requests are paced through it
alone, then again while a bulk job streams its rows on the ``batch`` lane. The figure
that matters is the ratio of the two p99s in the same run, not either one alone.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import tomlkit

from cascadeq.bench.harness import emit, live_system, progress
from cascadeq.bulk import jobs
from cascadeq.config.settings import Settings
from cascadeq.producer import Producer, Request

LANES = ["interactive", "batch"]
TAG = "bulk"


def with_lanes(src: Path, dst: Path) -> None:
    doc = tomlkit.parse(src.read_text(encoding="utf-8"))
    for spec in doc["models"].values():
        spec["lanes"] = LANES
    dst.write_text(tomlkit.dumps(doc), encoding="utf-8")


PARTS = ("route_ms", "queue_ms", "batch_wait_ms", "compute_ms")


def probe(
    client: Producer,
    x: np.ndarray,
    seconds: float,
    rate: float,
    parts: list[list[float]] | None = None,
) -> np.ndarray:
    """Paced one-row interactive requests, each waited for; their latencies in ms."""
    out: list[float] = []
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        rid = client.submit(inputs={"input": x[i % len(x)][None]}, task="digits", priority=LANES[0])
        res = client.wait(rid, timeout=30)
        out.append((time.perf_counter() - t0) * 1000)
        if parts is not None:  # the result's timings, summed over its path by the workers
            parts.append([float(res.timings.get(k) or 0.0) for k in PARTS])
        i += 1
        pause = start + i / rate - time.perf_counter()
        if pause > 0:
            time.sleep(pause)  # pacing the arrivals, not waiting for a result
    return np.asarray(out)


def main(
    settings: Settings,
    models_dir: Path,
    as_json: bool,
    rows: int = 200_000,
    probe_s: float = 5.0,
    probe_rate: float = 50.0,
    in_flight: int = 2000,
    rate: float = 0.0,
) -> int:
    catalog = models_dir / f".bench-bulk-{uuid.uuid4().hex[:8]}.toml"
    with_lanes(models_dir / "catalog.toml", catalog)
    try:
        figures = _run(settings, catalog, models_dir, rows, probe_s, probe_rate, in_flight, rate)
    finally:
        catalog.unlink(missing_ok=True)
    return emit(figures, as_json)


def _run(
    settings: Settings,
    catalog: Path,
    models_dir: Path,
    rows: int,
    probe_s: float,
    rate: float,
    in_flight: int,
    bulk_rate: float,
) -> dict[str, Any]:
    x = np.load(models_dir / "digits_test.npz")["X"].astype(np.float32)
    with live_system(settings, catalog, TAG, workers=1) as system, tempfile.TemporaryDirectory(
    ) as tmp, Producer(settings=system.settings, catalog=system.catalog()) as client:  # fmt: skip
        client.wait_many(client.submit_many([Request({"input": x[:1]}, task="digits")] * 1),
                         timeout=120)  # fmt: skip
        probe(client, x, 1.0, rate)  # warm-up
        progress(TAG, f"interactive alone for {probe_s}s at {rate}/s")
        idle_parts: list[list[float]] = []
        idle = probe(client, x, probe_s, rate, idle_parts)
        src = Path(tmp) / "bulk.npy"
        np.save(src, np.resize(x, (rows, x.shape[1])))
        system.group.spawn("bulk", "worker")
        job_id = jobs.submit(
            src, task="digits", settings=system.settings, in_flight=in_flight, rate=bulk_rate
        )
        _until(lambda: jobs.progress(job_id, system.settings)["done"] > 0, 120)
        progress(TAG, f"interactive during a {rows}-row bulk job")
        during_parts: list[list[float]] = []
        during = probe(client, x, probe_s, rate, during_parts)
        overlapped = jobs.progress(job_id, system.settings)["status"] not in jobs.ENDED
        state = jobs.wait(job_id, system.settings, timeout=1800)
    idle_p99, during_p99 = float(np.percentile(idle, 99)), float(np.percentile(during, 99))
    return {
        "idle_p99_ms": round(idle_p99, 2),
        "during_bulk_p99_ms": round(during_p99, 2),
        "p99_ratio": round(during_p99 / idle_p99, 2),
        "idle_p50_ms": round(float(np.percentile(idle, 50)), 2),
        "during_bulk_p50_ms": round(float(np.percentile(during, 50)), 2),
        "interactive_requests": [len(idle), len(during)],
        "bulk_rows": rows,
        "bulk_in_flight": in_flight,
        "bulk_rate": bulk_rate or "default pace",
        "idle_parts_ms": _parts(idle, idle_parts),
        "during_bulk_parts_ms": _parts(during, during_parts),
        "bulk_rows_per_s": state["rate"],
        "rows_failed": state["errors"],
        "bulk_status": state["status"],
        "bulk_overlapped_probe": overlapped,
    }


def _parts(latency: np.ndarray, parts: list[list[float]]) -> dict[str, Any]:
    """Where the time goes (the worker's figures): mean over all, and over the slowest 5%."""
    table = np.asarray(parts)
    slow = latency >= np.percentile(latency, 95)
    return {
        "parts": list(PARTS),
        "mean": [round(float(v), 2) for v in table.mean(axis=0)],
        "slowest_5pct": [round(float(v), 2) for v in table[slow].mean(axis=0)],
        "slowest_5pct_total": round(float(latency[slow].mean()), 2),
    }


def _until(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the bulk job did not start")
        time.sleep(0.05)
