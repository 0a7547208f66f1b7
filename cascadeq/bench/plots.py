"""The two plots docs/benchmarks.md shows; matplotlib only here (the bench extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib as mpl  # noqa: PLC0415

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def throughput_vs_batch(rows: list[dict[str, Any]], out: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    batches = [r["max_batch"] for r in rows]
    ax.plot(batches, [r["in_process_sps"] for r in rows], marker="o", label="in-process (limit)")
    ax.plot(batches, [r["system_sps"] for r in rows], marker="s", label="cascadeq end to end")
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_yscale("log")  # the two lines are an order of magnitude apart
    ax.set_xlabel("max_batch (samples)")
    ax.set_ylabel("samples/s")
    ax.set_title(f"{rows[0]['model']}: throughput vs batch size (1 worker, 1 thread)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def latency_vs_load(rows: list[dict[str, Any]], model: str, out: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rates = [r["offered_rps"] for r in rows]
    for key, style in (("p50_ms", "-o"), ("p95_ms", "--s"), ("p99_ms", ":^")):
        ax.plot(rates, [r[key] for r in rows], style, label=key.replace("_ms", ""))
    ax.set_xlabel("offered load (requests/s, open loop)")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_yscale("log")
    ax.set_title(f"{model}: latency vs offered load")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
