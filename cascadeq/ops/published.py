"""What routers and workers published about their own CPU, read back for the tools.

`cascadeq stats` and `cascadeq cost` show the cost per answered request as the CPU of
every role plus Redis's plus the models' compute, next to compute alone; the learned
router's training and calibration weigh a hop by it. No benchmark run is needed: roles
publish their figures as they serve (cascadeq/infra/cpu.py). Redis's own share is INFO
cpu over an interval divided by the requests answered in it, so it needs two readings.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from cascadeq.infra.cpu import Totals, redis_cpu_seconds, role_figure
from cascadeq.protocol.keys import Keys

DEFAULT_SAMPLE_S = 1.0  # the interval Redis's CPU is measured over by a one-shot read


@dataclass(frozen=True)
class ModelCpu:
    cpu_us: float | None  # workers' CPU per request handled, compute included
    compute_us: float  # compute per sample, from the observed batches (0: none yet)


@dataclass(frozen=True)
class Published:
    router_us: float | None
    models: dict[str, ModelCpu]
    redis_us: float | None = None  # per answered request, when measured
    hops: float | None = None  # model hops per answered request over that interval

    @property
    def redis_per_hop_us(self) -> float | None:
        if self.redis_us is None or not self.hops:
            return None
        return self.redis_us / self.hops

    def hop_us(self, model: str, fallback: float | None = None) -> float | None:
        """A hop's cost beyond the model's compute: its workers' own work plus Redis's
        share of a hop; ``fallback`` (a CLI figure) where nothing was published."""
        m = self.models.get(model)
        if m is None or m.cpu_us is None:
            return fallback
        return max(0.0, m.cpu_us - m.compute_us) + (self.redis_per_hop_us or 0.0)


def hop_figures(
    r: redis.Redis | None,
    keys: Keys,
    models: Sequence[str],
    fallback: float | None = None,
    redis_hop_us: float | None = None,
) -> tuple[dict[str, float], str]:
    """Per model, a hop's cost beyond compute in µs, and where the figures came from:
    published where the workers published, else ``fallback`` (a CLI figure, taken as
    whole), else none. Redis's share of a published hop is ``redis_hop_us`` when the
    caller sampled it over traffic (RedisSampler), else left out."""
    pub = Published(None, {})
    if r is not None:
        try:
            pub = read(r, keys, models)
        except redis.RedisError:
            pub = Published(None, {})
    out: dict[str, float] = {}
    sources: set[str] = set()
    for model in models:
        value = pub.hop_us(model)
        if value is not None:
            out[model] = value + (redis_hop_us or 0.0)
            sources.add("published" + ("+redis" if redis_hop_us is not None else ""))
        elif fallback is not None:
            out[model] = fallback
            sources.add("given")
    return out, "+".join(sorted(sources)) or "none (compute only)"


def read(r: redis.Redis, keys: Keys, models: Sequence[str]) -> Published:
    """Every model's and the router's published figures, in one pipeline."""
    pipe = r.pipeline(transaction=False)
    pipe.hgetall(keys.role_cpu("router"))
    for model in models:
        pipe.hgetall(keys.observed(model))
    replies = pipe.execute()
    router = role_figure(replies[0])
    out: dict[str, ModelCpu] = {}
    for model, raw in zip(models, replies[1:], strict=True):
        values = _floats(raw)
        batch = values.get("batch", 0.0)
        compute = values.get("compute_ms", 0.0) / batch * 1000.0 if batch > 0 else 0.0
        out[model] = ModelCpu(role_figure(raw), compute)
    return Published(router, out)


def _floats(raw: Mapping[Any, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in (raw or {}).items():
        try:
            out[k.decode() if isinstance(k, bytes) else str(k)] = float(v)
        except (TypeError, ValueError):
            continue
    return out


def _answered_and_handled(r: redis.Redis, keys: Keys, models: Sequence[str]) -> tuple[int, int]:
    pipe = r.pipeline(transaction=False)
    for model in models:
        pipe.hmget(keys.model_totals(model), ["answered", "processed"])
    answered = handled = 0
    for a, n in pipe.execute():
        answered += int(a or 0)
        handled += int(n or 0)
    return answered, handled


@dataclass
class RedisSampler:
    """Redis's CPU per answered request between two readings (INFO cpu, answer totals).

    The server's CPU is everyone's: on a shared Redis it counts other prefixes' traffic.
    """

    r: redis.Redis
    keys: Keys
    models: Sequence[str]
    last: tuple[float, int, int] | None = None

    def reading(self) -> tuple[float, int, int]:
        return (redis_cpu_seconds(self.r), *_answered_and_handled(self.r, self.keys, self.models))

    def sample(self) -> tuple[float | None, float | None]:
        """(µs per answered request, hops per answered request) since the last call."""
        now = self.reading()
        last, self.last = self.last, now
        if last is None or now[1] <= last[1]:
            return None, None
        answered = now[1] - last[1]
        return (now[0] - last[0]) / answered * 1e6, (now[2] - last[2]) / answered

    def over(self, seconds: float, stop: threading.Event | None = None) -> tuple[Any, Any]:
        """A sample over ``seconds`` of whatever traffic there is (one-shot tools)."""
        self.sample()
        (stop or threading.Event()).wait(seconds)
        return self.sample()


def totals(doc: Mapping[str, Mapping[str, Any]], pub: Published) -> Totals | None:
    """Cost per answered request over the stats window: each model's workers' CPU times the
    requests they handled, the router's once per request, Redis's as sampled."""
    answered = sum(float(m.get("answered_per_s", 0.0)) for m in doc.values())
    if answered <= 0:
        return None
    roles: dict[str, float] = {}
    compute = 0.0
    for model, m in doc.items():
        cpu = pub.models.get(model, ModelCpu(None, 0.0))
        handled = float(m.get("processed_per_s", 0.0)) / answered
        samples = handled * max(1.0, float(m.get("samples_per_request", 1.0)))
        compute += cpu.compute_us * samples
        if cpu.cpu_us is not None:
            roles[f"worker:{model}"] = cpu.cpu_us * handled
    if pub.router_us is not None:
        roles["router"] = pub.router_us
    return Totals(roles, pub.redis_us, compute)
