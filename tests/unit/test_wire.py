from __future__ import annotations

import msgpack
import numpy as np
import pytest

from cascadeq.protocol import wire
from cascadeq.protocol.messages import Header, Result

DTYPES = [
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0,), (3, 0), (1,), (2, 3), (2, 3, 4, 1)])
def test_array_round_trip_every_allowed_dtype(dtype: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    arr = (rng.random(shape) * 100).astype(dtype)
    back = wire.loads(wire.dumps({"a": arr}))["a"]
    assert back.dtype == arr.dtype
    assert back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


def test_large_array_round_trip() -> None:
    arr = np.arange(4_000_000, dtype=np.float32).reshape(1000, 4000)
    np.testing.assert_array_equal(wire.loads(wire.dumps(arr)), arr)


def test_non_contiguous_and_big_endian_arrays_are_sent_as_values() -> None:
    arr = np.arange(12, dtype=">i4").reshape(3, 4)[:, ::2]
    back = wire.loads(wire.dumps(arr))
    np.testing.assert_array_equal(back, arr)
    assert back.dtype == np.dtype("<i4")


@pytest.mark.parametrize("dtype", ["complex64", "object", "U3", "datetime64[s]"])
def test_dtypes_outside_the_catalog_are_refused(dtype: str) -> None:
    arr = np.zeros(2, dtype=dtype)
    with pytest.raises(TypeError):
        wire.dumps(arr)


def _ext(payload: list[object]) -> bytes:
    return msgpack.packb(msgpack.ExtType(wire.EXT_NDARRAY, msgpack.packb(payload)))


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (["<f4", [2, 2], b"\x00" * 4], "needs 16 bytes"),
        (["<f4", [2**40, 2**40], b"\x00" * 4], "needs"),
        (["<f4", [-1], b""], "shape"),
        (["|O", [1], b"\x00" * 8], "not allowed"),
        (["<f4", [1] * 9, b"\x00" * 4], "shape"),
        (["<f4", [1]], "malformed"),
    ],
)
def test_hostile_arrays_raise_wire_error(payload: list[object], match: str) -> None:
    with pytest.raises(wire.WireError, match=match):
        wire.loads(_ext(payload))


def test_unknown_extension_type_is_refused() -> None:
    with pytest.raises(wire.WireError, match="unknown msgpack extension"):
        wire.loads(msgpack.packb(msgpack.ExtType(7, b"abc")))


def test_garbage_and_oversized_messages_raise_wire_error() -> None:
    with pytest.raises(wire.WireError):
        wire.loads(b"\xc1\xc1\xc1")
    with pytest.raises(wire.WireError, match="exceeds"):
        wire.MsgpackCodec(max_bytes=10).loads(b"\x00" * 11)


def test_header_round_trip_and_validation() -> None:
    h = Header(id="abc-1", task="digits", submitted_at=1.0, deadline=5.0, reply_to="c1")
    assert Header.loads(h.dumps()) == h
    with pytest.raises(wire.WireError, match="neither a task nor a model"):
        Header.loads(wire.dumps({"id": "x"}))
    with pytest.raises(ValueError, match="neither a task nor a model"):
        Header(id="x")  # refused when built, too
    with pytest.raises(wire.WireError, match="unknown field `bogus`"):
        Header.loads(wire.dumps({"id": "x", "task": "t", "bogus": 1}))
    with pytest.raises(wire.WireError, match=r"Expected `str \| null`, got `int`"):
        Header.loads(wire.dumps({"id": "x", "task": 3}))


def test_result_round_trip_keeps_arrays() -> None:
    res = Result(
        id="r1",
        status="ok",
        outputs={"p": np.eye(2, dtype=np.float32)},
        model="m",
        path=[{"model": "m", "confidence": 0.9}],
        timings={"total_ms": 1.5},
        batch_size=4,
    )
    back = Result.loads(res.dumps())
    np.testing.assert_array_equal(back.outputs["p"], res.outputs["p"])
    assert back.path == res.path
    assert back.batch_size == 4


def _result(**fields: object) -> bytes:
    doc = {"id": "r1", "status": "ok", **fields}
    packed: bytes = msgpack.packb({k: v for k, v in doc.items() if v is not None})
    return packed


def _array(payload: list[object]) -> msgpack.ExtType:
    return msgpack.ExtType(wire.EXT_NDARRAY, msgpack.packb(payload))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\xc1", "fields are wrong"),
        (msgpack.packb([1, 2]), "fields are wrong"),
        (_result(id="a:b"), "invalid id"),
        (_result(id=7), "fields are wrong"),
        (_result(status="done"), "invalid id or status"),
        (_result(bogus=1), "unknown field"),
        (_result(outputs=5), "fields are wrong"),
        (_result(outputs={"p": 5}), "array extension"),
        (_result(outputs={"p": msgpack.ExtType(7, b"x")}), "extension type 7"),
        (_result(info={"x": msgpack.ExtType(7, b"x")}), "extension type 7"),
        (_result(outputs={"p": _array(["<f4", [2], b"\0" * 4])}), "needs 8 bytes"),
        (_result(outputs={"p": _array(["<f4", [-1], b""])}), "shape"),
        (_result(outputs={"p": _array(["<f4", [1] * 9, b"\0" * 4])}), "shape"),
        (_result(outputs={"p": _array(["|O", [1], b"\0" * 8])}), "not allowed"),
        (_result(outputs={"p": _array(["<f4", [0, 2**63], b""])}), "beyond numpy"),
        (_result(outputs={"p": _array(["<f4", [1]])}), "malformed"),
        (_result(error={"code": "x"}), "code and a message"),
        (_result(timings={"total_ms": "slow"}), "fields are wrong"),
    ],
)
def test_forged_results_raise_wire_error(data: bytes, match: str) -> None:
    with pytest.raises(wire.WireError, match=match):
        Result.loads(data)


def test_a_result_holds_its_arrays_read_only_and_encodes_numpy_scalars() -> None:
    res = Result(id="r1", status="ok", outputs={"p": np.arange(6, dtype=">i4").reshape(2, 3)})
    res.info = {"score": np.float32(0.5), "n": np.int64(3), "flag": np.bool_(True)}
    back = Result.loads(res.dumps())
    np.testing.assert_array_equal(back.outputs["p"], np.arange(6).reshape(2, 3))
    assert back.outputs["p"].dtype == np.dtype("<i4")
    assert not back.outputs["p"].flags.writeable
    assert back.info == {"score": 0.5, "n": 3, "flag": True}
    assert Result.loads(Result(id="e", status="error").dumps()).outputs == {}
