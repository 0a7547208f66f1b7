"""Where results land for a client: futures by request id, plus a bounded buffer.

The listener hands in every result published on the client's reply channel; a waiter
registers a future first and then looks in Redis, so a result is never missed:
it is either already stored, or its publication reaches the registered future.
Several waiters may wait on one id; the future lives until the last of them leaves.

The look in Redis is skipped for the ids this client submitted while its listener held
a confirmed subscription that it still holds, until their result is first delivered:
a result is published after its submit, so that subscription hears it (``unheard``). A
subscription lost meanwhile is counted (the epoch), and the ids it might have missed are
looked up again; the listener's periodic sweep stays the backstop for a silent loss.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from concurrent.futures import Future, InvalidStateError
from typing import Any

from cascadeq.infra.log import get_logger
from cascadeq.producer.errors import Timeout
from cascadeq.protocol.messages import Result
from cascadeq.protocol.results import answered, split_published
from cascadeq.protocol.wire import WireError

UNCLAIMED_CAP = 10_000
EXPECTED_CAP = 250_000  # ids awaiting their first result by pub/sub; past it, looked up
log = get_logger("cascadeq.producer")


class Batch:
    """One wait: its ids, the results found so far, and a future set once all are in.

    One object per ``wait_many`` call, not a future per id, so waiting on 30,000 ids costs
    a dict entry each; the asyncio client awaits the one future.
    """

    __slots__ = ("future", "left", "results")

    def __init__(self) -> None:
        self.results: dict[str, Result] = {}
        self.left = 0
        self.future: Future[None] = Future()

    def done(self) -> bool:
        return self.left == 0


class Inbox:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, Batch | list[Batch]] = {}  # a list only when several wait
        self._unclaimed: OrderedDict[str, Result] = OrderedDict()
        self._epoch = 0  # subscriptions the listener has had confirmed
        self._live = False  # whether it holds one now
        self._expected: dict[str, int] = {}  # id -> epoch it was submitted under

    # -- what the subscription will bring ------------------------------------------------

    def subscribed(self) -> None:
        """The listener's subscription is confirmed: publications from now on reach it.
        What earlier ones were to bring is looked up now (``unheard``): dropped, so a
        result lost while the listener was away leaves no record behind."""
        with self._lock:
            self._epoch += 1
            self._live = True
            self._expected.clear()

    def lost(self) -> None:
        """The listener lost its subscription: what is published now may never arrive."""
        with self._lock:
            self._live = False

    def listening(self) -> int | None:
        """The epoch a submit sent now is heard under (read before sending), or None."""
        return self._epoch if self._live else None

    def expect(self, ids: list[str], epoch: int | None) -> None:
        """These ids are being submitted under ``epoch`` (``listening``): recorded before
        the submit is sent, so a result can never be delivered ahead of its record."""
        if epoch is None or not ids:
            return
        with self._lock:
            if len(self._expected) + len(ids) <= EXPECTED_CAP:
                self._expected.update(dict.fromkeys(ids, epoch))

    def forget(self, ids: list[str]) -> None:
        """These ids were not queued after all (their call was refused or sent again)."""
        if ids:
            with self._lock:
                for rid in ids:
                    self._expected.pop(rid, None)

    def unheard(self, ids: list[str]) -> list[str]:
        """Of these registered ids, those a look in Redis must cover: all but the ones
        submitted under the subscription the listener still holds and not yet delivered
        (delivery drops an id, so a result taken by a poll or an earlier waiter is read)."""
        with self._lock:
            expected = self._expected
            if not self._live or not expected:
                return ids
            epoch = self._epoch
            return [rid for rid in ids if expected.get(rid) != epoch]

    def deliver(self, result: Result) -> None:
        with self._lock:
            finished = self._deliver(result)
        _finish(finished)

    def deliver_many(self, found: list[Result]) -> None:
        """A batch's results under one lock; the common case (one waiter per id) inline."""
        finished: list[Batch] = []
        with self._lock:
            waiting, expected = self._waiting, self._expected
            for result in found:
                rid = result.id
                if expected:
                    expected.pop(rid, None)
                held = waiting.get(rid)
                if isinstance(held, Batch):
                    results = held.results
                    if rid not in results:
                        results[rid] = result
                        held.left -= 1
                        if not held.left:
                            finished.append(held)
                else:
                    finished += self._deliver(result)
        _finish(finished)

    def _deliver(self, result: Result) -> list[Batch]:
        """Record a result for its waiters (the lock held); returns the batches it completed.
        The listener and a waiter's MGET may both deliver one result: the first one wins."""
        rid = result.id
        self._expected.pop(rid, None)
        held = self._waiting.get(rid)
        if held is None:
            self._unclaimed[rid] = result
            if len(self._unclaimed) > UNCLAIMED_CAP:
                self._unclaimed.popitem(last=False)
            return []
        finished = []
        for batch in held if isinstance(held, list) else (held,):
            if rid not in batch.results:
                batch.results[rid] = result
                batch.left -= 1
                if not batch.left:
                    finished.append(batch)
        return finished

    def register(self, ids: list[str]) -> Batch:
        """A batch for these ids; results already buffered are in it at once."""
        batch = Batch()
        results = batch.results
        waiting, unclaimed = self._waiting, self._unclaimed
        with self._lock:
            for rid in ids:
                if rid in results:
                    continue
                if unclaimed and rid in unclaimed:
                    results[rid] = unclaimed.pop(rid)
                    continue
                held = waiting.get(rid)
                if held is None:
                    waiting[rid] = batch
                elif held is batch:
                    continue
                elif isinstance(held, list):
                    if batch in held:
                        continue
                    held.append(batch)
                else:
                    waiting[rid] = [held, batch]
                batch.left += 1
        if not batch.left:
            batch.future.set_result(None)
        return batch

    def release(self, batch: Batch, ids: list[str]) -> None:
        """A waiter is done with these ids (answered or timed out)."""
        waiting = self._waiting
        with self._lock:
            for rid in ids:
                held = waiting.get(rid)
                if held is batch:
                    del waiting[rid]
                elif isinstance(held, list) and batch in held:
                    held.remove(batch)
                    if len(held) == 1:
                        waiting[rid] = held[0]

    def take(self, rid: str) -> Result | None:
        """A buffered result for a poller, consumed."""
        with self._lock:
            return self._unclaimed.pop(rid, None)

    def on_message(self, msg: dict[str, Any]) -> bool:
        """Handle one pub/sub message; True means (re)subscribed, so re-read stored results."""
        if msg["type"] == "subscribe":
            self.subscribed()
            return True
        if msg["type"] == "message" and msg["data"]:
            self.deliver_many(_decoded(split_published(msg["data"])))  # one, or a batch's worth
        return False

    def deliver_raw(self, data: bytes) -> None:
        """Decode and deliver; a forged or corrupt result is logged and dropped."""
        self.deliver_many(_decoded([data]))

    def deliver_stored(self, ids: list[str], raws: list[Any]) -> None:
        """Deliver what an MGET of these ids' result keys found; absent, "not ready" and
        ids the listener has answered meanwhile are skipped (no decoding twice)."""
        found = answered(ids, raws)
        with self._lock:
            todo = [raw for rid, raw in found if not self._answered(rid)]
        self.deliver_many(_decoded(todo))

    def _answered(self, rid: str) -> bool:
        held = self._waiting.get(rid)
        if held is None:
            return False
        if isinstance(held, list):
            return all(rid in b.results for b in held)
        return rid in held.results

    def outstanding(self) -> list[str]:
        """Ids someone waits for whose result has not arrived."""
        with self._lock:
            return [rid for rid in self._waiting if not self._answered(rid)]


def _decoded(raws: list[bytes]) -> list[Result]:
    """Decode results; a forged or corrupt one is logged and dropped."""
    out = []
    for raw in raws:
        try:
            out.append(Result.loads(raw))
        except WireError as exc:
            log.warning("reply_dropped", error=str(exc))
    return out


def _finish(batches: list[Batch]) -> None:
    for batch in batches:
        with contextlib.suppress(InvalidStateError):
            batch.future.set_result(None)


def collect(request_ids: list[str], batch: Batch, timeout: float) -> list[Result]:
    """Results in request order, or Timeout naming what is missing and what arrived."""
    done = batch.results
    if batch.left:
        with contextlib.suppress(KeyError):  # the common case: everything arrived
            return [done[rid] for rid in request_ids]
        missing = [rid for rid in request_ids if rid not in done]
        raise Timeout(
            f"{len(missing)} of {len(request_ids)} results did not arrive within {timeout}s",
            done=dict(done),
            missing=missing,
        )
    return [done[rid] for rid in request_ids]
