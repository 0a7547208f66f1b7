"""`cascadeq demo --json` as a user runs it: its own Redis, the live system, one JSON line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import redis
from conftest import run_cli


def test_demo_prints_three_strategies_and_the_cascade_earns_its_keep(
    digits_dir: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # the embedded default
    proc = run_cli(env, "demo", "--json", "--models-dir", str(digits_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {
        row["strategy"]: row for row in json.loads(proc.stdout.strip().splitlines()[-1])["rows"]
    }
    assert list(rows) == ["small-only", "large-only", "cascade"]
    n = rows["cascade"]["requests"]
    assert n == len(np.load(digits_dir / "digits_test.npz")["y"])
    assert all(row["errors"] == 0 and row["requests"] == n for row in rows.values())
    assert rows["small-only"]["large_calls"] == 0
    assert rows["large-only"]["large_share"] == 1.0
    assert rows["large-only"]["relative_cost"] == 1.0
    cascade, large = rows["cascade"], rows["large-only"]
    assert cascade["accuracy"] >= large["accuracy"] - 0.005
    assert cascade["large_share"] <= 0.35
    assert cascade["relative_cost"] < 0.5
    for row in rows.values():  # both figures: compute only, and every process's CPU
        assert set(row["roles_us"]) == {"producer", "router", "worker", "redis"}, row
        assert row["total_cpu_us"] >= row["compute_us"] > 0, row
    assert "total: CPU per answered request" in proc.stdout
    assert "strategy" in proc.stdout  # the human table comes first
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert doc["workers"] == 2
    assert doc["large"] == "digits-large"
    assert doc["models"]["digits-large"]["memory_bytes"] > 1_000_000  # measured at load
    # ... which is what `cascadeq cost` sizes instances from
    (tmp_path / "demo.out").write_text(proc.stdout)
    costed = run_cli(env, "cost", str(tmp_path / "demo.out"), "--target-rps", "1000", "--json")
    assert costed.returncode == 0, costed.stderr
    plans = json.loads(costed.stdout.strip().splitlines()[-1])["plans"]
    assert "CPU per answered request" in costed.stdout
    measured = json.loads(costed.stdout.strip().splitlines()[-1])["measured"]
    assert measured["cpu_us"]["cascade"]["total"] >= measured["cpu_us"]["cascade"]["compute"]
    assert all(p["fits"] and p["instances"] >= 1 for p in plans)


def test_demo_on_a_users_redis_keeps_to_its_own_keys_and_cleans_up(
    digits_dir: Path, r: redis.Redis, redis_url: str
) -> None:
    r.set("cq:catalog", b"a deployment's own catalog")
    env = {**os.environ, "REDIS_URL": redis_url}
    proc = run_cli(env, "demo", "--models-dir", str(digits_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert r.get("cq:catalog") == b"a deployment's own catalog"
    assert [k for k in r.scan_iter(match="cq-demo-*")] == []
