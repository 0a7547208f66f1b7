"""Which model runs a request first: a pipeline of small rules over one decision.

Each rule looks at the request and the live view of the models and may move the start
along the task's cascade; the rule that moved it last is the one the result names, and
every rule that looked records its inputs (score, p_hard, remaining_ms...) in the hop.
Order matters and is fixed: tier, complexity, learned router (all may start higher),
load (moves lower when the chosen model is overloaded), deadline (a hard limit, last).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from cascadeq.config import complexity
from cascadeq.config.catalog import Catalog
from cascadeq.config.tasks import TaskSpec
from cascadeq.infra.observed import LoadBoard
from cascadeq.protocol.messages import Header

Fact = str | float | None


class RouteError(ValueError):
    """A request no model can serve; becomes an error result."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Decision:
    model: str
    stage: int  # index in the task's cascade; 0 for a pinned model
    rule: str  # which rule decided, recorded in the result's path
    facts: Mapping[str, Fact] = field(default_factory=dict)  # what the rules looked at

    def hop(self) -> dict[str, Fact]:
        return {"model": self.model, "rule": self.rule, **self.facts}

    def moved(self, task: TaskSpec, model: str, rule: str, **facts: Fact) -> Decision:
        return Decision(model, task.stage_of(model), rule, {**self.facts, **facts})

    def noted(self, **facts: Fact) -> Decision:
        return replace(self, facts={**self.facts, **facts})


@dataclass
class Request:
    """What the rules may look at; inputs are decoded only if a rule asks."""

    header: Header
    task: TaskSpec
    board: LoadBoard | None
    inputs: Callable[[], Mapping[str, np.ndarray]]
    p_hard: float | None = None  # the learned router's verdict, computed per batch
    now_ms: float = 0.0
    score: float | None = None  # the complexity score, when computed per batch


Rule = Callable[[Request, Decision], Decision]


def choose(
    header: Header, catalog: Catalog, rules: list[Rule], req: Request | None = None
) -> Decision:
    if header.model is not None:
        if header.model not in catalog.models:
            raise RouteError("unknown_model", f"model {header.model!r} is not in the catalog")
        return Decision(header.model, 0, "pinned")
    assert header.task is not None  # Header.loads guarantees a task or a model
    task = catalog.tasks.get(header.task)
    if task is None:
        raise RouteError("unknown_task", f"task {header.task!r} is not in the catalog")
    decision = Decision(task.cascade[0].model, 0, "cascade")
    if req is None:
        return decision
    for rule in rules:
        decision = rule(req, decision)
    return decision


def tier(req: Request, d: Decision) -> Decision:
    spec = req.task.tiers.get(req.header.tier)
    if spec is None or spec.start is None or spec.start == d.model:
        return d
    return d.moved(req.task, spec.start, "tier", tier=spec.name)


def input_complexity(req: Request, d: Decision) -> Decision:
    spec = req.task.complexity
    if spec is None:
        return d
    if req.score is not None:
        score = round(req.score, 6)
    else:
        inputs = req.inputs()
        name = spec.input or next(iter(inputs))
        arr = inputs.get(name)
        if arr is None:
            return d
        score = round(complexity.resolve(spec.score)(arr), 6)
    if score > spec.above and req.task.stage_of(spec.start) > d.stage:
        return d.moved(req.task, spec.start, "complexity", score=score)
    return d.noted(score=score)


def learned(req: Request, d: Decision) -> Decision:
    spec = req.task.learned
    if spec is None or req.p_hard is None:
        return d
    p = round(req.p_hard, 4)
    if p >= spec.threshold and req.task.stage_of(spec.start) > d.stage:
        return d.moved(req.task, spec.start, "learned", p_hard=p)
    return d.noted(p_hard=p)


def load(req: Request, d: Decision) -> Decision:
    """Bias to lighter models while the chosen one is over its high-water mark."""
    if req.task.load is None or req.board is None:
        return d
    if not req.board.overloaded(req.task, d.model):
        return d
    for model in reversed(req.task.models[: d.stage]):
        if not req.board.overloaded(req.task, model):
            backlog = req.board.state(d.model).backlog
            return d.moved(req.task, model, "load", backlog=backlog)
    return d


def deadline(req: Request, d: Decision) -> Decision:
    """A start that cannot answer in time yields to the most capable one that can."""
    header, board = req.header, req.board
    if not req.task.deadline or header.deadline is None or board is None:
        return d
    remaining = header.deadline - req.now_ms
    est = board.state(d.model).est_latency_ms
    if est <= remaining:
        return d
    fits = [m for m in req.task.models if board.state(m).est_latency_ms <= remaining]
    model = fits[-1] if fits else min(req.task.models, key=lambda m: board.state(m).est_latency_ms)
    if model == d.model:
        return d.noted(remaining_ms=round(remaining, 3), est_ms=round(est, 3))
    return d.moved(
        req.task,
        model,
        "deadline",
        remaining_ms=round(remaining, 3),
        est_ms=round(board.state(model).est_latency_ms, 3),
    )


RULES: list[Rule] = [tier, input_complexity, learned, load, deadline]
#: What a group of requests shares when its task reads no inputs: the complexity and
#: learned rules change nothing there, and the deadline rule runs per request after these.
GROUP_RULES: list[Rule] = [tier, load]


def scores(name: str, arr: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Every request's complexity score over an entry's stacked input: one numpy call per
    entry for the built-in scorers, the scorer on each request's rows otherwise."""
    fn = complexity.resolve(name)
    n = len(offsets) - 1
    rows = np.diff(offsets)
    if n and arr.ndim >= 1 and int(rows.min()) > 0:
        starts = offsets[:-1]
        flat = arr.reshape(arr.shape[0], -1)
        if fn is complexity.input_size:
            return np.full(n, float(flat.shape[1]))
        if fn is complexity.nonzero_fraction:
            per_row = np.count_nonzero(flat, axis=1)
            total: np.ndarray = np.add.reduceat(per_row, starts)
            fraction: np.ndarray = total / np.maximum(1, rows * flat.shape[1])
            return fraction
        if fn is complexity.sequence_length and arr.ndim >= 2 and arr.dtype.kind in "iu":
            per_row = np.count_nonzero(arr, axis=1).reshape(arr.shape[0], -1).max(axis=1)
            return np.maximum.reduceat(per_row, starts).astype(np.float64)
    return np.array([fn(arr[offsets[i] : offsets[i + 1]]) for i in range(n)], dtype=np.float64)
