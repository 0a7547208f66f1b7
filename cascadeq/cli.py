"""The ``cascadeq`` command. Role packages are imported lazily, per subcommand."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cascadeq.config.settings import Settings
from cascadeq.infra import log as logging_setup
from cascadeq.protocol.errors import (
    EXIT_FAILED,
    EXIT_NO_REDIS,
    EXIT_NOT_READY,
    EXIT_REJECTED,
    EXIT_REQUEST_FAILED,
    EXIT_UNKNOWN_ID,
    EXIT_USAGE,
    ConfigError,
)

DEFAULT_MODELS_DIR = Path("models/digits")
EXIT_CODES = f"""exit codes:
  0  ok
  {EXIT_FAILED}  the command ran but did not do all it was asked (dlq replay skipped some,
     dlq purge without --yes, cancel of a request already done or running)
  {EXIT_USAGE}  usage or input to fix: a bad flag, a missing or unreadable file, a bad
     catalog or split, REDIS_URL not set
  {EXIT_REJECTED}  submit: the request was refused and not queued
  {EXIT_REQUEST_FAILED}  submit --wait, result: the request ended with an error or expired
  {EXIT_NOT_READY}  submit --wait, result: no result yet
  {EXIT_UNKNOWN_ID}  result, cancel: unknown id (never submitted, or expired)
  {EXIT_NO_REDIS}  cannot reach Redis (refused, timed out): start it or fix REDIS_URL
"""


def _catalog_path(args: argparse.Namespace, settings: Settings) -> str:
    path = args.catalog or settings.catalog or str(DEFAULT_MODELS_DIR / "catalog.toml")
    return str(path)


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env(
        catalog=getattr(args, "catalog", None), metrics_port=getattr(args, "metrics_port", None)
    )
    logging_setup.configure(settings.log_level, settings.log_format, role=args.command)
    return settings


def cmd_models_build(args: argparse.Namespace) -> int:
    try:
        from cascadeq.examples import digits, seqdigits
    except ImportError as exc:
        print(
            f"building models needs the build extra: pip install 'cascadeq[build]' ({exc})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    out = Path(args.out)
    seq_out = out / seqdigits.SUBDIR
    if digits.is_built(out) and seqdigits.is_built(seq_out) and not args.force:
        print(f"models already built in {out} (use --force to rebuild)", file=sys.stderr)
        return 0

    def progress(line: str) -> None:
        print(line, file=sys.stderr)

    if args.force or not digits.is_built(out):
        print(digits.build(out, log=progress).catalog_path)
    if args.force or not seqdigits.is_built(seq_out):
        print(seqdigits.build(seq_out, log=progress).catalog_path)
    return 0


def cmd_models_measure(args: argparse.Namespace) -> int:
    from cascadeq.ops import measure

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    config = measure.MeasureConfig(repeats=args.repeats, free_dim=args.length)
    costs = measure.measure_catalog(Path(args.catalog), names, config, log=_progress)
    if args.dry_run:
        print("dry run: the catalog is unchanged", file=sys.stderr)
    else:
        measure.write_costs(Path(args.catalog), costs)
        print(f"wrote cost of {len(costs)} model(s) to {args.catalog}", file=sys.stderr)
    print(json.dumps(costs))
    return 0


def cmd_models_lifecycle(args: argparse.Namespace) -> int:
    from cascadeq.ops import lifecycle

    settings = _settings(args)
    command = args.models_command
    if command == "publish":
        return lifecycle.publish(settings, args.catalog_file)
    if command == "compare":
        return lifecycle.compare(settings, args.model, as_json=args.json)
    if command == "promote":
        return lifecycle.promote(settings, args.model)
    return lifecycle.rollback(settings, args.model)


def _add_lifecycle_parsers(models: Any) -> None:
    publish = models.add_parser(
        "publish",
        help="validate a catalog and publish it: routers and workers switch without restarting",
        description="Checks every version of every model as a worker will (checksum, input and "
        "output names, dtypes and shapes, a warm-up batch at max_batch), then stores the "
        "catalog in Redis and tells routers and workers, which switch within seconds.",
    )
    publish.add_argument("catalog_file", metavar="CATALOG", help="catalog TOML to publish")
    publish.set_defaults(func=cmd_models_lifecycle)
    compare = models.add_parser(
        "compare", help="a model's active and canary versions side by side, from live traffic"
    )
    compare.add_argument("model")
    compare.add_argument("--json", action="store_true")
    compare.set_defaults(func=cmd_models_lifecycle)
    for name, text in (
        ("promote", "make the canary the active version (a publish)"),
        ("rollback", "drop the canary, or go back to the previous active version (a publish)"),
    ):
        part = models.add_parser(name, help=text)
        part.add_argument("model")
        part.set_defaults(func=cmd_models_lifecycle)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_router(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if getattr(args, "router_command", None) == "train":
        from cascadeq.ops.tuning import router_train

        return router_train(args, _catalog_path(args, settings), settings)
    from cascadeq.router.main import run

    return run(settings, _catalog_path(args, settings), replicas=args.replicas)


def cmd_worker(args: argparse.Namespace) -> int:
    from cascadeq.workers.main import run

    settings = _settings(args)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    return run(settings, _catalog_path(args, settings), models, replicas=args.replicas)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from cascadeq.ops.tuning import calibrate

    return calibrate(args, _catalog_path(args, _settings(args)))


def _add_router_train(router: argparse.ArgumentParser) -> None:
    sub = router.add_subparsers(dest="router_command")
    train = sub.add_parser("train", help="train the learned router from logged traces")
    train.add_argument("--task", required=True)
    train.add_argument("--catalog")
    train.add_argument("--limit", type=int, default=50_000, help="newest traces to use")
    train.add_argument(
        "--min-precision",
        type=float,
        help="skip the first model at this precision (default: where it saves most cost)",
    )
    train.add_argument(
        "--hop-cost",
        type=float,
        metavar="US",
        help="a hop's cost beyond compute, µs per request, where workers published none "
        "(default: the published figures, else compute only)",
    )
    train.add_argument("--json", action="store_true", help="last stdout line is JSON")


def cmd_bench(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    logging_setup.configure("warning", settings.log_format)
    try:
        from cascadeq.bench import batching, dms, suite
    except ImportError as exc:
        print(f"benchmarks need: pip install 'cascadeq[bench]' ({exc})", file=sys.stderr)
        return EXIT_USAGE
    models_dir = Path(args.models_dir)
    if args.bench_command in suite.PARTS:
        plot_dir = Path(args.plot_dir) if args.plot_dir else None
        return suite.main(
            settings,
            models_dir,
            args.bench_command,
            as_json=args.json,
            quick=args.quick,
            plot_dir=plot_dir,
        )
    if args.bench_command == "floor":
        from cascadeq.bench import floor

        return floor.bench_floor(settings.redis_url, models_dir, args.requests, as_json=args.json)
    if args.bench_command == "bulk":
        from cascadeq.bench import bulk

        return bulk.main(
            settings,
            models_dir,
            as_json=args.json,
            rows=args.rows,
            in_flight=args.in_flight,
            rate=args.rate,
        )
    if args.bench_command == "scaling":
        from cascadeq.bench import scaling

        return scaling.main(
            settings,
            models_dir,
            as_json=args.json,
            quick=args.quick,
            service_ms=args.service_ms,
            io_batch=args.io_batch,
        )
    if args.bench_command == "tenants":
        from cascadeq.bench import tenants

        return tenants.main(settings, models_dir, as_json=args.json, seconds=args.seconds)
    if args.bench_command == "batching":
        plot_to = Path(args.plot) if args.plot else None
        return batching.main(
            settings, models_dir, as_json=args.json, quick=args.quick, plot_to=plot_to
        )
    return dms.main(settings, models_dir, as_json=args.json, spike=args.spike)


def cmd_chaos(args: argparse.Namespace) -> int:
    try:
        import psutil  # noqa: F401 - sampled for peak RSS
    except ImportError as exc:
        print(f"chaos needs psutil: pip install 'cascadeq[chaos]' ({exc})", file=sys.stderr)
        return EXIT_USAGE
    from cascadeq import chaos

    settings = Settings.from_env()
    logging_setup.configure("warning", settings.log_format)
    config = chaos.ChaosConfig(seconds=args.seconds, rate=args.rate, seed=args.seed)
    return chaos.main(Path(args.models_dir), config, as_json=args.json)


def _add_chaos_parser(sub: Any) -> None:
    chaos = sub.add_parser(
        "chaos", help="load the live system while killing workers, routers and Redis"
    )
    chaos.add_argument("--seconds", type=float, required=True, help="how long load and kills run")
    chaos.add_argument("--rate", type=float, default=200.0, help="requests per second (open loop)")
    chaos.add_argument("--seed", type=int, default=0, help="seeds the kill plan and the requests")
    chaos.add_argument("--json", action="store_true", help="last stdout line is JSON")
    chaos.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR))
    chaos.set_defaults(func=cmd_chaos)


def cmd_demo(args: argparse.Namespace) -> int:
    from cascadeq.demo import main as demo_main

    settings = Settings.from_env()
    logging_setup.configure("warning", settings.log_format)
    return demo_main(settings, Path(args.models_dir), as_json=args.json)


def cmd_submit(args: argparse.Namespace) -> int:
    from cascadeq.ops.shell import submit

    return submit(args, _settings(args))


def cmd_result(args: argparse.Namespace) -> int:
    from cascadeq.ops.shell import result

    return result(args, _settings(args))


def cmd_cancel(args: argparse.Namespace) -> int:
    from cascadeq.ops.shell import cancel

    return cancel(args, _settings(args))


def cmd_dlq(args: argparse.Namespace) -> int:
    from cascadeq.ops import dlq

    settings = _settings(args)
    if args.dlq_command == "list":
        return dlq.print_list(settings, args.limit, as_json=args.json)
    if args.dlq_command == "show":
        return dlq.print_show(settings, args.entry_id)
    if args.dlq_command == "replay":
        return dlq.print_replay(settings, args.entry_id)
    return dlq.print_purge(settings, confirmed=args.yes)


def cmd_stats(args: argparse.Namespace) -> int:
    from cascadeq.ops import stats

    return stats.run(
        _settings(args), as_json=args.json, watch=args.watch, redis_sample_s=args.redis_sample
    )


def cmd_cost(args: argparse.Namespace) -> int:
    from cascadeq.ops import cost

    return cost.main(
        Path(args.source),
        args.target_rps,
        prices=Path(args.prices) if args.prices else None,
        reserve_mb=args.reserve_mb,
        base_mb=args.base_mb,
        as_json=args.json,
    )


def cmd_bulk(args: argparse.Namespace) -> int:
    try:
        from cascadeq.bulk import view
    except ImportError as exc:
        return _fail(args, f"bulk jobs need rq: pip install 'cascadeq[serve]' ({exc})", EXIT_USAGE)
    return view.main(args, _settings(args))


def _add_bulk_parser(sub: Any) -> None:
    bulk = sub.add_parser("bulk", help="score a whole file as an rq job").add_subparsers(
        dest="bulk_command", required=True
    )
    submit = bulk.add_parser("submit", help="enqueue a bulk job; prints its id")
    submit.add_argument("input", help=".npy/.npz (one row per item) or .jsonl (one per line)")
    submit.add_argument("--task", required=True)
    submit.add_argument("--output", help="default: INPUT.out.npz or INPUT.out.jsonl")
    submit.add_argument("--tier", default="standard")
    submit.add_argument(
        "--result-ttl", type=int, default=7 * 24 * 3600, help="seconds a finished job is kept"
    )
    submit.add_argument(
        "--failure-ttl", type=int, default=7 * 24 * 3600, help="seconds a failed job is kept"
    )
    submit.add_argument(
        "--job-timeout", type=int, default=24 * 3600, help="seconds before rq kills the job"
    )
    submit.add_argument(
        "--in-flight", type=int, default=2000, help="rows submitted and not yet answered, at most"
    )
    submit.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="rows sent per second; 0 (default): one chunk per 50 ms, slowed on queue_full",
    )
    status = bulk.add_parser("status", help="state and progress: done/total, rate, ETA, errors")
    status.add_argument("job_id")
    status.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=1.0,
        metavar="SECONDS",
        help="redraw every SECONDS (default 1) until the job ends or Ctrl-C",
    )
    status.add_argument("--json", action="store_true", help="last stdout line is JSON")
    for name, text in (
        ("cancel", "stop a running job, or cancel a queued one"),
        ("retry", "run a failed or orphaned job again under its id; answered rows are kept"),
    ):
        bulk.add_parser(name, help=text).add_argument("job_id")
    worker = bulk.add_parser("worker", help="run rq's worker on the bulk queue")
    worker.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    sub.choices["bulk"].set_defaults(func=cmd_bulk)


def _add_dlq_parser(sub: Any) -> None:
    dlq = sub.add_parser("dlq", help="inspect, replay or purge dead letters").add_subparsers(
        dest="dlq_command", required=True
    )
    listing = dlq.add_parser("list", help="the oldest dead letters, one a line")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--json", action="store_true", help="a JSON array instead")
    show = dlq.add_parser("show", help="one dead letter as JSON, header decoded")
    show.add_argument("entry_id")
    replay = dlq.add_parser("replay", help="put dead letters back on their stream")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("entry_id", nargs="?")
    which.add_argument("--all", action="store_true", help="every dead letter there is now")
    purge = dlq.add_parser("purge", help="delete every dead letter there is now")
    purge.add_argument("--yes", action="store_true", help="really delete")
    for p in (listing, show, replay, purge):
        p.set_defaults(func=cmd_dlq)


def _share(text: str) -> float:
    """A share or an accuracy: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1 (0.2 means 20%)")
    return value


def _add_calibrate_parser(sub: Any) -> None:
    calib = sub.add_parser(
        "calibrate", help="choose a task's cascade thresholds from a labelled split"
    )
    calib.add_argument("--task", required=True)
    goal = calib.add_mutually_exclusive_group()
    goal.add_argument(
        "--target-accuracy",
        type=_share,
        help="cheapest thresholds reaching it, 0 to 1 (default: the last model's accuracy)",
    )
    goal.add_argument(
        "--max-escalation",
        type=_share,
        help="most accurate thresholds escalating at most this share, 0 to 1",
    )
    calib.add_argument("--measure", choices=["top", "margin", "entropy"])
    calib.add_argument(
        "--hop-cost",
        type=float,
        metavar="US",
        help="a hop's cost beyond compute, µs per request, where workers published none "
        "(default: the published figures, else compute only)",
    )
    calib.add_argument(
        "--data",
        help="npz with the inputs and labels (default: the task's validation split); arrays "
        "named after the first model's inputs (or X for one input) and y, unless --x-key/--y-key",
    )
    calib.add_argument(
        "--x-key", metavar="NAME", help="the npz array holding the inputs (single-input models)"
    )
    calib.add_argument("--y-key", metavar="NAME", default="y", help="the labels' array (y)")
    calib.add_argument("--catalog")
    calib.add_argument("--dry-run", action="store_true", help="report, do not write")
    calib.add_argument("--json", action="store_true", help="last stdout line is JSON")
    calib.set_defaults(func=cmd_calibrate)


SUITE_PARTS = {
    "all": "every part below on one live system, side by side",
    "limit": "end-to-end throughput against in-process ONNX Runtime (efficiency)",
    "rq": "against plain rq, one job per inference",
    "overhead": "CPU per request of every role and Redis, against the floor, three ways in",
    "latency": "open-loop latency at 10/50/90%% of capacity",
    "cascade": "large-only against the calibrated cascade",
}


def _add_bench_parser(sub: Any) -> None:
    bench = sub.add_parser("bench", help="measure the live system").add_subparsers(
        dest="bench_command", required=True
    )
    dms = bench.add_parser("dms", help="dynamic model selection, policy by policy")
    dms.add_argument("--json", action="store_true", help="last stdout line is JSON")
    dms.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR))
    dms.add_argument(
        "--spike", type=int, default=20, help="the load spike sends the test split this many times"
    )
    dms.set_defaults(func=cmd_bench)
    floor = bench.add_parser(
        "floor", help="the reference: the same flow as plainly as it can be, no features"
    )
    floor.add_argument("--json", action="store_true", help="last stdout line is JSON")
    floor.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR))
    floor.add_argument("--requests", type=int, default=30_000, help="one-sample requests")
    floor.set_defaults(func=cmd_bench)
    batching = bench.add_parser("batching", help="batching modes under four traffic patterns")
    batching.add_argument("--json", action="store_true", help="last stdout line is JSON")
    batching.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR))
    batching.add_argument("--quick", action="store_true", help="a short run (for CI)")
    batching.add_argument("--plot", metavar="PNG", help="save latency vs offered load here")
    batching.set_defaults(func=cmd_bench)
    bulk = bench.add_parser("bulk", help="interactive p99 idle vs during a bulk job")
    bulk.add_argument("--json", action="store_true", help="last stdout line is JSON")
    bulk.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR))
    bulk.add_argument("--rows", type=int, default=200_000, help="rows of the bulk job")
    bulk.add_argument("--in-flight", type=int, default=2000, help="the bulk job's bound")
    bulk.add_argument(
        "--rate", type=float, default=0.0, help="the bulk job's rows/s (0: its default pace)"
    )
    bulk.set_defaults(func=cmd_bench)
    scaling = bench.add_parser(
        "scaling", help="throughput vs worker replicas: CPU-bound, and an I/O-bound stand-in"
    )
    scaling.add_argument("--json", action="store_true", help="last stdout line is JSON")
    scaling.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR))
    scaling.add_argument("--quick", action="store_true", help="fewer counts, shorter windows")
    scaling.add_argument(
        "--service-ms", type=float, help="the I/O-bound stand-in's time per batch (default 100)"
    )
    scaling.add_argument("--io-batch", type=int, help="the stand-in's max_batch (default 4)")
    scaling.set_defaults(func=cmd_bench)
    tenants = bench.add_parser("tenants", help="fair share: a light tenant beside a flooding one")
    tenants.add_argument("--json", action="store_true", help="last stdout line is JSON")
    tenants.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR))
    tenants.add_argument("--seconds", type=float, default=6.0, help="seconds per phase")
    tenants.set_defaults(func=cmd_bench)
    for name, text in SUITE_PARTS.items():
        part = bench.add_parser(name, help=text)
        part.add_argument("--json", action="store_true", help="last stdout line is JSON")
        part.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR))
        part.add_argument("--quick", action="store_true", help="a short run (for CI)")
        part.add_argument("--plot-dir", help="save the PNG plots here (all, limit, latency)")
        part.set_defaults(func=cmd_bench)


def _add_models_parser(sub: Any) -> None:
    models = sub.add_parser(
        "models", help="build, measure, publish, promote and roll back models"
    ).add_subparsers(dest="models_command", required=True)
    build = models.add_parser(
        "build", help="train the example models (digits; variable-length digits in OUT/seq)"
    )
    build.add_argument("--out", default=str(DEFAULT_MODELS_DIR))
    build.add_argument("--force", action="store_true", help="rebuild even if present")
    build.set_defaults(func=cmd_models_build)
    measure = models.add_parser(
        "measure",
        help="time each model at its max_batch and write its per-sample cost into the catalog",
        description="Runs each model with ONNX Runtime on synthetic inputs of the declared "
        "shapes and dtypes (free dimensions beyond the batch get --length), at its max_batch, "
        "and writes the median microseconds per sample as its `cost`. Comments and layout "
        "of the catalog are kept.",
    )
    measure.add_argument("catalog", help="catalog TOML to measure and rewrite")
    measure.add_argument("--models", default="", help="comma-separated (default: all)")
    measure.add_argument("--repeats", type=int, default=25, help="timed runs per model")
    measure.add_argument(
        "--length", type=int, default=32, help="size of free dimensions beyond the batch"
    )
    measure.add_argument("--dry-run", action="store_true", help="report, do not write")
    measure.set_defaults(func=cmd_models_measure)
    _add_lifecycle_parsers(models)


def _add_client_parsers(sub: Any) -> None:
    submit = sub.add_parser("submit", help="submit one request from .npy files")
    target = submit.add_mutually_exclusive_group(required=True)
    target.add_argument("--task")
    target.add_argument("--model")
    submit.add_argument(
        "--input", action="append", default=[], metavar="NAME=FILE.npy", required=True
    )
    submit.add_argument("--tier", default="standard")
    submit.add_argument("--tenant", help="who the request is for (quotas, fair share)")
    submit.add_argument("--deadline-ms", type=float)
    submit.add_argument(
        "--traceparent", help="W3C trace context to carry (00-<trace id>-<parent id>-<flags>)"
    )
    submit.add_argument(
        "--wait", type=float, metavar="SECONDS", help="wait for the result and print it"
    )
    submit.add_argument("--catalog")
    submit.set_defaults(func=cmd_submit)

    result = sub.add_parser("result", help="print a request's result")
    result.add_argument("request_id")
    result.add_argument("--wait", type=float, metavar="SECONDS")
    result.set_defaults(func=cmd_result)

    cancel = sub.add_parser(
        "cancel", help="cancel a request no model has taken yet; says cancelled, done or running"
    )
    cancel.add_argument("request_id")
    cancel.add_argument("--json", action="store_true", help="one JSON object: id, outcome, status")
    cancel.set_defaults(func=cmd_cancel)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cascadeq",
        description="A Redis inference queue that answers each request with the cheapest "
        "model good enough for it. Settings come from REDIS_URL and CASCADEQ_* variables.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    _add_models_parser(sub)

    for name, func, text in (
        ("router", cmd_router, "run a router"),
        ("worker", cmd_worker, "run workers for some models"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument(
            "--catalog",
            help=f"catalog TOML (default: $CASCADEQ_CATALOG or {DEFAULT_MODELS_DIR}/catalog.toml)",
        )
        p.add_argument("--replicas", type=int, default=1, help="processes to start")
        p.add_argument(
            "--metrics-port",
            type=int,
            help="serve Prometheus /metrics on this port (default: $CASCADEQ_METRICS_PORT; 0: off)",
        )
        if name == "worker":
            p.add_argument("--models", default="", help="comma-separated (default: all)")
        else:
            _add_router_train(p)
        p.set_defaults(func=func)

    _add_calibrate_parser(sub)

    demo = sub.add_parser("demo", help="run the whole pipeline on the digits example")
    demo.add_argument("--json", action="store_true", help="last stdout line is JSON")
    demo.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR))
    demo.set_defaults(func=cmd_demo)

    _add_bench_parser(sub)
    _add_chaos_parser(sub)

    _add_client_parsers(sub)
    _add_dlq_parser(sub)
    _add_bulk_parser(sub)

    stats = sub.add_parser("stats", help="queues, rates and latency per model, from Redis")
    stats.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=2.0,
        metavar="SECONDS",
        help="redraw every SECONDS (default 2) until Ctrl-C",
    )
    stats.add_argument(
        "--redis-sample",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="measure Redis's CPU per answered request over SECONDS first (default 1; 0: skip)",
    )
    stats.add_argument("--json", action="store_true", help="last stdout line is JSON")
    stats.set_defaults(func=cmd_stats)

    cost = sub.add_parser("cost", help="instances and cost for a target load, from measurements")
    cost.add_argument(
        "source", help="JSON from `stats --json`, `demo --json` or `bench dms --json`"
    )
    cost.add_argument("--target-rps", type=float, required=True, help="requests per second")
    cost.add_argument("--prices", help="TOML of [[instance]] rows added to the shipped table")
    cost.add_argument("--reserve-mb", type=float, default=256, help="RAM left to the OS")
    cost.add_argument(
        "--base-mb", type=float, help="a worker process without models (default: measured)"
    )
    cost.add_argument("--json", action="store_true", help="last stdout line is JSON")
    cost.set_defaults(func=cmd_cost)
    _with_exit_codes(parser)
    return parser


def _with_exit_codes(parser: argparse.ArgumentParser) -> None:
    """Every command's --help ends with the exit codes, so scripts can act on them."""
    parser.epilog = EXIT_CODES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _with_exit_codes(child)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        return _fail(args, str(exc), EXIT_USAGE)
    except Exception as exc:
        unreachable = _unreachable(exc)
        if unreachable is None:
            raise  # a bug: the traceback is what a report needs
        return _fail(args, unreachable, EXIT_NO_REDIS)


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    line = " ".join(message.split())  # one line, whatever the cause's message holds
    print(f"cascadeq {args.command}: {line}", file=sys.stderr)
    return code


def _unreachable(exc: Exception) -> str | None:
    """The one-line message for Redis being out of reach, None for any other error."""
    import redis

    from cascadeq.producer.errors import ConnectionFailed, redact

    fix = "start Redis, or point REDIS_URL at a running one"
    if isinstance(exc, ConnectionFailed):
        return f"{exc} ({fix})"
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        url = redact(Settings.from_env().redis_url or "")
        return f"cannot reach Redis at {url}: {exc} ({fix})"
    return None


if __name__ == "__main__":
    sys.exit(main())
