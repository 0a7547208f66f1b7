"""With the otel extra installed, a traced request's worker hops become spans (queue,
batch wait, compute) under the caller's span; an untraced one makes none."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import redis
from test_workers import drain, with_threshold

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.producer import Producer
from cascadeq.router import Router
from cascadeq.workers import ModelWorker

sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
export = pytest.importorskip("opentelemetry.sdk.trace.export")
in_memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_traced_request_makes_three_spans_per_hop_under_its_parent(
    r: redis.Redis, settings: Settings, catalog: Catalog, digits_dir: Path
) -> None:
    from opentelemetry import trace

    spans = in_memory.InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(export.SimpleSpanProcessor(spans))
    trace.set_tracer_provider(provider)
    x = np.load(digits_dir / "digits_test.npz")["X"][:2]
    cat = with_threshold(catalog, 1.0)  # escalates: two hops
    router = Router(r, cat, settings)
    router.setup()
    workers = [ModelWorker(r, cat, cat.models[m], settings, f"w-{m}") for m in cat.models]
    with Producer(settings=settings, catalog=cat) as client:
        traced = client.submit(task="digits", inputs={"input": x[:1]}, traceparent=TRACEPARENT)
        client.submit(task="digits", inputs={"input": x[1:]})
        while router.step(block_ms=None):
            pass
        for w in sorted(workers, key=lambda w: w.spec.name != "digits-small"):
            drain(w)
        assert client.wait(traced, timeout=5).traceparent == TRACEPARENT
    made = spans.get_finished_spans()
    names = sorted(s.name for s in made)
    assert names == sorted(
        f"{m} {p}"
        for m in ("digits-small", "digits-large")
        for p in ("queue", "batch wait", "compute")
    )
    for span in made:
        assert f"{span.context.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert f"{span.parent.span_id:016x}" == "00f067aa0ba902b7"
        assert span.attributes["cascadeq.request_id"] == traced
        assert span.end_time >= span.start_time
