"""Two models only the benchmarks need, built on demand (not by `cascadeq models build`, so
the demo stays fast): a heavy MLP whose batch of 32 takes milliseconds, where the queue
should vanish next to compute, and a trivial softmax, where nearly all CPU is the queue's.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from cascadeq.examples import digits
from cascadeq.examples.common import measure_cost, write_atomically

HEAVY_DIR = "heavy"
HEAVY_MODEL = "heavy"
HEAVY_FILE = "heavy.onnx"
HEAVY_HIDDEN = (2048, 2048, 1024)
HEAVY_EPOCHS = 3  # briefly: the bench needs its compute, not its accuracy
HEAVY_MAX_BATCH = 32
TRIVIAL_DIR = "trivial"
TRIVIAL_MODEL = "trivial"
TRIVIAL_FILE = "trivial.onnx"
TRIVIAL_FEATURES = 4
TRIVIAL_CLASSES = 3
TRIVIAL_MAX_BATCH = 64
CATALOG_FILE = "catalog.toml"


def model_toml(name: str, file: str, features: int, cost: float, max_batch: int) -> str:
    """One model entry, one intra-op thread, dynamic batching: as the digits models."""
    return (
        f'[models.{name}]\npath = "{file}"\nversion = "1"\noutput = "probabilities"\n'
        f'output_kind = "probabilities"\ncost = {cost!r}\nintra_op_threads = 1\n'
        f'inputs = [{{ name = "input", dtype = "float32", shape = [-1, {features}] }}]\n\n'
        f'[models.{name}.batching]\nmode = "dynamic"\nmax_batch = {max_batch}\n'
        f"max_wait_ms = 2.0\n"
    )


def _write_catalog(out: Path, text: str) -> Path:
    """Written last and atomically: its presence means a complete build."""
    path = out / CATALOG_FILE
    write_atomically(path, text)
    return path


def build_heavy(out: Path, *, seed: int = 0, log: Callable[[str], None] = print) -> Path:
    """An MLP of ~6.4M parameters trained briefly on the digits, exported with skl2onnx."""
    out.mkdir(parents=True, exist_ok=True)
    splits = digits.load_splits(seed)
    params = digits.mlp_param_count(HEAVY_HIDDEN)
    log(f"training heavy MLP {HEAVY_HIDDEN} ({params:,} params, {HEAVY_EPOCHS} epochs)...")
    started = time.perf_counter()
    model = MLPClassifier(hidden_layer_sizes=HEAVY_HIDDEN, max_iter=HEAVY_EPOCHS, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(splits.x_train, splits.y_train)
    path = out / HEAVY_FILE
    digits.export(model, path, splits.x_val)
    cost = measure_cost(path, "input", splits.x_val)
    log(f"exported {path} in {time.perf_counter() - started:.0f} s; {cost} us/sample at batch 32")
    text = "# heavy: built on demand by the benchmarks (cascadeq bench limit)\n"
    return _write_catalog(
        out, text + model_toml(HEAVY_MODEL, HEAVY_FILE, 64, cost, HEAVY_MAX_BATCH)
    )


def build_trivial(out: Path, *, seed: int = 0) -> Path:
    """4 inputs -> linear -> softmax, written with onnx.helper: microseconds of compute."""
    import onnx  # noqa: PLC0415 - the build extra
    from onnx import TensorProto, helper  # noqa: PLC0415

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((TRIVIAL_FEATURES, TRIVIAL_CLASSES)).astype(np.float32)
    bias = np.zeros(TRIVIAL_CLASSES, np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "W"], ["logits0"]),
            helper.make_node("Add", ["logits0", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        TRIVIAL_MODEL,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, TRIVIAL_FEATURES])],
        [
            helper.make_tensor_value_info(
                "probabilities", TensorProto.FLOAT, [None, TRIVIAL_CLASSES]
            )
        ],
        [onnx.numpy_helper.from_array(weights, "W"), onnx.numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime the project supports
    onnx.checker.check_model(model)
    (out / TRIVIAL_FILE).write_bytes(model.SerializeToString())
    text = "# trivial: built on demand by the benchmarks (cascadeq bench overhead)\n"
    body = model_toml(TRIVIAL_MODEL, TRIVIAL_FILE, TRIVIAL_FEATURES, 1.0, TRIVIAL_MAX_BATCH)
    return _write_catalog(out, text + body)


def ensure_built(models_dir: Path, log: Callable[[str], None] = print) -> tuple[Path, Path]:
    """The heavy and trivial catalogs under `models_dir`, built if missing."""
    heavy, trivial = models_dir / HEAVY_DIR, models_dir / TRIVIAL_DIR
    if not (heavy / CATALOG_FILE).is_file():
        build_heavy(heavy, log=log)
    if not (trivial / CATALOG_FILE).is_file():
        build_trivial(trivial)
    return heavy / CATALOG_FILE, trivial / CATALOG_FILE
