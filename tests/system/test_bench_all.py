"""`cascadeq bench all --quick --json`: every part runs and reports every figure, so the
benchmark cannot rot. No performance thresholds: targets live in the bench's own output."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from conftest import run_cli

from cascadeq.bench.suite import TARGETS


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_bench_all_quick_reports_every_figure(digits_dir: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    plots = tmp_path / "plots"
    proc = run_cli(
        env,
        "bench",
        "all",
        "--quick",
        "--json",
        "--plot-dir",
        str(plots),
        "--models-dir",
        str(digits_dir),
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("small_e2e_rps", "overhead_us_per_request", "speedup_vs_rq", "rq_rps"):
        assert positive(report[key]), (key, report[key])
    assert set(report["efficiency"]) == {"small", "large", "heavy"}
    assert all(positive(v) for v in report["efficiency"].values())
    assert set(report["rq"]) == {"SimpleWorker", "Worker"}
    assert all(positive(v) for v in report["rq"].values())
    assert set(report["latency"]) == {"10", "50", "90"}
    for level in report["latency"].values():
        assert set(level) == {"p50_ms", "p95_ms", "p99_ms"}
        assert all(positive(v) for v in level.values())
        assert level["p50_ms"] <= level["p95_ms"] <= level["p99_ms"]
    cascade = report["cascade"]
    for key in ("accuracy", "large_only_accuracy", "relative_cost"):
        assert positive(cascade[key]), (key, cascade)
    assert cascade["relative_cost"] < 1.0  # the cascade sends most requests to the small model
    for row in report["cascade_rows"]:  # floor, large-only, the cascades (or "not available")
        if not row["available"]:
            assert row["strategy"] in ("cascade-local", "cascade-auto"), row
            continue
        assert set(row["roles_us"]) == {"producer", "router", "worker", "redis"}, row
        assert row["total_cpu_us"] >= row["compute_us"] > 0, row
    assert {(r["pair"], r["strategy"]) for r in report["cascade_rows"]} == {
        (p, s)
        for p in ("digits", "heavy")
        for s in ("small-only", "large-only", "cascade", "cascade-local", "cascade-auto")
    }
    assert positive(cascade["total_vs_large_only"])
    assert positive(cascade["heavy_total_vs_large_only"])
    for pair in ("", "heavy_"):  # one hop's floor bounds what the cascade can reach; a
        # quick run's one round is too noisy to compare the two (the bench reports both)
        assert positive(cascade[f"{pair}reachable_vs_large_only"])
    costs = {t["figure"]: t for t in report["targets"]}
    assert "reachable" in costs["cascade.total_vs_large_only"]
    machine = report["machine"]
    for key in ("cpu", "cores", "ram_gb", "python", "onnxruntime", "redis_server"):
        assert machine[key], key
    assert all(r["lost"] == 0 and r["errors"] == 0 for r in report["limit"])
    overhead = report["overhead"]
    assert set(overhead["throughput_vs_floor"]) == {"submit_many", "threads_16", "async_64"}
    assert all(positive(v) for v in overhead["throughput_vs_floor"].values())
    assert positive(overhead["cpu_vs_floor"])
    for row in [overhead["floor"], *overhead["modes"]]:
        assert set(row["per_role_us"]) == {"producer", "router", "worker", "redis"}, row
        assert (row["lost"], row["errors"]) == (0, 0), row
    assert [t["figure"] for t in report["targets"]] == [t[0] for t in TARGETS]
    assert (plots / "bench-latency.png").stat().st_size > 10_000
    assert (digits_dir / "heavy" / "catalog.toml").is_file()  # built on demand


def test_targets_say_met_or_by_how_much_they_are_missed() -> None:
    from cascadeq.bench.suite import targets

    report = {
        "overhead": {
            "throughput_vs_floor": {"submit_many": 3.0, "threads_16": 0.5, "async_64": 1.0},
            "cpu_vs_floor": 0.3,
        },
        "efficiency": {"heavy": 0.95},
        "speedup_vs_rq": 60.0,
        "latency": {"10": {"p50_ms": 4.0, "p99_ms": 10.0}},
    }
    got = {t["figure"]: (t["met"], t["off_by"]) for t in targets(report)}
    assert got == {
        "overhead.throughput_vs_floor.submit_many": (True, None),
        "overhead.throughput_vs_floor.threads_16": (False, 2.0),
        "overhead.throughput_vs_floor.async_64": (True, None),
        "overhead.cpu_vs_floor": (True, None),
        "efficiency.heavy": (True, None),
        "speedup_vs_rq": (True, None),
        "latency.10.p50_ms": (False, 2.0),
        "latency.10.p99_ms": (True, None),
    }
