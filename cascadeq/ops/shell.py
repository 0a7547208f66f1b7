"""`cascadeq submit`, `result` and `cancel`: the client for people at a shell."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from cascadeq.config.settings import Settings
from cascadeq.protocol.errors import (
    EXIT_FAILED,
    EXIT_NOT_READY,
    EXIT_REJECTED,
    EXIT_REQUEST_FAILED,
    EXIT_UNKNOWN_ID,
    ConfigError,
)
from cascadeq.protocol.messages import Result


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


class InputFileError(ConfigError):
    """An --input that cannot be loaded; nothing was submitted."""


def _load_inputs(specs: list[str]) -> dict[str, np.ndarray]:
    inputs = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name:
            raise InputFileError(f"--input {spec!r}: write NAME=FILE.npy")
        inputs[name] = _load_array(name, path)
    return inputs


def _load_array(name: str, path: str) -> np.ndarray:
    """A plain numeric .npy; object arrays are refused, since loading them runs pickle."""
    try:
        arr = np.load(path, allow_pickle=False)
    except OSError as exc:
        raise InputFileError(
            f"--input {name}={path}: cannot be read ({exc.strerror or exc}); "
            "pass an existing .npy file, saved with numpy.save"
        ) from exc
    except ValueError as exc:
        raise InputFileError(
            f"--input {name}={path}: not a plain numeric .npy ({exc}); "
            "save a numeric array, e.g. numpy.save(path, x.astype('float32'))"
        ) from exc
    if not isinstance(arr, np.ndarray):  # an .npz opens as a mapping of arrays
        arr.close()
        raise InputFileError(f"--input {name}={path}: holds several arrays; pass one .npy each")
    return arr


def submit(args: argparse.Namespace, settings: Settings) -> int:
    from cascadeq.producer import Producer, Rejected, RequestFailed, Timeout  # noqa: PLC0415

    inputs = _load_inputs(args.input)  # before any connection: a typo costs nothing
    with Producer(settings.require_redis_url(), settings=settings) as client:
        try:
            rid = client.submit(
                inputs=inputs,
                task=args.task,
                model=args.model,
                tier=args.tier,
                deadline_ms=args.deadline_ms,
                traceparent=getattr(args, "traceparent", None),
                tenant=getattr(args, "tenant", None),
            )
        except Rejected as exc:
            print(f"rejected ({exc.code}): {exc}", file=sys.stderr)
            if exc.retry_after_s is not None:
                print(f"retry after: {exc.retry_after_s:.3f} s", file=sys.stderr)
            return EXIT_REJECTED
        if args.wait is None:
            print(rid)
            return 0
        try:
            print(json.dumps(result_to_json(client.wait(rid, args.wait))))
        except RequestFailed as exc:
            print(json.dumps(result_to_json(exc.result)))
            return EXIT_REQUEST_FAILED
        except Timeout:
            print(f"{rid}: no result within {args.wait}s", file=sys.stderr)
            return EXIT_NOT_READY
    return 0


def result(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 0 ok, else the code cascadeq.protocol.errors names (failed, not ready, unknown id)."""
    from cascadeq.producer import Producer, RequestFailed, Timeout, UnknownRequest  # noqa: PLC0415

    with Producer(settings.require_redis_url(), settings=settings) as client:
        try:
            found = client.result(args.request_id)
            if found is None and args.wait is not None:
                found = client.wait_many([args.request_id], args.wait)[0]
        except UnknownRequest as exc:
            print(str(exc), file=sys.stderr)
            return EXIT_UNKNOWN_ID
        except Timeout:
            found = None
        except RequestFailed as exc:
            found = exc.result
    if found is None:
        waited = "" if args.wait is None else f" after waiting {args.wait}s"
        print(f"{args.request_id}: not ready{waited} (submitted, no result yet)", file=sys.stderr)
        return EXIT_NOT_READY
    print(json.dumps(result_to_json(found)))
    return 0 if found.ok else EXIT_REQUEST_FAILED


_SAID = {
    "cancelled": "cancelled (it will never be computed)",
    "done": "already done",
    "running": "running (a model has taken it; its result will stand)",
    "unknown": "unknown (never submitted, or its result expired)",
}


def cancel(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 0 when cancelled now, EXIT_FAILED when done or running, else unknown."""
    from cascadeq.producer import Producer  # noqa: PLC0415

    with Producer(settings.require_redis_url(), settings=settings) as client:
        got = client.cancel(args.request_id)
    if args.json:
        status = None if got.result is None else got.result.status
        print(json.dumps({"id": got.id, "outcome": got.outcome, "status": status}))
    else:
        said = _SAID[got.outcome]
        if got.outcome == "done" and got.result is not None:
            said += f" (status {got.result.status})"
        print(f"{got.id}: {said}")
    if got.outcome == "unknown":
        return EXIT_UNKNOWN_ID
    return 0 if got.cancelled else EXIT_FAILED
