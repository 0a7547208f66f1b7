"""Prometheus metrics of routers and workers, served on ``metrics_port`` (0 = off).

Per-request figures are observed in process, once per batch (cheap: no Redis);
queue depth, lag and pending are read from Redis when Prometheus scrapes, never per
request. With ``--replicas N`` the supervisor points PROMETHEUS_MULTIPROC_DIR at a
directory of its own, each copy writes its values there (prometheus-client's
multiprocess mode) and the supervisor alone serves the aggregate on the port.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import sys
import tempfile
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import redis
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cascadeq.infra import queues
from cascadeq.infra.log import get_logger
from cascadeq.infra.window import Tally
from cascadeq.protocol.clock import Every
from cascadeq.protocol.keys import Keys

log = get_logger("cascadeq.infra.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
PADDING_BUCKETS = (1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0)
ROUTER_MODEL = "none"  # the "model" label of results the router itself gives

REQUESTS = Counter(
    "cascadeq_requests_total",
    "Requests given a final result, by the model that answered (none: the router) and status",
    ["model", "status"],
)
ESCALATIONS = Counter(
    "cascadeq_escalations_total", "Requests passed up the cascade", ["model", "to"]
)
ESCALATIONS_SKIPPED = Counter(
    "cascadeq_escalations_skipped_total",
    "Escalations due but not made (deadline, load): the answer was kept",
    ["model", "reason"],
)
ROUTING_DECISIONS = Counter(
    "cascadeq_routing_decisions_total",
    "Router decisions by the rule that decided (or the error code that ended the request)",
    ["rule"],
)
BATCH_SIZE = Histogram(
    "cascadeq_batch_size_samples", "Samples per model call", ["model"], buckets=BATCH_BUCKETS
)
PADDING = Histogram(
    "cascadeq_batch_padding_overhead_ratio",
    "Elements run / real elements per batch (1 = no padding), variable-length models only",
    ["model"],
    buckets=PADDING_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "cascadeq_queue_wait_seconds",
    "From entering the model stream to a worker reading it, per request",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
BATCH_WAIT = Histogram(
    "cascadeq_batch_wait_seconds",
    "From a worker reading a request to its batch launching, per request",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
COMPUTE = Histogram(
    "cascadeq_compute_seconds", "ONNX Runtime time per model call", ["model"],
    buckets=LATENCY_BUCKETS,
)  # fmt: skip
REQUEST_DURATION = Histogram(
    "cascadeq_request_duration_seconds",
    "End to end, submit to final result, by the model that answered",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
TENANT_REQUESTS = Counter(
    "cascadeq_tenant_requests_total",
    "Requests answered ok, by tenant (catalogs that declare tenants only)",
    ["tenant"],
)
TENANT_DURATION = Histogram(
    "cascadeq_tenant_request_duration_seconds",
    "End to end, submit to final result, by tenant (catalogs that declare tenants only)",
    ["tenant"],
    buckets=LATENCY_BUCKETS,
)
MODEL_LOADS = Counter("cascadeq_model_loads_total", "ONNX sessions created", ["model"])
MODEL_UNLOADS = Counter("cascadeq_model_unloads_total", "ONNX sessions released", ["model"])
MODEL_LOAD_TIME = Counter(
    "cascadeq_model_load_seconds",
    "Time spent creating, validating and warming up ONNX sessions",
    ["model"],
)
VERSION_REQUESTS = Counter(
    "cascadeq_version_requests",
    "Requests run by each model version, by the execution provider that ran them",
    ["model", "version", "provider"],
)
MODEL_MEMORY = Gauge(
    "cascadeq_model_memory_bytes",
    "Resident memory the model's ONNX session added when it was created",
    ["model"],
    multiprocess_mode="max",
)
PROCESS_MEMORY = Gauge(
    "cascadeq_process_resident_memory_bytes",
    "Resident memory of cascadeq processes (summed over live replicas)",
    ["role"],
    multiprocess_mode="livesum",
)
QUEUE_FAMILIES = {
    "cascadeq_queue_requests": "Requests in a model stream not yet acknowledged (entries may "
    "be bundles of many requests)",
    "cascadeq_queue_depth": "Entries in a model stream (XLEN; acknowledged ones until trimmed)",
    "cascadeq_queue_lag": "Entries in a model stream no worker has read yet (absent: Redis < 7)",
    "cascadeq_queue_pending": "Entries read by a worker and not yet acknowledged",
    "cascadeq_queue_consumers": "Consumers in the workers' group of a model stream",
}

_memory_clock = Every(5.0)


def family_names() -> set[str]:
    """Every metric family this module exposes (counters without their _total)."""
    metrics: tuple[Any, ...] = (
        REQUESTS, ESCALATIONS, ESCALATIONS_SKIPPED, ROUTING_DECISIONS, BATCH_SIZE, PADDING,
        QUEUE_WAIT, BATCH_WAIT, COMPUTE, REQUEST_DURATION, MODEL_LOADS, MODEL_UNLOADS,
        MODEL_MEMORY, PROCESS_MEMORY, TENANT_REQUESTS, TENANT_DURATION, MODEL_LOAD_TIME,
        VERSION_REQUESTS,
    )  # fmt: skip
    return {m.name for metric in metrics for m in metric.describe()} | set(QUEUE_FAMILIES)


def rss_bytes() -> int:
    """This process's resident memory now (/proc on Linux; the peak elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource  # noqa: PLC0415 - POSIX only; not on the Linux path

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)


def process_memory(role: str) -> None:
    """At most every few seconds: cheap enough to call from every batch."""
    if _memory_clock.due():
        PROCESS_MEMORY.labels(role).set(rss_bytes())


def model_loaded(model: str, memory_bytes: int, seconds: float = 0.0) -> None:
    MODEL_LOADS.labels(model).inc()
    MODEL_MEMORY.labels(model).set(memory_bytes)
    MODEL_LOAD_TIME.labels(model).inc(seconds)


def version_ran(model: str, version: str, provider: str, requests: int) -> None:
    VERSION_REQUESTS.labels(model, version, provider).inc(requests)


def model_unloaded(model: str) -> None:
    MODEL_UNLOADS.labels(model).inc()


def observe_many(child: Any, values: Sequence[float], scale: float = 1.0) -> None:
    """A batch's observations of one histogram: bucket counts in one numpy call, not an
    observe (a lock and a bucket scan) per request. Reaches into prometheus-client's
    histogram child (its bounds, bucket values and sum), which has no bulk observe; the
    result is what observing each value would give (tests/system/test_observability.py)."""
    if not len(values):
        return
    arr = np.asarray(values, dtype=np.float64) * scale
    _observe_array(child, np.where(np.isnan(arr), 0.0, arr))


def _observe_array(child: Any, arr: np.ndarray) -> None:
    """Many values, none NaN."""
    if not len(arr):
        return
    bounds, buckets = child._upper_bounds, child._buckets
    counts = np.bincount(np.searchsorted(bounds, arr, side="left"))
    for index in np.flatnonzero(counts).tolist():
        buckets[index].inc(int(counts[index]))
    child._sum.inc(float(arr.sum()))


def observe_weighted(
    child: Any, values: Sequence[float], weights: Sequence[int], scale: float = 1.0
) -> None:
    """A few values, each observed ``weight`` times (a batch's per-entry waits): what
    observing each that often would give, without numpy's fixed cost per call."""
    if not values:
        return
    bounds, buckets, total = child._upper_bounds, child._buckets, 0.0
    for value, n in zip(values, weights, strict=True):
        v = value * scale
        if math.isnan(v):  # counts as 0, as in observe_many
            v = 0.0
        buckets[bisect_left(bounds, v)].inc(n)
        total += v * n
    child._sum.inc(total)


_CHILDREN: dict[tuple[Any, ...], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once: a batch would pay its lock every time."""
    key = (id(metric), *labels)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*labels)
    return child


def observe_batch(model: str, tally: Tally) -> None:
    """One worker batch: its histograms and counters, from what the batch tallied."""
    waits = tally.waits
    observe_weighted(_child(QUEUE_WAIT, model), tally.queue_ms, waits, 1e-3)
    observe_weighted(_child(BATCH_WAIT, model), tally.batch_wait_ms, waits, 1e-3)
    ones = [1] * len(tally.compute_ms)
    observe_weighted(_child(COMPUTE, model), tally.compute_ms, ones, 1e-3)
    observe_weighted(_child(BATCH_SIZE, model), tally.batch_samples, ones)
    observe_weighted(_child(PADDING, model), tally.padding, [1] * len(tally.padding))
    _observe_array(_child(REQUEST_DURATION, model), tally.answers_ms() * 1e-3)
    for status, n in tally.statuses.items():
        _child(REQUESTS, model, status).inc(n)
    for target, n in tally.escalated_to.items():
        _child(ESCALATIONS, model, target).inc(n)
    for reason, n in tally.skipped.items():
        _child(ESCALATIONS_SKIPPED, model, reason).inc(n)
    for tenant, ms in tally.tenant_answers_ms().items():
        _child(TENANT_REQUESTS, tenant).inc(len(ms))
        _observe_array(_child(TENANT_DURATION, tenant), ms * 1e-3)
    process_memory("worker")


def observe_routing(rules: Mapping[str, int], finals: Mapping[str, int]) -> None:
    """One router batch: decisions by rule, and the final results it gave itself."""
    for rule, n in rules.items():
        ROUTING_DECISIONS.labels(rule).inc(n)
    for status, n in finals.items():
        REQUESTS.labels(ROUTER_MODEL, status).inc(n)
    process_memory("router")


def observe_cancelled(model: str, n: int) -> None:
    """Requests a worker skipped when forming a batch: answered cancelled, never computed."""
    REQUESTS.labels(model, "cancelled").inc(n)


class QueueCollector(Collector):
    """Queue gauges read from Redis when Prometheus scrapes (one pipeline per scrape)."""

    def __init__(self, r: redis.Redis, keys: Keys, models: Iterable[str]) -> None:
        self.r, self.keys, self.models = r, keys, sorted(models)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        for name, text in QUEUE_FAMILIES.items():
            yield GaugeMetricFamily(name, text, labels=["model", "lane"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            lanes = queues.read_lanes(self.r, self.keys, self.models)
        except redis.RedisError as exc:  # a scrape during an outage: no queue figures
            log.warning("metrics_redis_unavailable", error=str(exc))
            return
        families = {
            name: GaugeMetricFamily(name, text, labels=["model", "lane"])
            for name, text in QUEUE_FAMILIES.items()
        }
        for (model, lane), state in lanes.items():
            for field, value in state.as_dict().items():
                if value is not None:  # lag on Redis 6.x: no sample rather than a wrong one
                    families[f"cascadeq_queue_{field}"].add_metric([model, lane], value)
        yield from families.values()


def serve(port: int, collector: Collector | None = None, addr: str = "0.0.0.0") -> Any:  # noqa: S104
    """Serve /metrics on ``port``; the aggregate of every copy when in multiprocess mode."""
    if port <= 0:
        return None
    registry: CollectorRegistry = REGISTRY
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    if collector is not None:
        registry.register(collector)
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    log.info("metrics_serving", port=port, multiprocess=bool(os.environ.get(MULTIPROC_ENV)))
    return server


def multiproc_dir() -> tuple[str, bool]:
    """The directory replicas write to: the operator's (stale files cleared) or a new one.

    Set before the copies start, so their prometheus-client picks multiprocess mode.
    Returns the path and whether it was created here (the caller then removes it).
    """
    given = os.environ.get(MULTIPROC_ENV)
    path = given or tempfile.mkdtemp(prefix="cascadeq-metrics-")
    os.makedirs(path, exist_ok=True)
    for stale in glob.glob(os.path.join(path, "*.db")):  # a previous run's values
        with contextlib.suppress(FileNotFoundError):
            os.remove(stale)
    os.environ[MULTIPROC_ENV] = path
    return path, not given


def replica_exited(pid: int) -> None:
    """Drop a dead copy's live gauges (its counters and histograms are kept)."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
