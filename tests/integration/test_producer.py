from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import replace

import msgpack
import numpy as np
import pytest
import redis
from conftest import wait_for
from streamview import count, headers_in

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.producer import AsyncProducer, Producer, Rejected, Request, RequestFailed, Timeout
from cascadeq.producer.inbox import Inbox
from cascadeq.producer.requests import CatalogCache
from cascadeq.protocol import results
from cascadeq.protocol.keys import Keys
from cascadeq.protocol.messages import HEADER_FIELD, INPUTS_FIELD, Header, Result, error_result
from cascadeq.protocol.wire import loads_inputs

X = {"input": np.ones((1, 4), np.float32)}


def write_results(
    r: redis.Redis, settings: Settings, client_id: str, ids: list[str], status: str = "ok"
) -> None:
    """Play the worker: store results and notify, as a worker's pipeline does."""
    keys = Keys(settings.prefix)
    pipe = r.pipeline(transaction=False)
    for rid in ids:
        res = (
            Result(id=rid, status="ok", outputs={"probabilities": np.ones((1, 2))})
            if status == "ok"
            else error_result(rid, "boom", "it broke")
        )
        results.queue_result(pipe, keys, res, client_id, settings.result_ttl_s)
    pipe.execute()


def test_submit_queues_an_entry_the_router_can_read(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    with Producer(settings=settings, catalog=toy_catalog) as client:
        rid = client.submit(task="toy", inputs=X, tier="premium", deadline_ms=5000)
        [(_, fields)] = r.xrange(Keys(settings.prefix).ingress)
        header = Header.loads(fields[HEADER_FIELD])
        assert header.id == rid
        assert (header.task, header.tier, header.reply_to) == ("toy", "premium", client.client_id)
        assert header.deadline is not None
        assert header.deadline - header.submitted_at == pytest.approx(5000)
        np.testing.assert_array_equal(loads_inputs(fields[INPUTS_FIELD])["input"], X["input"])


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"task": "nope", "inputs": X}, "unknown_task"),
        ({"model": "nope", "inputs": X}, "unknown_model"),
        ({"inputs": X}, "bad_request"),
        ({"task": "toy", "model": "toy-small", "inputs": X}, "bad_request"),
        ({"task": "toy", "inputs": {"input": np.ones((1, 4), np.float64)}}, "bad_input"),
        ({"task": "toy", "inputs": {"input": [[1.0, 2.0, 3.0, 4.0]]}}, "bad_input"),
        ({"task": "toy", "inputs": {"x": np.ones((1, 4), np.float32)}}, "bad_input"),
        ({"task": "toy", "inputs": {"input": np.ones(4, np.float32)}}, "bad_input"),  # rank
        ({"task": "toy", "inputs": {"input": np.ones((1, 1, 4), np.float32)}}, "bad_input"),
        ({"task": "toy", "inputs": {"input": np.ones((1, 5), np.float32)}}, "bad_input"),
        ({"task": "toy", "inputs": {"input": np.zeros((0, 4), np.float32)}}, "bad_input"),
        ({"task": "toy", "inputs": {"input": np.full((1, 4), np.inf, np.float32)}}, "bad_input"),
        ({"task": "toy", "inputs": {"input": np.full((1, 4), np.nan, np.float32)}}, "bad_input"),
        ({"task": "toy", "inputs": X, "deadline_ms": 0}, "bad_deadline"),
        ({"task": "toy", "inputs": {}}, "bad_input"),
        ({"task": "toy", "inputs": X, "request_id": "a:b*"}, "bad_id"),
        ({"task": "toy", "inputs": X, "deadline_ms": -5}, "bad_deadline"),
    ],
)
def test_bad_requests_are_refused_at_submit_and_nothing_is_queued(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog, kwargs: dict[str, object], code: str
) -> None:
    with Producer(settings=settings, catalog=toy_catalog) as client:
        with pytest.raises(Rejected) as err:
            client.submit(**kwargs)  # type: ignore[arg-type]
        assert err.value.code == code
    assert count(r, Keys(settings.prefix).ingress) == 0


def test_oversized_payload_and_full_queue_are_refused(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    small = Settings(**{**settings.__dict__, "max_payload_bytes": 500, "ingress_max_depth": 3})
    with Producer(settings=small, catalog=toy_catalog) as client:
        with pytest.raises(Rejected, match="exceed the limit") as err:
            client.submit(task="toy", inputs={"input": np.ones((100, 4), np.float32)})
        assert err.value.code == "too_large"
        client.submit_many([Request(X, task="toy")] * 3)
        with pytest.raises(Rejected, match="queue is full") as err:
            client.submit(task="toy", inputs=X)
        assert err.value.code == "queue_full"
    assert count(r, Keys(settings.prefix).ingress) == 3


def test_result_polls_without_blocking_and_wait_blocks_until_written(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    with Producer(settings=settings, catalog=toy_catalog) as client:
        rid = client.submit(task="toy", inputs=X)
        assert client.result(rid) is None
        writer = threading.Timer(0.2, write_results, (r, settings, client.client_id, [rid]))
        writer.start()
        got = client.wait(rid, timeout=10)
        writer.join()
        assert got.id == rid
        assert got.ok
        polled = client.result(rid)
        assert polled is not None
        assert polled.status == "ok"


def test_wait_raises_typed_errors(r: redis.Redis, settings: Settings, toy_catalog: Catalog) -> None:
    with Producer(settings=settings, catalog=toy_catalog) as client:
        failing, silent = client.submit_many([Request(X, task="toy"), Request(X, task="toy")])
        write_results(r, settings, client.client_id, [failing], status="error")
        with pytest.raises(RequestFailed, match="boom") as err:
            client.wait(failing, timeout=5)
        assert err.value.result.status == "error"
        with pytest.raises(Timeout) as tmo:
            client.wait_many([failing, silent], timeout=0.3)
        assert tmo.value.missing == [silent]
        assert set(tmo.value.done) == {failing}


def test_wait_many_ten_thousand_ids_over_a_bounded_number_of_connections(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    from cascadeq.producer.core import MAX_CONNECTIONS

    with Producer(settings=settings, catalog=toy_catalog) as client:
        ids = client.submit_many([Request(X, task="toy") for _ in range(10_000)])
        before_arrival = ids[:100]  # stored before anyone waits: found by the first MGET
        write_results(r, settings, client.client_id, before_arrival)
        seen: list[int] = []

        def late() -> None:
            for start in range(100, len(ids), 1000):
                write_results(r, settings, client.client_id, ids[start : start + 1000])
                seen.append(sum(1 for c in r.client_list() if c["name"].endswith(client.client_id)))

        writer = threading.Thread(target=late)
        writer.start()
        got = client.wait_many(ids, timeout=60)
        writer.join()
        assert [g.id for g in got] == ids
        assert seen
        assert max(seen) <= MAX_CONNECTIONS + 1  # the pool, plus the one pub/sub connection
        subscriber = [
            c
            for c in r.client_list()
            if c["name"].endswith(client.client_id) and int(c["sub"]) == 1
        ]
        assert len(subscriber) == 1


def test_a_stray_publish_does_not_stop_the_listener(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    with Producer(settings=settings, catalog=toy_catalog) as client:
        first, second = client.submit_many([Request(X, task="toy")] * 2)
        write_results(r, settings, client.client_id, [first])
        client.wait(first, timeout=5)  # the listener is up
        channel = Keys(settings.prefix).reply_channel(client.client_id)
        r.publish(channel, b"\xc1 not a result")
        r.publish(channel, msgpack.packb({"id": [1], "status": "ok"}))  # well-formed, forged
        r.publish(channel, msgpack.packb({"id": second, "status": "ok", "outputs": 5}))
        threading.Timer(0.2, write_results, (r, settings, client.client_id, [second])).start()
        got = client.wait(second, timeout=10)
        assert got.id == second
        assert got.outputs["probabilities"].shape == (1, 2)  # the real one, not the forgery


def test_the_listeners_take_published_results_without_formatting_them(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    """redis-py 8's default push handler renders every message into a debug line, ~550 µs
    for a batch of results (redis/redis-py#4230); both clients' listeners replace it."""
    caplog.set_level(logging.DEBUG, logger="push_response")
    with Producer(settings=settings, catalog=toy_catalog) as client:
        ids = client.submit_many([Request(X, task="toy")] * 3)
        threading.Timer(0.1, write_results, (r, settings, client.client_id, ids)).start()
        assert [g.id for g in client.wait_many(ids, timeout=10)] == ids

    async def scenario() -> list[Result]:
        async with AsyncProducer(settings=settings, catalog=toy_catalog) as client:
            ids = await client.submit_many([Request(X, task="toy")] * 3)
            asyncio.get_running_loop().call_later(
                0.1, write_results, r, settings, client.client_id, ids
            )
            return await client.wait_many(ids, timeout=10)

    assert len(asyncio.run(scenario())) == 3
    assert not [rec for rec in caplog.records if rec.name == "push_response"]


def test_a_waiter_that_gives_up_does_not_strand_another_on_the_same_id(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    with Producer(settings=settings, catalog=toy_catalog) as client:
        rid = client.submit(task="toy", inputs=X)
        patient: list[Result] = []
        waiter = threading.Thread(target=lambda: patient.append(client.wait(rid, timeout=20)))
        waiter.start()
        with pytest.raises(Timeout):
            client.wait(rid, timeout=0.2)
        write_results(r, settings, client.client_id, [rid])
        waiter.join()
        assert [p.id for p in patient] == [rid]


def test_a_refused_chunk_reports_the_ids_already_queued(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    bounded = replace(settings, ingress_max_depth=700)
    with Producer(settings=bounded, catalog=toy_catalog) as client, pytest.raises(Rejected) as err:
        client.submit_many([Request(X, task="toy") for _ in range(1000)])
    assert err.value.code == "queue_full"
    assert len(err.value.accepted) == 500
    queued = [h.id for h in headers_in(r, Keys(settings.prefix).ingress)]
    assert queued == err.value.accepted


def test_async_producer_submits_and_waits(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    async def scenario() -> list[Result]:
        async with AsyncProducer(settings=settings, catalog=toy_catalog) as client:
            ids = await client.submit_many([Request(X, task="toy") for _ in range(50)])
            with pytest.raises(Rejected):
                await client.submit(task="nope", inputs=X)
            loop = asyncio.get_running_loop()
            loop.call_later(0.1, write_results, r, settings, client.client_id, ids)
            return await client.wait_many(ids, timeout=10)

    got = asyncio.run(scenario())
    assert len(got) == 50
    assert all(g.ok for g in got)


def test_producer_reads_the_catalog_a_router_published(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    from cascadeq.router.service import publish_catalog

    with Producer(settings=settings) as client:
        with pytest.raises(Rejected, match="no catalog"):
            client.submit(task="toy", inputs=X)
        publish_catalog(r, Keys(settings.prefix), toy_catalog)
        client.catalogs.checked = -CatalogCache.REFRESH_S  # skip the refresh interval
        assert client.submit(task="toy", inputs=X)


def test_many_threads_share_one_producer(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with Producer(settings=settings, catalog=toy_catalog) as client:

        def one_call(_: int) -> str:
            rid = client.submit(task="toy", inputs=X)
            write_results(r, settings, client.client_id, [rid])
            return client.wait(rid, timeout=30).id

        with ThreadPoolExecutor(max_workers=64) as pool:
            got = list(pool.map(one_call, range(640)))
    assert len(set(got)) == 640


def spy_lookups(inbox: Inbox, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every id list a wait's look in Redis covered (what ``Inbox.unheard`` returned)."""
    looked: list[list[str]] = []
    unheard = inbox.unheard

    def spied(ids: list[str]) -> list[str]:
        looked.append(unheard(ids))
        return looked[-1]

    monkeypatch.setattr(inbox, "unheard", spied)
    return looked


def test_a_wait_looks_up_only_what_the_subscription_may_not_bring(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ids submitted while the listener holds a subscription come by pub/sub: the wait
    sends no MGET for them, yet gets every result, also ones stored before it began."""
    with Producer(settings=settings, catalog=toy_catalog) as client:
        looked = spy_lookups(client._inbox, monkeypatch)
        early = client.submit(task="toy", inputs=X)  # no listener yet
        write_results(r, settings, client.client_id, [early])
        assert client.wait(early, timeout=10).id == early  # found by the look in Redis
        assert looked == [[early]]
        wait_for(lambda: client._inbox.listening() is not None, 10, "the listener subscribed")
        stored = client.submit_many([Request(X, task="toy")] * 3)
        write_results(r, settings, client.client_id, stored)  # stored before the wait
        assert [g.id for g in client.wait_many(stored, timeout=10)] == stored
        ids = client.submit_many([Request(X, task="toy")] * 3)
        ids.append(client.submit(task="toy", inputs=X))  # a coalesced submit, heard the same
        got: list[Result] = []
        waiter = threading.Thread(target=lambda: got.extend(client.wait_many(ids, timeout=10)))
        waiter.start()
        wait_for(lambda: set(ids) <= set(client._inbox.outstanding()), 10, "the wait registered")
        write_results(r, settings, client.client_id, ids)
        waiter.join()
        assert [g.id for g in got] == ids
        assert not any(looked[1:])  # no MGET for either wait: every one came by pub/sub
        assert client.wait(ids[0], timeout=10).id == ids[0]  # delivered before: looked up
        assert looked[-1] == [ids[0]]


def test_the_async_client_skips_the_lookup_for_what_its_subscription_brings(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> tuple[list[str], list[Result], list[list[str]]]:
        async with AsyncProducer(settings=settings, catalog=toy_catalog) as client:
            looked = spy_lookups(client._inbox, monkeypatch)
            first = await client.submit_many([Request(X, task="toy")])
            write_results(r, settings, client.client_id, first)
            await client.wait_many(first, timeout=10)  # starts the listener
            deadline = asyncio.get_running_loop().time() + 10
            while client._inbox.listening() is None:  # a readiness probe, as wait_for
                assert asyncio.get_running_loop().time() < deadline, "never subscribed"
                await asyncio.sleep(0.02)
            ids = await client.submit_many([Request(X, task="toy")] * 3)
            waiting = asyncio.create_task(client.wait_many(ids, timeout=10))
            while not set(ids) <= set(client._inbox.outstanding()):
                await asyncio.sleep(0.01)
            write_results(r, settings, client.client_id, ids)
            return ids, await waiting, looked[1:]

    ids, got, looked = asyncio.run(scenario())
    assert [g.id for g in got] == ids
    assert not any(looked)  # no MGET: the subscription brought them


def test_a_refused_submit_leaves_its_id_to_the_lookup(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    """An id refused as already in use belongs to another submit: its result is published
    to that client, so this one's wait must look in Redis, not trust its subscription."""
    with (
        Producer(settings=settings, catalog=toy_catalog) as owner,
        Producer(settings=settings, catalog=toy_catalog) as other,
    ):
        warm = other.submit(task="toy", inputs=X)
        write_results(r, settings, other.client_id, [warm])
        other.wait(warm, timeout=10)  # starts its listener
        wait_for(lambda: other._inbox.listening() is not None, 10, "the listener subscribed")
        rid = owner.submit(task="toy", inputs=X)
        with pytest.raises(Rejected):
            other.submit_many([Request(X, task="toy", id=rid)])
        with pytest.raises(Rejected):
            other.submit(task="toy", inputs=X, request_id=rid)
        assert other._inbox.unheard([rid]) == [rid]
        write_results(r, settings, owner.client_id, [rid])  # published to the owner only
        assert other.wait(rid, timeout=0.5).id == rid  # found by the look, not the sweep
