"""Bundles: one stream entry that carries many requests, columnar.

An entry is either a single request (fields ``h``: header map, ``x``: map of input name
to array) or a bundle (``H``: array of header maps, ``X``: map of input name to the
requests' rows stacked on axis 0, ``R``: rows per request, absent when every request has
one). Producers, routers and workers all move bundles, so per-request work is a header
decode and encode in C (msgspec) rather than a Redis command, an unpack and a dataclass.

Headers are decoded as one typed array; only when that fails is each header decoded on
its own, so a forged item fails alone with its own error and its neighbours go on.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgpack
import msgspec
import numpy as np

from cascadeq.protocol import wire

HEADER = b"h"  # a single request's header
INPUTS = b"x"  # a single request's inputs
HEADERS = b"H"  # a bundle's headers
STACKED = b"X"  # a bundle's inputs, stacked
ROWS = b"R"  # a bundle's rows per request

MAX_HOPS = 16
MAX_HOP_NUMBER = 1e15  # numbers in hops stay within this, so summing a path stays finite
#: Epoch milliseconds: finite and within years 1970..5138, so no arithmetic on them overflows.
EpochMs = Annotated[float, msgspec.Meta(ge=0.0, le=1e14)]
#: A number in a trace hop: finite and bounded for the same reason.
HopNumber = Annotated[float, msgspec.Meta(ge=-MAX_HOP_NUMBER, le=MAX_HOP_NUMBER)]
HopInt = Annotated[int, msgspec.Meta(ge=-(2**53), le=2**53)]
HopValue = str | HopInt | HopNumber | None
Hop = dict[str, HopValue]
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_HOPS)]
#: Its form only; the producer also refuses all-zero ids (tracecontext.check).
Traceparent = Annotated[str, msgspec.Meta(pattern="^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")]


class Header(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True, gc=False):
    """Routing metadata of one request; ``stage`` is its position in the cascade."""

    id: str  # ids and names are checked per bundle (check_names): one regex call, not five
    task: str | None = None
    model: str | None = None
    tier: str = "standard"
    priority: str = "default"
    deadline: EpochMs | None = None
    submitted_at: EpochMs = 0.0
    reply_to: str | None = None
    trace: Annotated[list[Hop], msgspec.Meta(max_length=MAX_HOPS)] = []
    attempt: Count = 0
    stage: Count = 0
    routed_at: EpochMs | None = None
    traceparent: Traceparent | None = None  # W3C trace context (protocol/tracecontext.py)
    tenant: str = "default"  # who the request is for (config/tenants.py); omitted when default
    version: str | None = None  # a pinned version of ``model`` (lifecycle); None: the active

    def __post_init__(self) -> None:
        if (self.task is None) == (self.model is None):
            raise ValueError("header names neither a task nor a model, or both: name exactly one")

    def dumps(self) -> bytes:
        return _ENCODER.encode(self)

    @classmethod
    def loads(cls, data: bytes) -> Header:
        """Decode and check one header; raises wire.WireError saying what is wrong."""
        return loads_header(data)


_ENCODER = msgspec.msgpack.Encoder()
_ONE = msgspec.msgpack.Decoder(Header)
_MANY = msgspec.msgpack.Decoder(list[Header])
_RAWS = msgspec.msgpack.Decoder(list[msgspec.Raw])
_ROWS = msgspec.msgpack.Decoder(list[Annotated[int, msgspec.Meta(ge=1)]])


def dumps_header(header: Header) -> bytes:
    return _ENCODER.encode(header)


def dumps_headers(headers: Sequence[Header]) -> bytes:
    return _ENCODER.encode(headers)


def dumps_rows(rows: Sequence[int]) -> bytes:
    return _ENCODER.encode(rows)


def loads_header(data: bytes) -> Header:
    try:
        header = _ONE.decode(data)
    except (msgspec.DecodeError, ValueError) as exc:  # ValidationError is a DecodeError
        raise wire.WireError(f"header is unusable: {_explain(exc, data)}") from exc
    problem = name_problem(header)
    if problem:
        raise wire.WireError(f"header is unusable: {problem}")
    return header


@dataclass
class BadItem:
    """A request of an entry that cannot go on; it gets its own error and dead letter."""

    index: int  # position in the entry
    code: str
    message: str
    raw_header: bytes | None = None
    header: Header | None = None

    def salvage(self) -> tuple[str | None, str | None]:
        """Its id and reply channel, where they are valid, so it can be answered."""
        if self.header is not None:
            return self.header.id, self.header.reply_to
        return salvage_id(self.raw_header)


Route = tuple[str | None, str | None, str, str, str]  # task, model, tier, priority, tenant


@dataclass
class Bundle:
    """One stream entry's requests: headers, stacked inputs and rows per request."""

    stream: str
    entry_id: bytes
    headers: list[Header]  # every request of the entry, in order (bad ones included)
    inputs: dict[str, np.ndarray]  # stacked on axis 0; empty when the inputs are unusable
    rows: np.ndarray  # int64, rows per request
    raw_inputs: bytes  # the inputs field as read: forwarded untouched when nothing splits
    single: bool  # read from the one-request (h, x) form
    bad: list[BadItem] = field(default_factory=list)  # requests that cannot go on
    #: The (task, model, tier, priority) every header shares, when they were decoded in one
    #: call and share one (None otherwise): a router groups it without a look at each.
    route: Route | None = None
    unit: bool = False  # every request has one row (a bundle without R)

    @property
    def size(self) -> int:
        return len(self.headers)

    def offsets(self) -> np.ndarray:
        """Row offset of each request, plus the end: request i is rows[off[i]:off[i+1]]."""
        out = np.zeros(len(self.rows) + 1, dtype=np.int64)
        np.cumsum(self.rows, out=out[1:])
        return out

    def fields(self) -> dict[bytes, bytes]:
        """The entry as it would be written again (for dead letters and replays)."""
        if self.single:
            return {HEADER: dumps_header(self.headers[0]), INPUTS: self.raw_inputs}
        return bundle_fields(self.headers, self.raw_inputs, self.rows)


def bundle_fields(
    headers: Sequence[Header], inputs: bytes, rows: np.ndarray | Sequence[int] | None
) -> dict[bytes, bytes]:
    """A bundle entry; ``inputs`` is an encoded stacked-inputs map."""
    out = {HEADERS: dumps_headers(headers), STACKED: inputs}
    if rows is not None and len(rows) and int(np.max(rows)) != 1:
        out[ROWS] = dumps_rows([int(n) for n in rows])
    return out


class EntryError(ValueError):
    """An entry that is unusable as a whole; ``salvaged`` lists what can still be answered."""

    def __init__(self, code: str, message: str, salvaged: list[BadItem]) -> None:
        super().__init__(message)
        self.code = code
        self.salvaged = salvaged


def decode(stream: str, entry_id: bytes, fields: Mapping[bytes, bytes], max_bytes: int) -> Bundle:
    """An entry as a bundle; raises EntryError when no request in it can go on."""
    if HEADERS in fields:
        return _decode_bundle(stream, entry_id, fields, max_bytes)
    raw_header, raw_inputs = fields.get(HEADER), fields.get(INPUTS)
    if raw_header is None or raw_inputs is None:
        salvaged = [BadItem(0, "bad_payload", "", raw_header)] if raw_header else []
        raise EntryError("bad_payload", "entry lacks the h or x field", salvaged)
    problem = _oversize(len(raw_inputs), len(raw_header), max_bytes)
    if problem:
        raise EntryError("too_large", problem, _salvage_one(raw_header))
    try:
        header = loads_header(raw_header)
    except wire.WireError as exc:
        raise EntryError("bad_payload", str(exc), _salvage_one(raw_header)) from exc
    bundle = Bundle(stream, entry_id, [header], {}, np.ones(1, np.int64), raw_inputs, single=True)
    bundle.route = (header.task, header.model, header.tier, header.priority, header.tenant)
    try:
        bundle.inputs = wire.loads_inputs(raw_inputs)
        first = next(iter(bundle.inputs.values()), None)
        bundle.rows[0] = first.shape[0] if first is not None and first.ndim else 0
        bundle.unit = int(bundle.rows[0]) == 1
    except wire.WireError as exc:
        bundle.bad.append(BadItem(0, "bad_input", str(exc), header=header))
    return bundle


def _decode_bundle(
    stream: str, entry_id: bytes, fields: Mapping[bytes, bytes], max_bytes: int
) -> Bundle:
    raw_headers, raw_inputs = fields[HEADERS], fields.get(STACKED)
    problem = _oversize(len(raw_inputs or b""), len(raw_headers), max_bytes)
    if raw_inputs is None or problem:
        raws = _raw_items(raw_headers)
        salvaged = [BadItem(i, "bad_payload", "", raw) for i, raw in enumerate(raws)]
        code = "too_large" if problem else "bad_payload"
        raise EntryError(code, problem or "bundle lacks the X field", salvaged)
    headers, bad, route = _headers(raw_headers)
    bundle = Bundle(
        stream, entry_id, headers, {}, np.ones(len(headers), np.int64), raw_inputs, False, bad
    )
    bundle.route = route
    try:
        raw_rows = fields.get(ROWS)
        bundle.rows = _rows(raw_rows, len(headers))
        bundle.inputs = wire.loads_inputs(raw_inputs)
        _check_stacked(bundle.inputs, len(headers) if raw_rows is None else int(bundle.rows.sum()))
        bundle.unit = raw_rows is None
    except wire.WireError as exc:
        bundle.inputs = {}
        taken = {b.index for b in bad}
        bundle.bad += [
            BadItem(i, "bad_input", str(exc), header=h)
            for i, h in enumerate(headers)
            if i not in taken
        ]
    return bundle


def _headers(raw: bytes) -> tuple[list[Header], list[BadItem], Route | None]:
    """Every header, decoded in one call; on failure, one at a time to isolate the bad.
    Also the route every header shares, when they were decoded in one call and share one."""
    try:
        decoded: list[Header] = _MANY.decode(raw)
    except (msgspec.DecodeError, ValueError):
        pass
    else:
        refused, route = _checked(decoded)
        return decoded, refused, route
    items = _raw_items(raw)
    if not items:
        raise EntryError("bad_payload", "bundle headers are not a msgpack array", [])
    headers: list[Header] = []
    bad: list[BadItem] = []
    for index, item in enumerate(items):
        try:
            header = _ONE.decode(item)
        except (msgspec.DecodeError, ValueError) as exc:
            message = f"header is unusable: {_explain(exc, item)}"
            bad.append(BadItem(index, "bad_payload", message, item))
            headers.append(_PLACEHOLDER)
            continue
        headers.append(header)
        problem = name_problem(header)
        if problem:
            bad.append(BadItem(index, "bad_payload", f"header is unusable: {problem}", item))
    return headers, bad, None


_PLACEHOLDER = Header(id="invalid", model="invalid")  # stands where a header was unusable


def _raw_items(raw: bytes) -> list[bytes]:
    try:
        return [bytes(item) for item in _RAWS.decode(raw)]
    except (msgspec.DecodeError, ValueError):
        return []


def _rows(raw: bytes | None, n: int) -> np.ndarray:
    if raw is None:
        return np.ones(n, dtype=np.int64)
    try:
        rows = _ROWS.decode(raw)
    except (msgspec.DecodeError, ValueError) as exc:
        raise wire.WireError(f"bundle rows are unusable: {exc}") from exc
    if len(rows) != n:
        raise wire.WireError(f"bundle has {n} headers but {len(rows)} row counts")
    return np.asarray(rows, dtype=np.int64)


def _check_stacked(inputs: Mapping[str, np.ndarray], total: int) -> None:
    for name, arr in inputs.items():
        if arr.ndim == 0 or arr.shape[0] != total:
            raise wire.WireError(
                f"bundle input {name!r} has shape {arr.shape}; its rows must total {total}"
            )


def _oversize(inputs: int, header: int, max_inputs: int) -> str | None:
    if inputs > max_inputs:
        return f"inputs of {inputs} bytes exceed the limit of {max_inputs} bytes"
    if header > MAX_HEADERS_BYTES:
        return f"headers of {header} bytes exceed the limit of {MAX_HEADERS_BYTES} bytes"
    return None


MAX_HEADERS_BYTES = 8 * 1024 * 1024  # a bundle's headers; each still within MAX_HOPS


def _salvage_one(raw: bytes | None) -> list[BadItem]:
    return [BadItem(0, "bad_payload", "", raw)]


class _Salvage(msgspec.Struct):
    id: Any = None
    reply_to: Any = None


_SALVAGE = msgspec.msgpack.Decoder(_Salvage)


def salvage_id(raw: bytes | None) -> tuple[str | None, str | None]:
    """The request id (and reply channel) of a broken header, where they are valid."""
    if raw is None:
        return None, None
    try:
        doc = _SALVAGE.decode(raw)
    except (msgspec.DecodeError, ValueError):
        return None, None
    if not _valid_id(doc.id):
        return None, None
    return doc.id, doc.reply_to if _valid_id(doc.reply_to) else None


def _valid_id(value: Any) -> bool:
    return isinstance(value, str) and _ID_CHECK.fullmatch(value) is not None


_ID = r"[A-Za-z0-9_-]{1,64}"
_NAME = r"[a-z0-9][a-z0-9_.-]{0,63}"
_ID_CHECK = re.compile(_ID)
_NAME_CHECK = re.compile(_NAME)
_IDS = re.compile(rf"(?:{_ID}\n)*")
_NAMES = re.compile(rf"(?:{_NAME}\n)*")


def check_names(headers: Sequence[Header]) -> list[BadItem]:
    """Headers whose id, reply channel, tier, priority, tenant, task or model could reach other
    keys, or whose trace is malformed."""
    return _checked(headers)[0]


def _checked(headers: Sequence[Header]) -> tuple[list[BadItem], Route | None]:
    """check_names, and the one route of a bundle whose headers all share it (else None):
    one regex call over all of a bundle's ids, one over its distinct names and one look at
    its traces' distinct (key, type) pairs; a header-by-header look only when those find
    something. Comprehensions, not map(attrgetter): CPython 3.11 specialises their
    attribute loads, and sets of strings beat a set of tuples (equal tuples compare
    element by element)."""
    ids = "\n".join([h.id for h in headers]) + "\n"
    tasks = {h.task for h in headers}
    models = {h.model for h in headers}
    tiers = {h.tier for h in headers}
    priorities = {h.priority for h in headers}
    tenants = {h.tenant for h in headers}
    replies = {h.reply_to for h in headers}
    replies.discard(None)
    names = tasks | models | tiers | priorities | tenants
    names.discard(None)
    joined = "\n".join(names) + "\n"  # type: ignore[arg-type]
    route: Route | None = None
    if len(tasks) == len(models) == len(tiers) == len(priorities) == len(tenants) == 1:
        route = (*tasks, *models, *tiers, *priorities, *tenants)  # type: ignore[assignment]
    if (
        _traces_ok(headers)
        and ids.count("\n") == len(headers)
        and _IDS.fullmatch(ids)
        and joined.count("\n") == len(names)
        and _NAMES.fullmatch(joined)
        and all(_valid_id(r) for r in replies)
    ):
        return [], route
    bad = [
        BadItem(i, "bad_payload", f"header is unusable: {problem}", header=h)
        for i, h in enumerate(headers)
        if (problem := name_problem(h))
    ]
    return bad, route


def _traces_ok(headers: Sequence[Header]) -> bool:
    """Every hop's text fields hold str and the rest numbers (msgspec already bounded
    them), over all of a bundle's hops in one loop. False sends the bundle to the
    per-header look."""
    for hop in [hop for h in headers for hop in h.trace]:
        for key, value in hop.items():
            if ((key in HOP_TEXT) != (value.__class__ is str) or value is None) and (
                hop_value_problem(key, value)
            ):
                return False
    return True


#: The trace hop fields that hold text; every other field holds a number (or nothing).
HOP_TEXT = frozenset(
    {"model", "rule", "tier", "skipped", "hop", "failed", "version", "provider"}
)  # hop: "local", "fallback"


HOP_OPTIONAL = frozenset({"confidence"})  # None: the model's output has no confidence


def _trace_problem(trace: list[Hop]) -> str | None:
    """Text fields hold str, the rest numbers (msgspec already bounded them)."""
    for hop in trace:
        for key, value in hop.items():
            if (key in HOP_TEXT) != (value.__class__ is str) or value is None:
                problem = hop_value_problem(key, value)
                if problem:
                    return f"header trace hop field {key!r} {problem}"
    return None


def hop_value_problem(key: str, value: Any) -> str | None:
    """Why a hop's value is unusable, or None: text fields are str, the rest numbers."""
    if key in HOP_TEXT:
        return None if isinstance(value, str) else f"must be a string, not {_kind(value)}"
    if value is None and key in HOP_OPTIONAL:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        return f"must be a number, not {_kind(value)}"
    if not (math.isfinite(value) and abs(value) <= MAX_HOP_NUMBER):
        return f"is {value!r}: it must be a finite number within +-{MAX_HOP_NUMBER:.0e}"
    return None


def _kind(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def _hop_detail(raw: bytes) -> str | None:
    """Which hop field a typed decode refused (its message names no key): looked up only
    on that slow path, in the loosely decoded header."""
    try:
        doc = msgpack.unpackb(raw, strict_map_key=False)
    except Exception:  # noqa: BLE001 - anything undecodable has no detail to give
        return None
    trace = doc.get("trace") if isinstance(doc, dict) else None
    for hop in trace if isinstance(trace, list) else []:
        for key, value in hop.items() if isinstance(hop, dict) else []:
            problem = hop_value_problem(str(key), value)
            if problem:
                return f"header trace hop field {key!r} {problem}"
    return None


_EPOCH_FIELDS = ("submitted_at", "deadline", "routed_at")


def _explain(exc: Exception, raw: bytes) -> str:
    """msgspec's message, with what an epoch-ms field must be where that is the problem,
    or the hop field a trace was refused for."""
    text = str(exc)
    if ".trace[" in text:
        return _hop_detail(raw) or text
    for name in _EPOCH_FIELDS:
        if f".{name}`" in text:
            return f"header field {name!r} must be a finite epoch-ms time within 0..1e14 ({text})"
    return text


def name_problem(h: Header) -> str | None:
    """What is wrong with one header's id, names or trace, or None."""
    trace = _trace_problem(h.trace)
    if trace:
        return trace
    if not _valid_id(h.id):
        return f"request id {h.id!r} is invalid: use 1-64 characters from A-Z a-z 0-9 _ -"
    if h.reply_to is not None and not _valid_id(h.reply_to):
        return f"reply_to {h.reply_to!r} is invalid: use 1-64 characters from A-Z a-z 0-9 _ -"
    for kind in ("task", "model", "tier", "priority", "tenant", "version"):
        value = getattr(h, kind)
        if value is not None and not _NAME_CHECK.fullmatch(value):
            return (
                f"{kind} name {value!r} is invalid: use 1-64 characters from a-z 0-9 _ . -,"
                " starting with a letter or digit"
            )
    return None


def take_rows(
    inputs: Mapping[str, np.ndarray], rows: np.ndarray, keep: np.ndarray
) -> dict[str, np.ndarray]:
    """The rows of the requests ``keep`` marks (a boolean mask over requests)."""
    row_mask = np.repeat(keep, rows)
    return {name: arr[row_mask] for name, arr in inputs.items()}
