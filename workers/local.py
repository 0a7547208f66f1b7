"""The models a worker process serves, for escalating to one of them without the queue.

``cascadeq worker --models a,b`` runs a thread per model, each with its ONNX Runtime
session. A session may run from any thread, so the thread of ``a`` can run a batch's
unsure rows on ``b``'s session at once, in the same batch's commit (workers/settle.py):
no XADD, no read, no second batch window. Which tasks do so is the catalog's choice
(``escalate``); whether a given batch does is decided here, once per batch and plan.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from cascadeq.config.catalog import ModelSpec
from cascadeq.config.tasks import TaskSpec
from cascadeq.infra.observed import LoadBoard, Speed
from cascadeq.workers.padding import RunFn


@dataclass
class LocalModel:
    """A model loaded in this process: its session's run and its moving averages, which
    its own thread and the threads escalating into it both update (under ``lock``)."""

    spec: ModelSpec
    run: RunFn
    speed: Speed
    lock: threading.Lock = field(default_factory=threading.Lock)
    served: dict[str, Any] = field(default_factory=dict)  # its version and provider

    def observed(self, compute_ms: float, samples: int) -> None:
        with self.lock:
            self.speed.update(compute_ms, samples, 0.0)  # a local hop waits in no queue


#: The process's models by name; filled as its workers load them.
LocalModels = dict[str, LocalModel]


def goes_local(
    task: TaskSpec, source: ModelSpec, target: str, local: LocalModels, board: LoadBoard
) -> bool:
    """Whether requests of ``task`` escalating from ``source`` to ``target`` run here.

    Only when the process holds ``target`` and its inputs take this model's rows as they
    are (a queued hop would check them against its own declaration); with ``auto``, only
    while the target's backlog (requests waiting in its streams) is below the bound, so a
    busy model's queue keeps its order and its replicas share the work.
    """
    if task.escalate == "queue":
        return False
    there = local.get(target)
    if there is None or not _takes_rows_of(there.spec, source):
        return False
    if task.escalate == "local":
        return True
    bound = task.local_backlog or there.spec.batching.max_batch
    return board.state(target).backlog < bound


def _takes_rows_of(target: ModelSpec, source: ModelSpec) -> bool:
    return target.inputs == source.inputs and (target.allow_nonfinite or not source.allow_nonfinite)


def cheaper_here(there: LocalModel, rows: int, hop_us: float, batch: float = 0.0) -> bool:
    """auto: whether ``rows`` unsure rows cost less run here in one call than sent on a
    hop to join the target's batches: fixed + per_row x rows, against rows x (per_row +
    fixed / batch + hop_us). ``batch`` is the rows the target's batches hold: its workers'
    published average, else this process's average call of it (its own batches and the
    local ones), at least ``rows``, and full batches when neither is known. Assuming full
    batches where the target's queue is shallow charged a hop a fraction of a call it
    pays whole, and declined a quarter of the heavy pair's local calls in a burst that
    local escalation served for less CPU. True until the target's speed has been seen at
    two batch sizes (its own batches and local ones): the status quo, not a guess."""
    with there.lock:
        fit = there.speed.cost.fit()
        if batch <= 0:  # nothing published: this process's calls of it, its own and local
            batch = there.speed.batch
    if fit is None or hop_us <= 0:
        return True
    fixed, per_row = fit
    full = max(1, there.spec.batching.max_batch)
    joins = full if batch <= 0 else min(float(full), max(float(rows), batch))
    here = fixed + per_row * rows
    queued = rows * (per_row + fixed / joins + hop_us / 1000.0)
    return here <= queued
