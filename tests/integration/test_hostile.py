"""Property tests: whatever bytes arrive on a stream, decoding answers, never crashes.

A router or worker process must survive any entry a buggy or hostile client can write;
these throw arbitrary bytes and arbitrary msgpack structures at the decoders.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import replace

import msgpack
import numpy as np
import pytest
import redis
import streamview
from hypothesis import given, settings
from hypothesis import strategies as st

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.protocol import wire
from cascadeq.protocol.keys import InvalidName
from cascadeq.protocol.messages import (
    HEADER_FIELD,
    INPUTS_FIELD,
    Header,
    Result,
    now_ms,
    salvage_id,
)
from cascadeq.workers.batcher import Bad, Item, decode

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.binary(max_size=20),
)
ext = st.builds(msgpack.ExtType, st.integers(min_value=0, max_value=127), st.binary(max_size=40))
values = st.recursive(
    st.one_of(scalars, ext),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.binary(max_size=8)), inner, max_size=4),
    ),
    max_leaves=12,
)
header_keys = st.sampled_from([*Header.__struct_fields__, "extra"])
headers = st.dictionaries(header_keys, values, max_size=12)


SPEC = Catalog.loads(
    '[models.m]\npath = "m.onnx"\noutput = "p"\n'
    'inputs = [{ name = "input", dtype = "float32", shape = [-1, 4] }]\n',
    check_files=False,
).models["m"]
arrays = st.builds(
    lambda shape, dtype, fill: np.full(shape, fill, dtype=dtype),
    st.one_of(
        st.lists(st.integers(0, 5), max_size=3).map(tuple), st.integers(0, 3).map(lambda k: (k, 4))
    ),
    st.sampled_from(["float32", "float64", "int64", "bool"]),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
)


def packed(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), values.map(packed)))
def test_any_bytes_decode_or_raise_wire_error(data: bytes) -> None:
    with contextlib.suppress(wire.WireError):
        wire.loads(data)


@settings(max_examples=300, deadline=None)
@given(headers.map(packed))
def test_any_header_decodes_or_raises_a_clear_error(data: bytes) -> None:
    try:
        header = Header.loads(data)
    except (wire.WireError, InvalidName):
        salvage_id(data)  # must not raise either
        return
    Header.loads(header.dumps())  # what decoded re-encodes and decodes the same way


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
@settings(max_examples=300, deadline=None)
@given(
    header=st.one_of(
        st.builds(lambda t: Header(id="ok", model="m", submitted_at=t).dumps(), st.floats(0, 1e12)),
        headers.map(packed),
        st.binary(max_size=64),
    ),
    inputs=st.one_of(
        st.dictionaries(
            st.one_of(st.just("input"), st.text(max_size=4), st.binary(max_size=4)),
            values,
            max_size=3,
        ).map(packed),
        st.dictionaries(st.just("input"), arrays, min_size=1).map(wire.dumps),
        st.binary(max_size=64),
    ),
)
def test_the_worker_decoder_returns_an_item_or_a_bad_entry_for_anything(
    header: bytes, inputs: bytes
) -> None:
    got = decode("s", (b"1-0", {HEADER_FIELD: header, INPUTS_FIELD: inputs}), SPEC, 0.0, 10_000)
    assert isinstance(got, Item | Bad)
    if isinstance(got, Item) and got.keep.any():
        assert got.samples >= 1
        assert got.kept_inputs()["input"].dtype == np.float32
    elif isinstance(got, Item):  # every request failed alone, each with its reason
        assert len(got.bad) == got.bundle.size


# -- the same, end to end: raw entries a hostile client writes onto a worker's stream ----

ROW = np.zeros((1, 64), np.float32)


def raw_array(dtype: str, shape: list[int], buf: bytes) -> msgpack.ExtType:
    """An array extension exactly as given: the encoder would never write a lying one."""
    return msgpack.ExtType(wire.EXT_NDARRAY, packed([dtype, shape, buf]))


def as_ext(value: object) -> object:
    if isinstance(value, np.ndarray):
        return raw_array(value.dtype.str, list(value.shape), value.tobytes())
    return value


def good_header(rid: str) -> dict[str, object]:
    return {"id": rid, "model": "digits-small", "submitted_at": now_ms()}  # pinned: answered here


HOSTILE = {  # name: (header changes (None drops), inputs, code, match; None: no readable id)
    "no_id": ({"id": None}, {"input": ROW}, "bad_payload", None),
    "no_target": ({"model": None}, {"input": ROW}, "bad_payload", "neither a task nor a model"),
    "key_chars": ({"id": "x:res:*"}, {"input": ROW}, "bad_payload", None),
    "ext_header": (
        {"routed_at": msgpack.ExtType(9, b"")},
        {"input": ROW},
        "bad_payload",
        "routed_at",
    ),
    "minus_inf_submitted": ({"submitted_at": -math.inf}, {"input": ROW}, "bad_payload", "epoch"),
    "nan_deadline": ({"deadline": math.nan}, {"input": ROW}, "bad_payload", "'deadline'"),
    "none_hop_time": (
        {"trace": [{"model": "digits-small", "queue_ms": None}]},
        {"input": ROW},
        "bad_payload",
        "'queue_ms' must be a number",
    ),
    "wrong_name": ({}, {"pixels": ROW}, "bad_input", "takes inputs"),
    "rank_1": ({}, {"input": ROW[0]}, "bad_input", "rank"),
    "rank_3": ({}, {"input": ROW[None]}, "bad_input", "rank"),
    "inf": ({}, {"input": np.full((1, 64), np.inf, np.float32)}, "bad_input", "NaN or inf"),
    "huge_shape": ({}, {"input": raw_array("<f4", [2**40, 64], bytes(256))}, "bad_input", "needs"),
    "negative_batch": ({}, {"input": raw_array("<f4", [-3, 64], b"")}, "bad_input", "shape"),
    "empty_batch": ({}, {"input": np.zeros((0, 64), np.float32)}, "bad_input", "empty batch"),
    "foreign_ext": ({}, {"input": msgpack.ExtType(7, b"x")}, "bad_input", "extension type 7"),
    "oversized": ({}, {"input": np.zeros((64, 64), np.float32)}, "too_large", "exceed"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_entry_on_a_worker_stream_fails_alone_and_reaches_no_other_key(
    r: redis.Redis, settings: Settings, catalog: Catalog, case: str
) -> None:
    from cascadeq.workers import ModelWorker

    fields, inputs, code, match = HOSTILE[case]
    small = replace(settings, max_payload_bytes=4096)  # the "oversized" case is 16 KiB
    worker = ModelWorker(r, catalog, catalog.models["digits-small"], small, "w1")
    keys = worker.keys
    stream = keys.model_stream("digits-small")
    good = wire.dumps_inputs({"input": ROW})
    r.xadd(stream, {HEADER_FIELD: wire.dumps(good_header("before")), INPUTS_FIELD: good})
    header = {k: v for k, v in {**good_header("hostile"), **fields}.items() if v is not None}
    hostile = {k: as_ext(v) for k, v in inputs.items()}
    r.xadd(stream, {HEADER_FIELD: packed(header), INPUTS_FIELD: packed(hostile)})
    r.xadd(stream, {HEADER_FIELD: wire.dumps(good_header("after")), INPUTS_FIELD: good})
    worker.setup()
    while worker.step(block_ms=None):
        pass
    [dead] = streamview.dead_letters(r, keys)
    assert dead.code == code
    answered = {k.decode().rsplit(":", 1)[-1] for k in r.scan_iter(f"{keys.prefix}:res:*")}
    if match is None:  # no id to answer under: dead-lettered only
        assert answered == {"before", "after"}
    else:
        assert answered == {"before", "after", str(header["id"])}
        got = Result.loads(r.get(keys.result(str(header["id"]))) or b"")
        assert got.error is not None
        assert (got.error["code"], match in got.error["message"]) == (code, True), got.error
    assert all(Result.loads(r.get(keys.result(i)) or b"").ok for i in ("before", "after"))
    assert r.xpending(stream, "workers")["pending"] == 0
