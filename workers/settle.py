"""What a computed batch becomes: a stored result for each sure request, one escalation
bundle per next model and lane for the unsure (or, where the task escalates locally and
this process serves the next model, that model's results, computed here at once), and
the hop each request took.

Per batch: confidences (one numpy call per measure), output bytes (one copy), the
escalations' input rows (one take per source entry). Per request only what differs:
its hop, its decision and its result's few fields, encoded in C.
"""

from __future__ import annotations

import operator
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np

from cascadeq.config.catalog import Catalog, ModelSpec
from cascadeq.config.tasks import TaskSpec
from cascadeq.infra import tracing
from cascadeq.infra.commit import Commit
from cascadeq.infra.log import get_logger
from cascadeq.infra.observed import LoadBoard
from cascadeq.infra.window import Tally
from cascadeq.protocol import bundle, outputs, traces, wire
from cascadeq.protocol.bundle import Header
from cascadeq.protocol.keys import Keys
from cascadeq.protocol.messages import OK, error_result, now_ms
from cascadeq.workers import outcome, padding
from cascadeq.workers.answers import Encoded, OkBatch, Sure
from cascadeq.workers.batcher import Item, take_expired
from cascadeq.workers.local import LocalModel, LocalModels, cheaper_here, goes_local

log = get_logger("cascadeq.worker")

_TRACEPARENT = operator.attrgetter("traceparent")

#: Fewer sure requests in an entry than this are encoded one at a time: a block costs
#: about as much as 20-25 requests encoded alone (scripts/worker_cpu.py micro --split).
BLOCK_MIN = 24


@dataclass
class BatchWork:
    """One batch's effects and figures: made per batch, sent once, then dropped."""

    commit: Commit
    tally: Tally
    counts: Counter[str] = field(default_factory=Counter)  # routing-count hash increments
    channels: dict[str, int] = field(default_factory=dict)  # reply_to -> channel number
    plans: dict[tuple[Any, ...], _Plan] = field(default_factory=dict)
    answered: list[np.ndarray] = field(default_factory=list)  # total_ms of the ok results
    now: float = 0.0  # epoch ms when the batch's results were written
    # The batches run here for local escalations, by model: their figures count as theirs.
    local: list[tuple[str, Tally]] = field(default_factory=list)


@dataclass(frozen=True)
class Ran:
    """What one model call did for a batch: its items (with their entry numbers) in the
    order their rows were stacked, and the output rows."""

    items: list[tuple[Item, int]]
    out: np.ndarray
    launched_at: float  # epoch ms
    compute_ms: float
    samples: int
    info: dict[str, Any]  # the batch's extra result info (padding overhead)
    #: what served it, named on each request's hop: the version and execution provider
    served: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Plan:
    """What requests of one (task, model, stage, tier) need from this model."""

    task: TaskSpec | None  # None: pinned to a model, no cascade
    measure: str  # the confidence measure
    next: str | None  # the cascade's next model, if this answer may be passed up
    threshold: float  # the confidence below which it is
    traced: bool  # its first-stage outcomes are sampled for `router train`
    local: bool = False  # escalations run here, on this process's session of ``next``


def _plan_for(catalog: Catalog, model: str, header: Header) -> _Plan:
    task = outcome.task_of(catalog, header)
    if task is None:
        return _Plan(None, "top", None, 0.0, traced=False)
    stage = header.stage
    nxt, threshold = None, 0.0
    if 0 <= stage < len(task.cascade) - 1 and _stands_in(catalog, task.cascade[stage].model, model):
        own = task.threshold(stage, header.tier)
        if own is not None:
            nxt, threshold = task.cascade[stage + 1].model, own
    traced = (
        task.trace_sample > 0
        and len(task.cascade) >= 2
        and stage == 0
        and task.cascade[0].model == model
    )
    return _Plan(task, task.confidence, nxt, threshold, traced)


def _stands_in(catalog: Catalog, stage_model: str, model: str) -> bool:
    """True if ``model`` is the stage's model or on its fallback chain: a fallback takes
    the stage over, thresholds and tiers included."""
    seen = 0
    at: str | None = stage_model
    while at is not None and seen <= len(catalog.models):
        if at == model:
            return True
        spec = catalog.models.get(at)
        at, seen = (spec.fallback if spec is not None else None), seen + 1
    return False


@dataclass
class _Escalation:
    stream: str  # "" when local
    to: str  # the model it goes to
    local: bool = False  # run here rather than added to ``stream``
    auto: bool = False  # every request's task says auto: here only where that is cheaper
    parts: list[tuple[Item, np.ndarray]] = field(default_factory=list)  # item, request mask
    part_entries: list[int] = field(default_factory=list)  # each part's entry number
    headers: list[Header] = field(default_factory=list)
    entries: set[int] = field(default_factory=set)

    def take(self, item: Item, index: int, header: Header, entry: int) -> None:
        header.stage += 1
        header.attempt += 1
        hop: dict[str, Any] = {"model": self.to, "rule": "escalate"}
        if self.local:
            hop["hop"] = "local"
        header.trace.append(hop)
        self.add(item, index, header, entry)

    def add(self, item: Item, index: int, header: Header, entry: int) -> None:
        """A request whose header already says where it goes."""
        if not self.parts or self.parts[-1][0] is not item:
            self.parts.append((item, np.zeros(item.bundle.size, dtype=bool)))
            self.part_entries.append(entry)
        self.parts[-1][1][index] = True
        self.headers.append(header)
        self.entries.add(entry)


class Settler:
    """Turns a computed batch into effects; holds only the worker's fixed configuration."""

    def __init__(
        self,
        catalog: Catalog,
        spec: ModelSpec,
        keys: Keys,
        board: LoadBoard,
        ttl_s: int,
        local: LocalModels | None = None,
    ) -> None:
        self.catalog, self.spec, self.keys, self.board = catalog, spec, keys, board
        self.ttl_s = ttl_s
        self.rng = random.Random()
        self.local: LocalModels = {} if local is None else local
        self._next: dict[str, Settler] = {}  # settlers of the local models escalated into

    def settle(self, work: BatchWork, ran: Ran) -> None:
        confs = _Confidences(self.spec, ran)
        work.now = now_ms()
        spec = self.spec
        oks = OkBatch(
            spec.name,
            spec.output,
            outputs.RowSlicer(ran.out),
            round(ran.compute_ms, 3),
            ran.samples,
            ran.info,
            work.now,
            self.keys.result_prefix(),
            None if self.keys.shards == 1 else self.keys.result,
        )
        escalations: dict[tuple[str, bool], _Escalation] = {}
        tenanted = bool(self.catalog.tenants)
        for item, entry, first in _request_offsets(ran):
            before = len(work.answered)
            try:
                self._settle_item(work, ran, _Entry(item, entry, first), confs, oks, escalations)
            except Exception as exc:  # noqa: BLE001 - one entry's surprise stays its own
                log.warning("entry_failed", model=self.spec.name, error=repr(exc))
                work.commit.fail(entry)  # delivered again, then retried alone
            if tenanted:  # an entry holds one tenant's requests: its answers are that one's
                tenant = self.catalog.tenants.label(item.headers[0].tenant)
                work.tally.for_tenant(tenant, work.answered[before:])
        for esc in escalations.values():
            if esc.local:
                self._local_or_fail(work, esc)
            else:
                self._escalate(work, esc)
        if work.answered:
            work.tally.answer_many(OK, np.concatenate(work.answered))
            work.answered.clear()

    def _settle_item(
        self,
        work: BatchWork,
        ran: Ran,
        at: _Entry,
        confs: _Confidences,
        oks: OkBatch,
        escalations: dict[tuple[str, bool], _Escalation],
    ) -> None:
        """An entry's requests: those with nothing to decide (pinned, the cascade's last
        stage, or sure enough by one numpy comparison) are answered together, a block at
        a time (workers/answers.py); the rest are decided one by one."""
        item = at.item
        queue_ms = round(max(0.0, item.read_at - item.enqueued_at), 3)
        wait_ms = round(max(0.0, ran.launched_at - item.read_at), 3)
        hop = {
            "queue_ms": queue_ms,
            "batch_wait_ms": wait_ms,
            "compute_ms": oks.compute_ms,
            "batch_size": ran.samples,
            **ran.served,
        }
        kept = np.flatnonzero(item.keep).tolist()
        work.tally.waited(queue_ms, wait_ms, len(kept))
        at.kept, at.rows = kept, item.bundle.rows[item.keep].tolist()
        at.starts = confs.starts[at.first : at.first + len(kept)].tolist()
        headers = item.headers
        at.headers = headers if len(kept) == len(headers) else [headers[j] for j in kept]
        sure, stored = Sure(), Stored()
        plan = self._entry_plan(work, at.headers)
        traced = any(map(_TRACEPARENT, at.headers))  # W3C trace context: answered one by one
        if traced:
            self._trace_hops(ran, item, at.headers, hop)
        if plan is None or plan.traced or traced:
            due: range | list[int] = range(len(kept))
        else:
            due = _due(plan, confs, at)
            _add_undue(sure, at, due, plan.measure)
        for p in due:
            self._decide(work, ran, at, p, confs, hop, oks, sure, stored, escalations)
        if sure:
            self._answer(work, ran, at.entry, sure, hop, oks, confs, stored)
        work.commit.results_many(at.entry, stored.keys, stored.payloads, stored.channels)

    def _trace_hops(self, ran: Ran, item: Item, headers: list[Header], hop: dict[str, Any]) -> None:
        """The traced requests' log lines and spans for this hop (only when tracing.on)."""
        if not tracing.on():
            return
        model, launched = self.spec.name, ran.launched_at
        phases = [
            ("queue", item.enqueued_at, item.read_at),
            ("batch wait", item.read_at, launched),
            ("compute", launched, launched + ran.compute_ms),
        ]
        for header in headers:
            if header.traceparent is not None:
                tracing.hop("worker", header, model=model, stage=header.stage, **hop)
                tracing.spans(header, model, phases)

    def _entry_plan(self, work: BatchWork, headers: list[Header]) -> _Plan | None:
        """The plan every request of the entry shares (the rule: a bundle comes from one
        group), or None: then each request is looked up on its own."""
        keys = [(h.task, h.model, h.stage, h.tier) for h in headers]
        if keys.count(keys[0]) != len(keys):
            return None
        return self._plan(work, headers[0])

    def _decide(
        self,
        work: BatchWork,
        ran: Ran,
        at: _Entry,
        p: int,
        confs: _Confidences,
        hop: dict[str, Any],
        oks: OkBatch,
        sure: Sure,
        stored: Stored,
        escalations: dict[tuple[str, bool], _Escalation],
    ) -> None:
        """One request that may go up the cascade: answer, escalate, or answer with the
        escalation skipped; a surprise gives it an error result of its own."""
        header, j, req = at.headers[p], at.kept[p], at.first + p
        start, n = at.starts[p], at.rows[p]
        try:
            plan = self._plan(work, header)
            target = plan.next
            conf = None if target is None else confs.of(req, plan.measure)
            if target is not None and conf is not None and conf < plan.threshold:
                _hop(header, self.spec.name, conf, hop)  # what the skip and the next model read
                target = self._unless_skipped(work, plan.task, header, target, plan.local)
            else:
                target = None
            if plan.traced and plan.task is not None:
                self._log_trace(work, plan.task, at.item, j, at.entry, kept=target is None)
            if target is not None:
                auto = plan.task is not None and plan.task.escalate == "auto"
                esc = self._escalation(escalations, header, target, plan.local, auto)
                esc.take(at.item, j, header, at.entry)
            elif header.trace and "skipped" in header.trace[-1]:
                self._answer_one(work, ran, header, start, n, oks, stored)
            elif header.traceparent is not None:  # its result's info carries it
                _hop(header, self.spec.name, confs.of(req, plan.measure), hop)
                self._answer_one(work, ran, header, start, n, oks, stored)
            else:
                sure.add(req, start, n, header, plan.measure)
        except Exception as exc:  # noqa: BLE001 - one request's surprise stays its own
            self._internal(work, header, at.entry, exc)

    def _answer(
        self,
        work: BatchWork,
        ran: Ran,
        entry: int,
        sure: Sure,
        hop: dict[str, Any],
        oks: OkBatch,
        confs: _Confidences,
        stored: Stored,
    ) -> None:
        """The entry's sure requests answered together; if that raises, each on its own,
        so a request that cannot be answered fails alone."""
        try:
            if len(sure) < BLOCK_MIN:  # a block's fixed cost is more than it saves
                done = Encoded(left=list(range(len(sure))))
            else:
                done = oks.encode(sure, hop, confs.array, partial(self._channel, work))
        except Exception as exc:  # noqa: BLE001 - narrowed down request by request below
            log.warning("block_failed", model=self.spec.name, error=repr(exc))
            done = Encoded(left=list(range(len(sure))))
        stored.keys += done.keys
        stored.payloads += done.payloads
        stored.channels += done.channels
        work.answered += done.totals
        for p in done.left:
            header, req, measure = sure.headers[p], sure.requests[p], sure.measures[p]
            try:
                _hop(header, self.spec.name, confs.of(req, measure), hop)
                self._answer_one(work, ran, header, sure.starts[p], sure.rows[p], oks, stored)
            except Exception as exc:  # noqa: BLE001 - one request's surprise stays its own
                self._internal(work, header, entry, exc)

    def _answer_one(
        self,
        work: BatchWork,
        ran: Ran,
        header: Header,
        start: int,
        rows: int,
        oks: OkBatch,
        stored: Stored,
    ) -> None:
        """One ok result encoded on its own (its hop already on its trace): what the
        block's bytes are checked against."""
        trace, model = header.trace, self.spec.name
        info = ran.info
        skipped = trace[-1].get("skipped")
        if skipped is not None:
            info = {**info, "escalation_skipped": skipped}
        if header.traceparent is not None:
            info = {**info, "traceparent": header.traceparent}
        times = outcome.timings(header, work.now)
        ext = oks.slicer.ext(start, start + rows)
        record = outputs.ResultRecord(
            header.id, OK, {self.spec.output: ext}, model, trace, None, times, ran.samples, info
        )
        payload = outputs.encode(record)
        stored.keys.append(self.keys.result(header.id))
        stored.payloads.append(payload)
        stored.channels.append(self._channel(work, header))
        work.answered.append(np.array([times["total_ms"]], dtype=np.float64))

    def _plan(self, work: BatchWork, header: Header) -> _Plan:
        """What a request of this (task, stage, tier) needs here, worked out once a batch."""
        key = (header.task, header.model, header.stage, header.tier)
        plan = work.plans.get(key)
        if plan is None:
            plan = _plan_for(self.catalog, self.spec.name, header)
            if plan.next is not None and plan.task is not None and self.local:
                local = goes_local(plan.task, self.spec, plan.next, self.local, self.board)
                plan = replace(plan, local=local)
            work.plans[key] = plan
        return plan

    def _escalation(
        self,
        escalations: dict[tuple[str, bool], _Escalation],
        header: Header,
        to: str,
        local: bool,
        auto: bool | None = None,
    ) -> _Escalation:
        """Queued: one per next model and lane; local: one per next model (no lanes).
        ``auto``: whether the request's task escalates ``auto`` (None: not known here)."""
        if local:
            stream = ""
            key = (to, True)
        else:
            lane = self.catalog.models[to].lane_for(header.priority)
            own = self.catalog.tenants.own_stream(header.tenant) if self.catalog.tenants else None
            stream = self.keys.model_stream(to, lane, own, shard=self.keys.shard_of(header.id))
            key = (stream, False)
        esc = escalations.get(key)
        if esc is None:
            esc = escalations[key] = _Escalation(stream, to, local, auto=auto is True)
        elif auto is not True:
            esc.auto = False  # a task that asked for local (or queue) in the same batch
        return esc

    def _channel(self, work: BatchWork, header: Header) -> int:
        if header.reply_to is None:
            return 0
        ch = work.channels.get(header.reply_to)
        if ch is None:
            name = self.keys.reply_channel(header.reply_to)
            ch = work.channels[header.reply_to] = work.commit.channel(name)
        return ch

    def _internal(self, work: BatchWork, header: Header, entry: int, exc: Exception) -> None:
        """A request whose handling raised: an error result of its own, or, if even that
        fails, its entry left pending to be delivered again."""
        log.warning(
            "request_failed",
            model=self.spec.name,
            request_id=header.id,
            code="internal",
            error=repr(exc),
            traceparent=header.traceparent,
        )
        try:
            failed = error_result(header.id, "internal", f"model {self.spec.name}: {exc}")
            channel = self.keys.reply_channel(header.reply_to) if header.reply_to else None
            work.commit.result(self.keys.result(header.id), failed.dumps(), channel, entry)
            work.tally.answer(failed.status, 0.0)
        except Exception:  # noqa: BLE001
            work.commit.fail(entry)

    def _unless_skipped(
        self, work: BatchWork, task: TaskSpec | None, header: Header, target: str, local: bool
    ) -> str | None:
        """The due escalation, unless the next model is too late or swamped (then None)."""
        if task is None:
            return target
        why = outcome.skip_reason(task, header, target, self.board, now_ms(), local=local)
        if why is None:
            return target
        header.trace[-1]["skipped"] = why
        work.counts[f"skip:{why}"] += 1
        work.tally.skipped[why] += 1
        return None

    def fall_back(self, work: BatchWork, items: list[tuple[Item, int]], reason: str) -> None:
        """This model failed these requests (its call raised, or it never loaded): each
        goes to the catalog's fallback, a hop marked ``fallback``, unless its deadline has
        passed (then it is answered expired here)."""
        to = self.spec.fallback
        assert to is not None, "only a model with a fallback falls back"
        queued: dict[tuple[str, bool], _Escalation] = {}
        now = now_ms()
        for item, entry in items:
            for expired, reply_to in take_expired(item, now):
                channel = self.keys.reply_channel(reply_to) if reply_to else None
                work.commit.result(self.keys.result(expired.id), expired.dumps(), channel, entry)
                work.tally.answer(expired.status, expired.timings.get("total_ms", 0.0))
            for j in np.flatnonzero(item.keep).tolist():
                header = item.headers[j]
                if header.trace and header.trace[-1].get("model") == self.spec.name:
                    header.trace[-1]["failed"] = reason
                header.attempt = min(header.attempt + 1, bundle.MAX_HOPS)
                header.trace.append({"model": to, "rule": "fallback", "hop": "fallback"})
                self._escalation(queued, header, to, local=False).add(item, j, header, entry)
        for esc in queued.values():
            self._add_escalation(work, esc)
            work.counts[f"fallback:{self.spec.name}"] += len(esc.headers)

    def _escalate(self, work: BatchWork, esc: _Escalation) -> None:
        """One entry per next model and lane, its rows taken from each source entry."""
        self._add_escalation(work, esc)
        self._count_escalation(work, esc)

    def _add_escalation(self, work: BatchWork, esc: _Escalation) -> None:
        counter = self.keys.backlog(esc.stream)
        for fields, requests in _escalation_fields(esc):
            work.commit.add(esc.stream, fields, sorted(esc.entries), counted=(counter, requests))

    def _count_escalation(self, work: BatchWork, esc: _Escalation) -> None:
        n = len(esc.headers)
        work.counts[f"escalate:{self.spec.name}"] += n
        work.tally.escalated += n
        work.tally.escalated_to[esc.to] += n

    def _local_or_fail(self, work: BatchWork, esc: _Escalation) -> None:
        """A surprise in a local escalation leaves only its source entries pending."""
        try:
            self._run_local(work, esc)
        except Exception as exc:  # noqa: BLE001 - the rest of the batch still commits
            log.warning("local_escalation_failed", model=esc.to, error=repr(exc))
            for entry in esc.entries:
                work.commit.fail(entry)

    def _run_local(self, work: BatchWork, esc: _Escalation) -> None:
        """The unsure requests run at once on this process's session of the next model,
        settled by that model's rules into this batch's commit. Their results are effects
        of the source entries, acknowledged only once they land: a crash before the call
        re-delivers those entries whole. Should the model call fail, the requests go
        through the queue instead, where a failure is narrowed down to its request."""
        there = self.local[esc.to]
        self._count_escalation(work, esc)
        sub = BatchWork(work.commit, Tally(entries=len(esc.headers)), work.counts, work.channels)
        read_at = now_ms()
        items = [
            (Item(item.bundle, read_at, mask.copy(), 0, queued_at=read_at), entry)
            for (item, mask), entry in zip(esc.parts, esc.part_entries, strict=True)
        ]
        items = [(i, e) for i, e in items if self._admit_local(sub, i, e)]
        rows = sum(i.samples for i, _ in items)
        state = self.board.state(esc.to)
        hop_us = state.hop_us or self.board.state(self.spec.name).hop_us
        if items and esc.auto and not cheaper_here(there, rows, hop_us, state.batch):
            work.counts[f"local_declined:{self.spec.name}"] += len(esc.headers)
            self._requeue(work, esc.to, items)
        elif items:
            work.counts[f"local:{self.spec.name}"] += len(esc.headers)
            if not self._compute_local(work, sub, there, items):
                self._requeue(work, esc.to, items)
        sub.tally.queue(work.commit.pipe, self.keys, esc.to)
        work.local.append((esc.to, sub.tally))
        work.local += sub.local

    def _admit_local(self, sub: BatchWork, item: Item, entry: int) -> bool:
        """As a worker admits what it read: a request whose deadline has passed is
        answered expired, before compute; True if any request is left to run."""
        for expired, reply_to in take_expired(item, now_ms()):
            channel = self.keys.reply_channel(reply_to) if reply_to else None
            sub.commit.result(self.keys.result(expired.id), expired.dumps(), channel, entry)
            sub.tally.answer(expired.status, expired.timings.get("total_ms", 0.0))
        item.samples = int(item.bundle.rows[item.keep].sum())
        return bool(item.keep.any())

    def _compute_local(
        self, work: BatchWork, sub: BatchWork, there: LocalModel, items: list[tuple[Item, int]]
    ) -> bool:
        """One model call for the escalated rows, then its results; False if the call failed."""
        spec = there.spec
        samples = sum(i.samples for i, _ in items)
        launched_at = now_ms()
        started = time.perf_counter()
        try:
            out, overhead = padding.run(there.run, [i.kept_inputs() for i, _ in items], spec)
        except Exception as exc:  # noqa: BLE001 - the queued hop narrows it down
            log.warning("local_escalation_failed", model=spec.name, error=repr(exc))
            return False
        compute_ms = (time.perf_counter() - started) * 1000.0
        padded = padding.has_variable_axes(spec)
        info = {"padding_overhead": round(overhead, 4)} if padded else {}
        sub.tally.ran(samples, compute_ms, overhead if padded else None)
        there.observed(compute_ms, samples)
        with there.lock:
            there.speed.queue(work.commit.pipe, self.keys, spec.name)
        ran = Ran(items, out, launched_at, compute_ms, samples, info, there.served)
        self._settler_of(spec.name).settle(sub, ran)
        return True

    def _requeue(self, work: BatchWork, to: str, items: list[tuple[Item, int]]) -> None:
        """Requests whose local run failed, added to the next model's streams as a queued
        escalation would have added them (their hop no longer marked local)."""
        queued: dict[tuple[str, bool], _Escalation] = {}
        for item, entry in items:
            for j in np.flatnonzero(item.keep).tolist():
                header = item.headers[j]
                header.trace[-1].pop("hop", None)
                self._escalation(queued, header, to, local=False).add(item, j, header, entry)
        for esc in queued.values():
            self._add_escalation(work, esc)

    def _settler_of(self, model: str) -> Settler:
        """The next model's settler, on this thread: its plans, its skips, its results."""
        settler = self._next.get(model)
        if settler is None:
            spec = self.catalog.models[model]
            settler = Settler(self.catalog, spec, self.keys, self.board, self.ttl_s, self.local)
            self._next[model] = settler
        return settler

    def _log_trace(
        self, work: BatchWork, task: TaskSpec, item: Item, index: int, entry: int, *, kept: bool
    ) -> None:
        """Sampled (inputs, kept?) pairs from the first stage: the learned router's data."""
        if task.trace_sample <= 0 or len(task.cascade) < 2:
            return
        header = item.headers[index]
        if header.stage != 0 or task.cascade[0].model != self.spec.name:
            return
        if self.rng.random() >= task.trace_sample:
            return
        mask = np.zeros(item.bundle.size, dtype=bool)
        mask[index] = True
        x = wire.dumps_inputs(bundle.take_rows(item.bundle.inputs, item.bundle.rows, mask))
        work.commit.add(
            self.keys.traces(task.name),
            traces.record(x, kept=kept),
            [entry],
            maxlen=traces.MAXLEN,
        )


@dataclass
class _Entry:
    """One entry of the batch as settling sees it: its kept requests' positions in the
    entry, headers, rows and first output rows; ``first`` is its first request's number."""

    item: Item
    entry: int
    first: int
    kept: list[int] = field(default_factory=list)
    headers: list[Header] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)


@dataclass
class Stored:
    """An entry's results as columns: keys, payloads and reply channel numbers."""

    keys: list[str] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    channels: list[int] = field(default_factory=list)


def _due(plan: _Plan, confs: _Confidences, at: _Entry) -> list[int]:
    """Positions of the entry's requests below the plan's threshold (a NaN confidence
    too, as ``not conf >= threshold``): only these are decided one by one."""
    if plan.next is None:
        return []
    values = confs.array(plan.measure)
    if values is None:
        return []
    mine = values[at.first : at.first + len(at.kept)]
    due: list[int] = np.flatnonzero(~(mine >= plan.threshold)).tolist()
    return due


def _add_undue(sure: Sure, at: _Entry, due: list[int] | range, measure: str) -> None:
    """Every request of the entry not due for a decision is sure: added as whole columns."""
    n = len(at.kept)
    if not due:
        sure.requests = list(range(at.first, at.first + n))
        sure.starts, sure.rows, sure.headers = at.starts, at.rows, at.headers
        sure.measures = [measure] * n
        return
    skip = set(due)
    for p in range(n):
        if p not in skip:
            sure.add(at.first + p, at.starts[p], at.rows[p], at.headers[p], measure)


def _hop(header: Header, model: str, conf: float | None, hop: dict[str, Any]) -> None:
    """This model's hop on the request's trace: the router's, if it is this model's and
    has no answer yet, else a new one; with the confidence and the batch's figures."""
    trace = header.trace
    last = trace[-1] if trace else None
    if last is None or last.get("model") != model or "confidence" in last:
        last = {"model": model, "rule": "direct"}
        trace.append(last)
    last["confidence"] = conf
    last.update(hop)


def _escalation_fields(esc: _Escalation) -> Iterator[tuple[dict[bytes, bytes], int]]:
    """Bundle fields for an escalation; parts whose inputs cannot stack go separately."""
    if len(esc.parts) == 1 and esc.parts[0][1].all():
        item = esc.parts[0][0]  # the whole entry goes up: its inputs bytes as they came
        fields = bundle.bundle_fields(esc.headers, item.bundle.raw_inputs, item.bundle.rows)
        yield fields, len(esc.headers)
        return
    groups: dict[tuple[Any, ...], list[tuple[Item, np.ndarray]]] = {}
    for item, mask in esc.parts:
        sig = tuple((k, v.dtype.str, v.shape[1:]) for k, v in sorted(item.bundle.inputs.items()))
        groups.setdefault(sig, []).append((item, mask))
    at = 0
    for parts in groups.values():
        taken = [bundle.take_rows(i.bundle.inputs, i.bundle.rows, m) for i, m in parts]
        stacked = {name: np.concatenate([t[name] for t in taken]) for name in taken[0]}
        rows = np.concatenate([i.bundle.rows[m] for i, m in parts])
        count = sum(int(m.sum()) for _, m in parts)
        headers = esc.headers[at : at + count] if len(groups) == 1 else _headers_of(esc, parts)
        at += count
        yield bundle.bundle_fields(headers, wire.dumps_inputs(stacked), rows), len(headers)


def _headers_of(esc: _Escalation, parts: list[tuple[Item, np.ndarray]]) -> list[Header]:
    wanted = {id(i.headers[j]) for i, m in parts for j in np.flatnonzero(m)}
    return [h for h in esc.headers if id(h) in wanted]


def _request_offsets(ran: Ran) -> Iterator[tuple[Item, int, int]]:
    """Each item with its entry number and the index of its first request in the batch."""
    first = 0
    for item, entry in ran.items:
        yield item, entry, first
        first += int(item.keep.sum())


class _Confidences:
    """Per-request confidence over the whole batch, one numpy pass per measure: a
    request's is its least sure row's."""

    def __init__(self, spec: ModelSpec, ran: Ran) -> None:
        self.batch = outcome.BatchConfidence(spec, ran.out)
        rows = np.concatenate([i.bundle.rows[i.keep] for i, _ in ran.items])
        self.starts = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(rows, out=self.starts[1:])
        self.single_rows = bool((rows == 1).all())
        self.arrays: dict[str, np.ndarray | None] = {}
        self.per_request: dict[str, list[float] | None] = {}

    def array(self, measure: str) -> np.ndarray | None:
        """Every request's confidence by ``measure`` (float64); None when the output has none."""
        got = self.arrays.get(measure, ...)
        if got is ...:
            got = self.arrays[measure] = self._compute(measure)
        return got

    def row_start(self, request: int) -> int:
        return int(self.starts[request])

    def of(self, request: int, measure: str) -> float | None:
        values = self.per_request.get(measure, ...)
        if values is ...:
            got = self.array(measure)
            values = self.per_request[measure] = None if got is None else got.tolist()
        return None if values is None else values[request]

    def _compute(self, measure: str) -> np.ndarray | None:
        rows = self.batch.all_rows(measure)
        if rows is None:
            return None
        if not self.single_rows:
            rows = np.minimum.reduceat(rows, self.starts[:-1])
        return np.asarray(rows, dtype=np.float64)
