"""`cascadeq stats`: a cluster-wide table per model, read from Redis alone.

Queues come from XINFO GROUPS and XLEN (cascadeq/infra/queues.py); rates, batch sizes,
escalation rates and latency percentiles over the last minute come from the per-second
aggregates workers write with each batch (cascadeq/infra/window.py). Models are the ones in
the catalog routers publish, else whatever model streams exist under the prefix.
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass
from typing import Any, TextIO

import redis

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra import catalogs, queues
from cascadeq.infra.connection import connect
from cascadeq.infra.window import (
    ANSWERED,
    BATCHES,
    ENTRIES,
    ESCALATED,
    SAMPLES,
    Window,
    read_tenant_windows,
    read_windows,
)
from cascadeq.ops import lifecycle, published
from cascadeq.protocol import wire
from cascadeq.protocol.keys import Keys, stream_model

CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen: `--watch` redraws in place


@dataclass(frozen=True)
class ModelStats:
    lanes: dict[str, dict[str, int | None]]
    window: Window

    def as_dict(self) -> dict[str, Any]:
        w, seconds = self.window, self.window.seconds
        entries, batches = w.counts[ENTRIES], w.counts[BATCHES]
        return {
            "lanes": self.lanes,
            "requests": self._sum("requests"),
            "depth": self._sum("depth"),
            "lag": self._sum("lag"),
            "pending": self._sum("pending"),
            "consumers": max((lane["consumers"] or 0 for lane in self.lanes.values()), default=0),
            "processed_per_s": round(entries / seconds, 3),
            "mean_batch": round(w.counts[SAMPLES] / batches, 3) if batches else 0.0,
            "samples_per_request": round(w.counts[SAMPLES] / entries, 3) if entries else 0.0,
            "escalation_rate": round(w.counts[ESCALATED] / entries, 4) if entries else 0.0,
            "answered_per_s": round(w.counts[ANSWERED] / seconds, 3),
            "p50_ms": round(w.percentile_ms(0.50), 3),
            "p99_ms": round(w.percentile_ms(0.99), 3),
            "processed_total": w.totals.get("processed", 0),
            "memory_bytes": w.totals.get("load_rss_bytes", 0),
            "worker_rss_bytes": w.totals.get("worker_rss_bytes", 0),
        }

    def _sum(self, field: str) -> int | None:
        """Over the lanes; None if a lane's server did not report it (lag on Redis 6.x)."""
        values = [lane[field] for lane in self.lanes.values()]
        return None if None in values else sum(v for v in values if v is not None)


def model_names(r: redis.Redis, keys: Keys) -> list[str]:
    """The published catalog's models, else the model streams present."""
    raw: Any = r.get(keys.catalog)
    if raw is not None:
        doc = wire.loads_map(raw, "catalog")
        catalog = Catalog.loads(str(doc["text"]), source=str(doc["source"]), check_files=False)
        return sorted(catalog.models)
    found = set()
    for name in r.scan_iter(match=f"{keys.prefix}:*q:*", count=1000):  # shards' too
        text = name.decode() if isinstance(name, bytes) else str(name)
        if ":q:" not in text or ":res:" in text:  # an id may be "q"
            continue
        found.add(stream_model(text))
    return sorted(found)


def model_memory(r: redis.Redis, keys: Keys, models: list[str]) -> dict[str, dict[str, int]]:
    """What workers measured at load, for bench JSONs that `cascadeq cost` reads."""
    windows = read_windows(r, keys, models)
    return {
        m: {
            "memory_bytes": w.totals.get("load_rss_bytes", 0),
            "worker_rss_bytes": w.totals.get("worker_rss_bytes", 0),
        }
        for m, w in windows.items()
    }


def collect(
    r: redis.Redis,
    keys: Keys,
    now_s: float | None = None,
    redis_cpu: tuple[float | None, float | None] = (None, None),
) -> dict[str, Any]:
    """The whole table as the JSON document `--json` prints; ``redis_cpu`` is Redis's
    sampled CPU per answered request and hops per answered request (RedisSampler)."""
    models = model_names(r, keys)
    lanes = queues.read_lanes(r, keys, models)
    windows = read_windows(r, keys, models, now_s)
    out: dict[str, Any] = {}
    for model in models:
        per_lane = {lane: state.as_dict() for (m, lane), state in lanes.items() if m == model}
        out[model] = ModelStats(per_lane, windows[model]).as_dict()
    pub = published.read(r, keys, models)
    pub = published.Published(pub.router_us, pub.models, *redis_cpu)
    for model, cpu in pub.models.items():
        out[model]["cpu_us_per_request"] = cpu.cpu_us
        out[model]["compute_us_per_sample"] = round(cpu.compute_us, 3)
    add_versions(r, keys, out)
    return {
        "models": out,
        "cost": cost_doc(out, pub),
        "cancelled": cancelled_doc(r, keys),
        "tenants": tenant_doc(r, keys, now_s),
    }


def cancelled_doc(r: redis.Redis, keys: Keys) -> dict[str, Any]:
    """Requests answered ``cancelled`` (never computed) and where each was stopped: the
    router dropped it before routing, or a worker skipped it when forming a batch (the
    rest were stopped in a queue before any worker read them again); and fallbacks."""
    counts: Any = r.hgetall(keys.routing_counts)
    named = {k.decode(): int(v) for k, v in counts.items()}
    fallbacks = {k.split(":", 1)[1]: v for k, v in named.items() if k.startswith("fallback:")}
    return {
        "total": sum(int(v or 0) for v in (r.get(k) for k in keys.cancel_counters)),
        "dropped_by_router": named.get("cancelled:router", 0),
        "skipped_by_workers": named.get("cancelled:worker", 0),
        "fallbacks": fallbacks,
    }


def tenant_doc(r: redis.Redis, keys: Keys, now_s: float | None = None) -> dict[str, Any]:
    """Per tenant (those answered or refused so far): answers and latency over the last
    minute, running totals, refusals by code, requests in flight where it is bounded."""
    raw: Any = r.hgetall(keys.tenant_counts)
    totals: dict[str, dict[str, int]] = {}
    for k, v in raw.items():
        tenant, _, figure = (k.decode() if isinstance(k, bytes) else str(k)).partition(":")
        totals.setdefault(tenant, {})[figure] = int(v)
    if not totals:
        return {}
    windows = read_tenant_windows(r, keys, totals, now_s)
    flying = r.mget([keys.tenant_in_flight(t) for t in sorted(totals)])
    out: dict[str, Any] = {}
    for (tenant, w), in_flight in zip(sorted(windows.items()), flying, strict=True):
        figures = totals[tenant]
        out[tenant] = {
            "answered_per_s": round(w.counts[ANSWERED] / w.seconds, 3),
            "p50_ms": round(w.percentile_ms(0.50), 3),
            "p99_ms": round(w.percentile_ms(0.99), 3),
            "answered_total": figures.get("answered", 0),
            "rejected": {
                f.split(":", 1)[1]: n for f, n in figures.items() if f.startswith("rejected:")
            },
            "in_flight": None if in_flight is None else int(in_flight),
        }
    return out


def render_tenants(tenants: dict[str, Any]) -> list[str]:
    """One line per tenant, under the model table."""
    if not tenants:
        return []
    head = (
        f"{'tenant':<16}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'total':>10}{'flying':>8}  rejected"
    )
    lines = [head, "-" * len(head)]
    for tenant, t in tenants.items():
        refused = ", ".join(f"{code} {n}" for code, n in sorted(t["rejected"].items())) or "-"
        flying = NOT_REPORTED if t["in_flight"] is None else t["in_flight"]
        lines.append(
            f"{tenant:<16}{t['answered_per_s']:>9.1f}{t['p50_ms']:>8.1f}{t['p99_ms']:>8.1f}"
            f"{t['answered_total']:>10}{flying:>8}  {refused}"
        )
    return lines


def add_versions(r: redis.Redis, keys: Keys, out: dict[str, Any]) -> None:
    """Each model's figures per version (requests, confidence, provider, memory, loads)."""
    doc = catalogs.read(r, keys)
    if doc is None:
        return
    catalog = catalogs.parse(doc, check_files=False)
    for model, m in out.items():
        spec = catalog.models.get(model)
        if spec is not None:
            m["versions"] = lifecycle.version_rows(r, keys, spec)


def render_versions(doc: dict[str, Any]) -> list[str]:
    lines = []
    for model, m in doc["models"].items():
        for version, v in m.get("versions", {}).items():
            conf = "-" if v["confidence"] is None else f"{v['confidence']:.3f}"
            lines.append(
                f"  {model} version {version} ({v['role']}): {v['requests']} requests, "
                f"confidence {conf}, {v['provider'] or '-'}, {v['resident_mb']} MB resident, "
                f"{v['loads']} loads ({v['load_ms']} ms), {v['evictions']} evictions"
            )
    return ["versions:", *lines] if lines else []


def cost_doc(models: dict[str, Any], pub: published.Published) -> dict[str, Any]:
    """Per answered request over the window: total (every role's CPU plus Redis's) and
    compute only; None figures were not published (or not sampled)."""
    found = published.totals(models, pub)
    base = {"router_us": pub.router_us, "redis_us": pub.redis_us, "hops": pub.hops}
    if found is None:
        return {**base, "total_cpu_us": None, "compute_us": None}
    return {**base, **found.as_dict()}


COLUMNS = (
    ("model", "{:<16}", "{:<16}"),
    ("lane", "{:<9}", "{:<9}"),
    ("queued", "{:>7}", "{:>7}"),
    ("depth", "{:>7}", "{:>7}"),
    ("lag", "{:>7}", "{:>7}"),
    ("pending", "{:>8}", "{:>8}"),
    ("cons", "{:>5}", "{:>5}"),
    ("req/s", "{:>9}", "{:>9.1f}"),
    ("batch", "{:>7}", "{:>7.1f}"),
    ("esc%", "{:>6}", "{:>6.1f}"),
    ("p50 ms", "{:>8}", "{:>8.1f}"),
    ("p99 ms", "{:>8}", "{:>8.1f}"),
    ("total", "{:>10}", "{:>10}"),
)


NOT_REPORTED = "-"


def _cell(text_fmt: str, fmt: str, value: Any) -> str:
    """A figure the server did not report (None) shows as a dash, never as 0."""
    return text_fmt.format(NOT_REPORTED) if value is None else fmt.format(value)


def render(doc: dict[str, Any]) -> str:
    """One line per model and lane; rates and latencies are per model (last minute)."""
    head = "".join(fmt.format(name) for name, fmt, _ in COLUMNS)
    lines = [head, "-" * len(head)]
    for model, m in doc["models"].items():
        for lane, q in m["lanes"].items():
            values = (
                model, lane, q["requests"], q["depth"], q["lag"], q["pending"], q["consumers"],
                m["processed_per_s"], m["mean_batch"], m["escalation_rate"] * 100,
                m["p50_ms"], m["p99_ms"], m["processed_total"],
            )  # fmt: skip
            cells = zip(COLUMNS, values, strict=True)
            lines.append("".join(_cell(text, fmt, v) for (_, text, fmt), v in cells))
    lines.append(cost_line(doc.get("cost", {})))
    lines.append(cancel_line(doc.get("cancelled", {})))
    lines += render_tenants(doc.get("tenants", {}))
    lines += render_versions(doc)
    lines.append("queued: requests not yet acknowledged; depth, lag, pending: stream entries")
    lines.append("rates, batch, esc% and latency (end to end): the last minute, per model")
    if any(q["lag"] is None for m in doc["models"].values() for q in m["lanes"].values()):
        lines.append(f"lag {NOT_REPORTED}: this Redis reports none (XINFO GROUPS lag is 7.0+)")
    return "\n".join(lines)


def cancel_line(doc: dict[str, Any]) -> str:
    """Cancelled requests (never computed) and fallbacks taken, by model."""
    fallbacks = ", ".join(f"{m} {n}" for m, n in sorted(doc.get("fallbacks", {}).items()))
    return (
        f"cancelled (never computed): {doc.get('total', 0)} (router dropped "
        f"{doc.get('dropped_by_router', 0)}, workers skipped {doc.get('skipped_by_workers', 0)});"
        f" fallbacks: {fallbacks or 'none'}"
    )


def cost_line(cost: dict[str, Any]) -> str:
    """Both figures, labelled; a dash where a role has published nothing yet."""
    total, compute = cost.get("total_cpu_us"), cost.get("compute_us")
    if total is None or compute is None:
        return "cost per answered request: - (nothing answered, or no CPU published yet)"
    redis_us = cost.get("redis_us")
    roles = ", ".join(f"{k} {v:.1f}" for k, v in cost.get("roles_us", {}).items())
    return (
        f"cost per answered request: total {total:.1f} us CPU ({roles}, redis "
        f"{'-' if redis_us is None else f'{redis_us:.1f}'}) vs compute only {compute:.1f} us"
    )


def main(
    r: redis.Redis,
    keys: Keys,
    *,
    as_json: bool,
    watch: float | None,
    stop: threading.Event | None = None,
    out: TextIO = sys.stdout,
    redis_sample_s: float = 0.0,
) -> int:
    """Print once, or redraw every ``watch`` seconds until stopped (Ctrl-C).

    Redis's CPU per request is sampled over ``redis_sample_s`` before the first table
    (0: not sampled), then between redraws."""
    stop = stop or threading.Event()
    sampler = published.RedisSampler(r, keys, model_names(r, keys))
    redis_cpu = sampler.over(redis_sample_s, stop) if redis_sample_s > 0 else sampler.sample()
    while True:
        doc = collect(r, keys, redis_cpu=redis_cpu)
        if watch is None or not as_json:  # watching with --json: a stream of JSON lines
            out.write((CLEAR if watch is not None else "") + render(doc) + "\n")
        if as_json:
            out.write(json.dumps(doc) + "\n")
        out.flush()
        if watch is None or stop.wait(watch):
            return 0
        redis_cpu = sampler.sample()


def run(
    settings: Settings,
    *,
    as_json: bool,
    watch: float | None,
    redis_sample_s: float = published.DEFAULT_SAMPLE_S,
) -> int:
    """`cascadeq stats`: ``main`` on its own connection; Ctrl-C ends a watch cleanly."""
    r = connect(settings.require_redis_url(), name="cq-stats")
    try:
        keys = settings.keys()
        return main(r, keys, as_json=as_json, watch=watch, redis_sample_s=redis_sample_s)
    except KeyboardInterrupt:
        return 0
    finally:
        r.close()
