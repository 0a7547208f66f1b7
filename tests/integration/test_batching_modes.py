"""Each batching mode serving real requests: a real worker, real Redis, the digits model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis

from cascadeq.config.catalog import Batching, Catalog
from cascadeq.config.settings import Settings
from cascadeq.protocol import keys as keynames
from cascadeq.protocol import wire
from cascadeq.protocol.keys import Keys
from cascadeq.protocol.messages import HEADER_FIELD, INPUTS_FIELD, Header, Result, now_ms
from cascadeq.workers import ModelWorker
from cascadeq.workers.continuous import PrefetchBatcher

MODEL = "digits-small"
MODES = {
    "static": Batching("static", 16, safety_wait_ms=30.0),
    "dynamic": Batching("dynamic", 16, 5.0),
    "adaptive": Batching("adaptive", 16, 5.0, latency_budget_ms=40.0),
    "continuous": Batching("continuous", 16),
}


def enqueue(r: redis.Redis, keys: Keys, rid: str, x: np.ndarray, model: str = MODEL) -> None:
    header = Header(id=rid, model=model, submitted_at=now_ms()).dumps()
    inputs = wire.dumps_inputs({"input": x})
    r.xadd(keys.model_stream(model), {HEADER_FIELD: header, INPUTS_FIELD: inputs})


def serve_until_answered(worker: ModelWorker, ids: list[str], max_steps: int = 500) -> None:
    """Step the worker (blocking reads, no sleeps) until every id has a result."""
    keys = [worker.keys.result(i) for i in ids]
    worker.setup()
    for _ in range(max_steps):
        if worker.r.exists(*keys) == len(keys):
            return
        worker.step(block_ms=200)
    raise AssertionError(f"only {worker.r.exists(*keys)} of {len(keys)} answered")


@pytest.mark.parametrize("mode", list(MODES))
def test_each_mode_serves_requests_end_to_end(
    r: redis.Redis, settings: Settings, catalog: Catalog, digits_dir: Path, mode: str
) -> None:
    test = np.load(digits_dir / "digits_test.npz")
    x, y = test["X"], test["y"]
    spec = replace(catalog.models[MODEL], batching=MODES[mode])
    worker = ModelWorker(r, catalog, spec, settings, "w1")
    ids = [f"{mode}{i}" for i in range(120)]
    for i, rid in enumerate(ids):
        rows = 1 + i % 3  # samples, not requests, count toward max_batch
        enqueue(r, worker.keys, rid, x[i : i + rows])
    try:
        serve_until_answered(worker, ids)
    finally:
        worker.batcher.close()
    got = [Result.loads(r.get(worker.keys.result(i)) or b"") for i in ids]
    assert all(g.ok for g in got)
    assert all(1 <= g.batch_size <= 16 for g in got)
    assert max(g.batch_size for g in got) > 1
    first_rows = np.array([int(g.outputs["probabilities"][0].argmax()) for g in got])
    assert (first_rows == y[:120]).mean() > 0.85
    assert r.xpending(worker.keys.model_stream(MODEL), keynames.WORKER_GROUP)["pending"] == 0


def test_continuous_reads_the_next_batch_while_this_one_computes(
    r: redis.Redis, settings: Settings, catalog: Catalog, digits_dir: Path
) -> None:
    x = np.load(digits_dir / "digits_test.npz")["X"]
    spec = replace(catalog.models["digits-large"], batching=Batching("continuous", 8))
    worker = ModelWorker(r, catalog, spec, settings, "w1")
    batcher = worker.batcher
    assert isinstance(batcher, PrefetchBatcher)
    ids = [f"c{i}" for i in range(200)]
    for i, rid in enumerate(ids):
        enqueue(r, worker.keys, rid, x[i : i + 1], "digits-large")
    try:
        serve_until_answered(worker, ids)
    finally:
        batcher.close()
    assert batcher.fetched == 200
    assert batcher.overlap > 0.5  # most reads hid behind compute (25 batches, ~1 ms each)


def test_continuous_hands_back_what_it_read_when_closed(
    r: redis.Redis, settings: Settings, catalog: Catalog, digits_dir: Path
) -> None:
    x = np.load(digits_dir / "digits_test.npz")["X"]
    spec = replace(catalog.models[MODEL], batching=Batching("continuous", 4))
    worker = ModelWorker(r, catalog, spec, settings, "w1")
    worker.setup()
    for i in range(10):
        enqueue(r, worker.keys, f"k{i}", x[i : i + 1])
    first = worker.batcher.collect(block_ms=2000)
    assert 1 <= len(first) <= 4
    worker.process(first)
    worker.batcher.close()
    while worker.batcher.carry:
        worker.process(worker.batcher.drain())
    worker.batcher.carry = []
    while worker.step(block_ms=None):  # the closed batcher now reads in the caller
        pass
    assert r.exists(*[worker.keys.result(f"k{i}") for i in range(10)]) == 10


def test_the_window_is_timed_locally_not_by_redis_block_timeouts(
    r: redis.Redis, settings: Settings, catalog: Catalog, digits_dir: Path
) -> None:
    """Redis checks BLOCK timeouts every 1000/hz ms (100 ms at the default hz 10), so a
    window timed by XREADGROUP BLOCK lasted ~100 ms; the local window lasts max_wait_ms."""
    assert int(r.config_get("hz")["hz"]) <= 10  # the default: coarse Redis timeouts
    x = np.load(digits_dir / "digits_test.npz")["X"]
    spec = replace(catalog.models[MODEL], batching=Batching("dynamic", 16, 20.0))
    worker = ModelWorker(r, catalog, spec, settings, "w1")
    waits = []
    try:
        for i in range(5):  # one at a time: each window expires rather than fills
            enqueue(r, worker.keys, f"lone{i}", x[i : i + 1])
            serve_until_answered(worker, [f"lone{i}"])
            res = Result.loads(r.get(worker.keys.result(f"lone{i}")) or b"")
            waits.append(res.timings["batch_wait_ms"])
    finally:
        worker.batcher.close()
    assert min(waits) >= 15.0  # it did wait for company...
    assert float(np.median(waits)) < 60.0  # ...for about max_wait_ms, not a Redis tick
