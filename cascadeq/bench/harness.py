"""A live system for measurements: its own Redis (unless REDIS_URL is set), a router and
workers as real processes, and a producer; plus the figures every bench reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra.connection import connect
from cascadeq.infra.embedded import EmbeddedRedis
from cascadeq.infra.process import ProcessGroup, interruptible, uninterrupted
from cascadeq.protocol.messages import EXPIRED, Result


def progress(tag: str, line: str) -> None:
    print(f"[{tag}] {line}", file=sys.stderr, flush=True)


@dataclass
class System:
    """Roles started from one catalog file; the router can be restarted on a new one."""

    url: str
    settings: Settings
    catalog_path: Path
    group: ProcessGroup
    router: subprocess.Popen[bytes] | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def start(self, workers: int = 2) -> None:
        self.router = self.group.spawn("router")
        self.group.spawn("worker", "--replicas", str(workers))

    def restart(self, workers: int = 2) -> None:
        """Every role again, so all of them read a changed catalog."""
        self.group.stop()
        self.start(workers)

    def catalog(self) -> Catalog:
        return Catalog.load(self.catalog_path)

    def counts(self) -> dict[str, int]:
        r = connect(self.url)
        raw: Any = r.hgetall(self.settings.keys().routing_counts)
        r.close()
        return {k.decode(): int(v) for k, v in raw.items()}

    def memory(self) -> dict[str, dict[str, int]]:
        """Each model's load memory as its workers measured it (for `cascadeq cost`)."""
        from cascadeq.ops.stats import model_memory  # noqa: PLC0415

        r = connect(self.url)
        try:
            return model_memory(r, self.settings.keys(), sorted(self.catalog().models))
        finally:
            r.close()


@contextmanager
def redis_for(url: str | None) -> Iterator[str]:
    """``url`` if set, else a private redis-server, stopped even if a signal lands mid-start."""
    if url:
        yield url
        return
    server = EmbeddedRedis()
    try:
        with uninterrupted():
            server.start()
        yield server.url
    finally:
        with uninterrupted():
            server.stop()


@contextmanager
def live_system(
    settings: Settings, catalog_path: Path, tag: str, workers: int = 2
) -> Iterator[System]:
    """Everything torn down afterwards, on SIGTERM or SIGINT too; on a user's Redis,
    under a private key prefix."""
    shared = bool(settings.redis_url)
    prefix = f"{settings.prefix}-{tag}-{uuid.uuid4().hex[:8]}" if shared else settings.prefix
    with interruptible(), redis_for(settings.redis_url) as url:
        settings = replace(settings, redis_url=url, prefix=prefix)
        progress(tag, f"redis at {url}, keys under {prefix}:; 1 router, {workers} workers")
        env = {
            **os.environ,
            "REDIS_URL": url,
            "CASCADEQ_CATALOG": str(catalog_path),
            "CASCADEQ_PREFIX": prefix,
            "CASCADEQ_LOG_LEVEL": os.environ.get("CASCADEQ_LOG_LEVEL", "warning"),
        }
        system = System(url, settings, catalog_path, ProcessGroup(env))
        try:
            system.start(workers)
            yield system
        finally:
            system.group.stop()
            if shared:
                remove_keys(url, prefix)


def remove_keys(url: str, prefix: str) -> None:
    client = connect(url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for start in range(0, len(keys), 500):
        client.unlink(*keys[start : start + 500])
    client.close()


@dataclass(frozen=True)
class Run:
    """One burst of requests and what came back."""

    results: list[Result]
    labels: np.ndarray  # for the answered results, in the same order
    seconds: float
    lost: int  # accepted but never answered within the timeout


def run_burst(client: Any, requests: list[Any], labels: np.ndarray, timeout: float = 300) -> Run:
    """Submit all at once, wait for all."""
    started = time.perf_counter()
    return collect(client, client.submit_many(requests), labels, started, timeout)


def run_paced(
    client: Any, requests: list[Any], labels: np.ndarray, rate_rps: float, timeout: float = 300
) -> Run:
    """Open loop: request i is due at i / rate, whatever came back, so latency is honest.

    Everything already due goes in one call: a producer slower than one round trip per
    request then lags the schedule by about one call, instead of drifting ever later and
    hiding the queueing it should have caused.
    """
    started = time.perf_counter()
    ids: list[str] = []
    sent = 0
    while sent < len(requests):
        now = time.perf_counter()
        due = min(len(requests), int((now - started) * rate_rps) + 1)
        if due <= sent:
            time.sleep(started + sent / rate_rps - now)  # the schedule, not a wait for results
            continue
        ids += client.submit_many(requests[sent:due])
        sent = due
    return collect(client, ids, labels, started, timeout)


def collect(client: Any, ids: list[str], labels: np.ndarray, started: float, timeout: float) -> Run:
    """Wait for every id; a Timeout counts the missing as lost rather than failing the run."""
    from cascadeq.producer import Timeout  # noqa: PLC0415 - the core imports roles lazily

    try:
        results = client.wait_many(ids, timeout=timeout)
        lost = 0
    except Timeout as exc:
        results = [exc.done[i] for i in ids if i in exc.done]
        lost = len(exc.missing)
    by_id = dict(zip(ids, labels, strict=True))
    seconds = time.perf_counter() - started
    return Run(results, np.array([by_id[r.id] for r in results]), seconds, lost)


def models_run(result: Result) -> list[str]:
    """Hops where a model really computed (a hop with compute_ms)."""
    return [str(hop["model"]) for hop in result.path if "compute_ms" in hop]


ROLES = ("producer", "router", "worker", "redis")


def cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and everything it started.

    Per thread from the scheduler's nanosecond counters where Linux has them: the
    processes' tick counts (psutil) move in 10 ms steps, 28 µs a request over a run of
    360. The roles' threads live as long as their process, so none drops out mid-run.
    """
    import psutil  # noqa: PLC0415 - the bench extra

    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        precise = threads_seconds(p.pid)
        if precise is None:
            times = p.cpu_times()
            precise = times.user + times.system
        total += precise
    return total


def threads_seconds(pid: int) -> float | None:
    """Sum of /proc/<pid>/task/*/schedstat run time; None where there is none."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    ns = 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as f:
                ns += int(f.read().split()[0])
        except FileNotFoundError:
            continue  # the thread ended between the listing and the read
        except (OSError, ValueError, IndexError):
            return None
    return ns / 1e9


def redis_cpu_seconds(url: str) -> float:
    from cascadeq.infra.cpu import redis_cpu_seconds as info_cpu  # noqa: PLC0415

    r = connect(url)
    try:
        return info_cpu(r)
    finally:
        r.close()


def role_cpu(system: System) -> dict[str, float] | None:
    """CPU seconds so far of every role: this process (the producer), the router's and the
    workers' processes (psutil), Redis (INFO cpu); None without psutil (the bench extra)."""
    try:
        import psutil  # noqa: F401, PLC0415
    except ImportError:
        return None
    router = system.router
    workers = [p.pid for p in system.group.procs if p is not router]
    return {
        "producer": time.process_time(),
        "router": cpu_seconds(router.pid) if router is not None else 0.0,
        "worker": sum(map(cpu_seconds, workers)),
        "redis": redis_cpu_seconds(system.url),
    }


@contextmanager
def cpu_spent(system: System) -> Iterator[dict[str, float]]:
    """Each role's CPU seconds over the block, filled in when it ends (empty: not measured)."""
    spent: dict[str, float] = {}
    before = role_cpu(system)
    yield spent
    after = role_cpu(system)
    if before is not None and after is not None:
        spent.update({k: after[k] - before[k] for k in before})


def escalated(result: Result) -> bool:
    return len(models_run(result)) > 1


def cpu_figures(spent: dict[str, float], answered: int, compute_us: float) -> dict[str, Any]:
    """Total CPU per answered request (every role, Redis, the models' compute inside the
    workers' figure) next to compute only; a total is never below the compute it holds."""
    if not spent or not answered:
        return {"total_cpu_us": None, "compute_us": round(compute_us, 2), "roles_us": {}}
    roles = {k: v / answered * 1e6 for k, v in spent.items()}
    return {
        "total_cpu_us": round(max(compute_us, sum(roles.values())), 2),
        "compute_us": round(compute_us, 2),
        "roles_us": {k: round(v, 2) for k, v in roles.items()},
    }


def figures(
    run: Run, catalog: Catalog, large: str, spent: dict[str, float] | None = None
) -> dict[str, Any]:
    """The figures every table shares. Accuracy is over requests answered ok; costs are
    per answered request: compute from the catalog's per-sample costs (µs, as `models
    measure` writes them), total from the CPU ``spent`` by every role (cpu_spent)."""
    results = run.results
    n = len(results) + run.lost
    output = catalog.models[large].output
    ok = [(r, y) for r, y in zip(results, run.labels, strict=True) if r.ok]
    correct = sum(int(np.argmax(r.outputs[output][0])) == y for r, y in ok)
    ran = [models_run(r) for r in results]
    cost = sum(catalog.models[m].cost for models in ran for m in models)
    totals = np.array([r.timings.get("total_ms", 0.0) for r, _ in ok] or [0.0])
    esc = [r.timings.get("total_ms", 0.0) for r, _ in ok if escalated(r)]
    answered = len(ok)
    return {
        "requests": n,
        "accuracy": round(correct / max(1, len(ok)), 4),
        "large_share": round(sum(large in models for models in ran) / max(1, n), 4),
        "large_calls": sum(large in models for models in ran),
        "relative_cost": round(cost / (max(1, n) * catalog.models[large].cost), 4),
        "throughput_rps": round(n / run.seconds, 1),
        "p50_ms": round(float(np.percentile(totals, 50)), 2),
        "p99_ms": round(float(np.percentile(totals, 99)), 2),
        "escalated": len(esc),
        "escalated_p50_ms": round(float(np.percentile(esc, 50)), 2) if esc else None,
        "escalated_p99_ms": round(float(np.percentile(esc, 99)), 2) if esc else None,
        **cpu_figures(spent or {}, answered, cost / max(1, answered)),
        "expired": sum(r.status == EXPIRED for r in results),
        "errors": sum(not r.ok and r.status != EXPIRED for r in results),
        "lost": run.lost,
    }


def emit(figures: dict[str, Any], as_json: bool) -> int:
    """A bench's figures: one per line for people (unless ``as_json``), then the one JSON
    line a machine reads last."""
    if not as_json:
        width = max((len(k) for k in figures), default=0)
        for k, v in figures.items():
            print(f"{k:>{width}}: {v}")
    print(json.dumps(figures))
    return 0
