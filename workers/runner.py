"""One ONNX Runtime session per model version, validated before it serves
(workers/validate.py) on the execution providers the catalog asks for."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnxruntime as ort

from cascadeq.config.catalog import ModelSpec
from cascadeq.infra.log import get_logger
from cascadeq.workers import validate
from cascadeq.workers.validate import ModelLoadError, refuse

__all__ = ["BatchContractError", "ModelLoadError", "OnnxRunner", "choose_providers"]

log = get_logger("cascadeq.worker")


class BatchContractError(RuntimeError):
    """The model returned a different number of rows than samples went in."""


def choose_providers(
    spec: ModelSpec, available: list[str] | None = None
) -> tuple[list[str], list[dict[str, str]]]:
    """The catalog's providers this ONNX Runtime has, in order, with their options; one it
    lacks is skipped with a warning, or refused under ``strict``. CPU is the last resort."""
    have = ort.get_available_providers() if available is None else available
    want = spec.providers
    missing = [p for p in want.names if p not in have]
    if missing and want.strict:
        raise refuse(
            spec, "providers", f"{missing} not available in this onnxruntime (it has {have}); "
            "install the build for it, or set strict = false to fall back",
        )  # fmt: skip
    chosen = [p for p in want.names if p in have] or ["CPUExecutionProvider"]
    if missing:
        log.warning(
            "provider_fallback",
            model=spec.name,
            version=spec.version,
            missing=missing,
            using=chosen[0],
        )
    return chosen, [want.options_of(p) for p in chosen]


class OnnxRunner:
    def __init__(self, spec: ModelSpec, warm: bool = True) -> None:
        self.spec = spec
        validate.check_checksum(spec)
        options = ort.SessionOptions()
        options.intra_op_num_threads = spec.intra_op_threads
        options.inter_op_num_threads = spec.inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers, provider_options = choose_providers(spec)
        try:
            self.session: Any = ort.InferenceSession(
                str(spec.path), options, providers=providers, provider_options=provider_options
            )
        except Exception as exc:
            raise refuse(spec, "path", f"cannot load: {exc}") from exc
        self.provider: str = self.session.get_providers()[0]  # the one that runs
        validate.check_signature(spec, self.session)
        if warm:
            validate.warm_up(spec, self.session)

    def run(self, inputs: Mapping[str, np.ndarray], samples: int) -> np.ndarray:
        """Run one batch; the output has exactly one row per input sample."""
        out = self.session.run([self.spec.output], dict(inputs))[0]
        if not isinstance(out, np.ndarray) or out.ndim == 0 or out.shape[0] != samples:
            shape = getattr(out, "shape", None)
            raise BatchContractError(
                f"model {self.spec.name} returned shape {shape} for {samples} samples"
            )
        return out
