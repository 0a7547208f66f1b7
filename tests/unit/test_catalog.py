from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cascadeq.config.catalog import Catalog, CatalogError, InputError

GOOD = """
[models.small]
path = "small.onnx"
output = "probabilities"
cost = 1.5
inputs = [{ name = "input", dtype = "float32", shape = [-1, 4] }]
[models.small.batching]
mode = "dynamic"
max_batch = 8
max_wait_ms = 1.5

[models.large]
path = "large.onnx"
output = "probabilities"
inputs = [{ name = "input", dtype = "float32", shape = [-1, 4] }]

[tasks.t]
cascade = [{ model = "small", threshold = 0.8 }, { model = "large" }]
"""


def load(text: str) -> Catalog:
    return Catalog.loads(text, source="/etc/cq/catalog.toml", check_files=False)


def test_a_good_catalog_loads_with_defaults_and_relative_paths() -> None:
    cat = load(GOOD)
    small = cat.models["small"]
    assert small.path == Path("/etc/cq/small.onnx")
    assert small.batching.max_batch == 8
    assert small.cost == 1.5
    assert cat.models["large"].batching.mode == "dynamic"
    assert [s.model for s in cat.tasks["t"].cascade] == ["small", "large"]
    assert cat.tasks["t"].cascade[0].threshold == 0.8
    assert cat.first_model("t") == "small"


@pytest.mark.parametrize(
    ("old", "new", "field", "fix"),
    [
        ("max_batch = 8", "max_batch = 0", "models.small.batching.max_batch", "1 or more"),
        ('mode = "dynamic"', 'mode = "eager"', "models.small.batching.mode", "static"),
        (
            'dtype = "float32", shape = [-1, 4] }]\n[models.small.batching]',
            'dtype = "complex64", shape = [-1, 4] }]\n[models.small.batching]',
            "models.small.inputs[0].dtype",
            "float32",
        ),
        (
            "shape = [-1, 4] }]\n[models.small.batching]",
            "shape = [4, 4] }]\n[models.small.batching]",
            "models.small.inputs[0].shape",
            "[-1, 4]",
        ),
        ("threshold = 0.8", "threshold = 1.8", "tasks.t.cascade[0].threshold", "between 0 and 1"),
        ('{ model = "large" }', '{ model = "huge" }', "tasks.t.cascade[1].model", "models.huge"),
        ("cost = 1.5", "cost = -1", "models.small.cost", "cost per sample"),
        ("cost = 1.5", "costs = 1.5", "models.small.costs", "remove it"),
        ('path = "small.onnx"\n', "", "models.small.path", "path ="),
        ("[models.small]", '[models."Small Model"]', "models.Small Model", "rename"),
    ],
)
def test_validation_errors_name_file_field_and_fix(
    old: str, new: str, field: str, fix: str
) -> None:
    assert old in GOOD
    with pytest.raises(CatalogError) as err:
        load(GOOD.replace(old, new, 1))
    assert err.value.source == "/etc/cq/catalog.toml"
    assert err.value.field_path == field
    assert fix in err.value.fix
    assert str(err.value).startswith("/etc/cq/catalog.toml: ")


def test_syntax_errors_and_missing_files_are_catalog_errors(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="syntax"):
        load("[models.small\n")
    with pytest.raises(CatalogError, match="cannot be read"):
        Catalog.load(tmp_path / "nope.toml")
    (tmp_path / "c.toml").write_text(GOOD)
    with pytest.raises(CatalogError, match=r"small\.onnx does not exist"):
        Catalog.load(tmp_path / "c.toml")


def test_check_inputs_counts_samples_and_names_the_problem() -> None:
    spec = load(GOOD).models["small"]
    assert spec.check_inputs({"input": np.zeros((3, 4), np.float32)}) == 3
    cases = [
        ({"inp": np.zeros((1, 4), np.float32)}, "takes inputs"),
        ({"input": np.zeros((1, 4), np.float64)}, "must be float32"),
        ({"input": np.zeros((1, 5), np.float32)}, "must have shape"),
        ({"input": np.zeros((4,), np.float32)}, "rank"),
        ({"input": np.zeros((0, 4), np.float32)}, "empty batch"),
        ({"input": np.full((1, 4), np.nan, np.float32)}, "NaN"),
        ({"input": np.full((1, 4), np.inf, np.float32)}, "inf"),
    ]
    for inputs, match in cases:
        with pytest.raises(InputError, match=match):
            spec.check_inputs(inputs)
