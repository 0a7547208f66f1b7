"""`cascadeq calibrate` and `cascadeq router train`: the commands that rewrite a task's
routing from data, then say what the new settings are expected to do."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.config.tasks import TaskSpec
from cascadeq.ops import calibration
from cascadeq.protocol.errors import ConfigError


def _task(catalog: Catalog, name: str) -> TaskSpec:
    task = catalog.tasks.get(name)
    if task is None:
        raise ConfigError(
            f"task {name!r} is not in {catalog.source}; it has {sorted(catalog.tasks)}"
        )
    return task


def _progress(line: str) -> None:
    """Calibration runs every model over the split: say where it is, on stderr."""
    print(f"calibrate: {line}", file=sys.stderr, flush=True)


def _hops(catalog_path: str, task: TaskSpec, given: float | None) -> tuple[dict[str, float], str]:
    """Published per-hop figures when a Redis is configured and reachable, else ``given``."""
    from cascadeq.ops import published  # noqa: PLC0415

    settings = Settings.from_env()
    if not settings.redis_url:
        return published.hop_figures(None, settings.keys(), task.models, given)
    from cascadeq.infra.connection import connect  # noqa: PLC0415

    r = connect(settings.redis_url)
    try:
        return published.hop_figures(r, settings.keys(), task.models, given)
    finally:
        r.close()


def calibrate(args: argparse.Namespace, catalog_path: str) -> int:
    catalog = Catalog.load(catalog_path)
    task = _task(catalog, args.task)
    if len(task.cascade) < 2:
        raise ConfigError(f"task {task.name} has a one-model cascade: nothing to calibrate")
    data = Path(args.data) if args.data else task.validation
    if data is None:
        raise ConfigError(f"task {task.name} names no validation split: pass --data FILE.npz")
    measure = args.measure or task.confidence
    keys = calibration.SplitKeys(x=args.x_key, y=args.y_key)
    hops, source = _hops(catalog_path, task, args.hop_cost)
    split = calibration.measure_split(
        catalog, task, data, measure, keys, log=_progress, hop_us=hops
    )
    _progress(f"cost per stage: compute plus the queue's work per hop (from: {source})")
    large = split.alone(len(task.cascade) - 1)
    if args.max_escalation is not None:
        best = calibration.search(split, max_escalation=args.max_escalation, log=_progress)
    else:
        target = large.accuracy if args.target_accuracy is None else args.target_accuracy
        best = calibration.search(split, target_accuracy=target, log=_progress)
    baselines = [(f"{m} only", split.alone(k)) for k, m in enumerate(task.models)]
    print(
        f"{data} ({len(split.correct[0])} samples), confidence measure: {measure}", file=sys.stderr
    )
    print(calibration.report(best, baselines, task.models))
    if args.dry_run:
        print("dry run: the catalog is unchanged", file=sys.stderr)
    else:
        calibration.write_thresholds(Path(catalog_path), task.name, best, measure)
        print(f"wrote thresholds for task {task.name} to {catalog_path}", file=sys.stderr)
    if args.json:
        print(json.dumps({"measure": measure, **calibration.as_json(best)}))
    return 0


def router_train(args: argparse.Namespace, catalog_path: str, settings: Settings) -> int:
    from cascadeq.infra.connection import connect  # noqa: PLC0415
    from cascadeq.ops import train_router as train  # noqa: PLC0415

    catalog = Catalog.load(catalog_path, check_files=False)
    task = _task(catalog, args.task)
    r = connect(settings.require_redis_url())
    from cascadeq.ops import published  # noqa: PLC0415

    keys = settings.keys()
    x, hard = train.read_traces(r, keys, task.name, args.limit)
    hops, source = published.hop_figures(r, keys, task.models, args.hop_cost)
    out = Path(catalog_path).parent / f"{task.name}-router.onnx"
    report = train.train(catalog, task, x, hard, out, min_precision=args.min_precision, hop_us=hops)
    start = task.learned.start if task.learned else task.models[-1]

    def edit(table: Any) -> None:
        table["learned"] = {"path": out.name, "threshold": report.threshold, "start": start}

    calibration.edit_task(Path(catalog_path), task.name, edit)
    print(
        f"trained on {report.traces} traces ({report.hard_share:.1%} hard): threshold "
        f"{report.threshold:.4f} sends {report.skip_share:.1%} straight to {start} "
        f"(precision {report.precision:.3f}, recall {report.recall:.3f}, saving "
        f"{report.expected_saving:.4f} cost units per request, cross-validated)",
        file=sys.stderr,
    )
    print(
        f"a hop weighed at {report.costs[0]:.1f} (first) and {report.costs[1]:.1f} (later) "
        f"us: compute plus {report.hop_us[0]:.1f} / {report.hop_us[1]:.1f} us of queue work "
        f"per hop (from: {source})",
        file=sys.stderr,
    )
    print(f"wrote {out} and [tasks.{task.name}.learned] in {catalog_path}", file=sys.stderr)
    if args.json:
        print(
            json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in vars(report).items()})
        )
    return 0
