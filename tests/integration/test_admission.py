"""Per-model admission control: submit refuses past a model queue's bound, routers hold off."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis
import streamview

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.producer import Producer, Rejected, Request
from cascadeq.protocol.keys import Keys
from cascadeq.router import Router
from cascadeq.workers import ModelWorker

X = {"input": np.ones((1, 4), np.float32)}


def test_submit_is_refused_when_the_model_queue_it_starts_on_is_full(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    bounded = replace(settings, model_max_depth=3)
    keys = Keys(settings.prefix)
    small = keys.model_stream("toy-small")
    r.incrby(keys.backlog(small), 3)  # routed earlier: the router counts what it adds
    with Producer(settings=bounded, catalog=toy_catalog) as client:
        with pytest.raises(Rejected, match=f"queue is full: {small} holds 3 requests, bound 3"):
            client.submit(task="toy", inputs=X, request_id="refused")  # starts on toy-small
        assert r.exists(keys.result("refused")) == 0  # not even "not ready": it is unknown
        with pytest.raises(Rejected) as err:  # one full queue refuses the whole chunk
            client.submit_many([Request(X, model="toy-large"), Request(X, task="toy")])
        assert (err.value.code, err.value.accepted) == ("queue_full", [])
        assert streamview.count(r, keys.ingress) == 0
        large = client.submit_many([Request(X, model="toy-large")] * 3)  # another queue
        assert len(large) == 3
        r.incrby(keys.backlog(keys.model_stream("toy-large")), 1)
        with pytest.raises(Rejected, match="toy-large:default holds 1 requests, bound 3"):
            client.submit_many([Request(X, model="toy-large")] * 3)  # 1 + 3 > 3
    assert streamview.count(r, keys.ingress) == 3
    assert r.get(keys.backlog(keys.ingress)) == b"3"  # counted in requests, not entries
    assert r.xlen(keys.ingress) == 1  # the three went as one bundle


def test_a_router_holds_off_while_a_model_queue_is_full_and_nothing_is_lost(
    r: redis.Redis, settings: Settings, catalog: Catalog, digits_dir: Path
) -> None:
    x = np.load(digits_dir / "digits_test.npz")["X"][:12]
    keys = Keys(settings.prefix)
    stream = keys.model_stream("digits-small")
    router = Router(r, catalog, replace(settings, model_max_depth=5, router_batch=4))
    router.setup()
    worker_settings = replace(settings, trim_every_s=0.0)  # trim as soon as acknowledged
    worker = ModelWorker(r, catalog, catalog.models["digits-small"], worker_settings, "w1")
    worker.setup()
    with Producer(settings=settings, catalog=catalog) as client:
        # one entry each (a lone submit goes alone), so the router's reads count requests
        ids = [client.submit(inputs={"input": row[None]}, model="digits-small") for row in x]
        assert [router.step(block_ms=None) for _ in range(3)] == [4, 4, 0]
        assert router.held == [stream]
        assert streamview.count(r, stream) == 8  # the bound plus at most one read
        while worker.step(block_ms=None):  # workers drain the queue and trim it
            pass
        assert r.xlen(stream) == 0
        assert router.step(block_ms=None) == 4  # under the bound again: routing resumes
        assert not router.held
        while worker.step(block_ms=None):
            pass
        got = client.wait_many(ids, timeout=30)
    assert [g.id for g in got] == ids
    assert all(g.ok for g in got)
