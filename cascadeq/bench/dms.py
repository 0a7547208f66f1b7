"""`cascadeq bench dms`: dynamic model selection on the live system, policy by policy.

The held-out digits split runs through a real router and workers under each policy,
submitted as one burst (throughput), except the deadline mix, which arrives open loop
at a fixed rate so that its deadlines compete with real queueing rather than a burst.
The learned router is trained on traces that the validation split's traffic left
(never the held-out split), exactly as an operator would with `cascadeq router train`.
The bench works on its own copy of the catalog; the load marks are lowered there so a
spike this machine can generate crosses them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cascadeq.bench.harness import (
    System,
    cpu_spent,
    figures,
    live_system,
    progress,
    run_burst,
    run_paced,
)
from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra.connection import connect

TASK = "digits"
LEARNED_TASK = "digits-learned"
SPIKE_TASK = "digits-spike"
WORKERS = 2  # worker processes; `cascadeq cost` divides throughput by it
POLICIES = (
    "large-only",
    "small-only",
    "cascade",
    "cascade+learned",
    "premium",
    "deadline-mix",
    "load-spike",
)
# Marks this machine's spike crosses: a large-model queue over 40 ms (or 400 entries) deep.
SPIKE_LOAD = {"high_water": 400, "low_water": 100, "high_wait_ms": 40.0, "low_wait_ms": 10.0}
DEADLINES_MS = (None, 50.0, 5.0)  # the deadline mix: none, comfortable, tight, in turn
DEADLINE_MIX_RPS = 500.0  # open loop, well inside capacity: queues stay short
ROW_FIELDS = (
    "policy",
    "accuracy",
    "large_share",
    "relative_cost",
    "compute_us",
    "total_cpu_us",
    "roles_us",
    "throughput_rps",
    "p50_ms",
    "p99_ms",
    "expired",
    "lost",
    "route_switches",
)


def tag(line: str) -> None:
    progress("bench dms", line)


@dataclass(frozen=True)
class Data:
    x: np.ndarray
    y: np.ndarray


def prepare(models_dir: Path, work: Path) -> Path:
    """A private copy: traces on, and a twin task with load marks this machine's spike
    crosses (so the spike's marks touch no other row); the user's catalog is never edited.
    """
    import tomlkit  # noqa: PLC0415

    for f in models_dir.iterdir():
        if f.is_file():
            shutil.copy(f, work / f.name)
    path = work / "catalog.toml"
    doc: Any = tomlkit.parse(path.read_text(encoding="utf-8"))
    task = doc["tasks"][TASK]
    task["trace_sample"] = 1.0
    spike = task.unwrap()  # a plain-dict copy
    spike.update(trace_sample=0.0, load=SPIKE_LOAD)
    doc["tasks"][SPIKE_TASK] = spike
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    return path


def add_learned_task(
    path: Path, system: System, redis_hop_us: float | None = None, limit: int = 50_000
) -> dict[str, Any]:
    """Train on the logged traces and declare a second task that uses the result; a skip
    weighs a whole hop (compute plus the workers' published CPU beyond it plus Redis's
    share), as `cascadeq router train` weighs it."""
    from cascadeq.ops import published  # noqa: PLC0415
    from cascadeq.ops import train_router as train  # noqa: PLC0415 - roles are imported lazily

    catalog = Catalog.load(path)
    task = catalog.tasks[TASK]
    r = connect(system.url)
    keys = system.settings.keys()
    x, hard = train.read_traces(r, keys, TASK, limit)
    hops, source = published.hop_figures(r, keys, task.models, redis_hop_us=redis_hop_us)
    r.close()
    out = path.parent / f"{TASK}-router.onnx"
    report = train.train(catalog, task, x, hard, out, hop_us=hops)
    compute_only = train.train(catalog, task, x, hard, path.parent / "compute-only.onnx")
    threshold = task.cascade[0].threshold
    with path.open("a", encoding="utf-8") as f:
        f.write(
            f"\n[tasks.{LEARNED_TASK}]\n"
            f'cascade = [{{ model = "{task.models[0]}", threshold = {threshold!r} }}, '
            f'{{ model = "{task.models[-1]}" }}]\n'
            f'confidence = "{task.confidence}"\n\n'
            f"[tasks.{LEARNED_TASK}.learned]\n"
            f'path = "{out.name}"\nthreshold = {report.threshold!r}\nstart = "{task.models[-1]}"\n'
        )
    tag(
        f"learned router: {report.traces} traces, {report.hard_share:.1%} hard; threshold "
        f"{report.threshold:.3f} skips {report.skip_share:.1%} (precision {report.precision:.2f})"
        f"; hop costs {report.costs[0]:.1f} / {report.costs[1]:.1f} us ({source}); saving "
        f"{report.expected_saving:.2f} us/request (compute only: threshold "
        f"{compute_only.threshold:.3f}, skips {compute_only.skip_share:.1%})"
    )
    return {
        "source": source,
        "hop_costs_us": report.costs,
        "hop_us": report.hop_us,
        "threshold": report.threshold,
        "skip_share": report.skip_share,
        "precision": report.precision,
        "expected_saving_us": report.expected_saving,
        "compute_only": {
            "costs": compute_only.costs,
            "threshold": compute_only.threshold,
            "skip_share": compute_only.skip_share,
            "expected_saving": compute_only.expected_saving,
        },
    }


def policy_requests(policy: str, data: Data, catalog: Catalog) -> list[Any]:
    from cascadeq.producer import Request  # noqa: PLC0415

    task = catalog.tasks[TASK]
    small, large = task.models[0], task.models[-1]
    out = []
    for i in range(len(data.x)):
        inputs = {"input": data.x[i : i + 1]}
        if policy == "large-only":
            out.append(Request(inputs, model=large))
        elif policy == "small-only":
            out.append(Request(inputs, model=small))
        elif policy == "cascade+learned":
            out.append(Request(inputs, task=LEARNED_TASK))
        elif policy == "premium":
            out.append(Request(inputs, task=TASK, tier="premium"))
        elif policy == "deadline-mix":
            budget = DEADLINES_MS[i % len(DEADLINES_MS)]
            out.append(Request(inputs, task=TASK, deadline_ms=budget))
        elif policy == "load-spike":
            tier = "premium" if i % 2 else "standard"
            out.append(Request(inputs, task=SPIKE_TASK, tier=tier))
        else:
            out.append(Request(inputs, task=TASK))
    return out


def run_policy(client: Any, system: System, policy: str, data: Data) -> dict[str, Any]:
    catalog = system.catalog()
    large = catalog.tasks[TASK].models[-1]
    before = system.counts().get("load_switch", 0)
    requests = policy_requests(policy, data, catalog)
    if policy == "deadline-mix":  # deadlines mean something only at a sustainable rate
        with cpu_spent(system) as spent:
            run = run_paced(client, requests, data.y, DEADLINE_MIX_RPS)
    else:
        with cpu_spent(system) as spent:
            run = run_burst(client, requests, data.y)
    row = figures(run, catalog, large, spent)
    row["route_switches"] = system.counts().get("load_switch", 0) - before
    tag(
        f"{policy:<16} accuracy {row['accuracy']:.4f}  large {row['large_share']:.1%}  "
        f"compute {row['relative_cost']:.3f}  total {_us(row['total_cpu_us'])} us CPU  "
        f"{row['throughput_rps']:.0f} req/s  "
        f"expired {row['expired']}  lost {row['lost']}"
    )
    return {"policy": policy, **{k: row[k] for k in ROW_FIELDS if k != "policy"}}


def _redis_per_hop(system: System, client: Any, data: Data) -> float | None:
    """The training traffic, with Redis's CPU per hop measured over it (INFO cpu)."""
    from cascadeq.ops.published import RedisSampler  # noqa: PLC0415

    r = connect(system.url)
    try:
        sampler = RedisSampler(r, system.settings.keys(), sorted(system.catalog().models))
        sampler.sample()
        run_burst(client, policy_requests("cascade", data, system.catalog()), data.y)
        per_answered, hops = sampler.sample()
    finally:
        r.close()
    return per_answered / hops if per_answered is not None and hops else None


def warm_up(client: Any, x: np.ndarray, catalog: Catalog) -> None:
    """Proves router and workers are serving before anything is timed."""
    from cascadeq.producer import Request  # noqa: PLC0415

    targets: list[dict[str, Any]] = [{"model": m} for m in catalog.models]
    targets += [{"task": t} for t in catalog.tasks]
    client.wait_many(client.submit_many([Request({"input": x[:1]}, **t) for t in targets]), 120)


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'policy':<16}{'accuracy':>9}{'large%':>8}{'compute':>8}{'total us':>9}{'req/s':>8}"
        f"{'p50 ms':>8}{'p99 ms':>8}{'expired':>8}{'lost':>6}{'switches':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['policy']:<16}{r['accuracy']:>9.4f}{r['large_share'] * 100:>7.1f}%"
            f"{r['relative_cost']:>8.3f}{_us(r['total_cpu_us']):>9}{r['throughput_rps']:>8.0f}"
            f"{r['p50_ms']:>8.1f}{r['p99_ms']:>8.1f}{r['expired']:>8}{r['lost']:>6}"
            f"{r['route_switches']:>9}"
        )
    lines.append(
        "compute: the models' compute relative to large-only; total us: CPU per answered "
        "request of every process (producer, router, workers, Redis), compute included"
    )
    return "\n".join(lines)


def main(settings: Settings, models_dir: Path, *, as_json: bool, spike: int = 20) -> int:
    from cascadeq.examples import digits  # noqa: PLC0415
    from cascadeq.producer import Producer  # noqa: PLC0415

    digits.ensure_built(models_dir, log=tag)
    val, test = (np.load(models_dir / f) for f in (digits.VAL_FILE, digits.TEST_FILE))
    val_data, test_data = Data(val["X"], val["y"]), Data(test["X"], test["y"])
    spike_data = Data(np.tile(test_data.x, (spike, 1)), np.tile(test_data.y, spike))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cascadeq-dms-") as tmp:
        path = prepare(models_dir, Path(tmp))
        with live_system(settings, path, "bench-dms", workers=WORKERS) as system:
            with Producer(system.url, settings=system.settings, catalog=system.catalog()) as c:
                warm_up(c, val_data.x, system.catalog())
                tag(f"training traffic: {len(val_data.y)} validation requests, traces logged")
                redis_hop = _redis_per_hop(system, c, val_data)
            learned = add_learned_task(path, system, redis_hop)
            system.restart()
            with Producer(system.url, settings=system.settings, catalog=system.catalog()) as c:
                warm_up(c, val_data.x, system.catalog())
                for policy in POLICIES:
                    data = spike_data if policy == "load-spike" else test_data
                    rows.append(run_policy(c, system, policy, data))
            memory = system.memory()
            large = system.catalog().tasks[TASK].cascade[-1].model
    print(render(rows))
    if as_json:
        doc = {
            "rows": rows,
            "workers": WORKERS,
            "models": memory,
            "large": large,
            "learned": learned,
        }
        print(json.dumps(doc))
    return 0
