"""Cascade thresholds from a labelled split: the cheapest that reach a target accuracy,
or the most accurate within an escalation budget.

The models' own ONNX outputs are used, so the live system reproduces the split's
figures exactly. Candidate thresholds sit midway between neighbouring confidences, not
on them, so a sample a hair away from the boundary does not decide the outcome.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cascadeq.config.catalog import Catalog, CatalogError, ModelSpec
from cascadeq.config.tasks import TaskSpec
from cascadeq.protocol.errors import ConfigError
from cascadeq.workers.confidence import confidences

MAX_CANDIDATES = 400  # per stage; the grid is their product, capped below
MAX_COMBOS = 200_000
PROGRESS_FROM = 5_000  # combinations; a smaller search is over before a line would help


class CalibrationError(ConfigError, ValueError):
    """Data or target that cannot produce thresholds; the message says which."""


@dataclass(frozen=True)
class Outcome:
    """What a set of thresholds does on a split."""

    thresholds: tuple[float, ...]  # one per stage but the last
    accuracy: float
    escalation_share: float  # requests that go past the first stage
    relative_cost: float  # cost (compute plus per-hop, when given) over only the last model
    stage_shares: tuple[float, ...]  # where requests are answered


@dataclass(frozen=True)
class Split:
    """Each stage's confidence and correctness per sample, plus per-sample costs."""

    conf: tuple[np.ndarray, ...]
    correct: tuple[np.ndarray, ...]
    costs: tuple[float, ...]

    def evaluate(self, thresholds: Sequence[float]) -> Outcome:
        n, stages = len(self.correct[0]), len(self.correct)
        final = np.full(n, stages - 1)
        undecided = np.ones(n, dtype=bool)
        for k, t in enumerate(thresholds):
            keep = undecided & (self.conf[k] >= t)
            final[keep] = k
            undecided &= ~keep
        correct = np.choose(final, self.correct)
        cost = np.cumsum(self.costs)[final].sum()
        shares = np.bincount(final, minlength=stages) / n
        return Outcome(
            thresholds=tuple(float(t) for t in thresholds),
            accuracy=float(correct.mean()),
            escalation_share=float(np.mean(final > 0)),
            relative_cost=float(cost / (n * self.costs[-1])),
            stage_shares=tuple(float(s) for s in shares),
        )

    def alone(self, stage: int) -> Outcome:
        """One model for everything: the baselines a cascade is judged against."""
        cost = self.costs[stage] / self.costs[-1]
        shares = tuple(1.0 if k == stage else 0.0 for k in range(len(self.costs)))
        acc = float(self.correct[stage].mean())
        return Outcome((), acc, float(stage > 0), cost, shares)


def candidates(conf: np.ndarray) -> np.ndarray:
    """0 (keep all), midpoints between neighbouring values, and just above the top."""
    values = np.unique(conf)
    mids = (values[:-1] + values[1:]) / 2
    if len(mids) > MAX_CANDIDATES:
        mids = np.quantile(mids, np.linspace(0, 1, MAX_CANDIDATES))
    return np.concatenate([[0.0], mids, [np.nextafter(values[-1], np.inf)]])


def _quiet(_line: str) -> None:
    return None


def search(
    split: Split,
    *,
    target_accuracy: float | None = None,
    max_escalation: float | None = None,
    log: Callable[[str], None] = _quiet,
) -> Outcome:
    """Cheapest outcome reaching the target, or the most accurate within the budget."""
    grids = [candidates(c) for c in split.conf[:-1]]
    while np.prod([len(g) for g in grids], dtype=float) > MAX_COMBOS:
        grids = [g[::2] if len(g) > 3 else g for g in grids]
    total = int(np.prod([len(g) for g in grids]))
    log(f"searching {total} threshold combinations")
    outcomes = []
    every = max(1, total // 10)
    for i, ts in enumerate(itertools.product(*grids), 1):
        outcomes.append(split.evaluate(ts))
        if i % every == 0 and total >= PROGRESS_FROM:
            log(f"searching: {i}/{total} ({i / total:.0%})")
    if max_escalation is not None:
        fit = [o for o in outcomes if o.escalation_share <= max_escalation + 1e-12]
        if not fit:
            raise CalibrationError(
                f"no thresholds escalate at most {max_escalation:.4f} of the split; "
                "--max-escalation takes a share from 0 to 1"
            )
        return max(fit, key=lambda o: (o.accuracy, -o.relative_cost))
    assert target_accuracy is not None
    fit = [o for o in outcomes if o.accuracy >= target_accuracy - 1e-12]
    if not fit:
        best = max(outcomes, key=lambda o: o.accuracy)
        raise CalibrationError(
            f"no thresholds reach accuracy {target_accuracy:.4f}; the best is "
            f"{best.accuracy:.4f} (lower --target-accuracy, or use --max-escalation)"
        )
    return min(fit, key=lambda o: (o.relative_cost, -o.accuracy))


@dataclass(frozen=True)
class SplitKeys:
    """Which npz arrays hold the inputs and labels: by default the inputs' names (or X)
    and y; ``x`` names the one array of a single-input model."""

    x: str | None = None
    y: str = "y"


def load_split(
    path: Path, spec: ModelSpec, keys: SplitKeys | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Inputs by name (or X, or ``keys.x``, for a single-input model) and labels, from a npz."""
    keys = keys or SplitKeys()
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{path}: cannot be read as .npz: {exc}") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise CalibrationError(f"{path}: is one array, not a .npz of inputs and labels")
    held = sorted(data.files)
    if keys.y not in data:
        what = "labels" if keys.y == "y" else f"labels {keys.y!r}"
        raise CalibrationError(
            f"{path}: holds no {what}; save them as y, or name their array with --y-key "
            f"(it has {held})"
        )
    inputs = _split_inputs(path, spec, data, keys.x)
    inputs = {s.name: inputs[s.name].astype(s.dtype, copy=False) for s in spec.inputs}
    return inputs, np.asarray(data[keys.y])


def _split_inputs(
    path: Path, spec: ModelSpec, data: Any, x_key: str | None
) -> dict[str, np.ndarray]:
    names = [s.name for s in spec.inputs]
    if x_key is not None:
        if len(names) != 1:
            raise CalibrationError(
                f"--x-key names one array, but model {spec.name} takes inputs {names}; "
                "save each under its input's name"
            )
        if x_key not in data:
            raise CalibrationError(
                f"{path}: holds no array {x_key!r} (it has {sorted(data.files)})"
            )
        return {names[0]: data[x_key]}
    if all(n in data for n in names):
        return {n: data[n] for n in names}
    if len(names) == 1 and "X" in data:
        return {names[0]: data["X"]}
    raise CalibrationError(
        f"{path}: needs arrays named {names} (or X for one input), it has "
        f"{sorted(data.files)}; name the inputs' array with --x-key"
    )


def probabilities(
    spec: ModelSpec, inputs: Mapping[str, np.ndarray], batch: int = 256
) -> np.ndarray:
    from cascadeq.workers.runner import OnnxRunner  # noqa: PLC0415 - the core imports roles lazily

    runner = OnnxRunner(spec)
    n = next(iter(inputs.values())).shape[0]
    parts = [
        runner.run({k: v[i : i + batch] for k, v in inputs.items()}, min(batch, n - i))
        for i in range(0, n, batch)
    ]
    return np.concatenate(parts)


def measure_split(
    catalog: Catalog,
    task: TaskSpec,
    data: Path,
    measure: str,
    keys: SplitKeys | None = None,
    log: Callable[[str], None] = _quiet,
    hop_us: Mapping[str, float] | None = None,
) -> Split:
    """Each stage's model run over the whole split: the slow part, so it logs per model.

    A stage costs its model's compute plus ``hop_us`` of it, the queue's own work for a
    hop (published by the workers, or given): reaching a stage costs a whole hop."""
    specs = [catalog.models[m] for m in task.models]
    inputs, labels = load_split(data, specs[0], keys)
    probas = []
    for k, spec in enumerate(specs, 1):
        started = time.perf_counter()
        log(f"[{k}/{len(specs)}] running {spec.name} on {len(labels)} samples")
        probas.append(probabilities(spec, inputs))
        log(f"[{k}/{len(specs)}] {spec.name} done in {time.perf_counter() - started:.1f} s")
    return Split(
        conf=tuple(confidences(p, measure) for p in probas),
        correct=tuple(np.argmax(p, axis=1) == labels for p in probas),
        costs=tuple(spec.cost + float((hop_us or {}).get(spec.name, 0.0)) for spec in specs),
    )


def edit_task(path: Path, task: str, edit: Callable[[Any], None]) -> None:
    """Change one task's table in place; comments and layout stay as they were."""
    import tomlkit  # noqa: PLC0415 - only the commands that edit catalogs need it

    doc: Any = tomlkit.parse(path.read_text(encoding="utf-8"))
    try:
        table = doc["tasks"][task]
    except KeyError as exc:
        raise CatalogError(str(path), f"tasks.{task}", "is missing", "declare the task") from exc
    edit(table)
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")


def write_thresholds(path: Path, task: str, outcome: Outcome, measure: str) -> None:
    def edit(table: Any) -> None:
        for stage, threshold in zip(table["cascade"], outcome.thresholds, strict=False):
            stage["threshold"] = threshold
        table["confidence"] = measure

    edit_task(path, task, edit)


def report(outcome: Outcome, baselines: list[tuple[str, Outcome]], models: Sequence[str]) -> str:
    """One row per baseline and the cascade; past two stages, the share reaching each."""
    later = list(models[1:]) if len(models) > 2 else []
    reach = "".join(f"{'to ' + m:>{max(12, len(m) + 5)}}" for m in later)
    lines = [f"{'':<20}{'accuracy':>9}{'escalated':>10}{reach}{'cost':>7}  thresholds"]
    for name, o in [*baselines, ("cascade", outcome)]:
        ts = ", ".join(f"{m}<{t:.4f}" for m, t in zip(models, o.thresholds, strict=False))
        reached = "".join(
            f"{sum(o.stage_shares[k:]) * 100:>{max(12, len(m) + 5) - 1}.1f}%"
            for k, m in enumerate(later, 1)
        )
        lines.append(
            f"{name:<20}{o.accuracy:>9.4f}{o.escalation_share * 100:>9.1f}%{reached}"
            f"{o.relative_cost:>7.3f}  {ts}"
        )
    return "\n".join(lines)


def as_json(outcome: Outcome) -> dict[str, Any]:
    return asdict(outcome)
