"""The worker's CPU per request on recorded entries: capture once, replay in any checkout.

``capture`` runs a real router on a private redis-server, submits N one-sample requests
(pinned to digits-small, or to the digits task so some escalate) and saves the entries
the router wrote to the model stream. ``replay`` loads those entries into a fresh
redis-server and serves them with an in-process ModelWorker (its prefetch thread
included), timing process CPU from the first step to the last ack; it also counts the
Redis commands the worker sent per batch. Replaying the same file with two checkouts'
interpreters, alternately, compares their worker CPU on identical input:

    .venv/bin/python scripts/worker_cpu.py capture --out /tmp/entries.msgpack
    .venv/bin/python scripts/worker_cpu.py replay --entries /tmp/entries.msgpack --runs 5
    .venv/bin/python scripts/worker_cpu.py replay --entries /tmp/entries.msgpack --profile
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import redis

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra.embedded import EmbeddedRedis
from cascadeq.protocol.keys import Keys

MODEL = "digits-small"


def capture(args: argparse.Namespace) -> None:
    from cascadeq.infra.process import ProcessGroup  # noqa: PLC0415
    from cascadeq.producer import Producer, Request  # noqa: PLC0415

    x = np.load(args.models_dir / "digits_test.npz")["X"].astype(np.float32)
    catalog = Catalog.load(args.models_dir / "catalog.toml", check_files=False)
    with EmbeddedRedis() as server:
        settings = Settings(redis_url=server.url)
        keys = Keys(settings.prefix)
        stream = keys.model_stream(args.model)
        env = {
            **os.environ,
            "REDIS_URL": server.url,
            "CASCADEQ_CATALOG": str(args.models_dir.resolve() / "catalog.toml"),
            "CASCADEQ_LOG_LEVEL": "warning",
        }
        r = redis.Redis.from_url(server.url)
        with ProcessGroup(env) as group:
            group.spawn("router")
            with Producer(server.url, settings=settings, catalog=catalog) as client:
                pick = {"model": args.model} if args.mode == "pinned" else {"task": "digits"}
                reqs = [
                    Request({"input": x[i % len(x)][None]}, **pick) for i in range(args.requests)
                ]
                client.submit_many(reqs)
                deadline = time.monotonic() + 120
                while int(r.get(keys.backlog(stream)) or 0) < args.requests:
                    if time.monotonic() > deadline:
                        raise SystemExit("the router did not forward every request in 120 s")
                    time.sleep(0.05)
        entries = r.xrange(stream)
        sizes = Counter(len(msgpack.unpackb(f[b"H"])) if b"H" in f else 1 for _, f in entries)
        print(f"{len(entries)} entries; requests per entry: {dict(sorted(sizes.items()))}")
        with open(args.out, "wb") as fh:
            msgpack.pack([list(f.items()) for _, f in entries], fh, use_bin_type=True)


def _requests(fields: dict[bytes, bytes]) -> int:
    return len(msgpack.unpackb(fields[b"H"])) if b"H" in fields else 1


def replay_once(
    url: str,
    entries: list[list[tuple[bytes, bytes]]],
    catalog: Catalog,
    runner: Any,
    prof: Any,
    model: str = MODEL,
) -> dict[str, Any]:
    from cascadeq.workers import ModelWorker  # noqa: PLC0415

    r = redis.Redis.from_url(url)
    r.flushall()
    settings = Settings(redis_url=url)
    keys = Keys(settings.prefix)
    stream = keys.model_stream(model)
    pipe = r.pipeline(transaction=False)
    requests = 0
    for fields in entries:
        pipe.xadd(stream, dict(fields))  # type: ignore[arg-type]
        requests += _requests(dict(fields))
    pipe.set(keys.backlog(stream), requests)
    pipe.execute()
    worker = ModelWorker(
        r, catalog, catalog.models[model], settings, "bench-worker", _sessions(runner)
    )
    worker.setup()
    r.config_resetstat()
    stop = threading.Event()
    wall, cpu = time.perf_counter(), time.process_time()
    if prof is not None:
        prof.enable()
    while int(r.get(keys.backlog(stream)) or 0) > 0:
        worker.step(50)
    if prof is not None:
        prof.disable()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    stats: Any = r.info("commandstats")
    worker.batcher.close()
    stop.set()
    calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}
    batches = worker.stats["batches"]
    return {
        "requests": requests,
        "batches": batches,
        "us_per_request": cpu / requests * 1e6,
        "wall_s": wall,
        "commands_per_batch": {k: round(v / max(1, batches), 2) for k, v in sorted(calls.items())},
        "results": int(r.dbsize()),
    }


def replay(args: argparse.Namespace) -> None:
    from cascadeq.workers import OnnxRunner  # noqa: PLC0415

    with open(args.entries, "rb") as fh:
        raw = msgpack.unpack(fh, raw=True)
    entries = [[(bytes(k), bytes(v)) for k, v in e] for e in raw]
    catalog = Catalog.load(args.models_dir / "catalog.toml")
    runner = OnnxRunner(catalog.models[args.model])
    sys.setswitchinterval(0.0005)  # as `cascadeq worker` sets it
    figures = []
    prof = cProfile.Profile() if args.profile else None
    with EmbeddedRedis() as server:
        for _ in range(args.runs):
            got = replay_once(server.url, entries, catalog, runner, prof, args.model)
            figures.append(got["us_per_request"])
    print(json.dumps({**got, "us_per_request_runs": [round(f, 2) for f in figures]}))
    print(f"worker us/request: median {statistics.median(figures):.2f}  min {min(figures):.2f}")
    if prof is not None:
        pstats.Stats(prof).sort_stats(args.sort).print_stats(args.top)


def _split(entries: list[dict[bytes, bytes]], size: int) -> list[dict[bytes, bytes]]:
    """The same requests as bundles of ``size``: many small batches, as under light load."""
    from cascadeq.protocol import bundle, wire  # noqa: PLC0415

    out = []
    for fields in entries:
        got = bundle.decode("s", b"1-0", fields, 1 << 30)
        for at in range(0, got.size, size):
            mask = np.zeros(got.size, dtype=bool)
            mask[at : at + size] = True
            inputs = wire.dumps_inputs(bundle.take_rows(got.inputs, got.rows, mask))
            out.append(bundle.bundle_fields(got.headers[at : at + size], inputs, got.rows[mask]))
    return out


def _sessions(runner: Any) -> Any:
    """The worker's sessions, holding the one session loaded once for every run."""
    from cascadeq.workers.sessions import Sessions  # noqa: PLC0415

    sessions = Sessions()
    sessions.adopt(runner)
    return sessions


def micro(args: argparse.Namespace) -> None:
    """The worker thread's CPU in ``process`` alone: decoded entries, one batch each."""
    from cascadeq.workers import ModelWorker, OnnxRunner  # noqa: PLC0415
    from cascadeq.workers.batcher import decode  # noqa: PLC0415

    with open(args.entries, "rb") as fh:
        raw = msgpack.unpack(fh, raw=True)
    entries = [{bytes(k): bytes(v) for k, v in e} for e in raw]
    if args.split:
        entries = _split(entries, args.split)
    catalog = Catalog.load(args.models_dir / "catalog.toml")
    spec = catalog.models[args.model]
    runner = OnnxRunner(spec)
    figures = []
    prof = cProfile.Profile() if args.profile else None
    with EmbeddedRedis() as server:
        r = redis.Redis.from_url(server.url)
        settings = Settings(redis_url=server.url)
        stream = Keys(settings.prefix).model_stream(args.model)
        worker = ModelWorker(r, catalog, spec, settings, "bench-worker", _sessions(runner))
        worker.setup()
        requests = 0
        for _ in range(args.runs):
            r.flushall()
            spent = 0.0
            requests = 0
            for i, fields in enumerate(entries):
                eid = f"{i + 1}-0".encode()
                item = decode(stream, (eid, fields), spec, time.time() * 1e3, 1 << 30)
                requests += item.bundle.size
                if prof is not None:
                    prof.enable()
                started = time.thread_time()
                worker.process([item])
                spent += time.thread_time() - started
                if prof is not None:
                    prof.disable()
            figures.append(spent / requests * 1e6)
    print(
        f"process() us/request: median {statistics.median(figures):.2f}  min {min(figures):.2f}"
        f"  runs {[round(f, 2) for f in figures]}"
    )
    if prof is not None:
        pstats.Stats(prof).sort_stats(args.sort).print_stats(args.top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", default=Path("models/digits"), type=Path)
    parser.add_argument("--model", default=MODEL, help="the model pinned, captured and served")
    sub = parser.add_subparsers(dest="cmd", required=True)
    cap = sub.add_parser("capture")
    cap.add_argument("--out", type=Path, required=True)
    cap.add_argument("--requests", type=int, default=30_000)
    cap.add_argument("--mode", choices=("pinned", "task"), default="pinned")
    rep = sub.add_parser("replay")
    rep.add_argument("--entries", type=Path, required=True)
    rep.add_argument("--runs", type=int, default=3)
    rep.add_argument("--profile", action="store_true")
    rep.add_argument("--sort", default="tottime")
    rep.add_argument("--top", type=int, default=40)
    mic = sub.add_parser("micro")
    mic.add_argument("--entries", type=Path, required=True)
    mic.add_argument("--split", type=int, default=0, help="re-bundle into entries of this size")
    mic.add_argument("--runs", type=int, default=5)
    mic.add_argument("--profile", action="store_true")
    mic.add_argument("--sort", default="tottime")
    mic.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    {"capture": capture, "replay": replay, "micro": micro}[args.cmd](args)


if __name__ == "__main__":
    main()
