"""``submit_replicas``: a submit returns only once that many replicas hold it, from the
sync and the asyncio client alike, on a private master with one replica."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import redis
from conftest import wait_for

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra.embedded import EmbeddedRedis
from cascadeq.producer import AsyncProducer, ConnectionFailed, Producer

X = {"input": np.ones((1, 4), np.float32)}


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[EmbeddedRedis, redis.Redis]]:
    """A master and a replica of it, linked."""
    with EmbeddedRedis() as master:
        replica = EmbeddedRedis(extra_args=("--replicaof", "127.0.0.1", str(master.port)))
        with replica:
            copy = redis.Redis.from_url(replica.url)

            def linked() -> bool:
                info: dict[str, object] = copy.info("replication")
                return info.get("master_link_status") == "up"

            wait_for(linked, 30, "the replica is in sync with its master")
            yield master, copy
            copy.close()


def _submit(client: str, settings: Settings, catalog: Catalog) -> str:
    if client == "sync":
        with Producer(settings=settings, catalog=catalog) as producer:
            return producer.submit(task="toy", inputs=X)

    async def scenario() -> str:
        async with AsyncProducer(settings=settings, catalog=catalog) as producer:
            return await producer.submit(task="toy", inputs=X)

    return asyncio.run(scenario())


@pytest.mark.parametrize("client", ["sync", "async"])
def test_a_submit_returns_once_its_replicas_hold_it(
    pair: tuple[EmbeddedRedis, redis.Redis], settings: Settings, toy_catalog: Catalog, client: str
) -> None:
    master, copy = pair
    on_master = replace(settings, redis_url=master.url, submit_replicas=1, submit_wait_ms=5000)
    rid = _submit(client, on_master, toy_catalog)
    assert copy.exists(on_master.keys().result(rid))  # the placeholder is on the replica


@pytest.mark.parametrize("client", ["sync", "async"])
def test_too_few_replicas_in_time_raise_connection_failed(
    pair: tuple[EmbeddedRedis, redis.Redis], settings: Settings, toy_catalog: Catalog, client: str
) -> None:
    master, _ = pair
    wanting = replace(settings, redis_url=master.url, submit_replicas=2, submit_wait_ms=50)
    with pytest.raises(ConnectionFailed, match="1 of 2 replica"):
        _submit(client, wanting, toy_catalog)


def test_the_asyncio_client_refuses_replicas_on_a_cluster(
    settings: Settings, toy_catalog: Catalog
) -> None:
    wanting = replace(settings, submit_replicas=1)
    with pytest.raises(ValueError, match="sync Producer"):
        AsyncProducer("redis+cluster://127.0.0.1:1", settings=wanting, catalog=toy_catalog)
