"""`cascadeq submit` and `cascadeq result`: the client for people at a shell."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from cascadeq.messages import Result
from cascadeq.settings import Settings


def result_to_json(result: Result) -> dict[str, Any]:
    return {
        "id": result.id,
        "status": result.status,
        "model": result.model,
        "outputs": {k: np.asarray(v).tolist() for k, v in result.outputs.items()},
        "path": result.path,
        "error": result.error,
        "timings": result.timings,
        "batch_size": result.batch_size,
        "info": result.info,
    }


def _load_inputs(specs: list[str]) -> dict[str, np.ndarray]:
    inputs = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name:
            raise SystemExit(f"--input {spec!r}: write NAME=FILE.npy")
        inputs[name] = np.load(path, allow_pickle=False)
    return inputs


def submit(args: argparse.Namespace, settings: Settings) -> int:
    from producer import Producer, Rejected, RequestFailed, Timeout  # noqa: PLC0415

    with Producer(settings=settings) as client:
        try:
            rid = client.submit(
                inputs=_load_inputs(args.input),
                task=args.task,
                model=args.model,
                tier=args.tier,
                deadline_ms=args.deadline_ms,
            )
        except Rejected as exc:
            print(f"rejected ({exc.code}): {exc}", file=sys.stderr)
            return 3
        if args.wait is None:
            print(rid)
            return 0
        try:
            print(json.dumps(result_to_json(client.wait(rid, args.wait))))
        except RequestFailed as exc:
            print(json.dumps(result_to_json(exc.result)))
            return 4
        except Timeout:
            print(f"{rid}: no result within {args.wait}s", file=sys.stderr)
            return 5
    return 0


def result(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 0 ok, 4 failed, 5 not ready (yet), 6 unknown id."""
    from producer import Producer, RequestFailed, Timeout, UnknownRequest  # noqa: PLC0415

    with Producer(settings=settings) as client:
        try:
            found = client.result(args.request_id)
            if found is None and args.wait is not None:
                found = client.wait_many([args.request_id], args.wait)[0]
        except UnknownRequest as exc:
            print(str(exc), file=sys.stderr)
            return 6
        except Timeout:
            found = None
        except RequestFailed as exc:
            found = exc.result
    if found is None:
        waited = "" if args.wait is None else f" after waiting {args.wait}s"
        print(f"{args.request_id}: not ready{waited} (submitted, no result yet)", file=sys.stderr)
        return 5
    print(json.dumps(result_to_json(found)))
    return 0 if found.ok else 4
