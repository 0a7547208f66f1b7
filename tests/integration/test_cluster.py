"""The whole flow on a real 3-master Redis Cluster the module starts on loopback.

The cluster is formed through CLUSTER MEET / ADDSLOTS sent by redis-py
(cascadeq/infra/cluster.py), so these run on the embedded 6.2 binary as on Redis 7. Roles run
in-process on ``redis+cluster://`` clients; the key layout keeps each shard's keys in
one slot, and ``ingress_shards=3`` spreads the shards over the three masters.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
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
from cascadeq.producer import Producer, Request
from cascadeq.protocol import keys as keynames
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


def drain(*roles: Router | ModelWorker) -> None:
    """Step every role until none has anything left to do."""
    for role in roles:
        role.setup()
    while sum(role.step(block_ms=None) for role in roles):
        pass


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
        drain(router, small, large)
        got = producer.wait_many(ids, timeout=30)
    assert [g.status for g in got] == ["ok"] * 40
    assert {tuple(h["model"] for h in g.path) for g in got} == {("digits-small", "digits-large")}
    assert max(g.batch_size or 0 for g in got) > 1  # batched, not one by one
    with Producer(csettings.redis_url, settings=csettings, catalog=cat) as other:
        again = other.result(ids[7])
    assert again is not None and again.outputs["probabilities"].shape == (1, 10)
