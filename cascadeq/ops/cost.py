"""`cascadeq cost`: instances and money for a target load, large-only versus the cascade.

Inputs are measurements, not guesses: throughput per worker process (a bench or demo
JSON's rows, or `cascadeq stats --json`, whose rates are capacities only under a
saturating load), and the memory each model's ONNX session added at load (workers
record it in Redis; `stats --json` and the bench JSONs carry it). One worker process
per vCPU is assumed, each holding the models it serves; an instance fits as many as
its RAM (less a reserve for the OS) holds, at most one per vCPU.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from cascadeq.protocol.errors import ConfigError

MIB = 1024 * 1024
SECONDS_PER_MONTH = 30.44 * 24 * 3600  # the average month, as providers bill
DEFAULT_BASE_MB = 150  # a worker process without models, when the input does not say


class CostInputError(ConfigError, ValueError):
    """The measurements or the price table cannot be used; the message says why."""


@dataclass(frozen=True)
class Instance:
    name: str
    provider: str
    price_month: float
    currency: str
    ram_bytes: int
    vcpus: int


@dataclass(frozen=True)
class Measured:
    """Per worker process: requests/s for each way of serving, and memory."""

    source: str
    large_only_rps: float
    cascade_rps: float
    large_only_models: tuple[str, ...]
    cascade_models: tuple[str, ...]
    model_bytes: dict[str, int]
    base_bytes: int  # a worker process before its models
    # per way: CPU µs per answered request, total (every role and Redis) and compute only
    cpu_us: dict[str, dict[str, float | None]] = field(default_factory=dict)

    def process_bytes(self, models: tuple[str, ...]) -> int:
        return self.base_bytes + sum(self.model_bytes.get(m, 0) for m in models)


@dataclass(frozen=True)
class Plan:
    instance: str
    currency: str
    way: str  # large-only | cascade
    fits: bool
    process_mb: float
    workers_per_instance: int
    instances: int | None
    monthly: float | None
    per_million: float | None


def load_prices(extra: Path | None = None) -> list[Instance]:
    """The shipped table, then the user's rows (a row with a shipped name replaces it)."""
    text = resources.files("cascadeq").joinpath("data/prices.toml").read_text("utf-8")
    rows = {i.name: i for i in _instances(text, "cascadeq/data/prices.toml")}
    if extra is not None:
        rows.update({i.name: i for i in _instances(extra.read_text("utf-8"), str(extra))})
    return list(rows.values())


def _instances(text: str, source: str) -> list[Instance]:
    try:
        doc = tomllib.loads(text)
        return [
            Instance(
                name=str(row["name"]),
                provider=str(row.get("provider", row["name"])),
                price_month=float(row["price_month"]),
                currency=str(row["currency"]),
                ram_bytes=int(float(row["ram_gb"]) * 1024 * MIB),
                vcpus=int(row["vcpus"]),
            )
            for row in doc.get("instance", [])
        ]
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CostInputError(
            f"{source}: each [[instance]] needs name, price_month, currency, ram_gb and "
            f"vcpus ({exc!r})"
        ) from exc


def measured(doc: dict[str, Any], base_mb: float | None = None) -> Measured:
    """From a bench/demo JSON (``rows``) or a `stats --json` document (``models``)."""
    if "rows" in doc:
        return _from_rows(doc, base_mb)
    if "models" in doc:
        return _from_stats(doc, base_mb)
    raise CostInputError("the input JSON has neither 'rows' (bench, demo) nor 'models' (stats)")


def _base(models: dict[str, Any], base_mb: float | None) -> int:
    if base_mb is not None:
        return int(base_mb * MIB)
    rss = max((int(m.get("worker_rss_bytes", 0)) for m in models.values()), default=0)
    loaded = sum(int(m.get("memory_bytes", 0)) for m in models.values())
    return rss - loaded if rss > loaded else DEFAULT_BASE_MB * MIB


def _from_rows(doc: dict[str, Any], base_mb: float | None) -> Measured:
    rows = {str(r.get("strategy", r.get("policy"))): r for r in doc["rows"]}
    if "large-only" not in rows or "cascade" not in rows:
        raise CostInputError("the rows need a 'large-only' and a 'cascade' row")
    workers = int(doc.get("workers", 1))
    models: dict[str, Any] = doc.get("models", {})
    names = tuple(models) or ("large",)
    # The large model: named by the input, else the one whose session took most memory.
    large = str(
        doc.get("large") or max(names, key=lambda n: models.get(n, {}).get("memory_bytes", 0))
    )
    return Measured(
        source="bench rows",
        large_only_rps=float(rows["large-only"]["throughput_rps"]) / workers,
        cascade_rps=float(rows["cascade"]["throughput_rps"]) / workers,
        large_only_models=(large,),
        cascade_models=names,
        model_bytes={k: int(v.get("memory_bytes", 0)) for k, v in models.items()},
        base_bytes=_base(models, base_mb),
        cpu_us={way: _cpu(rows[way]) for way in ("large-only", "cascade")},
    )


def _cpu(row: dict[str, Any]) -> dict[str, float | None]:
    total, compute = row.get("total_cpu_us"), row.get("compute_us")
    return {
        "total": None if total is None else float(total),
        "compute": None if compute is None else float(compute),
    }


def _stats_cpu(doc: dict[str, Any], large: str) -> dict[str, dict[str, float | None]]:
    """The cascade as it ran (the window), and large-only estimated from what was
    published: a request's router share, the large model's workers' CPU, one hop of Redis."""
    figures = doc.get("cost") or {}
    out = {"cascade": _cpu(figures)}
    big = doc["models"].get(large, {})
    cpu, compute = big.get("cpu_us_per_request"), big.get("compute_us_per_sample")
    redis_us, hops = figures.get("redis_us"), figures.get("hops")
    if cpu is None:
        out["large-only"] = {"total": None, "compute": compute}
        return out
    redis_hop = float(redis_us) / float(hops) if redis_us is not None and hops else 0.0
    total = float(cpu) + float(figures.get("router_us") or 0.0) + redis_hop
    out["large-only"] = {"total": total, "compute": compute}
    return out


def _from_stats(doc: dict[str, Any], base_mb: float | None) -> Measured:
    """The cascade's order is by escalation rate (the last model escalates nothing)."""
    models = {k: v for k, v in doc["models"].items() if v.get("processed_per_s", 0) > 0}
    if not models:
        raise CostInputError("no model processed anything in the last minute of these stats")
    chain = sorted(models, key=lambda m: -float(models[m].get("escalation_rate", 0.0)))
    seconds, reach = 0.0, 1.0  # worker-seconds per request through the cascade
    for m in chain:
        seconds += reach / _per_worker(models[m])
        reach *= float(models[m].get("escalation_rate", 0.0))
    large = chain[-1]
    return Measured(
        source="stats (capacity only if the load was saturating)",
        large_only_rps=_per_worker(models[large]),
        cascade_rps=1.0 / seconds,
        large_only_models=(large,),
        cascade_models=tuple(chain),
        model_bytes={k: int(v.get("memory_bytes", 0)) for k, v in models.items()},
        base_bytes=_base(models, base_mb),
        cpu_us=_stats_cpu(doc, large),
    )


def _per_worker(m: dict[str, Any]) -> float:
    return float(m["processed_per_s"]) / max(1, int(m.get("consumers", 1)))


def plan(m: Measured, inst: Instance, way: str, target_rps: float, reserve_mb: float = 256) -> Plan:
    rps = m.large_only_rps if way == "large-only" else m.cascade_rps
    models = m.large_only_models if way == "large-only" else m.cascade_models
    need = m.process_bytes(models)
    room = inst.ram_bytes - int(reserve_mb * MIB)
    per_instance = min(inst.vcpus, room // need if need > 0 else inst.vcpus)
    common = {"instance": inst.name, "currency": inst.currency, "way": way}
    mb = round(need / MIB, 1)
    if per_instance <= 0 or rps <= 0:
        return Plan(
            **common,
            fits=per_instance > 0,
            process_mb=mb,
            workers_per_instance=max(0, per_instance),
            instances=None,
            monthly=None,
            per_million=None,
        )
    instances = max(1, math.ceil(target_rps / (per_instance * rps)))
    monthly = instances * inst.price_month
    return Plan(
        **common,
        fits=True,
        process_mb=mb,
        workers_per_instance=per_instance,
        instances=instances,
        monthly=round(monthly, 2),
        per_million=monthly / (target_rps * SECONDS_PER_MONTH) * 1e6,
    )


def plans(
    m: Measured, prices: list[Instance], target_rps: float, reserve_mb: float = 256
) -> list[Plan]:
    return [
        plan(m, inst, way, target_rps, reserve_mb)
        for inst in prices
        for way in ("large-only", "cascade")
    ]


def render(m: Measured, rows: list[Plan], target_rps: float) -> str:
    head = (
        f"{'instance':<20}{'way':<12}{'fits':>5}{'MB/proc':>9}{'procs':>6}"
        f"{'instances':>10}{'per month':>14}{'per 1M inf':>14}"
    )
    lines = [
        f"target {target_rps:g} req/s; per worker process: large-only {m.large_only_rps:.1f} "
        f"req/s, cascade {m.cascade_rps:.1f} req/s (from {m.source})",
        head,
        "-" * len(head),
    ]
    for p in rows:
        money = (
            (f"{p.monthly:.2f} {p.currency}", f"{p.per_million:.4f} {p.currency}")
            if p.monthly is not None and p.per_million is not None
            else ("-", "-")
        )
        lines.append(
            f"{p.instance:<20}{p.way:<12}{'yes' if p.fits else 'no':>5}{p.process_mb:>9.0f}"
            f"{p.workers_per_instance:>6}{p.instances if p.instances else '-':>10}"
            f"{money[0]:>14}{money[1]:>14}"
        )
    lines.append("costs are in each row's own currency; none is converted")
    lines.append(cpu_line(m))
    return "\n".join(lines)


def cpu_line(m: Measured) -> str:
    """Both figures per way, labelled: compute alone understates a cascade's cost."""
    if not m.cpu_us:
        return "CPU per answered request: not in this input (re-run the bench or stats)"

    def us(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    parts = [
        f"{way} total {us(f.get('total'))} us (compute only {us(f.get('compute'))} us)"
        for way, f in m.cpu_us.items()
    ]
    return (
        "CPU per answered request, every role and Redis (compute included): "
        + "; ".join(parts)
        + ("; large-only estimated from published figures" if "stats" in m.source else "")
    )


def main(
    source: Path,
    target_rps: float,
    *,
    prices: Path | None,
    reserve_mb: float,
    base_mb: float | None,
    as_json: bool,
) -> int:
    if target_rps <= 0:
        raise CostInputError("--target-rps must be above 0")
    try:
        doc = json.loads(source.read_text("utf-8").strip().splitlines()[-1])
    except (OSError, json.JSONDecodeError, IndexError) as exc:
        raise CostInputError(f"{source}: cannot read JSON ({exc})") from exc
    m = measured(doc, base_mb)
    rows = plans(m, load_prices(prices), target_rps, reserve_mb)
    print(render(m, rows, target_rps))
    if as_json:
        print(json.dumps({"measured": asdict(m), "plans": [asdict(p) for p in rows]}))
    return 0
