"""The router loop: read ingress in batches, decide per group, forward bundles, commit.

Effect first, then XACK, in one script call per batch (cascadeq/infra/commit.py): a router that
dies before it re-delivers its entries to another router after the visibility timeout;
workers see at most a duplicate, which the first-write-wins result makes harmless.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import redis

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra import catalogs, metrics, streams
from cascadeq.infra.connection import is_cluster
from cascadeq.infra.cpu import CPU_TTL_S, CpuMeter
from cascadeq.infra.fanin import FanIn
from cascadeq.infra.isolation import backstop, bookkeeping
from cascadeq.infra.log import get_logger
from cascadeq.infra.observed import REFRESH_S, LoadBoard
from cascadeq.infra.process import consumer_name, serve
from cascadeq.infra.queues import BacklogRead
from cascadeq.protocol import keys as keynames
from cascadeq.protocol.clock import Every
from cascadeq.protocol.keys import DEFAULT_TENANT, Keys
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
    """Let producers validate against the catalog without a copy of the file (unless an
    operator published one: `cascadeq models publish`, infra/catalogs.py)."""
    catalogs.publish_at_start(r, keys, catalog)


class Router:
    def __init__(
        self, r: redis.Redis, catalog: Catalog, settings: Settings, consumer: str | None = None
    ) -> None:
        self.r, self.settings = r, settings
        self.keys = settings.keys()
        self.consumer = consumer or consumer_name("router")
        self.pending: Catalog | None = None  # a published catalog to switch to (watcher sets)
        self.routed = 0
        # Requests per ingress entry, a moving average: a read asks for about
        # router_batch requests, whether entries are single requests or bundles.
        self.per_entry = 1.0
        self.reclaim_clock = Every(streams.reclaim_period(settings.visibility_timeout_ms))
        self.trim_clock = Every(settings.trim_every_s)
        # published for `cascadeq cost` and `stats`; every batch counts (no model session warms up)
        self.cpu = CpuMeter(warm=True)
        self.cpu_clock = Every(REFRESH_S)
        self.held: list[str] = []  # model streams over the bound when last checked
        self.held_since: float | None = None  # monotonic s when the current hold began
        self.diverted: dict[str, str] = {}  # model -> fallback, held past fallback_wait_ms
        self.depths: list[int] | None = None  # requests in self.fed, as last seen
        self.cancels = 0  # requests ever cancelled, as last seen: none, no look for them
        self.stopping = threading.Event()  # run() hands in its stop event: holds wake on it
        self.read = ingress_reader(r, self.keys, self.consumer, settings.block_ms)
        self.use(catalog)

    def use(self, catalog: Catalog) -> None:
        """Route by ``catalog`` from now on: at start, and between batches after a publish."""
        self.catalog = catalog
        self.board = LoadBoard(self.r, self.keys, catalog)
        self.learned = LearnedRouters(catalog)
        self.fed = sorted(
            self.keys.model_stream(m.name, lane, shard=shard)
            for m in catalog.models.values()
            for lane in m.lanes
            for shard in range(self.keys.shards)
        )
        self.counters = [self.keys.backlog(s) for s in self.fed]
        self.backlog = BacklogRead(self.keys, tuple(self.fed), groups=False)
        self.streams: dict[tuple[str, str, str, int], str] = {}  # filled as routes are seen
        self.depths = None

    def setup(self) -> None:
        self.cpu.start()
        for ingress in self.keys.ingresses:
            streams.ensure_group(self.r, ingress, keynames.ROUTER_GROUP)
        publish_catalog(self.r, self.keys, self.catalog)
        self.cancels = sum(int(self.r.get(k) or 0) for k in self.keys.cancel_counters)

    def run(self, stop: threading.Event) -> None:
        log.info("router_started", consumer=self.consumer, models=sorted(self.catalog.models))
        self.stopping = stop
        serve(lambda: self.step(self.settings.block_ms), self.setup, stop, "router")
        if isinstance(self.read, FanIn):
            self.read.close()
        log.info("router_stopped", consumer=self.consumer, routed=self.routed)

    def step(self, block_ms: int | None) -> int:
        """One read-route-forward-ack cycle; returns how many entries it handled."""
        pending = self.pending  # a cheap local flag, set by the catalog watcher
        if pending is not None:
            self.pending = None
            self.use(pending)
            log.info("catalog_switched", models=sorted(pending.models))
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
        return self._still_held(held)

    def _still_held(self, held: list[str]) -> bool:
        """Whether to hold off: past ``fallback_wait_ms``, if every held model has a
        fallback whose queues are not held, route to the fallbacks instead."""
        if not held:
            self.held_since, self.diverted = None, {}
            return False
        now = time.monotonic()
        if self.held_since is None:
            self.held_since = now
        if (now - self.held_since) * 1000.0 < self.settings.fallback_wait_ms:
            return True
        models = {stream.rsplit(":", 2)[-2] for stream in held}
        targets = {m: self.catalog.models[m].fallback for m in models}
        held_models = models | {t for t in targets.values() if t in models}
        if any(t is None or t in held_models for t in targets.values()):
            return True
        diverted = {m: t for m, t in targets.items() if t is not None}
        if diverted != self.diverted:
            log.warning("fallback_diverted", diverted=diverted)
            self.diverted = diverted
        return False

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
        if self.cancels:
            batch.drop_answered(self.r)
        batch.route()
        rules, finals = batch.rules, batch.finals
        counts = self.keys.routing_counts
        for counter in self.counters:  # the depths after this batch, in the same round trip
            batch.commit.depth(counter)
        batch.commit.depth(self.keys.cancels_of(shard))  # read free, in the same call

        def also(pipe: Any) -> None:
            for rule, n in rules.items():
                pipe.hincrby(counts, f"route:{rule}", n)
            if finals["cancelled"]:
                pipe.hincrby(counts, "cancelled:router", finals["cancelled"])

        requests = sum(b.size for b in batch.bundles.values())
        self.per_entry = max(1.0, 0.7 * self.per_entry + 0.3 * requests / len(entries))
        self._publish_cpu(batch, requests)
        done = batch.commit.send(self.r, also)
        if len(done.depths) == len(self.fed) + 1:
            self.depths, self.cancels = done.depths[:-1], done.depths[-1]
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

    def stream_for(
        self, model: str, priority: str, tenant: str = DEFAULT_TENANT, shard: int = 0
    ) -> str:
        """The lane of ``priority`` on ``model`` (on ``shard``); a declared tenant's own
        sub-stream of it."""
        key = (model, priority, tenant, shard)
        stream = self.streams.get(key)
        if stream is None:
            lane = self.catalog.models[model].lane_for(priority)
            own = self.catalog.tenants.own_stream(tenant)
            stream = self.streams[key] = self.keys.model_stream(model, lane, own, shard=shard)
        return stream
