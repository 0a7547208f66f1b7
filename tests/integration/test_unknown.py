"""Telling "not ready" from "unknown id": the placeholder submit leaves under a result key."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import numpy as np
import pytest
import redis
from test_producer import write_results

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra.embedded import EmbeddedRedis
from cascadeq.producer import AsyncProducer, Producer, Rejected, Timeout, UnknownRequest
from cascadeq.protocol import results
from cascadeq.protocol.keys import Keys
from cascadeq.protocol.messages import Result, error_result

X = {"input": np.ones((1, 4), np.float32)}


def wait_until_expired(r: redis.Redis, key: str, timeout: float) -> None:
    """Block on Redis's own expiry event for ``key`` (keyspace notifications)."""
    r.config_set("notify-keyspace-events", "Ex")
    pubsub = r.pubsub()
    try:
        pubsub.subscribe("__keyevent@0__:expired")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = pubsub.get_message(timeout=deadline - time.monotonic())  # blocks on the socket
            if msg and msg["type"] == "subscribe" and r.exists(key) == 0:
                return  # gone before we listened
            if msg and msg["type"] == "message" and msg["data"] == key.encode():
                return
        raise AssertionError(f"{key} did not expire within {timeout}s")
    finally:
        pubsub.close()


def test_submitted_reads_not_ready_and_a_never_submitted_id_reads_unknown(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    with Producer(settings=settings, catalog=toy_catalog) as client:
        rid = client.submit(task="toy", inputs=X)
        assert client.result(rid) is None  # queued, not run: not ready
        key = Keys(settings.prefix).result(rid)
        held = r.get(key)  # the placeholder: "not ready", then the waiters' reply channel
        assert (
            held == results.PENDING + Keys(settings.prefix).reply_channel(client.client_id).encode()
        )
        assert results.is_pending(held)
        assert settings.result_ttl_s < r.ttl(key) <= settings.pending_ttl_s
        with pytest.raises(UnknownRequest, match=r"unknown id nobody \(never submitted"):
            client.result("nobody")
        with pytest.raises(Timeout) as tmo:  # a placeholder is not a result for waiters
            client.wait_many([rid], timeout=0.3)
        assert tmo.value.missing == [rid]
        write_results(r, settings, client.client_id, [rid])
        got = client.result(rid)
        assert got is not None
        assert got.ok


def test_an_expired_result_reads_unknown(settings: Settings, toy_catalog: Catalog) -> None:
    # A server of its own: Redis's active expiry samples volatile keys at random, and the
    # shared one holds thousands of placeholders, which would make the wait slow.
    with EmbeddedRedis() as server:
        short = replace(settings, redis_url=server.url, result_ttl_s=1)
        r = redis.Redis.from_url(server.url)
        with Producer(settings=short, catalog=toy_catalog) as client:
            rid = client.submit(task="toy", inputs=X)
            write_results(r, short, client.client_id, [rid])  # stored with a 1 s TTL
            key = Keys(settings.prefix).result(rid)
            assert r.ttl(key) <= 1
            wait_until_expired(r, key, timeout=10)
            with pytest.raises(UnknownRequest, match="expired after"):
                client.result(rid)
        r.close()


def test_the_first_real_result_wins_over_the_placeholder_and_stays(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    keys = Keys(settings.prefix)
    with Producer(settings=settings, catalog=toy_catalog) as client:
        rid = client.submit(task="toy", inputs=X)
    first = Result(id=rid, status="ok", outputs={"p": np.ones((1, 2))})
    for res in (first, error_result(rid, "late", "a duplicate delivery")):
        pipe = r.pipeline(transaction=False)
        results.queue_result(pipe, keys, res, None, settings.result_ttl_s)
        pipe.execute()
    assert r.get(keys.result(rid)) == first.dumps()
    assert r.ttl(keys.result(rid)) <= settings.result_ttl_s
    # A resubmission under the same id is refused and puts no placeholder back over it.
    with (
        Producer(settings=settings, catalog=toy_catalog) as client,
        pytest.raises(Rejected, match="already in use"),
    ):
        client.submit(task="toy", inputs=X, request_id=rid)
    assert r.get(keys.result(rid)) == first.dumps()


def test_async_producer_tells_not_ready_from_unknown(
    settings: Settings, toy_catalog: Catalog
) -> None:
    async def scenario() -> None:
        async with AsyncProducer(settings=settings, catalog=toy_catalog) as client:
            rid = await client.submit(task="toy", inputs=X)
            assert await client.result(rid) is None
            with pytest.raises(UnknownRequest):
                await client.result("nobody")

    asyncio.run(scenario())
