"""How a worker process starts: ``cascadeq worker`` parses the flags and calls ``run``."""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra.catalogs import CatalogWatch
from cascadeq.infra.connection import connect
from cascadeq.infra.process import (
    consumer_name,
    role_timeout,
    run_replicas,
    run_threads,
    serve_metrics,
    stop_on_signals,
)
from cascadeq.protocol.errors import EXIT_USAGE
from cascadeq.workers.local import LocalModels
from cascadeq.workers.service import ModelWorker
from cascadeq.workers.sessions import Sessions

# Each model has a compute thread and a prefetching reader thread. When ONNX Runtime
# hands the GIL back, the compute thread should get it within 0.5 ms, not the default
# 5 ms a busy reader may hold it (measured: small-model batches took 2.3 ms in the
# worker against 0.035 ms alone).
WORKER_SWITCH_INTERVAL_S = 0.0005


def run(
    settings: Settings, catalog_path: str, models: Sequence[str] = (), replicas: int = 1
) -> int:
    """Serve ``models`` (default: all in the catalog) until SIGTERM or SIGINT.

    With ``replicas`` > 1, supervise that many copies instead.
    """
    catalog = Catalog.load(catalog_path)
    names = list(models) or sorted(catalog.models)
    unknown = [m for m in names if m not in catalog.models]
    if unknown:
        print(
            f"unknown model(s) {unknown}; the catalog has {sorted(catalog.models)}", file=sys.stderr
        )
        return EXIT_USAGE
    url = settings.require_redis_url()  # before any replica starts: one error, not one per copy
    if replicas > 1:
        argv = ["worker", "--catalog", catalog_path]
        if models:
            argv += ["--models", ",".join(models)]
        return run_replicas(argv, replicas, settings, names)
    stop = threading.Event()
    stop_on_signals(stop)
    consumer = consumer_name("worker")
    local: LocalModels = {}  # each worker joins: a task may escalate into its siblings here
    sessions = Sessions(settings.memory_budget_mb)  # one LRU for the process's models
    workers = [
        ModelWorker(
            connect(url, name=f"cq-worker-{name}", socket_timeout=role_timeout(settings)),
            catalog,
            catalog.models[name],
            settings,
            consumer,
            sessions=sessions,
            local=local,
        )
        for name in names
    ]

    def offer(new: Catalog) -> None:
        for w in workers:
            w.offer(new)

    r = connect(url, name="cq-worker-catalog", socket_timeout=role_timeout(settings))
    watch = CatalogWatch(r, settings.keys(), catalog, offer)
    serve_metrics(settings, names)
    sys.setswitchinterval(WORKER_SWITCH_INTERVAL_S)
    run_threads([*(w.run for w in workers), watch.run], stop)
    return 0
