"""A worker serving the I/O-bound stand-in through the normal path: real Redis, real worker."""

from __future__ import annotations

import numpy as np
import redis

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.protocol import keys as keynames
from cascadeq.protocol import wire
from cascadeq.protocol.messages import HEADER_FIELD, INPUTS_FIELD, Header, Result, now_ms
from cascadeq.workers import ModelWorker

CATALOG = """
[models.remote]
kind = "sleep"
service_ms = 25
output = "probabilities"
inputs = [{ name = "input", dtype = "float32", shape = [-1, 4] }]
[models.remote.batching]
max_batch = 8

[tasks.io]
cascade = [{ model = "remote" }]
"""


def test_a_standin_worker_answers_every_request_after_its_service_time(
    r: redis.Redis, settings: Settings
) -> None:
    catalog = Catalog.loads(CATALOG, source="/nonexistent/catalog.toml")
    worker = ModelWorker(r, catalog, catalog.models["remote"], settings, "w1")
    keys = worker.keys
    stream = keys.model_stream("remote")
    for i in range(12):
        header = Header(id=f"s{i}", task="io", submitted_at=now_ms(), trace=[{"model": "remote"}])
        inputs = wire.dumps_inputs({"input": np.ones((1, 4), np.float32)})
        r.xadd(stream, {HEADER_FIELD: header.dumps(), INPUTS_FIELD: inputs})
    worker.setup()
    while worker.step(block_ms=None):
        pass
    got = [Result.loads(r.get(keys.result(f"s{i}")) or b"") for i in range(12)]
    assert all(g.ok and g.model == "remote" for g in got)
    assert all(g.outputs["probabilities"].shape == (1, 2) for g in got)
    # The sleep is the service time: a batch's compute is never shorter than it.
    assert min(g.timings["compute_ms"] for g in got) >= 25.0
    assert max(g.batch_size for g in got) > 1  # batched like any model
    assert r.xpending(stream, keynames.WORKER_GROUP)["pending"] == 0
