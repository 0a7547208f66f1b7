"""`cascadeq calibrate` on a model set of one's own: any array names, progress while it
runs, the share reaching each stage of a longer cascade."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from cascadeq.ops.calibration import CalibrationError, Split, search

THREE_STAGES = """
[models.small]
path = "digits_small.onnx"
output = "probabilities"
cost = 0.5
inputs = [{ name = "input", dtype = "float32", shape = [-1, 64] }]

[models.mid]
path = "digits_mid.onnx"
output = "probabilities"
cost = 5.0
inputs = [{ name = "input", dtype = "float32", shape = [-1, 64] }]

[models.large]
path = "digits_large.onnx"
output = "probabilities"
cost = 30.0
inputs = [{ name = "input", dtype = "float32", shape = [-1, 64] }]

[tasks.three]
cascade = [
  { model = "small", threshold = 0.5 },
  { model = "mid", threshold = 0.5 },
  { model = "large" },
]
validation = "val.npz"
"""


@pytest.fixture
def own_set(digits_dir: Path, tmp_path: Path) -> Path:
    """A three-model catalog of one's own, its split saved under other names."""
    shutil.copy(digits_dir / "digits_small.onnx", tmp_path)
    shutil.copy(digits_dir / "digits_large.onnx", tmp_path)
    shutil.copy(digits_dir / "digits_small.onnx", tmp_path / "digits_mid.onnx")
    val = np.load(digits_dir / "digits_val.npz")
    np.savez(tmp_path / "val.npz", features=val["X"], labels=val["y"])
    (tmp_path / "catalog.toml").write_text(THREE_STAGES, encoding="utf-8")
    return tmp_path / "catalog.toml"


def test_other_array_names_are_refused_with_the_flags_to_name_them(
    env: dict[str, str], own_set: Path
) -> None:
    done = run_cli(env, "calibrate", "--task", "three", "--catalog", str(own_set), "--dry-run")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "--y-key" in done.stderr
    assert "'labels'" in done.stderr  # what the file does hold


def test_a_three_stage_cascade_with_named_arrays_and_progress(
    env: dict[str, str], own_set: Path
) -> None:
    args = ["calibrate", "--task", "three", "--catalog", str(own_set)]
    done = run_cli(
        env, *args, "--x-key", "features", "--y-key", "labels", "--max-escalation", "0.3"
    )
    assert done.returncode == 0, done.stderr
    for k, model in enumerate(("small", "mid", "large"), 1):
        assert f"calibrate: [{k}/3] running {model} on 359 samples" in done.stderr
    assert "calibrate: searching" in done.stderr
    header, *rows = done.stdout.splitlines()
    assert "to mid" in header
    assert "to large" in header
    cascade = next(row for row in rows if row.startswith("cascade"))
    escalated, to_mid, to_large = (float(c.rstrip("%")) for c in cascade.split()[2:5])
    assert to_mid == escalated <= 30.0
    assert 0.0 <= to_large <= to_mid
    stages = tomllib.loads(own_set.read_text())["tasks"]["three"]["cascade"]
    assert stages[0]["threshold"] != 0.5  # written


def test_an_unreachable_escalation_budget_is_a_clear_error() -> None:
    split = Split(
        conf=(np.array([0.2, 0.4]), np.ones(2)),
        correct=(np.array([True, False]), np.ones(2, bool)),
        costs=(1.0, 10.0),
    )
    with pytest.raises(CalibrationError, match="no thresholds escalate at most"):
        search(split, max_escalation=-0.5)
