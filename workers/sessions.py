"""The ONNX Runtime sessions of a worker process, one per (model, version, file), kept in
an LRU bounded by ``memory_budget_mb`` (0: unbounded).

Each session's resident size is the process's RSS delta over its load and warm-up
(measured under the lock, so loads do not overlap), never less than its file; a reload
often reuses memory the allocator kept, so the largest measurement is kept. Past the
budget the least recently used session is dropped and loaded again on demand (the last
used always stays); a batch running on a dropped one keeps its reference until done.
Loads, evictions, load time and resident bytes go to Prometheus and, per version, to
the hash `cascadeq stats` reads.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from cascadeq.config.catalog import ModelSpec
from cascadeq.infra import metrics
from cascadeq.infra.log import get_logger
from cascadeq.workers.standin import Runner, load_runner

log = get_logger("cascadeq.worker")

Key = tuple[str, str, str]  # model, version, file


@dataclass
class Loaded:
    runner: Runner
    size: int  # resident bytes it added at load
    load_ms: float


class Sessions:
    """Validated sessions by (model, version, file), least recently used first."""

    def __init__(self, budget_mb: float = 0.0) -> None:
        self.budget = int(budget_mb * 1024 * 1024)
        self.lock = threading.Lock()
        self.loaded: OrderedDict[Key, Loaded] = OrderedDict()
        self.sizes: dict[Key, int] = {}
        #: (model, version) -> figure -> increment, taken by the next batch's commit
        self.counts: dict[tuple[str, str], dict[str, int]] = {}

    def get(self, spec: ModelSpec) -> Runner:
        """The session of ``spec``'s version, loaded (and validated) if it is not resident;
        raises ModelLoadError naming model, version and field if validation fails."""
        key = (spec.name, spec.version, str(spec.path))
        with self.lock:
            got = self.loaded.get(key)
            if got is not None:
                self.loaded.move_to_end(key)
                return got.runner
            return self._load(key, spec)

    def adopt(self, runner: Runner) -> None:
        """Hold a session made elsewhere (a test's unwarmed one) as its version's."""
        spec = runner.spec
        with self.lock:
            self.loaded[(spec.name, spec.version, str(spec.path))] = Loaded(runner, 0, 0.0)

    def _load(self, key: Key, spec: ModelSpec) -> Runner:
        self._evict(self.sizes.get(key, 0))  # room for what it took last time
        before, started = metrics.rss_bytes(), time.perf_counter()
        runner = load_runner(spec)  # an ONNX Runtime session, validated, or a stand-in
        load_ms = (time.perf_counter() - started) * 1000.0
        weights = 0 if spec.standin else spec.path.stat().st_size  # it holds them at least
        grew = max(metrics.rss_bytes() - before, weights)
        size = self.sizes[key] = max(self.sizes.get(key, 0), grew)
        self.loaded[key] = Loaded(runner, size, load_ms)
        metrics.model_loaded(spec.name, size, load_ms / 1000.0)
        self._count(spec.name, spec.version, loads=1, load_us=int(load_ms * 1000))
        log.info(
            "model_loaded",
            model=spec.name,
            version=spec.version,
            provider=runner.provider,
            resident_mb=round(size / 2**20, 1),
            load_ms=round(load_ms, 1),
        )
        self._evict(0)
        return runner

    def _evict(self, room: int) -> None:
        """Drop the least recently used until ``room`` more bytes fit (one always stays)."""
        while self.budget and self.loaded and self.resident() + room > self.budget:
            if room == 0 and len(self.loaded) == 1:
                return
            (model, version, _), _ = self.loaded.popitem(last=False)
            metrics.model_unloaded(model)
            self._count(model, version, evictions=1)
            log.info("model_evicted", model=model, version=version, budget_mb=self.budget >> 20)

    def resident(self) -> int:
        return sum(x.size for x in self.loaded.values())

    def _count(self, model: str, version: str, **figures: int) -> None:
        mine = self.counts.setdefault((model, version), {})
        for name, n in figures.items():
            mine[name] = mine.get(name, 0) + n

    def take_counts(self) -> dict[tuple[str, str], dict[str, int]]:
        with self.lock:
            out, self.counts = self.counts, {}
        return out

    def states(self) -> dict[tuple[str, str], dict[str, int | str]]:
        """Per (model, version) ever loaded: resident bytes now (0: evicted), provider."""
        with self.lock:
            out: dict[tuple[str, str], dict[str, int | str]] = {
                (m, v): {"resident_bytes": 0} for m, v, _ in self.sizes
            }
            for (m, v, _), x in self.loaded.items():
                out[(m, v)] = {"resident_bytes": x.size, "provider": x.runner.provider}
            return out
