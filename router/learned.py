"""The learned router at serving time: one ONNX classifier per task, run per batch.

Features are the request's inputs flattened and concatenated in input-name order; the
classifier outputs P(the first model's answer is not kept), and a request with several
samples is as hard as its hardest one.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnxruntime as ort

from cascadeq.config.catalog import Catalog


def features(inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """Shape (samples, features), float32: the same layout training used."""
    parts = [np.asarray(inputs[name]) for name in sorted(inputs)]
    n = parts[0].shape[0]
    return np.concatenate([p.reshape(n, -1).astype(np.float32, copy=False) for p in parts], axis=1)


class LearnedRouters:
    """Sessions for every task with a learned router, loaded once at start."""

    def __init__(self, catalog: Catalog) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.sessions: dict[str, ort.InferenceSession] = {}
        for task in catalog.tasks.values():
            if task.learned is not None:
                self.sessions[task.name] = ort.InferenceSession(
                    str(task.learned.path), opts, providers=["CPUExecutionProvider"]
                )

    def __contains__(self, task: str) -> bool:
        return task in self.sessions

    def p_hard(self, task: str, batch: list[Mapping[str, np.ndarray]]) -> list[float | None]:
        """One session run for all requests of a task in a router batch."""
        if not batch:
            return []
        feats = [features(inputs) for inputs in batch]
        session = self.sessions[task]
        stacked = np.concatenate(feats)
        expected = session.get_inputs()[0].shape[1]
        if isinstance(expected, int) and stacked.shape[1] != expected:
            return [None] * len(batch)  # not the shape it learned: no opinion
        outputs = session.run(None, {session.get_inputs()[0].name: stacked})
        proba = _probabilities(outputs)
        hard = proba[:, 1] if proba.shape[1] > 1 else proba[:, 0]
        out: list[float | None] = []
        offset = 0
        for f in feats:
            out.append(float(hard[offset : offset + len(f)].max()))
            offset += len(f)
        return out

    def p_hard_stacked(
        self, task: str, inputs: Mapping[str, np.ndarray], starts: np.ndarray
    ) -> np.ndarray | None:
        """Every request's verdict over an entry's stacked inputs, in one session run;
        ``starts`` is each request's first row. None: not the shape it learned."""
        stacked = features(inputs)
        session = self.sessions[task]
        expected = session.get_inputs()[0].shape[1]
        if isinstance(expected, int) and stacked.shape[1] != expected:
            return None
        outputs = session.run(None, {session.get_inputs()[0].name: stacked})
        proba = _probabilities(outputs)
        hard = proba[:, 1] if proba.shape[1] > 1 else proba[:, 0]
        return np.maximum.reduceat(hard, starts)


def _probabilities(outputs: list[object]) -> np.ndarray:
    for out in outputs:
        if isinstance(out, np.ndarray) and out.ndim == 2 and out.dtype.kind == "f":
            return out
    raise ValueError("the learned router's graph has no probability output")
