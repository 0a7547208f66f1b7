"""Each role's own CPU per request, measured where it is spent, published for the tools.

A model's catalog ``cost`` counts compute only; the queue's own work (reading, decoding,
settling, the round trips) is CPU too, and for small models it is most of it. A worker
thread and a router measure their thread CPU (``time.thread_time``) per batch, add what
their helper threads spent meanwhile (the worker's prefetching reader), and keep a moving
average of CPU per request handled. It rides in the batch's own write (the ``obs:<model>``
hash, or the role's hash), so `cascadeq cost`, `stats` and the router read it with no
benchmark run. Redis's share is measured by the tools from INFO cpu over an interval.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

ALPHA = 0.1  # weight of the newest batch in the moving averages
CPU_FIELD = "cpu_us"  # CPU µs per request handled, moving average
CPU_TTL_S = 24 * 3600


def _zero() -> float:
    return 0.0


@dataclass
class CpuMeter:
    """Thread CPU since the last ``mark``, plus helper threads' shares, per request.

    Numerator and denominator are averaged apart, so a batch of one weighs as one
    request, not as a whole batch's worth. The first batch is a warm-up (the model
    session's first run is many times a later one) and is left out. A step that found
    nothing marks 0: what the
    idle loop spent (a refresh, a blocked read) is dropped, else a lightly loaded model's
    few requests would carry seconds of polling (measured by `bench dms` before this:
    a 759 µs hop for the digits large model behind a 15% escalation).
    """

    helper: Callable[[], float] = _zero  # a helper thread's cumulative CPU seconds
    last: float = field(default_factory=time.thread_time)
    last_helper: float = 0.0
    thread: int = field(default_factory=threading.get_ident)
    cpu_s: float = 0.0
    requests: float = 0.0
    batches: int = 0  # batches averaged; the first one served is left out (warm-up)
    warm: bool = False

    @property
    def seen(self) -> bool:
        return self.batches > 0

    def start(self) -> None:
        """Count from now, on the calling thread: the serving loop's, at its setup."""
        self.thread, self.last, self.last_helper = (
            threading.get_ident(), time.thread_time(), self.helper()
        )  # fmt: skip

    def mark(self, requests: int) -> None:
        """Close a batch that handled ``requests``; call on the thread that serves."""
        now, helper = time.thread_time(), self.helper()
        if threading.get_ident() != self.thread:  # built on another thread: start here
            self.thread, self.last, self.last_helper = threading.get_ident(), now, helper
            return
        spent = max(0.0, now - self.last) + max(0.0, helper - self.last_helper)
        self.last, self.last_helper = now, helper
        if requests <= 0:
            return  # an idle poll: the role's fixed cost over time, not a request's
        if not self.warm:  # a session's first run and the setup before it: not a request's
            self.warm = True
            return
        self.batches += 1
        alpha = max(ALPHA, 1.0 / self.batches)  # a plain mean until the average has history
        self.cpu_s += alpha * (spent - self.cpu_s)
        self.requests += alpha * (requests - self.requests)

    @property
    def us_per_request(self) -> float:
        return self.cpu_s / self.requests * 1e6 if self.requests > 0 else 0.0

    def fields(self) -> dict[str, float]:
        return {CPU_FIELD: round(self.us_per_request, 2)} if self.seen else {}


def role_figure(raw: Mapping[Any, Any] | None) -> float | None:
    """A published hash's CPU µs per request; None when nothing is published."""
    if not raw:
        return None
    for k, v in raw.items():
        if (k.decode() if isinstance(k, bytes) else str(k)) == CPU_FIELD:
            try:
                return float(v)
            except (TypeError, ValueError):
                return None
    return None


def redis_cpu_seconds(r: redis.Redis) -> float:
    """User + system CPU seconds of the Redis server since it started (INFO cpu)."""
    info: Any = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@dataclass(frozen=True)
class Totals:
    """CPU µs per answered request: each role's share, Redis's, and the models' compute.

    ``roles`` are measured CPU that includes their models' compute (a worker's thread
    runs the model), so ``total`` is the sum of roles and Redis; ``compute`` is the part
    of it the models' compute accounts for, the figure the catalog's costs give.
    """

    roles: dict[str, float]  # role name -> µs per answered request
    redis: float | None  # None: not measured
    compute: float

    @property
    def total(self) -> float:
        return max(self.compute, sum(self.roles.values()) + (self.redis or 0.0))

    def as_dict(self) -> dict[str, Any]:
        return {
            "total_cpu_us": round(self.total, 2),
            "compute_us": round(self.compute, 2),
            "redis_us": None if self.redis is None else round(self.redis, 2),
            "roles_us": {k: round(v, 2) for k, v in self.roles.items()},
        }
