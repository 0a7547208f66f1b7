"""What Redis Cluster costs the hot path: router and worker throughput, in-process.

Side by side in one run, alternating, on N one-sample requests pinned to digits-small:
one Redis with one shard (today's single-script path); a local 3-master cluster with one
shard (each batch commits in one call on its shard's slot, figures beside it in the same
pipeline); the same cluster with the split design forced (effects in a first call, the
acknowledgements in a second: two round trips); and the cluster with 3 ingress shards
(a reader thread per shard). The router drains the ingress, then the worker drains the
model streams; each is timed alone. The last stdout line is one JSON object.

    .venv/bin/python scripts/cluster_cost.py --models-dir /tmp/cq-models --requests 3000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra import slots
from cascadeq.infra.cluster import LocalCluster
from cascadeq.infra.connection import connect
from cascadeq.infra.embedded import EmbeddedRedis
from cascadeq.infra.fanin import FanIn
from cascadeq.producer import Producer, Request
from cascadeq.router import Router
from cascadeq.workers import ModelWorker

SETUPS = ("single", "cluster", "cluster_split", "cluster_3_shards")


def drain(role: Router | ModelWorker, left: Any) -> float:
    """Seconds the role takes to empty its streams (``left`` reads what remains)."""
    role.setup()
    start = time.perf_counter()
    while left():
        role.step(block_ms=20)
    took = time.perf_counter() - start
    reader = role.reader if isinstance(role, ModelWorker) else role.read
    if isinstance(reader, FanIn):
        reader.close()
    if isinstance(role, ModelWorker):
        role.batcher.close()
    return took


def one(url: str, shards: int, catalog: Catalog, x: np.ndarray, n: int) -> dict[str, float]:
    settings = Settings(
        redis_url=url, prefix=f"c{uuid.uuid4().hex[:8]}", block_ms=20, ingress_shards=shards
    )
    r = connect(url)
    keys = settings.keys()
    with Producer(url, settings=settings, catalog=catalog) as producer:
        producer.submit_many([Request({"input": x[i % len(x)][None]}, model="digits-small")
                              for i in range(n)])  # fmt: skip
    router = Router(r, catalog, settings, "r1")
    worker = ModelWorker(r, catalog, catalog.models["digits-small"], settings, "w1")

    def depth(names: list[str]) -> int:
        return sum(int(r.get(keys.backlog(s)) or 0) for s in names)

    streams = [keys.model_stream("digits-small", shard=s) for s in range(shards)]
    routed = drain(router, lambda: depth(keys.ingresses))
    served = drain(worker, lambda: depth(streams))
    r.close()
    return {"router_rps": round(n / routed), "worker_rps": round(n / served)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models/digits"))
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    catalog = Catalog.load(args.models_dir / "catalog.toml")
    x = np.load(args.models_dir / "digits_test.npz")["X"]
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in SETUPS}
    with EmbeddedRedis() as single, LocalCluster(masters=3) as cluster:
        for _ in range(args.rounds):
            for setup in SETUPS:
                slots.FORCE_SPLIT = setup == "cluster_split"
                url = single.url if setup == "single" else cluster.url
                shards = 3 if setup == "cluster_3_shards" else 1
                runs[setup].append(one(url, shards, catalog, x, args.requests))
                print(setup, runs[setup][-1], flush=True)
    slots.FORCE_SPLIT = False
    summary = {
        s: {k: statistics.median(run[k] for run in runs[s]) for k in runs[s][0]} for s in SETUPS
    }
    base = dict(summary["single"])
    for s in SETUPS:
        summary[s] |= {f"{k}_vs_single": round(summary[s][k] / base[k], 3) for k in base}
    print(json.dumps({"requests": args.requests, "rounds": args.rounds,
                      "load_avg": os.getloadavg(), **summary}))  # fmt: skip


if __name__ == "__main__":
    main()
