"""`cascadeq bench overhead`: CPU the queue spends per request, with a model that costs
next to nothing (4 inputs -> softmax), at saturation.

CPU is user + system time: the router's and worker's (with any children) from psutil,
the producer's own process time around submit and wait (the requests' arrays are built
before: that is the caller's work, not the queue's).
Redis's own CPU (INFO cpu) is reported beside it, not in the sum: it is the store's cost,
not a cascadeq process's.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from cascadeq.bench.harness import collect
from cascadeq.bench.workbench import TRIVIAL, Bench, ok_rps, requests, tag
from cascadeq.connection import connect


def cpu_seconds(pid: int) -> float:
    """User + system seconds of a process and everything it started."""
    import psutil  # noqa: PLC0415 - the bench extra

    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        times = p.cpu_times()
        total += times.user + times.system
    return total


def redis_cpu_seconds(url: str) -> float:
    r = connect(url)
    info: Any = r.info("cpu")
    r.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def idle_us_per_s(pids: list[int], seconds: float = 1.0) -> float:
    """What router and worker burn with nothing to do, to show it is not in the figure."""
    before = sum(map(cpu_seconds, pids))
    time.sleep(seconds)
    return (sum(map(cpu_seconds, pids)) - before) / seconds * 1e6


def measure(bench: Bench) -> dict[str, Any]:
    n = bench.scale.overhead
    procs = bench.system.group.procs
    router = bench.system.router
    assert router is not None
    workers = [p.pid for p in procs if p is not router]
    bench.client.wait_many(bench.client.submit_many(requests(TRIVIAL, bench.inputs[TRIVIAL], 200)))
    idle = idle_us_per_s([router.pid, *workers])
    before = {"router": cpu_seconds(router.pid), "worker": sum(map(cpu_seconds, workers))}
    reqs = requests(TRIVIAL, bench.inputs[TRIVIAL], n)  # the caller's arrays: not queue CPU
    redis_before, producer_before = redis_cpu_seconds(bench.system.url), time.process_time()
    started = time.perf_counter()
    run = collect(bench.client, bench.client.submit_many(reqs), np.zeros(n), started, 600)
    producer = time.process_time() - producer_before
    redis = redis_cpu_seconds(bench.system.url) - redis_before
    spent = {
        "producer": producer,
        "router": cpu_seconds(router.pid) - before["router"],
        "worker": sum(map(cpu_seconds, workers)) - before["worker"],
    }
    per = {k: round(v / n * 1e6, 2) for k, v in spent.items()}
    row = {
        "model": TRIVIAL,
        "requests": n,
        "throughput_rps": round(ok_rps(run), 1),
        "overhead_us_per_request": round(sum(spent.values()) / n * 1e6, 2),
        "per_process_us": per,
        "redis_us_per_request": round(redis / n * 1e6, 2),
        "idle_roles_us_per_s": round(idle, 1),  # background: blocked reads, other models
        "mean_batch": round(sum(r.batch_size for r in run.results) / max(1, len(run.results)), 2),
        "errors": sum(not r.ok for r in run.results),
        "lost": run.lost,
    }
    tag(
        f"overhead: {row['overhead_us_per_request']:.1f} us CPU/request "
        f"(producer {per['producer']}, router {per['router']}, worker {per['worker']}; "
        f"redis {row['redis_us_per_request']}) at {row['throughput_rps']:.0f} req/s; idle roles "
        f"{idle:.0f} us/s"
    )
    return row


def render(row: dict[str, Any]) -> str:
    per = row["per_process_us"]
    head = (
        f"{'us CPU/request':<16}{'producer':>9}{'router':>8}{'worker':>8}{'total':>8}{'redis':>8}"
    )
    return "\n".join(
        [
            head,
            "-" * len(head),
            f"{TRIVIAL:<16}{per['producer']:>9.1f}{per['router']:>8.1f}{per['worker']:>8.1f}"
            f"{row['overhead_us_per_request']:>8.1f}{row['redis_us_per_request']:>8.1f}",
        ]
    )
