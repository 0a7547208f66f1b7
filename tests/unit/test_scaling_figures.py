"""The scaling bench's arithmetic and the catalog it serves, without Redis."""

from __future__ import annotations

from cascadeq.bench import scaling
from cascadeq.config.catalog import Catalog

BASE = """
[models.digits-large]
path = "digits_large.onnx"
output = "probabilities"
inputs = [{ name = "input", dtype = "float32", shape = [-1, 64] }]
"""


def test_efficiency_is_rps_at_n_over_n_times_rps_at_one() -> None:
    points = scaling.efficiency(
        [{"workers": 1, "rps": 40.0}, {"workers": 16, "rps": 576.0}, {"workers": 32, "rps": 0.0}]
    )
    assert [p["efficiency"] for p in points] == [1.0, 0.9, 0.0]


def test_efficiency_of_a_series_starting_above_one_scales_its_first_point() -> None:
    points = scaling.efficiency([{"workers": 2, "rps": 80.0}, {"workers": 4, "rps": 120.0}])
    assert [p["efficiency"] for p in points] == [1.0, 0.75]


def test_the_bench_catalog_declares_the_standin_and_both_tasks() -> None:
    plan = scaling.Plan(service_ms=30.0, io_batch=3)
    catalog = Catalog.loads(BASE + scaling.standin_toml(plan), check_files=False)
    standin = catalog.models[scaling.STANDIN]
    assert standin.standin is not None
    assert standin.standin.service_ms == 30.0
    assert standin.batching.max_batch == 3
    assert catalog.first_model("scaling-io") == scaling.STANDIN
    assert catalog.first_model("scaling-cpu") == scaling.CPU_MODEL


def test_quick_keeps_sixteen_workers_and_cpu_counts_stop_at_the_cores() -> None:
    quick = scaling.Plan.for_machine(True, service_ms=None, io_batch=None)
    assert 16 in quick.io_workers
    assert quick.service_ms == scaling.Plan.service_ms
    full = scaling.Plan.for_machine(False, service_ms=20.0)
    assert full.io_workers[-1] == 32
    assert full.service_ms == 20.0
    assert full.cpu_workers[0] == 1
    assert len(full.cpu_workers) == full.cpu_workers[-1]  # 1, 2, ..., cores
