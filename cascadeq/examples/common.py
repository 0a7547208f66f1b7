"""What every example builder shares: the session they verify and measure with, the cost
measurement the catalog's `cost` comes from, and the atomic catalog write."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from cascadeq.ops.measure import median_us_per_sample

COST_BATCH = 32
COST_RUNS = 25


def session(path: Path) -> ort.InferenceSession:
    """One intra-op thread: the same setting the catalog declares and the cost is measured at."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def measure_cost(path: Path, name: str, rows: np.ndarray) -> float:
    """Median µs of ONNX Runtime compute per sample at batch 32, to 3 significant digits.

    The timing is `cascadeq models measure`'s, which does the same for any catalog.
    """
    sess = session(path)
    batch = {name: np.ascontiguousarray(rows[:COST_BATCH])}
    return median_us_per_sample(lambda: sess.run(["probabilities"], batch), COST_BATCH, COST_RUNS)


def write_atomically(path: Path, text: str) -> None:
    """The catalog is written last and atomically, so its presence means a complete build."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
