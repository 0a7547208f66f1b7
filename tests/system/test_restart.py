"""A Redis crash with the AOF on: every role rides it out and no acknowledged submit is lost."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import redis
from conftest import wait_for

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra.connection import connect
from cascadeq.infra.embedded import EmbeddedRedis
from cascadeq.infra.process import ProcessGroup
from cascadeq.producer import AsyncProducer, Producer, Request
from cascadeq.protocol import results
from cascadeq.protocol.keys import Keys
from cascadeq.protocol.messages import Result


@pytest.fixture
def aof_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(appendfsync="always") as server:
        yield server


def test_a_killed_redis_restarts_from_its_aof_on_the_same_port() -> None:
    with EmbeddedRedis(appendfsync="always") as server:
        client = redis.Redis.from_url(server.url)
        client.set("kept", b"1")
        port, data_dir = server.port, server.data_dir
        server.kill()
        with pytest.raises(redis.ConnectionError):
            client.ping()
        assert server.restart() == f"redis://127.0.0.1:{port}/0"
        assert server.data_dir == data_dir
        assert client.get("kept") == b"1"  # acknowledged, fsynced, replayed
        client.close()


def answered(r: redis.Redis, keys: Keys, ids: list[str]) -> int:
    stored = r.mget([keys.result(i) for i in ids])
    return sum(1 for raw in stored if raw is not None and not results.is_pending(raw))


def test_roles_ride_out_a_redis_crash_and_every_acknowledged_submit_completes(
    aof_server: EmbeddedRedis, catalog: Catalog, digits_dir: Path
) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    settings = Settings(redis_url=aof_server.url, prefix=prefix, block_ms=200)
    env = {
        **os.environ,
        "REDIS_URL": aof_server.url,
        "CASCADEQ_CATALOG": str(digits_dir / "catalog.toml"),
        "CASCADEQ_PREFIX": prefix,
        "CASCADEQ_LOG_LEVEL": "error",
        "CASCADEQ_BLOCK_MS": "200",
        "CASCADEQ_VISIBILITY_TIMEOUT_MS": "2000",  # entries held across the crash come back soon
    }
    x = np.ascontiguousarray(np.resize(np.load(digits_dir / "digits_test.npz")["X"], (32, 64)))
    keys = Keys(prefix)
    r = redis.Redis.from_url(aof_server.url)
    group = ProcessGroup(env)
    try:
        router, worker = group.spawn("router"), group.spawn("worker", "--models", "digits-large")
        with Producer(settings=settings, catalog=catalog) as client:
            ids = client.submit_many([Request({"input": x}, model="digits-large")] * 1000)
            client.wait(ids[0], timeout=60)  # the pipeline is flowing
            assert answered(r, keys, ids) < len(ids), "all done before the crash: no mid-flow"
            aof_server.kill()
            aof_server.restart()
            # The same producer submits again without being told Redis went away.
            ids += client.submit_many([Request({"input": x[:1]}, model="digits-large")] * 50)
            got = client.wait_many(ids, timeout=240)
        assert [g.id for g in got] == ids
        assert all(g.ok for g in got)
        assert (router.poll(), worker.poll()) == (None, None)  # the same processes carried on
        group.stop()
        assert (router.returncode, worker.returncode) == (0, 0)
    finally:
        group.stop()
        r.close()


def restart_under(server: EmbeddedRedis, client_id: str, settings: Settings, rid: str) -> None:
    """Crash and restart Redis under a waiting client; once its listener has subscribed
    again, publish the result (stored nowhere: only the new subscription can deliver it)."""
    r = connect(server.url)
    channel = Keys(settings.prefix).reply_channel(client_id).encode()
    wait_for(lambda: r.pubsub_numsub(channel) == [(channel, 1)], 30, "the listener subscribed")
    server.kill()
    server.restart()
    wait_for(lambda: r.pubsub_numsub(channel) == [(channel, 1)], 60, "it subscribed again")
    r.publish(channel, Result(id=rid, status="ok").dumps())
    r.close()


@pytest.mark.parametrize("kind", ["sync", "asyncio"])
def test_both_clients_listen_again_after_a_redis_crash(
    aof_server: EmbeddedRedis, catalog: Catalog, kind: str
) -> None:
    settings = Settings(redis_url=aof_server.url, prefix=f"t{uuid.uuid4().hex[:10]}")
    req = Request({"input": np.zeros((1, 64), np.float32)}, model="digits-large")
    if kind == "sync":
        with Producer(settings=settings, catalog=catalog) as client:
            (rid,) = client.submit_many([req])
            with ThreadPoolExecutor(1) as pool:
                waiting = pool.submit(client.wait_many, [rid], 120)
                restart_under(aof_server, client.client_id, settings, rid)
                got = waiting.result()
    else:

        async def run() -> list[Result]:
            async with AsyncProducer(settings=settings, catalog=catalog) as client:
                (rid,) = await client.submit_many([req])
                waiting = asyncio.create_task(client.wait_many([rid], 120))
                await asyncio.to_thread(restart_under, aof_server, client.client_id, settings, rid)
                return await waiting

        got = asyncio.run(run())
    assert [g.status for g in got] == ["ok"]
