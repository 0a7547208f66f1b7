"""Queued vs local escalation, side by side in one run: the digits cascade through one
router and one worker process serving both models, the task's ``escalate`` set to
``queue`` then ``local`` (alternating, ``--rounds`` times), on a private redis-server.

Per mode: capacity (a burst, completed requests/s) and CPU per answered request in it;
then open-loop traffic at ``--fraction`` of the lower capacity, reporting the p50/p99
end-to-end latency (result total_ms) of the escalated requests and of all, and CPU per
answered request (router + worker + redis-server, from their own resource usage).

    .venv/bin/python scripts/local_escalation.py --models-dir /tmp/cq-models
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", default="models/digits")
    parser.add_argument("--burst", type=int, default=6000, help="requests to measure capacity")
    parser.add_argument("--seconds", type=float, default=20.0, help="of paced traffic per mode")
    parser.add_argument("--fraction", type=float, default=0.1, help="of capacity, paced")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the modes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    models = Path(args.models_dir).resolve()
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
