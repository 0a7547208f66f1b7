"""The ``cascadeq`` command. Role packages are imported lazily, per subcommand."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from cascadeq import log as logging_setup
from cascadeq.errors import ConfigError
from cascadeq.settings import Settings

DEFAULT_MODELS_DIR = Path("models/digits")


def _catalog_path(args: argparse.Namespace, settings: Settings) -> str:
    path = args.catalog or settings.catalog or str(DEFAULT_MODELS_DIR / "catalog.toml")
    return str(path)


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env(catalog=getattr(args, "catalog", None))
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
        return 2
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


def cmd_router(args: argparse.Namespace) -> int:
    from cascadeq.catalog import Catalog
    from cascadeq.connection import connect
    from cascadeq.process import stop_on_signals
    from router import Router

    settings = _settings(args)
    catalog = Catalog.load(_catalog_path(args, settings), check_files=False)
    if args.replicas > 1:
        from cascadeq.process import run_replicas

        return run_replicas(_role_argv(args), args.replicas)
    stop = threading.Event()
    stop_on_signals(stop)
    url = _require_url(settings)
    Router(
        connect(url, name="cq-router", socket_timeout=_role_timeout(settings)), catalog, settings
    ).run(stop)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from cascadeq.catalog import Catalog
    from cascadeq.connection import connect
    from cascadeq.process import (
        consumer_name,
        run_replicas,
        run_threads,
        stop_on_signals,
    )
    from workers import ModelWorker

    settings = _settings(args)
    catalog = Catalog.load(_catalog_path(args, settings))
    names = [m.strip() for m in args.models.split(",") if m.strip()] or sorted(catalog.models)
    unknown = [m for m in names if m not in catalog.models]
    if unknown:
        print(
            f"unknown model(s) {unknown}; the catalog has {sorted(catalog.models)}", file=sys.stderr
        )
        return 2
    if args.replicas > 1:
        return run_replicas(_role_argv(args), args.replicas)
    stop = threading.Event()
    stop_on_signals(stop)
    url = _require_url(settings)
    consumer = consumer_name("worker")
    workers = [
        ModelWorker(
            connect(url, name=f"cq-worker-{name}", socket_timeout=_role_timeout(settings)),
            catalog,
            catalog.models[name],
            settings,
            consumer,
        )
        for name in names
    ]
    run_threads([w.run for w in workers], stop)
    return 0


def _role_argv(args: argparse.Namespace) -> list[str]:
    argv = [args.command]
    if getattr(args, "models", None):
        argv += ["--models", args.models]
    if args.catalog:
        argv += ["--catalog", args.catalog]
    return argv


def _role_timeout(settings: Settings) -> float:
    """Longer than the longest blocking read, so only a hung Redis trips it."""
    return settings.block_ms / 1000 + 10.0


def _require_url(settings: Settings) -> str:
    if not settings.redis_url:
        raise ConfigError(
            "REDIS_URL is not set: point it at Redis (redis://host:6379/0), "
            "or use `cascadeq demo`, which starts its own"
        )
    return settings.redis_url


def cmd_demo(args: argparse.Namespace) -> int:
    from cascadeq.demo import main as demo_main

    settings = Settings.from_env()
    logging_setup.configure("warning", settings.log_format)
    return demo_main(settings, Path(args.models_dir), as_json=args.json)


def cmd_submit(args: argparse.Namespace) -> int:
    from cascadeq.shell import submit

    return submit(args, _settings(args))


def cmd_result(args: argparse.Namespace) -> int:
    from cascadeq.shell import result

    return result(args, _settings(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cascadeq",
        description="A Redis inference queue that answers each request with the cheapest "
        "model good enough for it. Settings come from REDIS_URL and CASCADEQ_* variables.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="example models").add_subparsers(
        dest="models_command", required=True
    )
    build = models.add_parser(
        "build", help="train the example models (digits; variable-length digits in OUT/seq)"
    )
    build.add_argument("--out", default=str(DEFAULT_MODELS_DIR))
    build.add_argument("--force", action="store_true", help="rebuild even if present")
    build.set_defaults(func=cmd_models_build)

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
        if name == "worker":
            p.add_argument("--models", default="", help="comma-separated (default: all)")
        p.set_defaults(func=func)

    demo = sub.add_parser("demo", help="run the whole pipeline on the digits example")
    demo.add_argument("--json", action="store_true", help="last stdout line is JSON")
    demo.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR))
    demo.set_defaults(func=cmd_demo)

    submit = sub.add_parser("submit", help="submit one request from .npy files")
    target = submit.add_mutually_exclusive_group(required=True)
    target.add_argument("--task")
    target.add_argument("--model")
    submit.add_argument(
        "--input", action="append", default=[], metavar="NAME=FILE.npy", required=True
    )
    submit.add_argument("--tier", default="standard")
    submit.add_argument("--deadline-ms", type=float)
    submit.add_argument(
        "--wait", type=float, metavar="SECONDS", help="wait for the result and print it"
    )
    submit.add_argument("--catalog")
    submit.set_defaults(func=cmd_submit)

    result = sub.add_parser("result", help="print a request's result")
    result.add_argument("request_id")
    result.add_argument("--wait", type=float, metavar="SECONDS")
    result.set_defaults(func=cmd_result)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"cascadeq {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
