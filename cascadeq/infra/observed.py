"""What each model is doing now: backlog from its streams, speed from its workers.

Workers fold every batch into a small hash (one HSET riding in the batch's effects
pipeline, so no extra round trip); routers and workers read all models' state in one
pipeline at most every REFRESH_S and derive what the deadline and load rules need.
Estimates are deliberately simple (backlog x per-sample time / consumers) and stated in
the result's path, so a wrong one is visible rather than magic.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import redis

from cascadeq.config.catalog import Catalog
from cascadeq.config.tasks import TaskSpec
from cascadeq.infra.cpu import CPU_FIELD
from cascadeq.infra.queues import BacklogRead
from cascadeq.protocol.clock import Every
from cascadeq.protocol.keys import Keys

ALPHA = 0.2  # weight of the newest batch in the moving averages
FIT_ALPHA = 0.02  # the call-cost fit's: slower, so both call sizes stay in its memory
REFRESH_S = 0.25
OBSERVED_TTL_S = 24 * 3600  # a model nobody served for a day has no recent speed


@dataclass
class CallCost:
    """compute_ms = fixed + per_row x rows, fitted by least squares over moving sums.

    A model call's cost is not proportional to its rows: a large model reads all its
    weights once per call, so 4 rows may cost nearly what 32 do. Whether to run a few
    unsure rows at once or let them join full batches in the queue turns on the split.
    """

    n: float = 0.0
    t: float = 0.0
    nn: float = 0.0
    nt: float = 0.0
    w: float = 0.0

    def add(self, rows: int, compute_ms: float) -> None:
        keep = 1.0 - FIT_ALPHA
        self.n = keep * self.n + rows
        self.t = keep * self.t + compute_ms
        self.nn = keep * self.nn + rows * rows
        self.nt = keep * self.nt + rows * compute_ms
        self.w = keep * self.w + 1.0

    def fit(self) -> tuple[float, float] | None:
        """(fixed ms, ms per row), or None until calls of different sizes were seen."""
        if self.w <= 0:
            return None
        mean_n, mean_t = self.n / self.w, self.t / self.w
        var = self.nn / self.w - mean_n * mean_n
        if var < 1.0:  # every call about one size: no slope to be had
            return None
        per_row = max(0.0, (self.nt / self.w - mean_n * mean_t) / var)
        return max(0.0, mean_t - per_row * mean_n), per_row


@dataclass
class Speed:
    """A worker's moving averages for one model; written after each batch."""

    compute_ms: float = 0.0
    batch: float = 0.0
    queue_ms: float = 0.0
    seen: bool = False
    cost: CallCost = field(default_factory=CallCost)

    def update(self, compute_ms: float, batch: int, queue_ms: float) -> None:
        self.cost.add(batch, compute_ms)
        if not self.seen:
            self.compute_ms, self.batch, self.queue_ms, self.seen = (
                compute_ms,
                batch,
                queue_ms,
                True,
            )
            return
        self.compute_ms += ALPHA * (compute_ms - self.compute_ms)
        self.batch += ALPHA * (batch - self.batch)
        self.queue_ms += ALPHA * (queue_ms - self.queue_ms)

    def queue(
        self, pipe: Any, keys: Keys, model: str, extra: dict[str, float] | None = None
    ) -> None:
        """Add the write to a pipeline that is going to Redis anyway."""
        key = keys.observed(model)
        pipe.hset(
            key,
            mapping={
                "compute_ms": round(self.compute_ms, 4),
                "batch": round(self.batch, 3),
                "queue_ms": round(self.queue_ms, 3),
                "at": int(time.time() * 1000),
                **(extra or {}),
            },
        )
        pipe.expire(key, OBSERVED_TTL_S)


@dataclass(frozen=True)
class ModelState:
    """One model as seen from Redis; zeros mean "nothing observed yet"."""

    backlog: int = 0  # requests not yet acknowledged over all lanes (the request counters)
    consumers: int = 0
    compute_ms: float = 0.0  # per batch
    batch: float = 0.0  # samples per batch
    queue_ms: float = 0.0
    max_wait_ms: float = 0.0
    cpu_us: float = 0.0  # the workers' measured CPU per request handled (0: not published)

    @property
    def compute_us(self) -> float:
        """Compute per sample, from the observed batches."""
        return self.compute_ms / self.batch * 1000.0 if self.batch > 0 else 0.0

    @property
    def hop_us(self) -> float:
        """A worker's CPU per request beyond the model's compute: the queue's share of a hop."""
        return max(0.0, self.cpu_us - self.compute_us) if self.cpu_us else 0.0

    @property
    def est_wait_ms(self) -> float:
        """Time to drain the backlog ahead of a new request, from what waits now.

        Not the recent queue_ms average: after a burst it stays high for a while and
        would send every deadline request away from a queue that is already empty.
        """
        if self.batch <= 0:
            return 0.0
        per_sample = self.compute_ms / self.batch
        return self.backlog * per_sample / max(1, self.consumers)

    @property
    def est_latency_ms(self) -> float:
        """Waiting, the batch window, the batch's compute and the hop's own work."""
        return self.est_wait_ms + self.max_wait_ms + self.compute_ms + self.hop_us / 1000.0


@dataclass
class LoadBoard:
    """Every model's state, refreshed lazily, plus each task's overload flags (hysteresis)."""

    r: redis.Redis
    keys: Keys
    catalog: Catalog
    states: dict[str, ModelState] = field(default_factory=dict)
    overloaded_now: set[tuple[str, str]] = field(default_factory=set)
    switches: int = 0

    def __post_init__(self) -> None:
        self.clock = Every(REFRESH_S)

    def state(self, model: str) -> ModelState:
        return self.states.get(model, ModelState())

    def refresh(self, *, force: bool = False) -> None:
        """One pipeline for all models (their speed, and their streams' backlog as
        infra/queues.py reads it); a failure keeps the last view rather than guessing."""
        if not (self.clock.due() or force):
            return
        models = sorted(self.catalog.models)
        tenants = self.catalog.tenants  # their sub-streams are the model's backlog too
        shards = range(self.keys.shards)  # and so is every ingress shard's copy
        lanes = [
            [
                stream
                for shard in shards
                for stream in tenants.model_streams(
                    self.keys, m, self.catalog.models[m].lanes, shard
                )
            ]
            for m in models
        ]
        backlog = BacklogRead(self.keys, tuple(s for ls in lanes for s in ls))
        pipe = self.r.pipeline(transaction=False)
        for model in models:
            pipe.hgetall(self.keys.observed(model))
        backlog.queue(pipe)
        replies = iter(pipe.execute(raise_on_error=False))
        observed = [next(replies) for _ in models]
        read = iter(backlog.lanes(replies))
        for model, obs, ls in zip(models, observed, lanes, strict=True):
            mine = [next(read) for _ in ls]
            self.states[model] = _state(
                obs,
                sum(lane.requests for lane in mine),
                max((lane.consumers for lane in mine), default=0),
                self.catalog.models[model].batching.max_wait_ms,
            )
        flipped = self._update_flags()
        if flipped:
            self.switches += flipped
            self.r.hincrby(self.keys.routing_counts, "load_switch", flipped)

    def overloaded(self, task: TaskSpec, model: str) -> bool:
        return (task.name, model) in self.overloaded_now

    def _update_flags(self) -> int:
        flipped = 0
        for task in self.catalog.tasks.values():
            if task.load is None:
                continue
            for model in task.models:
                key, st = (task.name, model), self.state(model)
                was = key in self.overloaded_now
                high = st.backlog >= task.load.high_water or (
                    task.load.high_wait_ms is not None and st.est_wait_ms >= task.load.high_wait_ms
                )
                low = st.backlog <= task.load.low_water and (
                    task.load.low_wait_ms is None or st.est_wait_ms <= task.load.low_wait_ms
                )
                if not was and high:
                    self.overloaded_now.add(key)
                    flipped += 1
                elif was and low:
                    self.overloaded_now.discard(key)
                    flipped += 1
        return flipped


def _state(obs: Any, backlog: int, consumers: int, max_wait_ms: float) -> ModelState:
    if isinstance(obs, Exception) or not obs:
        return ModelState(backlog=backlog, consumers=consumers, max_wait_ms=max_wait_ms)
    values = {_text(k): float(v) for k, v in obs.items()}
    return ModelState(
        backlog=backlog,
        consumers=consumers,
        compute_ms=values.get("compute_ms", 0.0),
        batch=values.get("batch", 0.0),
        queue_ms=values.get("queue_ms", 0.0),
        max_wait_ms=max_wait_ms,
        cpu_us=values.get(CPU_FIELD, 0.0),
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
