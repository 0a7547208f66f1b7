"""How fast a bulk job sends: as fast as the queue answers without queueing.

A job that sends as fast as the queue takes rows keeps every stage busy with its work:
interactive requests then wait behind bulk batches in the router and the worker and
fight them for the CPU (measured with ``cascadeq bench bulk``: interactive p99 4 to 14
times idle). So the job sends at a rate it adjusts from its own answers, delay-based
like TCP Vegas: each answer carries its end-to-end time (``total_ms`` in its timings,
measured by the worker), and while a chunk's median stays within ``slack`` of the
fastest recent one, no queue is forming and the rate grows; past it the rate is cut,
at most once per round trip. A fixed ``rate`` turns the control off.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cascadeq.protocol.messages import Result

SLACK = 1.5  # a chunk this many times slower than the fastest recent one means queueing
GROW, CUT = 1.05, 0.7  # the rate's step up per fast chunk, and down per round trip
FIRST_GAP_S = 0.05  # before any answer: one chunk per 50 ms
FLOOR = 1.0  # rows/s the control never goes below
WINDOW = 64  # chunks the fastest recent one is taken over (so it follows a slower system)


@dataclass
class Pace:
    """A send rate in rows/s and the clock of the next send; ``rate=0`` means adaptive."""

    chunk: int
    rate: float = 0.0
    clock: Callable[[], float] = time.monotonic
    adaptive: bool = field(init=False)
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    next_at: float = 0.0
    cut_at: float = 0.0  # when the rate was last cut: chunks sent before it are not news

    def __post_init__(self) -> None:
        if self.rate < 0:
            raise ValueError(f"rate must be 0 (adaptive) or positive rows/s, got {self.rate}")
        self.adaptive = self.rate == 0
        if self.adaptive:
            self.rate = self.chunk / FIRST_GAP_S

    def due_in(self) -> float:
        """Seconds until the next chunk may go (0 when it may go now)."""
        return max(0.0, self.next_at - self.clock())

    def sent(self, rows: int) -> float:
        """Book a send of ``rows``; returns its time, for ``observe``."""
        now = self.clock()
        self.next_at = max(self.next_at, now) + rows / self.rate
        return now

    def observe(self, sent_at: float, results: Sequence[Result]) -> None:
        """One collected chunk: grow while no queue forms, cut once per round trip if one does."""
        latency = median_total_ms(results)
        if not self.adaptive or latency is None:
            return
        self.recent.append(latency)
        if latency <= SLACK * min(self.recent):
            self.rate *= GROW
        elif sent_at >= self.cut_at:  # sent after the last cut: the cut did not suffice
            self.rate = max(FLOOR, self.rate * CUT)
            self.cut_at = self.clock()

    def congested(self) -> None:
        """The queue refused a chunk as full: the clearest sign of sending too fast. Cut
        at most once per fastest round trip (or FIRST_GAP_S before any was seen)."""
        trip_s = min(self.recent) / 1000.0 if self.recent else FIRST_GAP_S
        if self.adaptive and self.clock() - self.cut_at >= trip_s:
            self.rate = max(FLOOR, self.rate * CUT)
            self.cut_at = self.clock()


def median_total_ms(results: Sequence[Result]) -> float | None:
    """The median end-to-end time the workers stamped on the answered rows, if any."""
    times = sorted(
        float(t)
        for res in results
        if res.ok and isinstance(t := res.timings.get("total_ms"), int | float)
    )
    return times[len(times) // 2] if times else None
