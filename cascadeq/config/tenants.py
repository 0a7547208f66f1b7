"""Tenants: who a request is for, and what the catalog lets each one have.

A ``[tenants.<name>]`` table declares a tenant: ``rate`` (requests/s, with ``burst``,
a token bucket) and ``max_in_flight`` (requests submitted and not yet answered) are
enforced inside Redis by the submit script, across every producer; ``weight`` is its
share of a model's batches while others have work waiting (workers/lanes.py). A declared
tenant other than ``default`` gets its own sub-stream of every model lane, so its
requests never queue behind another tenant's; every undeclared tenant shares the lane's
base stream with ``default``, as before, and costs nothing extra anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cascadeq.config.fields import Fields
from cascadeq.protocol.keys import DEFAULT_TENANT, InvalidName, Keys, check_name

TENANT_FIELDS = ("rate", "burst", "max_in_flight", "weight")


@dataclass(frozen=True)
class TenantSpec:
    """One declared tenant's limits (None: unlimited) and fair-share weight."""

    name: str
    rate: float | None = None  # requests per second, refilled continuously
    burst: float | None = None  # bucket size; default max(1, rate)
    max_in_flight: int | None = None
    weight: float = 1.0

    @property
    def limited(self) -> bool:
        return self.rate is not None or self.max_in_flight is not None

    @property
    def bucket(self) -> float:
        """The bucket's size: ``burst``, else one second of ``rate`` (at least 1)."""
        if self.burst is not None:
            return self.burst
        return max(1.0, self.rate or 0.0)


@dataclass(frozen=True)
class Tenants:
    """The catalog's tenants; empty (nothing declared) is the single-tenant fast path."""

    specs: Mapping[str, TenantSpec] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.specs)

    def own_stream(self, tenant: str) -> str | None:
        """The tenant whose sub-stream a request of ``tenant`` joins, or None (the lane's
        base stream): only declared tenants other than default have one."""
        if tenant == DEFAULT_TENANT or tenant not in self.specs:
            return None
        return tenant

    def lane_streams(
        self, keys: Keys, model: str, lane: str, shard: int = 0
    ) -> list[tuple[str, float]]:
        """(stream, weight) of one lane (on ``shard``): its base stream (default's
        weight), then each declared tenant's sub-stream, sorted by name."""
        base = self.specs.get(DEFAULT_TENANT)
        out = [(keys.model_stream(model, lane, shard=shard), base.weight if base else 1.0)]
        for name in sorted(self.specs):
            if name != DEFAULT_TENANT:
                stream = keys.model_stream(model, lane, name, shard=shard)
                out.append((stream, self.specs[name].weight))
        return out

    def model_streams(
        self, keys: Keys, model: str, lanes: tuple[str, ...], shard: int = 0
    ) -> list[str]:
        """Every stream of a model (on ``shard``): each lane's own, then its tenants'."""
        if not self.specs:
            return [keys.model_stream(model, lane, shard=shard) for lane in lanes]
        return [s for lane in lanes for s, _ in self.lane_streams(keys, model, lane, shard)]

    def label(self, tenant: str) -> str:
        """The tenant as figures name it: undeclared ones share ``other``, so a caller's
        made-up names cannot grow the metrics without bound."""
        return tenant if tenant in self.specs or tenant == DEFAULT_TENANT else "other"

    def limited(self, tenant: str) -> TenantSpec | None:
        spec = self.specs.get(tenant)
        return spec if spec is not None and spec.limited else None

    def in_flight_counter(self, keys: Keys, tenant: str) -> str | None:
        """The counter a result of ``tenant`` decrements when stored, or None."""
        spec = self.specs.get(tenant)
        if spec is None or spec.max_in_flight is None:
            return None
        return keys.tenant_in_flight(tenant)


def parse_tenants(fields: Fields, doc: Mapping[str, Any]) -> Tenants:
    """The ``[tenants.*]`` tables; every bad field is a CatalogError naming it."""
    specs: dict[str, TenantSpec] = {}
    for name, table in doc.items():
        where = f"tenants.{name}"
        try:
            check_name("tenant", name)
        except InvalidName as exc:
            raise fields.fail(where, str(exc), "rename the table") from exc
        if not isinstance(table, dict):
            raise fields.fail(where, "must be a table", f"write it as [{where}]")
        specs[name] = parse_tenant(fields, name, table, where)
    return Tenants(specs)


def parse_tenant(fields: Fields, name: str, table: Mapping[str, Any], where: str) -> TenantSpec:
    for key in table:
        if key not in TENANT_FIELDS:
            raise fields.fail(f"{where}.{key}", "is not a tenant field", f"use {TENANT_FIELDS}")
    rate = _positive(fields, table, "rate", where)
    burst = _positive(fields, table, "burst", where)
    if burst is not None and rate is None:
        raise fields.fail(f"{where}.burst", "needs a rate", "add rate = <requests per second>")
    if burst is not None and burst < 1:
        raise fields.fail(f"{where}.burst", f"is {burst}: below one request", "set burst >= 1")
    in_flight = _positive(fields, table, "max_in_flight", where)
    if in_flight is not None and in_flight != int(in_flight):
        raise fields.fail(f"{where}.max_in_flight", "must be a whole number", "drop the fraction")
    weight = _positive(fields, table, "weight", where)
    return TenantSpec(
        name,
        rate=rate,
        burst=burst,
        max_in_flight=None if in_flight is None else int(in_flight),
        weight=1.0 if weight is None else weight,
    )


def _positive(fields: Fields, table: Mapping[str, Any], key: str, where: str) -> float | None:
    if key not in table:
        return None
    value = fields.value(table, key, where, (int, float))
    if not (math.isfinite(value) and value > 0):
        raise fields.fail(f"{where}.{key}", f"is {value!r}: must be a positive number", "fix it")
    return float(value)
