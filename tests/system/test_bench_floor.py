"""The measurement floor answers every request correctly and leaves no process or key behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import psutil
import pytest
import redis
from conftest import run_cli

from cascadeq.bench import floor
from cascadeq.bench.floor import floor_for
from cascadeq.bench.harness import System
from cascadeq.bench.workbench import SMALL, Bench, Scale, inputs_for
from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra.process import ProcessGroup

N = 300


def floor_children() -> list[psutil.Process]:
    """This process's children that are floor roles (the suite's redis-server is not)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "cascadeq.bench.floor" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def test_floor_answers_every_request_like_onnx_runtime(redis_url: str, digits_dir: Path) -> None:
    spec = Catalog.load(digits_dir / "catalog.toml").models["digits-small"]
    input_name = spec.inputs[0].name
    x = np.load(digits_dir / "digits_test.npz")["X"].astype(np.float32)
    session = floor.open_session(spec.path)
    rows = np.stack([x[i % len(x)] for i in range(N)])
    out_names = [o.name for o in session.get_outputs()]
    expected = dict(zip(out_names, session.run(None, {input_name: rows}), strict=True))
    prefix = f"t{uuid.uuid4().hex[:10]}"
    r = redis.Redis.from_url(redis_url)

    with floor.floor_session(redis_url, spec.path, input_name, x, N, prefix=prefix) as figs:
        raw = r.mget([floor.Names(prefix).result(i) for i in range(N)])
        assert floor_children(), "the roles run while the session is open"

    assert figs["requests"] == N
    assert (figs["lost"], figs["errors"]) == (0, 0)
    assert figs["throughput_rps"] > 0
    assert set(figs["per_role_us"]) == {"producer", "router", "worker", "redis"}
    assert all(v is not None for v in raw)
    results = [floor.unpack(v) for v in raw]
    for result in results:
        assert set(result) == set(expected)
        for name, want in expected.items():
            assert result[name].shape == (1, *want.shape[1:])
    got = np.concatenate([res[spec.output] for res in results])
    assert (got.argmax(axis=1) == expected[spec.output].argmax(axis=1)).all()
    for pid in figs["pids"].values():
        assert not psutil.pid_exists(pid), f"floor role {pid} still running"
    assert floor_children() == []
    assert r.keys(f"{prefix}:*") == []
    r.close()


def test_a_role_that_cannot_start_stops_the_others(redis_url: str, tmp_path: Path) -> None:
    x = np.zeros((4, 64), dtype=np.float32)
    prefix = f"t{uuid.uuid4().hex[:10]}"
    with pytest.raises(RuntimeError, match="floor worker exited"):
        floor.run_floor(redis_url, tmp_path / "missing.onnx", "input", x, 10, prefix=prefix)
    assert floor_children() == []
    r = redis.Redis.from_url(redis_url)
    assert r.keys(f"{prefix}:*") == []
    r.close()


def test_the_wire_round_trips_arrays() -> None:
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    back = floor.unpack(floor.pack({"id": 7, "x": arr}))
    assert back["id"] == 7
    np.testing.assert_array_equal(back["x"], arr)
    assert back["x"].dtype == np.float32


def test_floor_for_runs_on_the_bench_redis_and_model(
    redis_url: str, settings: Settings, digits_dir: Path
) -> None:
    """A Bench as open_bench builds it (no live roles needed): its Redis, its model file."""
    system = System(redis_url, settings, digits_dir / "catalog.toml", ProcessGroup({}))
    bench = Bench(system, None, digits_dir, Scale.quick(), inputs_for(digits_dir))
    figs = floor_for(bench, n=200)
    assert (figs["model"], figs["requests"], figs["lost"], figs["errors"]) == (SMALL, 200, 0, 0)
    assert figs["cpu_us_per_request"] > 0
    assert floor_children() == []


def test_the_command_line_prints_json(redis_url: str, digits_dir: Path) -> None:
    model = Catalog.load(digits_dir / "catalog.toml").models["digits-small"].path
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cascadeq.bench.floor",
            "--redis-url",
            redis_url,
            "--model",
            str(model),
            "--input-name",
            "input",
            "--n",
            "200",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    figs = json.loads(done.stdout.strip().splitlines()[-1])
    assert (figs["requests"], figs["lost"]) == (200, 0)


def test_cascadeq_bench_floor_runs_on_its_own_redis(digits_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # the embedded default
    proc = run_cli(
        env, "bench", "floor", "--requests", "300", "--json", "--models-dir", str(digits_dir)
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    figs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (figs["requests"], figs["lost"], figs["errors"]) == (300, 0, 0)
    assert set(figs["per_role_us"]) == {"producer", "router", "worker", "redis"}
    assert floor_children() == []
