"""Where each role's CPU goes: py-spy on the producer, the router and the worker.

Starts a private redis-server, one router and one worker process, attaches py-spy to
each role (the producer is this process), sends N one-sample requests pinned to the
small digits model (or ``--model``) with one `submit_many`, waits for every result, and
prints the top
functions of each role by own samples (leaf frames, only while holding the GIL, so a
blocked read is not counted). Needs py-spy
(`pip install 'cascadeq[bench]'`); run as root or with ptrace allowed.

    .venv/bin/python scripts/profile_roles.py --requests 30000 --top 12
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.examples import digits
from cascadeq.infra.embedded import EmbeddedRedis
from cascadeq.infra.process import ProcessGroup
from cascadeq.producer import Producer, Request

MODEL = "digits-small"


def top(raw: Path, n: int) -> list[tuple[float, str]]:
    """The n functions with the most own samples, as shares of the role's samples."""
    own: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        leaf = stack.split(";")[-1]
        own[leaf.split(" (")[0] + " (" + leaf.rsplit("/", 1)[-1]] += int(count)
    total = sum(own.values()) or 1
    return [(100.0 * c / total, name) for name, c in own.most_common(n)]


def spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--rate",
            "500",
            "--gil",
            "--format",
            "raw",
            "-o",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", default="models/digits", type=Path)
    parser.add_argument("--requests", type=int, default=30_000)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--model", default=MODEL, help="the model requests are pinned to")
    parser.add_argument("--raw-dir", type=Path, help="keep py-spy's raw stacks here")
    args = parser.parse_args()
    digits.ensure_built(args.models_dir, log=lambda line: print(line, file=sys.stderr))
    x = np.load(args.models_dir / "digits_test.npz")["X"].astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis() as server:
        env = {
            **os.environ,
            "REDIS_URL": server.url,
            "CASCADEQ_CATALOG": str(args.models_dir.resolve() / "catalog.toml"),
            "CASCADEQ_LOG_LEVEL": "warning",
        }
        catalog = Catalog.load(args.models_dir / "catalog.toml", check_files=False)
        settings = Settings(redis_url=server.url)
        with (
            ProcessGroup(env) as group,
            Producer(server.url, settings=settings, catalog=catalog) as client,
        ):
            roles = {"router": group.spawn("router").pid, "worker": group.spawn("worker").pid}
            warm = [Request({"input": x[i % len(x)][None]}, model=args.model) for i in range(200)]
            client.wait_many(client.submit_many(warm), timeout=300)
            reqs = [
                Request({"input": x[i % len(x)][None]}, model=args.model)
                for i in range(args.requests)
            ]
            roles["producer"] = os.getpid()
            spies = {role: spy(pid, Path(tmp) / f"{role}.txt") for role, pid in roles.items()}
            try:
                client.wait_many(client.submit_many(reqs), timeout=600)
            finally:
                for proc in spies.values():
                    proc.send_signal(2)  # py-spy writes its file on SIGINT
                for proc in spies.values():
                    proc.wait(timeout=60)
        if args.raw_dir is not None:
            args.raw_dir.mkdir(parents=True, exist_ok=True)
            for raw in Path(tmp).glob("*.txt"):
                shutil.copy(raw, args.raw_dir / raw.name)
        for role in ("producer", "router", "worker"):
            print(f"\n{role}: top functions by own samples")
            raw = Path(tmp) / f"{role}.txt"
            for share, name in top(raw, args.top) if raw.exists() else []:
                print(f"  {share:5.1f}%  {name}")


if __name__ == "__main__":
    main()
