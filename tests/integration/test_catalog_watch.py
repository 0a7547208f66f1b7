"""The catalog watch takes an operator's publish, not a router's file at start."""

from __future__ import annotations

import threading

import redis

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra import catalogs
from cascadeq.protocol.keys import Keys


def test_only_a_publish_reaches_a_watcher_and_the_history_keeps_the_replaced(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    keys = Keys(settings.prefix)
    seen: list[Catalog] = []
    changed = threading.Event()

    def taken(catalog: Catalog) -> None:
        seen.append(catalog)
        changed.set()

    watch = catalogs.CatalogWatch(r, keys, toy_catalog, taken, check_files=False)
    other = Catalog.loads(
        toy_catalog.text.replace("cost = 10.0", "cost = 12.0"),
        source=toy_catalog.source,
        check_files=False,
    )
    catalogs.publish_at_start(r, keys, other)  # a router started on another file
    watch.check()
    assert seen == []
    assert catalogs.publish(r, keys, other) is True
    stop = threading.Event()
    thread = threading.Thread(target=watch.run, args=(stop,))
    thread.start()
    try:
        assert changed.wait(10), "the watcher did not take the publish"
    finally:
        stop.set()
        thread.join()
    assert seen[0].models["toy-large"].cost == 12.0
    catalogs.publish_at_start(r, keys, toy_catalog)  # a restarted router keeps the publish
    doc = catalogs.read(r, keys)
    assert doc is not None
    assert doc["text"] == other.text
    assert r.llen(keys.catalog_history) == 1  # the router's catalog it replaced
    assert catalogs.publish(r, keys, other) is False  # unchanged: nothing sent
