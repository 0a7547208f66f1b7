"""What happens to a request after its model ran: answer it, or pass it up the cascade."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cascadeq.calibration import confidences
from cascadeq.catalog import Catalog, ModelSpec
from cascadeq.messages import OK, Header, Result, now_ms
from cascadeq.observed import LoadBoard
from cascadeq.tasks import TaskSpec


class BatchConfidence:
    """Per-row confidence of a whole batch's output, one numpy call per measure (not per
    request); a request's confidence is its least sure row's. top: the top-class
    probability; margin: top minus runner-up; entropy: one minus the normalised entropy
    (1 = certain, 0 = uniform). All lie in [0, 1], higher is surer."""

    def __init__(self, spec: ModelSpec, out: np.ndarray) -> None:
        self.usable = spec.output_kind == "probabilities" and out.ndim == 2 and out.shape[1] > 0
        self.out = out
        self.rows: dict[str, np.ndarray] = {}

    def of(self, start: int, stop: int, measure: str) -> float | None:
        if not self.usable:
            return None
        rows = self.rows.get(measure)
        if rows is None:
            rows = self.rows[measure] = confidences(self.out, measure)
        return float(rows[start:stop].min())


def task_of(catalog: Catalog, header: Header) -> TaskSpec | None:
    """The task whose cascade this request follows; None when it was pinned."""
    if header.model is not None or header.task is None:
        return None
    return catalog.tasks.get(header.task)


def next_model(task: TaskSpec | None, header: Header, model: str, conf: float | None) -> str | None:
    """The cascade's next model when this answer is not confident enough, else None."""
    if task is None or conf is None or not 0 <= header.stage < len(task.cascade) - 1:
        return None
    if task.cascade[header.stage].model != model:
        return None
    threshold = task.threshold(header.stage, header.tier)
    if threshold is None or conf >= threshold:
        return None
    return task.cascade[header.stage + 1].model


def skip_reason(
    task: TaskSpec, header: Header, target: str, board: LoadBoard, now: float
) -> str | None:
    """Why a due escalation should not happen: too late for the next model, or it is swamped."""
    if header.deadline is not None:
        if header.deadline <= now:
            return "deadline"
        if task.deadline and now + board.state(target).est_latency_ms > header.deadline:
            return "deadline"
    if task.load is not None and task.load.keep_on_overload and board.overloaded(task, target):
        return "load"
    return None


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
