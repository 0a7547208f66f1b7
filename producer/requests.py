"""Turning callers' requests into ingress bundles, with every check that can refuse them early.

Shared by the sync and asyncio clients so both refuse the same things the same way. The
per-request work is a signature compare against the target's cached input declaration
and a few attribute reads; headers are built and encoded, and inputs stacked and encoded,
per bundle (``bundle.bundle_fields``), and one ``lua/submit.lua`` call queues up to
SUBMIT_CHUNK.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgpack
import msgspec
import numpy as np

from cascadeq.config.catalog import Catalog, InputError, ModelSpec, Tenants, TenantSpec
from cascadeq.config.settings import Settings
from cascadeq.producer.errors import Rejected
from cascadeq.protocol import lua, tracecontext, wire
from cascadeq.protocol.bundle import HEADER, INPUTS, Header, bundle_fields
from cascadeq.protocol.keys import (
    DEFAULT_LANE,
    DEFAULT_TENANT,
    InvalidName,
    Keys,
    check_id,
    check_name,
    stream_model,
)
from cascadeq.protocol.messages import now_ms

SUBMIT = lua.load("submit")
SUBMIT_CHUNK = 500  # requests per script call, and at most per bundle
BUNDLE_BYTES = 4 * 1024 * 1024  # stacked inputs per bundle (and never past max_payload_bytes)


class Request(msgspec.Struct, frozen=True):
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
    traceparent: str | None = None  # W3C trace context; checked at submit
    #: who it is for (quotas, fair share: config/tenants.py); None: the client's tenant
    tenant: str | None = None
    #: A version of ``model`` to answer, instead of its active one (or canary).
    version: str | None = None


class Target:
    """What a (task, model) resolves to in one catalog, worked out once, not per request."""

    def __init__(self, models: list[ModelSpec], tenants: Tenants) -> None:
        signatures: dict[tuple[object, ...], ModelSpec] = {}
        for spec in models:
            signatures.setdefault((spec.inputs, spec.allow_nonfinite), spec)
        self.first = models[0]
        self.distinct = list(signatures.values())  # a cascade usually shares one signature
        self.finite = not all(spec.allow_nonfinite for spec in self.distinct)
        self.lanes: dict[str, str] = {}
        self.tenants = tenants
        #: priority (or (priority, tenant) for a tenant other than default) -> input
        #: signature -> bundle group, for signatures that passed the checks
        self.groups: dict[Any, dict[tuple[Any, ...], tuple[Any, ...]]] = {}

    def known(self, by: Any, sig: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """The group of a signature that passed the checks before, else None."""
        by_sig = self.groups.get(by)
        return None if by_sig is None else by_sig.get(sig)

    def group(self, priority: str, sig: tuple[Any, ...] | None, tenant: str) -> tuple[Any, ...]:
        """The bundle a request that passed the checks joins: (first model, lane, signature,
        finite checked, tenant, the tenant whose sub-stream it starts on or None); one
        tuple per priority, tenant and signature, shared by every request."""
        if sig is None:  # inputs the signature cannot describe go alone
            return self._group(priority, object(), tenant)
        by = priority if tenant == DEFAULT_TENANT else (priority, tenant)
        by_sig = self.groups.get(by)
        if by_sig is None:
            if len(self.groups) > 1000:
                self.groups.clear()  # callers' priority names: never grows without bound
            by_sig = self.groups[by] = {}
        found = by_sig.get(sig)
        if found is None:
            found = by_sig[sig] = self._group(priority, sig, tenant)
        return found

    def _group(self, priority: str, sig: Any, tenant: str) -> tuple[Any, ...]:
        own = self.tenants.own_stream(tenant) if self.tenants else None
        return (self.first.name, self.lane(priority), sig, self.finite, tenant, own)

    def lane(self, priority: str) -> str:
        lane = self.lanes.get(priority)
        if lane is None:
            lane = self.lanes[priority] = self.first.lane_for(priority)
        return lane

    def check(self, inputs: Mapping[str, Any]) -> None:
        """The full checks, with their messages; raises Rejected(bad_input)."""
        try:
            _check_arrays(inputs)
            for spec in self.distinct:
                spec.check_inputs(inputs)
        except InputError as exc:
            raise Rejected(str(exc), "bad_input") from exc


class Prepared(msgspec.Struct):
    """A validated request: what its header needs, its inputs, and the bundle it can join.

    The header itself is built when the bundle is encoded (``header``): held here, it and
    its trace list would be two more objects per request for the cycle collector to walk
    while a submit_many holds thousands of them.
    """

    req: Request
    id: str
    deadline: float | None
    submitted: float
    reply_to: str | None
    inputs: Mapping[str, np.ndarray]
    group: tuple[Any, ...]  # (first model, lane, signature, finite checked, tenant, own)
    rows: int
    nbytes: int
    target: Target
    digest: bytes = b""  # idempotent requests: what a retry must match
    slot: Any = None  # a coalesced submit's waiter
    traceparent: str | None = None  # the caller's, or one started here

    @property
    def header(self) -> Header:
        return _header(self)


def _header(p: Prepared) -> Header:
    req = p.req
    header = Header(
        p.id, req.task, req.model, req.tier, req.priority, p.deadline, p.submitted, p.reply_to,
        traceparent=p.traceparent, version=req.version,
    )  # fmt: skip
    tenant = p.group[4]
    if tenant != DEFAULT_TENANT:
        header.tenant = tenant
    return header


class Preparer:
    """Validates requests against one catalog; caches per target and per name."""

    def __init__(
        self,
        catalog: Catalog,
        settings: Settings,
        reply_to: str | None,
        tenant: str = DEFAULT_TENANT,
    ) -> None:
        self.catalog, self.reply_to, self.tenant = catalog, reply_to, tenant
        self.max_bytes = settings.max_payload_bytes
        #: tenant quotas live in one slot each, which a cluster's per-shard scripts cannot reach
        self.quotas_ok = not settings.keys().tagged
        self.submitted = now_ms()
        self.start_trace = tracecontext.Starter() if settings.start_traces else None
        self._last: tuple[str | None, str | None, Target] | None = None  # a call's usual target

    def _check_tenant(self, tenant: str) -> None:
        _check_tenant(tenant)
        if not self.quotas_ok and self.catalog.tenants.limited(tenant) is not None:
            raise Rejected(
                f"tenant {tenant!r} has quotas (rate or max_in_flight), which are not "
                "enforced on a Redis Cluster yet: remove them from the catalog there",
                "quota",
                tenant=tenant,
            )

    def __call__(self, req: Request) -> Prepared:
        """Validate; raises Rejected with the reason."""
        task, model = req.task, req.model
        last = self._last
        if last is not None and model == last[1] and task == last[0]:
            target = last[2]
        else:
            if (task is None) == (model is None):
                raise Rejected("name exactly one of task= or model=", "bad_request")
            target = _target(req, self.catalog)
            self._last = (task, model, target)
        if req.version is not None:
            _check_version(req, self.catalog)
        inputs = req.inputs
        sig, rows, nbytes = _signature(inputs)
        tenant = req.tenant or self.tenant
        by = req.priority if tenant == DEFAULT_TENANT else (req.priority, tenant)
        group = target.known(by, sig) if sig is not None and rows > 0 else None
        if group is None:  # not seen passing the checks yet
            target.check(inputs)
            self._check_tenant(tenant)
            group = target.group(req.priority, sig, tenant)
        rid = req.id
        if rid is None:
            if req.idempotent:
                raise Rejected(
                    "idempotent=True needs the caller's own request_id: a retry is "
                    "recognised by it",
                    "bad_request",
                )
            rid = new_id()
        elif rid.__class__ is not str or not _ID_RE.fullmatch(rid):
            _refuse_id(rid)
        if req.tier not in _GOOD_NAMES or req.priority not in _GOOD_NAMES:
            _check_names(req.tier, req.priority)
        deadline = None
        if req.deadline_ms is not None:
            if not req.deadline_ms > 0:
                raise Rejected(
                    f"deadline_ms must be positive, got {req.deadline_ms}", "bad_deadline"
                )
            deadline = self.submitted + req.deadline_ms
        if nbytes > self.max_bytes:
            raise Rejected(
                f"inputs of {nbytes} bytes exceed the limit of {self.max_bytes} bytes", "too_large"
            )
        digest = request_digest(req, _encode(inputs)) if req.idempotent else b""
        traceparent = self._traceparent(req.traceparent)
        return Prepared(
            req, rid, deadline, self.submitted, self.reply_to, inputs, group, rows, nbytes,
            target, digest, None, traceparent,
        )  # fmt: skip

    def _traceparent(self, given: str | None) -> str | None:
        """The caller's traceparent, checked (Rejected if malformed), else one started
        here when the settings ask, else None."""
        if given is not None:
            try:
                return tracecontext.check(given)
            except ValueError as exc:
                raise Rejected(str(exc), "bad_request") from None
        return None if self.start_trace is None else self.start_trace()


_IDS: list[str] = []  # random ids drawn ahead; list.pop is atomic, so threads may share it
os.register_at_fork(after_in_child=_IDS.clear)  # a forked child must not reuse the parent's


def new_id() -> str:
    """What uuid4().hex gives, drawn 256 at a time."""
    try:
        return _IDS.pop()
    except IndexError:
        raw = os.urandom(16 * 256).hex()
        _IDS.extend([raw[i : i + 32] for i in range(0, len(raw), 32)])
        return _IDS.pop()


_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_GOOD_NAMES: set[str] = set()  # tier and priority names that passed (one rule for both)


def _check_version(req: Request, catalog: Catalog) -> None:
    """A pinned version names one of the model's versions; a task has several models."""
    if req.model is None:
        raise Rejected(
            "version= pins a version of a model: submit with model=, not task=", "bad_request"
        )
    spec = catalog.models[req.model]
    if req.version not in spec.version_names():
        raise Rejected(
            f"model {req.model} has no version {req.version!r}; "
            f"it has {sorted(spec.version_names())}",
            "unknown_version",
        )


def _refuse_id(rid: Any) -> None:
    try:
        check_id(rid)
    except InvalidName as exc:
        raise Rejected(str(exc), "bad_id") from exc


def _check_tenant(tenant: str) -> None:
    try:
        check_name("tenant", tenant)
    except InvalidName as exc:
        raise Rejected(str(exc), "bad_request") from exc


def _check_names(tier: str, priority: str) -> None:
    try:
        check_name("tier", tier)
        check_name("priority", priority)
    except InvalidName as exc:
        raise Rejected(str(exc), "bad_request") from exc
    if len(_GOOD_NAMES) > 1000:
        _GOOD_NAMES.clear()  # never grows without bound
    _GOOD_NAMES.update((tier, priority))


_NDARRAY = np.ndarray


def _signature(inputs: Any) -> tuple[tuple[Any, ...] | None, int, int]:
    """Names, dtypes and shapes past the batch axis, the rows and the bytes; (None, 0, 0)
    when the inputs are not plain arrays agreeing on their rows (the full checks then
    explain). One input, the common case, costs one small tuple."""
    if inputs.__class__ is dict and len(inputs) == 1:  # the common case, tested first
        for name, arr in inputs.items():
            if arr.__class__ is _NDARRAY:
                shape = arr.shape
                if shape:
                    return (name, arr.dtype, shape[1:]), shape[0], arr.nbytes
        return None, 0, 0
    try:
        items = inputs.items()
    except AttributeError:
        return None, 0, 0
    parts = []
    rows, nbytes = -1, 0
    for name, arr in items:
        if arr.__class__ is not np.ndarray or not arr.ndim:
            return None, 0, 0
        shape = arr.shape
        if rows != shape[0]:
            if rows != -1:
                return None, 0, 0
            rows = shape[0]
        parts.append((name, arr.dtype, shape[1:]))
        nbytes += arr.nbytes
    return tuple(parts), rows, nbytes


def _encode(inputs: Mapping[str, np.ndarray]) -> bytes:
    try:
        return wire.dumps_inputs(inputs)
    except TypeError as exc:
        raise Rejected(str(exc), "bad_input") from exc


def request_digest(req: Request, inputs: bytes) -> bytes:
    """What decides the answer: the target, the tier and the encoded inputs. Not the
    deadline, priority or client, so a retry from another process still matches."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{req.task or ''}\n{req.model or ''}\n{req.tier}\n".encode())
    h.update(inputs)
    return h.digest()


_TARGETS: dict[int, tuple[Catalog, dict[tuple[str | None, str | None], Target]]] = {}


def _target(req: Request, catalog: Catalog) -> Target:
    held = _TARGETS.get(id(catalog))
    if held is None or held[0] is not catalog:
        held = (catalog, {})
        _TARGETS.clear()  # one catalog at a time in practice; never grows without bound
        _TARGETS[id(catalog)] = held
    key = (req.task, req.model)
    found = held[1].get(key)
    if found is None:
        found = held[1][key] = Target(_models_for(req, catalog), catalog.tenants)
    return found


def _models_for(req: Request, catalog: Catalog) -> list[ModelSpec]:
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


# -- bundles ------------------------------------------------------------------------------


class Outgoing:
    """One ingress entry to be: requests of one group, their fields encoded once."""

    __slots__ = ("fields", "members", "shard", "stream")

    def __init__(
        self, members: list[Prepared], fields: dict[bytes, bytes], stream: str, shard: int = 0
    ) -> None:
        self.members, self.fields, self.stream, self.shard = members, fields, stream, shard


def plan_calls(prepared: list[Prepared], keys: Keys, settings: Settings) -> list[list[Outgoing]]:
    """Group by (first model, lane, signature), bundle, and pack bundles into script calls
    of at most SUBMIT_CHUNK requests each; raises Rejected before anything is sent."""
    groups: dict[tuple[Any, ...], list[Prepared]] = {}
    if keys.shards == 1:
        for p in prepared:
            groups.setdefault(p.group, []).append(p)
    else:  # one ingress shard per call: its stream, counters and result keys share a slot
        for p in sorted(prepared, key=lambda p: keys.shard_of(p.id)):
            groups.setdefault((keys.shard_of(p.id), p.group), []).append(p)
    cap = min(BUNDLE_BYTES, settings.max_payload_bytes)
    out: list[Outgoing] = []
    for members in groups.values():
        for run in _runs(members, cap):
            out += encode_bundles(run, keys, settings.max_payload_bytes)
    calls: list[list[Outgoing]] = []
    size, shard = SUBMIT_CHUNK, -1
    for b in out:
        if size + len(b.members) > SUBMIT_CHUNK or b.shard != shard:
            calls.append([])
            size, shard = 0, b.shard
        calls[-1].append(b)
        size += len(b.members)
    return calls


def _runs(members: list[Prepared], cap: int) -> Iterable[list[Prepared]]:
    """Consecutive slices of at most SUBMIT_CHUNK requests and ``cap`` input bytes."""
    if len(members) <= SUBMIT_CHUNK and sum([p.nbytes for p in members]) <= cap:
        yield members
        return
    run: list[Prepared] = []
    size = 0
    for p in members:
        if run and (len(run) >= SUBMIT_CHUNK or size + p.nbytes > cap):
            yield run
            run, size = [], 0
        run.append(p)
        size += p.nbytes
    if run:
        yield run


def encode_bundles(run: list[Prepared], keys: Keys, max_bytes: int) -> list[Outgoing]:
    """The entry (or, past the byte limit once encoded, entries) for one run."""
    first = run[0]
    shard = keys.shard_of(first.id)
    stream = keys.model_stream(first.group[0], first.group[1], first.group[5], shard=shard)
    if len(run) == 1:
        _check_finite(run, first.inputs)
        inputs = _encode(first.inputs)
        if len(inputs) > max_bytes:
            raise Rejected(
                f"inputs of {len(inputs)} bytes exceed the limit of {max_bytes} bytes", "too_large"
            )
        return [Outgoing(run, {HEADER: first.header.dumps(), INPUTS: inputs}, stream, shard)]
    stacked = {name: np.concatenate([p.inputs[name] for p in run]) for name in first.inputs}
    _check_finite(run, stacked)
    inputs = _encode(stacked)
    if len(inputs) > max_bytes:
        half = len(run) // 2
        return encode_bundles(run[:half], keys, max_bytes) + encode_bundles(
            run[half:], keys, max_bytes
        )
    headers = [_header(p) for p in run]
    fields = bundle_fields(headers, inputs, [p.rows for p in run])
    return [Outgoing(run, fields, stream, shard)]


def _check_finite(run: list[Prepared], inputs: Mapping[str, np.ndarray]) -> None:
    """NaN and inf, checked once over the stacked rows; only a failing bundle is checked
    request by request, so the error names the request's own input."""
    if not run[0].target.finite:
        return
    for arr in inputs.values():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            for p in run:
                p.target.check(p.inputs)


def without(call: list[Outgoing], drop: set[int], keys: Keys, max_bytes: int) -> list[Outgoing]:
    """The call again without the requests at these 0-based positions, re-encoded."""
    out: list[Outgoing] = []
    at = 0
    for b in call:
        keep = [p for i, p in enumerate(b.members, start=at) if i not in drop]
        at += len(b.members)
        if len(keep) == len(b.members):
            out.append(b)
        elif keep:
            out += encode_bundles(keep, keys, max_bytes)
    return out


def members(call: list[Outgoing]) -> list[Prepared]:
    return [p for b in call for p in b.members]


# -- the script call ----------------------------------------------------------------------


class Call:
    """One submit.lua call: keys, arguments, and which stream each counter key counts."""

    __slots__ = ("args", "bounds", "keys", "quotas", "streams")

    def __init__(self, call: list[Outgoing], keys: Keys, settings: Settings, partial: bool) -> None:
        shard = call[0].shard if call else 0
        ingress = keys.ingress_of(shard)
        self.keys = [ingress, keys.backlog(ingress)]
        self.streams = [ingress, ingress]
        bound, model_bound = settings.shard_bounds()
        self.bounds = [bound, bound]
        self.quotas: list[TenantSpec] = []  # tenants with limits among the call's requests
        index: dict[str, int] = {}
        quota_index: dict[str, int] = {}
        quotas: list[list[Any]] = []
        args: list[Any] = [b""]
        plan: list[Any] = []
        for b in call:
            j = index.get(b.stream)
            if j is None:
                self.keys.append(keys.backlog(b.stream))
                self.streams.append(b.stream)
                self.bounds.append(model_bound)
                j = index[b.stream] = len(self.keys)
            ids = [p.id for p in b.members]
            digests = [p.digest for p in b.members]
            first = b.members[0]
            q = 0
            if first.target.tenants:
                q = self._quota(first.target.tenants, first.group[4], keys, quota_index, quotas)
            reply = keys.reply_channel(first.reply_to) if first.reply_to else ""
            plan.append([j, ids, digests, len(args) + 1, len(b.fields), q, first.group[4], reply])
            for name, value in b.fields.items():
                args += (name, value)
        args[0] = msgpack.packb(
            [
                bound,
                model_bound,
                settings.pending_ttl_s,
                settings.pending_ttl_s + settings.result_ttl_s,  # outlives what it vouches for
                keys.result_prefix(shard),
                int(partial),
                plan,
                quotas,
                keys.tenant_counts,
            ],
            use_bin_type=False,
        )
        self.args = args

    def _quota(
        self,
        tenants: Tenants,
        tenant: str,
        keys: Keys,
        seen: dict[str, int],
        quotas: list[list[Any]],
    ) -> int:
        """The script's quota index of a tenant with limits (0: none), added once a call."""
        q = seen.get(tenant)
        if q is not None:
            return q
        spec = tenants.limited(tenant)
        if spec is None:
            seen[tenant] = 0
            return 0
        bucket = in_flight = 0
        if spec.rate is not None:
            bucket = self._key(keys.tenant_bucket(tenant))
        if spec.max_in_flight is not None:
            in_flight = self._key(keys.tenant_in_flight(tenant))
        quotas.append(
            [tenant, spec.rate or 0, spec.bucket, spec.max_in_flight or 0, bucket, in_flight]
        )
        self.quotas.append(spec)
        seen[tenant] = len(quotas)
        return len(quotas)

    def _key(self, key: str) -> int:
        self.keys.append(key)
        self.streams.append(key)  # not a stream: never a full one either
        self.bounds.append(0)
        return len(self.keys)

    def model(self) -> str | None:
        """The first model the call's requests start on: whose drain rate a retry-after
        is estimated from."""
        for stream in self.streams[2:]:
            if ":q:" in stream:
                return stream_model(stream)
        return None

    def over_quota(self, refusal: list[Any], count: int, drain: float | None) -> Rejected:
        """A tenant's rate or in-flight limit refused ``count`` requests."""
        _, q, kind, retry_ms, figure = refusal
        spec = self.quotas[int(q) - 1]
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        if kind == "rate":
            limit = f"rate {spec.rate:g} req/s (burst {spec.bucket:g}; {float(figure):.2f} left)"
            wait = max(0.001, int(retry_ms) / 1000.0)
        else:
            limit = f"max_in_flight {spec.max_in_flight} ({int(float(figure))} in flight)"
            wait = retry_after(int(float(figure)) + count - (spec.max_in_flight or 0), drain)
        return Rejected(
            f"tenant {spec.name!r} is over its quota: {limit}; {count} request(s) not queued, "
            f"retry after {wait:.3f} s",
            "quota",
            retry_after_s=wait,
            tenant=spec.name,
            limit=kind,
        )

    def full(
        self, index: int, depth: int, count: int, accepted: list[str], drain: float | None = None
    ) -> Rejected:
        stream, bound = self.streams[index - 1], self.bounds[index - 1]
        wait = retry_after(depth + count - bound, drain)
        return Rejected(
            f"queue is full: {stream} holds {depth} requests, bound {bound}; "
            f"{count} request(s) not queued, retry after {wait:.3f} s",
            "queue_full",
            accepted=accepted,
            retry_after_s=wait,
        )


UNKNOWN_RETRY_S = 1.0  # a retry-after when no worker has published its speed yet
MIN_RETRY_S = 0.001


def drain_rate(observed: Any) -> float | None:
    """Requests per second a model's workers drain, from its ``obs:<model>`` hash (HMGET
    of compute_ms and batch): one consumer's rate, the conservative guess."""
    try:
        compute_ms, batch = (float(v) for v in observed)
    except (TypeError, ValueError):
        return None
    if compute_ms <= 0 or batch <= 0:
        return None
    return batch / compute_ms * 1000.0


def retry_after(excess: int, drain: float | None) -> float:
    """Seconds until ``excess`` requests have drained at ``drain`` req/s (positive)."""
    if drain is None or drain <= 0:
        return UNKNOWN_RETRY_S
    return max(MIN_RETRY_S, max(1, excess) / drain)


class Reply:
    """submit.lua's answer."""

    __slots__ = ("depth", "dups", "full", "full_depth", "ok", "quota", "refused", "skips")

    def __init__(self, raw: Any) -> None:
        self.ok, self.depth = bool(int(raw[0])), int(raw[1])
        self.dups = [int(i) - 1 for i in raw[2]]  # 0-based positions from here on
        self.skips = [int(i) - 1 for i in raw[3]]
        self.refused = [int(i) - 1 for i in raw[4]]
        self.full, self.full_depth = int(raw[5]), int(raw[6])
        #: 0-based position -> {position, quota, kind, retry ms, figure} (lua/submit.lua)
        self.quota: dict[int, list[Any]] = {int(q[0]) - 1: q for q in (raw[7:8] or [[]])[0]}

    @property
    def estimates(self) -> bool:
        """The refusal needs the model's drain rate for its retry-after (one read)."""
        return bool(self.full) or any(_kind(q[2]) == "in_flight" for q in self.quota.values())


def _kind(kind: Any) -> str:
    return kind.decode() if isinstance(kind, bytes) else str(kind)


Send = Callable[[Call], Reply]


def strict_outcome(
    reply: Reply,
    call: list[Outgoing],
    sent: Call,
    accepted: list[str],
    keys: Keys,
    max_bytes: int,
    drain: float | None = None,
) -> list[Outgoing] | Rejected:
    """submit_many: a refusal refuses the call (the Rejected to raise, earlier calls in
    ``accepted``); idempotent retries already queued are left out and the rest sent again.

    Returned, not raised: raised here, a caller keeping the error would keep this frame's
    bundles alive through its traceback.
    """
    flat = members(call)
    if reply.ok:
        accepted += [p.id for p in flat]
        return []
    if reply.dups:
        ids = [flat[i].id for i in reply.dups]
        return duplicate_ids(ids, len(flat), accepted, "already in use")
    if reply.full:
        return sent.full(reply.full, reply.full_depth, len(flat), accepted, drain)
    if reply.quota:
        refusal = sent.over_quota(next(iter(reply.quota.values())), len(flat), drain)
        refusal.accepted = accepted
        return refusal
    accepted += [flat[i].id for i in reply.skips]
    return without(call, set(reply.skips), keys, max_bytes)


def partial_outcome(
    reply: Reply,
    call: list[Outgoing],
    sent: Call,
    keys: Keys,
    max_bytes: int,
    settle: Callable[[Prepared, Rejected | None], None],
    drain: float | None = None,
) -> list[Outgoing]:
    """Coalesced submits: each refused request is answered alone (``settle``), the others
    are sent again; returns what to send next (empty when all are answered)."""
    flat = members(call)
    if reply.ok:
        for p in flat:
            settle(p, None)
        return []
    for i in reply.dups:
        settle(flat[i], duplicate_ids([flat[i].id], 1, [], "already in use"))
    for i in reply.skips:
        settle(flat[i], None)
    for i in reply.refused:
        settle(flat[i], sent.full(reply.full, reply.full_depth, 1, [], drain))
    for i, refusal in reply.quota.items():
        settle(flat[i], sent.over_quota(refusal, 1, drain))
    gone = {*reply.dups, *reply.skips, *reply.refused, *reply.quota}
    return without(call, gone, keys, max_bytes)


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
        if not self.published:
            return False
        cat = self.catalog
        if cat is not None:
            known = req.task in cat.tasks if req.task else req.model in cat.models
            if known and req.version is not None and req.model is not None:  # a new version?
                known = req.version in cat.models[req.model].version_names()
            if known:
                return False
        return time.monotonic() - self.checked >= self.REFRESH_S

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
