"""The router loop: read ingress in batches, route each entry, forward, then ack.

Effect first, then XACK: a router that dies between the two re-delivers its entries
to another router after the visibility timeout; workers see at most a duplicate,
which the first-write-wins result makes harmless.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import redis

from cascadeq import keys as keynames
from cascadeq import metrics, results, streams, wire
from cascadeq.catalog import Catalog
from cascadeq.clock import Every
from cascadeq.effects import Effects
from cascadeq.isolation import backstop, bookkeeping, guarded
from cascadeq.keys import Keys
from cascadeq.log import get_logger
from cascadeq.messages import (
    EXPIRED,
    HEADER_FIELD,
    INPUTS_FIELD,
    Header,
    error_result,
    kept_for_dead_letter,
    now_ms,
    oversize,
    salvage_id,
)
from cascadeq.observed import LoadBoard
from cascadeq.process import consumer_name, serve
from cascadeq.settings import Settings
from router.learned import LearnedRouters
from router.policy import RULES, Request, RouteError, choose

log = get_logger("cascadeq.router")


def publish_catalog(r: redis.Redis, keys: Keys, catalog: Catalog) -> None:
    """Let producers validate against the catalog without a copy of the file."""
    r.set(keys.catalog, wire.dumps({"source": catalog.source, "text": catalog.text}))


@dataclass
class _Parsed:
    eid: bytes
    header: Header
    inputs: bytes
    fields: streams.Fields = field(default_factory=dict)  # as read: for a dead letter
    p_hard: float | None = None
    _decoded: dict[str, np.ndarray] | None = None
    _broken: bool = False

    def decoded(self) -> dict[str, np.ndarray] | None:
        """The inputs, decoded once and only if a rule needs them; None if undecodable."""
        if self._decoded is None and not self._broken:
            try:
                self._decoded = wire.loads_inputs(self.inputs)
            except (wire.WireError, ValueError, TypeError):
                self._broken = True  # the worker answers it with a clear error
        return self._decoded


class Router:
    def __init__(
        self, r: redis.Redis, catalog: Catalog, settings: Settings, consumer: str | None = None
    ) -> None:
        self.r, self.catalog, self.settings = r, catalog, settings
        self.keys = Keys(settings.prefix)
        self.consumer = consumer or consumer_name("router")
        self.routed = 0
        self.reclaim_clock = Every(streams.reclaim_period(settings.visibility_timeout_ms))
        self.trim_clock = Every(settings.trim_every_s)
        self.board = LoadBoard(r, self.keys, catalog)
        self.learned = LearnedRouters(catalog)
        self.fed = sorted(
            self.keys.model_stream(m.name, lane)
            for m in catalog.models.values()
            for lane in m.lanes
        )
        self.held: list[str] = []  # model streams over the bound when last checked
        self.depths: list[int] | None = None  # of self.fed, as last seen
        self.finals: Counter[str] = Counter()  # statuses of results the router gave itself
        self.stopping = threading.Event()  # run() hands in its stop event: holds wake on it

    def setup(self) -> None:
        streams.ensure_group(self.r, self.keys.ingress, keynames.ROUTER_GROUP)
        publish_catalog(self.r, self.keys, self.catalog)

    def run(self, stop: threading.Event) -> None:
        log.info("router_started", consumer=self.consumer, models=sorted(self.catalog.models))
        self.stopping = stop
        serve(lambda: self.step(self.settings.block_ms), self.setup, stop, "router")
        log.info("router_stopped", consumer=self.consumer, routed=self.routed)

    def step(self, block_ms: int | None) -> int:
        """One read-route-forward-ack cycle; returns how many entries it handled."""
        handled = self._reclaim() if self.reclaim_clock.due() else 0
        self.board.refresh()
        if self._over_bound():
            if block_ms:  # backpressure: leave ingress alone while a model queue is full
                self.stopping.wait(block_ms / 1000)
        else:
            got = streams.read_new(
                self.r,
                [self.keys.ingress],
                keynames.ROUTER_GROUP,
                self.consumer,
                self.settings.router_batch,
                block_ms,
            )
            entries = [entry for _, entry in got]
            backstop("router", "batch", partial(self.forward, entries))
            handled += len(entries)
        if self.trim_clock.due():
            streams.trim_acknowledged(self.r, self.keys.ingress)
        return handled

    def _over_bound(self) -> bool:
        """True while a model stream this router feeds holds ``model_max_depth`` or more.

        Holding off reading keeps model streams within the bound plus one read per
        router; ingress, bounded at submit, takes up the backlog. The depths come with
        each batch's own effects (no round trip of their own) while nothing is held, so
        they miss only what other routers and escalations added since this router's last
        batch.
        """
        if self.held or self.depths is None:  # only a held router asks Redis again
            pipe = self.r.pipeline(transaction=False)
            for stream in self.fed:
                pipe.xlen(stream)
            self.depths = [int(d) for d in pipe.execute()]
        bound = self.settings.model_max_depth
        held = [s for s, d in zip(self.fed, self.depths, strict=True) if d >= bound]
        if held != self.held:
            log.warning("backpressure", held=held, bound=self.settings.model_max_depth)
            self.held = held
        return bool(held)

    def _reclaim(self) -> int:
        """Take over entries a crashed router held; each is routed in a batch of its own,
        so one that crashed a router can fail only itself."""
        found = streams.reclaim(
            self.r,
            self.keys.ingress,
            keynames.ROUTER_GROUP,
            self.consumer,
            idle_ms=self.settings.visibility_timeout_ms,
            max_deliveries=self.settings.max_deliveries,
        )
        if found.poison:
            effects = Effects(self.r, keynames.ROUTER_GROUP)
            for (eid, fields), count in found.poison:
                reason = f"routing failed {count} times; moved to the dead-letter stream"
                act = partial(
                    self._fail, eid=eid, fields=fields, code="dead_letter", message=reason
                )
                guarded(effects, self.keys.ingress, eid, act, partial(self._keep, eid, fields))
            effects.commit()
        for entry in found.entries:
            backstop("router", "reclaimed entry", partial(self.forward, [entry]))
        return len(found.entries) + len(found.poison)

    def forward(self, entries: list[streams.Entry]) -> int:
        """Route a batch: one pipeline of effects, then one of acks."""
        if not entries:
            return 0
        effects = Effects(self.r, keynames.ROUTER_GROUP)
        parsed = [self._parse(effects, eid, fields) for eid, fields in entries]
        requests = [p for p in parsed if p is not None]
        bookkeeping("learned router", partial(self._ask_learned, requests))
        rules: Counter[str] = Counter()
        for p in requests:

            def act(pipe: Any, p: _Parsed = p) -> None:
                rules[self._route(pipe, p)] += 1

            if not guarded(effects, self.keys.ingress, p.eid, act, partial(self._internal, p)):
                rules["internal"] += 1
        for rule, n in rules.items():
            effects.pipe.hincrby(self.keys.routing_counts, f"route:{rule}", n)
        first = len(effects.pipe)
        for stream in self.fed:  # the depths after this batch, in the same round trip
            effects.pipe.xlen(stream)
        effects.commit()
        depths = effects.replies[first : first + len(self.fed)]
        if not any(isinstance(d, Exception) for d in depths):
            self.depths = [int(d) for d in depths]
        bookkeeping("metrics", partial(metrics.observe_routing, rules, self.finals))
        self.finals.clear()
        self.routed += len(entries)
        return len(entries)

    def _parse(self, effects: Effects, eid: bytes, fields: streams.Fields) -> _Parsed | None:
        """The entry's header, or None once a broken entry has had its effect queued."""
        got: list[_Parsed] = []

        def act(pipe: Any) -> None:
            parsed = self._check(pipe, eid, fields)
            if parsed is not None:
                got.append(parsed)

        guarded(effects, self.keys.ingress, eid, act, partial(self._keep, eid, fields))
        return got[0] if got else None

    def _check(self, pipe: Any, eid: bytes, fields: streams.Fields) -> _Parsed | None:
        raw_header, inputs = fields.get(HEADER_FIELD), fields.get(INPUTS_FIELD)
        if raw_header is None or inputs is None:
            self._fail(pipe, eid, fields, "bad_payload", "entry lacks the h or x field")
            return None
        problem = oversize(raw_header, inputs, self.settings.max_payload_bytes)
        if problem:
            self._fail(pipe, eid, kept_for_dead_letter(raw_header), "too_large", problem)
            return None
        try:
            return _Parsed(eid, Header.loads(raw_header), inputs, fields)
        except (wire.WireError, keynames.InvalidName) as exc:
            self._fail(pipe, eid, fields, "bad_payload", f"header is unusable: {exc}")
            return None

    def _ask_learned(self, batch: list[_Parsed]) -> None:
        """One classifier run per task per router batch, not one per request.

        Should a batch's run fail, each request is asked alone, so one odd input costs
        only its own verdict (None: the rules go on without it).
        """
        by_task: dict[str, list[_Parsed]] = {}
        for p in batch:
            task = p.header.task
            if p.header.model is None and task is not None and task in self.learned:
                by_task.setdefault(task, []).append(p)
        for task, group in by_task.items():
            usable = [p for p in group if p.decoded() is not None]
            try:
                self._judge(task, usable)
            except Exception:  # noqa: BLE001 - retried one by one below
                for p in usable:
                    bookkeeping("learned router", partial(self._judge, task, [p]))

    def _judge(self, task: str, group: list[_Parsed]) -> None:
        verdicts = self.learned.p_hard(task, [p.decoded() or {} for p in group])
        for p, verdict in zip(group, verdicts, strict=True):
            p.p_hard = verdict

    def _route(self, pipe: Any, p: _Parsed) -> str:
        header = p.header
        if header.deadline is not None and header.deadline <= now_ms():
            res = error_result(header, "deadline", "deadline passed before routing", status=EXPIRED)
            results.queue_result(pipe, self.keys, res, header.reply_to, self.settings.result_ttl_s)
            self.finals[res.status] += 1
            return "expired"
        try:
            decision = choose(header, self.catalog, RULES, self._request(p))
        except RouteError as exc:
            res = error_result(header, exc.code, str(exc))
            results.queue_result(pipe, self.keys, res, header.reply_to, self.settings.result_ttl_s)
            self.finals[res.status] += 1
            return exc.code
        header.stage, header.routed_at = decision.stage, now_ms()
        header.trace.append(decision.hop())
        log.debug("routed", request_id=header.id, model=decision.model, rule=decision.rule)
        pipe.xadd(
            self.keys.model_stream(
                decision.model, self.catalog.models[decision.model].lane_for(header.priority)
            ),
            {HEADER_FIELD: header.dumps(), INPUTS_FIELD: p.inputs},
        )
        return decision.rule

    def _request(self, p: _Parsed) -> Request | None:
        task = self.catalog.tasks.get(p.header.task or "")
        if p.header.model is not None or task is None:
            return None

        def inputs() -> Mapping[str, np.ndarray]:
            return p.decoded() or {}

        return Request(p.header, task, self.board, inputs, p.p_hard, now_ms())

    def _internal(self, p: _Parsed, pipe: Any, exc: Exception) -> None:
        """Routing this request raised: it gets an error result, its entry a dead letter."""
        self._fail(pipe, p.eid, p.fields, "internal", f"routing failed: {exc!r}")

    def _keep(self, eid: bytes, fields: streams.Fields, pipe: Any, exc: Exception) -> None:
        """Refusing the entry failed itself: keep the raw entry for an operator, no more."""
        results.queue_dead_letter(
            pipe,
            self.keys,
            fields,
            stream=self.keys.ingress,
            entry_id=eid,
            code="internal",
            reason=f"refusing the entry failed: {exc!r}",
        )

    def _fail(self, pipe: Any, eid: bytes, fields: streams.Fields, code: str, message: str) -> None:
        """Answer what can be answered, and keep the raw entry for an operator."""
        rid, reply_to = salvage_id(fields.get(HEADER_FIELD))
        log.warning("entry_refused", entry=eid.decode(), request_id=rid, code=code, reason=message)
        if rid is not None:
            results.queue_result(
                pipe,
                self.keys,
                error_result(rid, code, message),
                reply_to,
                self.settings.result_ttl_s,
            )
            self.finals["error"] += 1
        results.queue_dead_letter(
            pipe,
            self.keys,
            fields,
            stream=self.keys.ingress,
            entry_id=eid,
            code=code,
            reason=message,
        )
