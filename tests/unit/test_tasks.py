"""The routing policy section of a catalog: parsed in full, and each mistake explained."""

from __future__ import annotations

from pathlib import Path

import pytest
from catalogs import POLICY_CATALOG

from cascadeq.config.catalog import Catalog, CatalogError


def load(extra: str) -> Catalog:
    return Catalog.loads(POLICY_CATALOG + extra, source="c.toml", check_files=False)


def test_every_rule_is_read_with_its_defaults() -> None:
    task = load("").tasks["toy"]
    assert task.tiers["premium"].start == "toy-large"
    assert task.complexity is not None
    assert (task.complexity.score, task.complexity.above) == ("nonzero_fraction", 0.5)
    assert task.complexity.start == "toy-large"  # default: the last model
    assert task.load is not None
    assert (task.load.high_water, task.load.low_water, task.load.keep_on_overload) == (5, 2, True)
    assert (task.confidence, task.deadline, task.trace_sample) == ("top", True, 0.0)
    assert task.threshold(0, "premium") == 0.9  # the tier sets no threshold of its own


def test_a_tier_threshold_wins_over_the_task_threshold() -> None:
    task = load("[tasks.toy.tiers.free]\nthresholds = [0.4]\n").tasks["toy"]
    assert task.threshold(0, "free") == 0.4
    assert task.threshold(0, "standard") == 0.9


@pytest.mark.parametrize(
    ("extra", "where", "problem"),
    [
        ('[tasks.toy.tiers.gold]\nstart = "nope"\n', "tasks.toy.tiers.gold.start", "not in"),
        ("[tasks.toy.tiers.gold]\nthresholds = [0.1, 0.2, 0.3]\n", "thresholds", "more values"),
        ("[tasks.toy.tiers.gold]\nthresholds = [1.5]\n", "thresholds", "outside [0, 1]"),
    ],
)
def test_tier_mistakes_are_explained(extra: str, where: str, problem: str) -> None:
    with pytest.raises(CatalogError) as info:
        load(extra)
    assert where in info.value.field_path
    assert problem in info.value.problem


@pytest.mark.parametrize(
    ("old", "new", "where", "problem"),
    [
        ('score = "nonzero_fraction"', 'score = "nope"', "complexity.score", "no complexity"),
        ('score = "nonzero_fraction"', 'score = "os:nope"', "complexity.score", "cannot import"),
        ("low_water = 2", "low_water = 9", "load.low_water", "below high_water"),
        ("high_water = 5", "high_water = 0", "load.high_water", "1 or more"),
    ],
)
def test_rule_mistakes_are_explained(old: str, new: str, where: str, problem: str) -> None:
    with pytest.raises(CatalogError) as info:
        Catalog.loads(POLICY_CATALOG.replace(old, new), source="c.toml", check_files=False)
    assert where in info.value.field_path
    assert problem in info.value.problem


def test_measures_and_learned_files_are_checked(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="unknown measure 'vibes'"):
        Catalog.loads(
            POLICY_CATALOG.replace("[tasks.toy]\n", '[tasks.toy]\nconfidence = "vibes"\n'),
            source="c.toml",
            check_files=False,
        )
    for name in ("toy_small.onnx", "toy_large.onnx"):
        (tmp_path / name).touch()
    path = tmp_path / "catalog.toml"
    path.write_text(POLICY_CATALOG + '[tasks.toy.learned]\npath = "missing.onnx"\n')
    with pytest.raises(CatalogError, match="train it"):
        Catalog.load(path)


def test_a_model_listed_twice_in_a_cascade_is_refused() -> None:
    text = POLICY_CATALOG.replace('{ model = "toy-large" }]', '{ model = "toy-small" }]')
    with pytest.raises(CatalogError, match="lists a model twice"):
        Catalog.loads(text, source="c.toml", check_files=False)


def test_escalation_goes_through_the_queue_unless_the_task_says_otherwise() -> None:
    task = load("").tasks["toy"]
    assert (task.escalate, task.local_backlog) == ("queue", None)
    text = POLICY_CATALOG.replace(
        "[tasks.toy]\n", '[tasks.toy]\nescalate = "auto"\nlocal_backlog = 7\n'
    )
    auto = Catalog.loads(text, source="c.toml", check_files=False).tasks["toy"]
    assert (auto.escalate, auto.local_backlog) == ("auto", 7)


@pytest.mark.parametrize(
    ("lines", "where", "problem"),
    [
        ('escalate = "nearby"', "tasks.toy.escalate", "unknown mode 'nearby'"),
        ("escalate = true", "tasks.toy.escalate", "must not be a boolean"),
        ('escalate = "local"\nlocal_backlog = 5', "tasks.toy.local_backlog", "only read with"),
        ("local_backlog = 5", "tasks.toy.local_backlog", "only read with"),
        ('escalate = "auto"\nlocal_backlog = 0', "tasks.toy.local_backlog", "1 or more"),
        ('escalate = "auto"\nlocal_backlog = 2.5', "tasks.toy.local_backlog", "must be int"),
    ],
)
def test_escalation_mistakes_are_explained(lines: str, where: str, problem: str) -> None:
    text = POLICY_CATALOG.replace("[tasks.toy]\n", f"[tasks.toy]\n{lines}\n")
    with pytest.raises(CatalogError) as info:
        Catalog.loads(text, source="c.toml", check_files=False)
    assert info.value.field_path == where
    assert problem in info.value.problem
