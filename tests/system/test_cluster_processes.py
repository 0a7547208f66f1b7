"""Router and worker processes on a 3-master Redis Cluster with 3 ingress shards: a worker
killed (SIGKILL) while it holds batches loses nothing; another one reclaims them."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from test_pipeline import held_by, rows_of_32

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra.cluster import LocalCluster
from cascadeq.infra.connection import connect
from cascadeq.infra.embedded import EmbeddedRedis  # noqa: F401 - marks the module `redis`
from cascadeq.infra.process import ProcessGroup
from cascadeq.producer import Producer, Request
from cascadeq.protocol import keys as keynames

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3) as c:
        yield c


def test_a_killed_worker_process_loses_nothing_on_the_cluster(
    cluster: LocalCluster, catalog: Catalog, digits_dir: Path
) -> None:
    settings = Settings(redis_url=cluster.url, prefix=f"t{uuid.uuid4().hex[:8]}", ingress_shards=3)
    env = {
        **os.environ,
        "REDIS_URL": cluster.url,
        "CASCADEQ_CATALOG": str(digits_dir / "catalog.toml"),
        "CASCADEQ_PREFIX": settings.prefix,
        "CASCADEQ_INGRESS_SHARDS": "3",
        "CASCADEQ_LOG_LEVEL": "warning",
        "CASCADEQ_BLOCK_MS": "200",
        "CASCADEQ_VISIBILITY_TIMEOUT_MS": "1500",
    }
    r: redis.Redis = connect(cluster.url)
    keys = settings.keys()
    lanes = [keys.model_stream("digits-large", shard=s) for s in range(3)]
    x = rows_of_32(digits_dir)
    group = ProcessGroup(env)
    try:
        with Producer(settings=settings, catalog=catalog) as client:
            ids = client.submit_many([Request({"input": x}, model="digits-large")] * 600)
            group.spawn("router")
            victim = group.spawn("worker", "--models", "digits-large")
            client.wait(ids[0], timeout=120)  # the victim is serving
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            assert sum(held_by(r, lane, victim.pid) for lane in lanes) > 0, "it held nothing"
            group.spawn("worker", "--models", "digits-large")  # the survivor
            got = client.wait_many(ids, timeout=240)
    finally:
        group.stop()
    assert [g.id for g in got] == ids
    assert all(g.ok for g in got)
    assert sum(r.xpending(lane, keynames.WORKER_GROUP)["pending"] for lane in lanes) == 0
    assert sum(int(r.get(keys.backlog(lane)) or 0) for lane in lanes) == 0
    r.close()
