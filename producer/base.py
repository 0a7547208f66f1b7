"""What the sync and asyncio clients share: identity, settings, keys, catalog, inbox."""

from __future__ import annotations

import functools
import inspect
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.producer.errors import ConnectionFailed, UnknownRequest
from cascadeq.producer.inbox import Inbox
from cascadeq.producer.requests import CatalogCache, Prepared, Preparer, Request
from cascadeq.protocol.keys import Keys
from cascadeq.protocol.messages import Result
from cascadeq.protocol.results import is_pending

MAX_CONNECTIONS = 16  # the pool; waiting adds one pub/sub connection of its own
MGET_CHUNK = 1000
SWEEP_S = 1.0  # how often the listener re-reads outstanding results as a backstop
LOST = (redis.ConnectionError, redis.TimeoutError)  # what redis-py raises once retries are spent

C = TypeVar("C", bound=type)


def raises_connection_failed(cls: C) -> C:
    """Every public method of the client raises ConnectionFailed, never redis-py's errors.

    Applied once per client class, so a caller catches one CascadeqError and no method
    repeats the translation.
    """
    for name, fn in list(vars(cls).items()):
        if not name.startswith("_") and inspect.isfunction(fn):
            setattr(cls, name, _translated(fn))
    return cls


def _translated(fn: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(self: ClientBase, *args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(self, *args, **kwargs)
            except LOST as exc:
                raise ConnectionFailed(self.url, exc) from exc

        return run_async

    @functools.wraps(fn)
    def run(self: ClientBase, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except LOST as exc:
            raise ConnectionFailed(self.url, exc) from exc

    return run


class ClientBase:
    def __init__(
        self, redis_url: str | None, settings: Settings | None, catalog: Catalog | None
    ) -> None:
        self.settings = settings or Settings.from_env()
        url = redis_url or self.settings.redis_url
        if not url:
            raise ValueError("no Redis: pass redis_url= or set REDIS_URL")
        self.url = url
        self.client_id = uuid.uuid4().hex
        self.connection_name = f"cq-producer-{self.client_id}"  # visible in CLIENT LIST
        self.keys = Keys(self.settings.prefix)
        self.catalogs = CatalogCache(catalog, self.settings.catalog)
        self._inbox = Inbox()
        self._max_bytes = self.settings.max_payload_bytes

    def _prepare(self, requests: list[Request]) -> list[Prepared]:
        """Validate every request (raises Rejected for the first bad one); no I/O."""
        prepare = Preparer(self.catalogs.current(), self.settings, self.client_id)
        return [prepare(req) for req in requests]

    def _result_keys(self, ids: list[str]) -> list[list[str]]:
        """The ids' result keys, MGET_CHUNK a list: one concatenation each (what
        ``Keys.result`` gives, without a method call and an f-string per id)."""
        prefix = self.keys.result("")
        return [
            [prefix + rid for rid in ids[start : start + MGET_CHUNK]]
            for start in range(0, len(ids), MGET_CHUNK)
        ]

    def _read_stored(self, request_id: str, raw: Any) -> Result | None:
        """A stored result, None while the request is not ready; unknown ids raise."""
        if raw is None:
            raise UnknownRequest(request_id, self.settings.pending_ttl_s)
        return None if is_pending(raw) else Result.loads(raw)
