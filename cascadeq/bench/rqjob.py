"""The rq baseline as a backend team would write it: one job per inference, a job function
that runs the model on one sample, its ONNX Runtime session cached per worker process.

The session is the worker's own (OnnxRunner, the catalog's options), so only the queue
differs. It is loaded before the work loop starts, so the forking Worker's work horses
inherit it rather than load it per job. Jobs and results are JSON (no pickle).

    python -m cascadeq.bench.rqjob --url redis://... --queue Q --worker simple|fork
    (with CASCADEQ_CATALOG and CASCADEQ_RQ_MODEL in the environment)
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from cascadeq.infra.process import die_with_parent

_runner: Any = None  # workers.runner.OnnxRunner, once loaded


def runner() -> Any:
    """The per-process session cache."""
    global _runner  # noqa: PLW0603 - one cached session per process is the point
    if _runner is None:
        from cascadeq.config.catalog import Catalog  # noqa: PLC0415
        from cascadeq.workers.runner import OnnxRunner  # noqa: PLC0415

        catalog = Catalog.load(os.environ["CASCADEQ_CATALOG"])
        _runner = OnnxRunner(catalog.models[os.environ["CASCADEQ_RQ_MODEL"]])
    return _runner


def infer(x: list[float]) -> list[float]:
    """One sample in, its class probabilities out, as JSON-friendly lists."""
    out = runner().run({"input": np.asarray([x], dtype=np.float32)}, 1)
    return [float(v) for v in out[0]]


def main(argv: Sequence[str] | None = None) -> int:
    import redis  # noqa: PLC0415
    from rq import Queue, SimpleWorker, Worker  # noqa: PLC0415 - the bench extra
    from rq.serializers import JSONSerializer  # noqa: PLC0415

    parser = argparse.ArgumentParser(description="an rq worker for the baseline")
    parser.add_argument("--url", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--worker", choices=["simple", "fork"], required=True)
    args = parser.parse_args(argv)
    die_with_parent()  # the bench that started it may be SIGKILLed
    runner()
    conn = redis.Redis.from_url(args.url)
    queue = Queue(args.queue, connection=conn, serializer=JSONSerializer)
    cls = SimpleWorker if args.worker == "simple" else Worker
    worker = cls([queue], connection=conn, serializer=JSONSerializer)
    worker.work(logging_level="WARNING")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
