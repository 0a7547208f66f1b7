"""Metrics, `cascadeq stats` and the per-second aggregates, against a known workload.

A real router and worker (processes, real Redis, real models) serve a workload the test
itself counts; /metrics and `stats --json` must report exactly those counts.
"""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import redis
from conftest import run_cli, wait_for
from prometheus_client.parser import text_string_to_metric_families

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra import metrics, queues
from cascadeq.infra.process import ProcessGroup
from cascadeq.infra.window import Tally, latency_bucket, read_windows
from cascadeq.ops import stats
from cascadeq.producer import Producer, Request
from cascadeq.protocol.keys import WORKER_GROUP, Keys
from cascadeq.protocol.messages import Result

Samples = dict[str, list[tuple[dict[str, str], float]]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scrape(port: int) -> Samples:
    """Every sample by sample name (``_total``, ``_bucket``... included), with labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items())
    )


def scrapable(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True


def reports_lag(r: redis.Redis) -> bool:
    """XINFO GROUPS has a lag field from Redis 7.0; 6.2's has none."""
    return int(str(r.info("server")["redis_version"]).split(".")[0]) >= 7


def blocked_readers(r: redis.Redis, model: str) -> int:
    return sum(
        1 for c in r.client_list() if c["name"] == f"cq-worker-{model}" and "b" in c["flags"]
    )


@pytest.fixture
def workload(
    r: redis.Redis, settings: Settings, catalog: Catalog, digits_dir: Path, group: ProcessGroup
) -> tuple[list[Result], int, int]:
    """200 cascade requests and 30 pinned to the large model, through real processes, in
    rounds of 50 (a worker publishes its CPU per request once past its first batch)."""
    router_port, worker_port = free_port(), free_port()
    group.spawn("router", "--metrics-port", str(router_port))
    group.spawn("worker", "--metrics-port", str(worker_port))
    wait_for(lambda: blocked_readers(r, "digits-large") == 1, 60, "the worker waits for work")
    wait_for(lambda: scrapable(router_port), 60, "the router serves /metrics")
    x = np.load(digits_dir / "digits_test.npz")["X"]
    requests = [Request({"input": x[i][None]}, task="digits") for i in range(200)]
    requests += [Request({"input": x[i][None]}, model="digits-large") for i in range(30)]
    got: list[Result] = []
    with Producer(settings=settings, catalog=catalog) as client:
        for start in range(0, len(requests), 50):  # in rounds: a figure needs batches
            got += client.wait_many(client.submit_many(requests[start : start + 50]), timeout=120)
    assert all(g.ok for g in got)
    return got, router_port, worker_port


def test_stats_json_and_metrics_match_the_workload(
    workload: tuple[list[Result], int, int], env: dict[str, str], r: redis.Redis, catalog: Catalog
) -> None:
    got, router_port, worker_port = workload
    escalated = sum(len(g.path) == 2 for g in got[:200])
    assert 0 < escalated < 200
    large_runs = escalated + 30

    proc = run_cli(env, "stats", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    small, large = doc["models"]["digits-small"], doc["models"]["digits-large"]
    assert small["processed_total"] == 200
    assert large["processed_total"] == large_runs
    assert small["escalation_rate"] == round(escalated / 200, 4)
    assert large["escalation_rate"] == 0.0
    assert abs(small["processed_per_s"] * 60 - 200) < 0.1  # all within the last minute
    for m in (small, large):
        assert set(m) >= {
            "lanes", "depth", "lag", "pending", "consumers", "processed_per_s", "mean_batch",
            "escalation_rate", "p50_ms", "p99_ms", "processed_total",
        }  # fmt: skip
        assert m["pending"] == 0
        assert m["lag"] == (0 if reports_lag(r) else None)  # None: not reported, never a guess
        assert m["lanes"]["default"]["lag"] == m["lag"]
        assert m["consumers"] == 1
        assert m["lanes"]["default"]["consumers"] == 1
        assert 1 <= m["mean_batch"] <= max(s.batching.max_batch for s in catalog.models.values())
        assert m["cpu_us_per_request"] > 0  # the workers' own CPU, published as they serve
        assert 0 < m["p50_ms"] <= m["p99_ms"] < 60_000
    cost = doc["cost"]  # per answered request: every role's published CPU, and compute
    assert set(cost["roles_us"]) == {"router", "worker:digits-small", "worker:digits-large"}
    assert cost["total_cpu_us"] >= cost["compute_us"] > 0
    assert "cost per answered request: total" in proc.stdout
    assert large["memory_bytes"] > 1_000_000  # a 1.1M-parameter MLP's session
    assert any(line.startswith("digits-small") for line in proc.stdout.splitlines()[:4])

    def worker_counted() -> bool:  # metrics are observed just after the batch's commit
        return total(scrape(worker_port), "cascadeq_requests_total") == 230

    wait_for(worker_counted, 30, "the worker observed every batch")
    w = scrape(worker_port)
    assert total(w, "cascadeq_requests_total", model="digits-small", status="ok") == 200 - escalated
    assert total(w, "cascadeq_requests_total", model="digits-large", status="ok") == large_runs
    assert total(w, "cascadeq_escalations_total", model="digits-small", to="digits-large") == (
        escalated
    )
    assert total(w, "cascadeq_queue_wait_seconds_count") == 200 + large_runs
    assert total(w, "cascadeq_batch_wait_seconds_count") == 200 + large_runs
    assert total(w, "cascadeq_request_duration_seconds_count") == 230
    batches = total(w, "cascadeq_batch_size_samples_count", model="digits-small")
    assert total(w, "cascadeq_batch_size_samples_sum", model="digits-small") == 200
    assert total(w, "cascadeq_compute_seconds_count", model="digits-small") == batches > 0
    assert 0 < total(w, "cascadeq_compute_seconds_sum") < 60
    assert total(w, "cascadeq_model_loads_total") == 2
    assert total(w, "cascadeq_model_unloads_total") == 0
    assert total(w, "cascadeq_model_memory_bytes", model="digits-large") > 1_000_000
    assert total(w, "cascadeq_process_resident_memory_bytes", role="worker") > 50_000_000
    for model in ("digits-small", "digits-large"):
        lane = {"model": model, "lane": "default"}
        lags = [v for lab, v in w.get("cascadeq_queue_lag", []) if lab == lane]
        assert lags == ([0] if reports_lag(r) else [])  # 6.2: no sample rather than a wrong one
        assert total(w, "cascadeq_queue_pending", **lane) == 0
        assert total(w, "cascadeq_queue_consumers", **lane) == 1
        assert "cascadeq_queue_depth" in w

    wait_for(
        lambda: total(scrape(router_port), "cascadeq_routing_decisions_total") == 230,
        30,
        "the router observed every batch",
    )
    assert ("cascadeq_queue_lag" in scrape(router_port)) == reports_lag(r)
    assert "cascadeq_queue_depth" in scrape(router_port)


def test_replicas_share_one_metrics_port_in_multiprocess_mode(
    r: redis.Redis, settings: Settings, catalog: Catalog, digits_dir: Path, env: dict[str, str]
) -> None:
    port = free_port()
    env = {k: v for k, v in env.items() if k != metrics.MULTIPROC_ENV}
    group = ProcessGroup(env)
    try:
        group.spawn("router")
        group.spawn(
            "worker", "--models", "digits-small", "--replicas", "2", "--metrics-port", str(port)
        )
        wait_for(lambda: blocked_readers(r, "digits-small") == 2, 60, "both copies wait for work")
        x = np.load(digits_dir / "digits_test.npz")["X"]
        with Producer(settings=settings, catalog=catalog) as client:
            ids = client.submit_many(
                [Request({"input": x[i][None]}, model="digits-small") for i in range(100)]
            )
            assert all(g.ok for g in client.wait_many(ids, timeout=120))
        wait_for(
            lambda: total(scrape(port), "cascadeq_requests_total") == 100,
            30,
            "the supervisor serves both copies' counts",
        )
        s = scrape(port)
        assert total(s, "cascadeq_model_loads_total", model="digits-small") == 2
        assert total(s, "cascadeq_batch_size_samples_sum", model="digits-small") == 100
        assert total(s, "cascadeq_queue_consumers", model="digits-small") == 2
    finally:
        group.stop()


def test_replicas_with_metrics_off_ignore_the_port_in_the_environment(
    r: redis.Redis, env: dict[str, str]
) -> None:
    """--metrics-port 0 holds for the copies too: they must not all bind $CASCADEQ_METRICS_PORT."""
    port = free_port()
    env = {k: v for k, v in env.items() if k != metrics.MULTIPROC_ENV}
    env["CASCADEQ_METRICS_PORT"] = str(port)
    group = ProcessGroup(env)
    try:
        parent = group.spawn(
            "worker", "--models", "digits-small", "--replicas", "2", "--metrics-port", "0"
        )
        # Each copy binds /metrics before its first read: both blocked means both started.
        wait_for(lambda: blocked_readers(r, "digits-small") == 2, 60, "both copies wait for work")
        assert parent.poll() is None
        assert not scrapable(port)
    finally:
        group.stop()


def test_window_percentiles_and_totals_from_redis(r: redis.Redis, settings: Settings) -> None:
    keys = Keys(settings.prefix)
    tally = Tally(entries=100)
    tally.ran(100, 5.0, None)
    for ms in range(1, 101):  # 1..100 ms
        tally.answer("ok", float(ms))
    tally.escalate("big")
    pipe = r.pipeline(transaction=False)
    tally.queue(pipe, keys, "m", now_s=1_000_000)
    pipe.execute()
    assert 0 < r.ttl(keys.window("m", 1_000_000)) <= 120
    w = read_windows(r, keys, ["m"], now_s=1_000_030)["m"]
    assert (w.counts["n"], w.counts["e"], w.totals["processed"]) == (100, 1, 100)
    assert w.percentile_ms(0.5) == pytest.approx(50, rel=0.06)
    assert w.percentile_ms(0.99) == pytest.approx(99, rel=0.06)
    assert read_windows(r, keys, ["m"], now_s=1_000_060)["m"].counts["n"] == 0  # out of window
    assert latency_bucket(0.0) == 0 < latency_bucket(0.02)


def test_stats_watch_redraws_in_place(r: redis.Redis, settings: Settings) -> None:
    out, stop = io.StringIO(), threading.Event()
    stop.set()  # one frame, then leave
    assert stats.main(r, Keys(settings.prefix), as_json=False, watch=1.0, stop=stop, out=out) == 0
    assert out.getvalue().startswith(stats.CLEAR)


def test_lag_a_server_does_not_report_is_none_not_a_guess() -> None:
    """Redis 6.2's XINFO GROUPS (no lag field): acknowledged, untrimmed entries are not lag."""
    group = {"name": b"workers", "consumers": 1, "pending": 0, "last-delivered-id": b"5-0"}
    lane = queues.lane_of([group], 5)  # five entries, all read and acknowledged
    assert (lane.depth, lane.lag, lane.pending, lane.consumers) == (5, None, 0, 1)
    assert queues.lane_of([{**group, "lag": 0}], 5).lag == 0  # Redis 7 says so
    assert queues.lane_of([], 3).lag == 3  # no workers' group yet: nothing was read


def test_stats_say_lag_not_reported_and_metrics_omit_it(r: redis.Redis, settings: Settings) -> None:
    keys = Keys(settings.prefix)
    stream = keys.model_stream("m", "default")
    r.xadd(stream, {"h": "x"})
    r.xgroup_create(stream, WORKER_GROUP, id="$")  # read nothing more: a known lag of 0
    window = read_windows(r, keys, ["m"])["m"]
    known = stats.ModelStats({"default": queues.Lane(depth=1, lag=0).as_dict()}, window)
    unknown = stats.ModelStats({"default": queues.Lane(depth=1, lag=None).as_dict()}, window)
    assert known.as_dict()["lag"] == 0
    assert unknown.as_dict()["lag"] is None
    table = stats.render({"models": {"m": unknown.as_dict()}})
    assert table.splitlines()[2].split()[:5] == ["m", "default", "0", "1", "-"]
    assert "reports none" in table
    assert "reports none" not in stats.render({"models": {"m": known.as_dict()}})
    collected = {f.name: f.samples for f in metrics.QueueCollector(r, keys, ["m"]).collect()}
    assert len(collected["cascadeq_queue_depth"]) == 1
    assert len(collected["cascadeq_queue_lag"]) == (1 if reports_lag(r) else 0)
    doc = stats.collect(r, keys)
    assert doc["models"]["m"]["lag"] == (0 if reports_lag(r) else None)


def test_metric_families_follow_prometheus_conventions() -> None:
    names = metrics.family_names()
    assert all(n.startswith("cascadeq_") for n in names)
    assert {"cascadeq_requests", "cascadeq_queue_wait_seconds", "cascadeq_queue_lag"} <= names
    assert os.environ.get(metrics.MULTIPROC_ENV) is None  # tests run in single-process mode


def _histogram_state(child: object) -> tuple[list[float], float]:
    buckets = [b.get() for b in child._buckets]  # type: ignore[attr-defined]
    return buckets, child._sum.get()  # type: ignore[attr-defined]


def test_batch_observations_count_as_one_observe_per_value() -> None:
    """The per-batch paths (an array, weighted per-entry waits) leave a histogram as
    observing every request's value one at a time would."""
    from prometheus_client import CollectorRegistry, Histogram

    registry = CollectorRegistry()
    bulk = Histogram("b", "b", ["m"], buckets=metrics.LATENCY_BUCKETS, registry=registry)
    each = Histogram("e", "e", ["m"], buckets=metrics.LATENCY_BUCKETS, registry=registry)
    rng = np.random.default_rng(7)
    values = np.concatenate([rng.exponential(0.05, 200), metrics.LATENCY_BUCKETS[:-1], [0.0]])
    metrics.observe_many(bulk.labels("x"), values.tolist())
    waits, weights = [0.003, 0.0005, 7.0, float("nan")], [5, 1, 3, 2]
    metrics.observe_weighted(bulk.labels("x"), waits, weights, 1.0)
    for v in values.tolist():
        each.labels("x").observe(v)
    for v, n in zip(waits, weights, strict=True):
        for _ in range(n):
            each.labels("x").observe(0.0 if v != v else v)
    got, want = _histogram_state(bulk.labels("x")), _histogram_state(each.labels("x"))
    assert got[0] == want[0]
    assert got[1] == pytest.approx(want[1], rel=1e-12)


def test_tally_of_a_batch_matches_answers_one_at_a_time() -> None:
    many, one = Tally(), Tally()
    totals = [0.0, 0.005, 0.01, 0.0101, 3.7, 250.0, float("nan"), float("inf"), -4.0, 1e12]
    many.answer_many("ok", np.asarray(totals))
    for ms in totals:
        one.answer("ok", ms)
    assert many.latency == one.latency
    assert (many.answered, many.statuses) == (one.answered, one.statuses)
    assert many.answers_ms().tolist() == one.answers_ms().tolist()
