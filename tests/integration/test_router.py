from __future__ import annotations

from dataclasses import replace

import numpy as np
import redis
import streamview
from conftest import wait_for

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra import streams
from cascadeq.protocol import bundle, wire
from cascadeq.protocol import keys as keynames
from cascadeq.protocol.keys import Keys
from cascadeq.protocol.messages import HEADER_FIELD, INPUTS_FIELD, Header, Result, now_ms
from cascadeq.router import Router

X = wire.dumps_inputs({"input": np.ones((1, 4), np.float32)})


def put(r: redis.Redis, keys: Keys, header: bytes | None, inputs: bytes | None = X) -> None:
    fields = {}
    if header is not None:
        fields[HEADER_FIELD] = header
    if inputs is not None:
        fields[INPUTS_FIELD] = inputs
    r.xadd(keys.ingress, fields)


def hdr(rid: str, **kw: object) -> bytes:
    return Header(id=rid, submitted_at=now_ms(), **kw).dumps()  # type: ignore[arg-type]


def routed(r: redis.Redis, keys: Keys, model: str) -> list[tuple[Header, bytes]]:
    """Each request routed to the model, with the inputs bytes of the entry that holds it."""
    stream = keys.model_stream(model)
    out = []
    for eid, f in r.xrange(stream):
        got = bundle.decode(stream, eid, f, 1 << 30)
        out += [(h, got.raw_inputs) for h in got.headers]
    return out


def result(r: redis.Redis, keys: Keys, rid: str) -> Result:
    raw = r.get(keys.result(rid))
    assert raw is not None, f"no result for {rid}"
    return Result.loads(raw)


def test_tasks_go_to_their_first_model_and_pins_to_the_pinned_one(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    router = Router(r, toy_catalog, settings)
    router.setup()
    keys = router.keys
    put(r, keys, hdr("a", task="toy"))
    put(r, keys, hdr("b", model="toy-large"))
    assert router.step(block_ms=None) == 2
    [(first, inputs)] = routed(r, keys, "toy-small")
    assert first.id == "a"
    assert first.trace == [{"model": "toy-small", "rule": "cascade"}]
    assert first.routed_at is not None
    assert inputs == X  # tensors pass through byte for byte, never re-encoded
    [(pinned, _)] = routed(r, keys, "toy-large")
    assert (pinned.id, pinned.trace[0]["rule"]) == ("b", "pinned")
    assert r.xpending(keys.ingress, keynames.ROUTER_GROUP)["pending"] == 0


def test_unroutable_and_expired_requests_get_results_not_silence(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    router = Router(r, toy_catalog, settings)
    router.setup()
    keys = router.keys
    put(r, keys, hdr("u1", task="nope"))
    put(r, keys, hdr("u2", model="nope"))
    put(r, keys, hdr("late", task="toy", deadline=now_ms() - 1))
    router.step(block_ms=None)
    assert result(r, keys, "u1").error == {
        "code": "unknown_task",
        "message": "task 'nope' is not in the catalog",
    }
    assert result(r, keys, "u2").error["code"] == "unknown_model"  # type: ignore[index]
    assert result(r, keys, "late").status == "expired"
    assert r.xlen(keys.model_stream("toy-small")) == 0


def test_broken_entries_are_dead_lettered_and_answered_when_the_id_is_readable(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    router = Router(r, toy_catalog, settings)
    router.setup()
    keys = router.keys
    put(r, keys, b"\xc1 not msgpack")
    put(r, keys, wire.dumps({"id": "salvaged", "task": 42}))
    put(r, keys, hdr("noinputs", task="toy"), inputs=None)
    put(r, keys, wire.dumps({"id": "bad id!", "task": "toy"}))
    router.step(block_ms=None)
    assert r.xlen(keys.dead_letter) == 4
    assert result(r, keys, "salvaged").error["code"] == "bad_payload"  # type: ignore[index]
    assert result(r, keys, "noinputs").status == "error"
    assert r.xpending(keys.ingress, keynames.ROUTER_GROUP)["pending"] == 0
    assert r.xlen(keys.model_stream("toy-small")) == 0


def test_routers_share_the_work_and_reclaim_a_dead_routers_entries(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    fast = replace(settings, visibility_timeout_ms=100, router_batch=10)
    one, two = Router(r, toy_catalog, fast, "r1"), Router(r, toy_catalog, fast, "r2")
    one.setup()
    keys = one.keys
    for i in range(30):
        put(r, keys, hdr(f"id{i}", task="toy"))
    # A router that read 10 entries and died before acking them.
    dead = streams.read_new(r, [keys.ingress], keynames.ROUTER_GROUP, "dead", 10, None)
    assert len(dead) == 10
    one.reclaim_clock.next = two.reclaim_clock.next = float("inf")
    assert one.step(None) == 10
    assert two.step(None) == 10
    assert streamview.count(r, keys.model_stream("toy-small")) == 20
    r.execute_command(
        "XCLAIM",
        keys.ingress,
        keynames.ROUTER_GROUP,
        "dead",
        0,
        *[eid for _, (eid, _) in dead],
        "IDLE",
        10_000,
    )  # age them
    one.reclaim_clock.next = 0.0
    one.step(None)
    ids = sorted(h.id for h, _ in routed(r, keys, "toy-small"))
    assert ids == sorted(f"id{i}" for i in range(30))
    assert r.xpending(keys.ingress, keynames.ROUTER_GROUP)["pending"] == 0


def test_acknowledged_ingress_entries_are_trimmed_and_unread_ones_kept(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    router = Router(r, toy_catalog, replace(settings, router_batch=5))
    router.setup()
    keys = router.keys
    for i in range(12):
        put(r, keys, hdr(f"t{i}", task="toy"))
    router.trim_clock.next = float("inf")
    router.step(None)  # routes 5; 7 remain unread
    assert streams.trim_acknowledged(r, keys.ingress) == 5
    assert r.xlen(keys.ingress) == 7
    held = streams.read_new(r, [keys.ingress], keynames.ROUTER_GROUP, "slow", 2, None)
    assert len(held) == 2
    assert streams.trim_acknowledged(r, keys.ingress) == 0  # pending entries stay
    assert r.xlen(keys.ingress) == 7


def test_a_router_recovers_when_redis_loses_its_stream_and_group(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    import threading

    router = Router(r, toy_catalog, settings)
    keys = router.keys
    stop = threading.Event()
    thread = threading.Thread(target=router.run, args=(stop,))
    thread.start()
    try:
        put(r, keys, hdr("before", task="toy"))
        wait_for(
            lambda: streamview.count(r, keys.model_stream("toy-small")) == 1,
            30,
            "the first is routed",
        )
        r.delete(keys.ingress)  # as a restart without persistence would: NOGROUP next read
        put(r, keys, hdr("after", task="toy"))
        wait_for(
            lambda: streamview.count(r, keys.model_stream("toy-small")) == 2, 30, "routing resumed"
        )
    finally:
        stop.set()
        thread.join(timeout=10)
    assert [h.id for h, _ in routed(r, keys, "toy-small")] == ["before", "after"]
