"""``ingress_shards`` on one Redis: submits spread over the shards, the roles read them all,
and the bounds hold per shard (each a share of the total) and so in total."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra import queues
from cascadeq.producer import Producer, Rejected, Request
from cascadeq.router import Router
from cascadeq.workers import ModelWorker


@pytest.fixture
def sharded(settings: Settings) -> Settings:
    return replace(settings, ingress_shards=3)


def x_rows(digits_dir: Path) -> np.ndarray:
    return np.asarray(np.load(digits_dir / "digits_test.npz")["X"])


def test_submits_spread_over_the_shards_and_every_one_is_answered(
    r: redis.Redis, sharded: Settings, catalog: Catalog, digits_dir: Path
) -> None:
    x = x_rows(digits_dir)
    router = Router(r, catalog, sharded, "r1")
    worker = ModelWorker(r, catalog, catalog.models["digits-small"], sharded, "w1")
    keys = router.keys
    with Producer(sharded.redis_url, settings=sharded, catalog=catalog) as producer:
        ids = producer.submit_many(
            [Request({"input": x[i : i + 1]}, model="digits-small") for i in range(60)]
        )
        per_shard = [int(r.get(keys.backlog(i)) or 0) for i in keys.ingresses]
        assert sum(per_shard) == 60
        assert all(n > 0 for n in per_shard)  # every shard took its ids' share
        router.setup()
        while router.step(block_ms=None):
            pass
        # what stats, /metrics and the load rule see: the model's streams over every shard
        assert (
            queues.read_lanes(r, keys, ["digits-small"])[("digits-small", "default")].requests == 60
        )
        worker.board.refresh(force=True)
        assert worker.board.state("digits-small").backlog == 60
        worker.setup()
        streams = [keys.model_stream("digits-small", shard=s) for s in range(keys.shards)]
        deadline = time.monotonic() + 60
        while sum(int(r.get(keys.backlog(s)) or 0) for s in streams):
            assert time.monotonic() < deadline, "the worker did not drain its streams"
            worker.step(block_ms=20)
        worker.batcher.close()
        got = producer.wait_many(ids, timeout=30)
    assert {g.status for g in got} == {"ok"}
    assert [int(r.get(keys.backlog(i)) or 0) for i in keys.ingresses] == [0, 0, 0]


def test_a_full_shard_refuses_while_the_total_stays_within_the_bound(
    r: redis.Redis, sharded: Settings, catalog: Catalog, digits_dir: Path
) -> None:
    x = x_rows(digits_dir)
    bounded = replace(sharded, ingress_max_depth=30)  # 10 a shard
    keys = bounded.keys()
    with Producer(bounded.redis_url, settings=bounded, catalog=catalog) as producer:
        queued: list[str] = []
        refusal: Rejected | None = None
        while refusal is None:  # one request a call until a shard is full
            try:
                queued += producer.submit_many([Request({"input": x[:1]}, model="digits-small")])
            except Rejected as exc:
                refusal = exc
        assert refusal.code == "queue_full"
    depths = [int(r.get(keys.backlog(i)) or 0) for i in keys.ingresses]
    assert max(depths) == 10  # the shard that filled first refused at its share
    assert sum(depths) == len(queued) <= 30
