"""One router read batch: its entries, its groups, its decisions and its one commit.

Requests that share (task or pinned model, tier, priority) share one decision when no
rule needs their inputs and none of them has a deadline; the deadline rule then runs per
request (float compares), and the complexity and learned rules run per request on
figures computed per entry in one numpy or ONNX call. A surprise in a group's decision
retries its requests alone; one in a request's own decision fails only that request.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import redis

from cascadeq.config.tasks import TaskSpec
from cascadeq.infra import claims, refusal, tracing
from cascadeq.infra.commit import Commit
from cascadeq.infra.log import get_logger
from cascadeq.protocol import bundle, deadletter
from cascadeq.protocol import keys as keynames
from cascadeq.protocol.bundle import BadItem, Bundle, EntryError, Header
from cascadeq.protocol.keys import DEFAULT_TENANT
from cascadeq.protocol.messages import EXPIRED, Result, error_result
from cascadeq.router import forward
from cascadeq.router.policy import (
    GROUP_RULES,
    RULES,
    Decision,
    Request,
    RouteError,
    choose,
    deadline,
    scores,
)

if TYPE_CHECKING:
    from cascadeq.config.catalog import Catalog
    from cascadeq.config.settings import Settings
    from cascadeq.infra.observed import LoadBoard
    from cascadeq.protocol.keys import Keys
    from cascadeq.router.learned import LearnedRouters


class Router(Protocol):
    """What a batch reads of the router that runs it (service.Router is one), so the loop
    and the batch it drives do not import each other."""

    keys: Keys
    settings: Settings
    catalog: Catalog
    board: LoadBoard
    learned: LearnedRouters

    #: model -> its fallback, while the model's queue is held at its bound past the wait
    diverted: dict[str, str]

    def stream_for(
        self, model: str, priority: str, tenant: str = DEFAULT_TENANT, shard: int = 0
    ) -> str: ...


log = get_logger("cascadeq.router")

_NO_INPUTS: Mapping[str, np.ndarray] = {}
_NO_DEADLINE = {None}


def _no_inputs() -> Mapping[str, np.ndarray]:
    return _NO_INPUTS


@dataclass
class Group:
    """Requests of one batch that share task or model, tier, priority and tenant."""

    first: Header
    parts: dict[int, list[int]] = field(default_factory=dict)  # entry number -> indices
    timed: bool = False  # some request has a deadline


class RouteBatch:
    def __init__(self, router: Router, now: float, shard: int = 0) -> None:
        self.router = router
        self.keys = router.keys
        self.now = now
        self.commit = Commit(router.settings.result_ttl_s)
        self.bundles: dict[int, Bundle] = {}  # entry number -> its requests
        self.raw: dict[int, dict[bytes, bytes]] = {}
        self.groups: dict[tuple[str | None, str | None, str, str, str], Group] = {}
        self.out: dict[str, list[forward.Part]] = {}  # stream -> parts, in order
        self.rules: Counter[str] = Counter()
        self.finals: Counter[str] = Counter()
        self.shard = shard  # the ingress shard read: every stream it feeds is in its slot
        self.ingress = self.keys.ingress_of(shard)
        self.counter = self.keys.backlog(self.ingress)

    # -- reading -------------------------------------------------------------------------

    def read(self, eid: bytes, fields: dict[bytes, bytes]) -> None:
        """Decode one entry and sort its requests into groups; refuse what cannot go on."""
        try:
            got = bundle.decode(self.ingress, eid, fields, self.router.settings.max_payload_bytes)
        except EntryError as exc:
            kept = deadletter.kept(fields, exc.code)
            self._refuse_entry(eid, kept, exc.code, str(exc), exc.salvaged)
            return
        except Exception as exc:  # noqa: BLE001 - a surprise no check foresaw is bad input
            self._refuse_entry(eid, fields, "bad_payload", f"entry is unusable: {exc!r}", [])
            return
        owner = self._in_flight(got)
        n = self.commit.entry(
            self.ingress, keynames.ROUTER_GROUP, eid, got.size, self.counter, in_flight=owner
        )
        self.bundles[n], self.raw[n] = got, fields
        try:
            self._sort(n, got)
        except Exception as exc:  # noqa: BLE001 - nothing one entry does escapes
            self._internal_entry(n, got, exc)

    def _in_flight(self, got: Bundle) -> str | None:
        """The in-flight counter a result of this entry releases (a producer bundles one
        tenant per entry): only for tenants with ``max_in_flight``; None otherwise."""
        tenants = self.router.catalog.tenants
        if not tenants or not got.headers:
            return None
        return tenants.in_flight_counter(self.keys, got.headers[0].tenant)

    def _sort(self, n: int, got: Bundle) -> None:
        key = got.route
        if not got.bad and key is not None:
            deadlines = {h.deadline for h in got.headers}
            if deadlines == _NO_DEADLINE:  # one group, nothing to expire: no look at each
                g = self.groups.get(key)
                if g is None:
                    g = self.groups[key] = Group(got.headers[0])
                g.parts[n] = list(range(got.size))
                return
        bad = {item.index for item in got.bad}
        for item in got.bad:
            self._refuse_item(n, got, item)
        now, groups = self.now, self.groups
        for i, h in enumerate(got.headers):
            if bad and i in bad:
                continue
            if h.deadline is not None and h.deadline <= now:
                self._expire(n, h)
                continue
            key = (h.task, h.model, h.tier, h.priority, h.tenant)
            g = groups.get(key)
            if g is None:
                g = groups[key] = Group(h)
            indices = g.parts.get(n)
            if indices is None:
                indices = g.parts[n] = []
            indices.append(i)
            if h.deadline is not None:
                g.timed = True

    def drop_answered(self, r: redis.Redis) -> int:
        """Drop from the groups the requests already answered (cancelled before routing):
        one look for the whole batch, which the router makes only once cancels exist."""
        order = [(g, n, idx) for g in self.groups.values() for n, idx in g.parts.items()]
        if not order:
            return 0
        parts = [
            (self.ingress, b"", [self.bundles[n].headers[i].id for i in idx]) for _, n, idx in order
        ]
        skipped = set(claims.answered(r, self.keys, parts))
        if not skipped:
            return 0
        pos = 0
        for g, n, idx in order:
            keep = [i for k, i in enumerate(idx) if pos + k not in skipped]
            pos += len(idx)
            if len(keep) < len(idx):
                g.parts[n] = keep
        for key, g in list(self.groups.items()):
            g.parts = {n: idx for n, idx in g.parts.items() if idx}
            if not g.parts:
                del self.groups[key]
        self.finals["cancelled"] += len(skipped)
        return len(skipped)

    # -- deciding ------------------------------------------------------------------------

    def route(self) -> None:
        """Decide every group, then add one bundle per stream (at most max_batch samples)."""
        for g in self.groups.values():
            self._guarded_group(g)
        for stream, parts in self.out.items():
            self._emit(stream, parts)
        if tracing.on():
            self._trace_hops()

    def _trace_hops(self) -> None:
        """A log line (and no span: routing is one step) for each traced request routed."""
        for b in self.bundles.values():
            for h in b.headers:
                if h.traceparent is not None and h.routed_at == self.now and h.trace:
                    tracing.hop("router", h, model=h.trace[-1].get("model"), stage=h.stage)

    def _guarded_group(self, g: Group) -> None:
        try:
            self._decide_group(g)
        except redis.RedisError:
            raise
        except RouteError as exc:
            for n, indices in g.parts.items():
                for i in indices:
                    self._route_error(n, self.bundles[n].headers[i], exc)
        except Exception:  # noqa: BLE001 - retried one request at a time
            log.warning("group_decision_failed", task=g.first.task, model=g.first.model)
            for n, indices in g.parts.items():
                for i in indices:
                    self._alone(n, i)

    def _decide_group(self, g: Group) -> None:
        first, catalog = g.first, self.router.catalog
        task = catalog.tasks.get(first.task) if first.task is not None else None
        if task is None:  # a pinned model, or an unknown task: no rule reads anything
            self._place_all(g, choose(first, catalog, RULES, None))
            return
        if task.complexity is not None or task.learned is not None:
            self._decide_each(g, task)
            return
        decision = choose(first, catalog, GROUP_RULES, self._request(first, task))
        if g.timed and task.deadline:
            self._deadlines(g, task, decision)
        else:
            self._place_all(g, decision)

    def _request(self, h: Header, task: TaskSpec, **kw: Any) -> Request:
        return Request(h, task, self.router.board, _no_inputs, now_ms=self.now, **kw)

    def _deadlines(self, g: Group, task: TaskSpec, shared: Decision) -> None:
        """The group's decision, with the deadline rule looking at each request's own."""
        hop = shared.hop()
        for n, indices in g.parts.items():
            headers = self.bundles[n].headers
            for i in indices:
                h = headers[i]
                if h.deadline is None:
                    self._place(n, i, shared, hop)
                    continue
                try:
                    d = deadline(self._request(h, task), shared)
                except Exception as exc:  # noqa: BLE001 - this request fails alone
                    self._internal(n, self.bundles[n], i, exc)
                    continue
                self._place(n, i, d, hop if d is shared else d.hop())

    def _decide_each(self, g: Group, task: TaskSpec) -> None:
        """Rules that read inputs: their figures per entry in one call, the rules per request."""
        for n, indices in g.parts.items():
            b = self.bundles[n]
            score, p_hard = self._figures(task, b)
            for i in indices:
                self._each(n, b, i, task, score, p_hard)

    def _each(
        self,
        n: int,
        b: Bundle,
        i: int,
        task: TaskSpec,
        score: np.ndarray | None,
        p_hard: np.ndarray | None,
    ) -> None:
        """One request's own rules, with its per-entry figures; a surprise fails it alone."""
        h = b.headers[i]
        try:
            req = self._request(
                h,
                task,
                score=None if score is None else float(score[i]),
                p_hard=None if p_hard is None else float(p_hard[i]),
            )
            if score is None and task.complexity is not None:
                req.inputs = partial_inputs(b, i)
            d = choose(h, self.router.catalog, RULES, req)
        except RouteError as exc:
            self._route_error(n, h, exc)
            return
        except redis.RedisError:
            raise
        except Exception as exc:  # noqa: BLE001 - this request fails, its neighbours go on
            self._internal(n, b, i, exc)
            return
        self._place(n, i, d, d.hop())

    def _figures(self, task: TaskSpec, b: Bundle) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Complexity scores and learned verdicts for every request of an entry."""
        score = p_hard = None
        off = b.offsets()
        spec = task.complexity
        if spec is not None and b.inputs:
            name = spec.input or next(iter(b.inputs))
            arr = b.inputs.get(name)
            if arr is not None:
                score = scores(spec.score, arr, off)
        learned = self.router.learned
        if task.learned is not None and task.name in learned and b.inputs:
            try:
                p_hard = learned.p_hard_stacked(task.name, b.inputs, off[:-1])
            except Exception as exc:  # noqa: BLE001 - no verdict: the rules go on without it
                log.warning("learned_router_failed", task=task.name, error=repr(exc))
        return score, p_hard

    def _alone(self, n: int, i: int) -> None:
        """A request whose group's decision raised, decided by itself."""
        b = self.bundles[n]
        h = b.headers[i]
        try:
            task = self.router.catalog.tasks.get(h.task) if h.task is not None else None
            req = None if task is None else self._request(h, task, **self._own(task, b, i))
            if req is not None and task is not None and task.complexity is not None:
                req.inputs = partial_inputs(b, i)
            d = choose(h, self.router.catalog, RULES, req)
            self._place(n, i, d, d.hop())
        except RouteError as exc:
            self._route_error(n, h, exc)
        except redis.RedisError:
            raise
        except Exception as exc:  # noqa: BLE001 - this request fails, its neighbours go on
            self._internal(n, b, i, exc)

    def _own(self, task: TaskSpec, b: Bundle, i: int) -> dict[str, float | None]:
        if task.learned is None or task.name not in self.router.learned or not b.inputs:
            return {}
        mask = np.zeros(b.size, dtype=bool)
        mask[i] = True
        one = bundle.take_rows(b.inputs, b.rows, mask)
        verdict = self.router.learned.p_hard(task.name, [one])[0]
        return {"p_hard": verdict}

    # -- placing -------------------------------------------------------------------------

    def _place_all(self, g: Group, d: Decision) -> None:
        """Every request of the group goes where ``d`` says, sharing one hop dict (nothing
        changes a hop the router appended: the worker appends its own)."""
        stage, now = d.stage, self.now
        model, hops = self._hops(d.model, d.hop())
        stream = self.router.stream_for(model, g.first.priority, g.first.tenant, self.shard)
        for n, indices in g.parts.items():
            headers = self.bundles[n].headers
            placed = headers if len(indices) == len(headers) else map(headers.__getitem__, indices)
            for h in placed:
                h.stage, h.routed_at = stage, now
                h.trace += hops
            self._out(stream, n, indices)
        self.rules[d.rule] += sum(len(i) for i in g.parts.values())

    def _place(self, n: int, i: int, d: Decision, hop: dict[str, Any]) -> None:
        h = self.bundles[n].headers[i]
        h.stage, h.routed_at = d.stage, self.now
        model, hops = self._hops(d.model, hop)
        h.trace += hops
        self._out(self.router.stream_for(model, h.priority, h.tenant, self.shard), n, [i])
        self.rules[d.rule] += 1

    def _hops(self, model: str, hop: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        """Where the decision sends a request and the hops it adds: the model's, or, while
        its queue is held past the wait, its fallback's after the model's marked failed."""
        to = self.router.diverted.get(model) if self.router.diverted else None
        if to is None:
            return model, [hop]
        failed = {**hop, "failed": "queue held at its bound"}
        return to, [failed, {"model": to, "rule": "fallback", "hop": "fallback"}]

    def _out(self, stream: str, n: int, indices: list[int]) -> None:
        parts = self.out.get(stream)
        if parts is None:
            parts = self.out[stream] = []
        if parts and parts[-1][1] == n:
            parts[-1][2].extend(indices)
        else:
            parts.append((self.bundles[n], n, list(indices)))

    def _emit(self, stream: str, parts: list[forward.Part]) -> None:
        """The stream's entries; a surprise building them leaves their sources pending, so
        a reclaim retries each alone. A tenant sub-stream's entries hold at most half a
        batch: a worker never splits an entry, so a light tenant's entry and a busy one's
        then fit one batch together instead of taking turns with part-empty batches."""
        model = keynames.stream_model(stream)
        max_batch = self.router.catalog.models[model].batching.max_batch
        if self.router.catalog.tenants and keynames.stream_tenant(stream) is not None:
            max_batch = max(1, max_batch // 2)
        counter = self.keys.backlog(stream)
        for _, _, indices in parts:
            indices.sort()
        try:
            built = list(forward.entries(parts, max_batch))
        except Exception as exc:
            log.error("forward_failed", stream=stream, error=repr(exc), exc_info=True)
            for _, n, _ in parts:
                self.commit.fail(n)
            return
        for fields, requests, sources in built:
            self.commit.add(stream, fields, sources, counted=(counter, requests))

    # -- refusing ------------------------------------------------------------------------

    def _answer(self, rid: str, payload: bytes, reply_to: str | None, n: int, status: str) -> None:
        channel = self.keys.reply_channel(reply_to) if reply_to else None
        self.commit.result(self.keys.result(rid), payload, channel, n)
        self.finals[status] += 1

    def _store(self, res: Result, reply_to: str | None, n: int) -> None:
        self._answer(res.id, res.dumps(), reply_to, n, res.status)

    def _expire(self, n: int, h: Header) -> None:
        res = error_result(h, "deadline", "deadline passed before routing", status=EXPIRED)
        self._store(res, h.reply_to, n)
        self.rules["expired"] += 1

    def _route_error(self, n: int, h: Header, exc: RouteError) -> None:
        self._store(error_result(h, exc.code, str(exc)), h.reply_to, n)
        self.rules[exc.code] += 1

    def _refuser(self) -> refusal.Refuser:
        return refusal.Refuser(self.commit, self.keys, self._store, log)

    def _refuse_item(self, n: int, b: Bundle, item: BadItem) -> None:
        """One request of an entry that cannot go on: its error result and dead letter."""
        fields = self.raw[n] if b.single else forward.single_fields(b, item.index, item.raw_header)
        self._refuser().request(
            item, stream=self.ingress, entry_id=b.entry_id, entry=n, fields=fields
        )

    def _internal(self, n: int, b: Bundle, i: int, exc: Exception) -> None:
        """Routing this request raised: it gets an error result, it a dead letter."""
        message = f"routing failed: {exc!r}"
        self._refuse_item(n, b, BadItem(i, "internal", message, header=b.headers[i]))
        self.rules["internal"] += 1

    def _internal_entry(self, n: int, b: Bundle, exc: Exception) -> None:
        """Sorting an entry raised: each of its requests fails, none is forwarded."""
        for g in self.groups.values():
            g.parts.pop(n, None)
        for i in range(b.size):
            self._internal(n, b, i, exc)

    def _refuse_entry(
        self,
        eid: bytes,
        fields: dict[bytes, bytes],
        code: str,
        message: str,
        salvaged: list[BadItem],
    ) -> None:
        """An entry none of whose requests can go on: an error result for each id found."""
        self._refuser().entry(
            stream=self.ingress,
            group=keynames.ROUTER_GROUP,
            entry_id=eid,
            fields=fields,
            code=code,
            reason=message,
            salvaged=salvaged,
        )

    def poison(self, eid: bytes, fields: dict[bytes, bytes], reason: str) -> None:
        """An entry delivered too often: every id it holds is answered, it is dead-lettered."""
        try:
            got = bundle.decode(self.ingress, eid, fields, self.router.settings.max_payload_bytes)
            headers = enumerate(got.headers)
            salvaged = [BadItem(i, "dead_letter", reason, header=h) for i, h in headers]
            for item in got.bad:
                salvaged[item.index] = item
        except EntryError as exc:
            salvaged = exc.salvaged
        except Exception:  # noqa: BLE001 - then only the dead letter
            salvaged = []
        self._refuse_entry(eid, fields, "dead_letter", reason, salvaged)


def partial_inputs(b: Bundle, i: int) -> Any:
    """The inputs of one request of an entry, for a scorer asked per request."""

    def inputs() -> Mapping[str, np.ndarray]:
        if not b.inputs:
            return _NO_INPUTS
        mask = np.zeros(b.size, dtype=bool)
        mask[i] = True
        return bundle.take_rows(b.inputs, b.rows, mask)

    return inputs
