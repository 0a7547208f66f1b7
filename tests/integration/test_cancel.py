"""Cancellation on a real Redis with the real router and workers, stepped in-process: a
request cancelled before routing, in a model queue or between cascade stages is answered
``cancelled`` and never computed (the workers' computed counters prove it); one taken by
a worker is reported running and one answered is reported done."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import redis
from conftest import wait_for
from test_workers import drain, result, with_threshold

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.ops import stats
from cascadeq.producer import AsyncProducer, Producer, core
from cascadeq.protocol.keys import Keys
from cascadeq.protocol.messages import CANCELLED
from cascadeq.router import Router
from cascadeq.workers import ModelWorker


@pytest.fixture(scope="module")
def x(digits_dir: Path) -> np.ndarray:
    return np.load(digits_dir / "digits_test.npz")["X"][:8]


def submit(client: Producer, x: np.ndarray, n: int) -> list[str]:
    return [client.submit(task="digits", inputs={"input": x[i : i + 1]}) for i in range(n)]


def route(router: Router) -> None:
    while router.step(block_ms=None):
        pass


def test_cancelled_before_routing_or_in_a_model_queue_is_never_computed(
    r: redis.Redis, settings: Settings, catalog: Catalog, x: np.ndarray
) -> None:
    cat = with_threshold(catalog, 0.0)  # every answer final at the first model
    router = Router(r, cat, settings)
    router.setup()
    small = ModelWorker(r, cat, cat.models["digits-small"], settings, "w1")
    keys = Keys(settings.prefix)
    with Producer(settings=settings, catalog=cat) as client:
        [first] = submit(client, x, 1)  # cancelled before the router has seen any cancel:
        assert client.cancel(first).cancelled  # routed, then skipped by the worker
        route(router)  # its commit tells the router cancels exist: it looks from now on
        before = submit(client, x, 3)
        assert [client.cancel(rid).outcome for rid in before[:2]] == ["cancelled"] * 2
        route(router)
        queued = submit(client, x, 3)
        route(router)  # now in digits-small's stream
        assert client.cancel(queued[0]).cancelled
        drain(small)
        assert small.stats["samples"] == 3  # before[2], queued[1], queued[2]
        got = client.wait_many([first, *before, *queued], timeout=5)
    statuses = [g.status for g in got]
    assert statuses == [CANCELLED, CANCELLED, CANCELLED, "ok", CANCELLED, "ok", "ok"]
    assert got[0].error == {
        "code": "cancelled",
        "message": "cancelled before any model computed it",
    }
    assert small.stats["cancelled"] == 2  # the router dropped the two cancelled before routing
    assert int(r.get(keys.cancels) or 0) == 4
    counted = r.hgetall(keys.routing_counts)
    assert counted[b"cancelled:router"] == b"2"
    assert counted[b"cancelled:worker"] == b"2"
    assert counted[b"route:cascade"] == b"5"  # 7 submitted, 2 dropped before routing
    shown = stats.collect(r, keys)["cancelled"]
    assert shown == {
        "total": 4,
        "dropped_by_router": 2,
        "skipped_by_workers": 2,
        "fallbacks": {},
    }
    assert "cancelled (never computed): 4 (router dropped 2, workers skipped 2)" in stats.render(
        stats.collect(r, keys)
    )


def test_cancelled_between_cascade_stages_never_reaches_the_next_model(
    r: redis.Redis, settings: Settings, catalog: Catalog, x: np.ndarray
) -> None:
    cat = with_threshold(catalog, 1.0)  # every answer escalates to digits-large
    router = Router(r, cat, settings)
    router.setup()
    small = ModelWorker(r, cat, cat.models["digits-small"], settings, "w1")
    large = ModelWorker(r, cat, cat.models["digits-large"], settings, "w2")
    with Producer(settings=settings, catalog=cat) as client:
        ids = submit(client, x, 2)
        route(router)
        drain(small)  # both computed once, then escalated: waiting in digits-large's queue
        assert small.stats["samples"] == 2
        assert client.cancel(ids[0]).outcome == "cancelled"
        drain(large)
        got = client.wait_many(ids, timeout=5)
        assert client.cancel(ids[1]).outcome == "done"  # computed: never reported cancelled
        again = client.cancel(ids[0])
    assert [g.status for g in got] == [CANCELLED, "ok"]
    assert large.stats["samples"] == 1
    assert large.stats["cancelled"] == 1
    assert got[1].model == "digits-large"
    assert again.outcome == "done"
    assert again.result is not None
    assert again.result.status == CANCELLED  # a second cancel finds the first one's answer


def test_a_request_a_worker_has_claimed_is_reported_running_and_its_answer_stands(
    r: redis.Redis, settings: Settings, catalog: Catalog, x: np.ndarray
) -> None:
    cat = with_threshold(catalog, 0.0)
    router = Router(r, cat, settings)
    router.setup()
    small = ModelWorker(r, cat, cat.models["digits-small"], settings, "w1")
    small.setup()
    with Producer(settings=settings, catalog=cat) as client:
        [rid] = submit(client, x, 1)
        route(router)
        batch = small.batcher.collect(None)  # read: pending in the worker group, no cancel yet
        assert not small.reader.cancels_exist  # so the worker will not look for any
        assert client.cancel(rid).outcome == "running"  # the first cancel ever finds it held
        small.process(batch)
        assert client.wait(rid, timeout=5).ok
        assert client.result(rid) is not None
        assert client.cancel("never-submitted").outcome == "unknown"
    assert small.stats["samples"] == 1
    assert small.stats["cancelled"] == 0
    assert result(r, small.keys, rid).status == "ok"


def test_the_asyncio_client_cancels_alike(
    settings: Settings, catalog: Catalog, x: np.ndarray
) -> None:
    async def run() -> tuple[str, str, str]:
        async with AsyncProducer(settings=settings, catalog=catalog) as client:
            rid = await client.submit(task="digits", inputs={"input": x[:1]})
            first = await client.cancel(rid)
            second = await client.cancel(rid)
            got = await client.wait_many([rid], timeout=5)
            return first.outcome, second.outcome, got[0].status

    assert asyncio.run(run()) == ("cancelled", "done", CANCELLED)


def test_a_request_held_from_a_tenant_sub_stream_is_running_and_one_queued_there_cancels(
    r: redis.Redis, settings: Settings, catalog: Catalog, x: np.ndarray
) -> None:
    """cancel looks through every stream a worker may hold a request from: tenants'
    sub-streams too (config/tenants.py)."""
    cat = with_threshold(
        Catalog.loads(catalog.text + "\n[tenants.acme]\nweight = 1\n", source=catalog.source),
        0.0,
    )
    router = Router(r, cat, settings)
    router.setup()
    small = ModelWorker(r, cat, cat.models["digits-small"], settings, "w1")
    small.setup()
    with Producer(settings=settings, catalog=cat, tenant="acme") as client:
        [held] = submit(client, x, 1)
        route(router)
        batch = small.batcher.collect(None)  # taken from digits-small's acme sub-stream
        [queued] = submit(client, x, 1)
        route(router)
        assert client.cancel(held).outcome == "running"
        assert client.cancel(queued).cancelled
        small.process(batch)
        drain(small)
        got = client.wait_many([held, queued], timeout=5)
    assert [g.status for g in got] == ["ok", CANCELLED]
    assert small.stats["samples"] == 1


def test_the_look_for_cancelled_requests_spans_ingress_shards(
    r: redis.Redis, settings: Settings
) -> None:
    """One call per shard (its result keys share its slot), positions across all parts."""
    from dataclasses import replace

    from cascadeq.infra import claims

    keys = replace(settings, ingress_shards=3).keys()
    ids = [f"req{i}" for i in range(12)]
    by_shard: dict[int, list[str]] = {}
    for rid in ids:
        by_shard.setdefault(keys.shard_of(rid), []).append(rid)
    parts = [(keys.model_stream("m", shard=s), b"1-0", got) for s, got in sorted(by_shard.items())]
    flat = [rid for _, _, got in parts for rid in got]
    done = {flat[1], flat[-1], flat[len(flat) // 2]}
    for rid in flat:
        r.set(keys.result(rid), b"\x81" if rid in done else b"\xc1")  # answered / placeholder
    assert len(by_shard) > 1
    assert claims.answered(r, keys, parts) == sorted(flat.index(rid) for rid in done)


def test_a_cancel_from_another_client_wakes_the_submitters_waiter_at_once(
    settings: Settings, catalog: Catalog, x: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The placeholder names the submitter's reply channel, so the cancel publishes the
    cancelled result there: with the listener's backstop re-read a minute away, the
    waiter could only have been woken by that."""
    monkeypatch.setattr(core, "SWEEP_S", 60.0)
    with (
        Producer(settings=settings, catalog=catalog) as submitter,
        Producer(settings=settings, catalog=catalog) as other,
    ):
        [rid] = submit(submitter, x, 1)  # no router runs: it stays queued
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(submitter.wait_many, [rid], 30)
            wait_for(lambda: rid in submitter._inbox.outstanding(), 10, "the waiter registered")
            assert other.cancel(rid).cancelled
            [got] = waiting.result(timeout=30)
    assert got.status == CANCELLED
