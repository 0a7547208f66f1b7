"""One model's serving loop: collect a batch, run it, answer or escalate, then ack.

Every request read ends in exactly one effect (result, escalation or dead letter). A
batch's effects and the acks of its entries go to Redis as one call of the commit
script (cascadeq/infra/commit.py), which acknowledges only entries whose effects landed, so a
crash re-delivers rather than loses. A surprise while handling one entry leaves only
that entry pending; delivered again, it is retried alone before it is dead-lettered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np
import redis

from cascadeq.config.catalog import Catalog, ModelSpec
from cascadeq.config.settings import Settings
from cascadeq.infra import metrics, refusal, streams
from cascadeq.infra.commit import Commit
from cascadeq.infra.cpu import CpuMeter
from cascadeq.infra.fanin import FanIn
from cascadeq.infra.isolation import backstop, bookkeeping
from cascadeq.infra.log import get_logger
from cascadeq.infra.observed import LoadBoard, Speed
from cascadeq.infra.process import serve
from cascadeq.infra.window import Tally
from cascadeq.protocol import keys as keynames
from cascadeq.protocol import wire
from cascadeq.protocol.bundle import HEADER, INPUTS, BadItem, dumps_header, take_rows
from cascadeq.protocol.clock import Every
from cascadeq.protocol.keys import Keys
from cascadeq.protocol.messages import OK, Result, error_result, now_ms
from cascadeq.workers import claims, padding
from cascadeq.workers.batcher import Bad, Item, decode, poisoned, take_expired
from cascadeq.workers.continuous import batcher_for
from cascadeq.workers.gate import CancelGate
from cascadeq.workers.lanes import LaneReader, lane_reader
from cascadeq.workers.local import LocalModel, LocalModels
from cascadeq.workers.runner import ModelLoadError
from cascadeq.workers.sessions import Sessions
from cascadeq.workers.settle import BatchWork, Ran, Settler
from cascadeq.workers.standin import Runner
from cascadeq.workers.versions import Runnable, VersionFigures, Versions

log = get_logger("cascadeq.worker")


class ModelWorker:
    def __init__(
        self,
        r: redis.Redis,
        catalog: Catalog,
        spec: ModelSpec,
        settings: Settings,
        consumer: str,
        sessions: Sessions | None = None,
        local: LocalModels | None = None,
    ) -> None:
        """``local``: the models of this process, shared by its workers, which this one
        joins; a task that escalates locally runs its unsure rows on them. ``sessions``:
        the process's ONNX Runtime sessions (one LRU under its memory budget)."""
        self.r, self.catalog, self.spec, self.settings = r, catalog, spec, settings
        self.keys = settings.keys()
        self.consumer = consumer
        self.sessions = sessions or Sessions(settings.memory_budget_mb)
        self.versions = Versions(spec)
        #: versions that failed to load at start, whose batches go to the fallback
        self.unloadable: dict[str, ModelLoadError] = {}
        for version in self.versions.serving():  # validated before serving: or not started
            failed = _load(self.sessions, spec.at(version))
            if failed is not None:
                self.unloadable[version] = failed
        self.figures = VersionFigures()
        self.pending: tuple[Catalog, ModelSpec] | None = None  # a published catalog to switch to
        lanes = [  # every shard's streams of the model, highest lane first
            self.keys.model_stream(spec.name, lane, shard=shard)
            for lane in spec.lanes
            for shard in range(self.keys.shards)
        ]
        shares = tenant_shares(self.keys, catalog, spec)
        gate = CancelGate(self.keys.cancel_counters, settings.pending_ttl_s)
        self.reader = lane_reader(
            r, lanes, consumer, spec.lane_turn_every, settings.block_ms, shares, gate
        )
        #: every stream it serves: tenants' sub-streams too
        self.lanes = self.reader.every if isinstance(self.reader, LaneReader) else lanes
        light = self.reader.light if shares and isinstance(self.reader, LaneReader) else None
        self.batcher = batcher_for(
            spec, self.reader, settings.max_payload_bytes, settings.block_ms, light
        )
        self.padded = padding.has_variable_axes(spec)  # results then report padding_overhead
        self.stats = {"batches": 0, "samples": 0, "results": 0, "errors": 0, "cancelled": 0}
        self.reclaim_clock = Every(streams.reclaim_period(settings.visibility_timeout_ms))
        self.trim_clock = Every(settings.trim_every_s)
        self.board = LoadBoard(r, self.keys, catalog)
        self.speed = Speed()
        self.speed_lock = threading.Lock()  # escalations into this model update it too
        if local is not None:
            local[spec.name] = LocalModel(
                spec, self.run_active, self.speed, self.speed_lock, self.served()
            )
        self.local = local
        self.cpu = CpuMeter(helper=lambda: float(getattr(self.batcher, "read_cpu_s", 0.0)))
        self.settler = Settler(catalog, spec, self.keys, self.board, settings.result_ttl_s, local)

    @property
    def runner(self) -> Runner:
        """The active version's session (loaded again if the memory budget evicted it)."""
        return self.sessions.get(self.spec)

    @property
    def load_bytes(self) -> int:
        return self.sessions.sizes.get((self.spec.name, self.spec.version, str(self.spec.path)), 0)

    def served(self) -> dict[str, Any]:
        """What a result of the active version names on its hop."""
        return {"version": self.spec.version, "provider": self.runner.provider}

    def run_active(self, inputs: Mapping[str, np.ndarray], samples: int) -> np.ndarray:
        """What a local escalation into this model runs: its active version."""
        return self.sessions.get(self.spec).run(inputs, samples)

    def offer(self, catalog: Catalog) -> None:
        """A newly published catalog (from the watcher's thread): its versions of this
        model are loaded and validated here, off the serving loop, which switches at its
        next step; a version that fails is refused and the current one keeps serving."""
        spec = catalog.models.get(self.spec.name)
        if spec is None:
            log.warning("model_not_in_catalog", model=self.spec.name, source=catalog.source)
            return
        for version in Versions(spec).serving():
            try:
                self.sessions.get(spec.at(version))
            except ModelLoadError as exc:
                log.error("version_refused", model=spec.name, version=version, error=str(exc))
                self.r.hset(self.keys.model_versions(spec.name), f"{version}:refused", str(exc))
                return
        self.pending = (catalog, spec)

    def _switch(self, catalog: Catalog, spec: ModelSpec) -> None:
        """Between batches: the batch before ran wholly on the old versions."""
        was = self.versions.serving()
        self.catalog, self.spec, self.versions = catalog, spec, Versions(spec)
        self.board = LoadBoard(self.r, self.keys, catalog)
        self.settler = Settler(
            catalog, spec, self.keys, self.board, self.settings.result_ttl_s, self.local
        )
        if self.local is not None:
            self.local[spec.name] = LocalModel(
                spec, self.run_active, self.speed, self.speed_lock, self.served()
            )
        log.info("versions_switched", model=spec.name, before=was, now=self.versions.serving())

    def setup(self) -> None:
        self.cpu.start()  # on the serving thread: its thread CPU is what is measured
        for lane in self.lanes:
            streams.ensure_group(self.r, lane, keynames.WORKER_GROUP)
            # Joined before the first read: a replica counts as a consumer (stats, KEDA)
            # even while another one takes every bundle.
            self.r.xgroup_createconsumer(lane, keynames.WORKER_GROUP, self.consumer)
        self.r.hset(  # what `cascadeq cost` sizes instances by
            self.keys.model_totals(self.spec.name),
            mapping={"load_rss_bytes": self.load_bytes, "worker_rss_bytes": metrics.rss_bytes()},
        )

    def run(self, stop: threading.Event) -> None:
        log.info("worker_started", model=self.spec.name, consumer=self.consumer)
        serve(lambda: self.step(self.settings.block_ms), self.setup, stop, "worker")
        self.batcher.close()  # continuous batching: stop reading ahead, keep what was read
        if isinstance(self.reader, FanIn):
            self.reader.close()
        while self.batcher.carry:  # read but not yet run: finish them before leaving
            self.process(self.batcher.drain())
        metrics.model_unloaded(self.spec.name)
        log.info("worker_stopped", model=self.spec.name, **self.stats)

    def step(self, block_ms: int | None) -> int:
        pending = self.pending  # a cheap local flag, set by the catalog watcher
        if pending is not None:
            self.pending = None
            self._switch(*pending)
        handled = self._reclaim() if self.reclaim_clock.due() else 0
        self.board.refresh()
        batch = self.batcher.collect(block_ms)
        if batch:
            backstop("worker", "batch", partial(self.process, batch))
        else:
            self.cpu.mark(0)  # idle: not any request's CPU
        if self.trim_clock.due():
            for lane in self.lanes:
                streams.trim_acknowledged(self.r, lane)
        return handled + len(batch)

    def _reclaim(self) -> int:
        """Take over entries a crashed consumer held. Each runs alone, so an entry that
        broke a batch cannot break a batch of good ones again; past max deliveries it is
        dead-lettered. Entries this worker has read ahead are not taken: while it runs
        other ones alone they may idle past the visibility timeout, and would run twice."""
        handled = 0
        for lane in self.lanes:
            found = streams.reclaim(
                self.r,
                lane,
                keynames.WORKER_GROUP,
                self.consumer,
                idle_ms=self.settings.visibility_timeout_ms,
                max_deliveries=self.settings.max_deliveries,
                held=self.batcher.held(lane),
            )
            for entry in found.entries:
                self.process([decode(lane, entry, self.spec, now_ms(), self.max_bytes)])
            for (eid, fields), n in found.poison:
                self.process([poisoned(lane, eid, fields, n)])
            if found.entries or found.poison:
                log.info(
                    "reclaimed",
                    model=self.spec.name,
                    entries=len(found.entries),
                    poison=len(found.poison),
                )
            handled += len(found.entries) + len(found.poison)
        return handled

    @property
    def max_bytes(self) -> int:
        return self.settings.max_payload_bytes

    def _in_flight(self, item: Item) -> str | None:
        """The tenant in-flight counter this entry's results release (one tenant per
        entry: producers and routers bundle per tenant), for tenants with max_in_flight."""
        return self.catalog.tenants.in_flight_counter(self.keys, item.headers[0].tenant)

    def process(self, batch: list[Item | Bad]) -> None:
        """Give every entry exactly one effect per request, then ack it, in one call."""
        requests = sum(
            i.bundle.size if isinstance(i, Item) else max(1, len(i.salvaged)) for i in batch
        )
        work = BatchWork(Commit(self.settings.result_ttl_s), Tally(entries=requests))
        runnable: list[tuple[Item, int]] = []
        for item in batch:
            if isinstance(item, Bad):
                self._guarded(work, None, self._fail_entry, work, item)
                continue
            entry = work.commit.entry(
                item.stream,
                keynames.WORKER_GROUP,
                item.entry_id,
                item.bundle.size,
                self.keys.backlog(item.stream),
                self._in_flight(item) if self.catalog.tenants else None,
            )
            if self._guarded(work, entry, self._admit, work, item, entry):
                runnable.append((item, entry))
        if runnable:
            runnable = self._claim(work, runnable)
        for version, items in self.versions.split(runnable) if runnable else ():
            self._compute_version(work, items, version)
        self._send(work)

    def _guarded(self, work: BatchWork, entry: int | None, step: Any, *args: Any) -> Any:
        """Run one entry's step; a surprise leaves that entry pending (delivered again,
        then retried alone), never the loop or its neighbours."""
        try:
            return step(*args)
        except Exception as exc:  # noqa: BLE001 - isolation is the point
            log.warning("entry_failed", model=self.spec.name, error=repr(exc))
            if entry is not None:
                work.commit.fail(entry)
            return None

    def _admit(self, work: BatchWork, item: Item, entry: int) -> bool:
        """Answer the entry's requests that cannot run (bad, expired); True if any can."""
        for bad in item.bad:
            self._fail_request(work, item, entry, bad)
        for expired, reply_to in take_expired(item, now_ms()):
            self._store(work, expired, reply_to, entry)
        item.samples = int(item.bundle.rows[item.keep].sum())
        return bool(item.keep.any())

    def _claim(self, work: BatchWork, items: list[tuple[Item, int]]) -> list[tuple[Item, int]]:
        """Those of the batch's requests cancelled before it was read never run. Looked
        for only while cancels exist (read with the entries: workers/claims.py)."""
        if isinstance(self.reader, LaneReader) and not self.reader.cancels_exist:
            return items  # no cancel since these entries were read: none to drop
        skipped = claims.claim(self.r, self.keys, [i for i, _ in items])
        if not skipped:
            return items
        work.counts["cancelled:worker"] += skipped
        self.stats["cancelled"] += skipped
        bookkeeping("metrics", partial(metrics.observe_cancelled, self.spec.name, skipped))
        return [(i, e) for i, e in items if i.keep.any()]

    def _compute_version(self, work: BatchWork, items: Runnable, version: str) -> None:
        """One version's part of the batch; a version it cannot serve (gone from the
        catalog, refused, or failing to load) goes to the model's fallback if the catalog
        names one, else answers its requests with an error each."""
        try:
            if version in self.unloadable:
                raise self.unloadable[version]
            runner = self.sessions.get(self.spec.at(version))
        except (KeyError, ModelLoadError) as exc:
            if self.spec.fallback is not None:
                log.warning("model_unavailable", model=self.spec.name, error=repr(exc))
                self.settler.fall_back(work, items, _reason(exc))
                return
            why = f"model {self.spec.name} has no version {version!r} to serve: {exc!r}"
            for item, entry in items:
                for j in np.flatnonzero(item.keep).tolist():
                    failed = error_result(item.headers[j], "version_unavailable", why)
                    self._store(work, failed, item.headers[j].reply_to, entry)
            return
        self._compute(work, items, runner)

    def _compute(self, work: BatchWork, items: Runnable, runner: Runner) -> None:
        """Run the batch; a failure is narrowed down entry by entry, then request by request."""
        samples = sum(i.samples for i, _ in items)
        launched_at = now_ms()
        started = time.perf_counter()
        spec = runner.spec
        try:
            run = self.batcher.timed(runner.run)  # the strategy learns compute costs
            stacked = [i.kept_inputs() for i, _ in items]
            out, overhead = padding.run(run, stacked, spec)
        except Exception as exc:  # noqa: BLE001 - isolate what broke the batch
            if self.spec.fallback is not None:  # the catalog names a model to take them
                log.warning("batch_failed", model=self.spec.name, error=repr(exc))
                self.settler.fall_back(work, items, _reason(exc))
                return
            self._narrow(work, items, exc, runner)
            return
        compute_ms = (time.perf_counter() - started) * 1000.0
        queue_ms = sum(max(0.0, i.read_at - i.enqueued_at) * i.samples for i, _ in items)
        with self.speed_lock:
            self.speed.update(compute_ms, samples, queue_ms / max(1, samples))
        info = {"padding_overhead": round(overhead, 4)} if self.padded else {}
        work.tally.ran(samples, compute_ms, overhead if self.padded else None)
        self.stats["batches"] += 1
        self.stats["samples"] += samples
        self._figures(items, out, stacked, runner, compute_ms)
        served = {"version": spec.version, "provider": runner.provider}
        ran = Ran(items, out, launched_at, compute_ms, samples, info, served)
        self.settler.settle(work, ran)

    def _figures(
        self,
        items: Runnable,
        out: np.ndarray,
        stacked: list[dict[str, np.ndarray]],
        runner: Runner,
        compute_ms: float,
    ) -> None:
        """The batch's figures for its version; a canary's rows also run on the active
        version, so `cascadeq models compare` can say how often the two agree."""
        spec, figures = runner.spec, self.figures
        version, requests = spec.version, sum(int(i.keep.sum()) for i, _ in items)
        figures.ran(version, runner.provider, requests, len(out), compute_ms)
        if not self.versions.mixed:
            return
        figures.confidence(version, out, spec.output_kind)
        canary = self.spec.canary
        if canary is None or version != canary.version:
            return
        try:
            shadow, _ = padding.run(self.runner.run, stacked, self.spec)
            figures.agreement(version, out, shadow)
        except Exception as exc:  # noqa: BLE001 - a comparison never fails the answers
            log.warning("canary_compare_failed", model=spec.name, error=repr(exc))

    def _narrow(self, work: BatchWork, items: Runnable, exc: Exception, runner: Runner) -> None:
        if len(items) > 1:
            for one in items:
                self._compute(work, [one], runner)
            return
        item, entry = items[0]
        kept = np.flatnonzero(item.keep)
        if len(kept) > 1:
            for j in kept.tolist():
                self._compute(work, [(_only(item, j), entry)], runner)
            return
        j = int(kept[0])
        log.warning(
            "request_failed",
            model=self.spec.name,
            request_id=item.headers[j].id,
            code="compute_failed",
            error=repr(exc),
            traceparent=item.headers[j].traceparent,
        )
        message = f"model {self.spec.name}: {exc}"
        failed = error_result(item.headers[j].id, "compute_failed", message)
        self._store(work, failed, item.headers[j].reply_to, entry)

    def _send(self, work: BatchWork) -> None:
        """The batch's one round trip: the commit script, its plan carrying the per-batch
        figures too (written after the effects, as a pipeline beside the call would)."""
        model, keys = self.spec.name, self.keys
        overlap = self.batcher_overlap()
        self.cpu.mark(work.tally.entries)  # this thread's and its reader's, per request
        extra = {**self.cpu.fields(), **({} if overlap is None else {"overlap": overlap})}
        pipe = work.commit.pipe
        for name, n in work.counts.items():
            pipe.hincrby(keys.routing_counts, name, n)
        work.tally.queue(pipe, keys, model)  # `cascadeq stats` reads it
        self._version_figures(pipe)
        if work.tally.batches:
            with self.speed_lock:
                self.speed.queue(pipe, keys, model, extra)
        done = work.commit.send(self.r)
        self.stats["results"] += done.stored
        bookkeeping("metrics", partial(metrics.observe_batch, model, work.tally))
        for other, tally in work.local:  # batches of the models escalated into here
            bookkeeping("metrics", partial(metrics.observe_batch, other, tally))

    def _version_figures(self, pipe: Any) -> None:
        """Per version: this batch's figures, and the process's loads and evictions."""
        model, providers = self.spec.name, self.figures.providers
        for version, figures in self.figures.take().items():
            key = self.keys.model_versions(model)
            for name, n in figures.items():
                pipe.hincrby(key, f"{version}:{name}", n)
            provider = providers.get(version, "")
            bookkeeping(
                "metrics",
                partial(metrics.version_ran, model, version, provider, figures["requests"]),
            )
        loads = self.sessions.take_counts()
        if loads:
            for (model, version), figures in loads.items():
                key = self.keys.model_versions(model)
                for name, n in figures.items():
                    pipe.hincrby(key, f"{version}:{name}", n)
            for (model, version), state in self.sessions.states().items():
                fields = {f"{version}:{name}": value for name, value in state.items()}
                pipe.hset(self.keys.model_versions(model), mapping=fields)

    def batcher_overlap(self) -> float | None:
        overlap = getattr(self.batcher, "overlap", None)  # continuous batching measures it
        return None if overlap is None else round(overlap, 4)

    def _store(self, work: BatchWork, result: Result, reply_to: str | None, entry: int) -> None:
        channel = self.keys.reply_channel(reply_to) if reply_to else None
        work.commit.result(self.keys.result(result.id), result.dumps(), channel, entry)
        work.tally.answer(result.status, result.timings.get("total_ms", 0.0))
        if result.status != OK:
            self.stats["errors"] += 1

    def _refuser(self, work: BatchWork) -> refusal.Refuser:
        store = partial(self._store, work)
        return refusal.Refuser(work.commit, self.keys, store, log, {"model": self.spec.name})

    def _fail_request(self, work: BatchWork, item: Item, entry: int, bad: BadItem) -> None:
        """One request of an entry fails alone: its error result and its dead letter."""
        self._refuser(work).request(
            bad,
            stream=item.stream,
            entry_id=item.entry_id,
            entry=entry,
            fields=_item_fields(item, bad),
        )

    def _fail_entry(self, work: BatchWork, bad: Bad) -> None:
        """An entry none of whose requests can run: an error result for each id found."""
        self._refuser(work).entry(
            stream=bad.stream,
            group=keynames.WORKER_GROUP,
            entry_id=bad.entry_id,
            fields=bad.fields,
            code=bad.code,
            reason=bad.message,
            salvaged=bad.salvaged,
        )


def _load(sessions: Sessions, spec: ModelSpec) -> ModelLoadError | None:
    """Load (and validate) a version before serving. One that fails, where the catalog
    names a fallback, leaves the worker serving its queue by passing each batch of it to
    the fallback (``unloadable``); without a fallback the worker does not start."""
    try:
        sessions.get(spec)
    except ModelLoadError as exc:
        if spec.fallback is None:
            raise
        log.error("model_load_failed", model=spec.name, fallback=spec.fallback, error=str(exc))
        return exc
    return None


def _reason(exc: Exception) -> str:
    """What a failed hop records: the error's type and the start of its message."""
    return f"{type(exc).__name__}: {exc}"[:200]


def tenant_shares(
    keys: Keys, catalog: Catalog, spec: ModelSpec
) -> dict[str, list[tuple[str, float]]]:
    """Each lane's tenant streams and weights, when the catalog declares tenants."""
    if not catalog.tenants:
        return {}
    return {
        keys.model_stream(spec.name, lane, shard=s): catalog.tenants.lane_streams(
            keys, spec.name, lane, s
        )
        for lane in spec.lanes
        for s in range(keys.shards)
    }


def _only(item: Item, index: int) -> Item:
    """The same entry with only one request left to run."""
    keep = np.zeros_like(item.keep)
    keep[index] = True
    return Item(item.bundle, item.read_at, keep, int(item.bundle.rows[index]))


def _item_fields(item: Item, bad: BadItem) -> dict[bytes, bytes]:
    """A dead letter of one request: the entry itself when it holds only that request,
    else that request's header and rows as a one-request entry (what a replay takes)."""
    if item.bundle.size == 1:
        return item.bundle.fields() if item.bundle.single else _single_of(item, 0, bad)
    return _single_of(item, bad.index, bad)


def _single_of(item: Item, index: int, bad: BadItem) -> dict[bytes, bytes]:
    header = bad.raw_header if bad.raw_header is not None else dumps_header(item.headers[index])
    fields = {HEADER: header}
    if item.bundle.inputs:
        mask = np.zeros(item.bundle.size, dtype=bool)
        mask[index] = True
        fields[INPUTS] = wire.dumps_inputs(take_rows(item.bundle.inputs, item.bundle.rows, mask))
    return fields
