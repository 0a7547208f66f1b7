"""One poisoned entry fails alone: forged numbers, surprises in bookkeeping, redeliveries.

Regressions of issue 11: a header with ``submitted_at = -inf`` passed decoding and then
made the worker's latency accounting raise outside the per-request guard, killing the
process and leaving the batch's good requests unanswered.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import streamview

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra import metrics
from cascadeq.infra.window import Tally, latency_bucket
from cascadeq.protocol import keys as keynames
from cascadeq.protocol import outputs, wire
from cascadeq.protocol.keys import Keys
from cascadeq.protocol.messages import HEADER_FIELD, INPUTS_FIELD, Header, Result, now_ms
from cascadeq.router.service import Router
from cascadeq.workers import ModelWorker, answers, outcome, settle

ROW = np.zeros((1, 64), np.float32)
INPUTS = wire.dumps_inputs({"input": ROW})


@pytest.fixture(scope="module")
def digits(digits_dir: Path) -> np.ndarray:
    return np.load(digits_dir / "digits_test.npz")["X"]


def good(rid: str) -> dict[str, Any]:
    return {"id": rid, "model": "digits-small", "submitted_at": now_ms()}


def put(r: redis.Redis, stream: str, header: dict[str, Any], inputs: bytes = INPUTS) -> bytes:
    return bytes(r.xadd(stream, {HEADER_FIELD: wire.dumps(header), INPUTS_FIELD: inputs}))


def drain(*loops: ModelWorker | Router) -> None:
    for loop in loops:
        loop.setup()
    while sum(loop.step(None) for loop in loops):
        pass


def result(r: redis.Redis, keys: Keys, rid: str) -> Result:
    raw = r.get(keys.result(rid))
    assert raw is not None, f"no result for {rid}"
    return Result.loads(raw)


def no_pending(r: redis.Redis, stream: str, group: str = keynames.WORKER_GROUP) -> bool:
    return int(r.xpending(stream, group)["pending"]) == 0


@pytest.mark.parametrize("value", [-math.inf, -1e308, math.nan, math.inf, 1e308, -1.0])
@pytest.mark.parametrize("extra", [{}, {"deadline": 1.0}], ids=["live", "expired"])
def test_a_forged_submitted_at_is_refused_and_the_worker_serves_its_neighbours(
    r: redis.Redis, settings: Settings, catalog: Catalog, value: float, extra: dict[str, Any]
) -> None:
    worker = ModelWorker(r, catalog, catalog.models["digits-small"], settings, "w1")
    stream = worker.keys.model_stream("digits-small")
    put(r, stream, good("before"))
    put(r, stream, {**good("forged"), "submitted_at": value, **extra})
    put(r, stream, good("after"))
    drain(worker)  # raised OverflowError / ValueError here before the fix
    bad = result(r, worker.keys, "forged")
    assert bad.error is not None
    assert bad.error["code"] == "bad_payload"
    assert "'submitted_at'" in bad.error["message"]
    assert "epoch-ms" in bad.error["message"]
    assert result(r, worker.keys, "before").ok
    assert result(r, worker.keys, "after").ok
    assert no_pending(r, stream)


@pytest.mark.parametrize("name", ["deadline", "routed_at"])
def test_every_epoch_field_must_be_finite_and_plausible(name: str) -> None:
    for value in (math.nan, math.inf, -math.inf, -1e308, 1e300):
        with pytest.raises(wire.WireError, match=f"'{name}'.*finite epoch-ms"):
            Header.loads(wire.dumps({**good("x"), name: value}))
    assert Header.loads(wire.dumps({**good("x"), name: now_ms()})).id == "x"


@pytest.mark.parametrize(
    ("hop", "match"),
    [
        ({"model": "digits-small", "queue_ms": None}, "'queue_ms' must be a number, not None"),
        ({"model": "digits-small", "compute_ms": math.nan}, "'compute_ms' is nan"),
        ({"model": "digits-small", "batch_wait_ms": -math.inf}, "'batch_wait_ms' is -inf"),
        ({"model": "digits-small", "queue_ms": 2**64 - 1}, "finite number within"),
        ({"model": None}, "'model' must be a string, not None"),
        ({"rule": 3}, "'rule' must be a string, not int"),
    ],
)
def test_a_forged_trace_hop_is_refused_at_decode_with_a_clear_message(
    r: redis.Redis, settings: Settings, catalog: Catalog, hop: dict[str, Any], match: str
) -> None:
    worker = ModelWorker(r, catalog, catalog.models["digits-small"], settings, "w1")
    stream = worker.keys.model_stream("digits-small")
    put(r, stream, {**good("forged"), "trace": [hop]})
    put(r, stream, good("after"))
    drain(worker)
    bad = result(r, worker.keys, "forged")
    assert bad.error is not None
    assert bad.error["code"] == "bad_payload"  # was internal: unsupported operand ... None
    assert match in bad.error["message"]
    assert result(r, worker.keys, "after").ok


def test_a_hop_without_a_confidence_still_decodes() -> None:
    """Models whose output is not probabilities record confidence None: that is legal."""
    hop = {"model": "m", "rule": "direct", "confidence": None, "queue_ms": 1.5, "batch_size": 2}
    assert Header.loads(wire.dumps({**good("x"), "trace": [hop]})).trace == [hop]


def test_the_router_refuses_a_forged_submitted_at_at_ingress(
    r: redis.Redis, settings: Settings, catalog: Catalog
) -> None:
    router = Router(r, catalog, settings, "r1")
    put(r, router.keys.ingress, {**good("forged"), "submitted_at": -math.inf})
    put(r, router.keys.ingress, good("fine"))
    drain(router)
    bad = result(r, router.keys, "forged")
    assert bad.error is not None
    assert bad.error["code"] == "bad_payload"
    assert "'submitted_at'" in bad.error["message"]
    assert streamview.count(r, router.keys.model_stream("digits-small")) == 1  # only the good one
    assert no_pending(r, router.keys.ingress, keynames.ROUTER_GROUP)


@pytest.mark.parametrize("ms", [math.inf, -math.inf, math.nan, 1e308, -1e308, 0.0, -5.0, 1e-300])
def test_latency_accounting_takes_any_float(ms: float) -> None:
    tally = Tally(entries=1)
    tally.answer("ok", ms)
    tally.waited(ms, ms)
    tally.ran(1, ms, None)
    (bucket,) = tally.latency
    assert bucket == latency_bucket(ms) >= 0
    assert all(math.isfinite(v) and v >= 0 for v in [*tally.total_ms, *tally.queue_ms])
    metrics.observe_batch("m", tally)  # histograms get finite values


def cursed_block(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    """Sure requests are answered a block at a time: make a block holding "cursed" raise,
    so the worker narrows it down to its requests one by one (the per-request guards)."""
    real = answers.OkBatch._fill

    def fill(self: answers.OkBatch, *args: Any) -> Any:
        if any(a.header.id == "cursed" for a in args[3]):
            raise error
        return real(self, *args)

    monkeypatch.setattr(answers.OkBatch, "_fill", fill)
    monkeypatch.setattr(settle, "BLOCK_MIN", 1)  # blocks even for these three requests


def test_a_surprise_while_settling_one_request_fails_only_that_request(
    r: redis.Redis, settings: Settings, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a forged field this time: anything one entry's handling raises stays its own."""
    real = outcome.timings
    cursed_block(monkeypatch, RuntimeError("boom"))

    def timings(header: Header, *args: Any) -> dict[str, float]:
        if header.id == "cursed":
            raise RuntimeError("boom")
        return real(header, *args)

    monkeypatch.setattr(outcome, "timings", timings)
    worker = ModelWorker(r, catalog, catalog.models["digits-small"], settings, "w1")
    stream = worker.keys.model_stream("digits-small")
    for rid in ("a", "cursed", "b"):
        put(r, stream, good(rid))
    drain(worker)
    cursed = result(r, worker.keys, "cursed")
    assert cursed.error is not None
    assert (cursed.error["code"], "boom" in cursed.error["message"]) == ("internal", True)
    assert result(r, worker.keys, "a").ok
    assert result(r, worker.keys, "b").ok
    assert result(r, worker.keys, "a").batch_size == 3  # computed together, failed alone
    assert no_pending(r, stream)


def test_a_result_that_will_not_encode_fails_alone_in_its_waiters_share(
    r: redis.Redis, settings: Settings, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = outputs.encode
    cursed_block(monkeypatch, OverflowError("integer out of range"))

    def encode(record: outputs.ResultRecord) -> bytes:
        if record.id == "cursed":
            raise OverflowError("integer out of range")
        return real(record)

    monkeypatch.setattr(outputs, "encode", encode)
    worker = ModelWorker(r, catalog, catalog.models["digits-small"], settings, "w1")
    stream = worker.keys.model_stream("digits-small")
    for rid in ("a", "cursed", "b"):
        put(r, stream, {**good(rid), "reply_to": "waiter"})  # one share for all three
    drain(worker)
    cursed = result(r, worker.keys, "cursed")
    assert cursed.error is not None
    assert cursed.error["code"] == "internal"
    assert result(r, worker.keys, "a").ok
    assert result(r, worker.keys, "b").ok
    assert no_pending(r, stream)


def test_failing_metrics_never_stop_the_worker(
    r: redis.Redis, settings: Settings, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: Any) -> None:
        raise ValueError("histogram on fire")

    monkeypatch.setattr(metrics, "observe_batch", broken)
    worker = ModelWorker(r, catalog, catalog.models["digits-small"], settings, "w1")
    stream = worker.keys.model_stream("digits-small")
    put(r, stream, good("one"))
    drain(worker)
    put(r, stream, good("two"))
    drain(worker)
    assert result(r, worker.keys, "one").ok
    assert result(r, worker.keys, "two").ok


def test_a_surprise_while_routing_one_request_fails_only_that_request(
    r: redis.Redis, settings: Settings, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cascadeq.router.batch as service

    real = service.choose

    def choose(header: Header, *args: Any) -> Any:
        if header.id == "cursed":
            raise TypeError("unsupported operand")
        return real(header, *args)

    monkeypatch.setattr(service, "choose", choose)
    router = Router(r, catalog, settings, "r1")
    # The three share one decision, asked of the group's first request: the surprise
    # fails the group's decision, and each request is then decided alone.
    for rid in ("cursed", "a", "b"):
        put(r, router.keys.ingress, good(rid))
    drain(router)
    cursed = result(r, router.keys, "cursed")
    assert cursed.error is not None
    assert cursed.error["code"] == "internal"
    [dead] = streamview.dead_letters(r, router.keys)
    assert dead.code == "internal"
    assert streamview.count(r, router.keys.model_stream("digits-small")) == 2
    assert no_pending(r, router.keys.ingress, keynames.ROUTER_GROUP)


def test_reclaimed_entries_are_retried_alone_not_with_a_fresh_batch(
    r: redis.Redis, settings: Settings, catalog: Catalog
) -> None:
    from dataclasses import replace

    fast = replace(settings, visibility_timeout_ms=1, max_deliveries=5)
    worker = ModelWorker(r, catalog, catalog.models["digits-small"], fast, "survivor")
    worker.setup()
    stream = worker.keys.model_stream("digits-small")
    for rid in ("old1", "old2"):
        put(r, stream, good(rid))
    r.xreadgroup(keynames.WORKER_GROUP, "crashed", {stream: ">"})  # taken, never acked
    for rid in ("new1", "new2"):
        put(r, stream, good(rid))
    for entry_id, _ in r.xrange(stream, count=2):  # idle long enough to be reclaimed
        r.execute_command(
            "XCLAIM", stream, keynames.WORKER_GROUP, "crashed", 0, entry_id, "IDLE", 10_000
        )
    worker.reclaim_clock.next = 0.0
    while worker.step(None):
        pass
    assert [result(r, worker.keys, rid).batch_size for rid in ("old1", "old2")] == [1, 1]
    assert result(r, worker.keys, "new1").batch_size == 2
    assert no_pending(r, stream)


def test_a_worker_does_not_reclaim_the_entries_it_has_read_ahead(
    r: redis.Redis, settings: Settings, catalog: Catalog
) -> None:
    """Entries in a worker's read-ahead can idle past the visibility timeout while it runs
    others alone; its reclaim takes only what it no longer holds, so none runs twice."""
    from dataclasses import replace

    from cascadeq.workers.batcher import decode

    fast = replace(settings, visibility_timeout_ms=1, max_deliveries=5)
    worker = ModelWorker(r, catalog, catalog.models["digits-small"], fast, "w1")
    worker.setup()
    stream = worker.keys.model_stream("digits-small")
    put(r, stream, good("lost"))  # read by this consumer, then dropped (a failed commit)
    r.xreadgroup(keynames.WORKER_GROUP, "w1", {stream: ">"})
    for rid in ("ahead1", "ahead2"):
        put(r, stream, good(rid))
    [[_, ahead]] = r.xreadgroup(keynames.WORKER_GROUP, "w1", {stream: ">"})
    worker.batcher.carry = [
        decode(stream, e, worker.spec, now_ms(), fast.max_payload_bytes) for e in ahead
    ]
    for entry_id, _ in r.xrange(stream):  # all three idle long past the timeout
        r.execute_command(
            "XCLAIM", stream, keynames.WORKER_GROUP, "w1", 0, entry_id, "IDLE", 10_000
        )
    worker.reclaim_clock.next = 0.0
    while worker.step(None):
        pass
    assert result(r, worker.keys, "lost").batch_size == 1  # reclaimed, run alone
    assert [result(r, worker.keys, rid).batch_size for rid in ("ahead1", "ahead2")] == [2, 2]
    answered = r.hget(worker.keys.model_totals("digits-small"), "answered")
    assert int(answered or 0) == 3  # each request ran once
    assert no_pending(r, stream)
