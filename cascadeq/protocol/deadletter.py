"""The dead-letter record: one entry of the capped dead-letter stream (``Keys.dead_letter``).

A record is the raw entry it stands for (its fields as far as they were kept: a single
request's ``h``/``x``, or a bundle's ``H``, ...) plus four fields of its own: ``stream``
and ``entry`` (where it came from), ``code`` and ``reason`` (why). Routers and workers
write it with their batch's commit (``record`` + ``MAXLEN``); `cascadeq dlq` reads it
back with ``parse``, and replays only records that hold ``h`` and ``x``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cascadeq.protocol import wire
from cascadeq.protocol.bundle import HEADER, HEADERS, INPUTS
from cascadeq.protocol.keys import Keys
from cascadeq.protocol.messages import MAX_HEADER_BYTES, salvage_id

STREAM = b"stream"  # the stream the entry was read from
ENTRY = b"entry"  # its id there
CODE = b"code"  # the error code its requests were answered with
REASON = b"reason"  # the message, for an operator
META = (STREAM, ENTRY, CODE, REASON)

MAXLEN = 100_000  # the stream is capped (approximately), not unbounded
REASON_MAX_BYTES = 2000

Fields = dict[bytes, bytes]


def record(fields: Fields, *, stream: str, entry_id: bytes, code: str, reason: str) -> Fields:
    """The record for an entry (or one request of it): its raw fields, where from, and why."""
    out = dict(fields)
    out.update(
        {
            STREAM: stream.encode(),
            ENTRY: entry_id,
            CODE: code.encode(),
            REASON: reason.encode()[:REASON_MAX_BYTES],
        }
    )
    return out


def queue(
    pipe: Any, keys: Keys, fields: Fields, *, stream: str, entry_id: bytes, code: str, reason: str
) -> None:
    """Add one record to a pipeline (tools and tests; the roles write through their commit)."""
    rec = record(fields, stream=stream, entry_id=entry_id, code=code, reason=reason)
    pipe.xadd(keys.dead_letter, rec, maxlen=MAXLEN, approximate=True)


def kept(fields: Fields, code: str) -> Fields:
    """What of an entry refused with ``code`` the record keeps: all of it, but of a too
    large one only its header(s), and those only if they are not the problem."""
    if code != "too_large":
        return fields
    raw = fields.get(HEADER)
    if raw is not None:
        return {HEADER: raw} if len(raw) <= MAX_HEADER_BYTES else {}
    raw = fields.get(HEADERS)
    return {HEADERS: raw} if raw is not None and len(raw) <= MAX_HEADER_BYTES else {}


@dataclass(frozen=True)
class DeadLetter:
    """One record of the dead-letter stream, decoded only as far as is safe."""

    id: str
    stream: str
    entry: str
    code: str
    reason: str
    fields: Fields = field(repr=False)  # the kept original fields

    @property
    def request_id(self) -> str | None:
        return salvage_id(self.fields.get(HEADER))[0]

    @property
    def missing(self) -> list[str]:
        """The original fields replay needs but this record lacks."""
        return [f.decode() for f in (HEADER, INPUTS) if f not in self.fields]

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "stream": self.stream,
            "entry": self.entry,
            "code": self.code,
            "reason": self.reason,
            "request_id": self.request_id,
            "replayable": not self.missing,
        }

    def detail(self) -> dict[str, Any]:
        """The summary plus the decoded header and the shapes of the inputs."""
        out = self.summary()
        out["header"] = _describe(self.fields.get(HEADER), _header)
        out["inputs"] = _describe(self.fields.get(INPUTS), _inputs)
        return out


def parse(entry_id: bytes, fields: Fields) -> DeadLetter:
    """A record as read from the stream; a missing or undecodable field reads as text anyway."""
    meta = {k: _text(fields.get(k)) for k in META}
    return DeadLetter(
        id=entry_id.decode(),
        stream=meta[STREAM],
        entry=meta[ENTRY],
        code=meta[CODE],
        reason=meta[REASON],
        fields={k: v for k, v in fields.items() if k not in META},
    )


def _header(raw: bytes) -> Any:
    return wire.loads_map(raw, "header")


def _inputs(raw: bytes) -> Any:
    return {
        name: {"dtype": arr.dtype.str, "shape": list(arr.shape)}
        for name, arr in wire.loads_inputs(raw).items()
    }


def _describe(raw: bytes | None, decode: Callable[[bytes], Any]) -> Any:
    if raw is None:
        return None
    try:
        return decode(raw)
    except (wire.WireError, ValueError, TypeError) as exc:
        return {"undecodable": str(exc), "bytes": len(raw)}


def _text(value: bytes | None) -> str:
    return "" if value is None else value.decode(errors="replace")
