"""`cascadeq demo`: the held-out digits split through the live system, three ways.

Starts its own Redis (unless REDIS_URL is set), one router and two worker processes,
and measures small-only, large-only and the cascade on the same requests.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cascadeq.catalog import Catalog
from cascadeq.connection import connect
from cascadeq.embedded import redis_url_or_embedded
from cascadeq.messages import Result
from cascadeq.process import ProcessGroup
from cascadeq.settings import Settings

TASK = "digits"
WORKERS = 2  # worker processes; `cascadeq cost` divides throughput by it


def progress(line: str) -> None:
    print(f"[demo] {line}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Row:
    strategy: str
    requests: int
    accuracy: float
    large_share: float
    large_calls: int
    throughput_rps: float
    p50_ms: float
    p99_ms: float
    relative_cost: float
    errors: int


def summarize(
    strategy: str,
    results: list[Result],
    labels: np.ndarray,
    seconds: float,
    catalog: Catalog,
    large: str,
) -> Row:
    """One table row; cost is the catalog's per-sample cost summed over models that ran."""
    output = catalog.models[large].output
    ok = [r for r in results if r.ok]
    predicted = np.array([int(np.argmax(r.outputs[output][0])) if r.ok else -1 for r in results])
    ran = [
        [hop["model"] for hop in r.path if "compute_ms" in hop]  # hops a model really ran
        for r in results
    ]
    large_calls = sum(large in models for models in ran)
    cost = sum(catalog.models[m].cost for models in ran for m in models)
    totals = np.array([r.timings.get("total_ms", 0.0) for r in ok] or [0.0])
    n = len(results)
    return Row(
        strategy=strategy,
        requests=n,
        accuracy=round(float(np.mean(predicted == labels)), 4),
        large_share=round(large_calls / n, 4),
        large_calls=large_calls,
        throughput_rps=round(n / seconds, 1),
        p50_ms=round(float(np.percentile(totals, 50)), 2),
        p99_ms=round(float(np.percentile(totals, 99)), 2),
        relative_cost=round(cost / (n * catalog.models[large].cost), 4),
        errors=n - len(ok),
    )


def run_strategies(
    url: str, catalog: Catalog, settings: Settings, x: np.ndarray, y: np.ndarray
) -> list[Row]:
    from producer import Producer, Request  # noqa: PLC0415 - the core imports roles lazily

    task = catalog.tasks[TASK]
    small, large = task.cascade[0].model, task.cascade[-1].model
    strategies: list[tuple[str, dict[str, Any]]] = [
        ("small-only", {"model": small}),
        ("large-only", {"model": large}),
        ("cascade", {"task": TASK}),
    ]
    rows = []
    with Producer(url, settings=settings, catalog=catalog) as client:
        for _, target in strategies:  # warm-up: proves router and workers are serving
            client.wait_many(client.submit_many([Request({"input": x[:1]}, **target)]), 120)
        for name, target in strategies:
            progress(f"{name}: {len(x)} requests")
            started = time.perf_counter()
            ids = client.submit_many(
                [Request({"input": x[i : i + 1]}, **target) for i in range(len(x))]
            )
            results = client.wait_many(ids, timeout=300)
            rows.append(summarize(name, results, y, time.perf_counter() - started, catalog, large))
    return rows


def render(rows: list[Row]) -> str:
    head = (
        f"{'strategy':<12}{'requests':>9}{'accuracy':>10}{'large%':>8}{'large':>7}"
        f"{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'cost':>7}{'errors':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.strategy:<12}{r.requests:>9}{r.accuracy:>10.4f}"
            f"{r.large_share * 100:>7.1f}%{r.large_calls:>7}{r.throughput_rps:>9.0f}"
            f"{r.p50_ms:>9.1f}{r.p99_ms:>9.1f}{r.relative_cost:>7.2f}{r.errors:>8}"
        )
    return "\n".join(lines)


def remove_keys(url: str, prefix: str) -> None:
    client = connect(url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for start in range(0, len(keys), 500):
        client.unlink(*keys[start : start + 500])
    client.close()


def _memory(url: str, prefix: str, catalog: Catalog) -> dict[str, dict[str, int]]:
    from cascadeq.keys import Keys  # noqa: PLC0415
    from cascadeq.stats import model_memory  # noqa: PLC0415

    client = connect(url)
    try:
        return model_memory(client, Keys(prefix), sorted(catalog.models))
    finally:
        client.close()


def main(settings: Settings, models_dir: Path, *, as_json: bool) -> int:
    started = time.perf_counter()
    try:
        from cascadeq.examples import digits  # noqa: PLC0415
    except ImportError as exc:
        print(
            f"the demo builds models and needs: pip install 'cascadeq[demo]' ({exc})",
            file=sys.stderr,
        )
        return 2
    catalog_path = digits.ensure_built(models_dir, log=progress)
    catalog = Catalog.load(catalog_path)
    split = np.load(models_dir / "digits_test.npz")
    x, y = split["X"].astype(np.float32), split["y"]
    # On a Redis of the user's own, keep out of the way of a real deployment's keys.
    shared = bool(settings.redis_url)
    prefix = f"{settings.prefix}-demo-{uuid.uuid4().hex[:8]}" if shared else settings.prefix
    with redis_url_or_embedded(settings.redis_url) as url:
        settings = replace(settings, redis_url=url, prefix=prefix)
        progress(f"redis at {url}, keys under {prefix}:; starting 1 router and 2 workers")
        env = {
            **os.environ,
            "REDIS_URL": url,
            "CASCADEQ_CATALOG": str(catalog_path),
            "CASCADEQ_PREFIX": prefix,
            "CASCADEQ_LOG_LEVEL": os.environ.get("CASCADEQ_LOG_LEVEL", "warning"),
        }
        group = ProcessGroup(env)
        try:
            group.spawn("router")
            group.spawn("worker", "--replicas", str(WORKERS))
            rows = run_strategies(url, catalog, settings, x, y)
            memory = _memory(url, prefix, catalog)
        finally:
            group.stop()
            if shared:
                remove_keys(url, prefix)
    print(render(rows))
    progress(f"done in {time.perf_counter() - started:.1f}s")
    if as_json:
        large = catalog.tasks[TASK].cascade[-1].model
        doc = {
            "rows": [asdict(r) for r in rows],
            "workers": WORKERS,
            "models": memory,
            "large": large,
        }
        print(json.dumps(doc))
    return 0
