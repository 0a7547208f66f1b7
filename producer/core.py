"""The client's sans-I/O core: all the sync and asyncio clients share.

A core operation (a method ending in ``_ops``) is a generator: it yields each round trip
as a Command and is sent the reply, so it decides what to send and what the answer means
without touching a socket. Producer sends the commands on blocking connections and waits
with threads; AsyncProducer awaits them: the two differ only in how they wait.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

import numpy as np
import redis

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra.log import get_logger
from cascadeq.producer import cancel
from cascadeq.producer.errors import ConnectionFailed, Rejected, RequestFailed, UnknownRequest
from cascadeq.producer.inbox import Batch, Inbox
from cascadeq.producer.requests import (
    SUBMIT,
    Call,
    CatalogCache,
    Outgoing,
    Prepared,
    Preparer,
    Reply,
    Request,
    check_unique,
    drain_rate,
    members,
    partial_outcome,
    plan_calls,
    strict_outcome,
)
from cascadeq.protocol import results
from cascadeq.protocol.clock import Every
from cascadeq.protocol.keys import DEFAULT_LANE, DEFAULT_TENANT, InvalidName, check_name
from cascadeq.protocol.lua import Script
from cascadeq.protocol.messages import Result

MAX_CONNECTIONS = 16  # the pool; waiting adds one pub/sub connection of its own
SWEEP_S = 1.0  # how often the listener re-reads outstanding results as a backstop
BACKOFF_S = (0.05, 2.0)  # the listener's first and longest wait before subscribing again
# what redis-py raises once retries are spent (on a cluster: no node reachable, or all
# slots of a dead master unserved until its replica takes over)
LOST = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.RedisClusterException,
    redis.exceptions.ClusterDownError,
)

T = TypeVar("T")
C = TypeVar("C", bound=type)
#: What submit gives: the id (Producer), or an awaitable of it (AsyncProducer).
Answer = TypeVar("Answer")
Ops = Generator["Command", Any, T]

log = get_logger("cascadeq.producer")


class Command:
    """One round trip: a command, or several pipelined (``batch``). ``script`` is the Lua
    script an EVALSHA runs, sent in full (``fallback``) to a server that lost it."""

    __slots__ = ("args", "batch", "script")

    def __init__(
        self,
        args: tuple[Any, ...] = (),
        *,
        batch: list[tuple[Any, ...]] | None = None,
        script: Script | None = None,
    ) -> None:
        self.args, self.batch, self.script = args, batch, script

    def fallback(self) -> tuple[Any, ...]:
        """The EVALSHA again as EVAL, after a NOSCRIPT reply."""
        assert self.script is not None, "only a script call is answered NOSCRIPT"
        return ("EVAL", self.script.text, *self.args[2:])


def evalsha(script: Script, keys: list[Any], args: list[Any]) -> Command:
    return Command(("EVALSHA", script.sha, len(keys), *keys, *args), script=script)


def raises_connection_failed(cls: C) -> C:
    """Every public method of the client raises ConnectionFailed, never redis-py's errors.

    Applied once per client class, so a caller catches one CascadeqError and no method
    repeats the translation; ``_submit`` too, as the shared ``submit`` only calls it.
    """
    for name, fn in list(vars(cls).items()):
        if (name == "_submit" or not name.startswith("_")) and inspect.isfunction(fn):
            setattr(cls, name, _translated(fn))
    return cls


def _translated(fn: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(self: ClientCore[Any], *args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(self, *args, **kwargs)
            except LOST as exc:
                raise ConnectionFailed(self.url, exc) from exc

        return run_async

    @functools.wraps(fn)
    def run(self: ClientCore[Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except LOST as exc:
            raise ConnectionFailed(self.url, exc) from exc

    return run


class ClientCore(Generic[Answer]):
    """Identity, settings, keys, catalog and inbox, and every operation as ``_ops``."""

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        settings: Settings | None = None,
        catalog: Catalog | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> None:
        """``tenant``: who this client's requests are for, unless a submit names another
        (quotas and fair share: the catalog's ``[tenants.*]``)."""
        self.settings = settings or Settings.from_env()
        try:
            self.tenant = check_name("tenant", tenant)
        except InvalidName as exc:
            raise Rejected(str(exc), "bad_request") from exc
        url = redis_url or self.settings.redis_url
        if not url:
            raise ValueError("no Redis: pass redis_url= or set REDIS_URL")
        self.url = self.settings.url_for(url)
        self.client_id = uuid.uuid4().hex
        self.connection_name = f"cq-producer-{self.client_id}"  # visible in CLIENT LIST
        self.keys = self.settings.keys(self.url)
        self.catalogs = CatalogCache(catalog, self.settings.catalog)
        self._inbox = Inbox()
        self._max_bytes = self.settings.max_payload_bytes
        self._open()

    def _open(self) -> None:
        """The client's connections and the machinery it waits with."""
        raise NotImplementedError

    # -- submitting ---------------------------------------------------------------------

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
        traceparent: str | None = None,
        tenant: str | None = None,
    ) -> Answer:
        """Queue one request and return its id at once (AsyncProducer: await it); raises
        Rejected if refused.

        An id names one request: a ``request_id`` already in use is refused
        (``duplicate_id``). To retry a submit whose outcome you did not see (a timeout, a
        lost connection), pass the same ``request_id`` and inputs with ``idempotent=True``
        on every attempt: if the first attempt landed, the retry returns the id without
        queueing it again; if it did not, the retry queues it. A W3C ``traceparent``
        travels with the request into its hops' log lines and its result's info.
        """
        req = Request(
            inputs, task, model, tier, priority, deadline_ms, request_id, idempotent,
            traceparent, tenant,
        )  # fmt: skip
        return self._submit(req)

    def _submit(self, req: Request) -> Answer:
        """Coalesce one submit with others in flight: how depends on how the client waits."""
        raise NotImplementedError

    def _catalog_ops(self, reqs: list[Request]) -> Ops[None]:
        """Fetch the published catalog if it lacks what a request names (or none is held)."""
        for req in reqs:
            if self.catalogs.should_fetch(req):
                self.catalogs.update((yield Command(("GET", self.keys.catalog))))

    def _prepare(self, requests: list[Request]) -> list[Prepared]:
        """Validate every request (raises Rejected for the first bad one); no I/O."""
        prepare = Preparer(self.catalogs.current(), self.settings, self.client_id, self.tenant)
        return [prepare(req) for req in requests]

    def _submit_many_ops(self, requests: Iterable[Request]) -> Ops[list[str]]:
        """submit_many: every request checked before anything is sent, then one script
        call per chunk; the first refusal raises, with the ids queued before it."""
        reqs = list(requests)
        yield from self._catalog_ops(reqs)
        prepared = self._prepare(reqs)
        check_unique(prepared)
        refused = yield from self._send_strict_ops(prepared)
        if refused is not None:
            del prepared  # a caller keeping the error keeps this frame: not the requests
            raise refused
        return [p.id for p in prepared]

    def _send_strict_ops(self, prepared: list[Prepared]) -> Ops[Rejected | None]:
        """One script call per chunk; the refusal that stops the call, or None."""
        accepted: list[str] = []
        for planned in plan_calls(prepared, self.keys, self.settings):
            call: list[Outgoing] | Rejected = planned
            while call:
                if isinstance(call, Rejected):
                    return call
                sent = Call(call, self.keys, self.settings, partial=False)
                heard = self._expect(call)
                reply = Reply((yield evalsha(SUBMIT, sent.keys, sent.args)))
                if not reply.ok:  # the call queued nothing: what is sent again is again heard
                    self._inbox.forget(heard)
                drain = yield from self._drain_ops(reply, sent)
                call = strict_outcome(
                    reply, call, sent, accepted, self.keys, self._max_bytes, drain
                )
        return None

    def _expect(self, call: list[Outgoing]) -> list[str]:
        """The call's ids, recorded as heard by the listener's subscription if it holds one
        now (Inbox.unheard): before sending, so no result can be delivered ahead of it."""
        epoch = self._inbox.listening()
        if epoch is None:
            return []
        ids = [p.id for p in members(call)]
        self._inbox.expect(ids, epoch)
        return ids

    def _flush_ops(
        self, batch: list[Prepared], settle: Callable[[Prepared, Rejected | None], None]
    ) -> Ops[None]:
        """Coalesced submits: one script call per chunk, each refusal answered alone."""
        for call in plan_calls(batch, self.keys, self.settings):
            rest: list[Outgoing] = call
            while rest:
                sent = Call(rest, self.keys, self.settings, partial=True)
                heard = self._expect(rest)
                reply = Reply((yield evalsha(SUBMIT, sent.keys, sent.args)))
                if not reply.ok:  # the call queued nothing: what is sent again is again heard
                    self._inbox.forget(heard)
                drain = yield from self._drain_ops(reply, sent)
                rest = partial_outcome(reply, rest, sent, self.keys, self._max_bytes, settle, drain)

    def _drain_ops(self, reply: Reply, sent: Call) -> Ops[float | None]:
        """A refusal's retry-after needs the model's drain rate: one HMGET of what its
        workers publish, on the refusal path only (an accepted call reads nothing)."""
        if reply.ok or not reply.estimates:
            return None
        model = sent.model()
        if model is None:
            return None
        observed = yield Command(("HMGET", self.keys.observed(model), "compute_ms", "batch"))
        return drain_rate(observed)

    # -- cancelling ---------------------------------------------------------------------

    def _cancel_ops(self, request_id: str) -> Ops[cancel.Cancelled]:
        """cancel(): one script call; a request cancelled now is answered at once to this
        client's waiters, and published to the submitter's (its placeholder names them)."""
        if self.catalogs.catalog is None and self.catalogs.published:
            self.catalogs.update((yield Command(("GET", self.keys.catalog))))
        catalog = self.catalogs.current()  # its streams are where a worker may hold the request
        keys, args = cancel.call(self.keys, request_id, self.settings, catalog)
        got = cancel.outcome(request_id, (yield evalsha(cancel.CANCEL, keys, args)))
        if got.cancelled and got.result is not None:
            self._inbox.deliver_many([got.result])
        return got

    # -- results ------------------------------------------------------------------------

    def _result_ops(self, request_id: str) -> Ops[Result | None]:
        """result(): buffered, else what its result key holds (None: not ready)."""
        buffered = self._inbox.take(request_id)
        if buffered is not None:
            return buffered
        raw = yield Command(("GET", self.keys.result(request_id)))
        try:
            return results.read_stored(raw)
        except results.Unknown:
            raise UnknownRequest(request_id, self.settings.pending_ttl_s) from None

    @contextlib.contextmanager
    def _waiting(self, request_ids: list[str]) -> Iterator[tuple[list[str], Batch]]:
        """A wait's ids registered with the inbox (results buffered are in at once) for as
        long as the caller waits, answered or timed out."""
        ids = list(request_ids)
        batch = self._inbox.register(ids)
        try:
            yield ids, batch
        finally:
            self._inbox.release(batch, ids)

    def _stored_ops(self, ids: list[str], batch: Batch) -> Ops[None]:
        """A waiter's look in Redis, after registering: results stored before it did,
        except those the listener's subscription is sure to bring (Inbox.unheard)."""
        if not batch.done():
            missing = [rid for rid in ids if rid not in batch.results]
            yield from self._fetch_stored_ops(self._inbox.unheard(missing))

    def _fetch_stored_ops(self, ids: list[str]) -> Ops[None]:
        """Deliver results already stored: one MGET per chunk, all in one round trip."""
        if ids:
            ids = results.by_shard(self.keys, ids)
            found = yield Command(batch=results.mget_commands(self.keys, ids))
            self._inbox.deliver_stored(ids, [raw for chunk in found for raw in chunk])


def check_replicas(acked: Any, want: int, ms: int) -> None:
    """A replicated submit's WAIT reply: fewer replicas than wanted raise ConnectionError
    (ConnectionFailed to the caller), since the submit may be lost on a failover."""
    if isinstance(acked, Exception) or int(acked) < want:
        raise redis.ConnectionError(
            f"submit reached the master but {acked} of {want} replica(s) confirmed it"
            f" within {ms} ms: it may be lost on a failover (the requests may also run)"
        )


def succeeded(result: Result) -> Result:
    """wait(): the result if ok, else RequestFailed."""
    if not result.ok:
        raise RequestFailed(result)
    return result


class Listening:
    """The reply listener's decisions, shared so both clients listen and reconnect alike.

    After a subscribe (the first, or again after a lost connection) and once a SWEEP_S,
    the outstanding results are re-read: the sweep wakes waiters on ids another client
    submitted (their results are published to that client) and covers anything published
    while disconnected. A lost channel is subscribed again after a growing backoff.
    """

    def __init__(self, core: ClientCore[Any], sweep_s: float = SWEEP_S) -> None:
        self.channel = core.keys.reply_channel(core.client_id)
        self._core = core
        self._sweep = Every(sweep_s)
        self._backoff = BACKOFF_S[0]

    def heard(self, msg: dict[str, Any] | None) -> Ops[None]:
        """Handle what a wait on the channel returned (None: nothing in SWEEP_S): a
        result delivered, and the re-read of outstanding results when it is due."""
        self._backoff = BACKOFF_S[0]
        inbox = self._core._inbox
        resubscribed = msg is not None and inbox.on_message(msg)
        if resubscribed or self._sweep.due():
            yield from self._core._fetch_stored_ops(inbox.outstanding())

    def lost(self, exc: Exception) -> float:
        """The channel failed: how long to wait before subscribing again."""
        self._core._inbox.lost()
        wait, self._backoff = self._backoff, min(self._backoff * 2, BACKOFF_S[1])
        log.warning("reply_channel_lost", error=repr(exc), retry_in=wait)
        return wait
