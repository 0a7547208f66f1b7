"""Process-wide settings: one frozen dataclass, read once from the environment.

Roles receive a ``Settings`` instead of long keyword lists, so every knob has one
name, one default and one place to document it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from cascadeq.protocol.errors import ConfigError
from cascadeq.protocol.keys import Keys

#: URL schemes naming a Redis Cluster (any one node of it), and the node URL's scheme.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0] in CLUSTER_SCHEMES


def as_cluster_url(url: str) -> str:
    """``redis://h:p`` as ``redis+cluster://h:p``; a cluster URL stays as it is."""
    scheme, sep, rest = url.partition("://")
    if scheme in CLUSTER_SCHEMES or not sep:
        return url
    return f"{scheme}+cluster://{rest}"


class SettingsError(ConfigError, ValueError):
    """An environment variable holds a value of the wrong type."""


@dataclass(frozen=True)
class Settings:
    """Every tunable of every role; env var ``CASCADEQ_<FIELD>`` overrides a default."""

    # None: unset; every role and client refuses to start and says to set REDIS_URL.
    # Only `cascadeq demo`, the benchmarks and the tests start an embedded redis-server.
    redis_url: str | None = None
    catalog: str | None = None  # path of the catalog TOML
    prefix: str = "cq"  # namespace of every Redis key (one deployment per prefix)
    result_ttl_s: int = 3600  # how long a final result stays readable
    visibility_timeout_ms: int = 30_000  # idle time after which pending entries are reclaimed
    max_deliveries: int = 5  # deliveries before an entry is dead-lettered
    ingress_max_depth: int = 100_000  # submit raises Rejected past this backlog
    model_max_depth: int = 100_000  # per model stream: submit refuses, routers hold off
    max_payload_bytes: int = 8 * 1024 * 1024  # largest encoded inputs of one request
    block_ms: int = 1000  # longest blocking read, bounds shutdown latency
    router_batch: int = 256  # requests a router reads per call (in whole entries: bundles)
    trim_every_s: float = 1.0  # how often acknowledged stream entries are trimmed
    log_level: str = "info"
    log_format: str = "auto"  # json | console | auto (console on a terminal)
    metrics_port: int = 0  # routers and workers serve Prometheus /metrics here; 0: off
    fallback_wait_ms: int = 1000  # a queue held at its bound this long: route to its fallback
    start_traces: int = 0  # 1: the producer starts a W3C traceparent where none is given
    # A worker keeps its models' sessions within this many MB of resident memory, least
    # recently used evicted first and loaded again on demand; 0: no bound.
    memory_budget_mb: float = 0.0
    cluster: int = 0  # 1: REDIS_URL names a node of a Redis Cluster (or use redis+cluster://)
    ingress_shards: int = 1  # ingress streams, each with its own slot (hash tag) on a cluster
    submit_replicas: int = 0  # submit returns once this many replicas have it (WAIT); 0: off
    submit_wait_ms: int = 2000  # how long a submit waits for them before it raises

    @property
    def pending_ttl_s(self) -> int:
        """How long a submitted id without a result reads as "not ready" (then "unknown").

        The result TTL plus every redelivery a request may go through (visibility timeout
        times max deliveries); a request still queued after that reads as unknown.
        """
        return self.result_ttl_s + math.ceil(
            self.visibility_timeout_ms * self.max_deliveries / 1000
        )

    def require_redis_url(self) -> str:
        """The URL, or one clear error instead of a client failing somewhere deeper."""
        if not self.redis_url:
            raise ConfigError(
                "REDIS_URL is not set: point it at Redis (export REDIS_URL=redis://host:6379/0), "
                "or run `cascadeq demo`, which starts its own"
            )
        return self.url_for(self.redis_url)

    def shard_bounds(self) -> tuple[int, int]:
        """The ingress and model-stream bounds of one shard: the totals split evenly, so a
        full shard refuses while the sum over shards stays within the configured bound."""
        n = self.ingress_shards
        if n == 1:
            return self.ingress_max_depth, self.model_max_depth
        return -(-self.ingress_max_depth // n), -(-self.model_max_depth // n)

    def url_for(self, url: str) -> str:
        """``url``, as a ``redis+cluster://`` URL when ``cluster`` is set."""
        return as_cluster_url(url) if self.cluster else url

    def keys(self, url: str | None = None) -> Keys:
        """The key names of this deployment: hash-tagged by shard on a cluster."""
        on_cluster = bool(self.cluster) or is_cluster_url(url or self.redis_url or "")
        if self.ingress_shards < 1:
            raise SettingsError(f"ingress_shards is {self.ingress_shards}; it must be at least 1")
        return Keys(self.prefix, self.ingress_shards, on_cluster)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``CASCADEQ_*`` variables (and REDIS_URL), then overrides."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"CASCADEQ_{f.name.upper()}")
            if f.name == "redis_url":
                raw = env.get("REDIS_URL", raw)
            if raw is None or raw == "":
                continue
            values[f.name] = _coerce(f.name, str(f.type), raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)


def _coerce(name: str, type_name: str, raw: str) -> Any:
    try:
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("float"):
            return float(raw)
    except ValueError as exc:
        raise SettingsError(
            f"CASCADEQ_{name.upper()}={raw!r} is not a number; set it to a number or unset it"
        ) from exc
    return raw
