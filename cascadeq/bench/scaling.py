"""``cascadeq bench scaling``: throughput against worker replicas on one Redis.

Two series, each on a fresh key prefix with one router: a CPU-bound model (the built
digits-large, requests of ``cpu_rows`` rows so the model's compute dominates) up to the
cores available, and an I/O-bound model up to 32 workers. The I/O-bound model is a
STAND-IN (``kind = "sleep"``, workers/standin.py): each batch takes a fixed service time
with the CPU released, the way a model behind a remote call would; its answers are fixed.

Workers are added one process at a time and kept, so a series starts each count once.
At each count, several closed-loop load processes (cascadeq/bench/loadgen.py) keep
enough requests in flight to saturate the workers (``IN_FLIGHT_PER_SLOT`` per batch
slot), warm up, then count completions in one shared window. Scaling efficiency is
rps at N / (N x rps at 1).

``section(url, ...)`` measures both series against any Redis URL: once on one Redis
(``single``), once on a local 3-master Redis Cluster with the ingress in 3 shards
(``cluster``; infra/cluster.py forms it with CLUSTER commands, so it needs no redis-cli).
Progress goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from cascadeq.bench import machine
from cascadeq.bench.harness import progress, redis_for, remove_keys
from cascadeq.config.settings import Settings
from cascadeq.infra.cluster import LocalCluster
from cascadeq.infra.connection import connect
from cascadeq.infra.process import ProcessGroup, interruptible
from cascadeq.protocol import keys as keynames

TAG = "scaling"
STANDIN = "io-standin"
CPU_MODEL = "digits-large"
IN_FLIGHT_PER_SLOT = 4  # requests in flight per batch a worker can hold: never starved
CLUSTER_MASTERS = 3  # the cluster section: a local cluster of this many masters, no replicas


@dataclass(frozen=True)
class Plan:
    """What one run measures; ``quick`` trims counts and windows for CI."""

    io_workers: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    cpu_workers: tuple[int, ...] = (1, 2)
    # The stand-in's time per batch and max_batch: N x 40 rps, so 32 workers ask 320
    # batches/s, which a loaded 2-core machine carries; at 20 ms and 2 per batch, 16
    # workers ask 800 batches/s and the roles' CPU per batch (mostly the workers': read,
    # decode, commit, results), not the stand-in, sets the curve (docs/benchmarks.md).
    service_ms: float = 100.0
    io_batch: int = 4
    cpu_rows: int = 32  # rows per CPU-bound request: one full digits-large batch
    producers: int = 2  # load processes
    threads: int = 8  # per load process
    warm_s: float = 2.0
    window_s: float = 5.0

    @classmethod
    def for_machine(cls, quick: bool, **standin: Any) -> Plan:
        """CPU-bound up to the cores this process may use; ``standin``: service_ms, io_batch."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        cpu = tuple(range(1, max(1, cores) + 1))
        plan = cls(cpu_workers=cpu, **{k: v for k, v in standin.items() if v is not None})
        if quick:
            plan = replace(plan, io_workers=(1, 4, 16), warm_s=1.5, window_s=3.0)
        return plan


@dataclass(frozen=True)
class Series:
    """One curve: a task served by one model, requests of ``rows`` rows."""

    name: str
    task: str
    model: str
    rows: int
    slots: float  # requests per batch (max_batch / rows)
    counts: tuple[int, ...]


def standin_toml(plan: Plan) -> str:
    """The stand-in model and the two series' tasks, appended to the built catalog."""
    return f"""
# cascadeq bench scaling: an I/O-bound STAND-IN (no model file; answers are fixed).
[models.{STANDIN}]
kind = "sleep"
service_ms = {plan.service_ms}
output = "probabilities"
inputs = [{{ name = "input", dtype = "float32", shape = [-1, 64] }}]
[models.{STANDIN}.batching]
max_batch = {plan.io_batch}

[tasks.scaling-io]
cascade = [{{ model = "{STANDIN}" }}]

[tasks.scaling-cpu]
cascade = [{{ model = "{CPU_MODEL}" }}]
"""


def series_of(plan: Plan, cpu_batch: int) -> list[Series]:
    return [
        Series("io_bound", "scaling-io", STANDIN, 1, plan.io_batch, plan.io_workers),
        Series(
            "cpu_bound",
            "scaling-cpu",
            CPU_MODEL,
            plan.cpu_rows,
            max(1.0, cpu_batch / plan.cpu_rows),
            plan.cpu_workers,
        ),
    ]


def efficiency(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """rps at N / (N x rps at the series' first count, scaled to one worker)."""
    if not points:
        return points
    base = points[0]["rps"] / points[0]["workers"]
    for p in points:
        p["efficiency"] = round(p["rps"] / (p["workers"] * base), 3) if base > 0 else None
    return points


def consumers(url: str, stream: str) -> int:
    r = connect(url)
    try:
        return len(r.xinfo_consumers(stream, keynames.WORKER_GROUP))
    except Exception:  # noqa: BLE001 - the group appears with the first worker
        return 0
    finally:
        r.close()


def joined(url: str, stream: str, n: int) -> Callable[[], bool]:
    return lambda: consumers(url, stream) >= n


def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """A readiness probe (workers joined), not a wait for a result."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting until {what}")
        time.sleep(0.1)


def drive(env: dict[str, str], plan: Plan, s: Series, workers: int, tmp: Path) -> dict[str, Any]:
    """Saturating closed-loop load from ``plan.producers`` processes; rps in the window."""
    in_flight = max(2 * plan.producers * plan.threads, int(IN_FLIGHT_PER_SLOT * workers * s.slots))
    chunk = max(1, round(in_flight / (plan.producers * plan.threads)))
    start = time.time() + 1.0  # every load process counts the same window
    outs = [tmp / f"load-{s.name}-{workers}-{i}.json" for i in range(plan.producers)]
    argv = ["--task", s.task, "--rows", str(s.rows), "--threads", str(plan.threads)]
    argv += ["--chunk", str(chunk), "--start", str(start)]
    argv += ["--warm", str(plan.warm_s), "--window", str(plan.window_s)]
    with ProcessGroup(env) as loaders:
        procs = [
            loaders.start([sys.executable, "-m", "cascadeq.bench.loadgen", *argv, "--out", str(o)])
            for o in outs
        ]
        for proc in procs:
            proc.wait(timeout=plan.warm_s + plan.window_s + 120)
    counts = [json.loads(o.read_text("utf-8")) for o in outs]
    done = sum(c["done"] for c in counts)
    return {
        "workers": workers,
        "rps": round(done / plan.window_s, 1),
        "in_flight": chunk * plan.producers * plan.threads,
        "mean_batch": round(sum(c["batched"] for c in counts) / max(1, done), 2),
        "failed": sum(c["failed"] for c in counts),
    }


def of_ideal(points: list[dict[str, Any]], plan: Plan) -> list[dict[str, Any]]:
    """The stand-in's ceiling is known: N x max_batch per service time. rps against it
    shows whether the baseline itself (N = 1) fell short, which efficiency cannot."""
    per_worker = plan.io_batch * 1000 / plan.service_ms
    for p in points:
        p["of_ideal"] = round(p["rps"] / (p["workers"] * per_worker), 3)
    return points


def run_series(
    url: str,
    settings: Settings,
    catalog: Path,
    plan: Plan,
    s: Series,
    tmp: Path,
    shards: int = 1,
) -> list[dict[str, Any]]:
    """One router, workers added up to each count in turn, measured at each."""
    prefix = f"{settings.prefix}-{TAG}-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "REDIS_URL": url,
        "CASCADEQ_CATALOG": str(catalog),
        "CASCADEQ_PREFIX": prefix,
        "CASCADEQ_INGRESS_SHARDS": str(shards),
        "CASCADEQ_LOG_LEVEL": os.environ.get("CASCADEQ_LOG_LEVEL", "warning"),
    }
    keys = replace(settings, redis_url=url, prefix=prefix, ingress_shards=shards).keys()
    stream = keys.model_stream(s.model)  # shard 0's: every worker reads every shard
    points: list[dict[str, Any]] = []
    try:
        with ProcessGroup(env) as group:
            group.spawn("router")
            for n in s.counts:
                while len(group.procs) - 1 < n:
                    group.spawn("worker", "--models", s.model)
                until(joined(url, stream, n), 60 + 3 * n, f"{n} workers joined")
                point = drive(env, plan, s, n, tmp)
                points.append(point)
                progress(TAG, f"{s.name}: {n} workers, {point['rps']} rps")
    finally:
        remove_keys(url, prefix)
    return efficiency(points)


def section(
    url: str, settings: Settings, catalog: Path, plan: Plan, shards: int = 1
) -> dict[str, Any]:
    """Both series against the Redis at ``url`` (its ingress in ``shards`` streams): one
    section of the report."""
    from cascadeq.config.catalog import Catalog  # noqa: PLC0415

    cpu_batch = Catalog.load(catalog).models[CPU_MODEL].batching.max_batch
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cq-scaling-") as tmp:
        for s in series_of(plan, cpu_batch):
            out[s.name] = run_series(url, settings, catalog, plan, s, Path(tmp), shards)
    out["io_bound"] = of_ideal(out["io_bound"], plan)
    return out


def report(settings: Settings, plan: Plan, catalog: Path) -> dict[str, Any]:
    with redis_for(settings.redis_url) as url:
        progress(TAG, f"one Redis at {url}; plan {plan}")
        described = machine.describe(url)
        single = section(url, settings, catalog, plan)
    with LocalCluster(masters=CLUSTER_MASTERS) as cluster:
        progress(TAG, f"{CLUSTER_MASTERS}-master cluster at {cluster.url}, as many ingress shards")
        clustered = section(cluster.url, settings, catalog, plan, shards=CLUSTER_MASTERS)
    return {
        "single": single,
        "cluster": {"masters": CLUSTER_MASTERS, "ingress_shards": CLUSTER_MASTERS, **clustered},
        "io_bound_model": {
            "stand_in": True,
            "kind": "sleep",
            "service_ms_per_batch": plan.service_ms,
            "max_batch": plan.io_batch,
            "note": "a fixed service time with the CPU released, not a real model",
        },
        "cpu_bound_model": {"model": CPU_MODEL, "rows_per_request": plan.cpu_rows},
        "plan": asdict(plan),
        "machine": described,
    }


def main(
    settings: Settings,
    models_dir: Path,
    as_json: bool,
    quick: bool,
    service_ms: float | None = None,
    io_batch: int | None = None,
) -> int:
    plan = Plan.for_machine(quick, service_ms=service_ms, io_batch=io_batch)
    catalog = models_dir / f".bench-scaling-{uuid.uuid4().hex[:8]}.toml"
    text = (models_dir / "catalog.toml").read_text(encoding="utf-8")
    catalog.write_text(text + standin_toml(plan), encoding="utf-8")
    try:
        with interruptible():
            figures = report(settings, plan, catalog)
    finally:
        catalog.unlink(missing_ok=True)
    if not as_json:
        print_table(figures)
    print(json.dumps(figures))
    return 0


def print_table(figures: dict[str, Any]) -> None:
    for name, points in figures["single"].items():
        label = f"{name} (stand-in)" if name == "io_bound" else name
        print(f"{label}: workers      rps  efficiency  mean batch  of ideal")
        for p in points:
            ideal = p.get("of_ideal", "")
            print(
                f"  {p['workers']:>7} {p['rps']:>8} {p['efficiency']!s:>11} "
                f"{p['mean_batch']:>11} {ideal:>9}"
            )
