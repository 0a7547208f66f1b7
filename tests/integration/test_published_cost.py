"""Roles publish their own CPU per request into Redis as they serve, and `cascadeq stats`
reads cost per answered request from it: total (every role, Redis) next to compute."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra.cpu import CPU_FIELD
from cascadeq.ops import published, stats
from cascadeq.ops.train_router import hop_costs
from cascadeq.producer import Producer, Request
from cascadeq.protocol.keys import Keys
from cascadeq.router import Router
from cascadeq.workers import ModelWorker


@pytest.fixture(scope="module")
def x(digits_dir: Path) -> np.ndarray:
    return np.load(digits_dir / "digits_test.npz")["X"].astype(np.float32)


def serve_all(router: Router, workers: list[ModelWorker]) -> None:
    """Route and serve until nothing is left (steps without blocking: no timing)."""
    for w in workers:
        w.setup()
    while True:
        moved = router.step(None) + sum(w.step(None) for w in workers)
        if not moved:
            return


def test_router_and_workers_publish_cpu_and_stats_totals_include_every_role(
    r: redis.Redis, settings: Settings, catalog: Catalog, x: np.ndarray
) -> None:
    task = catalog.tasks["digits"]
    stages = (replace(task.cascade[0], threshold=0.9), *task.cascade[1:])  # some escalate
    cat = replace(catalog, tasks={"digits": replace(task, cascade=stages, load=None)})
    keys = Keys(settings.prefix)
    router = Router(r, cat, settings)
    router.setup()
    router.cpu_clock.due = lambda: True  # type: ignore[method-assign]  # publish every batch
    workers = [ModelWorker(r, cat, cat.models[m], settings, "w1") for m in sorted(cat.models)]
    sampler = published.RedisSampler(r, keys, sorted(cat.models))
    sampler.sample()
    with Producer(settings.redis_url, settings=settings, catalog=cat) as client:
        ids: list[str] = []
        for _ in range(3):  # waves: each role serves batches past its warm-up one
            reqs = [Request({"input": x[i : i + 1]}, task="digits") for i in range(100)]
            ids += client.submit_many(reqs)
            serve_all(router, workers)
        done = client.wait_many(ids, timeout=60)
    assert all(res.ok for res in done)
    redis_cpu = sampler.sample()
    per_answered, hops = redis_cpu
    assert per_answered is not None
    assert per_answered >= 0.0
    assert hops is not None
    assert hops >= 1.0  # a hop per request, at least
    assert CPU_FIELD.encode() in r.hgetall(keys.role_cpu("router"))
    for model in cat.models:
        assert CPU_FIELD.encode() in r.hgetall(keys.observed(model)), model
    doc = stats.collect(r, keys, redis_cpu=redis_cpu)
    figures = doc["cost"]
    assert set(figures["roles_us"]) == {"router", *(f"worker:{m}" for m in cat.models)}
    assert figures["redis_us"] is not None
    assert figures["total_cpu_us"] >= figures["compute_us"] > 0.0
    parts = sum(figures["roles_us"].values()) + figures["redis_us"]
    assert figures["total_cpu_us"] == pytest.approx(parts, rel=0.01, abs=0.05)
    for model in cat.models:
        assert doc["models"][model]["cpu_us_per_request"] > 0.0
    assert "cost per answered request: total" in stats.render(doc)
    assert "compute only" in stats.render(doc)
    hops, source = published.hop_figures(r, keys, task.models)
    assert source == "published"
    assert set(hops) == set(task.models)
    costs, beyond = hop_costs(cat, cat.tasks["digits"], hops)
    assert costs[0] >= cat.models[task.models[0]].cost
    assert beyond == (hops[task.models[0]], hops[task.models[-1]])


def test_nothing_published_reads_as_not_published_not_zero(
    r: redis.Redis, settings: Settings, catalog: Catalog
) -> None:
    keys = Keys(settings.prefix)
    doc = stats.collect(r, keys)
    assert doc["cost"]["total_cpu_us"] is None
    assert "no CPU published" in stats.render(doc) or "nothing answered" in stats.render(doc)
    hops, source = published.hop_figures(r, keys, sorted(catalog.models), fallback=40.0)
    assert source == "given"
    assert set(hops.values()) == {40.0}
