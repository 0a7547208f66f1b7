"""``cascadeq bench tenants``: fair share between two tenants on one model, side by side.

One live system (router, one worker) on a copy of the catalog that declares tenants
``a`` and ``b`` (equal weights), so each has its own sub-stream of the model's lane, and
gives the model small batches (MAX_BATCH) so that the model, not the queue around it,
is what saturates. It measures the model's capacity (a burst), then paces, open loop,
tenant B alone at ``b_share`` of the burst's rate, tenant A alone at ten times B's rate
(past capacity: what A alone gets answered is ``capacity_rps``), and both together,
each tenant from a load process of its own (so neither waits on the other's
interpreter). A's excess is refused at submit by its own ``max_in_flight`` (``quota``,
with ``retry_after_s``, which A's client honours), never B's. The figures that matter
are ratios within the run: B's p99 together against alone, the capacity A receives, and
the model's utilisation (answered requests per second over capacity) while shared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tomlkit

from cascadeq.bench.harness import emit, live_system, progress
from cascadeq.config.settings import Settings
from cascadeq.producer import Producer, Rejected, Request, Timeout

TAG = "tenants"
MODEL = "digits-large"
MAX_BATCH = 8
PARTS = ("route_ms", "queue_ms", "batch_wait_ms", "compute_ms")
#: a result's timings: submit to read by the router, the model stream entry's id (the
#: router's commit) to read by the worker, read to launched, compute; "rest" is what they
#: leave out: the router's decoding and forwarding, and the worker settling the batch
TAIL = (*PARTS, "rest_ms")
IN_FLIGHT_S = 0.15  # A's max_in_flight: this many seconds of the model's capacity (see docs)


def in_flight_bound(cap: float) -> int:
    return max(2 * MAX_BATCH, int(cap * IN_FLIGHT_S))


def bench_catalog(src: Path, dst: Path, cap: float | None) -> None:
    """The catalog with tenants a and b (a bounded in flight once capacity is known)."""
    doc = tomlkit.parse(src.read_text(encoding="utf-8"))
    doc["models"][MODEL]["batching"]["max_batch"] = MAX_BATCH
    tenants = tomlkit.table(is_super_table=True)
    a, b = tomlkit.table(), tomlkit.table()
    a["weight"] = b["weight"] = 1
    if cap is not None:
        a["max_in_flight"] = in_flight_bound(cap)
    tenants["a"], tenants["b"] = a, b
    doc["tenants"] = tenants
    dst.write_text(tomlkit.dumps(doc), encoding="utf-8")


@dataclass
class Offered:
    """One tenant's paced load in one phase: what it sent, what was refused, results."""

    tenant: str
    rate: float
    ids: list[str] = field(default_factory=list)
    refused: int = 0
    retry_after_s: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    parts_ms: dict[str, list[float]] = field(default_factory=dict)  # route, queue: each
    answered_at: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)  # of the batch each answer ran in

    def tail_parts(self) -> dict[str, float]:
        """Each part's mean over the requests at or past the p99 latency: where the
        slowest 1% spent their time (the parts' own p99s come from different requests)."""
        lat = np.asarray(self.latencies_ms)
        if not len(lat):
            return {}
        slow = lat >= np.percentile(lat, 99)
        return {
            part: round(float(np.asarray(self.parts_ms[part])[slow].mean()), 2)
            for part in TAIL
            if len(self.parts_ms.get(part, ())) == len(lat)
        }

    def figures(self, seconds: float) -> dict[str, Any]:
        lat = np.asarray(self.latencies_ms or [0.0])
        return {
            "offered_rps": round(self.rate, 1),
            "rps": round(len(self.latencies_ms) / seconds, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "answered": len(self.latencies_ms),
            "p99_parts_ms": {  # where the tail waits: ingress and routing, the model queue
                part: round(float(np.percentile(v or [0.0], 99)), 2)
                for part, v in self.parts_ms.items()
                if part in PARTS
            },
            "tail_parts_ms": self.tail_parts(),
            "batch_mean": round(float(np.mean(self.batch_sizes)), 2) if self.batch_sizes else 0.0,
            "refused": self.refused,
            "retry_after_s": round(float(np.median(self.retry_after_s)), 4)
            if self.retry_after_s
            else None,
        }


def pace(client: Producer, load: Offered, x: np.ndarray, seconds: float, tick_s: float) -> None:
    """Open loop: what is due every tick goes in one call. A refused call's requests are
    dropped, and the client honours the refusal's retry-after: what falls due before it
    is dropped too (refused), not sent."""
    start = time.perf_counter()
    sent, hold_until = 0, 0.0
    while True:
        now = time.perf_counter()
        if now - start >= seconds:
            return
        due = int((now - start) * load.rate) + 1
        if due > sent and now < hold_until:
            load.refused += due - sent
            sent = due
        elif due > sent:
            reqs = [Request({"input": x[(sent + i) % len(x)][None]}, model=MODEL)
                    for i in range(due - sent)]  # fmt: skip
            try:
                load.ids += client.submit_many(reqs)
            except Rejected as exc:
                load.refused += len(reqs) - len(exc.accepted)
                load.ids += exc.accepted
                if exc.retry_after_s is not None:
                    load.retry_after_s.append(exc.retry_after_s)
                    hold_until = time.perf_counter() + exc.retry_after_s
            sent = due
        time.sleep(tick_s)  # the schedule's tick, not a wait for results


def settle(client: Producer, load: Offered, timeout: float) -> None:
    """Every accepted request's latency (submit to result stored, its total_ms)."""
    try:
        results = client.wait_many(load.ids, timeout=timeout)
    except Timeout as exc:
        results = list(exc.done.values())
    ok = [r for r in results if r.ok]
    load.latencies_ms = [r.timings.get("total_ms", 0.0) for r in ok]
    for part in PARTS:
        load.parts_ms[part] = [r.timings.get(part, 0.0) for r in ok]
    load.batch_sizes = [r.batch_size for r in ok]
    load.parts_ms["rest_ms"] = [
        max(0.0, r.timings.get("total_ms", 0.0) - sum(r.timings.get(p, 0.0) for p in PARTS))
        for r in ok
    ]


def phase(env: dict[str, str], rates: dict[str, float], seconds: float) -> dict[str, Any]:
    """Each tenant's paced load from a process of its own; their figures (JSON lines)."""
    procs = {}
    for t, rate in rates.items():
        argv = ["--tenant", t, "--rate", str(rate), "--seconds", str(seconds)]
        procs[t] = subprocess.Popen(
            [sys.executable, "-m", "cascadeq.bench.tenants", *argv],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
    out: dict[str, Any] = {}
    try:
        for t, proc in procs.items():
            stdout, _ = proc.communicate(timeout=seconds + 180)
            if proc.returncode != 0:
                raise RuntimeError(f"tenant {t}'s load process exited {proc.returncode}")
            out[t] = json.loads(stdout.strip().splitlines()[-1])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return out


def load_main(argv: list[str]) -> int:
    """One tenant's load process: pace, wait for every accepted request, print figures."""
    parser = argparse.ArgumentParser(prog="python -m cascadeq.bench.tenants")
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    x = np.load(Path(str(settings.catalog)).parent / "digits_test.npz")["X"].astype(np.float32)
    with Producer(settings=settings, tenant=args.tenant) as client:
        client.wait(client.submit(inputs={"input": x[:1]}, model=MODEL), timeout=60)
        load = Offered(args.tenant, args.rate)
        pace(client, load, x, args.seconds, 0.005)
        settle(client, load, timeout=120)
    print(json.dumps(load.figures(args.seconds)))
    return 0


def capacity(client: Producer, x: np.ndarray, n: int) -> float:
    """The model's saturating rate: a burst of ``n`` tenant-A requests, all waited for."""
    reqs = [Request({"input": x[i % len(x)][None]}, model=MODEL) for i in range(n)]
    started = time.perf_counter()
    client.wait_many(client.submit_many(reqs), timeout=300)
    return n / (time.perf_counter() - started)


def main(
    settings: Settings,
    models_dir: Path,
    as_json: bool,
    seconds: float = 6.0,
    b_share: float = 0.15,
) -> int:
    catalog = models_dir / f".bench-tenants-{uuid.uuid4().hex[:8]}.toml"
    try:
        figures = _run(settings, catalog, models_dir, seconds, b_share)
    finally:
        catalog.unlink(missing_ok=True)
    return emit(figures, as_json)


def _run(
    settings: Settings, catalog: Path, models_dir: Path, seconds: float, b_share: float
) -> dict[str, Any]:
    x = np.load(models_dir / "digits_test.npz")["X"].astype(np.float32)
    bench_catalog(models_dir / "catalog.toml", catalog, None)
    with live_system(settings, catalog, TAG, workers=1) as system:
        cap = _capacity(system.settings, system.catalog(), x)
        bench_catalog(models_dir / "catalog.toml", catalog, cap)  # A's bound, from capacity
        system.restart(workers=1)  # every role reads the bound
        env = {
            **os.environ,
            "REDIS_URL": system.url,
            "CASCADEQ_PREFIX": system.settings.prefix,
            "CASCADEQ_CATALOG": str(catalog),
            "CASCADEQ_LOG_LEVEL": "warning",
        }
        rate_b = b_share * cap
        rates = {"a": 10 * rate_b, "b": rate_b}
        progress(TAG, f"capacity {cap:.0f}/s; B alone at {rate_b:.0f}/s for {seconds}s")
        alone_b = phase(env, {"b": rate_b}, seconds)["b"]
        progress(TAG, f"A alone at {rates['a']:.0f}/s for {seconds}s")
        alone_a = phase(env, {"a": rates["a"]}, seconds)["a"]
        progress(TAG, f"A and B together for {seconds}s")
        shared = phase(env, rates, seconds)
    # capacity: what the model answered saturated by A alone, in this run's open loop
    capacity_rps = max(alone_a["rps"], 1e-9)
    used = shared["a"]["rps"] + shared["b"]["rps"]
    return {
        "model": MODEL,
        "capacity_rps": round(capacity_rps, 1),
        "burst_rps": round(cap, 1),
        "b_offered_rps": round(rates["b"], 1),
        "a_offered_rps": round(rates["a"], 1),
        "b_p50_alone_ms": alone_b["p50_ms"],
        "b_p99_alone_ms": alone_b["p99_ms"],
        "b_p50_shared_ms": shared["b"]["p50_ms"],
        "b_p99_shared_ms": shared["b"]["p99_ms"],
        "b_p99_ratio": round(shared["b"]["p99_ms"] / max(alone_b["p99_ms"], 1e-9), 2),
        "b_rps_alone": alone_b["rps"],
        "b_rps_shared": shared["b"]["rps"],
        "a_rps_alone": alone_a["rps"],
        "a_rps_shared": shared["a"]["rps"],
        "a_p50_alone_ms": alone_a["p50_ms"],
        "a_p99_alone_ms": alone_a["p99_ms"],
        "a_p50_shared_ms": shared["a"]["p50_ms"],
        "a_p99_shared_ms": shared["a"]["p99_ms"],
        "a_refused_shared": shared["a"]["refused"],
        "a_retry_after_s": shared["a"]["retry_after_s"],
        "b_refused_shared": shared["b"]["refused"],
        "b_p99_parts_alone_ms": alone_b["p99_parts_ms"],
        "b_p99_parts_shared_ms": shared["b"]["p99_parts_ms"],
        "b_tail_parts_alone_ms": alone_b["tail_parts_ms"],
        "b_tail_parts_shared_ms": shared["b"]["tail_parts_ms"],
        "a_batch_mean_alone": alone_a["batch_mean"],
        "batch_mean_shared": {t: shared[t]["batch_mean"] for t in ("a", "b")},
        "a_share_of_unused": round(
            shared["a"]["rps"] / max(capacity_rps - shared["b"]["rps"], 1e-9), 3
        ),
        "utilisation": round(used / capacity_rps, 3),
        "a_max_in_flight": in_flight_bound(cap),
        "max_batch": MAX_BATCH,
        "seconds_per_phase": seconds,
        "machine_note": "ratios from one run; the 2-core machine is shared with other work",
    }


def _capacity(settings: Settings, cat: Any, x: np.ndarray) -> float:
    with Producer(settings=settings, catalog=cat, tenant="a") as client:
        client.wait_many(
            client.submit_many([Request({"input": x[:1]}, model=MODEL)] * 200), timeout=120
        )  # warm-up: the session, the catalog, the connections
        return capacity(client, x, 4000)


if __name__ == "__main__":
    sys.exit(load_main(sys.argv[1:]))
