"""The synchronous client a backend service uses: submit, poll, wait."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import wait as wait_futures
from types import TracebackType

import numpy as np
import redis

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra.connection import connect
from cascadeq.infra.log import get_logger
from cascadeq.producer.base import (
    MAX_CONNECTIONS,
    SWEEP_S,
    ClientBase,
    raises_connection_failed,
)
from cascadeq.producer.errors import Rejected, RequestFailed
from cascadeq.producer.inbox import collect
from cascadeq.producer.requests import (
    SUBMIT,
    Call,
    Outgoing,
    Prepared,
    Reply,
    Request,
    check_unique,
    partial_outcome,
    plan_calls,
    strict_outcome,
)
from cascadeq.protocol.clock import Every
from cascadeq.protocol.keys import DEFAULT_LANE
from cascadeq.protocol.messages import Result

log = get_logger("cascadeq.producer")


@raises_connection_failed
class Producer(ClientBase):
    """Thread-safe; one reply connection serves every outstanding wait of the process.

    Up to MAX_CONNECTIONS calls talk to Redis at once; more wait for a free connection.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        settings: Settings | None = None,
        catalog: Catalog | None = None,
    ) -> None:
        super().__init__(redis_url, settings, catalog)
        name = self.connection_name
        self.redis = connect(self.url, max_connections=MAX_CONNECTIONS, name=name)
        self._replies = connect(self.url, max_connections=1, name=name, socket_timeout=None)
        self._listener: threading.Thread | None = None
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._coalescer = Coalescer(self._flush)

    # -- submitting -------------------------------------------------------------

    def submit(
        self,
        *,
        inputs: Mapping[str, np.ndarray],
        task: str | None = None,
        model: str | None = None,
        tier: str = "standard",
        priority: str = DEFAULT_LANE,
        deadline_ms: float | None = None,
        request_id: str | None = None,
        idempotent: bool = False,
    ) -> str:
        """Queue one request and return its id at once; raises Rejected if refused.

        An id names one request: a ``request_id`` already in use is refused
        (``duplicate_id``). To retry a submit whose outcome you did not see (a timeout, a
        lost connection), pass the same ``request_id`` and inputs with ``idempotent=True``
        on every attempt: if the first attempt landed, the retry returns the id without
        queueing it again; if it did not, the retry queues it.
        """
        req = Request(inputs, task, model, tier, priority, deadline_ms, request_id, idempotent)
        if self.catalogs.should_fetch(req):
            self.catalogs.update(self.redis.get(self.keys.catalog))
        return self._coalescer.submit(self._prepare([req])[0])

    def submit_many(self, requests: Iterable[Request]) -> list[str]:
        """Queue many as bundles, one round trip per SUBMIT_CHUNK; a refusal raises Rejected.

        Every request is checked before anything is sent. Chunks before a refused one stay
        queued: their ids are in ``Rejected.accepted``. An id repeated within the call
        refuses the whole call; one already in use refuses its chunk (``duplicate_id``,
        the ids in ``Rejected.ids``), except idempotent retries.
        """
        reqs = list(requests)
        for req in reqs:
            if self.catalogs.should_fetch(req):
                self.catalogs.update(self.redis.get(self.keys.catalog))
        prepared = self._prepare(reqs)
        check_unique(prepared)
        refused = self._send_strict(prepared)
        if refused is not None:
            del prepared  # a caller keeping the error keeps this frame: not the requests
            raise refused
        return [p.id for p in prepared]

    def _send_strict(self, prepared: list[Prepared]) -> Rejected | None:
        """One script call per chunk; the refusal that stops the call, or None."""
        accepted: list[str] = []
        for planned in plan_calls(prepared, self.keys, self.settings):
            call: list[Outgoing] | Rejected = planned
            while call:
                if isinstance(call, Rejected):
                    return call
                sent = Call(call, self.keys, self.settings, partial=False)
                reply = Reply(SUBMIT(self.redis, sent.keys, sent.args))
                call = strict_outcome(reply, call, sent, accepted, self.keys, self._max_bytes)
        return None

    def _flush(self, batch: list[Prepared]) -> None:
        """Coalesced submits: one script call per chunk, each refusal answered alone."""
        for call in plan_calls(batch, self.keys, self.settings):
            rest: list[Outgoing] = call
            while rest:
                sent = Call(rest, self.keys, self.settings, partial=True)
                reply = Reply(SUBMIT(self.redis, sent.keys, sent.args))
                rest = partial_outcome(reply, rest, sent, self.keys, self._max_bytes, settle)

    # -- results ----------------------------------------------------------------

    def result(self, request_id: str) -> Result | None:
        """The result if it is there, else None; never blocks."""
        buffered = self._inbox.take(request_id)
        if buffered is not None:
            return buffered
        return self._read_stored(request_id, self.redis.get(self.keys.result(request_id)))

    def wait(self, request_id: str, timeout: float = 30.0) -> Result:
        """Block until the result arrives; raises Timeout, or RequestFailed if not ok."""
        result = self.wait_many([request_id], timeout)[0]
        if not result.ok:
            raise RequestFailed(result)
        return result

    def wait_many(self, request_ids: list[str], timeout: float = 30.0) -> list[Result]:
        """Results in the order of ``request_ids``; raises Timeout naming what is missing."""
        self._ensure_listener()
        ids = list(request_ids)
        batch = self._inbox.register(ids)
        try:
            if not batch.done():
                self._fetch_stored([rid for rid in ids if rid not in batch.results])
            if not batch.done():
                wait_futures([batch.future], timeout=timeout)
            return collect(ids, batch, timeout)
        finally:
            self._inbox.release(batch, ids)

    def _fetch_stored(self, ids: list[str]) -> None:
        """Deliver results already stored (one MGET per chunk), e.g. after a reconnect."""
        if not ids:
            return
        pipe = self.redis.pipeline(transaction=False)  # every chunk in one round trip
        for keys in self._result_keys(ids):
            pipe.mget(keys)
        raws = [raw for chunk in pipe.execute() for raw in chunk]
        self._inbox.deliver_stored(ids, raws)

    # -- the reply listener -----------------------------------------------------------

    def _ensure_listener(self) -> None:
        with self._lock:
            if self._listener is None or not self._listener.is_alive():
                self._listener = threading.Thread(
                    target=self._listen, daemon=True, name=f"cascadeq-replies-{self.client_id[:6]}"
                )
                self._listener.start()

    def _listen(self) -> None:
        """Blocks on the reply channel; sweeps stored results once a second as a backstop.

        The sweep wakes waiters on ids another client submitted (their results are
        published to that client) and covers anything published while disconnected.
        """
        pubsub = self._replies.pubsub()  # type: ignore[no-untyped-call]
        channel = self.keys.reply_channel(self.client_id)
        sweep = Every(SWEEP_S)
        backoff = 0.05
        while not self._closed.is_set():
            try:
                if not pubsub.subscribed:
                    pubsub.subscribe(channel)
                msg = pubsub.get_message(timeout=SWEEP_S)  # blocks on the socket
                resubscribed = msg is not None and self._inbox.on_message(msg)
                if resubscribed or sweep.due():
                    self._fetch_stored(self._inbox.outstanding())
                backoff = 0.05
            except Exception as exc:  # noqa: BLE001 - the listener must outlive any surprise
                log.warning("reply_channel_lost", error=repr(exc), retry_in=backoff)
                self._closed.wait(backoff)
                backoff = min(backoff * 2, 2.0)
        with contextlib.suppress(redis.RedisError):
            pubsub.close()

    def close(self) -> None:
        self._closed.set()
        if self._listener is not None:
            with contextlib.suppress(redis.RedisError):  # an empty message wakes the listener
                self.redis.publish(self.keys.reply_channel(self.client_id), b"")
            self._listener.join(timeout=5)
        self.redis.close()
        self._replies.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def settle(p: Prepared, error: Rejected | None) -> None:
    """Record a coalesced request's outcome on its waiter (released after the flush)."""
    p.slot.error = error
    p.slot.done = True


class Waiter:
    """One coalesced submit: a lock held until its flush is over (or it is to lead)."""

    __slots__ = ("done", "error", "lead", "lock", "prepared")

    def __init__(self, prepared: Prepared) -> None:
        self.prepared = prepared
        self.lock = threading.Lock()
        self.lock.acquire()
        self.error: BaseException | None = None
        self.done = False
        self.lead = False
        prepared.slot = self


class Coalescer:
    """Concurrent submits share flushes: one in flight at a time, the next carries all
    that arrived meanwhile. A submit that finds no flush in flight sends at once; one
    that finds a flush joins the next, led by the first of them to arrive."""

    def __init__(self, flush: Callable[[list[Prepared]], None]) -> None:
        self._flush = flush
        self._lock = threading.Lock()
        self._pending: list[Waiter] = []
        self._flushing = False

    def submit(self, prepared: Prepared) -> str:
        me = Waiter(prepared)
        with self._lock:
            self._pending.append(me)
            lead = not self._flushing
            self._flushing = True
        if not lead:
            try:
                me.lock.acquire()  # released once answered, or to lead the next flush
            except BaseException:  # interrupted: leave, without stranding those behind
                if self._abandon(me):
                    me.lock.acquire(blocking=False)  # handed the lead: the lock was let go
                    self._lead(me)
                raise
            lead = me.lead
        if lead:
            self._lead(me)
        if me.error is not None:
            raise me.error
        return prepared.id

    def _abandon(self, me: Waiter) -> bool:
        """A waiter that stops waiting: not yet in a flush, it is not sent; already handed
        the lead, it must still lead (True), or the submits behind it would wait forever."""
        with self._lock:
            if me.lead:
                return True
            if me in self._pending:
                self._pending.remove(me)
            return False

    def _lead(self, me: Waiter) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        try:
            self._flush([w.prepared for w in batch])
        except BaseException as exc:  # noqa: BLE001 - every caller of the flush sees it
            shared = exc if isinstance(exc, Exception) else _interrupted(exc)
            for w in batch:
                if not w.done:
                    w.error, w.done = exc if w is me else shared, True
        finally:
            with self._lock:
                nxt = self._pending[0] if self._pending else None
                if nxt is None:
                    self._flushing = False
                else:
                    nxt.lead = True
            for w in batch:
                if not w.done:  # the script answered nothing for it: it cannot stay silent
                    w.error = RuntimeError("submit flush ended without an answer")
                if w is not nxt:
                    w.lead = False
                w.lock.release()
            if nxt is not None:
                nxt.lock.release()


def _interrupted(exc: BaseException) -> RuntimeError:
    return RuntimeError(
        f"the thread sending this submit together with others was interrupted "
        f"({type(exc).__name__}); whether it was queued is unknown: retry with the same "
        "request_id and idempotent=True"
    )
