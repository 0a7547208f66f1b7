"""Whether cancels exist, as a worker's reads have seen (see workers/lanes.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class CancelGate:
    """Whether cancels exist, as the reads have seen: the counters' keys (one per ingress
    shard, each read in the reads' round trip), and how long a sighting holds (a request's longest
    wait). Only a sighting moves it, never a read
    that found no counter: reads on two threads may finish out of order, and a late
    "none" must not hide an earlier "some"."""

    keys: list[str]
    hold_s: float
    until: float = 0.0

    def saw(self, values: list[object]) -> None:
        if any(v is not None for v in values):
            self.until = time.monotonic() + self.hold_s

    @property
    def open(self) -> bool:
        return time.monotonic() < self.until
