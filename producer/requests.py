"""Turning a caller's request into wire bytes, with every check that can refuse it early.

Shared by the sync and asyncio clients so both refuse the same things the same way.
"""

from __future__ import annotations

import os
import time
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

#: Admission control and the XADDs in one step: refuse the whole chunk past a bound.
#: KEYS: ingress, the m model streams the chunk starts on, each request's result key.
#: ARGV: ingress bound, model bound, placeholder TTL, m, then per request its header,
#: inputs and the index (1..m) of its model stream. Refusal returns {0, key index, depth}.
SUBMIT_SCRIPT = f"""
local m = tonumber(ARGV[4])
local n = #KEYS - 1 - m
local depth = redis.call('XLEN', KEYS[1])
if depth + n > tonumber(ARGV[1]) then return {{0, 1, depth}} end
local want = {{}}
for i = 1, n do
  local j = tonumber(ARGV[4 + 3 * i])
  want[j] = (want[j] or 0) + 1
end
for j = 1, m do
  local d = redis.call('XLEN', KEYS[1 + j])
  if d + want[j] > tonumber(ARGV[2]) then return {{0, 1 + j, d}} end
end
for i = 1, n do
  redis.call('XADD', KEYS[1], '*', 'h', ARGV[2 + 3 * i], 'x', ARGV[3 + 3 * i])
  redis.call('SET', KEYS[1 + m + i], {PENDING_LUA}, 'NX', 'EX', ARGV[3])
end
return {{1, 0, depth + n}}
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


@dataclass(frozen=True)
class Prepared:
    id: str
    header: bytes
    inputs: bytes
    first_model: str  # the model whose queue it starts on (pinned, or the cascade's first)
    lane: str = DEFAULT_LANE  # the lane of that model it joins


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
    return Prepared(rid, header, inputs, models[0].name, models[0].lane_for(req.priority))


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
        len(streams),
    ]
    for p in chunk:
        args += [p.header, p.inputs, index[keys.model_stream(p.first_model, p.lane)]]
    bounds = {keys.ingress: settings.ingress_max_depth}
    bounds.update(dict.fromkeys(streams, settings.model_max_depth))
    return SubmitCall(script_keys, args, bounds)


def check_admitted(reply: Any, call: SubmitCall, before: list[Prepared], count: int) -> None:
    """Raise Rejected naming the full queue, its depth and bound; ids queued before kept."""
    if int(reply[0]):
        return
    queue, depth = call.keys[int(reply[1]) - 1], int(reply[2])
    raise Rejected(
        f"queue is full: {queue} holds {depth} entries, bound {call.bounds[queue]}; "
        f"{count} request(s) not queued, retry later",
        "queue_full",
        accepted=[p.id for p in before],
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
