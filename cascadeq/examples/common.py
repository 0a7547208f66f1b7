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
# A batch's compute stays within the window a request may wait for one (max_wait_ms)
BATCH_BUDGET_US = 2000.0
MIN_BATCH, MAX_BATCH = 8, 256


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


def max_batch_for(cost_us: float) -> int:
    """The largest power of two from MIN_BATCH to MAX_BATCH whose batch computes within
    BATCH_BUDGET_US at ``cost_us`` per sample.

    A worker spends about a millisecond of CPU per batch whatever its size (the commit,
    figures, metrics), so a model cheap per sample is given the rows to share it: a fixed
    size (the builds used 64 and 32) left the digits small model paying 30 us per request
    of that overhead for 0.3 us of compute.
    """
    n = MIN_BATCH
    while n * 2 <= MAX_BATCH and n * 2 * cost_us <= BATCH_BUDGET_US:
        n *= 2
    return n


def write_atomically(path: Path, text: str) -> None:
    """The catalog is written last and atomically, so its presence means a complete build."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
