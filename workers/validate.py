"""What a version must pass before it serves: its file's checksum, its inputs' and
output's names, dtypes and shapes against the catalog, and a warm-up batch at
``max_batch``. A failure names the model, the version and the field, so an operator sees
at once which catalog line or file is wrong; the worker keeps serving what it had."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from cascadeq.config.catalog import InputSpec, ModelSpec
from cascadeq.protocol.errors import ConfigError

#: ONNX Runtime's names of the tensor types the wire carries.
ORT_TYPES = {
    "bool": "tensor(bool)",
    "int8": "tensor(int8)",
    "int16": "tensor(int16)",
    "int32": "tensor(int32)",
    "int64": "tensor(int64)",
    "uint8": "tensor(uint8)",
    "uint16": "tensor(uint16)",
    "uint32": "tensor(uint32)",
    "uint64": "tensor(uint64)",
    "float16": "tensor(float16)",
    "float32": "tensor(float)",
    "float64": "tensor(double)",
}
WARM_LENGTH = 8  # a free axis beyond the batch takes this length in the warm-up batch


class ModelLoadError(ConfigError, RuntimeError):
    """The ONNX file does not match what the catalog declares, or cannot run."""


def refuse(spec: ModelSpec, field: str, problem: str) -> ModelLoadError:
    return ModelLoadError(
        f"model {spec.name} version {spec.version}: {field}: {problem} "
        f"(file {spec.path}); the worker keeps serving the version it had"
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_checksum(spec: ModelSpec) -> None:
    want = spec.sha256
    if want is None:
        return
    got = sha256_of(spec.path)
    if got != want:
        raise refuse(spec, "sha256", f"the catalog says {want}, the file's is {got}")


def check_signature(spec: ModelSpec, session: Any) -> None:
    """Input names, dtypes and shapes, and the output's name, against the catalog."""
    onnx_inputs = {i.name: i for i in session.get_inputs()}
    declared = {i.name for i in spec.inputs}
    if set(onnx_inputs) != declared:
        raise refuse(
            spec, "inputs", f"the catalog declares {sorted(declared)}, the file takes "
            f"{sorted(onnx_inputs)}",
        )  # fmt: skip
    for i, want in enumerate(spec.inputs):
        _check_input(spec, f"inputs[{i}]", want, onnx_inputs[want.name])
    outputs = [o.name for o in session.get_outputs()]
    if spec.output not in outputs:
        raise refuse(spec, "output", f"{spec.output!r} is not among the file's {outputs}")


def _check_input(spec: ModelSpec, field: str, want: InputSpec, got: Any) -> None:
    ort_type = ORT_TYPES.get(want.dtype.name)
    if got.type != ort_type:
        raise refuse(spec, f"{field}.dtype", f"the catalog says {want.dtype}, the file {got.type}")
    shape = list(got.shape)
    if len(shape) != len(want.shape):
        raise refuse(
            spec, f"{field}.shape", f"the catalog says {list(want.shape)}, the file {shape}"
        )
    for axis, (w, g) in enumerate(zip(want.shape, shape, strict=True)):
        fixed = isinstance(g, int) and g > 0
        if fixed and w != g:  # a free (-1) catalog axis needs a free axis in the file too
            raise refuse(
                spec,
                f"{field}.shape",
                f"axis {axis}: the catalog says {list(want.shape)}, the file {shape}",
            )


def warm_inputs(spec: ModelSpec) -> dict[str, np.ndarray]:
    """A batch of ``max_batch`` zero samples, free axes at a short length (or a bucket's)."""
    length = spec.batching.bucketing[0] if spec.batching.bucketing else WARM_LENGTH
    batch = spec.batching.max_batch
    return {
        i.name: np.zeros((batch, *[d if d > 0 else length for d in i.shape[1:]]), i.dtype)
        for i in spec.inputs
    }


def warm_up(spec: ModelSpec, session: Any) -> None:
    """One batch at ``max_batch``: it must run and give one output row per sample."""
    batch = spec.batching.max_batch
    try:
        out = session.run([spec.output], warm_inputs(spec))[0]
    except Exception as exc:  # any failure here refuses the version
        raise refuse(spec, "warm-up", f"a batch of {batch} failed: {exc}") from exc
    if not isinstance(out, np.ndarray) or out.ndim == 0 or out.shape[0] != batch:
        shape = getattr(out, "shape", None)
        raise refuse(spec, "output", f"a batch of {batch} gave shape {shape}")
