"""How a router process starts: ``cascadeq router`` parses the flags and calls ``run``."""

from __future__ import annotations

import threading

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra.catalogs import CatalogWatch
from cascadeq.infra.connection import connect
from cascadeq.infra.process import (
    role_timeout,
    run_replicas,
    run_threads,
    serve_metrics,
    stop_on_signals,
)
from cascadeq.router.service import Router


def run(settings: Settings, catalog_path: str, replicas: int = 1) -> int:
    """Route until SIGTERM or SIGINT; with ``replicas`` > 1, supervise that many copies."""
    catalog = Catalog.load(catalog_path, check_files=False)
    url = settings.require_redis_url()  # before any replica starts: one error, not one per copy
    if replicas > 1:
        argv = ["router", "--catalog", catalog_path]
        return run_replicas(argv, replicas, settings, catalog.models)
    stop = threading.Event()
    stop_on_signals(stop)
    r = connect(url, name="cq-router", socket_timeout=role_timeout(settings))
    router = Router(r, catalog, settings)

    def offer(new: Catalog) -> None:
        router.pending = new  # taken between batches

    watch_r = connect(url, name="cq-router-catalog", socket_timeout=role_timeout(settings))
    watch = CatalogWatch(watch_r, router.keys, catalog, offer, check_files=False)
    serve_metrics(settings, catalog.models)
    run_threads([router.run, watch.run], stop)
    return 0
