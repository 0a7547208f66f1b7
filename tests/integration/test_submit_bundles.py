"""The producer sends bundles: grouped by first model, lane and input signature, counted
in requests; concurrent single submits share flushes and are still answered one by one."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import redis
from conftest import wait_for
from streamview import count, headers_in

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.ops import dlq
from cascadeq.producer import AsyncProducer, Producer, Rejected, Request
from cascadeq.producer.client import Coalescer, Waiter
from cascadeq.producer.requests import SUBMIT_CHUNK
from cascadeq.protocol import bundle, deadletter, results
from cascadeq.protocol.keys import Keys
from cascadeq.protocol.messages import Result

LANES_CATALOG = """
[models.a]
path = "a.onnx"
output = "probabilities"
cost = 1.0
lanes = ["interactive", "batch"]
inputs = [{ name = "input", dtype = "float32", shape = [-1, 4] }]

[models.b]
path = "b.onnx"
output = "probabilities"
cost = 10.0
inputs = [{ name = "input", dtype = "float32", shape = [-1, 4] }]

[models.w]
path = "w.onnx"
output = "probabilities"
cost = 1.0
inputs = [{ name = "input", dtype = "float32", shape = [-1, -1] }]

[tasks.t]
cascade = [{ model = "a", threshold = 0.9 }, { model = "b" }]
"""

X = {"input": np.ones((1, 4), np.float32)}


@pytest.fixture
def lanes_catalog() -> Catalog:
    return Catalog.loads(LANES_CATALOG, source="lanes/catalog.toml", check_files=False)


def entries(r: redis.Redis, stream: str) -> list[bundle.Bundle]:
    return [bundle.decode(stream, eid, f, 1 << 30) for eid, f in r.xrange(stream)]


def answer(r: redis.Redis, settings: Settings, client_id: str, ids: list[str]) -> None:
    """Play the worker for these ids: store each result and publish it."""
    keys = Keys(settings.prefix)
    pipe = r.pipeline(transaction=False)
    for rid in ids:
        res = Result(id=rid, status="ok", outputs={"probabilities": np.ones((1, 2))})
        results.queue_result(pipe, keys, res, client_id, settings.result_ttl_s)
    pipe.execute()


def row(i: float, width: int = 4, rows: int = 1) -> dict[str, np.ndarray]:
    return {"input": np.full((rows, width), i, np.float32)}


def test_submit_many_groups_by_first_model_lane_and_signature(
    r: redis.Redis, settings: Settings, lanes_catalog: Catalog
) -> None:
    keys = Keys(settings.prefix)
    reqs = [
        Request(row(0), model="a", priority="interactive"),
        Request(row(1), model="a", priority="batch"),
        Request(row(2), task="t", priority="interactive"),  # starts on a: joins the first
        Request(row(3, width=3, rows=2), model="w"),  # two rows
        Request(row(4), model="a", priority="nope"),  # an unknown priority: a's lowest lane
        Request(row(5, width=3), model="w"),
        Request(row(6, width=5), model="w"),  # another signature: an entry of its own
        Request(row(7), model="b"),
    ]
    with Producer(settings=settings, catalog=lanes_catalog) as client:
        ids = client.submit_many(reqs)
    got = entries(r, keys.ingress)
    by_ids = {tuple(h.id for h in b.headers): b for b in got}
    assert set(by_ids) == {
        (ids[0], ids[2]),
        (ids[1], ids[4]),
        (ids[3], ids[5]),
        (ids[6],),
        (ids[7],),
    }
    inter = by_ids[(ids[0], ids[2])]
    assert ([h.model for h in inter.headers], [h.task for h in inter.headers]) == (
        ["a", None],
        [None, "t"],
    )
    np.testing.assert_array_equal(inter.inputs["input"][:, 0], [0, 2])
    two = by_ids[(ids[3], ids[5])]
    assert list(two.rows) == [2, 1]  # rows per request travel with the bundle
    np.testing.assert_array_equal(two.inputs["input"][:, 0], [3, 3, 5])
    assert by_ids[(ids[6],)].single  # alone: the h/x form
    assert by_ids[(ids[7],)].single
    assert r.xlen(keys.ingress) == 5
    assert r.get(keys.backlog(keys.ingress)) == b"8"  # counted in requests
    for model, lane in (("a", "interactive"), ("a", "batch"), ("w", "default")):
        assert r.get(keys.backlog(keys.model_stream(model, lane))) is None  # the router's


def test_bundles_keep_within_the_chunk_and_the_payload_limit(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    keys = Keys(settings.prefix)
    small = replace(settings, max_payload_bytes=2000)
    with Producer(settings=small, catalog=toy_catalog) as client:
        ids = client.submit_many([Request(row(i), task="toy") for i in range(200)])
    got = entries(r, keys.ingress)
    assert len(got) > 1
    assert all(len(b.raw_inputs) <= 2000 for b in got)
    assert [h.id for b in got for h in b.headers] == ids
    keys2 = Keys(settings.prefix + "x")
    with Producer(settings=replace(settings, prefix=keys2.prefix), catalog=toy_catalog) as client:
        many = client.submit_many([Request(X, task="toy") for _ in range(2 * SUBMIT_CHUNK + 1)])
    sizes = [b.size for b in entries(r, keys2.ingress)]
    assert sizes == [SUBMIT_CHUNK, SUBMIT_CHUNK, 1]
    assert count(r, keys2.ingress) == len(many)


def test_a_bad_request_in_a_bundle_is_refused_before_anything_is_sent(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    keys = Keys(settings.prefix)
    bad = {"input": np.array([[1.0, np.nan, 0.0, 0.0]], np.float32)}
    with Producer(settings=settings, catalog=toy_catalog) as client:
        with pytest.raises(Rejected, match="holds NaN or inf") as err:
            client.submit_many([Request(X, task="toy")] * 3 + [Request(bad, task="toy")])
        assert err.value.code == "bad_input"
        with pytest.raises(Rejected, match=r"must have shape \(-1, 4\), got \(1, 5\)") as err:
            client.submit_many([Request(X, task="toy"), Request(row(0, width=5), task="toy")])
    assert r.xlen(keys.ingress) == 0
    assert r.get(keys.backlog(keys.ingress)) is None


def test_sixteen_threads_of_single_submits_share_flushes(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    keys = Keys(settings.prefix)
    threads, each = 16, 25
    start = threading.Barrier(threads)
    mine: dict[int, list[str]] = {}
    got: dict[int, list[Result]] = {}
    with Producer(settings=settings, catalog=toy_catalog) as client:

        def submit(t: int) -> None:
            start.wait()
            mine[t] = [client.submit(task="toy", inputs=row(t)) for _ in range(each)]

        def wait(t: int) -> None:
            got[t] = client.wait_many(mine[t], timeout=30)

        run(submit, threads)
        queued = headers_in(r, keys.ingress)
        assert len(queued) == threads * each
        answer(r, settings, client.client_id, [h.id for h in queued])
        run(wait, threads)
    assert len({rid for ids in mine.values() for rid in ids}) == threads * each
    for t in range(threads):
        assert [g.id for g in got[t]] == mine[t]
    assert r.xlen(keys.ingress) < threads * each  # some flush carried several requests
    assert r.get(keys.backlog(keys.ingress)) == str(threads * each).encode()


def run(target: object, n: int) -> None:
    workers = [threading.Thread(target=target, args=(t,)) for t in range(n)]  # type: ignore[arg-type]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def test_sixty_four_tasks_share_a_flush_and_each_gets_its_own_answer(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    keys = Keys(settings.prefix)

    async def scenario() -> tuple[list[str], list[Result], str]:
        async with AsyncProducer(settings=settings, catalog=toy_catalog) as client:
            ids = await asyncio.gather(
                *(client.submit(task="toy", inputs=row(i)) for i in range(64))
            )
            answer(r, settings, client.client_id, list(ids))
            waits = await asyncio.gather(*(client.wait(rid, timeout=10) for rid in ids))
            lone = await client.submit(task="toy", inputs=X)  # nobody to wait for: sent at once
            return list(ids), list(waits), lone

    ids, waits, lone = asyncio.run(scenario())
    assert len(set(ids)) == 64
    assert [w.id for w in waits] == ids
    queued = entries(r, keys.ingress)
    assert len(queued) < 64
    assert [h.id for b in queued for h in b.headers] == [*ids, lone]
    inputs = np.concatenate([b.inputs["input"][:, 0] for b in queued[:-1]])
    np.testing.assert_array_equal(inputs, np.arange(64))  # each request's own row


def test_a_refusal_in_a_shared_flush_fails_only_its_caller(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    keys = Keys(settings.prefix)

    async def scenario() -> list[str | BaseException]:
        async with AsyncProducer(settings=settings, catalog=toy_catalog) as client:
            await client.submit(task="toy", inputs=X, request_id="taken")
            await client.submit(task="toy", inputs=X, request_id="again", idempotent=True)
            kwargs: list[dict[str, object]] = [{"inputs": row(i)} for i in range(6)]
            kwargs[2] = {"inputs": X, "request_id": "taken"}
            kwargs[4] = {"inputs": X, "request_id": "again", "idempotent": True}
            kwargs += [{"inputs": X, "request_id": "twin"}] * 2
            calls = [client.submit(task="toy", **kw) for kw in kwargs]  # type: ignore[arg-type]
            return await asyncio.gather(*calls, return_exceptions=True)

    got = asyncio.run(scenario())
    refused = [i for i, g in enumerate(got) if isinstance(g, Rejected)]
    assert refused == [2, 7]
    assert all(isinstance(got[i], Rejected) and got[i].code == "duplicate_id" for i in refused)  # type: ignore[union-attr]
    assert got[4] == "again"  # the idempotent retry: its id, not queued again
    assert got[6] == "twin"
    queued = [h.id for h in headers_in(r, keys.ingress)]
    assert len(queued) == len(set(queued)) == 2 + 5
    assert r.get(keys.backlog(keys.ingress)) == b"7"


def test_a_full_queue_refuses_only_the_submits_that_do_not_fit(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    keys = Keys(settings.prefix)
    bounded = replace(settings, ingress_max_depth=5)

    async def scenario() -> list[str | BaseException]:
        async with AsyncProducer(settings=bounded, catalog=toy_catalog) as client:
            calls = [client.submit(task="toy", inputs=row(i)) for i in range(8)]
            return await asyncio.gather(*calls, return_exceptions=True)

    got = asyncio.run(scenario())
    assert [isinstance(g, str) for g in got] == [True] * 5 + [False] * 3
    for g in got[5:]:
        assert isinstance(g, Rejected)
        assert g.code == "queue_full"
        assert "holds 0 requests, bound 5" in str(g)
    assert count(r, keys.ingress) == 5


def test_threads_submitting_one_id_get_one_queued_and_the_rest_refused(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    keys = Keys(settings.prefix)
    start = threading.Barrier(8)
    outcome: dict[int, str] = {}
    with Producer(settings=settings, catalog=toy_catalog) as client:

        def submit(t: int) -> None:
            start.wait()
            try:
                client.submit(task="toy", inputs=row(t), request_id="same")
                outcome[t] = "queued"
            except Rejected as exc:
                outcome[t] = exc.code

        run(submit, 8)
    assert sorted(outcome.values()) == ["duplicate_id"] * 7 + ["queued"]
    assert [h.id for h in headers_in(r, keys.ingress)] == ["same"]


def test_a_replayed_dead_letter_is_counted_on_its_stream(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    keys = Keys(settings.prefix)
    with Producer(settings=settings, catalog=toy_catalog) as client:
        client.submit(task="toy", inputs=X, request_id="dl")
    [(eid, fields)] = r.xrange(keys.ingress)
    r.xdel(keys.ingress, eid)
    r.decr(keys.backlog(keys.ingress))  # as the router's acknowledgement would
    pipe = r.pipeline(transaction=False)
    deadletter.queue(
        pipe, keys, fields, stream=keys.ingress, entry_id=eid, code="dead_letter", reason="x"
    )
    pipe.execute()
    [letter] = dlq.list_letters(r, keys, 10)
    dlq.replay(r, keys, letter.id, settings.pending_ttl_s)
    assert count(r, keys.ingress) == 1
    assert r.get(keys.backlog(keys.ingress)) == b"1"


class _Item:
    """Stands for a prepared request in the coalescer's unit tests."""

    def __init__(self, rid: str) -> None:
        self.id = rid
        self.slot: Any = None


class _InterruptedLock:
    """A waiter's lock whose blocking acquire is interrupted: at once, or once released."""

    def __init__(self, after_release: bool) -> None:
        self.inner = threading.Lock()
        self.after_release = after_release

    def acquire(self, blocking: bool = True) -> bool:
        if not blocking:
            return self.inner.acquire(blocking=False)
        if self.after_release:
            self.inner.acquire()
        raise KeyboardInterrupt

    def release(self) -> None:
        self.inner.release()


@pytest.mark.parametrize("handed_the_lead", [False, True])
def test_an_interrupted_waiter_strands_no_one(handed_the_lead: bool) -> None:
    """Interrupted before its flush it is not sent; interrupted just as it is handed the
    lead, it still sends the next flush, so the submits behind it are answered."""
    flushes: list[list[str]] = []
    gate = threading.Event()

    def flush(batch: list[Any]) -> None:
        flushes.append([p.id for p in batch])
        if len(flushes) == 1:
            gate.wait(10)
        for p in batch:
            p.slot.error, p.slot.done = None, True

    coalescer = Coalescer(flush)
    first = threading.Thread(target=coalescer.submit, args=(_Item("a"),))
    first.start()
    wait_for(lambda: bool(flushes), 10, "the first flush")
    original = Waiter.__init__

    def interrupted_init(self: Waiter, prepared: Any) -> None:
        Waiter.__init__ = original  # type: ignore[method-assign]  # this waiter alone
        original(self, prepared)
        lock = _InterruptedLock(handed_the_lead)
        lock.inner.acquire()
        self.lock = lock  # type: ignore[assignment]

    outcome: dict[str, str] = {}

    def interrupted() -> None:
        Waiter.__init__ = interrupted_init  # type: ignore[method-assign]
        try:
            coalescer.submit(_Item("b"))
        except KeyboardInterrupt:
            outcome["b"] = "interrupted"

    second = threading.Thread(target=interrupted)
    second.start()
    if not handed_the_lead:
        second.join(10)
        assert outcome == {"b": "interrupted"}
    else:
        wait_for(lambda: len(coalescer._pending) == 1, 10, "b waiting")
    third = threading.Thread(target=lambda: outcome.setdefault("c", coalescer.submit(_Item("c"))))
    third.start()
    wait_for(lambda: len(coalescer._pending) == (2 if handed_the_lead else 1), 10, "c waiting")
    gate.set()
    for t in (first, second, third):
        t.join(10)
        assert not t.is_alive()
    assert outcome == {"b": "interrupted", "c": "c"}
    assert flushes == ([["a"], ["b", "c"]] if handed_the_lead else [["a"], ["c"]])
