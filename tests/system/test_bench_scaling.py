"""`cascadeq bench scaling` on a real Redis with real worker processes, trimmed to seconds.

Figures are not asserted (targets live in the bench's JSON); what is checked is that each
point is measured with the workers it names, every request is answered, and nothing is
left behind: no key, no worker, no load process, also after a Ctrl-C.
"""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import psutil
import redis
from conftest import wait_for
from test_interrupt import command, descendants, stop_and_check, without_redis_url

from cascadeq.bench import scaling
from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings

TINY = scaling.Plan(
    io_workers=(1, 2),
    cpu_workers=(1,),
    service_ms=20.0,
    io_batch=2,
    producers=1,
    threads=2,
    warm_s=0.5,
    window_s=1.5,
)


def ours() -> list[str]:
    """Bench children still alive: load processes, routers and workers."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if "cascadeq.bench.loadgen" in cmd or "cascadeq.cli" in cmd:
            found.append(cmd)
    return found


def test_a_section_measures_each_count_and_leaves_nothing(redis_url: str, digits_dir: Path) -> None:
    catalog = digits_dir / f".t-scaling-{uuid.uuid4().hex[:8]}.toml"  # beside the models
    text = (digits_dir / "catalog.toml").read_text(encoding="utf-8")
    catalog.write_text(text + scaling.standin_toml(TINY), encoding="utf-8")
    max_batch = Catalog.load(catalog).models[scaling.CPU_MODEL].batching.max_batch
    settings = Settings(prefix=f"t{uuid.uuid4().hex[:10]}")
    try:
        got = scaling.section(redis_url, settings, catalog, TINY)
    finally:
        catalog.unlink()
    assert set(got) == {"io_bound", "cpu_bound"}
    assert [p["workers"] for p in got["io_bound"]] == [1, 2]
    assert [p["workers"] for p in got["cpu_bound"]] == [1]
    for point in got["io_bound"] + got["cpu_bound"]:
        assert point["rps"] > 0, point
        assert point["failed"] == 0, point
        assert point["in_flight"] >= 2
        assert 1.0 <= point["mean_batch"] <= max_batch
    assert got["io_bound"][0]["efficiency"] == 1.0
    assert all(p["mean_batch"] <= TINY.io_batch for p in got["io_bound"])
    assert all(0 < p["of_ideal"] <= 1.1 for p in got["io_bound"])
    # At most one batch of 2 per 20 ms per worker: the stand-in's service time holds.
    assert got["io_bound"][0]["rps"] <= 2 / 0.020 * 1.1
    assert ours() == []
    r = redis.Redis.from_url(redis_url)
    assert list(r.scan_iter(match=f"{settings.prefix}-*")) == []


def test_bench_scaling_stops_its_workers_and_load_on_sigint(
    digits_dir: Path, tmp_path: Path
) -> None:
    log = tmp_path / "scaling.log"
    args = ("bench", "scaling", "--quick", "--models-dir", str(digits_dir))
    with command(without_redis_url(), log, *args) as proc:

        def loading() -> bool:
            return any(
                "cascadeq.bench.loadgen" in " ".join(p.cmdline())
                for p in descendants(proc)
                if p.is_running()
            )

        wait_for(loading, 120, "the bench drives load")
        stop_and_check(proc, log, signal.SIGINT)
    assert not list(digits_dir.glob(".bench-scaling-*.toml"))  # its catalog copy is removed
