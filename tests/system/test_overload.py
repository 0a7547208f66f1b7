"""Sustained overload: refused at the bounds, memory flat, and every accepted request done."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
import redis
import streamview
from conftest import wait_for

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra.embedded import EmbeddedRedis
from cascadeq.infra.process import ProcessGroup
from cascadeq.producer import Producer, Rejected, Request
from cascadeq.protocol.keys import Keys

INGRESS_BOUND, MODEL_BOUND = 1000, 500
OFFERED_S = 5.0  # seconds of offered load; nothing is served meanwhile
REDIS_GROWTH_MB = 16  # ceiling on used_memory growth: the bounded backlog is ~1 MB
REDIS_RSS_MB = 64
ROUTER_RSS_MB = 250
DRIVER_GROWTH_MB = 64  # this process: producer, pytest, numpy


def mb(n: int) -> float:
    return n / 2**20


class Peaks:
    """Largest used_memory of Redis and RSS of each process seen while overloaded."""

    def __init__(self, r: redis.Redis, procs: dict[str, psutil.Process]) -> None:
        self.r, self.procs = r, procs
        self.mb: dict[str, float] = dict.fromkeys(["redis_used", *procs], 0.0)

    def sample(self) -> None:
        used = mb(int(self.r.info("memory")["used_memory"]))
        self.mb["redis_used"] = max(self.mb["redis_used"], used)
        for name, proc in self.procs.items():
            self.mb[name] = max(self.mb[name], mb(proc.memory_info().rss))


def offer(client: Producer, x: np.ndarray, peaks: Peaks) -> tuple[int, list[str], list[Rejected]]:
    """Submit chunks of 50 as fast as one client can for OFFERED_S seconds."""
    accepted: list[str] = []
    refusals: list[Rejected] = []
    offered, until = 0, time.monotonic() + OFFERED_S
    while time.monotonic() < until:
        offered += 50
        try:
            accepted += client.submit_many([Request({"input": x}, task="digits")] * 50)
        except Rejected as exc:
            refusals.append(exc)
        peaks.sample()
    return offered, accepted, refusals


def test_sustained_overload_is_refused_at_the_bounds_and_memory_stays_bounded(
    catalog: Catalog, digits_dir: Path
) -> None:
    x = np.load(digits_dir / "digits_test.npz")["X"][:1]
    with EmbeddedRedis() as server:  # alone on it: used_memory is this test's own
        prefix = f"t{uuid.uuid4().hex[:10]}"
        env = {
            **os.environ,
            "REDIS_URL": server.url,
            "CASCADEQ_CATALOG": str(digits_dir / "catalog.toml"),
            "CASCADEQ_PREFIX": prefix,
            "CASCADEQ_LOG_LEVEL": "error",
            "CASCADEQ_BLOCK_MS": "200",
            "CASCADEQ_TRIM_EVERY_S": "0.2",
            "CASCADEQ_INGRESS_MAX_DEPTH": str(INGRESS_BOUND),
            "CASCADEQ_MODEL_MAX_DEPTH": str(MODEL_BOUND),
        }
        settings = Settings(
            redis_url=server.url,
            prefix=prefix,
            ingress_max_depth=INGRESS_BOUND,
            model_max_depth=MODEL_BOUND,
        )
        keys = Keys(prefix)
        r = redis.Redis.from_url(server.url)
        group = ProcessGroup(env)
        try:
            router = psutil.Process(group.spawn("router").pid)  # no workers: nothing is served
            redis_proc = psutil.Process(server.proc.pid if server.proc else 0)
            me = psutil.Process()
            with Producer(settings=settings, catalog=catalog) as client:
                client.submit(task="digits", inputs={"input": x})  # warm: scripts, connections
                peaks = Peaks(r, {"redis_rss": redis_proc, "router_rss": router, "driver_rss": me})
                peaks.sample()
                base = dict(peaks.mb)
                offered, accepted, refusals = offer(client, x, peaks)
                assert offered > 10 * (INGRESS_BOUND + MODEL_BOUND)  # far past what fits
                assert len(refusals) > 100
                assert {e.code for e in refusals} == {"queue_full"}
                assert all("queue is full" in str(e) and "bound" in str(e) for e in refusals)
                # Admitted: at most both bounds plus one router read past the model bound.
                assert len(accepted) <= INGRESS_BOUND + MODEL_BOUND + settings.router_batch
                print(f"offered {offered}, accepted {len(accepted)}; base {base}; peaks {peaks.mb}")
                assert peaks.mb["redis_used"] - base["redis_used"] < REDIS_GROWTH_MB, peaks.mb
                assert peaks.mb["redis_rss"] < REDIS_RSS_MB, peaks.mb
                assert peaks.mb["router_rss"] < ROUTER_RSS_MB, peaks.mb
                assert peaks.mb["driver_rss"] - base["driver_rss"] < DRIVER_GROWTH_MB, peaks.mb
                # Nothing accepted was trimmed away while unserved.
                queued = sum(
                    streamview.count(r, s)
                    for s in (keys.ingress, keys.model_stream("digits-small"))
                )
                assert queued >= len(accepted)
                group.spawn("worker")  # now serve the backlog
                got = client.wait_many(accepted, timeout=180)
            assert all(g.ok for g in got)
            streams = [keys.ingress, *(keys.model_stream(m) for m in catalog.models)]
            wait_for(
                lambda: sum(int(r.xlen(s)) for s in streams) == 0,
                30,
                "streams are trimmed once every group acknowledged",
            )
        finally:
            group.stop()
            r.close()
