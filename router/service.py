"""The router loop: read ingress in batches, decide per group, forward bundles, commit.

Effect first, then XACK, in one script call per batch (cascadeq/infra/commit.py): a router that
dies before it re-delivers its entries to another router after the visibility timeout;
workers see at most a duplicate, which the first-write-wins result makes harmless.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import redis

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra import metrics, streams
from cascadeq.infra.connection import is_cluster
from cascadeq.infra.cpu import CPU_TTL_S, CpuMeter
from cascadeq.infra.fanin import FanIn
from cascadeq.infra.isolation import backstop, bookkeeping
from cascadeq.infra.log import get_logger
from cascadeq.infra.observed import REFRESH_S, LoadBoard
from cascadeq.infra.process import consumer_name, serve
from cascadeq.infra.queues import BacklogRead
from cascadeq.protocol import keys as keynames
from cascadeq.protocol import wire
from cascadeq.protocol.clock import Every
from cascadeq.protocol.keys import Keys
from cascadeq.protocol.messages import now_ms
from cascadeq.router.batch import RouteBatch
from cascadeq.router.learned import LearnedRouters

log = get_logger("cascadeq.router")


Reader = Callable[[int, int | None], list[tuple[str, streams.Entry]]]


def ingress_reader(r: redis.Redis, keys: Keys, consumer: str, block_ms: int) -> Reader:
    """read(count, block_ms) over every ingress shard: one XREADGROUP on one Redis (it may
    name many streams), a thread per shard on a cluster (their slots differ: infra/fanin.py)."""
    names = keys.ingresses
    if keys.shards > 1 and is_cluster(r):
        return FanIn(r, [[name] for name in names], keynames.ROUTER_GROUP, consumer, block_ms)
    return partial(streams.read_new, r, names, keynames.ROUTER_GROUP, consumer)


def by_shard(
    keys: Keys, got: list[tuple[str, streams.Entry]]
) -> list[tuple[int, list[streams.Entry]]]:
    """The entries read, as one batch per ingress shard (a batch commits in one slot)."""
    if keys.shards == 1:
        return [(0, [entry for _, entry in got])]
    out: dict[int, list[streams.Entry]] = {}
    for stream, entry in got:
        out.setdefault(keys.shard_of_stream(stream), []).append(entry)
    return list(out.items())


def publish_catalog(r: redis.Redis, keys: Keys, catalog: Catalog) -> None:
    """Let producers validate against the catalog without a copy of the file."""
    r.set(keys.catalog, wire.dumps({"source": catalog.source, "text": catalog.text}))


class Router:
    def __init__(
        self, r: redis.Redis, catalog: Catalog, settings: Settings, consumer: str | None = None
    ) -> None:
        self.r, self.catalog, self.settings = r, catalog, settings
        self.keys = settings.keys()
        self.consumer = consumer or consumer_name("router")
        self.routed = 0
        # Requests per ingress entry, a moving average: a read asks for about
        # router_batch requests, whether entries are single requests or bundles.
        self.per_entry = 1.0
        self.reclaim_clock = Every(streams.reclaim_period(settings.visibility_timeout_ms))
        self.trim_clock = Every(settings.trim_every_s)
        self.board = LoadBoard(r, self.keys, catalog)
        # published for `cascadeq cost` and `stats`; every batch counts (no model session warms up)
        self.cpu = CpuMeter(warm=True)
        self.cpu_clock = Every(REFRESH_S)
        self.learned = LearnedRouters(catalog)
        self.fed = sorted(
            self.keys.model_stream(m.name, lane, shard)
            for m in catalog.models.values()
            for lane in m.lanes
            for shard in range(self.keys.shards)
        )
        self.counters = [self.keys.backlog(s) for s in self.fed]
        self.backlog = BacklogRead(self.keys, tuple(self.fed), groups=False)
        self.streams = {  # (model, priority, shard) -> stream, filled as priorities are seen
            (m.name, lane, 0): self.keys.model_stream(m.name, lane)
            for m in catalog.models.values()
            for lane in m.lanes
        }
        self.read = ingress_reader(r, self.keys, self.consumer, settings.block_ms)
        self.held: list[str] = []  # model streams over the bound when last checked
        self.depths: list[int] | None = None  # requests in self.fed, as last seen
        self.stopping = threading.Event()  # run() hands in its stop event: holds wake on it

    def setup(self) -> None:
        self.cpu.start()
        for ingress in self.keys.ingresses:
            streams.ensure_group(self.r, ingress, keynames.ROUTER_GROUP)
        publish_catalog(self.r, self.keys, self.catalog)

    def run(self, stop: threading.Event) -> None:
        log.info("router_started", consumer=self.consumer, models=sorted(self.catalog.models))
        self.stopping = stop
        serve(lambda: self.step(self.settings.block_ms), self.setup, stop, "router")
        if isinstance(self.read, FanIn):
            self.read.close()
        log.info("router_stopped", consumer=self.consumer, routed=self.routed)

    def step(self, block_ms: int | None) -> int:
        """One read-route-forward-ack cycle; returns how many entries it handled."""
        handled = self._reclaim() if self.reclaim_clock.due() else 0
        self.board.refresh()
        if self._over_bound():
            if block_ms:  # backpressure: leave ingress alone while a model queue is full
                self.stopping.wait(block_ms / 1000)
        else:
            count = max(1, math.ceil(self.settings.router_batch / self.per_entry))
            got = self.read(count, block_ms)
            for shard, entries in by_shard(self.keys, got):
                backstop("router", "batch", partial(self.forward, entries, shard))
            handled += len(got)
        if self.trim_clock.due():
            for ingress in self.keys.ingresses:
                streams.trim_acknowledged(self.r, ingress)
        return handled

    def _over_bound(self) -> bool:
        """True while a model stream this router feeds holds ``model_max_depth`` requests.

        Holding off reading keeps model streams within the bound plus one read per
        router; ingress, bounded at submit, takes up the backlog. The request counters
        come back with each batch's commit (no round trip of their own) while nothing is
        held; a held router reads them in one pipeline (infra/queues.py).
        """
        if self.held or self.depths is None:
            self.depths = [lane.requests for lane in self.backlog.read(self.r)]
        bound = self.settings.shard_bounds()[1]
        held = [s for s, d in zip(self.fed, self.depths, strict=True) if d >= bound]
        if held != self.held:
            log.warning("backpressure", held=held, bound=bound)
            self.held = held
        return bool(held)

    def _reclaim(self) -> int:
        """Take over entries a crashed router held; each is routed in a batch of its own,
        so one that crashed a router can fail only itself."""
        handled = 0
        for shard, ingress in enumerate(self.keys.ingresses):
            found = streams.reclaim(
                self.r,
                ingress,
                keynames.ROUTER_GROUP,
                self.consumer,
                idle_ms=self.settings.visibility_timeout_ms,
                max_deliveries=self.settings.max_deliveries,
            )
            if found.poison:
                batch = self._batch(shard)
                for (eid, fields), count in found.poison:
                    reason = f"routing failed {count} times; moved to the dead-letter stream"
                    batch.poison(eid, fields, reason)
                batch.commit.send(self.r)
            for entry in found.entries:
                backstop("router", "reclaimed entry", partial(self.forward, [entry], shard))
            handled += len(found.entries) + len(found.poison)
        return handled

    def _batch(self, shard: int = 0) -> RouteBatch:
        return RouteBatch(self, now_ms(), shard)

    def forward(self, entries: list[streams.Entry], shard: int = 0) -> int:
        """Route a batch: decode, decide per group, forward one bundle per stream, commit."""
        if not entries:
            self.cpu.mark(0)  # idle: not any request's CPU
            return 0
        batch = self._batch(shard)
        for eid, fields in entries:
            batch.read(eid, fields)
        batch.route()
        rules, finals = batch.rules, batch.finals
        counts = self.keys.routing_counts
        for counter in self.counters:  # the depths after this batch, in the same round trip
            batch.commit.depth(counter)

        def also(pipe: Any) -> None:
            for rule, n in rules.items():
                pipe.hincrby(counts, f"route:{rule}", n)

        requests = sum(b.size for b in batch.bundles.values())
        self.per_entry = max(1.0, 0.7 * self.per_entry + 0.3 * requests / len(entries))
        self._publish_cpu(batch, requests)
        done = batch.commit.send(self.r, also)
        if len(done.depths) == len(self.fed):
            self.depths = done.depths
        bookkeeping("metrics", partial(metrics.observe_routing, rules, finals))
        self.routed += len(entries)
        return len(entries)

    def _publish_cpu(self, batch: RouteBatch, requests: int) -> None:
        """The router's CPU per forwarded request, in the batch's commit call (no round trip)."""
        self.cpu.mark(requests)
        fields = self.cpu.fields()
        if fields and self.cpu_clock.due():
            key, pipe = self.keys.role_cpu("router"), batch.commit.pipe
            pipe.hset(key, mapping={**fields, "at": now_ms()})
            pipe.expire(key, CPU_TTL_S)

    def stream_for(self, model: str, priority: str, shard: int = 0) -> str:
        stream = self.streams.get((model, priority, shard))
        if stream is None:
            lane = self.catalog.models[model].lane_for(priority)
            stream = self.keys.model_stream(model, lane, shard)
            self.streams[(model, priority, shard)] = stream
        return stream
