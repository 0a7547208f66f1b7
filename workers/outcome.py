"""What happens to a request after its model ran: answer it, or pass it up the cascade."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cascadeq.catalog import Catalog, ModelSpec
from cascadeq.messages import OK, Header, Result, now_ms


def confidence(spec: ModelSpec, rows: np.ndarray) -> float | None:
    """Top-class probability, the least confident sample speaking for the request."""
    if spec.output_kind != "probabilities" or rows.ndim != 2 or rows.shape[1] == 0:
        return None
    return float(rows.max(axis=1).min())


def next_model(catalog: Catalog, header: Header, model: str, conf: float | None) -> str | None:
    """The cascade's next model when this answer is not confident enough, else None."""
    if header.model is not None or header.task is None or conf is None:
        return None
    task = catalog.tasks.get(header.task)
    if task is None or not 0 <= header.stage < len(task.cascade) - 1:
        return None
    stage = task.cascade[header.stage]
    if stage.model != model or stage.threshold is None or conf >= stage.threshold:
        return None
    return task.cascade[header.stage + 1].model


@dataclass(frozen=True)
class HopTimes:
    """When this model's hop happened, for the result's timings."""

    read_at: float
    enqueued_at: float
    launched_at: float
    compute_ms: float
    batch_size: int


def record_hop(header: Header, model: str, conf: float | None, times: HopTimes) -> None:
    if (
        not header.trace
        or header.trace[-1].get("model") != model
        or "confidence" in header.trace[-1]
    ):
        header.trace.append({"model": model, "rule": "direct"})
    header.trace[-1].update(
        confidence=conf,
        queue_ms=round(max(0.0, times.read_at - times.enqueued_at), 3),
        batch_wait_ms=round(max(0.0, times.launched_at - times.read_at), 3),
        compute_ms=round(times.compute_ms, 3),
        batch_size=times.batch_size,
    )


def final_result(
    header: Header,
    spec: ModelSpec,
    rows: np.ndarray,
    batch_size: int,
    info: dict[str, Any] | None = None,
) -> Result:
    return Result(
        id=header.id,
        status=OK,
        outputs={spec.output: rows},
        model=spec.name,
        path=header.trace,
        timings=timings(header),
        batch_size=batch_size,
        info=info or {},
    )


def timings(header: Header) -> dict[str, float]:
    hops = header.trace
    routed = header.routed_at if header.routed_at is not None else header.submitted_at
    return {
        "route_ms": round(max(0.0, routed - header.submitted_at), 3),
        "queue_ms": round(sum(h.get("queue_ms", 0.0) for h in hops), 3),
        "batch_wait_ms": round(sum(h.get("batch_wait_ms", 0.0) for h in hops), 3),
        "compute_ms": round(sum(h.get("compute_ms", 0.0) for h in hops), 3),
        "total_ms": round(max(0.0, now_ms() - header.submitted_at), 3),
    }
