"""The I/O-bound stand-in as the catalog declares it: kind, service time, no file."""

from __future__ import annotations

import numpy as np
import pytest

from cascadeq.config.catalog import Catalog, CatalogError

STANDIN = """
[models.remote]
kind = "sleep"
service_ms = 20
service_ms_per_row = 0.5
output = "probabilities"
inputs = [{ name = "input", dtype = "float32", shape = [-1, 4] }]

[tasks.t]
cascade = [{ model = "remote" }]
"""


def load(text: str) -> Catalog:
    # check_files on: a stand-in must load without any model file on disk.
    return Catalog.loads(text, source="/nonexistent/catalog.toml", check_files=True)


def test_a_standin_loads_without_a_file_and_keeps_its_service_time() -> None:
    spec = load(STANDIN).models["remote"]
    assert spec.standin is not None
    assert spec.standin.service_ms == 20.0
    assert spec.standin.seconds(10) == pytest.approx(0.025)
    assert "stand-in" in str(spec.path)


def test_an_onnx_model_has_no_standin() -> None:
    text = STANDIN.replace('kind = "sleep"\nservice_ms = 20\nservice_ms_per_row = 0.5\n', "")
    text = text.replace('output = "probabilities"', 'path = "m.onnx"\noutput = "probabilities"')
    spec = Catalog.loads(text, source="/x/catalog.toml", check_files=False).models["remote"]
    assert spec.standin is None


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ('kind = "sleep"', 'kind = "grpc"', "models.remote.kind"),
        ("service_ms = 20\n", "", "models.remote.service_ms"),
        ("service_ms = 20", "service_ms = -1", "models.remote.service_ms"),
        ('kind = "sleep"', 'kind = "onnx"\npath = "m.onnx"', "models.remote.service_ms"),
        ('kind = "sleep"', 'kind = "sleep"\npath = "m.onnx"', "models.remote.path"),
    ],
)
def test_a_bad_standin_names_the_field(old: str, new: str, field: str) -> None:
    with pytest.raises(CatalogError) as err:
        Catalog.loads(STANDIN.replace(old, new, 1), source="/x/catalog.toml", check_files=False)
    assert err.value.field_path == field


def test_the_standin_runner_answers_one_confident_row_per_sample() -> None:
    from cascadeq.workers.standin import SleepRunner, load_runner

    spec = load(STANDIN.replace("service_ms = 20", "service_ms = 0")).models["remote"]
    runner = load_runner(spec)
    assert isinstance(runner, SleepRunner)
    out = runner.run({"input": np.zeros((3, 4), np.float32)}, 3)
    assert out.shape == (3, 2)
    assert (out.max(axis=1) == 1.0).all()
