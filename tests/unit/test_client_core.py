"""The client's sans-I/O core and the result-key protocol, driven by hand: each command the
core yields is answered with a reply written here, so no Redis is needed."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.producer import Rejected, Request, UnknownRequest
from cascadeq.producer.core import BACKOFF_S, ClientCore, Command, Listening, Ops, T
from cascadeq.protocol import lua, results
from cascadeq.protocol.messages import Result

CATALOG = """
[models.toy]
path = "toy.onnx"
output = "probabilities"
inputs = [{ name = "input", dtype = "float32", shape = [-1, 4] }]
"""


class Core(ClientCore[str]):
    """The core with no connections: a test answers its commands."""

    def _open(self) -> None:
        self.sent: list[Command] = []


def core() -> Core:
    catalog = Catalog.loads(CATALOG, source="toy.toml", check_files=False)
    return Core("redis://unused", settings=Settings(prefix="t"), catalog=catalog)


def run(c: Core, ops: Ops[T], *replies: Any) -> T:
    """Answer the commands in order with these replies; the operation's value."""
    reply: Any = None
    answers = iter(replies)
    try:
        while True:
            c.sent.append(ops.send(reply))
            reply = next(answers)
    except StopIteration as done:
        value: T = done.value
        return value


def req(rid: str) -> Request:
    return Request({"input": np.zeros((1, 4), np.float32)}, model="toy", id=rid)


def test_result_tells_not_ready_from_unknown_and_decodes_a_stored_result() -> None:
    c = core()
    assert run(c, c._result_ops("a"), results.PENDING) is None
    with pytest.raises(UnknownRequest, match="unknown id b"):
        run(c, c._result_ops("b"), None)
    stored = Result(id="c", status="ok").dumps()
    got = run(c, c._result_ops("c"), stored)
    assert got is not None
    assert got.id == "c"
    assert [cmd.args for cmd in c.sent] == [("GET", c.keys.result(r)) for r in "abc"]


def test_submit_many_sends_one_script_call_and_reports_duplicate_ids() -> None:
    c = core()
    assert run(c, c._submit_many_ops([req("a"), req("b")]), [1, 2, [], [], [], 0, 0]) == ["a", "b"]
    (cmd,) = c.sent
    assert cmd.args[:2] == ("EVALSHA", lua.load("submit").sha)
    assert cmd.fallback()[:2] == ("EVAL", lua.load("submit").text)
    with pytest.raises(Rejected) as refused:
        run(c, c._submit_many_ops([req("c"), req("d")]), [0, 0, [2], [], [], 0, 0])
    assert refused.value.code == "duplicate_id"
    assert refused.value.ids == ["d"]


def test_a_resubscribe_rereads_outstanding_results_and_a_lost_channel_backs_off() -> None:
    c = core()
    c._inbox.register(["a", "b"])
    listening = Listening(c, sweep_s=math.inf)  # one sweep, at once: no clock in the test
    run(c, listening.heard(None), [[None, None]])
    run(c, listening.heard({"type": "subscribe", "data": 1}), [[results.PENDING, None]])
    assert [cmd.batch for cmd in c.sent] == [[("MGET", c.keys.result("a"), c.keys.result("b"))]] * 2
    run(c, listening.heard(None))  # neither resubscribed nor a sweep due: no command
    assert len(c.sent) == 2
    waits = [listening.lost(ConnectionError()) for _ in range(8)]
    assert waits[0] == BACKOFF_S[0]
    assert waits == sorted(waits)
    assert waits[-1] == BACKOFF_S[1]
    run(c, listening.heard(None))
    assert listening.lost(ConnectionError()) == BACKOFF_S[0]  # reset once the channel works


def test_the_publish_format_round_trips_one_result_or_a_batch() -> None:
    payloads = [Result(id=f"r{i}", status="ok").dumps() for i in range(3)]
    assert results.join_published(payloads[:1]) == payloads[0]
    for some in (payloads[:1], payloads):
        assert results.split_published(results.join_published(some)) == some


def test_stored_values_are_read_alike_everywhere() -> None:
    stored = Result(id="c", status="ok").dumps()
    assert results.answered(["a", "b", "c"], [None, results.PENDING, stored]) == [("c", stored)]
    with pytest.raises(results.Unknown):
        results.read_stored(None)
    assert results.read_stored(results.PENDING) is None
    ids = [str(i) for i in range(results.MGET_CHUNK + 1)]
    assert [len(cmd) - 1 for cmd in results.mget_commands(core().keys, ids)] == [
        results.MGET_CHUNK,
        1,
    ]


def test_the_lua_scripts_use_the_same_placeholder() -> None:
    assert results.PENDING[0] == 0xC1
    assert "string.char(0xC1)" in lua.load("submit").text
    assert "string.byte(cur, 1) ~= 0xC1" in lua.load("commit").text
    assert "string.byte(cur, 1) ~= 0xC1" in lua.load("store_once").text
    assert "string.char(0xC1)" in lua.load("dlq_replay").text
