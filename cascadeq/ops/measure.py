"""`cascadeq models measure`: each model's per-sample `cost`, timed with ONNX Runtime.

A new model set served from a catalog alone has no measured costs, and the cascade's
calibration and the cost planner both weigh models by them. Inputs are synthetic, of the
declared shapes and dtypes: compute time of the models served here does not depend on
the values. Floats are standard normal; integers are 0, a valid index for any embedding.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cascadeq.config.catalog import Catalog, CatalogError, ModelSpec
from cascadeq.protocol.errors import ConfigError

WARMUP_RUNS = 5


@dataclass(frozen=True)
class MeasureConfig:
    repeats: int = 25  # timed runs per model; the median is kept
    free_dim: int = 32  # size given to free (-1) dimensions beyond the batch


def median_us_per_sample(run: Callable[[], object], samples: int, repeats: int) -> float:
    """Median wall time of ``run`` in µs per sample, to 3 significant digits, after warm-up."""
    for _ in range(WARMUP_RUNS):
        run()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter_ns()
        run()
        times.append(time.perf_counter_ns() - start)
    return float(f"{statistics.median(times) / 1000.0 / samples:.3g}")


def synthetic_inputs(spec: ModelSpec, batch: int, free_dim: int) -> dict[str, np.ndarray]:
    """One batch of the declared shapes: axis 0 is ``batch``, other free axes ``free_dim``."""
    rng = np.random.default_rng(0)
    inputs = {}
    for s in spec.inputs:
        shape = [batch, *(free_dim if d == -1 else d for d in s.shape[1:])]
        if s.dtype.kind == "f":
            inputs[s.name] = rng.standard_normal(shape).astype(s.dtype)
        else:
            inputs[s.name] = np.zeros(shape, dtype=s.dtype)
    return inputs


def measure_model(spec: ModelSpec, config: MeasureConfig) -> float:
    """µs per sample at the model's max_batch, with the worker's own session settings."""
    from cascadeq.workers.runner import OnnxRunner  # noqa: PLC0415 - the core imports roles lazily

    runner = OnnxRunner(spec)
    batch = spec.batching.max_batch
    inputs = synthetic_inputs(spec, batch, config.free_dim)
    try:
        runner.run(inputs, batch)
    except Exception as exc:  # ONNX Runtime raises its own untyped errors
        raise ConfigError(
            f"model {spec.name}: a batch of {batch} synthetic inputs fails to run ({exc}); "
            "check its inputs in the catalog (or --length for free dimensions)"
        ) from exc
    return median_us_per_sample(lambda: runner.run(inputs, batch), batch, config.repeats)


def measure_catalog(
    path: Path, names: Sequence[str], config: MeasureConfig, log: Callable[[str], None]
) -> dict[str, float]:
    """Cost of each named model (all if none), one progress line per model."""
    catalog = Catalog.load(path)
    unknown = sorted(set(names) - set(catalog.models))
    if unknown:
        raise ConfigError(f"unknown model(s) {unknown}; {path} has {sorted(catalog.models)}")
    chosen = list(names) or list(catalog.models)
    costs = {}
    for i, name in enumerate(chosen, 1):
        spec = catalog.models[name]
        started = time.perf_counter()
        costs[name] = measure_model(spec, config)
        log(
            f"[{i}/{len(chosen)}] {name}: {costs[name]} us/sample at batch "
            f"{spec.batching.max_batch} (was {spec.cost}; median of {config.repeats} runs, "
            f"{time.perf_counter() - started:.1f} s)"
        )
    return costs


def write_costs(path: Path, costs: Mapping[str, float]) -> None:
    """Set each model's ``cost``; comments and layout stay, the write is atomic."""
    import tomlkit  # noqa: PLC0415 - only the commands that edit catalogs need it

    doc: Any = tomlkit.parse(path.read_text(encoding="utf-8"))
    for name, cost in costs.items():
        try:
            doc["models"][name]["cost"] = cost
        except KeyError as exc:
            raise CatalogError(str(path), f"models.{name}", "is missing", "declare it") from exc
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(tomlkit.dumps(doc), encoding="utf-8")
    os.replace(tmp, path)
