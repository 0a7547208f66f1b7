"""`cascadeq cost` on known measurements: the arithmetic, the fit check, the currencies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

from cascadeq.ops import cost

MIB = 1024 * 1024
BENCH = {
    "rows": [
        {"strategy": "small-only", "throughput_rps": 900.0},
        {"strategy": "large-only", "throughput_rps": 200.0},
        {"strategy": "cascade", "throughput_rps": 600.0},
    ],
    "workers": 2,
    "large": "big",
    "models": {
        "small": {"memory_bytes": 1 * MIB, "worker_rss_bytes": 170 * MIB},
        "big": {"memory_bytes": 20 * MIB, "worker_rss_bytes": 170 * MIB},
    },
}


def by(plans: list[cost.Plan], instance: str, way: str) -> cost.Plan:
    return next(p for p in plans if p.instance == instance and p.way == way)


def test_bench_rows_give_instances_and_cost_per_million() -> None:
    m = cost.measured(BENCH)
    assert (m.large_only_rps, m.cascade_rps) == (100.0, 300.0)  # per worker process
    assert m.base_bytes == 149 * MIB  # the worker's RSS less what its sessions added
    plans = cost.plans(m, cost.load_prices(), target_rps=1000)
    hetzner = by(plans, "hetzner-cx22", "cascade")
    assert hetzner.fits
    assert hetzner.workers_per_instance == 2  # one per vCPU; 170 MB each fits in 4 GB
    assert hetzner.instances == 2  # 1000 / (2 x 300)
    assert hetzner.monthly == 9.02
    assert hetzner.currency == "EUR"
    assert hetzner.per_million == pytest.approx(9.02 / (1000 * cost.SECONDS_PER_MONTH) * 1e6)
    assert by(plans, "hetzner-cx22", "large-only").instances == 5  # 1000 / (2 x 100)
    do = by(plans, "do-basic-1gb", "cascade")
    assert (do.instances, do.monthly, do.currency) == (4, 24.0, "USD")
    assert by(plans, "do-basic-1gb", "large-only").process_mb == 169.0  # no small model
    assert {p.instance for p in plans} == {
        "hetzner-cx22", "do-basic-1gb", "vultr-cc-1gb", "linode-shared-1gb",
    }  # fmt: skip


def test_stats_json_follows_the_cascade() -> None:
    stats = {
        "models": {
            "small": {"processed_per_s": 400.0, "consumers": 2, "escalation_rate": 0.25,
                      "memory_bytes": MIB, "worker_rss_bytes": 200 * MIB},
            "big": {"processed_per_s": 100.0, "consumers": 2, "escalation_rate": 0.0,
                    "memory_bytes": 30 * MIB, "worker_rss_bytes": 200 * MIB},
        }
    }  # fmt: skip
    m = cost.measured(stats)
    assert m.cascade_models == ("small", "big")
    assert m.large_only_rps == 50.0
    # 1/200 s for every request on the small model, 0.25 x 1/50 s on the big one
    assert m.cascade_rps == pytest.approx(1 / (1 / 200 + 0.25 / 50))


def test_a_model_too_big_for_an_instance_does_not_fit(tmp_path: Path) -> None:
    prices = tmp_path / "mine.toml"
    prices.write_text(
        '[[instance]]\nname = "tiny"\nprice_month = 2.0\ncurrency = "CHF"\nram_gb = 0.25\n'
        "vcpus = 1\n"
    )
    plans = cost.plans(cost.measured(BENCH), cost.load_prices(prices), 100, reserve_mb=128)
    tiny = by(plans, "tiny", "cascade")
    assert not tiny.fits
    assert tiny.instances is None
    assert tiny.monthly is None
    bad = tmp_path / "bad.toml"
    bad.write_text('[[instance]]\nname = "x"\n')
    with pytest.raises(cost.CostInputError, match="price_month"):
        cost.load_prices(bad)


def test_the_command_reads_the_last_line_of_a_bench_output(
    tmp_path: Path, env: dict[str, str]
) -> None:
    source = tmp_path / "demo.out"
    source.write_text("strategy  requests ...\n" + json.dumps(BENCH) + "\n")
    proc = run_cli(env, "cost", str(source), "--target-rps", "1000", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(doc["plans"]) == 8
    assert "9.02 EUR" in proc.stdout
    assert "none is converted" in proc.stdout
    refused = run_cli(env, "cost", str(source), "--target-rps", "0")
    assert refused.returncode == 2
    assert "target-rps" in refused.stderr
