"""A task's routing policy, as the catalog declares it: cascade, tiers, deadline,
complexity, load and the learned router. Parsed here; models.py parses the models.

Every rule is optional and per task; a task that only lists a cascade behaves exactly
like the plain cascade.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cascadeq.config import complexity

if TYPE_CHECKING:
    from cascadeq.config.fields import Fields
    from cascadeq.config.models import ModelSpec

CONFIDENCE_MEASURES = ("top", "margin", "entropy")
#: How an unsure answer reaches the next model: its stream (queue), the worker process's
#: own session of it when it serves that model too (local), or local while the next
#: model's backlog is below ``local_backlog`` and the queue otherwise (auto).
ESCALATE_MODES = ("queue", "local", "auto")


@dataclass(frozen=True)
class Stage:
    model: str
    threshold: float | None  # below it the request moves to the next stage


@dataclass(frozen=True)
class Tier:
    """A caller class: where it starts and how confident each stage must be."""

    name: str
    start: str | None = None
    thresholds: tuple[float | None, ...] | None = None  # per stage; None keeps the task's


@dataclass(frozen=True)
class Complexity:
    """Hard-looking inputs start at a larger model, skipping a pass that would escalate."""

    score: str  # a registered scorer's name, or "module:function"
    input: str | None  # which input it reads; None means the model's first
    above: float
    start: str


@dataclass(frozen=True)
class Load:
    """High/low-water marks with hysteresis, so routing does not flap at the boundary."""

    high_water: int  # backlog (requests not yet acknowledged) at which a model is overloaded
    low_water: int  # ... and below which it counts as healthy again
    high_wait_ms: float | None = None  # or: estimated queue wait
    low_wait_ms: float | None = None
    keep_on_overload: bool = True  # keep a low-confidence answer rather than escalate into it


@dataclass(frozen=True)
class Learned:
    """A classifier over the inputs that predicts "the first model's answer will not do"."""

    path: Path
    threshold: float
    start: str


@dataclass(frozen=True)
class TaskSpec:
    name: str
    cascade: tuple[Stage, ...]
    confidence: str = "top"
    tiers: Mapping[str, Tier] = field(default_factory=dict)
    deadline: bool = True
    complexity: Complexity | None = None
    load: Load | None = None
    learned: Learned | None = None
    trace_sample: float = 0.0  # share of first-stage outcomes logged for `router train`
    validation: Path | None = None  # labelled split for `calibrate` and benchmarks
    escalate: str = "queue"  # one of ESCALATE_MODES
    local_backlog: int | None = None  # auto: local below this many waiting; None: max_batch

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(stage.model for stage in self.cascade)

    def stage_of(self, model: str) -> int:
        return self.models.index(model)

    def threshold(self, stage: int, tier: str) -> float | None:
        """The confidence a stage needs for this tier; the tier's own value wins."""
        spec = self.tiers.get(tier)
        if spec is not None and spec.thresholds is not None and stage < len(spec.thresholds):
            own = spec.thresholds[stage]
            if own is not None:
                return own
        return self.cascade[stage].threshold


_TASK_FIELDS = {
    "cascade",
    "confidence",
    "tiers",
    "deadline",
    "complexity",
    "load",
    "learned",
    "trace_sample",
    "validation",
    "escalate",
    "local_backlog",
}


def parse_task(
    p: Fields, name: str, doc: dict[str, Any], models: Mapping[str, ModelSpec]
) -> TaskSpec:
    where = f"tasks.{name}"
    p.name("task", name, where)
    p.no_unknown(doc, _TASK_FIELDS, where)
    cascade = _cascade(p, doc, where, models)
    names = tuple(s.model for s in cascade)
    confidence = p.value(doc, "confidence", where, str, "top")
    if confidence not in CONFIDENCE_MEASURES:
        raise p.fail(
            f"{where}.confidence",
            f"unknown measure {confidence!r}",
            f"use one of {list(CONFIDENCE_MEASURES)}",
        )
    tiers_doc = p.table(doc, "tiers", f"{where}.tiers", required=False)
    tiers = {
        t: _tier(p, t, p.table(tiers_doc, t, f"{where}.tiers.{t}"), where, names) for t in tiers_doc
    }
    sample = float(p.value(doc, "trace_sample", where, (int, float), 0.0))
    if not 0.0 <= sample <= 1.0:
        raise p.fail(
            f"{where}.trace_sample", f"{sample} is outside [0, 1]", "use a share, e.g. 1.0"
        )
    validation = p.value(doc, "validation", where, (str, type(None)), None)
    escalate, local_backlog = _escalate(p, doc, where)
    return TaskSpec(
        name=name,
        cascade=cascade,
        confidence=confidence,
        tiers=tiers,
        deadline=p.value(doc, "deadline", where, bool, True),
        complexity=_complexity(p, doc, where, names),
        load=_load(p, doc, where),
        learned=_learned(p, doc, where, names),
        trace_sample=sample,
        validation=None if validation is None else p.base / validation,
        escalate=escalate,
        local_backlog=local_backlog,
    )


def _escalate(p: Fields, doc: dict[str, Any], where: str) -> tuple[str, int | None]:
    mode = p.value(doc, "escalate", where, str, "queue")
    if mode not in ESCALATE_MODES:
        raise p.fail(
            f"{where}.escalate", f"unknown mode {mode!r}", f"use one of {list(ESCALATE_MODES)}"
        )
    if "local_backlog" not in doc:
        return str(mode), None
    if mode != "auto":
        raise p.fail(
            f"{where}.local_backlog",
            f'is only read with escalate = "auto", not {mode!r}',
            'remove it or set escalate = "auto"',
        )
    return str(mode), p.positive(doc, "local_backlog", where, 1)


def _cascade(
    p: Fields, doc: dict[str, Any], where: str, models: Mapping[str, ModelSpec]
) -> tuple[Stage, ...]:
    raw = p.value(
        doc,
        "cascade",
        where,
        list,
        fix='add cascade = [{ model = "small", threshold = 0.9 }, { model = "large" }]',
    )
    if not raw:
        raise p.fail(f"{where}.cascade", "is empty", "list at least one model")
    stages = []
    for i, item in enumerate(raw):
        at = f"{where}.cascade[{i}]"
        if not isinstance(item, dict):
            raise p.fail(at, "must be a table", '{ model = "...", threshold = 0.9 }')
        p.no_unknown(item, {"model", "threshold"}, at)
        model = p.value(item, "model", at, str)
        if model not in models:
            raise p.fail(
                f"{at}.model",
                f"unknown model {model!r}",
                f"use one of {sorted(models)} or declare [models.{model}]",
            )
        stages.append(Stage(model, _unit(p, item, "threshold", at)))
    if len({s.model for s in stages}) != len(stages):
        raise p.fail(f"{where}.cascade", "lists a model twice", "list each model once")
    return tuple(stages)


def _unit(p: Fields, doc: Mapping[str, Any], key: str, where: str) -> float | None:
    value = p.value(doc, key, where, (int, float, type(None)), None)
    if value is not None and not 0.0 <= float(value) <= 1.0:
        raise p.fail(f"{where}.{key}", f"{value} is outside [0, 1]", "use a value between 0 and 1")
    return None if value is None else float(value)


def _model_in(
    p: Fields, doc: Mapping[str, Any], where: str, names: tuple[str, ...], default: str
) -> str:
    start = p.value(doc, "start", where, str, default)
    if start not in names:
        raise p.fail(
            f"{where}.start", f"{start!r} is not in the task's cascade", f"use one of {list(names)}"
        )
    return str(start)


def _tier(
    p: Fields, name: str, doc: dict[str, Any], task_where: str, names: tuple[str, ...]
) -> Tier:
    where = f"{task_where}.tiers.{name}"
    p.name("tier", name, where)
    p.no_unknown(doc, {"start", "thresholds"}, where)
    start = _model_in(p, doc, where, names, names[0]) if "start" in doc else None
    raw = p.value(doc, "thresholds", where, (list, type(None)), None)
    thresholds = None
    if raw is not None:
        if len(raw) > len(names):
            raise p.fail(
                f"{where}.thresholds",
                "has more values than the cascade has stages",
                "one per stage",
            )
        thresholds = tuple(_unit(p, {"t": v}, "t", f"{where}.thresholds") for v in raw)
    return Tier(name, start, thresholds)


def _complexity(
    p: Fields, doc: dict[str, Any], where: str, names: tuple[str, ...]
) -> Complexity | None:
    sub = p.table(doc, "complexity", f"{where}.complexity", required=False)
    if not sub:
        return None
    at = f"{where}.complexity"
    p.no_unknown(sub, {"score", "input", "above", "start"}, at)
    score = p.value(sub, "score", at, str, fix='add score = "input_size"')
    try:
        complexity.resolve(score)
    except complexity.ScorerError as exc:
        raise p.fail(
            f"{at}.score", str(exc), f"use one of {complexity.names()} or module:function"
        ) from exc
    above = float(p.value(sub, "above", at, (int, float), fix="add above = <score threshold>"))
    return Complexity(
        score=score,
        input=p.value(sub, "input", at, (str, type(None)), None),
        above=above,
        start=_model_in(p, sub, at, names, names[-1]),
    )


def _load(p: Fields, doc: dict[str, Any], where: str) -> Load | None:
    sub = p.table(doc, "load", f"{where}.load", required=False)
    if not sub:
        return None
    at = f"{where}.load"
    p.no_unknown(
        sub, {"high_water", "low_water", "high_wait_ms", "low_wait_ms", "keep_on_overload"}, at
    )
    high = p.positive(sub, "high_water", at, 1000)
    low = int(p.value(sub, "low_water", at, int, high // 2))
    if not 0 <= low < high:
        raise p.fail(
            f"{at}.low_water", f"{low} must be from 0 to below high_water {high}", "lower it"
        )
    hi_ms = p.value(sub, "high_wait_ms", at, (int, float, type(None)), None)
    lo_ms = p.value(sub, "low_wait_ms", at, (int, float, type(None)), None)
    if hi_ms is not None:
        lo_ms = hi_ms / 2 if lo_ms is None else lo_ms
        if not (math.isfinite(hi_ms) and 0 <= lo_ms < hi_ms):
            raise p.fail(f"{at}.low_wait_ms", "must be from 0 to below high_wait_ms", "lower it")
    return Load(
        high_water=high,
        low_water=low,
        high_wait_ms=None if hi_ms is None else float(hi_ms),
        low_wait_ms=None if lo_ms is None else float(lo_ms),
        keep_on_overload=p.value(sub, "keep_on_overload", at, bool, True),
    )


def _learned(p: Fields, doc: dict[str, Any], where: str, names: tuple[str, ...]) -> Learned | None:
    sub = p.table(doc, "learned", f"{where}.learned", required=False)
    if not sub:
        return None
    at = f"{where}.learned"
    p.no_unknown(sub, {"path", "threshold", "start"}, at)
    path = p.base / p.value(sub, "path", at, str, fix="train one: cascadeq router train --task T")
    if p.check_files and not path.is_file():
        raise p.fail(f"{at}.path", f"file {path} does not exist", "train it: cascadeq router train")
    threshold = _unit(p, sub, "threshold", at)
    return Learned(
        path, 0.5 if threshold is None else threshold, _model_in(p, sub, at, names, names[-1])
    )
