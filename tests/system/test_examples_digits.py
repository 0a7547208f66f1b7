"""The digits builder: files, ONNX contracts, catalog, splits, threshold rule, reproducibility."""

from __future__ import annotations

import tomllib
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from sklearn.datasets import load_digits

from cascadeq.examples import digits

MODEL_FILES = [digits.SMALL_FILE, digits.LARGE_FILE]


def _split(digits_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(digits_dir / name)
    return data["X"], data["y"]


def test_all_outputs_exist(digits_dir: Path) -> None:
    for name in digits.OUTPUT_FILES:
        assert (digits_dir / name).is_file(), name
    assert digits.is_built(digits_dir)


def test_is_built_false_for_empty_dir(tmp_path: Path) -> None:
    assert not digits.is_built(tmp_path)
    assert not digits.is_built(tmp_path / "missing")


def test_ensure_built_reuses_a_complete_build(digits_dir: Path) -> None:
    lines: list[str] = []
    assert digits.ensure_built(digits_dir, log=lines.append) == digits_dir / "catalog.toml"
    assert lines == []  # nothing was rebuilt


@pytest.mark.parametrize("name", MODEL_FILES)
def test_onnx_contract(digits_dir: Path, name: str) -> None:
    sess = ort.InferenceSession(str(digits_dir / name), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.name == "input"
    assert inp.type == "tensor(float)"
    assert len(inp.shape) == 2
    assert not isinstance(inp.shape[0], int)  # dynamic batch
    assert inp.shape[1] == 64
    outputs = {o.name: o for o in sess.get_outputs()}
    proba = outputs["probabilities"]
    assert proba.type == "tensor(float)"
    assert proba.shape[1] == 10
    x, _ = _split(digits_dir, "digits_val.npz")
    (got,) = sess.run(["probabilities"], {"input": x[:7]})
    assert got.shape == (7, 10)
    assert got.dtype == np.float32
    assert np.allclose(got.sum(axis=1), 1.0, atol=1e-4)


def test_large_model_has_a_million_params(digits_dir: Path) -> None:
    model = onnx.load(str(digits_dir / digits.LARGE_FILE))
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer]
    params = sum(w.size for w in weights if w.dtype == np.float32)  # not class labels, shapes
    assert params >= 1_000_000
    assert params == digits.mlp_param_count(digits.LARGE_HIDDEN)


def test_catalog(digits_dir: Path) -> None:
    cat = tomllib.loads((digits_dir / "catalog.toml").read_text(encoding="utf-8"))
    assert set(cat["models"]) == {"digits-small", "digits-large"}
    for model in cat["models"].values():
        assert (digits_dir / model["path"]).is_file()  # relative to the catalog
        assert model["output"] == "probabilities"
        assert model["cost"] > 0
        assert model["intra_op_threads"] == 1
        assert model["inputs"] == [{"name": "input", "dtype": "float32", "shape": [-1, 64]}]
        assert model["batching"]["mode"] == "dynamic"
    assert cat["models"]["digits-large"]["cost"] > cat["models"]["digits-small"]["cost"]
    small_stage, large_stage = cat["tasks"]["digits"]["cascade"]
    assert small_stage["model"] == "digits-small"
    assert 0.0 < small_stage["threshold"] <= 1.0
    assert large_stage == {"model": "digits-large"}
    task = cat["tasks"]["digits"]
    assert task["validation"] == "digits_val.npz"
    assert task["tiers"]["premium"] == {"start": "digits-large"}
    assert 0.0 < task["tiers"]["free"]["thresholds"][0] <= small_stage["threshold"]


def test_splits_are_sized_typed_and_disjoint(digits_dir: Path) -> None:
    x_val, y_val = _split(digits_dir, "digits_val.npz")
    x_test, y_test = _split(digits_dir, "digits_test.npz")
    assert (len(y_val), len(y_test)) == (359, 360)  # 20% / 20% of 1797; the rest trains
    for x, y in ((x_val, y_val), (x_test, y_test)):
        assert x.dtype == np.float32
        assert x.shape == (len(y), 64)
        assert y.dtype == np.int64
        assert set(y.tolist()) == set(range(10))  # stratified: every class present
        assert x.min() >= 0.0
        assert x.max() <= 1.0
    # A partition: train + val + test use every image exactly as often as the dataset has it.
    used = Counter(row.tobytes() for row in digits.load_splits(0).x_train)
    used.update(row.tobytes() for row in np.concatenate([x_val, x_test]))
    everything = Counter(row.tobytes() for row in (load_digits().data / 16.0).astype(np.float32))
    assert used == everything


def test_catalog_threshold_reproduces_the_validation_promise(digits_dir: Path) -> None:
    cat = tomllib.loads((digits_dir / "catalog.toml").read_text(encoding="utf-8"))
    threshold = cat["tasks"]["digits"]["cascade"][0]["threshold"]
    x, y = _split(digits_dir, "digits_val.npz")
    small = digits.onnx_probabilities(digits_dir / digits.SMALL_FILE, x)
    large = digits.onnx_probabilities(digits_dir / digits.LARGE_FILE, x)
    outcome = digits.split_of(small, large, y).evaluate([threshold])
    assert outcome.accuracy >= np.mean(large.argmax(axis=1) == y)
    assert 0.0 < outcome.escalation_share <= 0.35
    assert digits.choose_threshold(small, large, y).threshold == threshold


def test_choose_threshold_prefers_least_escalation_that_matches_large() -> None:
    y = np.array([0, 1, 1, 0], dtype=np.int64)
    large = np.eye(2, dtype=np.float32)[y]  # always right
    # Small is right on the two confident samples, wrong on the two hesitant ones.
    small = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.45, 0.55]], dtype=np.float32)
    choice = digits.choose_threshold(small, large, y)
    assert 0.6 < choice.threshold <= 0.8  # midway between the kept and the escalated
    assert (choice.accuracy, choice.escalation_share) == (1.0, 0.5)


def test_choose_threshold_falls_back_to_most_accurate_then_cheapest() -> None:
    y = np.array([0, 0, 0], dtype=np.int64)
    large = np.array([[0.1, 0.9]] * 3, dtype=np.float32)  # always wrong
    small = np.array([[0.9, 0.1], [0.7, 0.3], [0.4, 0.6]], dtype=np.float32)
    choice = digits.choose_threshold(small, large, y)
    # Nothing beats keeping every answer of small (2/3), and it escalates nothing.
    assert choice.threshold <= 0.6
    assert choice.escalation_share == 0.0


def test_same_seed_gives_identical_small_model(digits_dir: Path, tmp_path: Path) -> None:
    splits = digits.load_splits(0)
    x_val, y_val = _split(digits_dir, "digits_val.npz")
    assert np.array_equal(splits.x_val, x_val)
    assert np.array_equal(splits.y_val, y_val)
    rebuilt = digits.build_small(tmp_path, seed=0, splits=splits)
    before = digits.onnx_probabilities(digits_dir / digits.SMALL_FILE, x_val)
    after = digits.onnx_probabilities(rebuilt, x_val)
    assert np.array_equal(before, after)
