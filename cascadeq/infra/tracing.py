"""A traced request's hops: a log line each (debug level), and OpenTelemetry spans when
the ``otel`` extra is installed (nothing of it is imported otherwise).

Routers and workers look at requests' traceparents only when ``on()``: debug logging, or
OpenTelemetry found. Spans are made after the fact from the hop's own timings (queue,
batch wait, compute), children of the caller's span, so no span is held open meanwhile.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from typing import Any

import structlog

from cascadeq.infra.log import debug_enabled
from cascadeq.protocol import tracecontext
from cascadeq.protocol.bundle import Header

log = structlog.get_logger("cascadeq.trace")


@cache
def _otel_found() -> bool:
    return importlib.util.find_spec("opentelemetry") is not None


def on() -> bool:
    """True when a traced request's hop is worth recording here."""
    return debug_enabled() or _otel_found()


def hop(role: str, header: Header, **fields: Any) -> None:
    """One hop of a traced request: its log line, with the trace id bound."""
    tp = header.traceparent
    if tp is None:
        return
    log.debug(
        "hop",
        role=role,
        request_id=header.id,
        trace_id=tracecontext.trace_id(tp),
        traceparent=tp,
        **fields,
    )


def spans(header: Header, model: str, phases: list[tuple[str, float, float]]) -> None:
    """Spans ``<model> <phase>`` from epoch-ms (start, end) pairs, under the request's
    traceparent; a no-op without OpenTelemetry or a traceparent."""
    tp = header.traceparent
    if tp is None or not _otel_found():
        return
    tracer, context = _parent(tp)
    for name, start, end in phases:
        span = tracer.start_span(
            f"{model} {name}",
            context=context,
            start_time=int(start * 1e6),
            attributes={"cascadeq.request_id": header.id, "cascadeq.model": model},
        )
        span.end(end_time=int(max(start, end) * 1e6))


def _parent(traceparent: str) -> tuple[Any, Any]:
    from opentelemetry import trace  # noqa: PLC0415 - the optional extra, only when traced
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags  # noqa: PLC0415

    parent = SpanContext(
        int(tracecontext.trace_id(traceparent), 16),
        int(tracecontext.parent_id(traceparent), 16),
        is_remote=True,
        trace_flags=TraceFlags(int(traceparent[-2:], 16)),
    )
    context = trace.set_span_in_context(NonRecordingSpan(parent))
    return trace.get_tracer("cascadeq"), context
