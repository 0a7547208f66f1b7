"""`cascadeq models measure`: real ONNX Runtime timings written into the catalog as cost."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import numpy as np
from conftest import run_cli

from cascadeq.config.catalog import Catalog
from cascadeq.ops.measure import synthetic_inputs


def catalog_copy(digits_dir: Path, tmp_path: Path) -> Path:
    """The digits catalog and models, costs blanked to a placeholder a new set would have."""
    for onnx in digits_dir.glob("*.onnx"):
        shutil.copy(onnx, tmp_path)
    text = (digits_dir / "catalog.toml").read_text(encoding="utf-8")
    lines = ["cost = 1.0" if line.startswith("cost = ") else line for line in text.splitlines()]
    path = tmp_path / "catalog.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_measure_writes_each_models_cost(
    env: dict[str, str], digits_dir: Path, tmp_path: Path
) -> None:
    path = catalog_copy(digits_dir, tmp_path)
    before = path.read_text(encoding="utf-8")
    done = run_cli(env, "models", "measure", str(path), "--repeats", "10")
    assert done.returncode == 0, done.stderr
    assert "[1/2] digits-small:" in done.stderr
    assert "[2/2] digits-large:" in done.stderr
    small_batch = tomllib.loads(before)["models"]["digits-small"]["batching"]["max_batch"]
    assert f"at batch {small_batch}" in done.stderr  # the small model's max_batch
    models = tomllib.loads(path.read_text(encoding="utf-8"))["models"]
    small, large = models["digits-small"]["cost"], models["digits-large"]["cost"]
    assert small > 0
    assert large > 0
    assert small < large
    assert json.loads(done.stdout.splitlines()[-1]) == {
        "digits-small": small,
        "digits-large": large,
    }
    after = path.read_text(encoding="utf-8")
    comments = [line for line in before.splitlines() if line.startswith("#")]
    assert comments
    assert all(c in after.splitlines() for c in comments)
    assert len(after.splitlines()) == len(before.splitlines())
    Catalog.load(path)  # still a valid catalog


def test_dry_run_and_one_model(env: dict[str, str], digits_dir: Path, tmp_path: Path) -> None:
    path = catalog_copy(digits_dir, tmp_path)
    before = path.read_text(encoding="utf-8")
    args = ["models", "measure", str(path), "--models", "digits-small", "--dry-run"]
    done = run_cli(env, *args)
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout.splitlines()[-1])) == {"digits-small"}
    assert path.read_text(encoding="utf-8") == before
    unknown = run_cli(env, "models", "measure", str(path), "--models", "nope")
    assert unknown.returncode == 2
    assert "unknown model(s) ['nope']" in unknown.stderr


def test_synthetic_inputs_follow_the_declaration(digits_dir: Path) -> None:
    text = """
[models.seq]
path = "seq.onnx"
output = "probabilities"
inputs = [
  { name = "tokens", dtype = "int64", shape = [-1, -1] },
  { name = "w", dtype = "float32", shape = [-1, 3] },
]
"""
    spec = Catalog.loads(text, check_files=False).models["seq"]
    got = synthetic_inputs(spec, 8, 20)
    assert got["tokens"].shape == (8, 20)
    assert got["tokens"].dtype == np.int64
    assert not got["tokens"].any()  # 0: a valid index for any embedding
    assert got["w"].shape == (8, 3)
    assert got["w"].dtype == np.float32
