"""Dead-letter operator commands against a real Redis, a real worker and the real CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis
from conftest import run_cli

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.ops import dlq
from cascadeq.protocol import keys as keynames
from cascadeq.protocol import wire
from cascadeq.protocol.keys import Keys
from cascadeq.protocol.messages import HEADER_FIELD, INPUTS_FIELD, Header, Result, now_ms
from cascadeq.protocol.results import is_pending
from cascadeq.router import Router
from cascadeq.workers import ModelWorker

TTL = 600
TOY_X = wire.dumps_inputs({"input": np.ones((1, 4), np.float32)})


def stored(r: redis.Redis, keys: Keys, rid: str) -> Result:
    raw = r.get(keys.result(rid))
    assert raw is not None, f"no result for {rid}"
    return Result.loads(raw)


def poison(r: redis.Redis, keys: Keys, rid: str, x: np.ndarray, deliveries: int) -> str:
    """An entry crashing consumers took ``deliveries`` times and never acknowledged."""
    stream = keys.model_stream("digits-small")
    header = Header(id=rid, model="digits-small", submitted_at=now_ms(), trace=[])
    r.xadd(stream, {HEADER_FIELD: header.dumps(), INPUTS_FIELD: wire.dumps_inputs({"input": x})})
    r.xreadgroup(keynames.WORKER_GROUP, "crashed", {stream: ">"})
    eid = r.xrange(stream)[-1][0]
    r.execute_command(
        "XCLAIM", stream, keynames.WORKER_GROUP, "crashed", 0, eid, "IDLE", 60_000,
        "RETRYCOUNT", deliveries,
    )  # fmt: skip
    return stream


def dead_letter_one(r: redis.Redis, settings: Settings, toy_catalog: Catalog) -> Router:
    """Router-side dead letters: one without inputs (not replayable), one forged broken."""
    router = Router(r, toy_catalog, settings)
    router.setup()
    header = Header(id="noinputs", task="toy", submitted_at=now_ms()).dumps()
    r.xadd(router.keys.ingress, {HEADER_FIELD: header})
    r.xadd(router.keys.ingress, {HEADER_FIELD: b"\xc1 junk", INPUTS_FIELD: TOY_X})
    router.step(block_ms=None)
    return router


def test_a_replayed_poison_entry_completes_through_a_real_worker(
    r: redis.Redis, settings: Settings, catalog: Catalog, digits_dir: Path
) -> None:
    x = np.load(digits_dir / "digits_test.npz")["X"][:1]
    fast = replace(settings, max_deliveries=3)
    worker = ModelWorker(r, catalog, catalog.models["digits-small"], fast, "survivor")
    worker.setup()
    keys = worker.keys
    stream = poison(r, keys, "p1", x, deliveries=3)
    worker.step(block_ms=None)  # reclaims it, sees 3 deliveries: dead-lettered
    assert stored(r, keys, "p1").error == {
        "code": "dead_letter",
        "message": "delivered 3 times; dead-lettered",
    }
    [letter] = dlq.list_letters(r, keys, 10)
    assert (letter.stream, letter.code, letter.request_id) == (stream, "dead_letter", "p1")
    assert letter.detail()["inputs"] == {"input": {"dtype": "<f4", "shape": [1, 64]}}

    new_id = dlq.replay(r, keys, letter.id, TTL)
    assert r.xrange(stream, new_id, new_id)[0][1][INPUTS_FIELD] == letter.fields[INPUTS_FIELD]
    assert dlq.count(r, keys) == 0
    assert is_pending(r.get(keys.result("p1")))  # not ready again, so the new attempt answers
    while worker.step(block_ms=None):  # the crash is fixed: a healthy worker serves it
        pass
    answer = stored(r, keys, "p1")
    assert answer.ok
    assert answer.model == "digits-small"
    assert r.xpending(stream, keynames.WORKER_GROUP)["pending"] == 0


def test_a_record_without_its_inputs_is_refused_and_kept(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    keys = dead_letter_one(r, settings, toy_catalog).keys
    incomplete = next(d for d in dlq.list_letters(r, keys, 10) if d.request_id == "noinputs")
    assert incomplete.missing == ["x"]
    with pytest.raises(dlq.DeadLetterError, match="lacks the x field"):
        dlq.replay(r, keys, incomplete.id, TTL)
    assert dlq.count(r, keys) == 2
    with pytest.raises(dlq.DeadLetterError, match="no dead letter 1-0"):
        dlq.replay(r, keys, "1-0", TTL)
    with pytest.raises(dlq.DeadLetterError, match="not a stream entry id"):
        dlq.show(r, keys, "cq:res:x")


def test_replay_refuses_a_request_already_answered_ok_and_a_foreign_stream(
    r: redis.Redis, settings: Settings
) -> None:
    keys = Keys(settings.prefix)
    header = Header(id="done", task="toy", submitted_at=now_ms()).dumps()
    fields = {HEADER_FIELD: header, INPUTS_FIELD: TOY_X}
    r.set(keys.result("done"), Result(id="done", status="ok").dumps())
    r.xadd(keys.dead_letter, {**fields, b"stream": keys.ingress.encode(), b"code": b"x"})
    r.xadd(keys.dead_letter, {**fields, b"stream": b"elsewhere", b"code": b"x"})
    answered, foreign = dlq.list_letters(r, keys, 10)
    with pytest.raises(dlq.DeadLetterError, match="already has an ok result"):
        dlq.replay(r, keys, answered.id, TTL)
    r.delete(keys.result("done"))
    with pytest.raises(dlq.DeadLetterError, match="not an ingress or model stream"):
        dlq.replay(r, keys, foreign.id, TTL)
    assert r.exists("elsewhere") == 0
    assert dlq.count(r, keys) == 2


def test_replay_all_and_purge_cover_the_records_present_when_they_start(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog
) -> None:
    router = dead_letter_one(r, settings, toy_catalog)
    keys = router.keys
    report = dlq.replay_all(r, keys, TTL)
    assert len(report.replayed) == 1  # the forged one goes back to ingress...
    [(_, why)] = report.skipped
    assert "lacks the x field" in why
    router.step(block_ms=None)  # ...and is dead-lettered again: a new record, not revisited
    assert dlq.count(r, keys) == 2
    assert dlq.purge(r, keys) == 2
    assert dlq.count(r, keys) == 0
    assert dlq.purge(r, keys) == 0


def test_the_dlq_commands_from_the_shell(
    r: redis.Redis, settings: Settings, toy_catalog: Catalog, env: dict[str, str]
) -> None:
    keys = dead_letter_one(r, settings, toy_catalog).keys
    listed = run_cli(env, "dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    incomplete, forged = json.loads(listed.stdout)
    assert (incomplete["request_id"], incomplete["replayable"]) == ("noinputs", False)
    assert forged["code"] == "bad_payload"
    shown = run_cli(env, "dlq", "show", incomplete["id"])
    assert json.loads(shown.stdout)["header"]["id"] == "noinputs"
    refused = run_cli(env, "dlq", "replay", incomplete["id"])
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1
    assert "lacks the x field" in refused.stderr
    replayed = run_cli(env, "dlq", "replay", forged["id"])
    assert replayed.returncode == 0, replayed.stderr
    assert r.xrange(keys.ingress, replayed.stdout.strip(), "+")[0][1][INPUTS_FIELD] == TOY_X
    unconfirmed = run_cli(env, "dlq", "purge")
    assert unconfirmed.returncode == 1
    assert "1 dead letter(s) would be deleted" in unconfirmed.stderr
    assert run_cli(env, "dlq", "purge", "--yes").returncode == 0
    assert run_cli(env, "dlq", "list", "--json").stdout.strip() == "[]"


def test_with_ingress_shards_the_commands_cover_every_shards_dead_letters(
    r: redis.Redis, settings: Settings
) -> None:
    """Each shard keeps its dead letters in its own stream (its slot on a cluster)."""
    keys = replace(settings, ingress_shards=3).keys()
    ids = []
    for shard in (0, 2):
        rid = f"sharded{shard}"
        header = Header(id=rid, task="toy", submitted_at=now_ms()).dumps()
        fields = {HEADER_FIELD: header, INPUTS_FIELD: TOY_X}
        stream = keys.ingress_of(shard).encode()
        ids.append(r.xadd(keys.dead_letter_of(shard), {**fields, b"stream": stream, b"code": b"x"}))
    assert dlq.count(r, keys) == 2
    named = [f"{shard}/{i.decode()}" for shard, i in zip((0, 2), ids, strict=True)]
    assert [letter.id for letter in dlq.list_letters(r, keys, 10)] == named  # shard/id: ids of
    new = dlq.replay(r, keys, named[1], TTL)  # two shards' streams may be the same
    assert new
    assert r.xlen(keys.ingress_of(2)) == 1
    assert dlq.count(r, keys) == 1
    assert dlq.purge(r, keys) == 1
    assert dlq.count(r, keys) == 0
