"""One closed-loop load process for ``cascadeq bench scaling``: threads that each keep one
chunk of requests in flight, counting what completes inside a shared wall-clock window.

Several of these run side by side, so the offered load is not capped by one process's
GIL. The window is absolute (``--start`` is a Unix time), so every process counts the
same seconds; a chunk counts when its last result arrives inside the window. The counts
go to ``--out`` as JSON (no pickle, no pipes to drain).

    python -m cascadeq.bench.loadgen --task io --rows 1 --threads 8 --chunk 4 \\
        --start 1767000000.0 --warm 2 --window 5 --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra.process import die_with_parent
from cascadeq.producer import Producer, Request, Timeout


@dataclass
class Count:
    done: int = 0  # answered ok inside the window
    failed: int = 0  # answered not ok, or not at all in time, inside the window
    batched: int = 0  # sum of the answered requests' batch sizes: mean batch = batched / done
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, done: int, failed: int, batched: int) -> None:
        with self.lock:
            self.done += done
            self.failed += failed
            self.batched += batched


def loop(client: Producer, requests: list[Request], opens: float, closes: float, n: Count) -> None:
    """Submit a chunk, wait for all of it, again, until the window closes."""
    while time.time() < closes:
        ids = client.submit_many(requests)
        try:
            results = client.wait_many(ids, timeout=60)
        except Timeout as exc:
            results = list(exc.done.values())
        ok = [r for r in results if r.ok]
        if opens <= time.time() < closes:
            n.add(len(ok), len(ids) - len(ok), sum(r.batch_size for r in ok))


def run(args: argparse.Namespace) -> Count:
    settings = Settings.from_env()
    catalog = Catalog.load(settings.catalog or "catalog.toml", check_files=False)
    spec = catalog.models[catalog.first_model(args.task)]
    (inp,) = spec.inputs
    x = np.ones((args.rows, *inp.shape[1:]), dtype=inp.dtype)
    requests = [Request({inp.name: x}, task=args.task)] * args.chunk
    count = Count()
    opens, closes = args.start + args.warm, args.start + args.warm + args.window
    with Producer(settings=settings, catalog=catalog) as client:
        threads = [
            threading.Thread(target=loop, args=(client, requests, opens, closes, count))
            for _ in range(args.threads)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return count


def main(argv: Sequence[str] | None = None) -> int:
    die_with_parent()  # the bench's stop reaches this process too
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--rows", type=int, default=1, help="samples per request")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=4, help="requests per submit_many")
    parser.add_argument("--start", type=float, required=True, help="Unix time the warm-up starts")
    parser.add_argument("--warm", type=float, default=2.0)
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    count = run(args)
    figures = {"done": count.done, "failed": count.failed, "batched": count.batched}
    args.out.write_text(json.dumps(figures), "utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
