"""The wire format: msgpack everywhere, numpy arrays as extension type 1.

An array travels as ``[dtype.str, shape, raw bytes]`` inside the extension, so it
decodes as a zero-copy view and never touches pickle. Decoding checks every field
because entries may come from a buggy or hostile client.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Annotated, Any, NoReturn

import msgpack
import msgspec
import numpy as np

EXT_NDARRAY = 1
MAX_RANK = 8

#: Dtypes that may cross the wire (little-endian or byte-order free).
ALLOWED_DTYPES: frozenset[str] = frozenset(
    np.dtype(name).str
    for name in (
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
    )
)


_local = threading.local()


def _packers() -> tuple[msgpack.Packer, msgpack.Packer]:
    """Per-thread packers, (messages, arrays): a fresh Packer per message costs ~15 us.

    Two, because packing an array happens inside packing the message that holds it.
    """
    try:
        return _local.packers  # type: ignore[no-any-return]
    except AttributeError:
        _local.packers = (
            msgpack.Packer(default=_encode_ext, use_bin_type=True),
            msgpack.Packer(use_bin_type=True),
        )
        return _local.packers  # type: ignore[no-any-return]


class WireError(ValueError):
    """Bytes that are not a valid cascadeq message."""


def _encode_ext(obj: Any) -> msgpack.ExtType:
    if isinstance(obj, np.ndarray):
        return msgpack.ExtType(EXT_NDARRAY, pack_array(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__}: send numpy arrays or plain data")


def pack_array(arr: np.ndarray) -> bytes:
    dtype = arr.dtype
    if dtype.byteorder == ">":
        dtype = dtype.newbyteorder("<")
        arr = arr.astype(dtype)
    if dtype.str not in ALLOWED_DTYPES:
        raise TypeError(
            f"dtype {arr.dtype} cannot cross the wire; allowed: {sorted(ALLOWED_DTYPES)}"
        )
    arr = np.ascontiguousarray(arr)
    packed: bytes = _packers()[1].pack([dtype.str, list(arr.shape), arr.data if arr.size else b""])
    return packed


_ARRAY = msgspec.msgpack.Decoder(tuple[Any, Any, Any])  # checked below, with clear messages
_Dim = Annotated[int, msgspec.Meta(ge=0)]
#: The same checks as a type, in C: a well-formed array costs no Python loop over its shape.
_TYPED_ARRAY = msgspec.msgpack.Decoder(
    tuple[str, Annotated[list[_Dim], msgspec.Meta(max_length=MAX_RANK)], bytes]
)
_DTYPES: dict[str, np.dtype[Any]] = {name: np.dtype(name) for name in ALLOWED_DTYPES}


def unpack_array(data: bytes | memoryview) -> np.ndarray:
    """The array in an extension's bytes; anything malformed raises WireError saying why.

    Typed decode first; only bytes that fail it take the field-by-field checks, which
    are there for their messages.
    """
    try:
        dtype_str, shape, buf = _TYPED_ARRAY.decode(data)
    except (ValueError, TypeError, msgspec.DecodeError):
        _refuse(data)
    dtype = _DTYPES.get(dtype_str)
    if dtype is None:
        raise WireError(f"array dtype {dtype_str!r} is not allowed")
    if math.prod(shape) * dtype.itemsize != len(buf):
        raise WireError(
            f"array of shape {tuple(shape)} and dtype {dtype} needs "
            f"{math.prod(shape) * dtype.itemsize} bytes, got {len(buf)}"
        )
    try:
        if not buf:
            return np.empty(shape, dtype=dtype)
        return np.ndarray(shape, dtype, buf)  # a read-only view of buf; frombuffer + reshape: 2x
    except ValueError as exc:  # no bytes, but a dimension numpy cannot hold (a zero elsewhere)
        raise WireError(f"array shape {shape!r} is beyond numpy: {exc}") from exc


def _refuse(data: bytes | memoryview) -> NoReturn:
    """WireError naming the wrong field of an array the typed decode refused."""
    try:
        dtype_str, shape, buf = _ARRAY.decode(data)
    except (ValueError, TypeError, msgspec.DecodeError) as exc:
        raise WireError(f"array extension is malformed: {exc}") from exc
    if not isinstance(dtype_str, str) or dtype_str not in ALLOWED_DTYPES:
        raise WireError(f"array dtype {dtype_str!r} is not allowed")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_RANK
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise WireError(f"array shape {shape!r} must be a list of at most {MAX_RANK} ints >= 0")
    if not isinstance(buf, bytes):
        raise WireError("array buffer must be bytes")
    raise WireError(f"array extension is malformed: {data!r:.200}")  # typed decode said no


def _ext_hook(code: int, data: bytes) -> Any:
    if code != EXT_NDARRAY:
        raise WireError(f"unknown msgpack extension type {code}")
    return unpack_array(data)


class MsgpackCodec:
    """The default codec; ``max_bytes`` bounds what a decode may allocate."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes

    def dumps(self, obj: Any) -> bytes:
        packed: bytes = _packers()[0].pack(obj)
        return packed

    def loads(self, data: bytes) -> Any:
        if len(data) > self.max_bytes:
            raise WireError(f"message of {len(data)} bytes exceeds the limit of {self.max_bytes}")
        try:
            return msgpack.unpackb(
                data,
                ext_hook=_ext_hook,
                raw=False,
                strict_map_key=True,
            )
        except WireError:
            raise
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise WireError(f"not valid msgpack: {exc}") from exc


MSGPACK = MsgpackCodec()


def dumps(obj: Any) -> bytes:
    return MSGPACK.dumps(obj)


def loads(data: bytes) -> Any:
    return MSGPACK.loads(data)


def loads_map(data: bytes, what: str) -> dict[str, Any]:
    """Decode a message that must be a map with string keys."""
    obj = MSGPACK.loads(data)
    if not isinstance(obj, dict):
        raise WireError(f"{what} must be a msgpack map, got {type(obj).__name__}")
    return obj


def loads_inputs(data: bytes) -> dict[str, np.ndarray]:
    """Decode a request's tensors: a map of input name to array."""
    obj = loads_map(data, "inputs")
    for name, value in obj.items():
        if not isinstance(name, str):
            raise WireError(f"input name {name!r} is not a string")
        if not isinstance(value, np.ndarray):
            raise WireError(f"input {name!r} is {type(value).__name__}, not an array")
    return obj


def dumps_inputs(inputs: Mapping[str, np.ndarray]) -> bytes:
    return MSGPACK.dumps(dict(inputs))
