"""A stand-in for an I/O-bound model: a fixed service time with the CPU released.

Declared in the catalog as ``kind = "sleep"`` with ``service_ms`` (per batch) and
``service_ms_per_row``. It models a model whose time is spent waiting (a remote call, an
accelerator on another host), so a worker's replicas can be measured past the cores:
``cascadeq bench scaling``. Its answers are fixed (class 0, full confidence), never real.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Protocol

import numpy as np

from cascadeq.config.catalog import ModelSpec
from cascadeq.workers.runner import OnnxRunner

STANDIN_WIDTH = 2  # the output's columns: class 0 with probability 1, class 1 with 0


class Runner(Protocol):
    """What a worker needs of a model: one batch in, one output row per sample out."""

    spec: ModelSpec
    provider: str  # what results and metrics say ran it

    def run(self, inputs: Mapping[str, np.ndarray], samples: int) -> np.ndarray: ...


class SleepRunner:
    """Holds each batch for the catalog's service time; ``time.sleep`` releases the GIL,
    so the worker's reader thread and other processes run meanwhile, as they would while
    a real model waits on I/O. The sleep *is* the modelled work, not a wait for a result."""

    def __init__(self, spec: ModelSpec) -> None:
        if spec.standin is None:
            raise ValueError(f"model {spec.name} is not a stand-in (kind = 'sleep')")
        self.spec = spec
        self.standin = spec.standin
        self.provider = "stand-in"

    def run(self, inputs: Mapping[str, np.ndarray], samples: int) -> np.ndarray:
        time.sleep(self.standin.seconds(samples))
        out = np.zeros((samples, STANDIN_WIDTH), dtype=np.float32)
        out[:, 0] = 1.0
        return out


def load_runner(spec: ModelSpec) -> Runner:
    """The catalog's kind decides: an ONNX Runtime session, or the sleeping stand-in."""
    return SleepRunner(spec) if spec.standin is not None else OnnxRunner(spec)
