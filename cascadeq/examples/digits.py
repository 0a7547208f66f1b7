"""Reproducible builder of the digits example: a cheap model, a big one, and their cascade.

Everything (split, training, threshold) is seeded, so `cascadeq models build` gives byte-identical
models on every run with the same library versions; only the measured `cost` figures vary.
The threshold is chosen from the ONNX models' own outputs on the validation split, so the
running system reproduces the validation figures exactly; the test split stays untouched.
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from cascadeq.examples.common import (
    BATCH_BUDGET_US,
    COST_BATCH,
    max_batch_for,
    measure_cost,
    session,
    write_atomically,
)
from cascadeq.ops.calibration import Split, search
from cascadeq.workers.confidence import confidences

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

N_FEATURES = 64
N_CLASSES = 10
SMALL_FILE = "digits_small.onnx"
LARGE_FILE = "digits_large.onnx"
VAL_FILE = "digits_val.npz"
TEST_FILE = "digits_test.npz"
CATALOG_FILE = "catalog.toml"
OUTPUT_FILES = (SMALL_FILE, LARGE_FILE, VAL_FILE, TEST_FILE, CATALOG_FILE)

# Regularised on purpose: a weaker small model escalates more and the cascade keeps up with the
# large one. C was picked from a sweep over 24 split seeds (not seed 0 alone); 0.05-0.5 were close.
SMALL_C = 0.2
LARGE_HIDDEN = (1024, 1024)
# Training loss is ~0.003 after 40 epochs: more buys nothing but build time.
LARGE_EPOCHS = 40
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
PROBA_ATOL = 1e-4
FREE_ESCALATION = 0.05


@dataclass(frozen=True)
class BuildReport:
    """What a build produced and how well the cascade did on the validation split."""

    catalog_path: Path
    threshold: float  # chosen confidence threshold for the small model
    small_val_accuracy: float
    large_val_accuracy: float
    cascade_val_accuracy: float
    val_escalation_share: float  # share of val samples the cascade sends to the large model
    large_params: int  # parameter count of the large MLP
    seconds: float


@dataclass(frozen=True)
class Splits:
    """Stratified 60/20/20 split of the digits, scaled to [0, 1] as float32."""

    x_train: F32
    y_train: I64
    x_val: F32
    y_val: I64
    x_test: F32
    y_test: I64


@dataclass(frozen=True)
class Choice:
    """A cascade threshold and what it achieves on the split it was chosen on."""

    threshold: float
    accuracy: float
    escalation_share: float


def load_splits(seed: int = 0) -> Splits:
    """Scale once here so the models, the saved splits and the live system all agree."""
    data = load_digits()
    x = (np.asarray(data.data) / 16.0).astype(np.float32)
    y = np.asarray(data.target).astype(np.int64)
    x_train, x_rest, y_train, y_rest = train_test_split(
        x, y, test_size=0.4, stratify=y, random_state=seed
    )
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=seed
    )
    return Splits(x_train, y_train, x_val, y_val, x_test, y_test)


def save_splits(splits: Splits, out_dir: Path) -> None:
    """Plain npz arrays (no pickled objects) so any consumer can load them safely."""
    np.savez(out_dir / VAL_FILE, X=splits.x_val, y=splits.y_val)
    np.savez(out_dir / TEST_FILE, X=splits.x_test, y=splits.y_test)


def param_count(model: MLPClassifier) -> int:
    """Weights plus biases: the figure that makes the large model worth escalating to."""
    return sum(int(w.size) for w in model.coefs_) + sum(int(b.size) for b in model.intercepts_)


def mlp_param_count(hidden: tuple[int, ...]) -> int:
    """Parameter count of an MLP before training, for the progress line."""
    sizes = (N_FEATURES, *hidden, N_CLASSES)
    return sum(a * b + b for a, b in itertools.pairwise(sizes))


def train_small(splits: Splits, seed: int = 0) -> LogisticRegression:
    """lbfgs is deterministic, so the small model is reproducible bit for bit."""
    model = LogisticRegression(C=SMALL_C, max_iter=5000, random_state=seed)
    return model.fit(splits.x_train, splits.y_train)


def train_large(splits: Splits, seed: int = 0) -> MLPClassifier:
    """Epochs are capped on purpose (see LARGE_EPOCHS), so silence the convergence warning."""
    model = MLPClassifier(
        hidden_layer_sizes=LARGE_HIDDEN,
        max_iter=LARGE_EPOCHS,
        early_stopping=False,
        random_state=seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(splits.x_train, splits.y_train)


def onnx_probabilities(path: Path, x: F32) -> F32:
    """Class probabilities exactly as the workers will see them."""
    out = session(path).run(["probabilities"], {"input": x})[0]
    return np.asarray(out, dtype=np.float32)


def export(model: Any, path: Path, check_x: F32) -> None:
    """Write `input` -> `probabilities` ONNX and refuse to ship it if it disagrees with sklearn."""
    onx = convert_sklearn(
        model,
        name=path.stem,  # skl2onnx would otherwise name the graph with a random uuid
        initial_types=[("input", FloatTensorType([None, N_FEATURES]))],
        final_types=[
            ("label", Int64TensorType([None])),
            ("probabilities", FloatTensorType([None, N_CLASSES])),
        ],
        options={id(model): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    path.write_bytes(onx.SerializeToString())
    got = onnx_probabilities(path, check_x)
    want = model.predict_proba(check_x)
    if not np.allclose(got, want, atol=PROBA_ATOL):
        worst = float(np.abs(got - want).max())
        raise RuntimeError(f"{path.name} disagrees with sklearn (max abs diff {worst:.2e})")


def build_small(out_dir: Path, *, seed: int = 0, splits: Splits | None = None) -> Path:
    """Train and export only the small model: cheap enough for reproducibility checks."""
    splits = splits or load_splits(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / SMALL_FILE
    export(train_small(splits, seed), path, np.concatenate([splits.x_val, splits.x_test]))
    return path


def build_large(out_dir: Path, *, seed: int = 0, splits: Splits | None = None) -> tuple[Path, int]:
    """Train and export the large MLP; returns its path and parameter count."""
    splits = splits or load_splits(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LARGE_FILE
    model = train_large(splits, seed)
    export(model, path, np.concatenate([splits.x_val, splits.x_test]))
    return path, param_count(model)


def accuracy(proba: F32, y: I64) -> float:
    """Top-1 accuracy of class probabilities."""
    return float(np.mean(proba.argmax(axis=1) == y))


def split_of(small: F32, large: F32, y: I64, costs: tuple[float, float] = (1.0, 1.0)) -> Split:
    """The two models' validation outputs in the form `cascadeq calibrate` searches."""
    return Split(
        conf=(confidences(small, "top"), confidences(large, "top")),
        correct=(small.argmax(axis=1) == y, large.argmax(axis=1) == y),
        costs=costs,
    )


def choose_threshold(small: F32, large: F32, y: I64) -> Choice:
    """Cheapest threshold whose cascade matches the large model's accuracy (calibrate's rule)."""
    split = split_of(small, large, y)
    best = search(split, target_accuracy=split.alone(1).accuracy)
    return Choice(best.thresholds[0], best.accuracy, best.escalation_share)


def free_threshold(small: F32, large: F32, y: I64) -> float:
    """The free tier's threshold: the most accurate cascade escalating at most 5%."""
    return search(split_of(small, large, y), max_escalation=FREE_ESCALATION).thresholds[0]


def _model_toml(name: str, path: str, cost: float, max_batch: int) -> str:
    """One model entry plus its batching table."""
    return (
        f'[models.{name}]\npath = "{path}"\nversion = "1"\noutput = "probabilities"\n'
        f'output_kind = "probabilities"\ncost = {cost!r}\nintra_op_threads = 1\n'
        f'inputs = [{{ name = "input", dtype = "float32", shape = [-1, {N_FEATURES}] }}]\n\n'
        f'[models.{name}.batching]\nmode = "dynamic"\nmax_batch = {max_batch}\n'
        f"max_wait_ms = 2.0\n"
    )


def catalog_toml(
    seed: int,
    choice: Choice,
    large_val_accuracy: float,
    costs: tuple[float, float],
    free: float,
) -> str:
    """The catalog text; the threshold is written in full so runtime decisions match the build."""
    header = (
        f"# cascadeq catalog: built by `cascadeq models build` (seed {seed}). Threshold: the "
        f"lowest validation escalation ({choice.escalation_share:.1%}) whose cascade accuracy "
        f"({choice.accuracy:.4f}) matches the large model's ({large_val_accuracy:.4f}).\n"
    )
    return (
        header
        + _model_toml("digits-small", SMALL_FILE, costs[0], max_batch_for(costs[0]))
        + "\n"
        + _model_toml("digits-large", LARGE_FILE, costs[1], max_batch_for(costs[1]))
        + "\n[tasks.digits]\ncascade = [\n"
        + f'  {{ model = "digits-small", threshold = {choice.threshold!r} }},\n'
        + '  { model = "digits-large" },\n]\n'
        + 'confidence = "top"\n'
        + f'validation = "{VAL_FILE}"\n'
        + "# share of first-stage outcomes logged for `cascadeq router train` (0 = off)\n"
        + "trace_sample = 0.0\n\n"
        + f"# free: escalates at most {FREE_ESCALATION:.0%} of requests on validation\n"
        + f"[tasks.digits.tiers.free]\nthresholds = [{free!r}]\n\n"
        + '[tasks.digits.tiers.premium]\nstart = "digits-large"\n\n'
        + "# past high_water waiting entries, keep answers rather than escalate into a model\n"
        + "[tasks.digits.load]\nhigh_water = 5000\nlow_water = 1000\n"
    )


def build(out_dir: Path, *, seed: int = 0, log: Callable[[str], None] = print) -> BuildReport:
    """Train, export, verify and measure both models, choose the threshold, write the catalog."""
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = load_splits(seed)
    log(
        f"split digits (seed {seed}): {len(splits.y_train)} train / {len(splits.y_val)} val"
        f" / {len(splits.y_test)} test"
    )
    save_splits(splits, out_dir)
    log(f"training small LogisticRegression (C={SMALL_C})...")
    small_path = build_small(out_dir, seed=seed, splits=splits)
    log(f"exported {SMALL_FILE}")
    log(f"training large MLP ({mlp_param_count(LARGE_HIDDEN):,} params)...")
    large_path, large_params = build_large(out_dir, seed=seed, splits=splits)
    log(f"exported {LARGE_FILE}")
    small_val = onnx_probabilities(small_path, splits.x_val)
    large_val = onnx_probabilities(large_path, splits.x_val)
    large_acc = accuracy(large_val, splits.y_val)
    choice = choose_threshold(small_val, large_val, splits.y_val)
    log(
        f"threshold {choice.threshold:.4f}: val accuracy {choice.accuracy:.4f} "
        f"(large {large_acc:.4f}), {choice.escalation_share:.1%} escalated"
    )
    costs = (
        measure_cost(small_path, "input", splits.x_val),
        measure_cost(large_path, "input", splits.x_val),
    )
    log(
        f"cost per sample at batch {COST_BATCH}: small {costs[0]} us, large {costs[1]} us; "
        f"max_batch {max_batch_for(costs[0])} and {max_batch_for(costs[1])} (compute within "
        f"{BATCH_BUDGET_US / 1000:g} ms a batch)"
    )
    catalog_path = out_dir / CATALOG_FILE
    free = free_threshold(small_val, large_val, splits.y_val)
    write_atomically(catalog_path, catalog_toml(seed, choice, large_acc, costs, free))
    log(f"wrote {catalog_path}")
    return BuildReport(
        catalog_path=catalog_path,
        threshold=choice.threshold,
        small_val_accuracy=accuracy(small_val, splits.y_val),
        large_val_accuracy=large_acc,
        cascade_val_accuracy=choice.accuracy,
        val_escalation_share=choice.escalation_share,
        large_params=large_params,
        seconds=time.perf_counter() - started,
    )


def is_built(out_dir: Path) -> bool:
    """All outputs present (the catalog is written last, so a crashed build reads as unbuilt)."""
    return all((out_dir / name).is_file() for name in OUTPUT_FILES)


def ensure_built(out_dir: Path, *, log: Callable[[str], None] = print) -> Path:
    """Build with the default seed unless a complete build is already there; return the catalog."""
    if not is_built(out_dir):
        build(out_dir, log=log)
    return out_dir / CATALOG_FILE
