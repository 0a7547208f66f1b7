"""Turning a caller's request into wire bytes, with every check that can refuse it early.

Shared by the sync and asyncio clients so both refuse the same things the same way.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cascadeq import wire
from cascadeq.catalog import Catalog, InputError
from cascadeq.keys import DEFAULT_LANE, InvalidName, Keys, check_id, check_name
from cascadeq.messages import Header, now_ms, oversize
from cascadeq.results import PENDING_LUA
from cascadeq.settings import Settings
from producer.errors import Rejected

#: Id checks, admission control and the XADDs in one step; a refusal refuses the chunk.
#: KEYS: ingress, the m model streams the chunk starts on, each request's result key,
#: then the digest key of each idempotent request.
#: ARGV: ingress bound, model bound, placeholder TTL, digest TTL, m, n, then per request
#: its header, inputs, the index (1..m) of its model stream, the KEYS index of its digest
#: key (0: not idempotent) and its digest.
#: An id is refused if it repeats in the chunk or its result key exists, except an
#: idempotent retry whose stored digest matches: that one is skipped, not queued again.
#: GET, not EXISTS: the producer's documented ACL rule allows GET and SET, not EXISTS.
#: Refusals: {0, 0, i...} (duplicate ids, by position) or {0, key index, depth} (full).
SUBMIT_SCRIPT = f"""
local m, n = tonumber(ARGV[5]), tonumber(ARGV[6])
local function arg(i, f) return ARGV[1 + 5 * i + f] end
local seen, dup, skip, want, queued = {{}}, {{}}, {{}}, {{}}, 0
for i = 1, n do
  local key = KEYS[1 + m + i]
  local d = tonumber(arg(i, 4))
  if seen[key] then
    dup[#dup + 1] = i
  elseif redis.call('GET', key) then
    if d > 0 and redis.call('GET', KEYS[d]) == arg(i, 5) then skip[i] = true
    else dup[#dup + 1] = i end
  end
  seen[key] = true
  if not skip[i] then
    local j = tonumber(arg(i, 3))
    want[j] = (want[j] or 0) + 1
    queued = queued + 1
  end
end
if #dup > 0 then return {{0, 0, unpack(dup)}} end
local depth = redis.call('XLEN', KEYS[1])
if depth + queued > tonumber(ARGV[1]) then return {{0, 1, depth}} end
for j = 1, m do
  if want[j] then
    local l = redis.call('XLEN', KEYS[1 + j])
    if l + want[j] > tonumber(ARGV[2]) then return {{0, 1 + j, l}} end
  end
end
for i = 1, n do
  if not skip[i] then
    redis.call('XADD', KEYS[1], '*', 'h', arg(i, 1), 'x', arg(i, 2))
    redis.call('SET', KEYS[1 + m + i], {PENDING_LUA}, 'NX', 'EX', ARGV[3])
    local d = tonumber(arg(i, 4))
    if d > 0 then redis.call('SET', KEYS[d], arg(i, 5), 'EX', ARGV[4]) end
  end
end
return {{1, 0, depth + queued}}
"""


@dataclass(frozen=True)
class Request:
    """One inference request, as a caller describes it."""

    inputs: Mapping[str, np.ndarray]
    task: str | None = None
    model: str | None = None
    tier: str = "standard"
    priority: str = DEFAULT_LANE
    deadline_ms: float | None = None  # relative: milliseconds from now
    id: str | None = None
    #: With ``id``: a retry of this exact request (same task or model, tier and input
    #: bytes) under that id returns the id instead of being refused or computed again.
    idempotent: bool = False


@dataclass(frozen=True)
class Prepared:
    id: str
    header: bytes
    inputs: bytes
    first_model: str  # the model whose queue it starts on (pinned, or the cascade's first)
    lane: str = DEFAULT_LANE  # the lane of that model it joins
    digest: bytes | None = None  # idempotent requests: what a retry must match


def prepare(req: Request, catalog: Catalog, settings: Settings, reply_to: str | None) -> Prepared:
    """Validate against the catalog and encode; raises Rejected with the reason."""
    if (req.task is None) == (req.model is None):
        raise Rejected("name exactly one of task= or model=", "bad_request")
    try:
        _check_arrays(req.inputs)
        models, distinct = _targets(req, catalog)
        for spec in distinct:
            spec.check_inputs(req.inputs)
    except InputError as exc:
        raise Rejected(str(exc), "bad_input") from exc
    if req.idempotent and req.id is None:
        raise Rejected(
            "idempotent=True needs the caller's own request_id: a retry is recognised by it",
            "bad_request",
        )
    rid = req.id or os.urandom(16).hex()  # what uuid4().hex gives, at a tenth of the cost
    try:
        check_id(rid)
    except InvalidName as exc:
        raise Rejected(str(exc), "bad_id") from exc
    try:
        check_name("tier", req.tier)
        check_name("priority", req.priority)
    except InvalidName as exc:
        raise Rejected(str(exc), "bad_request") from exc
    if req.deadline_ms is not None and not req.deadline_ms > 0:
        raise Rejected(f"deadline_ms must be positive, got {req.deadline_ms}", "bad_deadline")
    submitted = now_ms()
    header = Header(
        id=rid,
        task=req.task,
        model=req.model,
        tier=req.tier,
        priority=req.priority,
        deadline=None if req.deadline_ms is None else submitted + req.deadline_ms,
        submitted_at=submitted,
        reply_to=reply_to,
    ).dumps()
    try:
        inputs = wire.dumps_inputs(req.inputs)
    except TypeError as exc:
        raise Rejected(str(exc), "bad_input") from exc
    problem = oversize(header, inputs, settings.max_payload_bytes)
    if problem:
        raise Rejected(problem, "too_large")
    digest = request_digest(req, inputs) if req.idempotent else None
    lane = models[0].lane_for(req.priority)
    return Prepared(rid, header, inputs, models[0].name, lane, digest)


def request_digest(req: Request, inputs: bytes) -> bytes:
    """What decides the answer: the target, the tier and the encoded inputs. Not the
    deadline, priority or client, so a retry from another process still matches."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{req.task or ''}\n{req.model or ''}\n{req.tier}\n".encode())
    h.update(inputs)
    return h.digest()


_TARGETS: dict[int, tuple[Catalog, dict[tuple[str | None, str | None], Any]]] = {}


def _targets(req: Request, catalog: Catalog) -> tuple[list[Any], list[Any]]:
    """The models a request may run on, and those with distinct input signatures (a
    cascade usually shares one, so its inputs are checked once); worked out once per
    catalog and target, not per request."""
    held = _TARGETS.get(id(catalog))
    if held is None or held[0] is not catalog:
        held = (catalog, {})
        _TARGETS.clear()  # one catalog at a time in practice; never grows without bound
        _TARGETS[id(catalog)] = held
    key = (req.task, req.model)
    found = held[1].get(key)
    if found is None:
        models = _models_for(req, catalog)
        signatures: dict[tuple[object, ...], Any] = {}
        for spec in models:
            signatures.setdefault((spec.inputs, spec.allow_nonfinite), spec)
        found = held[1][key] = (models, list(signatures.values()))
    return found


def _models_for(req: Request, catalog: Catalog) -> list[Any]:
    if req.model is not None:
        if req.model not in catalog.models:
            raise Rejected(
                f"model {req.model!r} is not in the catalog; known: {sorted(catalog.models)}",
                "unknown_model",
            )
        return [catalog.models[req.model]]
    assert req.task is not None
    task = catalog.tasks.get(req.task)
    if task is None:
        raise Rejected(
            f"task {req.task!r} is not in the catalog; known: {sorted(catalog.tasks)}",
            "unknown_task",
        )
    names = dict.fromkeys(stage.model for stage in task.cascade)
    return [catalog.models[name] for name in names]


def _check_arrays(inputs: Mapping[str, Any]) -> None:
    if not isinstance(inputs, Mapping) or not inputs:
        raise InputError("inputs must be a non-empty mapping of input name to numpy array")
    for name, value in inputs.items():
        if not isinstance(value, np.ndarray):
            raise InputError(f"input {name!r} is {type(value).__name__}; pass a numpy array")


@dataclass(frozen=True)
class SubmitCall:
    """One SUBMIT_SCRIPT call: its keys and arguments, and the bound of each queue key."""

    keys: list[str]
    args: list[Any]
    bounds: dict[str, int]
    ids: list[str]  # the chunk's ids, in order: a refusal names them by position

    def eval_args(self) -> list[Any]:
        return [len(self.keys), *self.keys, *self.args]


def submit_call(chunk: list[Prepared], keys: Keys, settings: Settings) -> SubmitCall:
    """The bound applies to the lane each request will start on."""
    streams = list(dict.fromkeys(keys.model_stream(p.first_model, p.lane) for p in chunk))
    index = {stream: j for j, stream in enumerate(streams, start=1)}
    script_keys = [keys.ingress, *streams, *(keys.result(p.id) for p in chunk)]
    args: list[Any] = [
        settings.ingress_max_depth,
        settings.model_max_depth,
        settings.pending_ttl_s,
        settings.pending_ttl_s + settings.result_ttl_s,  # outlives the result it vouches for
        len(streams),
        len(chunk),
    ]
    for p in chunk:
        at = 0
        if p.digest is not None:
            script_keys.append(keys.digest(p.id))
            at = len(script_keys)
        stream = index[keys.model_stream(p.first_model, p.lane)]
        args += [p.header, p.inputs, stream, at, p.digest or b""]
    bounds = {keys.ingress: settings.ingress_max_depth}
    bounds.update(dict.fromkeys(streams, settings.model_max_depth))
    return SubmitCall(script_keys, args, bounds, [p.id for p in chunk])


def check_unique(prepared: list[Prepared]) -> None:
    """One call naming an id twice is refused whole, before anything is queued."""
    ids = [p.id for p in prepared]
    if len(set(ids)) < len(ids):
        repeated = [rid for rid, n in Counter(ids).items() if n > 1]
        raise duplicate_ids(repeated, len(prepared), [], "repeated in this call")


def duplicate_ids(ids: list[str], count: int, accepted: list[str], why: str) -> Rejected:
    shown = ", ".join(ids[:10]) + (f" (and {len(ids) - 10} more)" if len(ids) > 10 else "")
    return Rejected(
        f"request id(s) {why}: {shown}; an id names one request, and a reused one would be "
        f"answered with the other's result; {count} request(s) not queued. Use a new id, "
        "or retry the same request with idempotent=True (see the README, The Python client)",
        "duplicate_id",
        accepted=accepted,
        ids=ids,
    )


def check_admitted(reply: Any, call: SubmitCall, before: list[Prepared], count: int) -> None:
    """Raise Rejected naming the reused ids, or the full queue with its depth and bound;
    ids queued before kept."""
    if int(reply[0]):
        return
    accepted = [p.id for p in before]
    if int(reply[1]) == 0:
        ids = [call.ids[int(i) - 1] for i in reply[2:]]
        raise duplicate_ids(ids, count, accepted, "already in use")
    queue, depth = call.keys[int(reply[1]) - 1], int(reply[2])
    raise Rejected(
        f"queue is full: {queue} holds {depth} entries, bound {call.bounds[queue]}; "
        f"{count} request(s) not queued, retry later",
        "queue_full",
        accepted=accepted,
    )


class CatalogCache:
    """The catalog requests are checked against: given, from a file, or as published.

    Sans I/O, so the sync and asyncio clients share it: they fetch when told to.
    """

    REFRESH_S = 2.0  # the published catalog is re-read at most this often

    def __init__(self, given: Catalog | None, path: str | None) -> None:
        self.catalog = given or (Catalog.load(path, check_files=False) if path else None)
        self.published = given is None and not path
        self.checked = -self.REFRESH_S

    def should_fetch(self, req: Request) -> bool:
        """Fetch when there is none yet, or it does not know what the request names."""
        if not self.published or time.monotonic() - self.checked < self.REFRESH_S:
            return False
        cat = self.catalog
        if cat is None:
            return True
        known = req.task in cat.tasks if req.task else req.model in cat.models
        return not known

    def update(self, raw: Any) -> None:
        self.checked = time.monotonic()
        if raw is not None:
            doc = wire.loads_map(raw, "catalog")
            text, source = str(doc["text"]), f"redis:{doc['source']}"
            self.catalog = Catalog.loads(text, source=source, check_files=False)

    def current(self) -> Catalog:
        if self.catalog is None:
            raise Rejected(
                "no catalog: start a router (it publishes the catalog), pass catalog=, "
                "or set CASCADEQ_CATALOG",
                "no_catalog",
            )
        return self.catalog


SUBMIT_CHUNK = 500
