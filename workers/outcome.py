"""What happens to a request after its model ran: answer it, or pass it up the cascade."""

from __future__ import annotations

import numpy as np

from cascadeq.config.catalog import Catalog, ModelSpec
from cascadeq.config.tasks import TaskSpec
from cascadeq.infra.observed import LoadBoard
from cascadeq.protocol.bundle import Header
from cascadeq.protocol.messages import now_ms
from cascadeq.workers.confidence import confidences


class BatchConfidence:
    """Per-row confidence of a whole batch's output, one numpy call per measure (not per
    request); a request's confidence is its least sure row's. top: the top-class
    probability; margin: top minus runner-up; entropy: one minus the normalised entropy
    (1 = certain, 0 = uniform). All lie in [0, 1], higher is surer."""

    def __init__(self, spec: ModelSpec, out: np.ndarray) -> None:
        self.usable = spec.output_kind == "probabilities" and out.ndim == 2 and out.shape[1] > 0
        self.out = out
        self.rows: dict[str, np.ndarray] = {}

    def all_rows(self, measure: str) -> np.ndarray | None:
        """Every row's confidence by ``measure``; None when the output has none."""
        if not self.usable:
            return None
        rows = self.rows.get(measure)
        if rows is None:
            rows = self.rows[measure] = confidences(self.out, measure)
        return rows


def task_of(catalog: Catalog, header: Header) -> TaskSpec | None:
    """The task whose cascade this request follows; None when it was pinned."""
    if header.model is not None or header.task is None:
        return None
    return catalog.tasks.get(header.task)


def skip_reason(
    task: TaskSpec,
    header: Header,
    target: str,
    board: LoadBoard,
    now: float,
    *,
    local: bool = False,
) -> str | None:
    """Why a due escalation should not happen: too late for the next model, or it is swamped.

    A local hop (run in this process, workers/local.py) waits in no queue and no batch
    window, so only the next model's compute is its estimate.
    """
    if header.deadline is not None:
        if header.deadline <= now:
            return "deadline"
        state = board.state(target)
        est = state.compute_ms if local else state.est_latency_ms
        if task.deadline and now + est > header.deadline:
            return "deadline"
    if task.load is not None and task.load.keep_on_overload and board.overloaded(task, target):
        return "load"
    return None


def timings(header: Header, now: float | None = None) -> dict[str, float]:
    """The result's timings, summed over the path's hops (their figures are numbers:
    Header decoding refuses anything else)."""
    queue = wait = compute = 0.0
    for h in header.trace:
        queue += h.get("queue_ms") or 0.0  # type: ignore[operator]
        wait += h.get("batch_wait_ms") or 0.0  # type: ignore[operator]
        compute += h.get("compute_ms") or 0.0  # type: ignore[operator]
    submitted = header.submitted_at
    routed = header.routed_at if header.routed_at is not None else submitted
    return {
        "route_ms": max(0.0, routed - submitted),
        "queue_ms": queue,
        "batch_wait_ms": wait,
        "compute_ms": compute,
        "total_ms": max(0.0, (now_ms() if now is None else now) - submitted),
    }
