"""Router CPU per request, without the other roles: real entries, real Redis, timed in-process.

Submits N one-sample requests pinned to the small digits model with one ``submit_many``
(the bundles `cascadeq bench overhead` sends), reads them off ingress once, then times
``Router.forward`` over those entries ``--rounds`` times (process CPU time, so Redis's own
work on the other core is not counted; the model streams are trimmed between rounds).
Also times ``bundle._headers`` on the forwarded bundles' headers.

    .venv/bin/python scripts/bench_router.py --requests 30000 --rounds 5 --models-dir /tmp/cq-models
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from pathlib import Path

import numpy as np
import redis
from redis.connection import Encoder, PythonRespSerializer

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra import streams
from cascadeq.infra.embedded import EmbeddedRedis
from cascadeq.producer import Producer, Request
from cascadeq.protocol import bundle
from cascadeq.protocol import keys as keynames
from cascadeq.router.service import Router

MODEL = "digits-small"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=30000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--packer", choices=["default", "python"], default="default")
    parser.add_argument(
        "--per-read", type=int, default=1, help="entries per read, as a router in steady state"
    )
    args = parser.parse_args()
    x = np.load(args.models_dir / "digits_test.npz")["X"].astype(np.float32)
    catalog = Catalog.load(args.models_dir / "catalog.toml", check_files=False)
    with EmbeddedRedis() as server:
        settings = Settings(redis_url=server.url)
        r = redis.Redis.from_url(server.url)
        if args.packer == "python":
            encode = Encoder("utf-8", "strict", False).encode
            packer = PythonRespSerializer(6000, encode)  # large args sent as they are, uncopied
            r.connection_pool.connection_kwargs["command_packer"] = packer
        router = Router(r, catalog, settings, consumer="bench")
        router.setup()
        with Producer(server.url, settings=settings, catalog=catalog) as client:
            reqs = [
                Request({"input": x[i % len(x)][None]}, model=MODEL) for i in range(args.requests)
            ]
            client.submit_many(reqs)
        batches: list[list[streams.Entry]] = []
        while True:
            got = streams.read_new(
                r,
                [router.keys.ingress],
                keynames.ROUTER_GROUP,
                router.consumer,
                args.per_read,
                None,
            )
            if not got:
                break
            batches.append([e for _, e in got])
        per_entry = sum(len(b) for b in batches)
        print(f"{args.requests} requests in {per_entry} entries, {len(batches)} reads")
        out_headers: list[bytes] = []
        for rnd in range(args.rounds):
            for s in router.fed:
                r.delete(s)
            if args.profile and rnd == args.rounds - 1:
                prof = cProfile.Profile()
                prof.enable()
            t0 = time.process_time()
            for b in batches:
                router.forward(b)
            dt = time.process_time() - t0
            if args.profile and rnd == args.rounds - 1:
                prof.disable()
                pstats.Stats(prof).sort_stats("tottime").print_stats(25)
            print(f"round {rnd}: forward {1e6 * dt / args.requests:.3f} us/request")
        for s in router.fed:
            for _, fields in r.xrange(s):
                if bundle.HEADERS in fields:
                    out_headers.append(fields[bundle.HEADERS])
        n = sum(len(bundle._MANY.decode(h)) for h in out_headers)
        best = min(
            _timed(lambda: [bundle._headers(h) for h in out_headers]) for _ in range(args.rounds)
        )
        print(f"_headers: {1e6 * best / n:.3f} us/header over {n} forwarded headers")


def _timed(fn: object) -> float:
    t0 = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
