"""A clock for periodic chores (reclaim, trim, sweeps) checked from a hot loop."""

from __future__ import annotations

import time


class Every:
    """A clock for periodic chores (reclaim, trim) checked from a hot loop."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.next = 0.0  # due at once: a restarted consumer reclaims first

    def due(self) -> bool:
        now = time.monotonic()
        if now < self.next:
            return False
        self.next = now + self.seconds
        return True
