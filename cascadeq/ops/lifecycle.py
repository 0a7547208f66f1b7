"""`cascadeq models publish | promote | rollback | compare`: a model's versions in
production, switched without restarting anything.

publish checks a catalog the way a worker will (each version's checksum, signature and
a warm-up batch) before routers and workers see it; promote makes a canary the active
version, rollback takes the canary away, or, with none, goes back to the active version
the catalog had before; each is a publish of the edited catalog (infra/catalogs.py).
compare prints the figures workers keep per version (workers/versions.py).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

import redis
import tomlkit

from cascadeq.config.catalog import Catalog, CatalogError, ModelSpec
from cascadeq.config.settings import Settings
from cascadeq.infra import catalogs
from cascadeq.infra.connection import connect
from cascadeq.protocol import wire
from cascadeq.protocol.errors import EXIT_USAGE
from cascadeq.protocol.keys import Keys


def _connect(settings: Settings) -> tuple[redis.Redis, Keys]:
    return connect(settings.require_redis_url(), name="cq-models"), settings.keys()


def describe(spec: ModelSpec) -> str:
    canary = spec.canary
    text = f"model {spec.name}: active {spec.version}"
    if canary is not None:
        text += f", canary {canary.version} at {canary.share:.0%}"
    return text + f" (versions {', '.join(spec.version_names())})"


def validate(catalog: Catalog, progress: Any = print) -> None:
    """Every version of every model, as a worker would load it; raises ModelLoadError."""
    from cascadeq.workers.runner import OnnxRunner  # noqa: PLC0415 - the core imports roles lazily

    for spec in catalog.models.values():
        for version in spec.version_names():
            runner = OnnxRunner(spec.at(version))
            progress(f"  {spec.name} {version}: valid ({runner.provider})")


def publish(settings: Settings, path: str) -> int:
    from cascadeq.workers.runner import ModelLoadError  # noqa: PLC0415 - roles lazily

    try:
        catalog = Catalog.load(path)
        print(f"validating {path}")
        validate(catalog)
    except (CatalogError, ModelLoadError) as exc:
        print(f"not published: {exc}", file=sys.stderr)
        return EXIT_USAGE
    r, keys = _connect(settings)
    return _published(r, keys, catalog)


def _published(r: redis.Redis, keys: Keys, catalog: Catalog) -> int:
    changed = catalogs.publish(r, keys, catalog)
    for spec in catalog.models.values():
        print(describe(spec))
    print("published: routers and workers switch within seconds" if changed else "unchanged")
    return 0


def _current(r: redis.Redis, keys: Keys, model: str) -> tuple[dict[str, Any], Catalog] | None:
    doc = catalogs.read(r, keys)
    if doc is None:
        print("no catalog is published: run `cascadeq models publish CATALOG`", file=sys.stderr)
        return None
    catalog = catalogs.parse(doc)
    if model not in catalog.models:
        print(f"unknown model {model!r}; the catalog has {sorted(catalog.models)}", file=sys.stderr)
        return None
    return doc, catalog


def _edited(doc: Mapping[str, Any], model: str, active: str | None) -> Catalog:
    """The published catalog with ``model``'s canary removed (and ``active`` set)."""
    toml = tomlkit.parse(str(doc["text"]))
    table: Any = toml["models"][model]
    if active is not None:
        table["active"] = active
    if "canary" in table:
        del table["canary"]
    return Catalog.loads(tomlkit.dumps(toml), source=str(doc["source"]))


def promote(settings: Settings, model: str) -> int:
    """The canary becomes the active version and takes all the traffic."""
    r, keys = _connect(settings)
    found = _current(r, keys, model)
    if found is None:
        return EXIT_USAGE
    doc, catalog = found
    canary = catalog.models[model].canary
    if canary is None:
        print(f"model {model} has no canary to promote", file=sys.stderr)
        return EXIT_USAGE
    print(f"promoting {model} {canary.version} (was {catalog.models[model].version})")
    return _published(r, keys, _edited(doc, model, canary.version))


def rollback(settings: Settings, model: str) -> int:
    """Drop the canary; with none, make active the version active before the current."""
    r, keys = _connect(settings)
    found = _current(r, keys, model)
    if found is None:
        return EXIT_USAGE
    doc, catalog = found
    spec = catalog.models[model]
    if spec.canary is not None:
        print(f"rolling back {model}: canary {spec.canary.version} removed")
        return _published(r, keys, _edited(doc, model, None))
    before = _previous_active(r, keys, model, spec)
    if before is None:
        print(f"model {model}: no earlier active version to roll back to", file=sys.stderr)
        return EXIT_USAGE
    print(f"rolling back {model}: active {spec.version} -> {before}")
    return _published(r, keys, _edited(doc, model, before))


def _previous_active(r: redis.Redis, keys: Keys, model: str, spec: ModelSpec) -> str | None:
    history: Any = r.lrange(keys.catalog_history, 0, -1)
    for raw in history:
        try:
            old = catalogs.parse(wire.loads_map(raw, "catalog"), check_files=False)
        except (CatalogError, KeyError, wire.WireError):
            continue
        there = old.models.get(model)
        if there is not None and there.version != spec.version:  # noqa: SIM102 - two reasons
            if there.version in spec.version_names():
                return there.version
    return None


def figures(r: redis.Redis, keys: Keys, model: str) -> dict[str, dict[str, Any]]:
    """The workers' figures per version of ``model`` (workers/versions.py, sessions.py)."""
    raw: Any = r.hgetall(keys.model_versions(model))
    out: dict[str, dict[str, Any]] = {}
    for k, v in raw.items():
        name = k.decode() if isinstance(k, bytes) else str(k)
        version, _, figure = name.partition(":")
        value = v.decode() if isinstance(v, bytes) else str(v)
        out.setdefault(version, {})[figure] = int(value) if value.lstrip("-").isdigit() else value
    return out


def summary(spec: ModelSpec, raw: Mapping[str, Any]) -> dict[str, Any]:
    """One version's figures as `compare` and `stats` show them."""
    requests, batches = raw.get("requests", 0), raw.get("batches", 0)
    samples, conf_n, compared = raw.get("samples", 0), raw.get("conf_n", 0), raw.get("compared", 0)
    role = "active" if raw.get("version") == spec.version else "canary"
    return {
        "role": role,
        "requests": requests,
        "confidence": round(raw.get("conf_micro", 0) / 1e6 / conf_n, 4) if conf_n else None,
        "agreement": round(raw.get("agree", 0) / compared, 4) if compared else None,
        "compute_ms_per_batch": round(raw.get("compute_us", 0) / 1000 / batches, 3)
        if batches
        else None,
        "compute_us_per_sample": round(raw.get("compute_us", 0) / samples, 1) if samples else None,
        "provider": raw.get("provider"),
        "resident_mb": round(raw.get("resident_bytes", 0) / 2**20, 1),
        "loads": raw.get("loads", 0),
        "evictions": raw.get("evictions", 0),
        "load_ms": round(raw.get("load_us", 0) / 1000, 1),
        "refused": raw.get("refused"),
    }


def version_rows(r: redis.Redis, keys: Keys, spec: ModelSpec) -> dict[str, dict[str, Any]]:
    """Every version of ``spec`` with figures or a role: active, canary, inactive."""
    seen = figures(r, keys, spec.name)
    shown = [spec.version] + ([spec.canary.version] if spec.canary else [])
    shown += [v for v in seen if v not in shown]
    rows = {v: summary(spec, {**seen.get(v, {}), "version": v}) for v in shown}
    for v, row in rows.items():
        if v not in (spec.version, spec.canary.version if spec.canary else None):
            row["role"] = "inactive"
    return rows


def compare(settings: Settings, model: str, as_json: bool = False) -> int:
    """The active version and the canary (or every version seen) side by side."""
    r, keys = _connect(settings)
    found = _current(r, keys, model)
    if found is None:
        return EXIT_USAGE
    spec = found[1].models[model]
    rows = version_rows(r, keys, spec)
    if as_json:
        print(json.dumps({"model": model, "versions": rows}))
        return 0
    print(describe(spec))
    print(f"{'version':<9}{'role':<9}" + "".join(f"{h:>{w}}" for h, w, _ in COLUMNS))
    for v, row in rows.items():
        cells = "".join(f"{_cell(row[key]):>{w}}" for _, w, key in COLUMNS)
        print(f"{v:<9}{row['role']:<9}{cells}")
    print("confidence: mean top-class probability; agreement: share of the canary's answers")
    print("whose top class the active version gives too; ms/batch, us/sample: compute time")
    return 0


COLUMNS = (  # heading, width, figure
    ("requests", 10, "requests"),
    ("confidence", 12, "confidence"),
    ("agreement", 11, "agreement"),
    ("ms/batch", 10, "compute_ms_per_batch"),
    ("us/sample", 11, "compute_us_per_sample"),
    ("provider", 22, "provider"),
)


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)
