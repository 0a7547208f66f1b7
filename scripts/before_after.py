"""The hot path before and after a change, measured side by side in one run.

Checks out REF (default: the last commit before the bundled hot path) in a temporary
git worktree, then alternates runs of that tree's code and this tree's, each on a fresh
private redis-server with one router and one worker process, with the floor
(cascadeq/bench/floor.py) measured in the same run: 30,000 one-sample requests pinned to
the small digits model, submitted by one `submit_many` and by 16 threads of single
submits. Only the public API both trees share is used. Prints a table, and JSON with
--json.

    .venv/bin/python scripts/before_after.py --rounds 2 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import redis

from cascadeq.config.catalog import Catalog  # the tree on PYTHONPATH: REF's or this one's
from cascadeq.config.settings import Settings
from cascadeq.infra.embedded import EmbeddedRedis
from cascadeq.infra.process import ProcessGroup
from cascadeq.producer import Producer, Request

HERE = Path(__file__).resolve().parent.parent
BEFORE = "f3379d2"  # main after issue 11, before the bundled hot path
MODEL = "digits-small"


def measure(models: Path, n: int, mode: str) -> dict[str, Any]:
    """One system run of the code on sys.path (this tree's, or REF's via PYTHONPATH)."""
    x = np.load(models / "digits_test.npz")["X"].astype(np.float32)
    with EmbeddedRedis() as server:
        env = {
            **os.environ,
            "REDIS_URL": server.url,
            "CASCADEQ_CATALOG": str(models / "catalog.toml"),
            "CASCADEQ_LOG_LEVEL": "warning",
        }
        group = ProcessGroup(env)
        try:
            group.spawn("router")
            group.spawn("worker")
            settings = Settings(redis_url=server.url)
            catalog = Catalog.load(models / "catalog.toml", check_files=False)
            with Producer(server.url, settings=settings, catalog=catalog) as client:
                warm = [Request({"input": x[i % len(x)][None]}, model=MODEL) for i in range(200)]
                client.wait_many(client.submit_many(warm), timeout=300)
                reqs = [Request({"input": x[i % len(x)][None]}, model=MODEL) for i in range(n)]
                pids = [p.pid for p in group.procs]

                def cpu() -> float:
                    total = 0.0
                    for pid in pids:
                        proc = psutil.Process(pid)
                        for p in [proc, *proc.children(recursive=True)]:
                            t = p.cpu_times()
                            total += t.user + t.system
                    return total

                r = redis.Redis.from_url(server.url)

                def redis_cpu() -> float:
                    info: Any = r.info("cpu")
                    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

                roles0, redis0, own0 = cpu(), redis_cpu(), time.process_time()
                started = time.perf_counter()
                if mode == "submit_many":
                    ids = client.submit_many(reqs)
                else:
                    with ThreadPoolExecutor(max_workers=16) as pool:
                        ids = list(
                            pool.map(
                                lambda q: client.submit(inputs=q.inputs, model=MODEL),
                                reqs,
                                chunksize=64,
                            )
                        )
                results = client.wait_many(ids, timeout=600)
                seconds = time.perf_counter() - started
                spent = {
                    "producer": time.process_time() - own0,
                    "roles": cpu() - roles0,
                    "redis": redis_cpu() - redis0,
                }
                r.close()
        finally:
            group.stop()
    return {
        "mode": mode,
        "throughput_rps": round(sum(res.ok for res in results) / seconds, 1),
        "cpu_us_per_request": round(sum(spent.values()) / n * 1e6, 2),
        "per_role_us": {k: round(v / n * 1e6, 2) for k, v in spent.items()},
    }


def run_tree(tree: Path, models: Path, n: int, mode: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "measure", str(models), str(n), mode],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"measure in {tree} failed: {proc.stderr[-2000:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def floor(models: Path, n: int) -> dict[str, Any]:
    from cascadeq.bench.floor import fresh_prefix, run_floor  # noqa: PLC0415 - this tree's only

    x = np.load(models / "digits_test.npz")["X"].astype(np.float32)
    with EmbeddedRedis() as server:
        figs = run_floor(
            server.url, models / "digits_small.onnx", "input", x, n, prefix=fresh_prefix()
        )
    return {
        "mode": "floor",
        "throughput_rps": figs["throughput_rps"],
        "cpu_us_per_request": figs["cpu_us_per_request"],
        "per_role_us": figs["per_role_us"],
    }


def compare(ref: str, models: Path, n: int, rounds: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="cascadeq-before-") as tmp:
        before = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(HERE), "worktree", "add", "--detach", str(before), ref],
            check=True,
            capture_output=True,
        )
        try:
            for i in range(rounds):
                print(f"[before-after] round {i + 1}/{rounds}", file=sys.stderr, flush=True)
                runs.setdefault("floor", []).append(floor(models, n))
                for mode in ("submit_many", "threads_16"):
                    for name, tree in (("before", before), ("after", HERE)):
                        row = run_tree(tree, models, n, mode)
                        print(f"[before-after] {name} {row}", file=sys.stderr, flush=True)
                        runs.setdefault(f"{name} {mode}", []).append(row)
        finally:
            subprocess.run(
                ["git", "-C", str(HERE), "worktree", "remove", "--force", str(before)],
                check=False,
                capture_output=True,
            )
    summary = {
        key: {
            "throughput_rps": statistics.median(r["throughput_rps"] for r in rows),
            "cpu_us_per_request": statistics.median(r["cpu_us_per_request"] for r in rows),
            "runs": rows,
        }
        for key, rows in runs.items()
    }
    base = summary["floor"]
    for row in summary.values():
        row["throughput_vs_floor"] = round(row["throughput_rps"] / base["throughput_rps"], 3)
        row["cpu_vs_floor"] = round(row["cpu_us_per_request"] / base["cpu_us_per_request"], 3)
    return {"ref": ref, "requests": n, "rounds": rounds, "load_avg": os.getloadavg(), **summary}


def render(report: dict[str, Any]) -> str:
    head = f"{'run':<24}{'req/s':>9}{'x floor':>9}{'us CPU/req':>12}{'x floor':>9}"
    lines = [head, "-" * len(head)]
    for key, row in report.items():
        if isinstance(row, dict) and "throughput_rps" in row:
            lines.append(
                f"{key:<24}{row['throughput_rps']:>9.0f}{row['throughput_vs_floor']:>9.2f}"
                f"{row['cpu_us_per_request']:>12.1f}{row['cpu_vs_floor']:>9.2f}"
            )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "measure":
        print(json.dumps(measure(Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default=BEFORE, help=f"the code before (default {BEFORE})")
    parser.add_argument("--models-dir", default="models/digits", type=Path)
    parser.add_argument("--requests", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from cascadeq.examples import digits  # noqa: PLC0415 - the build extra

    digits.ensure_built(args.models_dir, log=lambda line: print(line, file=sys.stderr))
    report = compare(args.ref, args.models_dir.resolve(), args.requests, args.rounds)
    print(render(report))
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
