"""The published catalog: written by `cascadeq models publish` (and a starting router),
watched by routers and workers, which switch to a new one within a second, unrestarted.

A watcher blocks on the catalog's pub/sub channel (no polling); each message makes it
read the catalog key once, and a catalog it already holds, or one a router stored from
its own file at start (roles started on files keep their files until a publish), is
ignored. After subscribing
it reads the key once too, so a catalog published while it was not listening is still
taken. Once an operator has published one, a starting router no longer overwrites it
with its file: the published catalog is the deployment's until the next publish.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from cascadeq.config.catalog import Catalog
from cascadeq.config.fields import CatalogError
from cascadeq.infra.connection import pubsub as open_pubsub
from cascadeq.infra.log import get_logger
from cascadeq.protocol import wire
from cascadeq.protocol.keys import Keys

log = get_logger("cascadeq.catalog")

HISTORY = 50  # catalogs kept for rollback
OPERATOR = "operator"  # ``by`` of a catalog `cascadeq models publish` wrote


def encoded(catalog: Catalog, by: str) -> bytes:
    source = catalog.source
    if not source.startswith(("<", "redis:")):
        source = str(Path(source).resolve())  # a worker resolves the model paths from it
    return wire.dumps({"source": source, "text": catalog.text, "by": by})


def read(r: redis.Redis, keys: Keys) -> dict[str, Any] | None:
    raw: bytes | None = r.get(keys.catalog)  # type: ignore[assignment]
    return None if raw is None else wire.loads_map(raw, "catalog")


def parse(doc: dict[str, Any], check_files: bool = True) -> Catalog:
    source = str(doc["source"])
    return Catalog.loads(str(doc["text"]), source=source, check_files=check_files)


def publish(r: redis.Redis, keys: Keys, catalog: Catalog, by: str = OPERATOR) -> bool:
    """Store ``catalog``, keep the one it replaces for rollback, tell every watcher; False
    if it is the one already published (nothing sent)."""
    new = encoded(catalog, by)
    old: bytes | None = r.get(keys.catalog)  # type: ignore[assignment]
    if old is not None:
        was = wire.loads_map(old, "catalog")
        if was.get("text") == catalog.text and was.get("by") == by:
            return False  # watchers hold it already
    pipe = r.pipeline(transaction=True)
    if old is not None:
        pipe.lpush(keys.catalog_history, old)
        pipe.ltrim(keys.catalog_history, 0, HISTORY - 1)
    pipe.set(keys.catalog, new)
    pipe.publish(keys.catalog_channel, b"1")
    pipe.execute()
    return True


def publish_at_start(r: redis.Redis, keys: Keys, catalog: Catalog) -> None:
    """A router's catalog, for producers and workers, unless an operator published one."""
    doc = read(r, keys)
    if doc is not None and doc.get("by") == OPERATOR:
        return
    r.set(keys.catalog, encoded(catalog, "router"))


class CatalogWatch:
    """Calls ``on_change`` with each newly published catalog, from its own thread."""

    def __init__(
        self,
        r: redis.Redis,
        keys: Keys,
        current: Catalog,
        on_change: Callable[[Catalog], None],
        check_files: bool = True,
    ) -> None:
        self.r, self.keys, self.on_change = r, keys, on_change
        self.text = current.text
        self.check_files = check_files

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self._listen(stop)
            except redis.RedisError as exc:
                log.warning("catalog_watch_lost", error=repr(exc))
                stop.wait(1.0)  # Redis away: try again, as the serving loops do

    def _listen(self, stop: threading.Event) -> None:
        pubsub = open_pubsub(self.r, ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.keys.catalog_channel)
            self.check()  # anything published while not subscribed
            while not stop.is_set():
                if pubsub.get_message(timeout=1.0) is not None:  # blocks; wakes to stop
                    self.check()
        finally:
            pubsub.close()

    def check(self) -> None:
        """Read the published catalog; hand it on if it is new and valid."""
        doc = read(self.r, self.keys)
        if doc is None or doc.get("by") != OPERATOR or doc.get("text") == self.text:
            return  # a router's file at start retargets no one: only a publish does
        try:
            catalog = parse(doc, self.check_files)
        except (CatalogError, KeyError, wire.WireError) as exc:
            log.error("catalog_refused", error=str(exc))
            self.text = str(doc.get("text"))  # not again until the next publish
            return
        self.text = catalog.text
        log.info("catalog_changed", source=catalog.source)
        self.on_change(catalog)
