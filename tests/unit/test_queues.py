"""The one backlog reader: the commands it queues and what their replies mean."""

from __future__ import annotations

from typing import Any

import redis

from cascadeq.infra.queues import BacklogRead, Lane
from cascadeq.protocol.keys import WORKER_GROUP, Keys

KEYS = Keys("cq")
STREAMS = ("cq:q:a:default", "cq:q:b:default")


class Recorder:
    """Stands for a pipeline: keeps the commands queued on it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def xinfo_groups(self, name: str) -> None:
        self.calls.append(("xinfo_groups", name))

    def xlen(self, name: str) -> None:
        self.calls.append(("xlen", name))

    def get(self, name: str) -> None:
        self.calls.append(("get", name))


def group(**fields: Any) -> dict[str, Any]:
    return {"name": WORKER_GROUP.encode(), "consumers": 2, "pending": 1, **fields}


def test_each_stream_is_read_as_asked_in_order() -> None:
    pipe = Recorder()
    BacklogRead(KEYS, STREAMS, length=True).queue(pipe)
    assert pipe.calls == [
        (cmd, name)
        for s in STREAMS
        for cmd, name in (("xinfo_groups", s), ("xlen", s), ("get", KEYS.backlog(s)))
    ]
    pipe = Recorder()
    BacklogRead(KEYS, STREAMS, groups=False).queue(pipe)
    assert pipe.calls == [("get", KEYS.backlog(s)) for s in STREAMS]


def test_replies_of_redis_7_and_6_2_and_of_a_stream_not_there_yet() -> None:
    missing = redis.ResponseError("no such key")
    replies = [[group(lag=3)], 5, b"7", [group()], 4, b"2"]  # 6.2: no lag in XINFO GROUPS
    seven, six = BacklogRead(KEYS, STREAMS, length=True).lanes(iter(replies))
    assert seven == Lane(depth=5, lag=3, pending=1, consumers=2, requests=7)
    assert six == Lane(depth=4, lag=None, pending=1, consumers=2, requests=2)
    [gone] = BacklogRead(KEYS, STREAMS[:1], length=True).lanes(iter([missing, missing, None]))
    assert gone == Lane()


def test_counters_alone_give_requests_and_claim_no_lag() -> None:
    lanes = BacklogRead(KEYS, STREAMS, groups=False).lanes(iter([b"3", None]))
    assert [lane.requests for lane in lanes] == [3, 0]
    assert all(lane.lag is None and lane.consumers == 0 for lane in lanes)
