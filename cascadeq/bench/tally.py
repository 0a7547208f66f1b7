"""Bookkeeping for the chaos run: what each submit became, every answer seen, peak RSS.

Kept apart from the process juggling in cascadeq/chaos.py so each part stays small and
the counting rules (what is accepted, lost, answered twice) live in one place.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Callable, Iterable

import numpy as np

from cascadeq.protocol import results, wire
from cascadeq.protocol.messages import Result

ACKED = "acked"  # submit returned: Redis acknowledged it
REFUSED = "refused"  # submit raised Rejected (or the client's own backlog was full)
UNKNOWN = "unknown"  # the connection failed mid-call: Redis may or may not have it


def answer_digest(result: Result) -> str:
    """What a caller would act on: status, model, error code and the outputs' bytes."""
    h = hashlib.sha256()
    h.update(f"{result.status}|{result.model}|{(result.error or {}).get('code')}".encode())
    for name in sorted(result.outputs):
        arr = np.ascontiguousarray(result.outputs[name])
        h.update(f"|{name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


class Ledger:
    """Every submitted id and what its submit call said (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.state: dict[str, str] = {}
        self.reasons: Counter[str] = Counter()  # why ids were refused or unknown

    def note(self, rid: str, state: str, reason: str = "") -> None:
        with self._lock:
            self.state[rid] = state
            if reason:
                self.reasons[reason] += 1

    def ids(self, state: str) -> list[str]:
        with self._lock:
            return [rid for rid, s in self.state.items() if s == state]

    def counts(self) -> Counter[str]:
        with self._lock:
            return Counter(self.state.values())

    def resolve(self, exists: Callable[[list[str]], list[bool]]) -> int:
        """Refused or unknown ids that Redis holds after all were accepted; returns how many.

        A submit whose reply was lost (Redis killed after the write) raises, yet the
        request is queued: its result key (placeholder or result) tells.
        """
        doubtful = self.ids(UNKNOWN) + self.ids(REFUSED)
        found = [rid for rid, there in zip(doubtful, exists(doubtful), strict=True) if there]
        with self._lock:
            for rid in found:
                self.state[rid] = ACKED
            for rid in doubtful:
                if self.state[rid] == UNKNOWN:
                    self.state[rid] = REFUSED
        return len(found)


class Answers:
    """Every distinct answer each id was ever seen with (published, read, waited for)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seen: dict[str, set[str]] = {}

    def add(self, result: Result) -> None:
        digest = answer_digest(result)
        with self._lock:
            self.seen.setdefault(result.id, set()).add(digest)

    def add_raw(self, raw: object) -> bool:
        """Record a stored or published value; False for absent, placeholder or garbage."""
        if not isinstance(raw, bytes) or results.is_pending(raw):
            return False
        try:
            self.add(Result.loads(raw))
        except wire.WireError:
            return False
        return True

    def answered(self, ids: Iterable[str]) -> int:
        with self._lock:
            return sum(1 for rid in ids if rid in self.seen)

    def twice_differently(self) -> int:
        with self._lock:
            return sum(1 for digests in self.seen.values() if len(digests) > 1)


class Peaks:
    """Largest resident set seen per role, in MB."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.mb: dict[str, float] = {}

    def sample(self, role: str, rss_bytes: int) -> None:
        with self._lock:
            self.mb[role] = max(self.mb.get(role, 0.0), round(rss_bytes / 2**20, 1))

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(sorted(self.mb.items()))
