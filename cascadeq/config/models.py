"""What the catalog says about one model: its inputs, output, cost, batching, lanes, and
its lifecycle: the versions it has (path and checksum each), the active one, a canary
taking a share of its traffic, and the ONNX Runtime execution providers it asks for."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cascadeq.config.fields import Fields
from cascadeq.config.lifecycle import (
    LIFECYCLE_FIELDS,
    Canary,
    LifecycleFields,
    Providers,
    VersionSpec,
)
from cascadeq.protocol.keys import DEFAULT_LANE
from cascadeq.protocol.wire import ALLOWED_DTYPES

BATCH_MODES = ("static", "dynamic", "adaptive", "continuous")
# Fields that only one batching mode reads; setting one under another mode is a mistake.
MODE_FIELDS = {"static": "safety_wait_ms", "adaptive": "latency_budget_ms"}
OUTPUT_KINDS = ("probabilities", "scores", "embedding")
# "onnx": an ONNX file served by ONNX Runtime. "sleep": a stand-in for an I/O-bound model
# (a remote call, say) with no file: each batch takes the declared service time with the
# CPU released (workers/standin.py). For measuring the queue, never for answers.
MODEL_KINDS = ("onnx", "sleep")
STANDIN_FIELDS = ("service_ms", "service_ms_per_row")


class InputError(ValueError):
    """Inputs that do not match what the model declares."""


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]  # -1 marks a free dimension; dimension 0 is the batch


@dataclass(frozen=True)
class Batching:
    mode: str = "dynamic"
    max_batch: int = 32  # counted in samples, not requests
    max_wait_ms: float = 2.0
    # Variable-length inputs (-1 beyond axis 0): requests are padded with pad_value to the
    # longest in their sub-batch; bucketing boundaries split a batch by length first. With
    # no pad_value, only requests of identical shape share a sub-batch.
    pad_value: int | float | None = None
    bucketing: tuple[int, ...] = ()
    safety_wait_ms: float = 100.0  # static: the longest a partial batch waits
    latency_budget_ms: float = 50.0  # adaptive: wait only while the oldest meets this


@dataclass(frozen=True)
class StandIn:
    """A ``kind = "sleep"`` model's service time: per batch, plus per row."""

    service_ms: float
    service_ms_per_row: float = 0.0

    def seconds(self, rows: int) -> float:
        return (self.service_ms + self.service_ms_per_row * rows) / 1000


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: Path
    inputs: tuple[InputSpec, ...]
    output: str
    output_kind: str = "probabilities"
    version: str = "1"
    cost: float = 1.0  # relative compute cost per sample
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    allow_nonfinite: bool = False
    batching: Batching = field(default_factory=Batching)
    lanes: tuple[str, ...] = (DEFAULT_LANE,)  # highest priority first
    lane_turn_every: int = 4  # every Nth read serves the lanes lowest first: no starvation
    standin: StandIn | None = None  # kind = "sleep": no ONNX file, a fixed service time
    #: The model its requests go to when it fails (compute error, failed load, a queue
    #: held at its bound); checked against the catalog (same inputs, no cycle).
    fallback: str | None = None
    #: Every version by name (``version`` above is the active one and ``path`` its file);
    #: empty means the one implicit version of the single-path form.
    versions: Mapping[str, VersionSpec] = field(default_factory=dict, hash=False)
    canary: Canary | None = None
    providers: Providers = field(default_factory=Providers)

    @property
    def sha256(self) -> str | None:
        found = self.versions.get(self.version)
        return None if found is None else found.sha256

    def version_names(self) -> tuple[str, ...]:
        return tuple(self.versions) or (self.version,)

    def at(self, version: str) -> ModelSpec:
        """This model serving ``version`` (KeyError if it has none of that name)."""
        if version == self.version:
            return self
        v = self.versions[version]
        return replace(self, path=v.path, version=v.name)

    def lane_for(self, priority: str) -> str:
        """A priority this model does not serve joins its lowest lane: never ahead of others."""
        return priority if priority in self.lanes else self.lanes[-1]

    def check_inputs(self, inputs: Mapping[str, np.ndarray]) -> int:
        """Validate inputs against the declaration; return the number of samples."""
        names = {spec.name for spec in self.inputs}
        if set(inputs) != names:
            raise InputError(
                f"model {self.name} takes inputs {sorted(names)}, got {sorted(inputs)}"
            )
        samples = -1
        for spec in self.inputs:
            arr = inputs[spec.name]
            _check_one(self, spec, arr)
            if samples not in (-1, arr.shape[0]):
                raise InputError(f"inputs of model {self.name} disagree on the batch dimension")
            samples = arr.shape[0]
        return samples


def _check_one(model: ModelSpec, spec: InputSpec, arr: np.ndarray) -> None:
    where = f"input {spec.name!r} of model {model.name}"
    if arr.dtype != spec.dtype:
        raise InputError(f"{where} must be {spec.dtype}, got {arr.dtype}")
    if arr.ndim != len(spec.shape):
        raise InputError(f"{where} must have rank {len(spec.shape)} {spec.shape}, got {arr.shape}")
    for axis, (want, got) in enumerate(zip(spec.shape, arr.shape, strict=True)):
        if want not in (-1, got):
            raise InputError(f"{where} must have shape {spec.shape}, got {arr.shape} (axis {axis})")
    if arr.shape[0] < 1:
        raise InputError(f"{where} has an empty batch dimension; send at least one sample")
    if not model.allow_nonfinite and arr.dtype.kind == "f" and not bool(np.isfinite(arr).all()):
        raise InputError(f"{where} holds NaN or inf, which model {model.name} does not allow")


class ModelFields(LifecycleFields):
    """Parses ``[models.NAME]`` tables."""

    def model(self, name: str, doc: dict[str, Any]) -> ModelSpec:
        where = f"models.{name}"
        self.name("model", name, where)
        allowed = {
            "path",
            "version",
            "inputs",
            "output",
            "output_kind",
            "cost",
            "intra_op_threads",
            "inter_op_threads",
            "allow_nonfinite",
            "batching",
            "lanes",
            "lane_turn_every",
            "kind",
            *STANDIN_FIELDS,
            "fallback",
            *LIFECYCLE_FIELDS,
        }
        self.no_unknown(doc, allowed, where)
        standin = self.standin(doc, where)
        if standin is None:
            versions, active = self.versions(doc, where)
        else:  # no file: one implicit version, whose path only says so in messages
            for key in ("path", "versions", "sha256"):
                if key in doc:
                    raise self.fail(f"{where}.{key}", "a stand-in reads no file", f"remove {key}")
            active = str(self.value(doc, "version", where, (str, int), "1"))
            versions = {active: VersionSpec(active, Path(f"stand-in:{name}"))}
        kind = self.value(doc, "output_kind", where, str, "probabilities")
        if kind not in OUTPUT_KINDS:
            raise self.fail(
                f"{where}.output_kind", f"unknown kind {kind!r}", f"use one of {list(OUTPUT_KINDS)}"
            )
        cost = float(self.value(doc, "cost", where, (int, float), 1.0))
        if not (math.isfinite(cost) and cost > 0):
            raise self.fail(
                f"{where}.cost",
                f"must be a positive number, got {cost}",
                "set cost to the relative compute cost per sample, e.g. 1.0",
            )
        inputs = self.inputs(doc, where)
        batching_doc = self.table(doc, "batching", f"{where}.batching", required=False)
        batching = self.batching(batching_doc, f"{where}.batching", inputs)
        return ModelSpec(
            name=name,
            path=versions[active].path,
            inputs=inputs,
            output=self.value(doc, "output", where, str, fix='add output = "probabilities"'),
            output_kind=kind,
            version=active,
            cost=cost,
            intra_op_threads=self.positive(doc, "intra_op_threads", where, 1),
            inter_op_threads=self.positive(doc, "inter_op_threads", where, 1),
            allow_nonfinite=self.value(doc, "allow_nonfinite", where, bool, False),
            batching=batching,
            lanes=self.lanes(doc, where),
            lane_turn_every=self.positive(doc, "lane_turn_every", where, 4),
            standin=standin,
            fallback=self.value(doc, "fallback", where, str, None),
            versions=versions,
            canary=self.canary(doc, where, versions, active),
            providers=self.providers(doc, where),
        )

    def standin(self, doc: dict[str, Any], where: str) -> StandIn | None:
        """``kind = "sleep"`` and its service time; the time fields belong to that kind only."""
        kind = self.value(doc, "kind", where, str, "onnx")
        if kind not in MODEL_KINDS:
            raise self.fail(f"{where}.kind", f"unknown kind {kind!r}", f"use one of {MODEL_KINDS}")
        if kind == "onnx":
            for key in STANDIN_FIELDS:
                if key in doc:
                    raise self.fail(
                        f"{where}.{key}",
                        'only a stand-in (kind = "sleep") has a service time',
                        'remove it or set kind = "sleep"',
                    )
            return None
        per_batch = self.value(doc, "service_ms", where, (int, float), fix="add service_ms = 20")
        return StandIn(
            self.millis(doc, "service_ms", where, float(per_batch)),
            self.millis(doc, "service_ms_per_row", where, 0.0),
        )

    def lanes(self, doc: dict[str, Any], where: str) -> tuple[str, ...]:
        raw = self.value(doc, "lanes", where, list, [DEFAULT_LANE])
        if not raw or len(set(raw)) != len(raw) or not all(isinstance(x, str) for x in raw):
            raise self.fail(
                f"{where}.lanes",
                f"{raw!r} is not a list of distinct lane names",
                'list lanes highest priority first, e.g. ["interactive", "batch"]',
            )
        for lane in raw:
            self.name("lane", lane, f"{where}.lanes")
        return tuple(raw)

    def inputs(self, doc: dict[str, Any], where: str) -> tuple[InputSpec, ...]:
        raw = self.value(
            doc,
            "inputs",
            where,
            list,
            fix='add inputs = [{ name = "input", dtype = "float32", shape = [-1, 64] }]',
        )
        if not raw:
            raise self.fail(f"{where}.inputs", "is empty", "declare at least one input")
        specs = []
        for i, item in enumerate(raw):
            at = f"{where}.inputs[{i}]"
            if not isinstance(item, dict):
                raise self.fail(
                    at, "must be a table", '{ name = "...", dtype = "...", shape = [...] }'
                )
            self.no_unknown(item, {"name", "dtype", "shape"}, at)
            dtype_name = self.value(item, "dtype", at, str)
            try:
                dtype = np.dtype(dtype_name)
            except TypeError:
                dtype = None
            if dtype is None or dtype.str not in ALLOWED_DTYPES:
                raise self.fail(
                    f"{at}.dtype",
                    f"{dtype_name!r} is not supported",
                    "use bool, (u)int8-64, float16, float32 or float64",
                )
            shape = self.value(item, "shape", at, list)
            if not shape or not all(type(d) is int and (d == -1 or d > 0) for d in shape):
                raise self.fail(
                    f"{at}.shape",
                    f"{shape!r} is not a shape",
                    "use a list of positive ints, -1 for a free dimension",
                )
            if shape[0] != -1:
                raise self.fail(
                    f"{at}.shape",
                    "dimension 0 is the batch and must be -1",
                    f"write shape = {[-1, *shape[1:]]}",
                )
            specs.append(InputSpec(self.value(item, "name", at, str), dtype, tuple(shape)))
        return tuple(specs)

    def batching(
        self, doc: dict[str, Any], where: str, inputs: tuple[InputSpec, ...] = ()
    ) -> Batching:
        allowed = {"mode", "max_batch", "max_wait_ms", "pad_value", "bucketing"}
        self.no_unknown(doc, allowed | set(MODE_FIELDS.values()), where)
        mode = self.value(doc, "mode", where, str, "dynamic")
        if mode not in BATCH_MODES:
            raise self.fail(
                f"{where}.mode", f"unknown mode {mode!r}", f"use one of {list(BATCH_MODES)}"
            )
        for owner, key in MODE_FIELDS.items():
            if key in doc and mode != owner:
                raise self.fail(
                    f"{where}.{key}",
                    f"only mode {owner!r} uses it, but mode is {mode!r}",
                    f'remove it or set mode = "{owner}"',
                )
        wait = self.millis(doc, "max_wait_ms", where, 2.0)
        pad_value, bucketing = self.padding(doc, where, inputs)
        budget = self.millis(doc, "latency_budget_ms", where, Batching.latency_budget_ms)
        if budget <= 0:
            raise self.fail(
                f"{where}.latency_budget_ms",
                "must be above 0",
                "set the latency the oldest request may reach, e.g. 50",
            )
        return Batching(
            mode,
            self.positive(doc, "max_batch", where, 32),
            wait,
            pad_value,
            bucketing,
            safety_wait_ms=self.millis(doc, "safety_wait_ms", where, Batching.safety_wait_ms),
            latency_budget_ms=budget,
        )

    def padding(
        self, doc: Mapping[str, Any], where: str, inputs: tuple[InputSpec, ...]
    ) -> tuple[int | float | None, tuple[int, ...]]:
        """pad_value and bucketing only mean something for inputs with a free length axis."""
        pad = self.value(doc, "pad_value", where, (int, float), None)
        buckets = self.value(doc, "bucketing", where, list, [])
        if pad is None and not buckets:
            return None, ()
        variable = [i for i in inputs if -1 in i.shape[1:]]
        if not variable:
            raise self.fail(
                f"{where}.{'pad_value' if pad is not None else 'bucketing'}",
                "no input has a free axis beyond the batch axis, so nothing is padded",
                "remove it, or declare the variable axis as -1 in the input's shape",
            )
        if pad is None:
            raise self.fail(
                f"{where}.bucketing",
                "needs a pad_value to pad requests within a bucket",
                "add pad_value = 0 (the model's padding id or value)",
            )
        for spec in variable:
            if spec.dtype.kind in "biu" and float(pad) != int(pad):
                raise self.fail(
                    f"{where}.pad_value",
                    f"{pad!r} does not fit input {spec.name!r} of dtype {spec.dtype}",
                    "use an integer pad_value",
                )
        if not all(type(b) is int and b > 0 for b in buckets) or buckets != sorted(set(buckets)):
            raise self.fail(
                f"{where}.bucketing",
                f"{buckets!r} is not a list of increasing positive lengths",
                "write boundaries in increasing order, e.g. bucketing = [16, 32, 64]",
            )
        return pad, tuple(buckets)  # an int stays an int: int64 pads need no float trip


def check_fallbacks(fields: Fields, models: Mapping[str, ModelSpec]) -> None:
    """Each fallback names another model taking the same inputs, and no chain loops."""
    for spec in models.values():
        if spec.fallback is None:
            continue
        where = f"models.{spec.name}.fallback"
        other = models.get(spec.fallback)
        if other is None or other is spec:
            raise fields.fail(
                where,
                f"names {spec.fallback!r}, which is not another model of the catalog",
                f"name one of {sorted(set(models) - {spec.name})}",
            )
        if other.inputs != spec.inputs:
            raise fields.fail(
                where,
                f"model {other.name} takes other inputs than {spec.name}",
                "fall back to a model with the same inputs",
            )
        seen: set[str] = {spec.name}
        at: ModelSpec | None = other
        while at is not None and at.fallback is not None:
            if at.name in seen:
                raise fields.fail(where, f"the fallbacks loop through {at.name}", "break the loop")
            seen.add(at.name)
            at = models.get(at.fallback)
