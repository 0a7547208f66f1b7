"""The synchronous client a backend service uses: submit, poll, wait.

What to send and what the replies mean is the shared core's (producer/core.py); this
module only sends the commands on blocking connections and waits with threads.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import wait as wait_futures
from typing import Any

import redis
from redis.exceptions import NoScriptError

from cascadeq.infra.connection import connect, node_of, refresh
from cascadeq.infra.connection import pubsub as open_pubsub
from cascadeq.producer import core
from cascadeq.producer.cancel import Cancelled
from cascadeq.producer.core import ClientCore, Command, Ops, T
from cascadeq.producer.errors import Rejected
from cascadeq.producer.inbox import collect
from cascadeq.producer.requests import SUBMIT, Prepared, Request
from cascadeq.protocol.messages import Result


@core.raises_connection_failed
class Producer(ClientCore[str]):
    """Thread-safe; one reply connection serves every outstanding wait of the process.

    Up to MAX_CONNECTIONS calls talk to Redis at once; more wait for a free connection.
    """

    def _open(self) -> None:
        name = self.connection_name
        self.redis = connect(self.url, max_connections=core.MAX_CONNECTIONS, name=name)
        self._replies = connect(self.url, max_connections=1, name=name, socket_timeout=None)
        self._listener: threading.Thread | None = None
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._coalescer = Coalescer(self._flush)

    def _run(self, ops: Ops[T]) -> T:
        """Drive a core operation: send each command it yields, hand it the reply."""
        reply: Any = None
        try:
            while True:
                reply = self._send(ops.send(reply))
        except StopIteration as done:
            answer: T = done.value
            return answer

    def _send(self, cmd: Command) -> Any:
        """One round trip, blocking."""
        if cmd.batch is not None:
            pipe = self.redis.pipeline(transaction=False)
            for args in cmd.batch:
                pipe.execute_command(*args)  # type: ignore[no-untyped-call]
            return pipe.execute()
        if cmd.script is SUBMIT and self.settings.submit_replicas:
            return self._send_replicated(cmd)
        try:
            return self.redis.execute_command(*cmd.args)  # type: ignore[no-untyped-call]
        except NoScriptError:
            return self.redis.execute_command(*cmd.fallback())  # type: ignore[no-untyped-call]

    def _send_replicated(self, cmd: Command) -> Any:
        """The submit call, then WAIT on the same connection of the node that ran it (WAIT
        counts the replicas holding that connection's writes): a submit that returns
        survives the loss of its master. Fewer replicas in time raise ConnectionFailed;
        the requests may still run, so a caller retrying uses idempotent ids."""
        want, ms = self.settings.submit_replicas, self.settings.submit_wait_ms
        for _ in range(3):  # a slot that moved (a failover): re-read the map, go again
            reply, acked = self._submit_and_wait(cmd, want, ms)
            if not isinstance(reply, redis.exceptions.AskError):  # MOVED is an ASK
                break
            refresh(self.redis)
        if isinstance(reply, Exception):
            refresh(self.redis)
            raise redis.ConnectionError(f"submit failed on its shard's master: {reply}")
        core.check_replicas(acked, want, ms)
        return reply

    def _submit_and_wait(self, cmd: Command, want: int, ms: int) -> tuple[Any, Any]:
        """The submit call and its WAIT in one pipeline on the shard's master."""
        node = node_of(self.redis, cmd.args[3])  # KEYS[1]: the call's ingress shard
        try:
            for args in (cmd.args, cmd.fallback()):
                pipe = node.pipeline(transaction=False)
                pipe.execute_command(*args)  # type: ignore[no-untyped-call]
                pipe.execute_command("WAIT", want, ms)  # type: ignore[no-untyped-call]
                reply, acked = pipe.execute(raise_on_error=False)
                if not isinstance(reply, NoScriptError):
                    break
        except redis.RedisError:
            refresh(self.redis)  # the node failed: the next call finds its successor
            raise
        return reply, acked

    # -- submitting -------------------------------------------------------------

    def _submit(self, req: Request) -> str:
        if self.catalogs.should_fetch(req):
            self._run(self._catalog_ops([req]))
        return self._coalescer.submit(self._prepare([req])[0])

    def submit_many(self, requests: Iterable[Request]) -> list[str]:
        """Queue many as bundles, one round trip per SUBMIT_CHUNK; a refusal raises Rejected.

        Every request is checked before anything is sent. Chunks before a refused one stay
        queued: their ids are in ``Rejected.accepted``. An id repeated within the call
        refuses the whole call; one already in use refuses its chunk (``duplicate_id``,
        the ids in ``Rejected.ids``), except idempotent retries.
        """
        return self._run(self._submit_many_ops(requests))

    def _flush(self, batch: list[Prepared]) -> None:
        self._run(self._flush_ops(batch, settle))

    def cancel(self, request_id: str) -> Cancelled:
        """Cancel a request no model has taken yet: it is answered ``cancelled`` and never
        runs. The outcome says which happened: cancelled, done, running or unknown."""
        return self._run(self._cancel_ops(request_id))

    # -- results ----------------------------------------------------------------

    def result(self, request_id: str) -> Result | None:
        """The result if it is there, else None; never blocks."""
        return self._run(self._result_ops(request_id))

    def wait(self, request_id: str, timeout: float = 30.0) -> Result:
        """Block until the result arrives; raises Timeout, or RequestFailed if not ok."""
        return core.succeeded(self.wait_many([request_id], timeout)[0])

    def wait_many(self, request_ids: list[str], timeout: float = 30.0) -> list[Result]:
        """Results in the order of ``request_ids``; raises Timeout naming what is missing."""
        self._ensure_listener()
        with self._waiting(request_ids) as (ids, batch):
            self._run(self._stored_ops(ids, batch))
            if not batch.done():
                wait_futures([batch.future], timeout=timeout)
            return collect(ids, batch, timeout)

    # -- the reply listener -----------------------------------------------------------

    def _ensure_listener(self) -> None:
        with self._lock:
            if self._listener is None or not self._listener.is_alive():
                self._listener = threading.Thread(
                    target=self._listen, daemon=True, name=f"cascadeq-replies-{self.client_id[:6]}"
                )
                self._listener.start()

    def _listen(self) -> None:
        """Blocks on the reply channel until closed; the core decides the rest."""
        listening = core.Listening(self)
        while not self._closed.is_set():
            pubsub = open_pubsub(self._replies)
            try:
                pubsub.subscribe(listening.channel)
                while not self._closed.is_set():
                    msg = pubsub.get_message(timeout=core.SWEEP_S)  # blocks on the socket
                    self._run(listening.heard(msg))
            except Exception as exc:  # noqa: BLE001 - the listener must outlive any surprise
                self._closed.wait(listening.lost(exc))
            finally:
                self._inbox.lost()  # closed, or about to subscribe again
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

    def __exit__(self, *exc_info: object) -> None:
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
