"""Tenants on a real Redis: quotas shared by producers, retry-after, fair share under a flood."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra import streams
from cascadeq.ops import stats
from cascadeq.producer import Producer, Rejected, Request
from cascadeq.protocol.keys import WORKER_GROUP, Keys
from cascadeq.router import Router
from cascadeq.workers import ModelWorker
from cascadeq.workers.fairshare import FairLane

X = {"input": np.ones((1, 4), np.float32)}

TENANTS = """
[tenants.acme]
rate = 0.001
burst = 5
[tenants.slow]
max_in_flight = 3
[tenants.flood]
weight = 1
[tenants.light]
weight = 1
"""


def with_tenants(path: Path) -> Catalog:
    return Catalog.loads(path.read_text() + TENANTS, source=str(path))


@pytest.fixture
def tenant_catalog(digits_dir: Path) -> Catalog:
    return with_tenants(digits_dir / "catalog.toml")


def test_a_rate_quota_is_shared_by_two_producers_of_one_tenant(
    r: redis.Redis, settings: Settings, tenant_catalog: Catalog
) -> None:
    x = {"input": np.zeros((1, 64), np.float32)}
    with (
        Producer(settings=settings, catalog=tenant_catalog, tenant="acme") as one,
        Producer(settings=settings, catalog=tenant_catalog, tenant="acme") as two,
    ):
        for _ in range(3):
            one.submit(inputs=x, model="digits-small")
        two.submit_many([Request(x, model="digits-small")] * 2)  # the burst of 5 is spent
        with pytest.raises(Rejected) as err:
            one.submit(inputs=x, model="digits-small")
        assert err.value.code == "quota"
        assert (err.value.tenant, err.value.limit) == ("acme", "rate")
        assert "tenant 'acme' is over its quota: rate 0.001 req/s (burst 5" in str(err.value)
        assert err.value.retry_after_s is not None
        assert err.value.retry_after_s > 0
        assert f"retry after {err.value.retry_after_s:.3f} s" in str(err.value)
        with pytest.raises(Rejected, match="tenant 'acme' is over its quota"):
            two.submit_many([Request(x, model="digits-small")])
        # another tenant (and one named per submit) is not held by acme's bucket
        one.submit(inputs=x, model="digits-small", tenant="light")
    keys = Keys(settings.prefix)
    assert r.get(keys.backlog(keys.ingress)) == b"6"  # the refused ones were never queued


def test_max_in_flight_is_counted_across_producers_and_released_by_results(
    r: redis.Redis, settings: Settings, tenant_catalog: Catalog
) -> None:
    x = {"input": np.zeros((1, 64), np.float32)}
    keys = Keys(settings.prefix)
    router = Router(r, tenant_catalog, settings)
    router.setup()
    worker = ModelWorker(r, tenant_catalog, tenant_catalog.models["digits-small"], settings, "w1")
    worker.setup()
    with (
        Producer(settings=settings, catalog=tenant_catalog, tenant="slow") as one,
        Producer(settings=settings, catalog=tenant_catalog) as two,
    ):
        ids = [one.submit(inputs=x, model="digits-small") for _ in range(2)]
        ids.append(two.submit(inputs=x, model="digits-small", tenant="slow"))
        assert r.get(keys.tenant_in_flight("slow")) == b"3"
        with pytest.raises(Rejected) as err:
            two.submit(inputs=x, model="digits-small", tenant="slow")
        assert (err.value.code, err.value.limit) == ("quota", "in_flight")
        assert "max_in_flight 3 (3 in flight)" in str(err.value)
        assert err.value.retry_after_s is not None
        assert err.value.retry_after_s > 0
        two.submit(inputs=x, model="digits-small")  # the default tenant has no such limit
        assert router.step(block_ms=None) == 4
        while worker.step(block_ms=None):
            pass
        assert all(res.ok for res in one.wait_many(ids, timeout=30))
        assert r.get(keys.tenant_in_flight("slow")) == b"0"  # released as results landed
        one.submit(inputs=x, model="digits-small")  # room again
    tenants = stats.tenant_doc(r, keys)  # what `cascadeq stats` shows per tenant
    assert tenants["slow"]["answered_total"] == 3
    assert tenants["slow"]["rejected"] == {"quota": 1}
    assert tenants["slow"]["in_flight"] == 1  # the last submit, not yet answered
    assert tenants["default"]["answered_total"] == 1
    assert "slow" in "\n".join(stats.render_tenants(tenants))


def test_queue_full_carries_a_retry_after_from_the_observed_drain_rate(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    keys = Keys(settings.prefix)
    small = keys.model_stream("toy-small")
    r.incrby(keys.backlog(small), 3)
    bounded = replace(settings, model_max_depth=3)
    with Producer(settings=bounded, catalog=toy_catalog) as client:
        with pytest.raises(Rejected) as err:  # nothing observed yet: the default guess
            client.submit(task="toy", inputs=X)
        assert err.value.code == "queue_full"
        assert err.value.retry_after_s == 1.0
        r.hset(keys.observed("toy-small"), mapping={"compute_ms": 20.0, "batch": 10.0})
        with pytest.raises(Rejected) as err:  # 500 req/s drain: 3 + 4 - 3 over -> 8 ms
            client.submit_many([Request(X, task="toy")] * 4)
        assert err.value.retry_after_s == pytest.approx(4 / 500)
        assert "retry after 0.008 s" in str(err.value)


def test_fair_share_serves_a_light_tenant_before_a_flood_already_queued(
    r: redis.Redis, settings: Settings, tenant_catalog: Catalog
) -> None:
    x = np.zeros((1, 64), np.float32)
    router = Router(r, tenant_catalog, settings)
    router.setup()
    spec = tenant_catalog.models["digits-small"]
    worker = ModelWorker(r, tenant_catalog, spec, settings, "w1")
    worker.setup()
    with Producer(settings=settings, catalog=tenant_catalog) as client:
        flood = client.submit_many([Request({"input": x}, model="digits-small")] * 400)
        flood_ids = client.submit_many(  # flood's own requests, 400, ahead of light's
            [Request({"input": x}, model="digits-small", tenant="flood")] * 400
        )
        light = client.submit_many(
            [Request({"input": x}, model="digits-small", tenant="light")] * 20
        )
        while router.step(block_ms=None):
            pass
        worker.step(block_ms=None)  # one batch of max_batch
        answered = {
            "light": sum(client.result(i) is not None for i in light),
            "flood": sum(client.result(i) is not None for i in flood_ids),
            "default": sum(client.result(i) is not None for i in flood),
        }
        # all of light's 20 ran in the first batch, ahead of 800 queued before them (the
        # router forwarded the others as whole bundles of max_batch: they fill the next)
        assert answered["light"] == 20
        assert answered["flood"] + answered["default"] < 800
        batches = 0
        while worker.step(block_ms=None):
            batches += 1
        assert batches >= 800 // spec.batching.max_batch  # the others went on after it
        assert all(res.ok for res in client.wait_many(flood + flood_ids + light, timeout=30))


def test_without_tenants_a_flood_queued_first_is_served_first(
    r: redis.Redis, settings: Settings, catalog: Catalog
) -> None:
    """The baseline the fair-share test is measured against: one FIFO stream."""
    x = np.zeros((1, 64), np.float32)
    router = Router(r, catalog, settings)
    router.setup()
    worker = ModelWorker(r, catalog, catalog.models["digits-small"], settings, "w1")
    worker.setup()
    with Producer(settings=settings, catalog=catalog) as client:
        client.submit_many([Request({"input": x}, model="digits-small", tenant="flood")] * 400)
        light = client.submit_many(
            [Request({"input": x}, model="digits-small", tenant="light")] * 20
        )
        while router.step(block_ms=None):
            pass
        worker.step(block_ms=None)
        assert sum(client.result(i) is not None for i in light) == 0


def test_a_fair_lane_splits_a_read_by_weight_and_finds_a_light_tenant_at_once(
    r: redis.Redis, settings: Settings
) -> None:
    keys = Keys(settings.prefix)
    heavy, light, weighted = (keys.model_stream("m", "default", t) for t in ("a", "b", "c"))
    for stream in (heavy, light, weighted):
        streams.ensure_group(r, stream, WORKER_GROUP)
    for i in range(100):
        r.xadd(heavy, {b"h": b"a%d" % i})
        r.xadd(weighted, {b"h": b"c%d" % i})
    for i in range(3):
        r.xadd(light, {b"h": b"b%d" % i})
    lane = FairLane(r, [(heavy, 1.0), (light, 1.0), (weighted, 2.0)], "w1")
    got = lane.read(30)  # 1:1:2 at first (8, 8, 15 asked): nothing is known of what waits
    by = [stream for stream, _ in got]
    assert (by.count(heavy), by.count(light), by.count(weighted)) == (8, 3, 15)
    assert set(by[:5]) == {heavy, light, weighted}  # interleaved by weight, not by stream
    assert by[:4].count(weighted) == 2  # weight 2: two of its requests rank per one of a's
    got = lane.read(30)  # light had 3 of 10 asked: it is asked for 6, the rest split 1:2
    by = [stream for stream, _ in got]
    assert (by.count(heavy), by.count(light), by.count(weighted)) == (8, 0, 16)
    r.xadd(light, {b"h": b"b-late"})
    assert [s for s, _ in lane.read_light()] == [light]  # taken at batch formation
    assert lane.read_light() == []
