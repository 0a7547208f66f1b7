"""FanIn's read-ahead on a real Redis: what it holds is known, so a reclaim can leave it."""

from __future__ import annotations

import uuid

import redis
from conftest import wait_for

from cascadeq.infra import streams
from cascadeq.infra.fanin import FanIn

GROUP = "g"


def test_replies_read_ahead_are_held_until_taken(r: redis.Redis) -> None:
    names = [f"fanin-{uuid.uuid4().hex[:6]}-{i}" for i in range(2)]
    for name in names:
        streams.ensure_group(r, name, GROUP)
    read = FanIn(r, [[name] for name in names], GROUP, "c1", block_ms=50)
    try:
        assert read(0, None) == []  # starts the threads, takes nothing
        first = r.xadd(names[0], {"f": "1"})
        second = r.xadd(names[1], {"f": "2"})
        wait_for(lambda: read.ready.qsize() == 2, 10, "both threads hold a reply")
        assert read.held(names[0]) == {first}
        assert read.held(names[1]) == {second}
        got = read(1, None)  # one entry taken: the other stays held
        assert len(got) == 1
        taken, kept = (names[0], names[1]) if got[0][0] == names[0] else (names[1], names[0])
        assert read.held(taken) == set()
        assert read.held(kept) == {first if kept == names[0] else second}
    finally:
        read.close()
