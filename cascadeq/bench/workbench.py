"""What every part of `cascadeq bench all` shares: one catalog holding the digits pair, the
heavy and the trivial model; one live system (1 router, 1 worker process) over it; the
scale of a run; and the saturating burst and the in-process reference they compare.

The parts take a `Bench`, so `bench all` measures them side by side on one system, and
each part alone opens its own.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cascadeq.bench.harness import Run, System, collect, live_system, progress
from cascadeq.config.catalog import Catalog, CatalogError, ModelSpec
from cascadeq.config.settings import Settings
from cascadeq.ops.calibration import edit_task

SMALL, LARGE, HEAVY, TRIVIAL = "digits-small", "digits-large", "heavy", "trivial"
DIGITS, HEAVY_PAIR = "digits", "heavy-pair"  # tasks: the digits pair; small before heavy
LOCAL = "-local"  # a task's copy that escalates inside the worker (escalate = "local")
AUTO = "-auto"  # and one that escalates there only where that is cheaper (escalate = "auto")
WORKERS = 1  # worker processes: the rq baseline gets as many


@dataclass(frozen=True)
class Scale:
    """How much each part sends; `quick` keeps the suite's run short (figures then noisy)."""

    saturate: dict[str, int]  # requests per saturating burst, per model
    reference_s: float = 1.0  # in-process reference, before and after each system run
    rq_simple: int = 3000  # jobs through rq's SimpleWorker
    rq_fork: int = 600  # jobs through rq's forking Worker (a fork per job: slow)
    overhead: int = 30_000
    latency_s: float = 3.0  # open-loop seconds per load level
    latency_levels: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
    # the held-out split, this many times over: a row runs about a second at least, so
    # CPU read in 10 ms ticks (psutil) is within a few percent per role
    cascade_repeats: int = 40
    # bench cascade's ways, run in turn this many rounds; each way's median round is its
    # row: the machine's speed drifts minute to minute, and each way samples it alike
    cascade_rounds: int = 3
    sweep: tuple[int, ...] = (1, 4, 16, 64)  # max_batch values for the plot

    @classmethod
    def full(cls) -> Scale:
        return cls({SMALL: 30_000, LARGE: 10_000, HEAVY: 3_000, TRIVIAL: 30_000})

    @classmethod
    def quick(cls) -> Scale:
        return cls(
            {SMALL: 600, LARGE: 300, HEAVY: 100, TRIVIAL: 600},
            reference_s=0.2,
            rq_simple=100,
            rq_fork=30,
            overhead=600,
            latency_s=0.3,
            latency_levels=(0.1, 0.5, 0.9),
            cascade_repeats=1,
            cascade_rounds=1,
            sweep=(),
        )


@dataclass
class Bench:
    system: System
    client: Any  # producer.Producer
    models_dir: Path
    scale: Scale
    inputs: dict[str, np.ndarray]  # rows of one input per model

    def catalog(self) -> Catalog:
        return self.system.catalog()

    def spec(self, model: str) -> ModelSpec:
        return self.catalog().models[model]


def tag(line: str) -> None:
    progress("bench", line)


def prepare(models_dir: Path, work: Path) -> Path:
    """One catalog for every part: the digits files, the heavy and trivial models beside them."""
    from cascadeq.examples import benchmodels, digits  # noqa: PLC0415 - the build extra

    digits.ensure_built(models_dir, log=tag)
    heavy, trivial = benchmodels.ensure_built(models_dir, log=tag)
    for f in models_dir.iterdir():
        if f.is_file():
            shutil.copy(f, work / f.name)
    for extra in (heavy.parent / benchmodels.HEAVY_FILE, trivial.parent / benchmodels.TRIVIAL_FILE):
        shutil.copy(extra, work / extra.name)
    path = work / "catalog.toml"
    text = path.read_text(encoding="utf-8")
    for extra in (heavy, trivial):
        text += "\n" + extra.read_text(encoding="utf-8")
    path.write_text(text, encoding="utf-8")
    edit_task(path, "digits", lambda table: table.pop("load", None))  # routing stays put
    add_heavy_pair(path)
    add_local_copies(path, (DIGITS, HEAVY_PAIR))
    return path


def add_heavy_pair(path: Path) -> None:
    """The digits small model in front of the heavy MLP, escalating the share of the
    validation split the digits pair's calibration escalates.

    The heavy MLP is trained for a few epochs only (the bench needs its compute), and is
    less accurate than the small model, so "match the last model's accuracy" would
    escalate nothing and measure a pair that never runs its heavy model.
    """
    from cascadeq.ops import calibration  # noqa: PLC0415

    text = path.read_text(encoding="utf-8")
    text += (
        f'\n[tasks.{HEAVY_PAIR}]\ncascade = [{{ model = "{SMALL}", threshold = 0.5 }}, '
        f'{{ model = "{HEAVY}" }}]\nconfidence = "top"\nvalidation = "digits_val.npz"\n'
    )
    path.write_text(text, encoding="utf-8")
    catalog = Catalog.load(path)
    digits, task = catalog.tasks[DIGITS], catalog.tasks[HEAVY_PAIR]
    assert digits.validation is not None
    assert task.validation is not None
    share = (
        calibration.measure_split(catalog, digits, digits.validation, digits.confidence)
        .evaluate([s.threshold for s in digits.cascade[:-1] if s.threshold is not None])
        .escalation_share
    )
    split = calibration.measure_split(catalog, task, task.validation, "top")
    best = calibration.search(split, max_escalation=share)
    calibration.write_thresholds(path, HEAVY_PAIR, best, "top")
    tag(
        f"{HEAVY_PAIR}: threshold {best.thresholds[0]:.4f} escalates {best.escalation_share:.1%} "
        f"of validation (the digits pair: {share:.1%})"
    )


def add_local_copies(path: Path, tasks: tuple[str, ...]) -> str | None:
    """Each task again as ``<task>-local`` with ``escalate = "local"`` and ``<task>-auto``
    with ``"auto"``; the reason when this catalog does not take the field (then the copies
    are left out)."""
    import tomlkit  # noqa: PLC0415 - the serve extra

    doc: Any = tomlkit.parse(path.read_text(encoding="utf-8"))
    for name in tasks:
        for suffix, mode in ((LOCAL, "local"), (AUTO, "auto")):
            table = doc["tasks"][name].unwrap()
            table["escalate"] = mode
            doc["tasks"][name + suffix] = table
    trial = path.with_name("catalog-local.toml")
    trial.write_text(tomlkit.dumps(doc), encoding="utf-8")
    try:
        Catalog.load(trial)
    except CatalogError as exc:
        trial.unlink()
        tag(f"local escalation not available: {exc}")
        return str(exc)
    trial.replace(path)
    return None


def local_available(catalog: Catalog) -> bool:
    return DIGITS + LOCAL in catalog.tasks


def inputs_for(models_dir: Path) -> dict[str, np.ndarray]:
    digits_x = np.load(models_dir / "digits_test.npz")["X"].astype(np.float32)
    trivial_x = np.random.default_rng(0).standard_normal((512, 4)).astype(np.float32)
    return {SMALL: digits_x, LARGE: digits_x, HEAVY: digits_x, TRIVIAL: trivial_x}


def requests(model: str, x: np.ndarray, n: int) -> list[Any]:
    """n one-sample requests pinned to `model` (pinned: no routing rule decides)."""
    from cascadeq.producer import Request  # noqa: PLC0415 - the core imports roles lazily

    return [Request({"input": x[i % len(x)][None]}, model=model) for i in range(n)]


def warm_up(bench: Bench, models: list[str], n: int = 200) -> None:
    """Proves each model's worker thread is serving, and warms its session, before timing."""
    for model in models:
        ids = bench.client.submit_many(requests(model, bench.inputs[model], n))
        bench.client.wait_many(ids, timeout=300)


def burst(bench: Bench, model: str, n: int) -> Run:
    """Saturating: n requests submitted at once, the clock stops at the last result."""
    reqs = requests(model, bench.inputs[model], n)  # built before the clock starts
    started = time.perf_counter()
    ids = bench.client.submit_many(reqs)
    return collect(bench.client, ids, np.zeros(n), started, 600)


def ok_rps(run: Run) -> float:
    return sum(r.ok for r in run.results) / run.seconds


@contextmanager
def open_bench(settings: Settings, models_dir: Path, scale: Scale) -> Iterator[Bench]:
    """A private catalog copy and a live system over it, warmed up."""
    from cascadeq.producer import Producer  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="cascadeq-bench-") as tmp:
        path = prepare(models_dir, Path(tmp))
        with live_system(settings, path, "bench", workers=WORKERS) as system:
            catalog = system.catalog()
            with Producer(system.url, settings=system.settings, catalog=catalog) as client:
                bench = Bench(system, client, models_dir, scale, inputs_for(models_dir))
                warm_up(bench, [SMALL, LARGE, HEAVY, TRIVIAL], n=50)
                yield bench
