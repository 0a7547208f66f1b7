"""How fast a bulk job sends: a steady pace, slowed when the queue says it is full.

A job that sends as fast as the queue takes rows keeps every stage busy with its work:
interactive requests then wait behind bulk batches in the router and the worker and
fight them for the CPU (measured with ``cascadeq bench bulk``: interactive p99 3 to 14
times idle). So by default the job sends one chunk (two of the model's batches) per
``GAP_S``, and a ``queue_full`` refusal cuts that rate (at most once per ``GAP_S``);
each chunk answered afterwards wins back a step, never past the start. ``rate`` fixes
the rows/s instead.

Tried and dropped: a delay-based control (grow while a chunk's end-to-end time stays
within 1.5x of the fastest recent one, cut past it). In a real 200,000-row run its cuts
outweighed its growth, because latency grows with batch size even where no queue forms,
and the rate fell to its floor.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

GAP_S = 0.05  # one chunk per 50 ms by default
GROW, CUT = 1.05, 0.7  # per chunk answered, back up to the start; per queue_full refusal


@dataclass
class Pace:
    """A send rate in rows/s and the clock of the next send; ``rate=0`` means the default."""

    chunk: int
    rate: float = 0.0
    clock: Callable[[], float] = time.monotonic
    steady: bool = field(init=False)
    ceiling: float = field(init=False)
    next_at: float = 0.0
    cut_at: float = -1e9  # when the rate was last cut

    def __post_init__(self) -> None:
        if self.rate < 0:
            raise ValueError(
                f"rate must be 0 (the default pace) or positive rows/s, got {self.rate}"
            )
        self.steady = self.rate == 0
        if self.steady:
            self.rate = self.chunk / GAP_S
        self.ceiling = self.rate

    def due_in(self) -> float:
        """Seconds until the next chunk may go (0 when it may go now)."""
        return max(0.0, self.next_at - self.clock())

    def sent(self, rows: int) -> None:
        """Book a send of ``rows``: the next may go once they have had their share of time."""
        self.next_at = max(self.next_at, self.clock()) + rows / self.rate

    def answered(self) -> None:
        """A chunk came back: win back a step of an earlier cut."""
        if self.steady:
            self.rate = min(self.ceiling, self.rate * GROW)

    def congested(self) -> None:
        """The queue refused a chunk as full: slow down, at most once per GAP_S."""
        if self.steady and self.clock() - self.cut_at >= GAP_S:
            self.rate = max(1.0, self.rate * CUT)
            self.cut_at = self.clock()
