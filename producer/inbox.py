"""Where results land for a client: futures by request id, plus a bounded buffer.

The listener hands in every result published on the client's reply channel; a waiter
registers a future first and then looks in Redis, so a result is never missed:
it is either already stored, or its publication reaches the registered future.
Several waiters may wait on one id; the future lives until the last of them leaves.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from concurrent.futures import Future, InvalidStateError
from typing import Any

from cascadeq.log import get_logger
from cascadeq.messages import Result
from cascadeq.results import is_pending, split_published
from cascadeq.wire import WireError
from producer.errors import Timeout

UNCLAIMED_CAP = 10_000
log = get_logger("cascadeq.producer")


class Inbox:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: dict[str, Future[Result]] = {}
        self._waiters: dict[str, int] = {}
        self._unclaimed: OrderedDict[str, Result] = OrderedDict()

    def deliver(self, result: Result) -> None:
        with self._lock:
            fut = self._futures.get(result.id)
            if fut is None:
                self._unclaimed[result.id] = result
                if len(self._unclaimed) > UNCLAIMED_CAP:
                    self._unclaimed.popitem(last=False)
                return
        # The listener and a waiter's MGET may both deliver one result: first one wins.
        with contextlib.suppress(InvalidStateError):
            fut.set_result(result)

    def register(self, ids: list[str]) -> tuple[dict[str, Future[Result]], dict[str, Result]]:
        """Futures for ids not yet here, and the results that already are."""
        futures: dict[str, Future[Result]] = {}
        ready: dict[str, Result] = {}
        with self._lock:
            for rid in ids:
                if rid in ready or rid in futures:
                    continue
                if rid in self._unclaimed:
                    ready[rid] = self._unclaimed.pop(rid)
                else:
                    futures[rid] = self._futures.setdefault(rid, Future())
                    self._waiters[rid] = self._waiters.get(rid, 0) + 1
        return futures, ready

    def release(self, ids: list[str]) -> None:
        """A waiter is done with these ids (answered or timed out)."""
        with self._lock:
            for rid in dict.fromkeys(ids):
                left = self._waiters.get(rid, 0) - 1
                if left > 0:
                    self._waiters[rid] = left
                    continue
                self._waiters.pop(rid, None)
                self._futures.pop(rid, None)

    def take(self, rid: str) -> Result | None:
        """A buffered result for a poller, consumed."""
        with self._lock:
            return self._unclaimed.pop(rid, None)

    def on_message(self, msg: dict[str, Any]) -> bool:
        """Handle one pub/sub message; True means (re)subscribed, so re-read stored results."""
        if msg["type"] == "subscribe":
            return True
        if msg["type"] == "message" and msg["data"]:
            for raw in split_published(msg["data"]):  # one result, or a batch's worth
                self.deliver_raw(raw)
        return False

    def deliver_raw(self, data: bytes) -> None:
        """Decode and deliver; a forged or corrupt result is logged and dropped."""
        try:
            result = Result.loads(data)
        except WireError as exc:
            log.warning("reply_dropped", error=str(exc))
            return
        self.deliver(result)

    def deliver_stored(self, ids: list[str], raws: list[Any]) -> None:
        """Deliver what an MGET of these ids' result keys found; absent, "not ready" and
        ids the listener has answered meanwhile are skipped (no decoding twice)."""
        for rid, raw in zip(ids, raws, strict=True):
            if raw is None or is_pending(raw) or self._answered(rid):
                continue
            self.deliver_raw(raw)

    def _answered(self, rid: str) -> bool:
        with self._lock:
            fut = self._futures.get(rid)
        return fut is not None and fut.done()

    def outstanding(self) -> list[str]:
        """Ids someone waits for whose result has not arrived."""
        with self._lock:
            return [rid for rid, fut in self._futures.items() if not fut.done()]


def collect(
    request_ids: list[str],
    futures: dict[str, Future[Result]],
    ready: dict[str, Result],
    timeout: float,
) -> list[Result]:
    """Results in request order, or Timeout naming what is missing and what arrived."""
    done = dict(ready)
    done.update({rid: f.result() for rid, f in futures.items() if f.done()})
    missing = [rid for rid in request_ids if rid not in done]
    if missing:
        raise Timeout(
            f"{len(missing)} of {len(request_ids)} results did not arrive within {timeout}s",
            done=done,
            missing=missing,
        )
    return [done[rid] for rid in request_ids]
