"""One model's serving loop: collect a batch, run it, answer or escalate, then ack.

Every entry read ends in exactly one effect (result, escalation or dead letter); the
effects of a batch go in one pipeline and the XACKs in a second, only for the entries
whose effects landed (cascadeq/effects.py), so a crash re-delivers rather than loses.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import redis

from cascadeq import keys as keynames
from cascadeq import metrics, results, streams
from cascadeq.catalog import Catalog, ModelSpec
from cascadeq.clock import Every
from cascadeq.effects import Effects
from cascadeq.isolation import backstop, bookkeeping, drop_since, guarded
from cascadeq.keys import Keys
from cascadeq.log import get_logger
from cascadeq.messages import (
    EXPIRED,
    HEADER_FIELD,
    INPUTS_FIELD,
    Result,
    error_result,
    now_ms,
    salvage_id,
)
from cascadeq.observed import LoadBoard, Speed
from cascadeq.process import serve
from cascadeq.settings import Settings
from cascadeq.tasks import TaskSpec
from cascadeq.window import Tally
from workers import outcome, padding
from workers.batcher import Bad, Item, decode
from workers.continuous import batcher_for
from workers.lanes import LaneReader
from workers.runner import OnnxRunner

log = get_logger("cascadeq.worker")

TRACES_MAXLEN = 50_000  # per task: enough to train on, small enough to forget


class ModelWorker:
    def __init__(
        self,
        r: redis.Redis,
        catalog: Catalog,
        spec: ModelSpec,
        settings: Settings,
        consumer: str,
        runner: OnnxRunner | None = None,
    ) -> None:
        self.r, self.catalog, self.spec, self.settings = r, catalog, spec, settings
        self.keys = Keys(settings.prefix)
        self.consumer = consumer
        before = metrics.rss_bytes()
        self.runner = runner or OnnxRunner(spec)
        self.load_bytes = max(0, metrics.rss_bytes() - before)  # what the session added
        metrics.model_loaded(spec.name, self.load_bytes)
        self.tally = Tally()  # the current batch's figures, written once at its end
        self.lanes = [self.keys.model_stream(spec.name, lane) for lane in spec.lanes]
        self.reader = LaneReader(r, self.lanes, consumer, spec.lane_turn_every)
        self.batcher = batcher_for(spec, self.reader, settings.max_payload_bytes, settings.block_ms)
        self.padded = padding.has_variable_axes(spec)  # results then report padding_overhead
        self.batch_info: dict[str, Any] = {}
        self.stats = {"batches": 0, "samples": 0, "results": 0, "escalated": 0, "errors": 0}
        self.reclaim_clock = Every(streams.reclaim_period(settings.visibility_timeout_ms))
        self.trim_clock = Every(settings.trim_every_s)
        self.board = LoadBoard(r, self.keys, catalog)
        self.speed = Speed()
        self.counts: Counter[str] = Counter()
        self.answers: dict[str | None, list[tuple[Item, Result]]] = {}  # this batch's, by waiter
        self.rng = random.Random()

    def setup(self) -> None:
        for lane in self.lanes:
            streams.ensure_group(self.r, lane, keynames.WORKER_GROUP)
        self.r.hset(  # what `cascadeq cost` sizes instances by
            self.keys.model_totals(self.spec.name),
            mapping={"load_rss_bytes": self.load_bytes, "worker_rss_bytes": metrics.rss_bytes()},
        )

    def run(self, stop: threading.Event) -> None:
        log.info("worker_started", model=self.spec.name, consumer=self.consumer)
        serve(lambda: self.step(self.settings.block_ms), self.setup, stop, "worker")
        self.batcher.close()  # continuous batching: stop reading ahead, keep what was read
        while self.batcher.carry:  # read but not yet run: finish them before leaving
            self.process(self.batcher.drain())
        metrics.model_unloaded(self.spec.name)
        log.info("worker_stopped", model=self.spec.name, **self.stats)

    def step(self, block_ms: int | None) -> int:
        handled = self._reclaim() if self.reclaim_clock.due() else 0
        self.board.refresh()
        batch = self.batcher.collect(block_ms)
        if batch:
            backstop("worker", "batch", partial(self.process, batch))
        if self.trim_clock.due():
            for lane in self.lanes:
                streams.trim_acknowledged(self.r, lane)
        return handled + len(batch)

    def _reclaim(self) -> int:
        """Take over entries a crashed consumer held; each runs in a batch of its own.

        An entry seen before may be what crashed that consumer: alone, it can fail only
        itself, and a fresh batch of good entries never waits on it.
        """
        handled = 0
        for lane in self.lanes:
            found = streams.reclaim(
                self.r,
                lane,
                keynames.WORKER_GROUP,
                self.consumer,
                idle_ms=self.settings.visibility_timeout_ms,
                max_deliveries=self.settings.max_deliveries,
            )
            for entry in found.entries:
                item = decode(lane, entry, self.spec, now_ms(), self.settings.max_payload_bytes)
                backstop("worker", "reclaimed entry", partial(self.process, [item]))
            poison: list[Item | Bad] = [
                Bad(lane, eid, fields, "dead_letter", f"delivered {n} times; dead-lettered")
                for (eid, fields), n in found.poison
            ]
            if poison:
                backstop("worker", "dead letters", partial(self.process, poison))
            if found.entries or poison:
                log.info(
                    "reclaimed",
                    model=self.spec.name,
                    entries=len(found.entries),
                    poison=len(poison),
                )
            handled += len(found.entries) + len(poison)
        return handled

    def process(self, batch: list[Item | Bad]) -> None:
        """Give every entry exactly one effect, then ack the ones whose effect landed."""
        effects = Effects(self.r, keynames.WORKER_GROUP)
        self.tally = Tally(entries=len(batch))
        runnable: list[Item] = []
        for item in batch:
            if isinstance(item, Bad):
                act, keep = partial(self._fail, bad=item), partial(self._keep, bad=item)
                guarded(effects, item.stream, item.entry_id, act, keep)
            elif item.header.deadline is not None and item.header.deadline <= now_ms():
                self._guarded(effects, item, partial(self._expire, item=item))
            else:
                runnable.append(item)
        if runnable:
            self._run(effects, runnable)
        bookkeeping("counts", partial(self._queue_counts, effects))
        effects.commit()
        bookkeeping("metrics", partial(metrics.observe_batch, self.spec.name, self.tally))

    def _guarded(self, effects: Effects, item: Item, act: Callable[[Any], None]) -> None:
        """One request's effects; a surprise while making them answers it with an error."""

        def fallback(pipe: Any, exc: Exception) -> None:
            self._answer(pipe, item, self._failure(item, "internal", exc))

        guarded(effects, item.stream, item.entry_id, act, fallback)

    def _expire(self, pipe: Any, item: Item) -> None:
        expired = error_result(
            item.header, "deadline", "deadline passed before compute", status=EXPIRED
        )
        self._answer(pipe, item, expired)

    def _queue_counts(self, effects: Effects) -> None:
        start = len(effects.pipe)
        try:
            for name, n in self.counts.items():
                effects.pipe.hincrby(self.keys.routing_counts, name, n)
            self.tally.queue(effects.pipe, self.keys, self.spec.name)  # `cascadeq stats`
        except Exception:
            drop_since(effects, start)  # half a tally is worse than none
            raise
        finally:
            self.counts.clear()

    def _run(self, effects: Effects, items: list[Item]) -> None:
        samples = sum(i.samples for i in items)
        launched_at = now_ms()
        started = time.perf_counter()
        try:
            run = self.batcher.timed(self.runner.run)  # the strategy learns compute costs
            out, overhead = padding.run(run, [i.inputs for i in items], self.spec)
        except Exception as exc:  # noqa: BLE001 - isolate the entry that broke the batch
            if len(items) > 1:
                for item in items:
                    self._run(effects, [item])
                return
            self._crashed(effects, items[0], "compute_failed", exc)
            return
        compute_ms = (time.perf_counter() - started) * 1000.0
        bookkeeping("speed", partial(self._ran, effects, items, samples, compute_ms, overhead))
        self.batch_info = {"padding_overhead": round(overhead, 4)} if self.padded else {}
        confs = outcome.BatchConfidence(self.spec, out)
        offset = 0
        for item in items:
            rows = out[offset : offset + item.samples]
            offset += item.samples
            times = outcome.HopTimes(
                item.read_at, item.enqueued_at, launched_at, compute_ms, samples
            )
            sure = partial(confs.of, offset - item.samples, offset)
            self._guarded(
                effects, item, partial(self._settle, item=item, rows=rows, times=times, sure=sure)
            )
        self._answer_batch(effects)

    def _ran(
        self, effects: Effects, items: list[Item], samples: int, compute_ms: float, overhead: float
    ) -> None:
        """A computed batch's figures: moving averages, tally, stats."""
        queue_ms = sum(max(0.0, i.read_at - i.enqueued_at) for i in items) / len(items)
        self.speed.update(compute_ms, samples, queue_ms)
        overlap = getattr(self.batcher, "overlap", None)  # continuous batching measures it
        extra = None if overlap is None else {"overlap": round(overlap, 4)}
        self.speed.queue(effects.pipe, self.keys, self.spec.name, extra)
        self.tally.ran(samples, compute_ms, overhead if self.padded else None)
        log.debug("batch_run", model=self.spec.name, samples=samples, compute_ms=compute_ms)
        self.stats["batches"] += 1
        self.stats["samples"] += samples

    def _answer_batch(self, effects: Effects) -> None:
        """One store-and-publish per waiting client for the whole batch.

        Should one result of a waiter's share not encode, that share is written one
        result at a time instead, so the one that fails fails alone.
        """
        answers, self.answers = self.answers, {}
        for reply_to, answered in answers.items():
            start = len(effects.pipe)
            try:
                with effects.shared([(i.stream, i.entry_id) for i, _ in answered]) as pipe:
                    batch = [res for _, res in answered]
                    ttl = self.settings.result_ttl_s
                    results.queue_results(pipe, self.keys, batch, reply_to, ttl)
            except redis.RedisError:
                raise
            except Exception:  # noqa: BLE001 - one result's surprise stays its own
                drop_since(effects, start)
                for item, res in answered:
                    self._guarded(effects, item, partial(self._answer, item=item, result=res))
                continue
            for _, res in answered:
                bookkeeping("answer", partial(self._count_answer, res))

    def _failure(self, item: Item, code: str, exc: Exception) -> Result:
        """The error result of a request whose handling failed; logged, never raising."""
        bookkeeping(
            "log",
            partial(
                log.warning,
                "request_failed",
                model=self.spec.name,
                request_id=item.header.id,
                code=code,
                error=repr(exc),
            ),
        )
        return error_result(item.header.id, code, f"model {self.spec.name}: {exc}")

    def _crashed(self, effects: Effects, item: Item, code: str, exc: Exception) -> None:
        failed = self._failure(item, code, exc)
        self._guarded(effects, item, partial(self._answer, item=item, result=failed))

    def _settle(
        self,
        pipe: Any,
        item: Item,
        rows: np.ndarray,
        times: outcome.HopTimes,
        sure: Callable[[str], float | None],
    ) -> None:
        header = item.header
        self.tally.waited(
            max(0.0, times.read_at - times.enqueued_at), max(0.0, times.launched_at - times.read_at)
        )
        task = outcome.task_of(self.catalog, header)
        conf = sure(task.confidence if task else "top")
        outcome.record_hop(header, self.spec.name, conf, times)
        target = outcome.next_model(task, header, self.spec.name, conf)
        if task is not None:
            self._log_trace(pipe, task, item, kept=target is None)
        info: dict[str, Any] = dict(self.batch_info)
        if task is not None and target is not None:
            why = outcome.skip_reason(task, header, target, self.board, now_ms())
            if why is not None:
                info["escalation_skipped"] = why
                header.trace[-1]["skipped"] = why
                self.counts[f"skip:{why}"] += 1
                self.tally.skipped[why] += 1
                target = None
        if target is None:  # written with the batch's other answers for this waiter
            final = outcome.final_result(header, self.spec, rows, times.batch_size, info)
            self.answers.setdefault(header.reply_to, []).append((item, final))
            return
        log.debug(
            "escalated", request_id=header.id, model=self.spec.name, to=target, confidence=conf
        )
        header.stage += 1
        header.attempt += 1
        header.trace.append({"model": target, "rule": "escalate"})
        pipe.xadd(
            self.keys.model_stream(target, self.catalog.models[target].lane_for(header.priority)),
            {HEADER_FIELD: header.dumps(), INPUTS_FIELD: item.raw_inputs},
        )
        self.stats["escalated"] += 1
        self.counts[f"escalate:{self.spec.name}"] += 1
        self.tally.escalate(target)

    def _log_trace(self, pipe: Any, task: TaskSpec, item: Item, *, kept: bool) -> None:
        """Sampled (inputs, kept?) pairs from the first stage: the learned router's data."""
        if task.trace_sample <= 0 or item.header.stage != 0 or len(task.cascade) < 2:
            return
        if task.cascade[0].model != self.spec.name or self.rng.random() >= task.trace_sample:
            return
        pipe.xadd(
            self.keys.traces(task.name),
            {INPUTS_FIELD: item.raw_inputs, b"k": b"1" if kept else b"0"},
            maxlen=TRACES_MAXLEN,
            approximate=True,
        )

    def _answer(self, pipe: Any, item: Item, result: Result) -> None:
        results.queue_result(
            pipe, self.keys, result, item.header.reply_to, self.settings.result_ttl_s
        )
        bookkeeping("answer", partial(self._count_answer, result))

    def _count_answer(self, result: Result) -> None:
        self.stats["results"] += 1
        self.tally.answer(result.status, result.timings.get("total_ms", 0.0))
        log.debug("answered", request_id=result.id, model=self.spec.name, status=result.status)

    def _keep(self, pipe: Any, exc: Exception, bad: Bad) -> None:
        """Refusing the entry failed itself: keep the raw entry for an operator, no more."""
        reason = f"{bad.message} (answering it failed: {exc!r})"
        results.queue_dead_letter(
            pipe,
            self.keys,
            bad.fields,
            stream=bad.stream,
            entry_id=bad.entry_id,
            code=bad.code,
            reason=reason,
        )

    def _fail(self, pipe: Any, bad: Bad) -> None:
        self.stats["errors"] += 1
        res: Result | None = None
        reply_to: str | None = None
        if bad.header is not None:
            reply_to = bad.header.reply_to
            res = error_result(bad.header, bad.code, bad.message)
        else:
            rid, reply_to = salvage_id(bad.fields.get(HEADER_FIELD))
            res = error_result(rid, bad.code, bad.message) if rid else None
        log.warning(
            "entry_refused",
            model=self.spec.name,
            entry=bad.entry_id.decode(),
            request_id=res.id if res else None,
            code=bad.code,
            reason=bad.message,
        )
        if res is not None:
            try:
                results.queue_result(pipe, self.keys, res, reply_to, self.settings.result_ttl_s)
            except Exception as exc:  # noqa: BLE001 - the dead letter below still lands
                log.warning("error_result_unwritable", entry=bad.entry_id.decode(), error=repr(exc))
            else:
                total = res.timings.get("total_ms", 0.0)
                bookkeeping("answer", partial(self.tally.answer, res.status, total))
        results.queue_dead_letter(
            pipe,
            self.keys,
            bad.fields,
            stream=bad.stream,
            entry_id=bad.entry_id,
            code=bad.code,
            reason=bad.message,
        )
