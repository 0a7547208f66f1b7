"""Rough end-to-end throughput of one model: N one-sample requests through the live system.

Starts a private redis-server, one router and one worker process, submits N requests
pinned to MODEL at once and waits for every result. Not the benchmark suite: a quick
check of the hot path after a change. Needs the example models (`make demo` builds them).

    .venv/bin/python scripts/throughput.py --requests 30000 --model digits-small
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra.embedded import EmbeddedRedis
from cascadeq.infra.process import ProcessGroup
from cascadeq.producer import Producer, Request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", default="models/digits")
    parser.add_argument("--model", default="digits-small")
    parser.add_argument("--requests", type=int, default=30_000)
    args = parser.parse_args()
    models = Path(args.models_dir)
    catalog = Catalog.load(models / "catalog.toml")
    x = np.load(models / "digits_test.npz")["X"]
    with EmbeddedRedis() as server:
        env = {
            **os.environ,
            "REDIS_URL": server.url,
            "CASCADEQ_LOG_LEVEL": "warning",
            "CASCADEQ_CATALOG": str(models / "catalog.toml"),
        }
        group = ProcessGroup(env)
        try:
            group.spawn("router")
            group.spawn("worker", "--models", args.model)
            with Producer(settings=Settings(redis_url=server.url), catalog=catalog) as client:
                warm = client.submit_many([Request({"input": x[:1]}, model=args.model)])
                client.wait_many(warm, timeout=60)
                requests = [
                    Request({"input": x[i % len(x)][None]}, model=args.model)
                    for i in range(args.requests)
                ]
                started = time.perf_counter()
                ids = client.submit_many(requests)
                submitted = time.perf_counter()
                results = client.wait_many(ids, timeout=600)
                done = time.perf_counter()
        finally:
            group.stop()
    print(
        json.dumps(
            {
                "model": args.model,
                "requests": args.requests,
                "submit_rps": round(args.requests / (submitted - started)),
                "e2e_rps": round(args.requests / (done - started)),
                "mean_batch": round(float(np.mean([r.batch_size for r in results])), 1),
                "errors": sum(not r.ok for r in results),
            }
        )
    )


if __name__ == "__main__":
    main()
