"""`cascadeq bench rq`: plain rq against cascadeq on the small model, same Redis, same
number of worker processes (one each), measured in the same run.

rq runs one job per inference (rqjob.infer), with its SimpleWorker (jobs in the worker
process) and its default Worker (a forked work horse per job). The producer enqueues
the whole burst (pipelined, 500 jobs a round trip) and the clock stops when the last
job is in the finished (or failed) registry, the same burst cascadeq gets.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from typing import Any

from cascadeq.bench.workbench import SMALL, Bench, tag
from cascadeq.infra.process import ProcessGroup

KINDS = {"simple": "SimpleWorker", "fork": "Worker"}
CHUNK = 500


def enqueue(queue: Any, rows: list[list[float]], prefix: str) -> None:
    from rq import Queue  # noqa: PLC0415 - the bench extra

    from cascadeq.bench import rqjob  # noqa: PLC0415

    for start in range(0, len(rows), CHUNK):
        jobs = [
            Queue.prepare_data(rqjob.infer, args=(row,), job_id=f"{prefix}-{start + i}")
            for i, row in enumerate(rows[start : start + CHUNK])
        ]
        with queue.connection.pipeline() as pipe:
            queue.enqueue_many(jobs, pipeline=pipe)
            pipe.execute()


def wait_done(queue: Any, n: int, timeout: float) -> int:
    """Poll the registries' sizes (one cheap call each, every 20 ms); returns failures."""
    deadline = time.monotonic() + timeout
    while True:
        failed = queue.failed_job_registry.get_job_count(cleanup=False)
        done = queue.finished_job_registry.get_job_count(cleanup=False)
        if done + failed >= n:
            return int(failed)
        if time.monotonic() > deadline:
            raise TimeoutError(f"rq: {done + failed} of {n} jobs done after {timeout} s")
        time.sleep(0.02)


def run_kind(bench: Bench, kind: str, n: int) -> dict[str, Any]:
    import redis  # noqa: PLC0415
    from rq import Queue  # noqa: PLC0415
    from rq.job import Job  # noqa: PLC0415
    from rq.serializers import JSONSerializer  # noqa: PLC0415

    name = f"cqbench-{kind}-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "CASCADEQ_CATALOG": str(bench.system.catalog_path),
        "CASCADEQ_RQ_MODEL": SMALL,
    }
    argv = ["--url", bench.system.url, "--queue", name, "--worker", kind]
    rq_worker = ProcessGroup(env)
    conn = redis.Redis.from_url(bench.system.url)
    try:
        rq_worker.start([sys.executable, "-m", "cascadeq.bench.rqjob", *argv])
        queue = Queue(name, connection=conn, serializer=JSONSerializer)
        x = bench.inputs[SMALL]
        rows = [[float(v) for v in x[i % len(x)]] for i in range(n)]
        enqueue(queue, rows[:5], f"{name}-warm")  # the worker is up and its session loaded
        wait_done(queue, 5, 120)
        started = time.perf_counter()
        enqueue(queue, rows, name)
        failed = wait_done(queue, 5 + n, 600)
        seconds = time.perf_counter() - started
        answer = Job.fetch(f"{name}-0", connection=conn, serializer=JSONSerializer).return_value()
        if not (isinstance(answer, list) and len(answer) == 10):
            raise RuntimeError(f"rq {kind}: unexpected job result {answer!r}")
    finally:
        rq_worker.stop(30)
        for key in list(conn.scan_iter(match=f"rq:*{name}*", count=1000)):
            conn.unlink(key)
        conn.close()
    rps = (n - failed) / seconds
    tag(f"rq {KINDS[kind]:<12}: {n} jobs, {rps:.0f} jobs/s, {failed} failed")
    return {"worker": KINDS[kind], "jobs": n, "rps": round(rps, 1), "failed": failed}


def measure(bench: Bench) -> list[dict[str, Any]]:
    return [
        run_kind(bench, "simple", bench.scale.rq_simple),
        run_kind(bench, "fork", bench.scale.rq_fork),
    ]


def summary(rows: list[dict[str, Any]], cascadeq_rps: float) -> dict[str, Any]:
    best = max(r["rps"] for r in rows)
    return {
        "rq_rps": best,
        "rq": {r["worker"]: r["rps"] for r in rows},
        "speedup_vs_rq": round(cascadeq_rps / best, 2),
    }


def render(rows: list[dict[str, Any]], cascadeq_rps: float) -> str:
    head = f"{'system (1 worker process)':<28}{'requests':>9}{'req/s':>9}{'cascadeq x':>11}"
    lines = [
        head,
        "-" * len(head),
        f"{'cascadeq ' + SMALL:<28}{'':>9}{cascadeq_rps:>9.0f}{1:>11.1f}",
    ]
    for r in rows:
        ratio = cascadeq_rps / r["rps"] if r["rps"] else float("inf")
        lines.append(f"{'rq ' + r['worker']:<28}{r['jobs']:>9}{r['rps']:>9.0f}{ratio:>11.1f}")
    return "\n".join(lines)
