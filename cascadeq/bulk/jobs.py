"""A bulk job's life cycle in rq: enqueue, read progress, stop, retry, serve.

Jobs live on the rq queue ``cascadeq-bulk`` (``cascadeq-bulk-<prefix>`` for a prefix other
than the default, so deployments sharing a Redis keep apart), with rq's JSON serializer.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import redis
from rq import Queue, Worker
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from cascadeq.bulk import rows as rowfile
from cascadeq.bulk.job import IN_FLIGHT
from cascadeq.config.settings import Settings

QUEUE = "cascadeq-bulk"
JOB_FUNC = "cascadeq.bulk.job.run"
RESULT_TTL_S = 7 * 24 * 3600  # how long a finished job (and its progress) stays readable
FAILURE_TTL_S = 7 * 24 * 3600  # how long a failed one stays, to be inspected or retried
JOB_TIMEOUT_S = 24 * 3600  # rq kills a job running longer than this
ENDED = {
    s.value for s in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)
}


def queue_name(settings: Settings) -> str:
    return QUEUE if settings.prefix == "cq" else f"{QUEUE}-{settings.prefix}"


def connection(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.require_redis_url())


def queue(settings: Settings, conn: redis.Redis | None = None) -> Queue:
    return Queue(
        queue_name(settings), connection=conn or connection(settings), serializer=JSONSerializer
    )


def submit(
    input_path: str | Path,
    *,
    task: str,
    output: str | Path | None = None,
    tier: str = "standard",
    settings: Settings | None = None,
    redis_url: str | None = None,
    result_ttl_s: int = RESULT_TTL_S,
    failure_ttl_s: int = FAILURE_TTL_S,
    job_timeout_s: int = JOB_TIMEOUT_S,
    in_flight: int = IN_FLIGHT,
    rate: float = 0.0,
) -> str:
    """Enqueue a bulk job; returns its rq job id. Paths are made absolute for the worker.

    ``in_flight`` bounds the rows submitted and not yet answered: fewer leaves shorter
    queues ahead of interactive requests, more keeps the workers busier. ``rate`` fixes
    the rows sent per second; 0 (the default) sends one chunk of two model batches per
    50 ms, slowed on queue_full (cascadeq.bulk.pace).
    """
    if rate < 0:
        raise ValueError(f"rate must be 0 (the default pace) or positive rows/s, got {rate}")
    if in_flight < 1:
        raise ValueError(f"in_flight must be at least 1, got {in_flight}")
    settings = settings or Settings.from_env(redis_url=redis_url)
    src = Path(input_path).resolve()
    if not src.is_file():
        raise FileNotFoundError(f"bulk input {src} does not exist")
    rowfile.kind_of(src)  # refuse an unknown kind now, not in the worker
    out = Path(output).resolve() if output else Path(rowfile.default_output(src))
    job = queue(settings).enqueue(
        JOB_FUNC,
        kwargs={
            "input_path": str(src),
            "output_path": str(out),
            "task": task,
            "tier": tier,
            "in_flight": in_flight,
            "rate": rate,
        },
        result_ttl=result_ttl_s,
        failure_ttl=failure_ttl_s,
        job_timeout=job_timeout_s,
        description=f"bulk {task} {src.name} -> {out.name}",
    )
    return str(job.id)


def fetch(job_id: str, settings: Settings) -> Job:
    return Job.fetch(job_id, connection=connection(settings), serializer=JSONSerializer)


def progress(job_id: str, settings: Settings) -> dict[str, Any]:
    """State and progress: status, done, total, errors, rate (rows/s), eta_s, and the
    rows/s the job sends at now (send_rate: cascadeq.bulk.pace adapts it)."""
    job = fetch(job_id, settings)
    meta = job.get_meta(refresh=True)
    done, total = int(meta.get("done", 0)), meta.get("total")
    rate = float(meta.get("rate", 0.0))
    eta = (total - done) / rate if total is not None and rate > 0 else None
    return {
        "id": job.id,
        "status": _status(job),
        "done": done,
        "total": total,
        "errors": int(meta.get("errors", 0)),
        "rate": rate,
        "send_rate": float(meta.get("send_rate", 0.0)),
        "eta_s": None if eta is None else round(eta, 1),
        "output": (job.kwargs or {}).get("output_path"),
        "error": _failure(job),
    }


def _status(job: Job, refresh: bool = True) -> str:
    return str(job.get_status(refresh=refresh).value)


def _failure(job: Job) -> str | None:
    """The last line of a failed job's traceback: what a person needs first."""
    if _status(job, refresh=False) != JobStatus.FAILED.value:
        return None
    result = job.latest_result()
    lines = (result.exc_string or "").strip().splitlines() if result is not None else []
    return lines[-1] if lines else "failed"


def cancel(job_id: str, settings: Settings) -> str:
    """Stop a running job (its work horse is killed), cancel a queued one; the new status."""
    job = fetch(job_id, settings)
    status = _status(job)
    if status == JobStatus.STARTED.value:
        with contextlib.suppress(InvalidJobOperation):
            send_stop_job_command(job.connection, job.id, serializer=JSONSerializer)
    elif status not in ENDED:
        job.cancel()
    return _status(job)


def resubmit(job_id: str, settings: Settings) -> str:
    """Run a job again under the same id, after its rq worker died or it failed.

    rq notices a dead worker's job only once its heartbeat lapses; this does not wait
    for that. Enqueued under the same id, the rows get the same request ids, so the
    retry finds what was already submitted or answered instead of computing it again.
    Stop the old work horse first (a whole machine gone is the case this is for).
    """
    old = fetch(job_id, settings)
    if _status(old) == JobStatus.FINISHED.value:
        return job_id
    q = queue(settings, old.connection)
    StartedJobRegistry(queue=q).remove_executions(old)
    with contextlib.suppress(NoSuchJobError, InvalidJobOperation):
        FailedJobRegistry(queue=q).remove(old)
    job = q.enqueue(
        JOB_FUNC,
        kwargs=old.kwargs,
        job_id=job_id,
        result_ttl=old.result_ttl,
        failure_ttl=old.failure_ttl,
        job_timeout=old.timeout,
        description=old.description,
    )
    return str(job.id)


def work(settings: Settings, burst: bool = False) -> int:
    """rq's own Worker on the bulk queue; SIGTERM lets the current job finish (rq's rule)."""
    conn = connection(settings)
    worker = Worker([queue(settings, conn)], connection=conn, serializer=JSONSerializer)
    worker.work(burst=burst, with_scheduler=False)
    return 0


def wait(job_id: str, settings: Settings, timeout: float, poll_s: float = 0.2) -> dict[str, Any]:
    """Poll until the job ends; its progress then. Raises TimeoutError past ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        state = progress(job_id, settings)
        if state["status"] in ENDED:
            return state
        if time.monotonic() > deadline:
            raise TimeoutError(f"bulk job {job_id} still {state['status']} after {timeout}s")
        time.sleep(poll_s)
