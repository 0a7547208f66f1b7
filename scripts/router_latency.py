"""The router's share of latency at low load, without a worker: paced single submits.

Starts a private redis-server and one router process (no worker), submits N one-sample
requests pinned to the small digits model one at a time at ``--rate`` per second, then reads
the forwarded headers off the model stream: route = routed_at - submitted_at (ingress wait
and the read, as results report it) and forward = the model-stream entry's id time (ms,
Redis's clock) - routed_at (decode, route, commit). Also the floor of one hop: the same
client's XADD seen by a blocked XREAD on another connection.

    .venv/bin/python scripts/router_latency.py --models-dir /tmp/cq-models
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import msgspec
import numpy as np
import redis

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra.embedded import EmbeddedRedis
from cascadeq.infra.process import ProcessGroup
from cascadeq.producer import Producer, Request
from cascadeq.protocol import bundle
from cascadeq.protocol.keys import Keys

MODEL = "digits-small"


def floor_hop(url: str, n: int, period: float) -> np.ndarray:
    """Milliseconds from XADD issued to a blocked XREAD returning it, n times."""
    r, reader = redis.Redis.from_url(url), redis.Redis.from_url(url)
    seen: list[float] = []
    last = "$"

    def read() -> None:
        nonlocal last
        while len(seen) < n:
            got = reader.xread({"floor": last}, block=1000, count=1)
            for _, entries in got or []:
                for eid, _ in entries:
                    seen.append(time.perf_counter())
                    last = eid

    sent: list[float] = []
    t = threading.Thread(target=read)
    t.start()
    time.sleep(0.2)  # let the reader block first (a setup step, not a measurement)
    for _ in range(n):
        sent.append(time.perf_counter())
        r.xadd("floor", {"x": "1"})
        time.sleep(period)
    t.join()
    return 1e3 * (np.array(seen[:n]) - np.array(sent[: len(seen)]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--models-dir", type=Path, required=True)
    args = parser.parse_args()
    x = np.load(args.models_dir / "digits_test.npz")["X"].astype(np.float32)
    catalog = Catalog.load(args.models_dir / "catalog.toml", check_files=False)
    with EmbeddedRedis() as server:
        env = {
            **os.environ,
            "REDIS_URL": server.url,
            "CASCADEQ_CATALOG": str(args.models_dir.resolve() / "catalog.toml"),
            "CASCADEQ_LOG_LEVEL": "warning",
        }
        settings = Settings(redis_url=server.url)
        keys = Keys(settings.prefix)
        with (
            ProcessGroup(env) as group,
            Producer(server.url, settings=settings, catalog=catalog) as client,
        ):
            group.spawn("router")
            client.submit_many([Request({"input": x[0][None]}, model=MODEL)])  # warm
            r = redis.Redis.from_url(server.url)
            stream = keys.model_stream(MODEL, catalog.models[MODEL].lanes[0])
            while not r.xlen(stream):
                time.sleep(0.01)  # the router is up once the warm-up request is through
            r.delete(stream)
            for i in range(args.requests):
                client.submit_many([Request({"input": x[i % len(x)][None]}, model=MODEL)])
                time.sleep(1 / args.rate)
            while sum(_count(f) for _, f in r.xrange(stream)) < args.requests:
                time.sleep(0.01)
            route, fwd = [], []
            for eid, fields in r.xrange(stream):
                added = float(eid.split(b"-")[0])
                for h in _headers(fields):
                    assert h.routed_at is not None
                    route.append(h.routed_at - h.submitted_at)
                    fwd.append(added - h.routed_at)
            floor = floor_hop(server.url, args.requests // 2, 1 / args.rate)
    for name, values in (("route", route), ("forward (ms res.)", fwd), ("floor hop", floor)):
        v = np.asarray(values)
        print(
            f"{name:18s} p50 {np.percentile(v, 50):6.3f}  p90 {np.percentile(v, 90):6.3f}"
            f"  p99 {np.percentile(v, 99):6.3f} ms  (n={len(v)})"
        )


def _headers(fields: dict[bytes, bytes]) -> list[bundle.Header]:
    if bundle.HEADERS in fields:
        return msgspec.msgpack.decode(fields[bundle.HEADERS], type=list[bundle.Header])
    return [bundle.loads_header(fields[bundle.HEADER])]


def _count(fields: dict[bytes, bytes]) -> int:
    return len(_headers(fields))


if __name__ == "__main__":
    main()
