"""Every Redis key, stream, group and channel name lives here and nowhere else.

Each stream is a single key. On Redis Cluster, or with ``ingress_shards`` > 1, the keys of
one ingress shard (its stream, the model streams it feeds, their counters, the result keys
of the ids hashed to it, its dead letters) carry one hash tag, ``{<prefix>.<shard>}``, so
every script and pipeline of the hot path stays in one slot while shards spread over the
cluster's masters. Keys read across shards (catalog, figures, traces) have no tag.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

ROUTER_GROUP = "routers"
WORKER_GROUP = "workers"
DEFAULT_LANE = "default"
DEFAULT_TENANT = "default"

_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


class InvalidName(ValueError):
    """A request id, model or lane name that could reach other keys."""


def check_id(request_id: str) -> str:
    """Refuse ids that could escape their key (``:``, ``*``, spaces, braces...)."""
    if not isinstance(request_id, str) or not _ID_RE.fullmatch(request_id):
        raise InvalidName(
            f"request id {request_id!r} is invalid: use 1-64 characters from A-Z a-z 0-9 _ -"
        )
    return request_id


def stream_model(stream: str) -> str:
    """The model of a model stream name (``<prefix>:q:<model>:<lane>[:<tenant>]``)."""
    return stream.split(":q:", 1)[1].split(":", 1)[0]


def stream_tenant(stream: str) -> str | None:
    """The tenant of a tenant sub-stream (``...:q:<model>:<lane>:<tenant>``), else None."""
    parts = stream.split(":q:", 1)[1].split(":")
    return parts[2] if len(parts) == 3 else None


def check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidName(
            f"{kind} name {name!r} is invalid: use 1-64 characters from a-z 0-9 _ . -,"
            " starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix; a test or a second deployment picks another prefix."""

    prefix: str = "cq"
    shards: int = 1  # ingress shards; a request id's shard is crc32(id) % shards
    tagged: bool = False  # hash-tag each shard's keys (Redis Cluster, or shards > 1)
    _res0: str = field(init=False, repr=False, compare=False, default="")

    def __post_init__(self) -> None:
        # the result-key prefix of shard 0, worked out once: result() is per request
        object.__setattr__(self, "_res0", f"{self.base(0)}:res:")

    def base(self, shard: int = 0) -> str:
        """What one shard's keys start with: the bare prefix on one Redis with one shard
        (today's names), else ``<prefix>:{<prefix>.<shard>}``. A prefix that carries its own
        tag (``{cq}``) keeps every shard in its one slot."""
        if not (self.tagged or self.shards > 1) or "{" in self.prefix:
            return self.prefix if shard == 0 else f"{self.prefix}:s{shard}"
        return f"{self.prefix}:{{{self.prefix}.{shard}}}"

    def shard_of(self, request_id: str) -> int:
        """The ingress shard a request id goes to: any client finds its result from the id."""
        if self.shards == 1:
            return 0
        return zlib.crc32(request_id.encode()) % self.shards

    @property
    def ingress(self) -> str:
        return f"{self.base(0)}:ingress"

    def ingress_of(self, shard: int) -> str:
        return f"{self.base(shard)}:ingress"

    @property
    def ingresses(self) -> list[str]:
        return [self.ingress_of(s) for s in range(self.shards)]

    def model_stream(
        self, model: str, lane: str = DEFAULT_LANE, tenant: str | None = None, shard: int = 0
    ) -> str:
        """A model's lane (on ``shard``); with ``tenant``, that tenant's sub-stream of the
        lane (only tenants the catalog declares have one: config/tenants.py)."""
        if tenant is None:
            return f"{self.base(shard)}:q:{model}:{lane}"
        return f"{self.base(shard)}:q:{model}:{lane}:{tenant}"

    def shard_of_stream(self, stream: str) -> int:
        """The shard of one of this prefix's streams (0 for a name of no shard)."""
        for s in range(1, self.shards):
            if stream.startswith(self.base(s) + ":"):
                return s
        return 0

    def owns_stream(self, name: str) -> bool:
        """True for this prefix's ingress or a model stream: where a replay may write."""
        if name in self.ingresses:
            return True
        head, _, rest = name.partition(":q:")
        parts = rest.split(":")
        bases = {self.base(s) for s in range(self.shards)}
        return head in bases and 2 <= len(parts) <= 3 and all(map(_NAME_RE.fullmatch, parts))

    def tenant_bucket(self, tenant: str) -> str:
        """String ``<tokens> <server time, us>``: a rate-limited tenant's token bucket (a
        string under ``n:``, so the producer's ACL rule of GET/SET covers it)."""
        return f"{self.prefix}:n:tenant:{tenant}:bucket"

    def tenant_in_flight(self, tenant: str) -> str:
        """Counter of a tenant's requests submitted and not yet answered (max_in_flight):
        up in lua/submit.lua, down in lua/commit.lua when a result is stored."""
        return f"{self.prefix}:n:tenant:{tenant}"

    @property
    def tenant_counts(self) -> str:
        """Hash of per-tenant figures: ``<tenant>:answered``, ``<tenant>:rejected:<code>``."""
        return f"{self.prefix}:counts:tenants"

    def tenant_window(self, tenant: str, second: int) -> str:
        """Hash of one tenant's per-second answers and latency sketch (`cascadeq stats`);
        ``obs:tenant:<t>:s:<s>`` has one more part than any model's window."""
        return f"{self.prefix}:obs:tenant:{tenant}:s:{second}"

    def result(self, request_id: str) -> str:
        if self.shards == 1:
            return self._res0 + request_id
        return f"{self.base(self.shard_of(request_id))}:res:{request_id}"

    def result_prefix(self, shard: int = 0) -> str:
        """The result keys of one shard are this plus the id (the scripts build them)."""
        return f"{self.base(shard)}:res:"

    def digest(self, request_id: str) -> str:
        """What an idempotent submit's retry must match; beside the result key (an id has
        no ``:``, so no result key looks like it), under ``res:`` for the producer's ACL."""
        return f"{self.result(request_id)}:digest"

    @property
    def cancels(self) -> str:
        """Counter of requests cancelled (lua/cancel.lua increments it); ``res::cancels``
        is under ``res:`` for the producer's ACL, and no id is empty, so no result is it."""
        return self.cancels_of(0)

    def cancels_of(self, shard: int) -> str:
        """Each ingress shard counts its own cancels, in its slot (the cancel script and
        the workers' reads of that shard's streams touch it)."""
        return f"{self.base(shard)}:res::cancels"

    @property
    def cancel_counters(self) -> list[str]:
        return [self.cancels_of(s) for s in range(self.shards)]

    def reply_channel(self, client_id: str) -> str:
        return f"{self.prefix}:reply:{client_id}"

    @property
    def dead_letter(self) -> str:
        return f"{self.base(0)}:dlq"

    def dead_letter_of(self, shard: int) -> str:
        """Each shard keeps its dead letters in its slot, so a replay is one slot's script."""
        return f"{self.base(shard)}:dlq"

    @property
    def dead_letters(self) -> list[str]:
        return [self.dead_letter_of(s) for s in range(self.shards)]

    @property
    def catalog(self) -> str:
        return f"{self.prefix}:catalog"

    @property
    def catalog_channel(self) -> str:
        """Pub/sub channel (not a key) told of each published catalog: routers and workers
        block on it and load the new one (``cascadeq models publish``)."""
        return f"{self.prefix}:catalog"

    @property
    def catalog_history(self) -> str:
        """List of the catalogs published before, newest first: what a rollback reads."""
        return f"{self.prefix}:catalog:history"

    def model_versions(self, model: str) -> str:
        """Hash of a model's figures per version (``<version>:<figure>``, integers): what
        `cascadeq stats` and `cascadeq models compare` read; under ``counts:``."""
        return f"{self.prefix}:counts:versions:{model}"

    def observed(self, model: str) -> str:
        """Hash of a model's recent compute time, batch size and queue wait (workers write)."""
        return f"{self.prefix}:obs:{model}"

    def role_cpu(self, role: str) -> str:
        """Hash of a role's published CPU per request (routers write ``router``).

        ``obs:role:<role>`` cannot be a model's hash (a model name has no ``:``) nor a
        window's (``obs:<model>:s:<second>``)."""
        return f"{self.prefix}:obs:role:{role}"

    @property
    def routing_counts(self) -> str:
        """Hash of routing decisions and escalation outcomes by rule, for operators."""
        return f"{self.prefix}:counts:routing"

    def traces(self, task: str) -> str:
        """Capped stream of (inputs, first model's answer kept?) for `cascadeq router train`."""
        return f"{self.prefix}:traces:{task}"

    def window(self, model: str, second: int) -> str:
        """Hash of one model's per-second batch aggregates (counts, latency sketch); TTL'd.

        Under ``obs:`` so the workers' ACL rule already covers it; a model name has no
        ``:``, so it cannot collide with another model's ``obs:<model>`` hash.
        """
        return f"{self.prefix}:obs:{model}:s:{second}"

    def model_totals(self, model: str) -> str:
        """Hash of one model's running totals and its measured load memory (no TTL)."""
        return f"{self.prefix}:counts:model:{model}"

    def backlog(self, stream: str) -> str:
        """Counter of the requests in one of this prefix's streams not yet acknowledged.

        A stream entry may be a bundle of many requests, so XLEN counts entries, not
        requests: the bounds, backpressure and load rules read this counter instead. The
        scripts that add and acknowledge keep it (lua/submit.lua, lua/commit.lua).
        """
        return f"{self.prefix}:n:{stream[len(self.prefix) + 1 :]}"
