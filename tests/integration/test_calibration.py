"""Threshold search, confidence measures, and `cascadeq calibrate` on the digits build."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from cascadeq.ops import calibration
from cascadeq.ops.calibration import CalibrationError, Split, search
from cascadeq.workers.confidence import confidences


def test_the_three_measures_rank_sure_above_unsure() -> None:
    p = np.array([[0.98, 0.01, 0.01], [0.5, 0.4, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    top, margin, entropy = (confidences(p, m) for m in ("top", "margin", "entropy"))
    assert top == pytest.approx([0.98, 0.5, 1 / 3])
    assert margin == pytest.approx([0.97, 0.1, 0.0])
    assert entropy[2] == pytest.approx(0.0, abs=1e-9)  # uniform: no confidence at all
    assert entropy[0] > entropy[1] > entropy[2]
    with pytest.raises(ValueError, match="unknown confidence measure"):
        confidences(p, "vibes")


def two_stage() -> Split:
    # small is right on its 3 surest samples, wrong on the 2 least sure; large always right
    conf = np.array([0.95, 0.9, 0.8, 0.6, 0.55])
    return Split(
        conf=(conf, np.ones(5)),
        correct=(np.array([1, 1, 1, 0, 0], bool), np.ones(5, bool)),
        costs=(1.0, 10.0),
    )


def test_the_cheapest_thresholds_reaching_the_target_are_chosen() -> None:
    best = search(two_stage(), target_accuracy=1.0)
    assert 0.6 < best.thresholds[0] < 0.8  # midway: escalates exactly the two wrong ones
    assert (best.accuracy, best.escalation_share) == (1.0, 0.4)
    assert best.relative_cost == pytest.approx((5 * 1 + 2 * 10) / (5 * 10))
    lower = search(two_stage(), target_accuracy=0.8)
    assert lower.escalation_share == pytest.approx(0.2)


def test_an_escalation_budget_buys_the_most_accuracy_it_can() -> None:
    best = search(two_stage(), max_escalation=0.2)
    assert best.escalation_share == pytest.approx(0.2)
    assert best.accuracy == pytest.approx(0.8)


def test_an_unreachable_target_is_an_error_that_names_the_best() -> None:
    with pytest.raises(CalibrationError, match=r"best is 1\.0000"):
        search(two_stage(), target_accuracy=1.01)


def test_three_stages_are_searched_jointly() -> None:
    conf0 = np.array([0.9, 0.5, 0.5, 0.5])
    conf1 = np.array([0.9, 0.9, 0.3, 0.3])
    split = Split(
        conf=(conf0, conf1, np.ones(4)),
        correct=(
            np.array([1, 0, 0, 0], bool),
            np.array([1, 1, 0, 0], bool),
            np.ones(4, bool),
        ),
        costs=(1.0, 2.0, 10.0),
    )
    best = search(split, target_accuracy=1.0)
    assert best.accuracy == 1.0
    assert best.stage_shares == pytest.approx((0.25, 0.25, 0.5))


def test_calibrate_writes_thresholds_and_keeps_the_catalog_comments(
    digits_dir: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    for f in digits_dir.iterdir():
        if f.is_file():  # a models build also holds seq/, which calibrate does not read
            shutil.copy(f, tmp_path / f.name)
    path = tmp_path / "catalog.toml"
    before = path.read_text(encoding="utf-8")
    done = run_cli(
        env,
        "calibrate",
        "--task",
        "digits",
        "--catalog",
        str(path),
        "--measure",
        "entropy",
        "--max-escalation",
        "0.25",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    after = path.read_text(encoding="utf-8")
    task = tomllib.loads(after)["tasks"]["digits"]
    assert task["confidence"] == "entropy"
    assert task["cascade"][0]["threshold"] == report["thresholds"][0]
    assert report["escalation_share"] <= 0.25
    kept = [line for line in before.splitlines() if line.startswith("#")]
    assert kept
    assert all(line in after for line in kept)
    dry = run_cli(env, "calibrate", "--task", "digits", "--catalog", str(path), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert path.read_text(encoding="utf-8") == after
    assert "digits-large only" in dry.stdout


def test_calibrate_refuses_a_split_without_labels(
    digits_dir: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    data = tmp_path / "nolabels.npz"
    np.savez(data, X=np.zeros((3, 64), np.float32))
    done = run_cli(
        env,
        "calibrate",
        "--task",
        "digits",
        "--catalog",
        str(digits_dir / "catalog.toml"),
        "--data",
        str(data),
    )
    assert done.returncode == 2
    assert "holds no labels; save them as y" in done.stderr


def test_report_lists_baselines_and_the_cascade() -> None:
    split = two_stage()
    text = calibration.report(
        search(split, target_accuracy=1.0),
        [("small only", split.alone(0)), ("large only", split.alone(1))],
        ("small", "large"),
    )
    assert "small only" in text
    assert "cascade" in text
    assert "small<0.7" in text
