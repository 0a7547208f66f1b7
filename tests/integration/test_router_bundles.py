"""The router splits bundles of mixed requests into one bundle per model and lane.

A read's requests are decided per group and forwarded as one entry per stream, each at
most the model's max_batch samples; a source entry that goes whole to one stream keeps
its inputs bytes; the bad requests of a bundle are answered alone.
"""

from __future__ import annotations

from dataclasses import replace

import msgpack
import numpy as np
import redis
import streamview

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.protocol import bundle, wire
from cascadeq.protocol import keys as keynames
from cascadeq.protocol.messages import Header, Result, now_ms
from cascadeq.router import Router

CATALOG = """
[models.toy-small]
path = "toy_small.onnx"
output = "probabilities"
inputs = [{ name = "input", dtype = "float32", shape = [-1, 4] }]
lanes = ["interactive", "default"]
batching = { max_batch = 4 }

[models.toy-large]
path = "toy_large.onnx"
output = "probabilities"
cost = 10.0
inputs = [{ name = "input", dtype = "float32", shape = [-1, 4] }]

[tasks.toy]
cascade = [{ model = "toy-small", threshold = 0.9 }, { model = "toy-large" }]
tiers = { premium = { start = "toy-large" } }
"""


def catalog() -> Catalog:
    return Catalog.loads(CATALOG, source="toy/catalog.toml", check_files=False)


def header(rid: str, **kw: object) -> Header:
    return Header(id=rid, submitted_at=now_ms(), **kw)  # type: ignore[arg-type]


def rows(n: int, start: float = 0.0) -> np.ndarray:
    return (np.arange(n * 4, dtype=np.float32).reshape(n, 4) + start).astype(np.float32)


def result(r: redis.Redis, keys: keynames.Keys, rid: str) -> Result:
    raw = r.get(keys.result(rid))
    assert raw is not None, f"no result for {rid}"
    return Result.loads(raw)


def entries(r: redis.Redis, stream: str) -> list[bundle.Bundle]:
    return [bundle.decode(stream, eid, f, 1 << 30) for eid, f in r.xrange(stream)]


def test_a_mixed_bundle_is_split_per_model_and_lane_and_its_bad_requests_fail_alone(
    r: redis.Redis, settings: Settings
) -> None:
    router = Router(r, catalog(), settings)
    router.setup()
    keys = router.keys
    headers = [
        header("s0", task="toy"),
        header("p0", task="toy", tier="premium"),
        header("s1", task="toy"),
        header("pin", model="toy-large"),
        header("late", task="toy", deadline=now_ms() - 1000),
        header("fast", task="toy", priority="interactive"),
        header("s2", task="toy"),
        header("lost", task="no-such-task"),
        header("s3", task="toy"),
        header("s4", task="toy"),
        header("s5", task="toy"),
    ]
    forged = {"id": "forged", "task": "toy", "submitted_at": -1.0}  # epoch ms must be >= 0
    raw = [h.dumps() for h in headers]
    raw.insert(3, msgpack.packb(forged))
    x = rows(len(raw))
    fields = {bundle.HEADERS: raw_array(raw), bundle.STACKED: wire.dumps_inputs({"input": x})}
    r.xadd(keys.ingress, fields)
    router.board.refresh(force=True)
    assert router.step(None) == 1

    small = keys.model_stream("toy-small")
    large = keys.model_stream("toy-large")
    fast = keys.model_stream("toy-small", "interactive")
    got = entries(r, small)
    assert [[h.id for h in b.headers] for b in got] == [["s0", "s1", "s2", "s3"], ["s4", "s5"]]
    assert all(int(b.rows.sum()) <= 4 for b in got)  # max_batch samples each
    ids = [h.id for h in headers]
    at = {rid: i + (i >= 3) for i, rid in enumerate(ids)}  # the forged one sits at 3
    for b in got:  # each request's own rows travelled with it
        want = np.concatenate([x[at[h.id] : at[h.id] + 1] for h in b.headers])
        assert np.array_equal(b.inputs["input"], want)
        assert all(h.trace[-1] == {"model": "toy-small", "rule": "cascade"} for h in b.headers)
        assert all(h.routed_at is not None and h.stage == 0 for h in b.headers)
    [to_large] = entries(r, large)
    assert [h.id for h in to_large.headers] == ["p0", "pin"]
    assert [h.trace[-1]["rule"] for h in to_large.headers] == ["tier", "pinned"]
    assert [h.stage for h in to_large.headers] == [1, 0]
    [interactive] = entries(r, fast)
    assert [h.id for h in interactive.headers] == ["fast"]
    # the request counters count requests, not entries
    assert [int(r.get(keys.backlog(s)) or 0) for s in (small, large, fast)] == [6, 2, 1]
    assert int(r.get(keys.backlog(keys.ingress)) or 0) == 0
    # the bad ones, answered alone
    assert result(r, keys, "late").status == "expired"
    lost = result(r, keys, "lost")
    assert lost.error is not None
    assert lost.error["code"] == "unknown_task"
    bad = result(r, keys, "forged")
    assert bad.error is not None
    assert bad.error["code"] == "bad_payload"
    [dead] = streamview.dead_letters(r, keys)
    assert dead.code == "bad_payload"
    assert wire.loads(dead.fields[bundle.HEADER])["id"] == "forged"  # the single form, replayable
    assert np.array_equal(wire.loads_inputs(dead.fields[bundle.INPUTS])["input"], x[3:4])
    assert r.xpending(keys.ingress, keynames.ROUTER_GROUP)["pending"] == 0
    counts = {k.decode(): int(v) for k, v in r.hgetall(keys.routing_counts).items()}
    assert counts == {
        "route:cascade": 7,
        "route:tier": 1,
        "route:pinned": 1,
        "route:expired": 1,
        "route:unknown_task": 1,
    }


def raw_array(items: list[bytes]) -> bytes:
    """A msgpack array of already packed items."""
    head = msgpack.packb([None] * len(items))[: -len(items)]  # the array header alone
    return head + b"".join(items)


def test_an_entry_that_goes_whole_to_one_stream_keeps_its_inputs_bytes(
    r: redis.Redis, settings: Settings
) -> None:
    router = Router(r, catalog(), settings)
    router.setup()
    keys = router.keys
    x = wire.dumps_inputs({"input": rows(3)})
    hs = [header(f"w{i}", model="toy-large") for i in range(3)]
    r.xadd(keys.ingress, bundle.bundle_fields(hs, x, None))
    one = wire.dumps_inputs({"input": rows(1)})
    r.xadd(keys.ingress, {bundle.HEADER: header("alone", task="toy").dumps(), bundle.INPUTS: one})
    assert router.step(None) == 2
    [(_, large)] = r.xrange(keys.model_stream("toy-large"))
    assert large[bundle.STACKED] == x  # untouched: not decoded and encoded again
    [(_, small)] = r.xrange(keys.model_stream("toy-small"))
    assert small[bundle.STACKED] == one
    assert streamview.count(r, keys.model_stream("toy-large")) == 3


def test_single_entries_are_joined_into_bundles_of_at_most_max_batch_samples(
    r: redis.Redis, settings: Settings
) -> None:
    router = Router(r, catalog(), replace(settings, router_batch=100))
    router.setup()
    keys = router.keys
    for i in range(10):
        n = 2 if i == 4 else 1
        x = wire.dumps_inputs({"input": rows(n, start=i * 100)})
        r.xadd(keys.ingress, {bundle.HEADER: header(f"j{i}", task="toy").dumps(), bundle.INPUTS: x})
    assert router.step(None) == 10
    got = entries(r, keys.model_stream("toy-small"))
    assert [int(b.rows.sum()) for b in got] == [4, 4, 3]
    assert [h.id for b in got for h in b.headers] == [f"j{i}" for i in range(10)]
    firsts = np.concatenate([b.inputs["input"][:, 0] for b in got])
    assert firsts.tolist() == [0, 100, 200, 300, 400, 404, 500, 600, 700, 800, 900]
    assert int(r.get(keys.backlog(keys.model_stream("toy-small"))) or 0) == 10


def test_a_surprise_in_one_requests_own_rule_fails_only_that_request(
    r: redis.Redis, settings: Settings, monkeypatch: object
) -> None:
    import pytest

    import cascadeq.router.batch as batch

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    real = batch.deadline

    def deadline(req: object, d: object) -> object:
        if req.header.id == "cursed":  # type: ignore[attr-defined]
            raise ZeroDivisionError("a forged number no check foresaw")
        return real(req, d)  # type: ignore[arg-type]

    monkeypatch.setattr(batch, "deadline", deadline)
    router = Router(r, catalog(), settings)
    router.setup()
    keys = router.keys
    later = now_ms() + 60_000
    hs = [header(rid, task="toy", deadline=later) for rid in ("a", "cursed", "b")]
    r.xadd(keys.ingress, bundle.bundle_fields(hs, wire.dumps_inputs({"input": rows(3)}), None))
    assert router.step(None) == 1
    cursed = result(r, keys, "cursed")
    assert cursed.error is not None
    assert cursed.error["code"] == "internal"
    [dead] = streamview.dead_letters(r, keys)
    assert dead.code == "internal"
    assert [h.id for h in streamview.headers_in(r, keys.model_stream("toy-small"))] == ["a", "b"]
    assert r.xpending(keys.ingress, keynames.ROUTER_GROUP)["pending"] == 0
