"""`cascadeq bench dms --json`, reduced (a small spike), so the benchmark cannot rot."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from conftest import run_cli

from cascadeq.bench.dms import POLICIES, ROW_FIELDS


def test_bench_dms_reports_every_policy_and_the_policies_behave(digits_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    proc = run_cli(env, "bench", "dms", "--json", "--spike", "2", "--models-dir", str(digits_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["policy"]: r for r in json.loads(proc.stdout.strip().splitlines()[-1])["rows"]}
    assert tuple(rows) == POLICIES
    assert all(tuple(row) == ROW_FIELDS for row in rows.values())
    assert all(row["lost"] == 0 for row in rows.values())
    large, small, cascade = rows["large-only"], rows["small-only"], rows["cascade"]
    assert (large["large_share"], large["relative_cost"]) == (1.0, 1.0)
    assert small["large_share"] == 0.0
    assert 0.0 < cascade["large_share"] < 0.35
    assert cascade["relative_cost"] < 0.35
    assert cascade["accuracy"] > small["accuracy"]
    assert rows["premium"]["large_share"] == 1.0  # the premium tier starts at the large model
    assert rows["deadline-mix"]["expired"] + rows["deadline-mix"]["lost"] <= len(
        np.load(digits_dir / "digits_test.npz")["y"]
    )
    assert "learned router:" in proc.stderr  # trained on the validation traffic's traces
    for row in rows.values():  # total: every process's CPU, never below the compute in it
        assert set(row["roles_us"]) == {"producer", "router", "worker", "redis"}, row
        assert row["total_cpu_us"] >= row["compute_us"] > 0, row
    learned = json.loads(proc.stdout.strip().splitlines()[-1])["learned"]
    assert learned["hop_costs_us"][0] > learned["compute_only"]["costs"][0]  # a hop, not compute
