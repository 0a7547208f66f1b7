"""Cancelling one request: what the cancel script is sent and what its reply means.

The decision is made inside Redis (protocol/lua/cancel.lua), atomically: a request no
worker holds (its entry is not pending in a model stream's worker group) is answered
``cancelled`` and never runs, because a worker looks for cancelled requests when it
forms a batch (protocol/lua/claim.lua); one held, or answered, is left alone and said so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.protocol import keys as keynames
from cascadeq.protocol import lua
from cascadeq.protocol.keys import Keys, check_id
from cascadeq.protocol.messages import CANCELLED, Result, now_ms

CANCEL = lua.load("cancel")

#: What ``cancel`` reports: answered cancelled now; already answered (``result`` holds
#: the answer, which may be an earlier cancel); being computed (its result will stand);
#: no such request (never submitted, or its result expired).
OUTCOMES = ("unknown", "cancelled", "done", "running")


@dataclass(frozen=True)
class Cancelled:
    """The outcome of ``cancel(id)``; ``result`` is the request's stored result, if any."""

    id: str
    outcome: str
    result: Result | None = None

    @property
    def cancelled(self) -> bool:
        """True only when this call cancelled it: it will never be computed."""
        return self.outcome == "cancelled"


def call(
    keys: Keys, request_id: str, settings: Settings, catalog: Catalog
) -> tuple[list[str], list[Any]]:
    """The cancel script's keys and arguments for one request: its result key, the cancel
    counter, and every model stream (where a worker may hold it)."""
    check_id(request_id)
    result = Result(
        id=request_id,
        status=CANCELLED,
        error={"code": "cancelled", "message": "cancelled before any model computed it"},
        timings={"cancelled_at": now_ms()},
    )
    token = msgspec.msgpack.encode("id") + msgspec.msgpack.encode(request_id)
    args = [
        result.dumps(),
        settings.result_ttl_s,
        keynames.WORKER_GROUP,
        token,
        settings.pending_ttl_s,
    ]
    shard = keys.shard_of(request_id)  # its result key's slot: the script's keys share it
    streams = [  # each lane's stream and, where tenants split it, their sub-streams
        stream
        for name, spec in catalog.models.items()
        for stream in catalog.tenants.model_streams(keys, name, spec.lanes, shard)
    ]
    return [keys.result(request_id), keys.cancels_of(shard), *streams], args


def outcome(request_id: str, reply: list[Any]) -> Cancelled:
    """What the script's {outcome, stored value} reply means."""
    code, raw = int(reply[0]), reply[1]
    result = Result.loads(raw) if isinstance(raw, bytes) else None
    return Cancelled(request_id, OUTCOMES[code], result)
