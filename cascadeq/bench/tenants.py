"""``cascadeq bench tenants``: fair share between two tenants on one model, side by side.

One live system (router, one worker) on a copy of the catalog that declares tenants
``a`` and ``b`` (equal weights), so each has its own sub-stream of the model's lane. It
measures the model's capacity (a burst), then paces, open loop, tenant B alone at
``b_share`` of capacity, tenant A alone at ten times B's rate (past capacity), and both
together, each tenant from its own client. A's excess is refused at its own queue's bound
(``queue_full``, with ``retry_after_s``), never at B's. The figures that matter are
ratios within the run: B's p99 together against alone, the capacity A receives, and the
model's utilisation (answered requests per second over capacity) while shared.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cascadeq.bench.harness import live_system, progress
from cascadeq.config.settings import Settings
from cascadeq.producer import Producer, Rejected, Request, Timeout

TAG = "tenants"
MODEL = "digits-large"
TENANTS = "\n[tenants.a]\nweight = 1\n\n[tenants.b]\nweight = 1\n"


@dataclass
class Offered:
    """One tenant's paced load in one phase: what it sent, what was refused, results."""

    tenant: str
    rate: float
    ids: list[str] = field(default_factory=list)
    refused: int = 0
    retry_after_s: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    answered_at: list[float] = field(default_factory=list)

    def figures(self, seconds: float) -> dict[str, Any]:
        lat = np.asarray(self.latencies_ms or [0.0])
        return {
            "offered_rps": round(self.rate, 1),
            "rps": round(len(self.latencies_ms) / seconds, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "answered": len(self.latencies_ms),
            "refused": self.refused,
            "retry_after_s": round(float(np.median(self.retry_after_s)), 4)
            if self.retry_after_s
            else None,
        }


def pace(client: Producer, load: Offered, x: np.ndarray, seconds: float, tick_s: float) -> None:
    """Open loop: what is due every tick goes in one call; a refused call is counted."""
    start = time.perf_counter()
    sent = 0
    while True:
        now = time.perf_counter()
        if now - start >= seconds:
            return
        due = int((now - start) * load.rate) + 1
        if due > sent:
            reqs = [Request({"input": x[(sent + i) % len(x)][None]}, model=MODEL)
                    for i in range(due - sent)]  # fmt: skip
            try:
                load.ids += client.submit_many(reqs)
            except Rejected as exc:
                load.refused += len(reqs) - len(exc.accepted)
                load.ids += exc.accepted
                if exc.retry_after_s is not None:
                    load.retry_after_s.append(exc.retry_after_s)
            sent = due
        time.sleep(tick_s)  # the schedule's tick, not a wait for results


def settle(client: Producer, load: Offered, timeout: float) -> None:
    """Every accepted request's latency (submit to result stored, its total_ms)."""
    try:
        results = client.wait_many(load.ids, timeout=timeout)
    except Timeout as exc:
        results = list(exc.done.values())
    load.latencies_ms = [r.timings.get("total_ms", 0.0) for r in results if r.ok]


def phase(
    clients: dict[str, Producer], rates: dict[str, float], x: np.ndarray, seconds: float
) -> dict[str, dict[str, Any]]:
    """Pace each tenant's load from its own thread and client, then wait for all of it."""
    loads = {t: Offered(t, rate) for t, rate in rates.items()}
    threads = [
        threading.Thread(target=pace, args=(clients[t], loads[t], x, seconds, 0.005)) for t in loads
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for t, load in loads.items():
        settle(clients[t], load, timeout=120)
    return {t: load.figures(seconds) for t, load in loads.items()}


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
    b_share: float = 0.1,
) -> int:
    catalog = models_dir / f".bench-tenants-{uuid.uuid4().hex[:8]}.toml"
    catalog.write_text((models_dir / "catalog.toml").read_text(encoding="utf-8") + TENANTS)
    try:
        figures = _run(settings, catalog, models_dir, seconds, b_share)
    finally:
        catalog.unlink(missing_ok=True)
    if not as_json:
        for k, v in figures.items():
            print(f"{k:>22}: {v}")
    print(json.dumps(figures))
    return 0


def _run(
    settings: Settings, catalog: Path, models_dir: Path, seconds: float, b_share: float
) -> dict[str, Any]:
    x = np.load(models_dir / "digits_test.npz")["X"].astype(np.float32)
    with live_system(settings, catalog, TAG, workers=1) as system:
        cat = system.catalog()
        cap = _capacity(system.settings, cat, x)
        # A's own queue holds about half a second of the model's work: past it, A is refused
        bounded = replace(system.settings, model_max_depth=max(64, int(cap / 2)))
        with Producer(settings=bounded, catalog=cat, tenant="a") as a, Producer(
            settings=bounded, catalog=cat, tenant="b"
        ) as b:  # fmt: skip
            clients = {"a": a, "b": b}
            rate_b = b_share * cap
            rates = {"a": 10 * rate_b, "b": rate_b}
            progress(TAG, f"capacity {cap:.0f}/s; B alone at {rate_b:.0f}/s for {seconds}s")
            alone_b = phase(clients, {"b": rate_b}, x, seconds)["b"]
            progress(TAG, f"A alone at {rates['a']:.0f}/s for {seconds}s")
            alone_a = phase(clients, {"a": rates["a"]}, x, seconds)["a"]
            progress(TAG, f"A and B together for {seconds}s")
            shared = phase(clients, rates, x, seconds)
    used = shared["a"]["rps"] + shared["b"]["rps"]
    return {
        "model": MODEL,
        "capacity_rps": round(cap, 1),
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
        "a_share_of_unused": round(shared["a"]["rps"] / max(cap - shared["b"]["rps"], 1e-9), 3),
        "utilisation": round(used / cap, 3),
        "seconds_per_phase": seconds,
        "machine_note": "ratios from one run; the 2-core machine is shared with other work",
    }


def _capacity(settings: Settings, cat: Any, x: np.ndarray) -> float:
    with Producer(settings=settings, catalog=cat, tenant="a") as client:
        client.wait_many(
            client.submit_many([Request({"input": x[:1]}, model=MODEL)] * 200), timeout=120
        )  # warm-up: the session, the catalog, the connections
        return capacity(client, x, 4000)
