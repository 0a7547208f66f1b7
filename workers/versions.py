"""Which version of a model answers each request, and its figures per version.

A request pinned to a version (``Header.version``) gets it; otherwise a canary's share
of requests, chosen by a hash of the id (deterministic: a retry lands on the same
version), get the canary, and the rest the active version. A model with one version
looks at no header: its batch runs whole, as before.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from cascadeq.config.catalog import ModelSpec
from cascadeq.protocol.bundle import Header
from cascadeq.workers.batcher import Item

Runnable = list[tuple[Item, int]]  # items and their entry numbers in the batch's commit
HASH_SPAN = 2.0**32


def canary_point(request_id: str) -> float:
    """Where an id falls in [0, 1): under the canary's share, the canary answers it."""
    return zlib.crc32(request_id.encode()) / HASH_SPAN


@dataclass
class Versions:
    """A model's versions as this worker serves them now."""

    spec: ModelSpec  # at its active version

    @property
    def mixed(self) -> bool:
        return len(self.spec.version_names()) > 1

    def serving(self) -> list[str]:
        """The versions requests go to by default: the active one and any canary."""
        canary = self.spec.canary
        return [self.spec.version] + ([canary.version] if canary else [])

    def version_of(self, header: Header) -> str:
        if header.version is not None:
            return header.version
        canary = self.spec.canary
        if canary is not None and canary_point(header.id) < canary.share:
            return canary.version
        return self.spec.version

    def split(self, items: Runnable) -> list[tuple[str, Runnable]]:
        """The batch by version; an entry whose requests differ is split by masks."""
        if not self.mixed:
            return [(self.spec.version, items)]
        groups: dict[str, Runnable] = {}
        for item, entry in items:
            kept = np.flatnonzero(item.keep)
            chosen = [self.version_of(item.headers[j]) for j in kept.tolist()]
            if chosen.count(chosen[0]) == len(chosen):
                groups.setdefault(chosen[0], []).append((item, entry))
                continue
            picked = np.asarray(chosen)
            for version in dict.fromkeys(chosen):
                keep = np.zeros_like(item.keep)
                keep[kept[picked == version]] = True
                part = Item(item.bundle, item.read_at, keep, int(item.bundle.rows[keep].sum()))
                groups.setdefault(version, []).append((part, entry))
        return list(groups.items())


@dataclass
class VersionFigures:
    """One batch interval's figures per version, added to the model's version hash."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    providers: dict[str, str] = field(default_factory=dict)  # version -> the one that ran

    def ran(
        self, version: str, provider: str, requests: int, samples: int, compute_ms: float
    ) -> None:
        self.providers[version] = provider
        self.add(version, requests=requests, samples=samples, batches=1)
        self.add(version, compute_us=int(compute_ms * 1000))

    def add(self, version: str, **figures: int) -> None:
        mine = self.counts.setdefault(version, {})
        for name, n in figures.items():
            mine[name] = mine.get(name, 0) + n

    def confidence(self, version: str, out: np.ndarray, kind: str) -> None:
        """The sum of top-class probabilities, in millionths (a hash holds integers)."""
        if kind != "probabilities" or out.ndim != 2 or not len(out):
            return
        top = out.max(axis=1).astype(np.float64)
        self.add(version, conf_micro=int(top.sum() * 1e6), conf_n=len(top))

    def agreement(self, version: str, answered: np.ndarray, shadow: np.ndarray) -> None:
        """How many samples the canary's top class matches the active version's."""
        if answered.ndim != 2 or answered.shape != shadow.shape:
            return
        same = int((answered.argmax(axis=1) == shadow.argmax(axis=1)).sum())
        self.add(version, agree=same, compared=len(answered))

    def take(self) -> dict[str, dict[str, int]]:
        out, self.counts = self.counts, {}
        return out
