"""Where results land for a client: futures by request id, plus a bounded buffer.

The listener hands in every result published on the client's reply channel; a waiter
registers a future first and then looks in Redis, so a result is never missed:
it is either already stored, or its publication reaches the registered future.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future

from cascadeq.messages import Result

UNCLAIMED_CAP = 100_000


class Inbox:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: dict[str, Future[Result]] = {}
        self._unclaimed: OrderedDict[str, Result] = OrderedDict()

    def deliver(self, result: Result) -> None:
        with self._lock:
            fut = self._futures.pop(result.id, None)
            if fut is None:
                self._unclaimed[result.id] = result
                if len(self._unclaimed) > UNCLAIMED_CAP:
                    self._unclaimed.popitem(last=False)
                return
        if not fut.done():
            fut.set_result(result)

    def register(self, ids: list[str]) -> tuple[dict[str, Future[Result]], dict[str, Result]]:
        """Futures for ids not yet here, and the results that already are."""
        futures: dict[str, Future[Result]] = {}
        ready: dict[str, Result] = {}
        with self._lock:
            for rid in ids:
                if rid in self._unclaimed:
                    ready[rid] = self._unclaimed.pop(rid)
                else:
                    futures[rid] = self._futures.setdefault(rid, Future())
        return futures, ready

    def forget(self, ids: list[str]) -> None:
        with self._lock:
            for rid in ids:
                self._futures.pop(rid, None)

    def outstanding(self) -> list[str]:
        with self._lock:
            return list(self._futures)
