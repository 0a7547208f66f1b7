"""Last-minute figures from Redis alone: workers write per-second aggregates per model.

Each batch adds its counts and a latency sketch to the hash of the current second
(``obs:<model>:s:<epoch second>``, HINCRBY in the pipeline of the batch's commit call, so no extra
round trip) and to the model's running totals. A second's hash expires after
WINDOW_TTL_S, so memory is bounded by models x seconds x sketch buckets however busy the
system is. `cascadeq stats` reads the last WINDOW_S seconds back in one pipeline.

The sketch is a histogram with log-spaced buckets (each LATENCY_GROWTH wider than the
last), so a percentile read back from it is within about 5% of the true value.
Seconds are the writing worker's clock: hosts are assumed NTP-synced, as submitted_at
already assumes.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis

from cascadeq.protocol.keys import Keys

WINDOW_S = 60
WINDOW_TTL_S = 2 * WINDOW_S
LATENCY_GROWTH = 1.1
LATENCY_FLOOR_MS = 0.01  # bucket 0 holds everything at or under it
LATENCY_CEILING_MS = 1e10  # ~116 days: the last bucket holds everything above it (and inf)

# Field names inside a second's hash and the totals hash.
ENTRIES, SAMPLES, BATCHES, ESCALATED, ANSWERED = "n", "s", "b", "e", "a"
LATENCY_PREFIX = "l"
TOTAL_FIELDS = {
    ENTRIES: "processed",
    SAMPLES: "samples",
    BATCHES: "batches",
    ESCALATED: "escalated",
    ANSWERED: "answered",
}


_NONE = np.zeros(0, dtype=np.float64)


def latency_bucket(ms: float) -> int:
    """Bucket i holds (FLOOR * GROWTH**(i-1), FLOOR * GROWTH**i]; any float has one.

    Accounting must never raise on a figure a forged header produced: NaN and anything
    at or under the floor go to bucket 0, inf and anything past the ceiling to the last.
    """
    ms = sane_ms(ms)
    if ms <= LATENCY_FLOOR_MS:
        return 0
    return math.ceil(math.log(ms / LATENCY_FLOOR_MS, LATENCY_GROWTH) - 1e-9)


def sane_ms(ms: float) -> float:
    """A duration clamped to [0, LATENCY_CEILING_MS]; NaN (or a non-number) counts as 0."""
    try:
        value = float(ms)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    if math.isnan(value):
        return 0.0
    return min(max(value, 0.0), LATENCY_CEILING_MS)


def bucket_ms(i: int) -> float:
    """A bucket's representative value: the geometric middle of its bounds."""
    return LATENCY_FLOOR_MS * LATENCY_GROWTH ** (i - 0.5) if i > 0 else LATENCY_FLOOR_MS


@dataclass
class Tally:
    """What one batch did; filled as the batch settles, written once at its end.

    The counts go to Redis (for `cascadeq stats`); the figures feed the process's
    Prometheus histograms (cascadeq/infra/metrics.py). Per-request figures are held per batch
    (an array of the answers' latencies) or per entry (a wait and how many requests it
    was theirs), never as a Python float per request.
    """

    entries: int = 0  # entries given an effect (result, escalation or dead letter)
    samples: int = 0  # samples the model computed
    batches: int = 0
    escalated: int = 0
    answered: int = 0  # final results written by this model's workers
    latency: Counter[int] = field(default_factory=Counter)  # end-to-end, of answered ones
    statuses: Counter[str] = field(default_factory=Counter)
    total_ms: list[float] = field(default_factory=list)  # answered one at a time
    totals_ms: list[np.ndarray] = field(default_factory=list)  # answered a batch at a time
    queue_ms: list[float] = field(default_factory=list)  # per computed entry (or request)
    batch_wait_ms: list[float] = field(default_factory=list)
    waits: list[int] = field(default_factory=list)  # the requests each wait above counts for
    compute_ms: list[float] = field(default_factory=list)  # per model call
    batch_samples: list[int] = field(default_factory=list)
    padding: list[float] = field(default_factory=list)
    escalated_to: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    #: tenant -> latencies of its ok answers (only when the catalog declares tenants)
    tenants: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def for_tenant(self, tenant: str, totals_ms: list[np.ndarray]) -> None:
        if totals_ms:
            self.tenants.setdefault(tenant, []).extend(totals_ms)

    def tenant_answers_ms(self) -> dict[str, np.ndarray]:
        return {t: np.concatenate(arrs) for t, arrs in self.tenants.items()}

    def ran(self, samples: int, compute_ms: float, padding_overhead: float | None) -> None:
        self.batches += 1
        self.samples += samples
        self.batch_samples.append(samples)
        self.compute_ms.append(sane_ms(compute_ms))
        if padding_overhead is not None:
            self.padding.append(padding_overhead)

    def waited(self, queue_ms: float, batch_wait_ms: float, requests: int = 1) -> None:
        """The waits of ``requests`` computed requests that waited alike (one entry's)."""
        if requests > 0:
            self.queue_ms.append(sane_ms(queue_ms))
            self.batch_wait_ms.append(sane_ms(batch_wait_ms))
            self.waits.append(requests)

    def escalate(self, target: str) -> None:
        self.escalated += 1
        self.escalated_to[target] += 1

    def answer(self, status: str, total_ms: float) -> None:
        self.answered += 1
        self.statuses[status] += 1
        self.total_ms.append(sane_ms(total_ms))  # a NaN would poison the histogram's sum
        self.latency[latency_bucket(total_ms)] += 1

    def answer_many(self, status: str, totals_ms: Sequence[float] | np.ndarray) -> None:
        """A batch's answers of one status: the sketch's buckets in one numpy pass."""
        if not len(totals_ms):
            return
        ms = np.asarray(totals_ms, np.float64)
        ms = np.clip(np.where(np.isnan(ms), 0.0, ms), 0.0, LATENCY_CEILING_MS)
        self.answered += len(ms)
        self.statuses[status] += len(ms)
        self.totals_ms.append(ms)
        self.latency.update(sketch(ms))

    def answers_ms(self) -> np.ndarray:
        """Every answered request's end-to-end latency, sane (no NaN, within the ceiling)."""
        if not self.total_ms:
            if len(self.totals_ms) == 1:
                return self.totals_ms[0]
            if not self.totals_ms:
                return _NONE
        return np.concatenate([np.asarray(self.total_ms, np.float64), *self.totals_ms])

    def queue(self, pipe: Any, keys: Keys, model: str, now_s: float | None = None) -> None:
        """HINCRBYs into this second's hash and the totals; nothing when the batch was empty."""
        if not self.entries:
            return
        second = int(time.time() if now_s is None else now_s)
        key = keys.window(model, second)
        counts = {
            ENTRIES: self.entries,
            SAMPLES: self.samples,
            BATCHES: self.batches,
            ESCALATED: self.escalated,
            ANSWERED: self.answered,
        }
        totals = keys.model_totals(model)
        for name, n in counts.items():
            if n:
                pipe.hincrby(key, name, n)
                pipe.hincrby(totals, TOTAL_FIELDS[name], n)
        for bucket, n in self.latency.items():
            pipe.hincrby(key, f"{LATENCY_PREFIX}{bucket}", n)
        pipe.expire(key, WINDOW_TTL_S)
        if self.tenants:
            self._queue_tenants(pipe, keys, second)

    def _queue_tenants(self, pipe: Any, keys: Keys, second: int) -> None:
        """Each tenant's answers and latency sketch, in its own second's hash, and its
        running count in ``counts:tenants`` (`cascadeq stats` reads both)."""
        for tenant, ms in self.tenant_answers_ms().items():
            key = keys.tenant_window(tenant, second)
            pipe.hincrby(key, ANSWERED, len(ms))
            pipe.hincrby(keys.tenant_counts, f"{tenant}:answered", len(ms))
            for bucket, n in sketch(ms).items():
                pipe.hincrby(key, f"{LATENCY_PREFIX}{bucket}", n)
            pipe.expire(key, WINDOW_TTL_S)


def sketch(ms: np.ndarray) -> Counter[int]:
    """Latencies (sane ms) counted per sketch bucket, in one numpy pass."""
    above = ms > LATENCY_FLOOR_MS
    buckets = np.zeros(len(ms), dtype=np.int64)
    buckets[above] = np.ceil(np.log(ms[above] / LATENCY_FLOOR_MS) / math.log(LATENCY_GROWTH) - 1e-9)
    counts = np.bincount(buckets)
    return Counter({int(b): int(counts[b]) for b in np.flatnonzero(counts).tolist()})


@dataclass
class Window:
    """A model's aggregates over the last WINDOW_S seconds, and its running totals."""

    seconds: int = WINDOW_S
    counts: Counter[str] = field(default_factory=Counter)
    latency: Counter[int] = field(default_factory=Counter)
    totals: dict[str, int] = field(default_factory=dict)

    def add(self, raw: dict[Any, Any]) -> None:
        for k, v in raw.items():
            name = k.decode() if isinstance(k, bytes) else str(k)
            if name.startswith(LATENCY_PREFIX):
                self.latency[int(name[len(LATENCY_PREFIX) :])] += int(v)
            else:
                self.counts[name] += int(v)

    def percentile_ms(self, q: float) -> float:
        """The q-quantile (0..1) of end-to-end latency; 0.0 when nothing was answered."""
        n = sum(self.latency.values())
        if not n:
            return 0.0
        rank, seen = max(1, math.ceil(q * n)), 0
        for bucket in sorted(self.latency):
            seen += self.latency[bucket]
            if seen >= rank:
                return bucket_ms(bucket)
        return bucket_ms(max(self.latency))  # unreachable: seen reaches n


def read_tenant_windows(
    r: redis.Redis, keys: Keys, tenants: Iterable[str], now_s: float | None = None
) -> dict[str, Window]:
    """The last WINDOW_S seconds of every tenant's answers, in one pipeline."""
    names = sorted(tenants)
    last = int(time.time() if now_s is None else now_s)
    pipe = r.pipeline(transaction=False)
    for tenant in names:
        for second in range(last - WINDOW_S + 1, last + 1):
            pipe.hgetall(keys.tenant_window(tenant, second))
    replies = iter(pipe.execute())
    windows: dict[str, Window] = {}
    for tenant in names:
        window = Window()
        for _ in range(WINDOW_S):
            window.add(next(replies))
        windows[tenant] = window
    return windows


def read_windows(
    r: redis.Redis, keys: Keys, models: Iterable[str], now_s: float | None = None
) -> dict[str, Window]:
    """The seconds (now - WINDOW_S, now] and the totals of every model, in one pipeline."""
    names = sorted(models)
    last = int(time.time() if now_s is None else now_s)
    pipe = r.pipeline(transaction=False)
    for model in names:
        pipe.hgetall(keys.model_totals(model))
        for second in range(last - WINDOW_S + 1, last + 1):
            pipe.hgetall(keys.window(model, second))
    replies = iter(pipe.execute())
    windows: dict[str, Window] = {}
    for model in names:
        window = Window(totals=_ints(next(replies)))
        for _ in range(WINDOW_S):
            window.add(next(replies))
        windows[model] = window
    return windows


def _ints(raw: dict[Any, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for k, v in raw.items():
        name = k.decode() if isinstance(k, bytes) else str(k)
        try:
            out[name] = int(v)
        except ValueError:
            continue
    return out
