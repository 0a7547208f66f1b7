"""A request id names one request: reuse is refused at submit, idempotent retries are not."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import redis
from streamview import headers_in

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.ops import dlq
from cascadeq.producer import AsyncProducer, Producer, Rejected, Request
from cascadeq.producer.requests import SUBMIT, Call, Preparer, Reply, plan_calls, strict_outcome
from cascadeq.protocol import deadletter, results
from cascadeq.protocol.keys import Keys
from cascadeq.protocol.messages import INPUTS_FIELD, Result, error_result

X = {"input": np.ones((1, 4), np.float32)}
Y = {"input": np.zeros((1, 4), np.float32)}


def queued_ids(r: redis.Redis, keys: Keys) -> list[str]:
    return [h.id for h in headers_in(r, keys.ingress)]


def store(r: redis.Redis, keys: Keys, res: Result, ttl_s: int) -> None:
    pipe = r.pipeline(transaction=False)
    results.queue_result(pipe, keys, res, None, ttl_s)
    pipe.execute()


def test_a_reused_id_is_refused_and_never_answered_with_the_other_result(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    keys = Keys(settings.prefix)
    with Producer(settings=settings, catalog=toy_catalog) as client:
        assert client.submit(task="toy", inputs=X, request_id="dup") == "dup"
        with pytest.raises(Rejected, match="already in use: dup") as err:
            client.submit(task="toy", inputs=Y, request_id="dup")
        assert (err.value.code, err.value.ids, err.value.accepted) == ("duplicate_id", ["dup"], [])
        store(r, keys, Result(id="dup", status="ok"), settings.result_ttl_s)
        with pytest.raises(Rejected, match="dup") as err:  # answered: still taken
            client.submit(task="toy", inputs=Y, request_id="dup")
        assert err.value.code == "duplicate_id"
    [(_, fields)] = r.xrange(keys.ingress)
    assert fields[INPUTS_FIELD] == prepare_inputs(X, settings, toy_catalog)


def prepare_inputs(inputs: dict[str, np.ndarray], settings: Settings, cat: Catalog) -> bytes:
    """The inputs field a lone request is queued with: the single-request form."""
    [[entry]] = plan_calls(
        [Preparer(cat, settings, None)(Request(inputs, task="toy"))], Keys(), settings
    )
    return entry.fields[INPUTS_FIELD]


def test_an_id_repeated_in_one_submit_many_refuses_the_whole_call(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    keys = Keys(settings.prefix)
    with Producer(settings=settings, catalog=toy_catalog) as client:
        with pytest.raises(Rejected, match="repeated in this call: a") as err:
            client.submit_many([Request(X, task="toy", id="a"), Request(Y, task="toy", id="a")])
        assert (err.value.code, err.value.ids, err.value.accepted) == ("duplicate_id", ["a"], [])
        many = [Request(X, task="toy") for _ in range(600)]  # two chunks
        many[10] = many[550] = Request(X, task="toy", id="twice", idempotent=True)
        with pytest.raises(Rejected, match="twice") as err:
            client.submit_many(many)
        assert err.value.accepted == []
    assert r.xlen(keys.ingress) == 0  # not one entry, so not one request
    assert r.exists(keys.result("a"), keys.result("twice")) == 0


def test_the_script_itself_refuses_a_chunk_repeating_an_id(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    """Atomic in Redis too, for a caller that skips the client-side check."""
    keys = Keys(settings.prefix)
    prepare = Preparer(toy_catalog, settings, None)
    chunk = [prepare(Request(x, task="toy", id=rid)) for x, rid in ((X, "b"), (X, "c"), (Y, "b"))]
    [call] = plan_calls(chunk, keys, settings)
    assert len(call) == 1  # one bundle of three
    sent = Call(call, keys, settings, partial=False)
    reply = Reply(SUBMIT(r, sent.keys, sent.args))
    refused = strict_outcome(reply, call, sent, [], keys, settings.max_payload_bytes)
    assert isinstance(refused, Rejected)
    with pytest.raises(Rejected, match="already in use: b; ") as err:
        raise refused
    assert err.value.ids == ["b"]
    assert r.xlen(keys.ingress) == 0  # not one entry, so not one request
    assert r.exists(keys.result("b"), keys.result("c")) == 0


def test_an_id_in_use_refuses_its_chunk_and_keeps_the_chunks_before(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    keys = Keys(settings.prefix)
    with Producer(settings=settings, catalog=toy_catalog) as client:
        client.submit(task="toy", inputs=X, request_id="taken")
        many = [Request(X, task="toy") for _ in range(600)]
        many[550] = Request(Y, task="toy", id="taken")
        with pytest.raises(Rejected) as err:
            client.submit_many(many)
    assert (err.value.code, err.value.ids) == ("duplicate_id", ["taken"])
    assert len(err.value.accepted) == 500
    assert queued_ids(r, keys) == ["taken", *err.value.accepted]


def test_an_idempotent_retry_returns_the_id_without_a_second_computation(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    keys = Keys(settings.prefix)
    with Producer(settings=settings, catalog=toy_catalog) as client:
        once = {"task": "toy", "inputs": X, "request_id": "k", "idempotent": True}
        assert client.submit(**once) == "k"  # type: ignore[arg-type]
        assert client.submit(**once, deadline_ms=50, priority="default") == "k"  # type: ignore[arg-type]
        for other in ({"inputs": Y}, {"tier": "premium"}, {"idempotent": False}):
            with pytest.raises(Rejected, match="already in use: k") as err:
                client.submit(**{**once, **other})  # type: ignore[arg-type]
            assert err.value.code == "duplicate_id"
        with pytest.raises(Rejected, match="needs the caller's own request_id") as err:
            client.submit(task="toy", inputs=X, idempotent=True)
        assert err.value.code == "bad_request"
        answer = Result(id="k", status="ok", outputs={"probabilities": np.ones((1, 2))})
        store(r, keys, answer, settings.result_ttl_s)
        # Answered, then retried from another process: the answer, no new entry.
        with Producer(settings=settings, catalog=toy_catalog) as other_process:
            assert other_process.submit(**once) == "k"  # type: ignore[arg-type]
            assert other_process.wait("k", timeout=5).outputs["probabilities"].shape == (1, 2)
        plain = client.submit(task="toy", inputs=X, request_id="plain")
        with pytest.raises(Rejected, match="already in use: plain"):  # first not idempotent
            client.submit(task="toy", inputs=X, request_id="plain", idempotent=True)
    assert queued_ids(r, keys) == ["k", plain]
    assert r.ttl(keys.digest("k")) > r.ttl(keys.result("k"))  # outlives what it vouches


def test_a_mixed_chunk_queues_only_the_new_requests(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    keys = Keys(settings.prefix)
    with Producer(settings=settings, catalog=toy_catalog) as client:
        batch = [Request(X, task="toy", id=f"m{i}", idempotent=True) for i in range(4)]
        client.submit_many(batch[:2])  # the first attempt landed half-way, say
        assert client.submit_many(batch) == ["m0", "m1", "m2", "m3"]
        assert client.submit_many(batch) == ["m0", "m1", "m2", "m3"]
    assert queued_ids(r, keys) == ["m0", "m1", "m2", "m3"]


def test_the_async_client_refuses_and_recognises_the_same(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    async def scenario() -> Rejected:
        async with AsyncProducer(settings=settings, catalog=toy_catalog) as client:
            assert await client.submit(task="toy", inputs=X, request_id="a", idempotent=True)
            assert await client.submit(task="toy", inputs=X, request_id="a", idempotent=True)
            with pytest.raises(Rejected) as within:
                await client.submit_many([Request(X, task="toy", id="z")] * 2)
            assert within.value.ids == ["z"]
            with pytest.raises(Rejected) as err:
                await client.submit(task="toy", inputs=Y, request_id="a")
            return err.value

    err = asyncio.run(scenario())
    assert (err.code, err.ids) == ("duplicate_id", ["a"])
    assert queued_ids(r, Keys(settings.prefix)) == ["a"]


def test_a_replayed_dead_letter_stays_the_same_request_for_a_retry(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    """Replay re-queues an id submit refuses anew; an idempotent retry still matches it."""
    keys = Keys(settings.prefix)
    with Producer(settings=settings, catalog=toy_catalog) as client:
        client.submit(task="toy", inputs=X, request_id="dl", idempotent=True)
        [(eid, fields)] = r.xrange(keys.ingress)
        r.xdel(keys.ingress, eid)
        pipe = r.pipeline(transaction=False)
        deadletter.queue(
            pipe, keys, fields, stream=keys.ingress, entry_id=eid, code="dead_letter", reason="x"
        )
        results.queue_result(
            pipe, keys, error_result("dl", "dead_letter", "x"), None, settings.result_ttl_s
        )
        pipe.execute()
        with pytest.raises(Rejected, match="already in use: dl"):  # holds an error result
            client.submit(task="toy", inputs=X, request_id="dl")
        [letter] = dlq.list_letters(r, keys, 10)
        dlq.replay(r, keys, letter.id, settings.pending_ttl_s)
        assert results.is_pending(r.get(keys.result("dl")))
        assert client.submit(task="toy", inputs=X, request_id="dl", idempotent=True) == "dl"
    assert queued_ids(r, keys) == ["dl"]  # the replayed entry alone
