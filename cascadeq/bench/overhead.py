"""`cascadeq bench overhead`: what the queue costs per request against the floor.

The floor (cascadeq/bench/floor.py) is the same flow written as plainly as it can be,
with no validation and no features; it runs on the same Redis and the same small model,
side by side with the system in one run, so the ratios are of figures measured together.
The system is driven three ways: one `submit_many` of every request, single submits from
16 threads of one `Producer`, and from 64 tasks of one `AsyncProducer`.

CPU is user + system time of every process that touched a request: the producer's own
(this process, every thread, around submit and wait; the requests' arrays are built
before, as a caller's work), the router's and worker's (psutil), and Redis's (INFO cpu).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from cascadeq.bench.floor import floor_for
from cascadeq.bench.harness import ROLES, collect, cpu_seconds, redis_cpu_seconds
from cascadeq.bench.workbench import SMALL, Bench, ok_rps, requests, tag

MODES = ("submit_many", "threads_16", "async_64")


def idle_us_per_s(pids: list[int], seconds: float = 1.0) -> float:
    """What router and worker burn with nothing to do, to show it is not in the figure."""
    before = sum(map(cpu_seconds, pids))
    time.sleep(seconds)
    return (sum(map(cpu_seconds, pids)) - before) / seconds * 1e6


def _submit_many(bench: Bench, reqs: list[Any]) -> list[str]:
    ids: list[str] = bench.client.submit_many(reqs)
    return ids


def _threads(bench: Bench, reqs: list[Any], n: int = 16) -> list[str]:
    client = bench.client

    def one(req: Any) -> str:
        rid: str = client.submit(inputs=req.inputs, task=req.task, model=req.model, tier=req.tier)
        return rid

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, reqs, chunksize=64))


def _async_tasks(bench: Bench, reqs: list[Any], n: int = 64) -> tuple[list[str], Any]:
    """Submits from n tasks of one AsyncProducer, then waits there too."""
    from cascadeq.producer import AsyncProducer  # noqa: PLC0415 - the core imports roles lazily

    async def run() -> tuple[list[str], Any]:
        async with AsyncProducer(
            bench.system.url, settings=bench.system.settings, catalog=bench.catalog()
        ) as client:
            ids: list[str] = [""] * len(reqs)
            queue = iter(range(len(reqs)))

            async def worker() -> None:
                for i in queue:
                    req = reqs[i]
                    ids[i] = await client.submit(inputs=req.inputs, model=req.model)

            await asyncio.gather(*(worker() for _ in range(n)))
            return ids, await client.wait_many(ids, timeout=600)

    return asyncio.run(run())


def _drive(bench: Bench, mode: str, n: int) -> tuple[float, int, int, float]:
    """One mode's run: seconds, answered, lost, producer CPU seconds."""
    reqs = requests(SMALL, bench.inputs[SMALL], n)  # the caller's arrays: not queue CPU
    producer_before = time.process_time()
    started = time.perf_counter()
    if mode == "async_64":
        _, results = _async_tasks(bench, reqs)
        seconds = time.perf_counter() - started
        answered, lost = sum(r.ok for r in results), n - len(results)
    else:
        submit: Callable[[Bench, list[Any]], list[str]] = (
            _submit_many if mode == "submit_many" else _threads
        )
        run = collect(bench.client, submit(bench, reqs), np.zeros(n), started, 600)
        seconds, answered, lost = run.seconds, round(ok_rps(run) * run.seconds), run.lost
    return seconds, answered, lost, time.process_time() - producer_before


def measure_mode(bench: Bench, mode: str, n: int) -> dict[str, Any]:
    procs = bench.system.group.procs
    router = bench.system.router
    assert router is not None
    workers = [p.pid for p in procs if p is not router]
    before = {"router": cpu_seconds(router.pid), "worker": sum(map(cpu_seconds, workers))}
    redis_before = redis_cpu_seconds(bench.system.url)
    seconds, answered, lost, producer = _drive(bench, mode, n)
    spent = {
        "producer": producer,
        "router": cpu_seconds(router.pid) - before["router"],
        "worker": sum(map(cpu_seconds, workers)) - before["worker"],
        "redis": redis_cpu_seconds(bench.system.url) - redis_before,
    }
    row = {
        "mode": mode,
        "requests": n,
        "throughput_rps": round(answered / seconds, 1),
        "cpu_us_per_request": round(sum(spent.values()) / n * 1e6, 2),
        "per_role_us": {k: round(v / n * 1e6, 2) for k, v in spent.items()},
        "errors": n - answered - lost,
        "lost": lost,
    }
    tag(
        f"overhead {mode}: {row['throughput_rps']:.0f} req/s, "
        f"{row['cpu_us_per_request']:.1f} us CPU/request {row['per_role_us']}"
    )
    return row


def measure(bench: Bench) -> dict[str, Any]:
    """The floor and the system's three ways in, side by side, with their ratios."""
    n = bench.scale.overhead
    floor = floor_for(bench, SMALL, n)
    tag(
        f"floor: {floor['throughput_rps']:.0f} req/s, {floor['cpu_us_per_request']:.1f} us "
        f"CPU/request {floor['per_role_us']}"
    )
    rows = [measure_mode(bench, mode, n) for mode in MODES]
    router = bench.system.router
    assert router is not None
    idle = idle_us_per_s([router.pid, *(p.pid for p in bench.system.group.procs)])
    by_mode = {r["mode"]: r for r in rows}
    base = by_mode["submit_many"]
    return {
        "model": SMALL,
        "requests": n,
        "floor": floor,
        "modes": rows,
        "throughput_vs_floor": {
            r["mode"]: round(r["throughput_rps"] / floor["throughput_rps"], 3) for r in rows
        },
        "cpu_vs_floor": round(base["cpu_us_per_request"] / floor["cpu_us_per_request"], 3),
        "cpu_us_per_request": base["cpu_us_per_request"],
        "per_role_us": base["per_role_us"],
        "idle_roles_us_per_s": round(idle, 1),  # background: blocked reads, other models
    }


def render(report: dict[str, Any]) -> str:
    head = f"{'run':<14}{'req/s':>9}{'x floor':>9}{'us CPU':>9}" + "".join(
        f"{r:>10}" for r in ROLES
    )
    floor = report["floor"]
    lines = [head, "-" * len(head)]
    lines.append(
        f"{'floor':<14}{floor['throughput_rps']:>9.0f}{1.0:>9.2f}"
        f"{floor['cpu_us_per_request']:>9.1f}"
        + "".join(f"{floor['per_role_us'].get(r, 0.0):>10.1f}" for r in ROLES)
    )
    for row in report["modes"]:
        ratio = report["throughput_vs_floor"][row["mode"]]
        lines.append(
            f"{row['mode']:<14}{row['throughput_rps']:>9.0f}{ratio:>9.2f}"
            f"{row['cpu_us_per_request']:>9.1f}"
            + "".join(f"{row['per_role_us'][r]:>10.1f}" for r in ROLES)
        )
    lines.append(f"CPU per request, submit_many vs floor: {report['cpu_vs_floor']:.2f}x")
    return "\n".join(lines)
