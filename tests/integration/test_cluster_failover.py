"""A master of a 3-master + 3-replica cluster is killed under load and its replica promoted.

The old master is restarted and rejoins as the new master's replica (the promoted node
has none until then, and a WAIT 1 submit to that shard fails meanwhile).
With ``appendfsync always`` and ``submit_replicas=1`` (each submit call is followed by a
WAIT on the connection that ran it), every request whose submit returned is answered: the
write reached the replica before the caller heard back, so the promoted replica has it.
Submits that fail during the failover raise ConnectionFailed and are not counted.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra.cluster import LocalCluster, _cmd
from cascadeq.infra.connection import connect
from cascadeq.infra.embedded import EmbeddedRedis  # noqa: F401 - marks the module `redis`
from cascadeq.producer import ConnectionFailed, Producer, Request
from cascadeq.router import Router
from cascadeq.workers import ModelWorker

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3, replicas_per_master=1, appendfsync="always") as c:
        yield c


def submitting(producer: Producer, x: np.ndarray, stop: threading.Event, acked: list[str]) -> None:
    """Submit small chunks until stopped; keep the ids of the calls that returned."""
    i = 0
    while not stop.is_set():
        reqs = [
            Request({"input": x[(i + k) % len(x)][None]}, model="digits-small") for k in range(8)
        ]
        i += 8
        try:
            acked += producer.submit_many(reqs)
        except ConnectionFailed:
            stop.wait(0.05)  # the failover is under way: not acknowledged, not counted


def test_no_acknowledged_submit_is_lost_when_a_master_fails_over(
    cluster: LocalCluster, catalog: Catalog, digits_dir: Path
) -> None:
    x = np.load(digits_dir / "digits_test.npz")["X"]
    settings = Settings(
        redis_url=cluster.url,
        prefix=f"t{uuid.uuid4().hex[:8]}",
        block_ms=100,
        ingress_shards=3,
        submit_replicas=1,
        visibility_timeout_ms=2000,
    )
    r = connect(settings.redis_url or "")
    stop_roles, stop_load = threading.Event(), threading.Event()
    roles = [
        Router(r, catalog, settings, "r1"),
        ModelWorker(r, catalog, catalog.models["digits-small"], settings, "w1"),
    ]
    threads = [threading.Thread(target=role.run, args=(stop_roles,)) for role in roles]
    acked: list[str] = []
    with Producer(settings.redis_url, settings=settings, catalog=catalog) as producer:
        load = threading.Thread(target=submitting, args=(producer, x, stop_load, acked))
        for t in [*threads, load]:
            t.start()
        try:
            _wait(lambda: len(acked) >= 200, 60, "load before the kill")
            victim = cluster.master_of(roles[0].keys.ingress_of(0))
            heir = cluster.replica_of(victim)
            before = len(acked)
            cluster.kill(victim)
            _cmd(cluster.client(heir), "CLUSTER", "FAILOVER", "TAKEOVER")
            # the promoted replica has no replica of its own, so WAIT 1 refuses every submit
            # to its shard until the old master is back, replaying its AOF, as its replica
            cluster.nodes[victim].restart()
            _wait(lambda: len(acked) >= before + 200, 60, "load after the failover")
            stop_load.set()
            load.join()
            got = producer.wait_many(acked, timeout=120)
        finally:
            stop_load.set()
            stop_roles.set()
            for t in [*threads, load]:
                t.join()
    keys = roles[0].keys
    assert cluster.master_of(keys.ingress_of(0)) == heir
    assert any(keys.shard_of(rid) == 0 for rid in acked[before:])  # the failed shard serves again
    assert len(got) == len(acked)
    assert {g.status for g in got} == {"ok"}


def _wait(done: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
