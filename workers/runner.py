"""One ONNX Runtime session per model, checked against its catalog entry at load."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnxruntime as ort

from cascadeq.config.catalog import ModelSpec
from cascadeq.protocol.errors import ConfigError


class ModelLoadError(ConfigError, RuntimeError):
    """The ONNX file does not match what the catalog declares."""


class BatchContractError(RuntimeError):
    """The model returned a different number of rows than samples went in."""


class OnnxRunner:
    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        options = ort.SessionOptions()
        options.intra_op_num_threads = spec.intra_op_threads
        options.inter_op_num_threads = spec.inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(
                str(spec.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelLoadError(f"model {spec.name}: cannot load {spec.path}: {exc}") from exc
        self._check_signature()

    def _check_signature(self) -> None:
        onnx_inputs = {i.name for i in self.session.get_inputs()}
        declared = {i.name for i in self.spec.inputs}
        if onnx_inputs != declared:
            raise ModelLoadError(
                f"model {self.spec.name}: catalog declares inputs {sorted(declared)} but "
                f"{self.spec.path} takes {sorted(onnx_inputs)}; fix models.{self.spec.name}.inputs"
            )
        outputs = [o.name for o in self.session.get_outputs()]
        if self.spec.output not in outputs:
            raise ModelLoadError(
                f"model {self.spec.name}: output {self.spec.output!r} is not in {outputs}; "
                f"fix models.{self.spec.name}.output"
            )

    def run(self, inputs: Mapping[str, np.ndarray], samples: int) -> np.ndarray:
        """Run one batch; the output has exactly one row per input sample."""
        out = self.session.run([self.spec.output], dict(inputs))[0]
        if not isinstance(out, np.ndarray) or out.ndim == 0 or out.shape[0] != samples:
            shape = getattr(out, "shape", None)
            raise BatchContractError(
                f"model {self.spec.name} returned shape {shape} for {samples} samples"
            )
        return out
