"""`cascadeq bench batching --quick --json`: every mode and pattern, so the bench cannot rot."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import run_cli

from cascadeq.bench.batching import MODES, PATTERNS, ROW_FIELDS


def test_bench_batching_reports_every_mode_and_pattern(digits_dir: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    plot = tmp_path / "latency.png"
    proc = run_cli(
        env,
        "bench",
        "batching",
        "--quick",
        "--json",
        "--plot",
        str(plot),
        "--models-dir",
        str(digits_dir),
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])["rows"]
    assert {(r["mode"], r["pattern"]) for r in rows} == {(m, p) for m in MODES for p in PATTERNS}
    assert all(tuple(r) == ROW_FIELDS for r in rows)
    assert all(r["throughput_rps"] > 0 and r["p50_ms"] <= r["p99_ms"] for r in rows)
    seq = [r for r in rows if r["model"] == "seq-digits" and r["pattern"] == "saturate"]
    assert all(r["padding_overhead"] > 1.0 for r in seq)  # full batches of mixed lengths pad
    fixed = [r for r in rows if r["model"] == "digits-large"]
    assert all(r["padding_overhead"] == 1.0 for r in fixed)
    assert plot.stat().st_size > 10_000
    assert "fetched" in proc.stderr  # the overlap of reads with compute is reported
