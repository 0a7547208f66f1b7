"""How sure a model is of each row: the measure a task's thresholds are compared with.

The worker escalates on it and `cascadeq calibrate` chooses thresholds on it, so both
call this one function and a split's figures are the live system's.
"""

from __future__ import annotations

import numpy as np


def confidences(proba: np.ndarray, measure: str) -> np.ndarray:
    """Per-row confidence in [0, 1], higher is surer.

    top: top-class probability; margin: top minus runner-up; entropy: one minus the
    normalised entropy.
    """
    p = proba.astype(np.float64, copy=False)
    if measure == "top" or p.shape[1] < 2:
        return np.asarray(p.max(axis=1))
    if measure == "margin":
        top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
        return np.asarray(top2[:, 1] - top2[:, 0])
    if measure == "entropy":
        clipped = np.clip(p, 1e-12, 1.0)
        h = -(clipped * np.log(clipped)).sum(axis=1)
        return np.asarray(1.0 - h / np.log(p.shape[1]))
    raise ValueError(f"unknown confidence measure {measure!r}")
