"""A worker serving two versions of a model, in process: pinned requests, a bundle of
mixed versions split by masks, a version it does not have, validation refusals, and a
switch between batches to a published catalog."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.protocol import wire
from cascadeq.protocol.bundle import Header, bundle_fields
from cascadeq.protocol.messages import Result, now_ms
from cascadeq.workers import ModelLoadError, ModelWorker, OnnxRunner

INPUTS = 'inputs = [{ name = "input", dtype = "float32", shape = [-1, 64] }]\n'


def two_versions(digits_dir: Path, active: str = "1") -> Catalog:
    small, large = digits_dir / "digits_small.onnx", digits_dir / "digits_large.onnx"
    return Catalog.loads(
        f'[models.digits]\nactive = "{active}"\noutput = "probabilities"\n{INPUTS}'
        f'[models.digits.versions.1]\npath = "{small}"\n'
        f'[models.digits.versions.2]\npath = "{large}"\n',
        source=str(digits_dir / "two.toml"),
    )


def drain(worker: ModelWorker) -> None:
    worker.setup()
    while worker.step(block_ms=None):
        pass


def results(r: redis.Redis, worker: ModelWorker, ids: list[str]) -> list[Result]:
    raws = r.mget([worker.keys.result(i) for i in ids])
    assert None not in raws
    return [Result.loads(raw) for raw in raws]  # type: ignore[arg-type]


def submit_bundle(
    r: redis.Redis, worker: ModelWorker, x: np.ndarray, pins: list[str | None]
) -> list[str]:
    ids = [f"b{i}" for i in range(len(pins))]
    headers = [
        Header(id=i, model="digits", submitted_at=now_ms(), version=v)
        for i, v in zip(ids, pins, strict=True)
    ]
    inputs = wire.dumps_inputs({"input": np.ascontiguousarray(x[: len(pins)])})
    r.xadd(worker.keys.model_stream("digits"), bundle_fields(headers, inputs, None))  # type: ignore[arg-type]
    return ids


@pytest.fixture
def x(digits: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return digits[0].astype(np.float32)


@pytest.fixture
def digits(digits_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(digits_dir / "digits_test.npz")
    return data["X"], data["y"]


def test_a_bundle_of_mixed_pins_is_split_and_each_result_names_its_version(
    r: redis.Redis, settings: Settings, digits_dir: Path, x: np.ndarray
) -> None:
    cat = two_versions(digits_dir)
    worker = ModelWorker(r, cat, cat.models["digits"], settings, "w1")
    pins: list[str | None] = [None, "2", "1", "2", None, "9"]
    ids = submit_bundle(r, worker, x, pins)
    drain(worker)
    got = results(r, worker, ids)
    assert [g.path[-1].get("version") for g in got[:5]] == ["1", "2", "1", "2", "1"]
    large = OnnxRunner(cat.models["digits"].at("2")).run({"input": x[:6]}, 6)
    assert np.allclose(got[1].outputs["probabilities"], large[1:2], atol=1e-6)
    assert got[5].status == "error"
    assert got[5].error is not None
    assert got[5].error["code"] == "version_unavailable"
    stats = r.hgetall(worker.keys.model_versions("digits"))
    assert int(stats[b"1:requests"]) == 3
    assert int(stats[b"2:requests"]) == 2


def test_a_catalog_offered_switches_between_batches_and_a_bad_one_is_refused(
    r: redis.Redis, settings: Settings, digits_dir: Path, x: np.ndarray
) -> None:
    cat = two_versions(digits_dir)
    worker = ModelWorker(r, cat, cat.models["digits"], settings, "w1")
    bad = two_versions(digits_dir, active="2")
    spec = bad.models["digits"]
    wrong = replace(spec.versions["2"], sha256="0" * 64)
    bad = replace(bad, models={"digits": replace(spec, versions={**spec.versions, "2": wrong})})
    worker.offer(bad)
    assert worker.pending is None
    refused = r.hget(worker.keys.model_versions("digits"), "2:refused")
    assert refused is not None
    assert b"model digits version 2: sha256: the catalog says 0000" in refused  # type: ignore[operator]
    worker.offer(two_versions(digits_dir, active="2"))
    assert worker.pending is not None
    ids = submit_bundle(r, worker, x, [None, None])
    drain(worker)
    assert {g.path[-1]["version"] for g in results(r, worker, ids)} == {"2"}


def test_validation_names_model_version_and_field(digits_dir: Path) -> None:
    spec = two_versions(digits_dir).models["digits"]
    wider = replace(spec, inputs=(replace(spec.inputs[0], shape=(-1, 32)),))
    with pytest.raises(ModelLoadError, match=r"model digits version 1: inputs\[0\].shape: axis 1"):
        OnnxRunner(wider)
    other = replace(spec, inputs=(replace(spec.inputs[0], dtype=np.dtype("float64")),))
    with pytest.raises(
        ModelLoadError, match=r"version 1: inputs\[0\].dtype: the catalog says float64"
    ):
        OnnxRunner(other)
