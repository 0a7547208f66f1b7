"""Tenants on a real Redis: quotas shared by producers, retry-after, fair share under a flood."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
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
from cascadeq.workers.lanes import LaneReader

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


def test_a_tenant_served_under_its_fraction_stays_light_though_its_reads_came_back_full(
    r: redis.Redis, settings: Settings
) -> None:
    """Light is what a stream was served lately against its fair fraction, not whether
    its last read came back short: a small ask filled says nothing of a share."""
    keys = Keys(settings.prefix)
    heavy, light = (keys.model_stream("m", "default", t) for t in ("a", "b"))
    for stream in (heavy, light):
        streams.ensure_group(r, stream, WORKER_GROUP)
    for i in range(200):
        r.xadd(heavy, {b"h": b"a%d" % i})
    lane = FairLane(r, [(heavy, 1.0), (light, 1.0)], "w1")
    for _ in range(5):  # light has nothing: heavy is served every read
        lane.read(8)
    assert lane.light() == [1]
    for i in range(4):
        r.xadd(light, {b"h": b"b%d" % i})
    got = lane.read(8)  # light is asked for about what it had (nothing): 1 entry
    assert [s for s, _ in got].count(light) == 1
    assert lane.demand[1] == float("inf")  # it filled that ask...
    assert lane.light() == [1]  # ...and is still light: 1 request of ~40 read lately
    late = lane.read_light()  # at batch formation, up to its half of a batch (4)
    assert [s for s, _ in late] == [light] * 3
    assert heavy not in {s for s, _ in lane.read_light()}  # heavy is never read here


def test_idle_share_goes_to_the_busy_tenant_and_formation_reads_nothing_once_all_keep_up(
    r: redis.Redis, settings: Settings
) -> None:
    """Work-conserving: with one tenant idle, the other gets all of every read but the
    idle one's single entry; once no stream has more waiting than it was asked for,
    nothing is light and batch formation reads nothing more."""
    keys = Keys(settings.prefix)
    idle, busy = (keys.model_stream("m", "default", t) for t in ("a", "b"))
    for stream in (idle, busy):
        streams.ensure_group(r, stream, WORKER_GROUP)
    lane = FairLane(r, [(idle, 1.0), (busy, 1.0)], "w1")
    for i in range(20):
        r.xadd(busy, {b"h": b"b%d" % i})
    assert [s for s, _ in lane.read(8)] == [busy] * 4  # nothing known yet: split 1:1
    assert [s for s, _ in lane.read(8)] == [busy] * 7  # idle had nothing: asked for 1
    assert lane.light() == [0]  # idle's first request is looked for at batch formation
    assert [s for s, _ in lane.read(8)] == [busy] * 7
    assert [s for s, _ in lane.read(8)] == [busy] * 2  # less than asked: it keeps up
    assert lane.light() == []
    assert lane.read_light() == []


def test_under_a_flood_a_light_tenant_goes_into_the_next_batch_with_the_flood_filling_it(
    r: redis.Redis, settings: Settings, digits_dir: Path
) -> None:
    """A serving worker (its reader thread reading ahead): the light tenant's requests,
    sent while the flood's read-ahead fills the buffer, all run in the next batch, first,
    and the flood fills the rest of it."""
    text = (digits_dir / "catalog.toml").read_text()
    text = re.sub(r"max_batch = \d+", "max_batch = 8", text, count=1)  # digits-small's
    cat = Catalog.loads(text + TENANTS, source=str(digits_dir / "catalog.toml"))
    spec = cat.models["digits-small"]
    assert spec.batching.max_batch == 8
    router = Router(r, cat, settings)
    router.setup()
    worker = ModelWorker(r, cat, spec, settings, "w1")
    worker.setup()
    batcher = worker.batcher
    x = {"input": np.zeros((1, 64), np.float32)}
    try:
        with Producer(settings=settings, catalog=cat) as client:
            flood = client.submit_many([Request(x, model="digits-small", tenant="flood")] * 200)
            while router.step(block_ms=None):
                pass
            worker.step(block_ms=1000)  # the first batch; the reader thread reads ahead
            with batcher.cond:  # type: ignore[attr-defined]
                assert batcher.cond.wait_for(  # type: ignore[attr-defined]
                    lambda: batcher._held() >= 8,
                    timeout=10,  # type: ignore[attr-defined]
                )
            before = sum(client.result(i) is not None for i in flood)
            light = client.submit_many([Request(x, model="digits-small", tenant="light")] * 3)
            while router.step(block_ms=None):
                pass
            worker.step(block_ms=1000)
            answered = [client.result(i) for i in light]
            assert all(res is not None and res.ok for res in answered)  # all in this batch
            after = sum(client.result(i) is not None for i in flood)
            assert after - before >= 4  # the flood filled the rest: a whole entry of 4
            assert {res.batch_size for res in answered if res is not None} == {3 + after - before}
            while worker.step(block_ms=1000):
                if all(client.result(i) is not None for i in flood):
                    break
            assert all(res.ok for res in client.wait_many(flood, timeout=30))
    finally:
        batcher.close()


def test_only_a_worker_with_tenant_lanes_orders_its_batches(
    r: redis.Redis, settings: Settings, catalog: Catalog, tenant_catalog: Catalog
) -> None:
    """The default path pays nothing: without tenants the Batcher cuts batches as read."""
    plain = ModelWorker(r, catalog, catalog.models["digits-small"], settings, "w1")
    fair = ModelWorker(r, tenant_catalog, tenant_catalog.models["digits-small"], settings, "w2")
    assert plain.batcher.first is None
    assert fair.batcher.first is not None


def test_a_weighted_stream_is_light_below_its_weighted_fraction(
    r: redis.Redis, settings: Settings
) -> None:
    keys = Keys(settings.prefix)
    one, three = (keys.model_stream("m", "default", t) for t in ("a", "b"))
    for stream in (one, three):
        streams.ensure_group(r, stream, WORKER_GROUP)
    lane = FairLane(r, [(one, 1.0), (three, 3.0)], "w1")
    lane.demand = [float("inf"), float("inf")]
    lane.served = [30.0, 70.0]  # 70% of the lane: more than an equal share, less than 3/4
    assert lane.fair() == [0.25, 0.75]
    assert lane.light() == [1]
    lane.served = [20.0, 80.0]
    assert lane.light() == [0]


@dataclass
class Held:
    stream: str
    name: str


def test_light_entries_go_first_within_their_lane_never_past_another_lanes(
    r: redis.Redis, settings: Settings
) -> None:
    keys = Keys(settings.prefix)
    shares = {
        keys.model_stream("m", lane): [(keys.model_stream("m", lane, t), 1.0) for t in ("a", "b")]
        for lane in ("interactive", "batch")
    }
    hi, lo = shares
    reader = LaneReader(r, [hi, lo], "w1", 4, shares)
    assert reader.first is not None
    for fair in reader.fair.values():  # a busy, b served a tenth of the lane: light
        fair.demand = [float("inf"), 1.0]
        fair.served = [90.0, 10.0]
    (hi_a, _), (hi_b, _) = shares[hi]
    (lo_a, _), (lo_b, _) = shares[lo]
    held = [Held(hi_a, "hi-a"), Held(lo_a, "lo-a"), Held(lo_b, "lo-b"), Held(hi_b, "hi-b")]
    assert [h.name for h in reader.first(held)] == ["hi-b", "lo-b", "lo-a", "hi-a"]
