"""When to launch a batch: the launch rules of the four batching modes.

The Batcher blocks for a batch's first entry, then asks its strategy, after every read,
whether to launch now and, if not, how long it may still wait for more. Strategies see
only numbers (samples in hand, how long the batch's oldest entry has waited since it was
read) and measured compute times, so each rule is unit-tested with no clock or Redis.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

import numpy as np

from cascadeq.config.catalog import Batching


class Strategy(Protocol):
    def launch_now(self, samples: int, oldest_wait_ms: float) -> bool:
        """True when the batch in hand should run at once."""

    def wait_budget_ms(self, samples: int, oldest_wait_ms: float) -> float:
        """How much longer to wait for more samples (called when launch_now is False)."""

    def observe(self, batch_samples: int, compute_ms: float) -> None:
        """A batch of this many samples took this long to compute."""


class Deadline:
    """Launch when max_batch samples are in hand or the oldest has waited wait_ms."""

    def __init__(self, max_batch: int, wait_ms: float) -> None:
        self.max_batch, self.wait_ms = max_batch, wait_ms

    def launch_now(self, samples: int, oldest_wait_ms: float) -> bool:
        return samples >= self.max_batch or oldest_wait_ms >= self.wait_ms

    def wait_budget_ms(self, samples: int, oldest_wait_ms: float) -> float:
        return max(0.0, self.wait_ms - oldest_wait_ms)

    def observe(self, batch_samples: int, compute_ms: float) -> None:
        """Fixed rules learn nothing."""


class Static(Deadline):
    """Full batches only, for throughput; safety_wait_ms keeps low traffic from sticking."""

    def __init__(self, max_batch: int, safety_wait_ms: float) -> None:
        super().__init__(max_batch, safety_wait_ms)


class Dynamic(Deadline):
    """max_batch or max_wait_ms after the first entry, whichever comes first."""

    def __init__(self, max_batch: int, max_wait_ms: float) -> None:
        super().__init__(max_batch, max_wait_ms)


class Continuous:
    """Never idle while work is queued: launch with whatever has arrived.

    Entries keep arriving while a batch computes, because a reader thread fetches and
    decodes them meanwhile (workers/continuous.py); this rule only says "do not wait".
    """

    def launch_now(self, samples: int, oldest_wait_ms: float) -> bool:
        return True

    def wait_budget_ms(self, samples: int, oldest_wait_ms: float) -> float:
        return 0.0

    def observe(self, batch_samples: int, compute_ms: float) -> None:
        """Nothing to learn: the rule never waits."""


class Adaptive:
    """Wait for a bigger batch only while the oldest request still meets its budget.

    Compute time is modelled as compute_ms = a * samples + b, fitted by least squares over
    the last `window` batches. Waiting w more ms is allowed while
    oldest_wait + w + predicted(max_batch) <= latency_budget_ms, i.e. even a full batch
    launched then would answer the oldest request in time. Until batches of two different
    sizes have been seen there is no fit, and the rule behaves as dynamic (max_wait_ms).
    """

    def __init__(
        self, max_batch: int, latency_budget_ms: float, max_wait_ms: float, window: int = 64
    ) -> None:
        self.max_batch, self.budget_ms, self.prior_wait_ms = (
            max_batch,
            latency_budget_ms,
            max_wait_ms,
        )
        self.history: deque[tuple[int, float]] = deque(maxlen=window)
        self.fit: tuple[float, float] | None = None

    def predicted_ms(self, samples: int) -> float | None:
        if self.fit is None:
            return None
        slope, intercept = self.fit
        return slope * samples + intercept

    def launch_now(self, samples: int, oldest_wait_ms: float) -> bool:
        return samples >= self.max_batch or self.wait_budget_ms(samples, oldest_wait_ms) <= 0.0

    def wait_budget_ms(self, samples: int, oldest_wait_ms: float) -> float:
        full = self.predicted_ms(self.max_batch)
        if full is None:
            return max(0.0, min(self.prior_wait_ms, self.budget_ms) - oldest_wait_ms)
        return max(0.0, self.budget_ms - oldest_wait_ms - full)

    def observe(self, batch_samples: int, compute_ms: float) -> None:
        self.history.append((batch_samples, compute_ms))
        self.fit = fit_line(self.history)


def fit_line(points: deque[tuple[int, float]]) -> tuple[float, float] | None:
    """Least-squares (slope, intercept), both clamped at 0; None without two distinct sizes."""
    data = np.asarray(points, dtype=np.float64)
    if len(data) < 2 or np.ptp(data[:, 0]) == 0:
        return None
    design = np.column_stack([data[:, 0], np.ones(len(data))])
    (slope, intercept), *_ = np.linalg.lstsq(design, data[:, 1], rcond=None)
    return max(0.0, float(slope)), max(0.0, float(intercept))


def for_batching(batching: Batching) -> Strategy:
    """The launch rule a catalog's batching table asks for."""
    if batching.mode == "static":
        return Static(batching.max_batch, batching.safety_wait_ms)
    if batching.mode == "adaptive":
        return Adaptive(batching.max_batch, batching.latency_budget_ms, batching.max_wait_ms)
    if batching.mode == "continuous":
        return Continuous()
    return Dynamic(batching.max_batch, batching.max_wait_ms)
