"""The whole flow on a real 3-master Redis Cluster the module starts on loopback.

The cluster is formed through CLUSTER MEET / ADDSLOTS sent by redis-py
(cascadeq/infra/cluster.py), so these run on the embedded 6.2 binary as on Redis 7. Roles run
in-process on ``redis+cluster://`` clients; the key layout keeps each shard's keys in
one slot, and ``ingress_shards=3`` spreads the shards over the three masters.
"""

from __future__ import annotations

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
from cascadeq.infra.cluster import LocalCluster
from cascadeq.infra.connection import connect
from cascadeq.infra.embedded import EmbeddedRedis  # noqa: F401 - marks the module `redis`
from cascadeq.infra.fanin import FanIn
from cascadeq.producer import Producer, Request
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
