"""The slot layout: one shard's keys share a hash tag; one Redis with one shard keeps its names."""

from __future__ import annotations

import zlib

import numpy as np
from redis.crc import key_slot
from test_answers import HOP, headers

from cascadeq.config.settings import Settings
from cascadeq.infra.commit import Commit
from cascadeq.infra.slots import SlotPlan
from cascadeq.protocol import outputs
from cascadeq.protocol.keys import Keys
from cascadeq.workers.answers import OkBatch, Sure


def slot(name: str) -> int:
    return key_slot(name.encode())


def test_one_redis_with_one_shard_keeps_todays_names() -> None:
    keys = Keys("cq")
    assert (keys.ingress, keys.model_stream("m"), keys.result("a")) == (
        "cq:ingress",
        "cq:q:m:default",
        "cq:res:a",
    )
    assert (keys.dead_letter, keys.backlog(keys.ingress)) == ("cq:dlq", "cq:n:ingress")


def test_a_shards_keys_share_one_slot_and_shards_spread() -> None:
    keys = Keys("cq", shards=3, tagged=True)
    for shard in range(3):
        ingress = keys.ingress_of(shard)
        stream = keys.model_stream("m", "fast", shard=shard)
        rid = next(f"id{i}" for i in range(100) if keys.shard_of(f"id{i}") == shard)
        names = [ingress, keys.backlog(ingress), stream, keys.backlog(stream)]
        names += [keys.result(rid), keys.digest(rid), keys.dead_letter_of(shard)]
        assert {slot(n) for n in names} == {slot(ingress)}
        assert keys.result_prefix(shard) + rid == keys.result(rid)
        assert keys.shard_of_stream(stream) == shard
        assert keys.owns_stream(stream)
    assert len({slot(i) for i in keys.ingresses}) == 3
    assert keys.shard_of("abc") == zlib.crc32(b"abc") % 3  # any client finds a result by id


def test_a_prefix_with_its_own_tag_keeps_every_shard_in_one_slot() -> None:
    keys = Keys("{cq}", shards=2, tagged=True)
    assert slot(keys.ingress_of(0)) == slot(keys.ingress_of(1)) == slot(keys.result("x"))


def test_settings_name_the_cluster_and_split_the_bounds() -> None:
    s = Settings(redis_url="redis://h:1", cluster=1, ingress_shards=4, ingress_max_depth=10)
    assert s.require_redis_url() == "redis+cluster://h:1"
    assert s.keys().tagged
    assert s.shard_bounds()[0] == 3  # ceil(10 / 4): a full shard refuses, the total holds
    assert not Settings(redis_url="redis://h:1").keys().tagged


def test_a_batch_commits_on_its_shards_slot_with_figures_beside_it() -> None:
    keys = Keys("cq", shards=2, tagged=True)
    rid = next(f"id{i}" for i in range(100) if keys.shard_of(f"id{i}") == 1)
    stream = keys.model_stream("m", shard=1)
    c = Commit(60)
    e = c.entry(stream, "workers", b"1-0", 1, keys.backlog(stream))
    c.result(keys.result(rid), b"\x90", "cq:reply:c", e)
    c.command("HINCRBY", keys.routing_counts, "x", 1)
    plan = SlotPlan(c)
    assert not plan.early  # the result and the ack share the shard's slot: one call
    assert set(plan.calls) == {slot(stream), slot(keys.routing_counts)}


def test_an_effect_on_another_slot_runs_first_and_reports_failures() -> None:
    keys = Keys("cq", shards=2, tagged=True)
    other = next(f"id{i}" for i in range(100) if keys.shard_of(f"id{i}") == 0)
    stream = keys.model_stream("m", shard=1)
    c = Commit(60)
    e1 = c.entry(stream, "workers", b"1-0")
    c.entry(keys.model_stream("m", shard=0), "workers", b"1-1")
    c.result(keys.result(other), b"\x90", None, e1)  # entry 1's result lives on shard 0
    plan = SlotPlan(c)
    assert set(plan.early) == {slot(keys.result(other))}
    assert [call.starts for call in plan.calls.values()] == [[1], [2]]  # batch numbering kept


def test_a_block_of_results_is_keyed_by_each_ids_shard() -> None:
    """The worker's block path names result keys per id when there are shards (a shard's
    prefix would file other shards' results where no client looks)."""
    keys = Keys("cq", shards=3, tagged=True)
    out = np.random.default_rng(1).random((6, 4)).astype(np.float32)
    hs = headers([{"model": "small", "rule": "pinned"}], 6, seed=1, id_len=32)
    batch = OkBatch(
        "small", "probabilities", outputs.RowSlicer(out), 0.1, 6, {}, 1.0e12,
        keys.result_prefix(), keys.result,
    )  # fmt: skip
    sure = Sure()
    for i, h in enumerate(hs):
        sure.add(i, i, 1, h, "top")
    done = batch.encode(sure, HOP, lambda _m: None, lambda _h: 0)
    assert done.keys == [keys.result(h.id) for h in hs]
    assert len({keys.shard_of(h.id) for h in hs}) > 1  # the ids do span shards
