"""`cascadeq router train`: learn which requests the first model will not answer well.

Workers log (inputs, was the first model's answer kept?) for a sample of a task's
requests (`trace_sample` in the catalog). A small MLP over the flattened
inputs predicts "not kept"; requests it flags skip the first model. Its threshold is
chosen on cross-validated predictions so that, on the logged traffic, skipping never
costs more than it saves: a correct skip saves the first model's whole hop, a wrong one
spends the later model's hop instead of the first's on a request the first would have
answered. A hop costs its model's compute plus the queue's own work for it (the workers'
published CPU beyond compute, and Redis's share): for small models the hop is most of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis

from cascadeq.config.catalog import Catalog
from cascadeq.config.tasks import TaskSpec
from cascadeq.protocol import traces, wire
from cascadeq.protocol.errors import ConfigError
from cascadeq.protocol.keys import Keys
from cascadeq.router.learned import features

READ_CHUNK = 1000
MIN_TRACES = 50
MIN_EACH_CLASS = 5
# "Will the first model be unsure?" is not linear in the inputs when the first model is
# itself linear: a logistic regression found nothing on the digits traces, this did.
HIDDEN = (64,)


class TrainError(ConfigError, ValueError):
    """Too little or unusable trace data; the message says what to do."""


@dataclass(frozen=True)
class TrainReport:
    path: Path
    traces: int
    hard_share: float  # traces whose first answer was not kept
    threshold: float
    precision: float  # of "hard" verdicts, cross-validated
    recall: float
    skip_share: float  # requests it would send straight to the later model
    expected_saving: float  # in cost units (µs) per request, cross-validated (>= 0)
    costs: tuple[float, float] = (0.0, 0.0)  # a hop of the first and of the later model
    hop_us: tuple[float, float] = (0.0, 0.0)  # the part of each beyond compute


def read_traces(r: redis.Redis, keys: Keys, task: str, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The newest `limit` traces as (features, hard) arrays; unreadable entries are skipped."""
    rows: list[np.ndarray] = []
    labels: list[int] = []
    last = "+"
    while len(rows) < limit:
        chunk: Any = r.xrevrange(keys.traces(task), max=last, count=READ_CHUNK)
        if not chunk:
            break
        for _eid, fields in chunk:
            if len(rows) >= limit:
                break
            try:
                feats = features(wire.loads_inputs(fields[traces.INPUTS]))
            except (KeyError, ValueError, TypeError):
                continue
            rows.extend(feats)
            labels.extend([int(traces.hard(fields))] * len(feats))
        last = "(" + chunk[-1][0].decode()
    if not rows or len({len(r) for r in rows}) != 1:
        raise TrainError(
            f"task {task}: no usable traces (set trace_sample > 0 for the task, run traffic, "
            "and make sure its inputs have a fixed shape)"
        )
    return np.stack(rows), np.asarray(labels)


def choose_threshold(
    p_hard: np.ndarray, hard: np.ndarray, costs: tuple[float, float], min_precision: float | None
) -> tuple[float, float, float, float, float]:
    """(threshold, precision, recall, skip share, saving per request) on held-out verdicts.

    Without min_precision: the largest expected saving, or never skipping when nothing
    saves. With it: the lowest threshold (most skips) whose precision reaches it.
    """
    first, later = costs
    best = (1.0, 0.0, 0.0, 0.0, 0.0)
    for t in np.unique(p_hard)[::-1]:
        flagged = p_hard >= t
        tp, fp = int((flagged & (hard == 1)).sum()), int((flagged & (hard == 0)).sum())
        precision = tp / max(1, tp + fp)
        saving = (tp * first - fp * (later - first)) / len(hard)
        good = precision >= min_precision if min_precision is not None else saving > best[4]
        if good:
            recall = tp / max(1, int(hard.sum()))
            best = (float(t), precision, recall, float(flagged.mean()), saving)
    return best


def hop_costs(
    catalog: Catalog, task: TaskSpec, hop_us: Mapping[str, float] | None = None
) -> tuple[tuple[float, float], tuple[float, float]]:
    """(first, later) hop costs in µs, and the part of each beyond compute: the catalog's
    per-sample compute plus ``hop_us`` of that model (0 where none is known)."""
    later = task.learned.start if task.learned else task.models[-1]
    names = (task.models[0], later)
    hops = tuple(float((hop_us or {}).get(m, 0.0)) for m in names)
    costs = tuple(catalog.models[m].cost + h for m, h in zip(names, hops, strict=True))
    return (costs[0], costs[1]), (hops[0], hops[1])


def train(
    catalog: Catalog,
    task: TaskSpec,
    x: np.ndarray,
    hard: np.ndarray,
    out: Path,
    *,
    min_precision: float | None = None,
    seed: int = 0,
    hop_us: Mapping[str, float] | None = None,
) -> TrainReport:
    """``hop_us``: per model, a hop's cost beyond its compute (published, or a figure
    the operator gives); without it a skip weighs compute alone."""
    try:
        from skl2onnx import to_onnx  # noqa: PLC0415 - optional: the build extra
        from sklearn.model_selection import cross_val_predict  # noqa: PLC0415
        from sklearn.neural_network import MLPClassifier  # noqa: PLC0415
    except ImportError as exc:
        raise TrainError(
            f"training needs the build extra: pip install 'cascadeq[build]' ({exc})"
        ) from exc
    if len(hard) < MIN_TRACES or min(int(hard.sum()), int((1 - hard).sum())) < MIN_EACH_CLASS:
        raise TrainError(
            f"task {task.name}: {len(hard)} traces with {int(hard.sum())} hard ones; need at "
            f"least {MIN_TRACES} with {MIN_EACH_CLASS} of each kind: run more traffic"
        )
    model = MLPClassifier(HIDDEN, alpha=1e-3, max_iter=2000, random_state=seed)
    folds = min(5, int(hard.sum()), int((1 - hard).sum()))
    cv = cross_val_predict(model, x, hard, cv=folds, method="predict_proba")[:, 1]
    costs, hops = hop_costs(catalog, task, hop_us)
    t, precision, recall, skip, saving = choose_threshold(cv, hard, costs, min_precision)
    model.fit(x, hard)
    onx: Any = to_onnx(model, x[:1].astype(np.float32), options={id(model): {"zipmap": False}})
    onx.graph.name = f"{task.name}-router"
    out.write_bytes(onx.SerializeToString())
    return TrainReport(
        out, len(hard), float(hard.mean()), min(t, 1.0), precision, recall, skip, saving,
        costs, hops,
    )  # fmt: skip
