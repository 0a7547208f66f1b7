"""The whole flow on a real 3-master Redis Cluster the module starts on loopback.

The cluster is formed through CLUSTER MEET / ADDSLOTS sent by redis-py
(cascadeq/infra/cluster.py), so these run on the embedded 6.2 binary as on Redis 7. Roles run
in-process on ``redis+cluster://`` clients; the key layout keeps each shard's keys in
one slot, and ``ingress_shards=3`` spreads the shards over the three masters.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra import streams
from cascadeq.infra.cluster import LocalCluster
from cascadeq.infra.connection import connect
from cascadeq.infra.embedded import EmbeddedRedis  # noqa: F401 - marks the module `redis`
from cascadeq.infra.fanin import FanIn
from cascadeq.producer import AsyncProducer, ConnectionFailed, Producer, Request
from cascadeq.protocol import deadletter, wire
from cascadeq.protocol import keys as keynames
from cascadeq.protocol.keys import Keys
from cascadeq.protocol.messages import HEADER_FIELD, INPUTS_FIELD, Result, now_ms
from cascadeq.router import Router
from cascadeq.workers import ModelWorker

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3) as c:
        yield c


@pytest.fixture
def rc(cluster: LocalCluster) -> Iterator[redis.Redis]:
    client = connect(cluster.url)
    yield client
    client.close()


@pytest.fixture(params=[1, 3], ids=["one-shard", "three-shards"])
def csettings(request: pytest.FixtureRequest, cluster: LocalCluster) -> Settings:
    return Settings(
        redis_url=cluster.url,
        prefix=f"t{uuid.uuid4().hex[:8]}",
        block_ms=50,
        ingress_shards=request.param,
    )


@pytest.fixture(scope="module")
def digits(digits_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    split = np.load(digits_dir / "digits_test.npz")
    return split["X"], split["y"]


def with_threshold(catalog: Catalog, threshold: float) -> Catalog:
    task = catalog.tasks["digits"]
    stages = (replace(task.cascade[0], threshold=threshold), *task.cascade[1:])
    return replace(catalog, tasks={"digits": replace(task, cascade=stages)})


def stop(*roles: Router | ModelWorker) -> None:
    """What a role's run() does on its way out: stop the reader threads before the client."""
    for role in roles:
        if isinstance(role, ModelWorker):
            role.batcher.close()
        reader = role.reader if isinstance(role, ModelWorker) else role.read
        if isinstance(reader, FanIn):
            reader.close()


def run_until(done: Callable[[], bool], *roles: Router | ModelWorker, timeout: float = 60) -> None:
    """Step every role (blocking briefly on its reads) until ``done`` holds."""
    for role in roles:
        role.setup()
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the roles did not finish in time"
        for role in roles:
            role.step(block_ms=20)


def test_submit_route_batch_escalate_and_read_from_another_client(
    rc: redis.Redis,
    csettings: Settings,
    catalog: Catalog,
    digits: tuple[np.ndarray, np.ndarray],
) -> None:
    x, _ = digits
    cat = with_threshold(catalog, 1.0)  # the small model is never sure: all escalate
    router = Router(rc, cat, csettings, "r1")
    small = ModelWorker(rc, cat, cat.models["digits-small"], csettings, "w1")
    large = ModelWorker(rc, cat, cat.models["digits-large"], csettings, "w2")
    router.setup()
    with Producer(csettings.redis_url, settings=csettings, catalog=cat) as producer:
        ids = producer.submit_many(
            [Request({"input": x[i : i + 1]}, task="digits") for i in range(40)]
        )
        run_until(lambda: all(producer.result(i) for i in ids), router, small, large)
        stop(router, small, large)
        got = producer.wait_many(ids, timeout=30)
    assert [g.status for g in got] == ["ok"] * 40
    assert {tuple(h["model"] for h in g.path) for g in got} == {("digits-small", "digits-large")}
    assert max(g.batch_size or 0 for g in got) > 1  # batched, not one by one
    with Producer(csettings.redis_url, settings=csettings, catalog=cat) as other:
        again = other.result(ids[7])
    assert again is not None
    assert again.outputs["probabilities"].shape == (1, 10)


def test_bad_entries_are_dead_lettered_in_their_shard_with_an_error_result(
    rc: redis.Redis, csettings: Settings, catalog: Catalog
) -> None:
    router = Router(rc, catalog, csettings, "r1")
    router.setup()
    keys = router.keys
    bad = [f"bad{i}" for i in range(6)]
    x = wire.dumps_inputs({"input": np.zeros((1, 64), np.float32)})
    for rid in bad:  # a forged header (a negative stage): refused and dead-lettered
        header = wire.dumps({"id": rid, "task": "digits", "submitted_at": now_ms(), "stage": -1})
        rc.xadd(keys.ingress_of(keys.shard_of(rid)), {HEADER_FIELD: header, INPUTS_FIELD: x})
    run_until(lambda: all(rc.get(keys.result(rid)) for rid in bad), router)
    stop(router)
    for rid in bad:
        got = Result.loads(rc.get(keys.result(rid)))  # type: ignore[arg-type]
        assert (got.status, got.error and got.error["code"]) == ("error", "bad_payload")
    where = {  # each kept in its own shard's dead-letter stream: a replay is one slot's script
        deadletter.parse(e, f).stream: s
        for s, dlq in enumerate(keys.dead_letters)
        for e, f in rc.xrange(dlq)
    }
    assert {keys.ingress_of(keys.shard_of(rid)) for rid in bad} == set(where)
    assert all(stream == keys.ingress_of(s) for stream, s in where.items())
    assert sum(len(rc.xrange(dlq)) for dlq in keys.dead_letters) == len(bad)
    assert sum(rc.xpending(i, keynames.ROUTER_GROUP)["pending"] for i in keys.ingresses) == 0


def test_entries_a_killed_worker_held_are_reclaimed_and_answered(
    rc: redis.Redis, csettings: Settings, catalog: Catalog, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = digits
    fast = replace(csettings, visibility_timeout_ms=200)
    router = Router(rc, catalog, fast, "r1")
    with Producer(fast.redis_url, settings=fast, catalog=catalog) as producer:
        ids = producer.submit_many(
            [Request({"input": x[i : i + 1]}, model="digits-small") for i in range(12)]
        )
        run_until(lambda: all(_queued(rc, router.keys, i) for i in ids), router)
        stop(router)
        keys = router.keys
        lanes = [keys.model_stream("digits-small", shard=s) for s in range(keys.shards)]
        for lane in lanes:  # a worker that read everything, then was killed before its commit
            streams.ensure_group(rc, lane, keynames.WORKER_GROUP)
            rc.xreadgroup(keynames.WORKER_GROUP, "killed", {lane: ">"})
        assert sum(rc.xpending(lane, keynames.WORKER_GROUP)["pending"] for lane in lanes) > 0
        survivor = ModelWorker(rc, catalog, catalog.models["digits-small"], fast, "survivor")
        run_until(lambda: all(producer.result(i) for i in ids), survivor)
        stop(survivor)
        got = producer.wait_many(ids, timeout=30)
    assert {g.status for g in got} == {"ok"}
    assert sum(rc.xpending(lane, keynames.WORKER_GROUP)["pending"] for lane in lanes) == 0


def _queued(r: redis.Redis, keys: Keys, rid: str) -> bool:
    """The request was forwarded to its model stream (its ingress entry acknowledged)."""
    shard = keys.shard_of(rid)
    return not r.xpending(keys.ingress_of(shard), keynames.ROUTER_GROUP)["pending"] and bool(
        r.xlen(keys.model_stream("digits-small", shard=shard))
    )


def test_the_async_client_submits_and_waits_on_the_cluster(
    rc: redis.Redis, csettings: Settings, catalog: Catalog, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = digits
    router = Router(rc, catalog, csettings, "r1")
    worker = ModelWorker(rc, catalog, catalog.models["digits-small"], csettings, "w1")

    async def submit() -> list[str]:
        async with AsyncProducer(csettings.redis_url, settings=csettings, catalog=catalog) as ap:
            reqs = [Request({"input": x[i : i + 1]}, model="digits-small") for i in range(9)]
            return await ap.submit_many(reqs)

    ids = asyncio.run(submit())
    with Producer(csettings.redis_url, settings=csettings, catalog=catalog) as producer:
        run_until(lambda: all(producer.result(i) for i in ids), router, worker)
    stop(router, worker)

    async def wait() -> list[Result]:
        async with AsyncProducer(csettings.redis_url, settings=csettings, catalog=catalog) as ap:
            return await ap.wait_many(ids, timeout=30)

    assert [g.status for g in asyncio.run(wait())] == ["ok"] * 9


def test_a_submit_that_no_replica_confirms_raises_instead_of_returning(
    csettings: Settings, catalog: Catalog, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = digits
    wanting = replace(csettings, submit_replicas=1, submit_wait_ms=50)  # these masters have none
    with (
        Producer(wanting.redis_url, settings=wanting, catalog=catalog) as producer,
        pytest.raises(ConnectionFailed, match="0 of 1 replica"),
    ):
        producer.submit_many([Request({"input": x[:1]}, model="digits-small")])
