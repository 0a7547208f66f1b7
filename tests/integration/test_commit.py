"""The batch commit script on a real Redis: first write wins, publish, add, ack per entry."""

from __future__ import annotations

import msgpack
import redis

from cascadeq.config.settings import Settings
from cascadeq.infra.commit import Commit
from cascadeq.protocol.results import PENDING


def _stream_with(r: redis.Redis, stream: str, n: int) -> list[bytes]:
    r.xgroup_create(stream, "g", id="0", mkstream=True)
    for i in range(n):
        r.xadd(stream, {b"i": str(i).encode()})
    got = r.xreadgroup("g", "c", {stream: ">"}, count=n)
    return [eid for eid, _ in got[0][1]]


def test_results_first_write_wins_and_are_published_once_per_channel(
    r: redis.Redis, settings: Settings
) -> None:
    p = settings.prefix
    ids = _stream_with(r, f"{p}:s", 3)
    r.set(f"{p}:res:a", PENDING)
    r.set(f"{p}:res:b", b"first")
    sub = r.pubsub()
    sub.subscribe(f"{p}:reply:c")
    assert sub.get_message(timeout=5)["type"] == "subscribe"
    commit = Commit(ttl_s=60)
    entries = [commit.entry(f"{p}:s", "g", eid) for eid in ids]
    commit.result(f"{p}:res:a", b"\x81\xa1k\x01", f"{p}:reply:c", entries[0])
    commit.result(f"{p}:res:b", b"second", f"{p}:reply:c", entries[1])
    commit.result(f"{p}:res:c", b"\x81\xa1k\x03", f"{p}:reply:c", entries[2])
    done = commit.send(r)
    assert (done.stored, done.acked) == (2, 3)
    assert r.get(f"{p}:res:b") == b"first"  # a real result is never overwritten
    assert r.get(f"{p}:res:a") == b"\x81\xa1k\x01"
    assert 0 < r.ttl(f"{p}:res:c") <= 60
    assert r.xpending(f"{p}:s", "g")["pending"] == 0
    msg = sub.get_message(timeout=5)
    assert msgpack.unpackb(msg["data"], raw=True) == [b"\x81\xa1k\x01", b"\x81\xa1k\x03"]
    sub.close()


def test_a_failed_effect_leaves_only_its_entries_pending(
    r: redis.Redis, settings: Settings
) -> None:
    p = settings.prefix
    ids = _stream_with(r, f"{p}:s", 3)
    r.hset(f"{p}:wrongtype", "f", "v")  # XADD to a hash fails
    commit = Commit(ttl_s=60)
    entries = [commit.entry(f"{p}:s", "g", eid) for eid in ids]
    commit.add(f"{p}:out", {b"x": b"1"}, [entries[0]], counted=(f"{p}:n:out", 1))
    commit.add(f"{p}:wrongtype", {b"x": b"2"}, [entries[1]])
    commit.result(f"{p}:wrongtype", b"r", None, entries[2])  # GET on a hash fails
    commit.depth(f"{p}:n:out")
    done = commit.send(r, also=lambda pipe: pipe.hincrby(f"{p}:counts", "n", 1))
    assert (done.acked, done.depths, done.extra) == (1, [1], [1])
    pending = r.xpending_range(f"{p}:s", "g", min="-", max="+", count=10)
    assert sorted(p["message_id"] for p in pending) == sorted(ids[1:])


def test_entries_of_two_streams_interleaved_are_acked_on_their_own_streams(
    r: redis.Redis, settings: Settings
) -> None:
    p = settings.prefix
    a, b = _stream_with(r, f"{p}:a", 2), _stream_with(r, f"{p}:b", 2)
    commit = Commit(ttl_s=60)
    for stream, eid in [(f"{p}:a", a[0]), (f"{p}:b", b[0]), (f"{p}:a", a[1]), (f"{p}:b", b[1])]:
        commit.entry(stream, "g", eid)
    r.script_flush()  # the script is loaded again on NOSCRIPT
    assert commit.send(r).acked == 4
    assert r.xpending(f"{p}:a", "g")["pending"] == r.xpending(f"{p}:b", "g")["pending"] == 0


def test_request_counters_follow_adds_and_acks(r: redis.Redis, settings: Settings) -> None:
    p = settings.prefix
    ids = _stream_with(r, f"{p}:in", 2)
    r.set(f"{p}:n:in", 7)  # two bundles: 3 and 4 requests
    commit = Commit(ttl_s=60)
    first = commit.entry(f"{p}:in", "g", ids[0], 3, f"{p}:n:in")
    second = commit.entry(f"{p}:in", "g", ids[1], 4, f"{p}:n:in")
    commit.add(f"{p}:out", {b"x": b"1"}, [first, second], counted=(f"{p}:n:out", 7))
    commit.fail(second)  # left pending: its requests stay counted where they are
    commit.depth(f"{p}:n:in")
    commit.depth(f"{p}:n:out")
    assert commit.send(r).depths == [4, 7]


def test_figures_ride_in_the_call_and_one_that_fails_fails_no_entry(
    r: redis.Redis, settings: Settings
) -> None:
    p = settings.prefix
    ids = _stream_with(r, f"{p}:s", 2)
    r.set(f"{p}:str", "x")  # HINCRBY on a string fails
    commit = Commit(ttl_s=60)
    entries = [commit.entry(f"{p}:s", "g", eid) for eid in ids]
    commit.result(f"{p}:res:a", b"\x81\xa1k\x01", None, entries[0])
    commit.add(f"{p}:out", {b"x": b"\x00" * 3, b"y": b""}, [entries[1]])
    pipe = commit.pipe
    pipe.hincrby(f"{p}:counts", "n", 3)
    pipe.hincrby(f"{p}:str", "n", 1)
    pipe.hset(f"{p}:obs", mapping={"ms": 0.1 + 0.2, "at": 7, "name": "m"})
    pipe.expire(f"{p}:obs", 30)
    assert commit.send(r).acked == 2
    assert r.hget(f"{p}:counts", "n") == b"3"
    assert r.hgetall(f"{p}:obs") == {b"ms": repr(0.1 + 0.2).encode(), b"at": b"7", b"name": b"m"}
    assert 0 < r.ttl(f"{p}:obs") <= 30
    assert r.get(f"{p}:res:a") == b"\x81\xa1k\x01"
    assert r.xrange(f"{p}:out")[0][1] == {b"x": b"\x00" * 3, b"y": b""}
