"""The asyncio client: the same contract as Producer, awaitable.

What to send and what the replies mean is the shared core's (producer/core.py); this
module only awaits the commands and waits with tasks and futures.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterable
from typing import Any

from redis.exceptions import NoScriptError

from cascadeq.config.settings import is_cluster_url
from cascadeq.infra.connection import connect_async
from cascadeq.infra.connection import pubsub as open_pubsub
from cascadeq.producer import core
from cascadeq.producer.cancel import Cancelled
from cascadeq.producer.core import ClientCore, Command, Ops, T
from cascadeq.producer.errors import Rejected
from cascadeq.producer.inbox import collect
from cascadeq.producer.requests import SUBMIT, Prepared, Request
from cascadeq.protocol.messages import Result


@core.raises_connection_failed
class AsyncProducer(ClientCore[Coroutine[Any, Any, str]]):
    """The same contract as Producer, for asyncio code; safe to share between tasks."""

    def _open(self) -> None:
        if self.settings.submit_replicas and is_cluster_url(self.url):
            raise ValueError(
                "submit_replicas on a Redis Cluster needs the sync Producer: the asyncio "
                "client cannot send a submit's WAIT to the connection of the node that ran it"
            )
        name = self.connection_name
        self.redis = connect_async(self.url, max_connections=core.MAX_CONNECTIONS, name=name)
        self._replies = connect_async(self.url, max_connections=1, name=name, socket_timeout=None)
        self._listener: asyncio.Task[None] | None = None
        self._pending: list[Prepared] = []  # coalesced submits waiting for the next flush
        self._flushing = False
        self._flusher: asyncio.Task[None] | None = None

    async def _run(self, ops: Ops[T]) -> T:
        """Drive a core operation: await each command it yields, hand it the reply."""
        reply: Any = None
        try:
            while True:
                reply = await self._send(ops.send(reply))
        except StopIteration as done:
            answer: T = done.value
            return answer

    async def _send(self, cmd: Command) -> Any:
        if cmd.batch is not None:
            pipe = self.redis.pipeline(transaction=False)
            for args in cmd.batch:
                pipe.execute_command(*args)
            return await pipe.execute()
        if cmd.script is SUBMIT and self.settings.submit_replicas:
            return await self._send_replicated(cmd)
        try:
            return await self.redis.execute_command(*cmd.args)  # type: ignore[no-untyped-call]
        except NoScriptError:
            return await self.redis.execute_command(*cmd.fallback())  # type: ignore[no-untyped-call]

    async def _send_replicated(self, cmd: Command) -> Any:
        """As Producer's: the submit call and a WAIT on the same connection, in one
        pipeline, so a submit that returns survives the loss of its master."""
        want, ms = self.settings.submit_replicas, self.settings.submit_wait_ms
        for args in (cmd.args, cmd.fallback()):
            pipe = self.redis.pipeline(transaction=False)
            pipe.execute_command(*args)
            pipe.execute_command("WAIT", want, ms)
            reply, acked = await pipe.execute(raise_on_error=False)
            if not isinstance(reply, NoScriptError):
                break
        if isinstance(reply, Exception):
            raise reply
        core.check_replicas(acked, want, ms)
        return reply

    # -- submitting -------------------------------------------------------------

    async def _submit(self, req: Request) -> str:
        if self.catalogs.should_fetch(req):
            await self._run(self._catalog_ops([req]))
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
        return await self._run(self._submit_many_ops(requests))

    async def _flush_loop(self) -> None:
        """Send what is pending, then what arrived during that send, until none is left;
        one flush in flight, so concurrent tasks' submits share script calls."""
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await self._run(self._flush_ops(batch, _settle))
                except BaseException as exc:
                    for p in batch:
                        if not p.slot.done():
                            p.slot.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
        finally:
            self._flushing = False

    async def cancel(self, request_id: str) -> Cancelled:
        """As Producer.cancel: cancelled, done, running or unknown."""
        return await self._run(self._cancel_ops(request_id))

    # -- results ----------------------------------------------------------------

    async def result(self, request_id: str) -> Result | None:
        return await self._run(self._result_ops(request_id))

    async def wait(self, request_id: str, timeout: float = 30.0) -> Result:
        return core.succeeded((await self.wait_many([request_id], timeout))[0])

    async def wait_many(self, request_ids: list[str], timeout: float = 30.0) -> list[Result]:
        self._ensure_listener()
        with self._waiting(request_ids) as (ids, batch):
            await self._run(self._stored_ops(ids, batch))
            if not batch.done():
                await asyncio.wait([asyncio.wrap_future(batch.future)], timeout=timeout)
            return collect(ids, batch, timeout)

    # -- the reply listener -----------------------------------------------------------

    def _ensure_listener(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        """Awaits the reply channel until cancelled; the core decides the rest."""
        listening = core.Listening(self)
        while True:
            pubsub = open_pubsub(self._replies)
            try:
                await pubsub.subscribe(listening.channel)
                while True:
                    msg = await pubsub.get_message(timeout=core.SWEEP_S)
                    await self._run(listening.heard(msg))
            except Exception as exc:  # noqa: BLE001 - the listener must outlive any surprise
                await asyncio.sleep(listening.lost(exc))
            finally:
                self._inbox.lost()  # cancelled, or about to subscribe again
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

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

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _settle(p: Prepared, error: Rejected | None) -> None:
    if not p.slot.done():
        if error is None:
            p.slot.set_result(p.id)
        else:
            p.slot.set_exception(error)
