"""The asyncio client: the same contract as Producer, awaitable."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from types import TracebackType

import numpy as np
from redis.exceptions import NoScriptError

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra.connection import connect_async
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
class AsyncProducer(ClientBase):
    """The same contract as Producer, for asyncio code; safe to share between tasks."""

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        settings: Settings | None = None,
        catalog: Catalog | None = None,
    ) -> None:
        super().__init__(redis_url, settings, catalog)
        name = self.connection_name
        self.redis = connect_async(self.url, max_connections=MAX_CONNECTIONS, name=name)
        self._replies = connect_async(self.url, max_connections=1, name=name, socket_timeout=None)
        self._listener: asyncio.Task[None] | None = None
        self._pending: list[Prepared] = []  # coalesced submits waiting for the next flush
        self._flushing = False
        self._flusher: asyncio.Task[None] | None = None

    async def submit(
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
        """As Producer.submit, ids and idempotent retries included."""
        req = Request(inputs, task, model, tier, priority, deadline_ms, request_id, idempotent)
        if self.catalogs.should_fetch(req):
            self.catalogs.update(await self.redis.get(self.keys.catalog))
        prepared = self._prepare([req])[0]
        answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        prepared.slot = answer
        self._pending.append(prepared)
        if not self._flushing:  # a lone submit: the flusher sends it on the next loop turn
            self._flushing = True
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())
        return await answer

    async def submit_many(self, requests: Iterable[Request]) -> list[str]:
        """As Producer.submit_many: refusals, duplicate ids and ``accepted`` alike."""
        reqs = list(requests)
        for req in reqs:
            if self.catalogs.should_fetch(req):
                self.catalogs.update(await self.redis.get(self.keys.catalog))
        prepared = self._prepare(reqs)
        check_unique(prepared)
        refused = await self._send_strict(prepared)
        if refused is not None:
            del prepared  # a caller keeping the error keeps this frame: not the requests
            raise refused
        return [p.id for p in prepared]

    async def _send_strict(self, prepared: list[Prepared]) -> Rejected | None:
        """One script call per chunk; the refusal that stops the call, or None."""
        accepted: list[str] = []
        for planned in plan_calls(prepared, self.keys, self.settings):
            call: list[Outgoing] | Rejected = planned
            while call:
                if isinstance(call, Rejected):
                    return call
                sent = Call(call, self.keys, self.settings, partial=False)
                reply = Reply(await self._submit_script(sent))
                call = strict_outcome(reply, call, sent, accepted, self.keys, self._max_bytes)
        return None

    async def _submit_script(self, sent: Call) -> object:
        try:
            return await self.redis.evalsha(SUBMIT.sha, len(sent.keys), *sent.keys, *sent.args)
        except NoScriptError:
            return await self.redis.eval(SUBMIT.text, len(sent.keys), *sent.keys, *sent.args)

    async def _flush_loop(self) -> None:
        """Send what is pending, then what arrived during that send, until none is left;
        one flush in flight, so concurrent tasks' submits share script calls."""
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await self._flush(batch)
                except BaseException as exc:
                    for p in batch:
                        if not p.slot.done():
                            p.slot.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
        finally:
            self._flushing = False

    async def _flush(self, batch: list[Prepared]) -> None:
        for call in plan_calls(batch, self.keys, self.settings):
            rest: list[Outgoing] = call
            while rest:
                sent = Call(rest, self.keys, self.settings, partial=True)
                reply = Reply(await self._submit_script(sent))
                rest = partial_outcome(reply, rest, sent, self.keys, self._max_bytes, _settle)

    async def result(self, request_id: str) -> Result | None:
        buffered = self._inbox.take(request_id)
        if buffered is not None:
            return buffered
        return self._read_stored(request_id, await self.redis.get(self.keys.result(request_id)))

    async def wait(self, request_id: str, timeout: float = 30.0) -> Result:
        result = (await self.wait_many([request_id], timeout))[0]
        if not result.ok:
            raise RequestFailed(result)
        return result

    async def wait_many(self, request_ids: list[str], timeout: float = 30.0) -> list[Result]:
        self._ensure_listener()
        ids = list(request_ids)
        batch = self._inbox.register(ids)
        try:
            if not batch.done():
                await self._fetch_stored([rid for rid in ids if rid not in batch.results])
            if not batch.done():
                await asyncio.wait([asyncio.wrap_future(batch.future)], timeout=timeout)
            return collect(ids, batch, timeout)
        finally:
            self._inbox.release(batch, ids)

    async def _fetch_stored(self, ids: list[str]) -> None:
        if not ids:
            return
        pipe = self.redis.pipeline(transaction=False)  # every chunk in one round trip
        for keys in self._result_keys(ids):
            pipe.mget(keys)
        raws = [raw for chunk in await pipe.execute() for raw in chunk]
        self._inbox.deliver_stored(ids, raws)

    def _ensure_listener(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        """As Producer._listen: push on the reply channel, a one-second sweep as backstop."""
        channel = self.keys.reply_channel(self.client_id)
        sweep = Every(SWEEP_S)
        backoff = 0.05
        while True:
            pubsub = self._replies.pubsub()
            try:
                await pubsub.subscribe(channel)
                while True:
                    msg = await pubsub.get_message(timeout=SWEEP_S)
                    resubscribed = msg is not None and self._inbox.on_message(msg)
                    if resubscribed or sweep.due():
                        await self._fetch_stored(self._inbox.outstanding())
                    backoff = 0.05
            except Exception as exc:  # noqa: BLE001 - the listener must outlive any surprise
                log.warning("reply_channel_lost", error=repr(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        if self._flusher is not None and not self._flusher.done():
            await asyncio.wait([self._flusher])  # submits already handed in get their answer
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        await self.redis.aclose()
        await self._replies.aclose()

    async def __aenter__(self) -> AsyncProducer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _settle(p: Prepared, error: Rejected | None) -> None:
    if not p.slot.done():
        if error is None:
            p.slot.set_result(p.id)
        else:
            p.slot.set_exception(error)
