"""A batch's ok results built a block at a time are, byte for byte, the results built one
at a time: every trace shape, output shape and number a result can hold."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from cascadeq.protocol import outputs
from cascadeq.protocol.bundle import Header
from cascadeq.protocol.keys import Keys
from cascadeq.protocol.messages import Result
from cascadeq.workers import outcome
from cascadeq.workers.answers import OkBatch, Sure

MODEL, OUTPUT = "small", "probabilities"
NOW = 1_796_000_000_123.25
HOP = {"queue_ms": 1.234, "batch_wait_ms": 0.5, "compute_ms": 0.171, "batch_size": 9}


def one_at_a_time(
    header: Header, conf: float | None, start: int, rows: int, out: np.ndarray, info: dict[str, Any]
) -> bytes:
    """What the worker wrote per request before blocks: its hop, timings, one encode."""
    trace = header.trace
    last = trace[-1] if trace else None
    if last is None or last.get("model") != MODEL or "confidence" in last:
        last = {"model": MODEL, "rule": "direct"}
        trace.append(last)
    last["confidence"] = conf
    last.update(HOP)
    times = outcome.timings(header, NOW)
    ext = outputs.RowSlicer(out).ext(start, start + rows)
    record = outputs.ResultRecord(
        header.id, "ok", {OUTPUT: ext}, MODEL, trace, None, times, int(HOP["batch_size"]), info
    )
    return outputs.encode(record)


TRACES: list[list[dict[str, Any]]] = [
    [{"model": MODEL, "rule": "pinned"}],
    [],
    [{"model": "other", "rule": "cascade"}],
    [{"model": MODEL, "rule": "pinned", "confidence": 0.9}],  # answered here already: a new hop
    [{"model": MODEL, "queue_ms": 5, "rule": "x", "batch_size": 2**40}],  # keys updated in place
    [
        {
            "model": "tiny",
            "rule": "cascade",
            "confidence": 0.25,
            "queue_ms": 1.5,
            "batch_wait_ms": 2,
            "compute_ms": 0.125,
            "batch_size": 64,
        },
        {"model": MODEL, "rule": "escalate", "tier": "free", "p_hard": None},
    ],
]


def headers(
    trace: list[dict[str, Any]], n: int, seed: int, id_len: int | None = None
) -> list[Header]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        routed = None if i % 3 == 0 else NOW - float(rng.uniform(0, 50))
        submitted = NOW + 10.0 if i % 7 == 3 else NOW - float(rng.uniform(0, 100))
        length = id_len or 1 + (i * 13) % 64  # 1..64 characters
        rid = (f"{i:02d}" + "r" * 64)[:length]
        out.append(
            Header(
                id=rid,
                model=MODEL,
                submitted_at=submitted,
                routed_at=routed,
                reply_to=f"c{i % 3}",
                trace=copy.deepcopy(trace),
            )
        )
    return out


@pytest.mark.parametrize("trace", TRACES)
@pytest.mark.parametrize(
    "out",
    [
        np.random.default_rng(1).random((12, 10), dtype=np.float32),
        np.random.default_rng(2).random((12, 3, 2)).astype(">f8"),  # big-endian, 3-d
        np.arange(12, dtype=np.int64),  # one number per row
        np.zeros((12, 0), np.float32),  # empty rows
    ],
    ids=["f32", "f64be-3d", "i64-1d", "empty"],
)
@pytest.mark.parametrize("confident", [True, False])
@pytest.mark.parametrize("alike", [False, True], ids=["mixed", "alike"])
def test_blocks_are_the_bytes_one_at_a_time_gives(
    trace: list[dict[str, Any]], out: np.ndarray, confident: bool, alike: bool
) -> None:
    """Mixed: a group per row count and a block per id length; alike: one block."""
    rows = [1] * 12 if alike else [1, 1, 3, 1, 2, 1, 3]  # 12 rows
    hs = headers(trace, len(rows), seed=len(trace), id_len=32 if alike else None)
    confs = np.random.default_rng(3).random(len(rows))
    info = {"padding_overhead": 1.25}
    keys = Keys("cq")
    batch = OkBatch(MODEL, OUTPUT, outputs.RowSlicer(out), 0.171, 9, info, NOW, keys.result(""))
    starts = np.concatenate([[0], np.cumsum(rows)[:-1]]).tolist()
    sure = Sure()
    for i, h in enumerate(hs):
        sure.add(i, starts[i], rows[i], h, "top")
    done = batch.encode(
        sure, HOP, lambda _m: confs if confident else None, lambda h: int(h.reply_to[1:])
    )
    assert done.left == []
    assert len(done.keys) == len(done.payloads) == len(done.channels) == len(hs)
    got = dict(zip(done.keys, done.payloads, strict=True))
    channels = dict(zip(done.keys, done.channels, strict=True))
    assert all(channels[keys.result(h.id)] == int(h.reply_to[1:]) for h in hs)
    for i, h in enumerate(hs):
        conf = float(confs[i]) if confident else None
        want = one_at_a_time(h, conf, starts[i], rows[i], out, info)
        assert got[keys.result(h.id)] == want
        Result.loads(want)  # and clients read it
    by_id = {h.id: outcome.timings(h, NOW)["total_ms"] for h in hs}  # hops already added
    assert sorted(np.concatenate(done.totals).tolist()) == sorted(by_id.values())


@pytest.mark.parametrize("at", [-2, -1], ids=["escalated-into-this", "answered-before"])
def test_requests_escalated_from_one_batch_share_a_template_and_keep_their_confidence(
    at: int,
) -> None:
    """Each request's trace holds its own confidence at the stage it left; the block
    writes it there, and one template serves all (else a template per request)."""
    trace = copy.deepcopy(TRACES[-1]) if at == -2 else [copy.deepcopy(TRACES[-1][0])]
    hs = headers(trace, 12, seed=5, id_len=32)
    confs = np.random.default_rng(6).random(12)
    for i, h in enumerate(hs):
        h.trace[at]["confidence"] = float(np.random.default_rng(i).random())
    hs[3].trace[at]["confidence"] = None  # no confidence there: another template
    out = np.random.default_rng(1).random((12, 10), dtype=np.float32)
    keys = Keys("cq")
    batch = OkBatch(MODEL, OUTPUT, outputs.RowSlicer(out), 0.171, 9, {}, NOW, keys.result(""))
    sure = Sure()
    for i, h in enumerate(hs):
        sure.add(i, i, 1, h, "top")
    done = batch.encode(sure, HOP, lambda _m: confs, lambda h: 0)
    assert done.left == []
    assert len(batch.templates) == 2
    got = dict(zip(done.keys, done.payloads, strict=True))
    for i, h in enumerate(hs):
        want = one_at_a_time(copy.deepcopy(h), float(confs[i]), i, 1, out, {})
        assert got[keys.result(h.id)] == want
        path = Result.loads(want).path
        assert path[len(trace) + at]["confidence"] == h.trace[at]["confidence"]


def test_a_trace_holding_a_sentinel_is_left_to_encode_one_at_a_time() -> None:
    sentinel = outputs._SENTINELS["queue_ms"]
    hs = headers([{"model": "tiny", "rule": "cascade", "queue_ms": sentinel}], 2, seed=0)
    hs[1].trace = [{"model": MODEL, "rule": "pinned"}]
    out = np.zeros((2, 4), np.float32)
    batch = OkBatch(MODEL, OUTPUT, outputs.RowSlicer(out), 0.171, 9, {}, NOW, "cq:res:")
    sure = Sure()
    for i, h in enumerate(hs):
        sure.add(i, i, 1, h, "top")
    done = batch.encode(sure, HOP, lambda _m: None, lambda _h: 0)
    assert done.left == [0]
    assert done.keys == [Keys("cq").result(hs[1].id)]
