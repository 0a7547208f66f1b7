"""Queued vs local escalation, side by side in one run: the digits cascade through one
router and one worker process serving both models, the task's ``escalate`` set to
``queue`` then ``local`` (alternating, ``--rounds`` times), on a private redis-server.

Per mode: capacity (a burst, completed requests/s) and CPU per answered request in it;
then open-loop traffic at ``--fraction`` of the lower capacity, reporting the p50/p99
end-to-end latency (result total_ms) of the escalated requests and of all, and CPU per
answered request (router + worker + redis-server, from their own resource usage).

    .venv/bin/python scripts/local_escalation.py --models-dir /tmp/cq-models

``--micro``: the CPU of the escalation itself, without a router or the wake-ups of light
traffic (which dominate CPU per request at 10% load): in one process, workers drain a
backlog of router-like bundles through the cascade, queued (the small model's worker,
then the large model's) or local (the small model's alone); CPU of this process and of
the redis-server per answered request, alternating modes ``--rounds`` times.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from cascadeq.bench.floor import cpu_of, redis_cpu
from cascadeq.bench.harness import Run, run_burst, run_paced
from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra.connection import connect
from cascadeq.infra.embedded import EmbeddedRedis
from cascadeq.infra.process import ProcessGroup, interruptible
from cascadeq.producer import Producer, Request
from cascadeq.protocol import bundle, wire
from cascadeq.protocol.bundle import Header
from cascadeq.protocol.keys import Keys
from cascadeq.protocol.messages import now_ms

MODES = ("queue", "local")
LARGE = "digits-large"


def catalog_for(models: Path, mode: str, out: Path) -> Path:
    """The models dir's catalog, its digits task escalating ``mode``-wise."""
    text = (models / "catalog.toml").read_text()
    text = re.sub(r'path = "([\w/]+\.onnx)"', lambda m: f'path = "{models / m[1]}"', text)
    text = re.sub(r'validation = "(\w+\.npz)"', lambda m: f'validation = "{models / m[1]}"', text)
    text = text.replace("[tasks.digits]\n", f'[tasks.digits]\nescalate = "{mode}"\n', 1)
    path = out / f"catalog-{mode}.toml"
    path.write_text(text)
    return path


class Mode:
    """One mode's live system: a router and one worker process with both models."""

    def __init__(self, url: str, catalog_path: Path) -> None:
        self.settings = Settings(redis_url=url, prefix=f"le{uuid.uuid4().hex[:8]}")
        env = {
            **os.environ,
            "REDIS_URL": url,
            "CASCADEQ_CATALOG": str(catalog_path),
            "CASCADEQ_PREFIX": self.settings.prefix,
            "CASCADEQ_LOG_LEVEL": "warning",
        }
        self.catalog = Catalog.load(catalog_path)
        self.group = ProcessGroup(env)
        self.router = self.group.spawn("router")
        self.worker = self.group.spawn("worker", "--models", f"digits-small,{LARGE}")
        self.r = connect(url)

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far, by role."""
        return {
            "router": cpu_of(self.router.pid),
            "worker": cpu_of(self.worker.pid),
            "redis": redis_cpu(self.r),
        }

    def stop(self) -> None:
        self.group.stop()
        self.r.close()


def figures(run: Run, cpu: dict[str, float]) -> dict[str, Any]:
    ok = [r for r in run.results if r.ok]
    up = [r for r in ok if r.model == LARGE]
    hops = {str(r.path[-1].get("hop", "queue")) for r in up}
    every = np.array([r.timings["total_ms"] for r in ok] or [0.0])
    esc = np.array([r.timings["total_ms"] for r in up] or [0.0])
    sure = np.array([r.timings["total_ms"] for r in ok if r.model != LARGE] or [0.0])
    second = {
        part: round(float(np.median([r.path[-1].get(part, 0.0) for r in up] or [0.0])), 3)
        for part in ("queue_ms", "batch_wait_ms", "compute_ms")
    }
    return {
        "answered": len(ok),
        "lost": run.lost,
        "escalated": len(up),
        "hops": sorted(hops),
        "rps": round(len(ok) / run.seconds, 1),
        "p50_ms": round(float(np.percentile(every, 50)), 3),
        "p99_ms": round(float(np.percentile(every, 99)), 3),
        "escalated_p50_ms": round(float(np.percentile(esc, 50)), 3),
        "escalated_p99_ms": round(float(np.percentile(esc, 99)), 3),
        "sure_p50_ms": round(float(np.percentile(sure, 50)), 3),
        # what escalating adds: the escalated p50 over the p50 of those answered at once
        "added_p50_ms": round(float(np.percentile(esc, 50) - np.percentile(sure, 50)), 3),
        "second_hop_p50": second,  # the large model's hop of escalated requests
        "cpu_us_per_request": round(sum(cpu.values()) * 1e6 / max(1, len(ok)), 1),
        "cpu_us_by_role": {k: round(v * 1e6 / max(1, len(ok)), 1) for k, v in cpu.items()},
    }


def measured(mode: Mode, x: np.ndarray, n: int, rate: float | None) -> dict[str, Any]:
    """A burst (rate None) or paced traffic through ``mode``, with its CPU."""
    requests = [Request({"input": x[i % len(x)][None]}, task="digits") for i in range(n)]
    labels = np.zeros(n)
    with Producer(settings=mode.settings, catalog=mode.catalog) as client:
        client.wait_many(client.submit_many(requests[:200]), timeout=120)  # warm
        before = mode.cpu()
        if rate is None:
            run = run_burst(client, requests, labels)
        else:
            run = run_paced(client, requests, labels, rate)
        after = mode.cpu()
        return figures(run, {k: after[k] - before[k] for k in after})


def micro(models: Path, rounds: int, n: int, per_entry: int) -> dict[str, Any]:
    """CPU per answered request of draining ``n`` requests, by mode (see the docstring)."""
    import time  # noqa: PLC0415

    from cascadeq.workers import ModelWorker  # noqa: PLC0415 - the serve extra
    from cascadeq.workers.local import LocalModels  # noqa: PLC0415

    x = np.load(models / "digits_test.npz")["X"]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis() as server:
        r = connect(server.url)
        for round_ in range(rounds):
            for mode in MODES:
                catalog = Catalog.load(catalog_for(models, mode, Path(tmp)))
                settings = Settings(redis_url=server.url, prefix=f"lm{uuid.uuid4().hex[:8]}")
                keys = Keys(settings.prefix)
                local: LocalModels = {}
                workers = [
                    ModelWorker(r, catalog, catalog.models[m], settings, f"c-{m}", local=local)
                    for m in ("digits-small", LARGE)
                ]
                _fill(r, keys, x, n, per_entry)
                for w in workers:
                    w.setup()
                cpu, redis_before, started = time.process_time(), redis_cpu(r), time.perf_counter()
                for w in workers:
                    while w.step(block_ms=None):
                        pass
                cpu = time.process_time() - cpu
                redis_s = redis_cpu(r) - redis_before
                seconds = time.perf_counter() - started
                answered = sum(int(w.stats["results"]) for w in workers)
                assert answered == n, (mode, answered)
                row = {
                    "round": round_,
                    "mode": mode,
                    "worker_us": round(cpu * 1e6 / n, 2),
                    "redis_us": round(redis_s * 1e6 / n, 2),
                    "total_us": round((cpu + redis_s) * 1e6 / n, 2),
                    "rps": round(n / seconds, 1),
                    "escalated": int(workers[0].stats["samples"] and _escalated(r, keys)),
                }
                print(f"[micro] {row}", file=sys.stderr, flush=True)
                rows.append(row)
        r.close()
    med = {m: _median_rows([r for r in rows if r["mode"] == m]) for m in MODES}
    ratio = {k: round(med["local"][k] / med["queue"][k], 3) for k in ("worker_us", "total_us")}
    return {"rows": rows, "median": med, "local_over_queue": ratio}


def _fill(r: Any, keys: Keys, x: np.ndarray, n: int, per_entry: int) -> None:
    """``n`` one-sample digits requests at the first model, in bundles as a router adds."""
    pipe = r.pipeline(transaction=False)
    for start in range(0, n, per_entry):
        count = min(per_entry, n - start)
        headers = [
            Header(
                id=f"m{start + i}",
                task="digits",
                submitted_at=now_ms(),
                trace=[{"model": "digits-small", "rule": "cascade"}],
            )
            for i in range(count)
        ]
        rows = np.take(x, np.arange(start, start + count) % len(x), axis=0)
        inputs = wire.dumps_inputs({"input": np.ascontiguousarray(rows)})
        pipe.xadd(keys.model_stream("digits-small"), bundle.bundle_fields(headers, inputs, None))
    pipe.execute()


def _escalated(r: Any, keys: Keys) -> int:
    return int(r.hget(keys.routing_counts, "escalate:digits-small") or 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", default="models/digits")
    parser.add_argument("--burst", type=int, default=6000, help="requests to measure capacity")
    parser.add_argument("--seconds", type=float, default=20.0, help="of paced traffic per mode")
    parser.add_argument("--fraction", type=float, default=0.1, help="of capacity, paced")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the modes")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--micro", type=int, default=0, help="requests: the CPU micro run")
    parser.add_argument("--per-entry", type=int, default=16, help="requests a bundle (micro)")
    args = parser.parse_args()
    models = Path(args.models_dir).resolve()
    if args.micro:
        print(json.dumps(micro(models, args.rounds, args.micro, args.per_entry), indent=2))
        return 0
    x = np.load(models / "digits_test.npz")["X"]
    rows: list[dict[str, Any]] = []
    with interruptible(), tempfile.TemporaryDirectory() as tmp, EmbeddedRedis() as server:
        paths = {m: catalog_for(models, m, Path(tmp)) for m in MODES}
        bursts: list[dict[str, Any]] = []
        for round_ in range(args.rounds):
            for mode in MODES:
                system = Mode(server.url, paths[mode])
                try:
                    row = {"round": round_, "mode": mode}
                    row.update(measured(system, x, args.burst, None))
                finally:
                    system.stop()
                print(f"[capacity] {row}", file=sys.stderr, flush=True)
                bursts.append(row)
        capacity = {m: _median_rows([b for b in bursts if b["mode"] == m]) for m in MODES}
        rate = args.fraction * min(c["rps"] for c in capacity.values())
        n = max(100, int(rate * args.seconds))
        for round_ in range(args.rounds):
            for mode in MODES:
                system = Mode(server.url, paths[mode])
                try:
                    row = {"round": round_, "mode": mode, "rate_rps": round(rate, 1)}
                    row.update(measured(system, x, n, rate))
                finally:
                    system.stop()
                print(f"[paced] {row}", file=sys.stderr, flush=True)
                rows.append(row)
    report = {
        "capacity": capacity,
        "bursts": bursts,
        "paced": rows,
        "summary": summary(capacity, rows),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report))
    return 0


def _median_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each number over the rounds."""
    keys = [k for k, v in rows[0].items() if isinstance(v, int | float) and k != "round"]
    return {k: float(np.median([r[k] for r in rows])) for k in keys}


def summary(capacity: dict[str, dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds, and local / queue ratios."""

    def med(mode: str, key: str) -> float:
        return float(np.median([r[key] for r in rows if r["mode"] == mode]))

    keys = ("escalated_p50_ms", "sure_p50_ms", "added_p50_ms", "p50_ms", "cpu_us_per_request")
    out: dict[str, Any] = {m: {k: med(m, k) for k in keys} for m in MODES}
    out["local_over_queue"] = {
        k: round(out["local"][k] / max(1e-9, out["queue"][k]), 3) for k in keys
    }
    out["local_over_queue"]["burst_cpu_us_per_request"] = round(
        capacity["local"]["cpu_us_per_request"] / capacity["queue"]["cpu_us_per_request"], 3
    )
    out["local_over_queue"]["capacity_rps"] = round(
        capacity["local"]["rps"] / capacity["queue"]["rps"], 3
    )
    return out


def render(report: dict[str, Any]) -> str:
    lines = ["mode   round  rate/s  esc  esc p50  esc p99   p50 ms  p99 ms  cpu us/req"]
    for r in report["paced"]:
        lines.append(
            f"{r['mode']:<6} {r['round']:>5} {r['rate_rps']:>7} {r['escalated']:>4} "
            f"{r['escalated_p50_ms']:>8} {r['escalated_p99_ms']:>8} {r['p50_ms']:>8} "
            f"{r['p99_ms']:>7} {r['cpu_us_per_request']:>11}"
        )
    for mode, c in report["capacity"].items():
        lines.append(
            f"capacity {mode}: {c['rps']}/s, {c['cpu_us_per_request']} us CPU/request in the burst"
        )
    lines.append(f"local / queue: {report['summary']['local_over_queue']}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
