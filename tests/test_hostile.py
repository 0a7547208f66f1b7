"""Property tests: whatever bytes arrive on a stream, decoding answers, never crashes.

A router or worker process must survive any entry a buggy or hostile client can write;
these throw arbitrary bytes and arbitrary msgpack structures at the decoders.
"""

from __future__ import annotations

import contextlib

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cascadeq import wire
from cascadeq.catalog import Catalog
from cascadeq.keys import InvalidName
from cascadeq.messages import HEADER_FIELD, INPUTS_FIELD, Header, salvage_id
from workers.batcher import Bad, Item, decode

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
header_keys = st.sampled_from(
    [
        "id",
        "task",
        "model",
        "tier",
        "priority",
        "deadline",
        "submitted_at",
        "reply_to",
        "trace",
        "attempt",
        "stage",
        "routed_at",
        "extra",
    ]
)
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
    if isinstance(got, Item):
        assert got.samples >= 1
        assert got.inputs["input"].dtype == np.float32
