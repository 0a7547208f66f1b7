"""The measurement floor: cascadeq's flow (producer -> router -> worker -> result) written as
plainly as it can be, so the real system's throughput and CPU per request have a reference.

No validation, no features: one producer process XADDs one-sample requests in pipelines of
200 to an ingress stream; one router process XREADGROUPs 200 at a time, XADDs each entry to
the model stream and XACKs (one pipeline per read); one worker process XREADGROUPs up to 128
(blocking), decodes, `np.stack`s, runs the ONNX model on one thread and SETs each result
(with EX) and XACKs (one pipeline per batch). The producer then polls MGET over the missing
results (chunks of 500, 2 ms apart when a chunk brings nothing) and the clock stops at the
last one.

Wire: a request is the stream field ``p`` = msgpack ``{"id": i, "x": row}``, the row being
one sample *without* a batch dimension (so the worker stacks rows into a batch); a result is
msgpack ``{output name: array of that request's row, batch dimension 1}``. Arrays use
cascadeq/protocol/wire.py's extension: type 1 holding msgpack ``[dtype.str, shape, raw bytes]``.

Every role is a separate OS process (``python -m cascadeq.bench.floor role ...``), always
stopped by the caller. The producer measures the timed window itself: its own CPU, the
router's and worker's (psutil, by pid) and Redis's (INFO cpu) before and after, so process
start-up, imports and the model's warm-up are outside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
import numpy as np
import redis

if TYPE_CHECKING:
    from cascadeq.bench.workbench import Bench

PRODUCER_PIPELINE = 200
ROUTER_READ = 200
WORKER_READ = 128
BLOCK_MS = 1000
RESULT_TTL_S = 600
POLL_CHUNK = 500
POLL_SLEEP_S = 0.002
EXT_NDARRAY = 1
ROUTER_GROUP, WORKER_GROUP = "router", "worker"


# --- the wire, without checks -------------------------------------------------------------


def _ext(obj: Any) -> msgpack.ExtType:
    arr = np.ascontiguousarray(obj)
    body = msgpack.packb([arr.dtype.str, list(arr.shape), arr.data], use_bin_type=True)
    return msgpack.ExtType(EXT_NDARRAY, body)


def _ext_hook(code: int, data: bytes) -> Any:
    dtype, shape, buf = msgpack.unpackb(data)
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def pack(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj, default=_ext, use_bin_type=True)
    return packed


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook)


# --- key names ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Names:
    """Every key a run touches, under its own prefix."""

    prefix: str

    @property
    def ingress(self) -> str:
        return f"{self.prefix}:ingress"

    @property
    def model(self) -> str:
        return f"{self.prefix}:model"

    def ready(self, role: str) -> str:
        return f"{self.prefix}:ready:{role}"

    def result(self, i: int) -> str:
        return f"{self.prefix}:res:{i}"


# --- the roles ----------------------------------------------------------------------------


def serve_router(url: str, names: Names) -> None:
    """Ingress -> model stream, acked in the same pipeline, forever."""
    r = redis.Redis.from_url(url)
    r.set(names.ready("router"), 1)
    parent = os.getppid()
    while os.getppid() == parent:  # an orphan (its caller killed) stops by itself
        got: Any = r.xreadgroup(
            ROUTER_GROUP, "r0", {names.ingress: ">"}, count=ROUTER_READ, block=BLOCK_MS
        )
        if not got:
            continue
        entries = got[0][1]
        pipe = r.pipeline(transaction=False)
        for _id, fields in entries:
            pipe.xadd(names.model, fields)
        pipe.xack(names.ingress, ROUTER_GROUP, *[e[0] for e in entries])
        pipe.execute()


def open_session(model_path: Path) -> Any:
    import onnxruntime as ort  # noqa: PLC0415 - only the worker role needs it

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])


def serve_worker(url: str, names: Names, model_path: Path, input_name: str) -> None:
    """Model stream -> one batched run -> one result key per request, forever."""
    session = open_session(model_path)
    r = redis.Redis.from_url(url)
    r.set(names.ready("worker"), 1)
    parent = os.getppid()
    while os.getppid() == parent:
        got: Any = r.xreadgroup(
            WORKER_GROUP, "w0", {names.model: ">"}, count=WORKER_READ, block=BLOCK_MS
        )
        if got:
            run_batch(r, names, session, input_name, got[0][1])


def run_batch(r: Any, names: Names, session: Any, input_name: str, entries: list[Any]) -> None:
    reqs = [unpack(fields[b"p"]) for _id, fields in entries]
    outputs = session.run(None, {input_name: np.stack([q["x"] for q in reqs])})
    out_names = [o.name for o in session.get_outputs()]
    pipe = r.pipeline(transaction=False)
    for j, q in enumerate(reqs):
        result = {name: out[j : j + 1] for name, out in zip(out_names, outputs, strict=True)}
        pipe.set(names.result(q["id"]), pack(result), ex=RESULT_TTL_S)
    pipe.xack(names.model, WORKER_GROUP, *[e[0] for e in entries])
    pipe.execute()


def cpu_of(pid: int | None = None) -> float:
    """CPU seconds of a process (this one when pid is None), read as the system's are
    (harness.cpu_seconds), so the floor and the system compare like with like."""
    if pid is None:
        return time.process_time()
    from cascadeq.bench.harness import cpu_seconds  # noqa: PLC0415

    return cpu_seconds(pid)


def redis_cpu(r: Any) -> float:
    info: Any = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def cpu_snapshot(r: Any, pids: dict[str, int]) -> dict[str, float]:
    snap = {role: cpu_of(pid) for role, pid in pids.items()}
    snap["producer"] = cpu_of()
    snap["redis"] = redis_cpu(r)
    return snap


def submit(r: Any, names: Names, rows: Sequence[np.ndarray]) -> None:
    for start in range(0, len(rows), PRODUCER_PIPELINE):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(start + PRODUCER_PIPELINE, len(rows))):
            pipe.xadd(names.ingress, {"p": pack({"id": i, "x": rows[i]})})
        pipe.execute()


def wait_results(r: Any, names: Names, n: int, timeout: float) -> tuple[int, int]:
    """Poll MGET over the missing results, oldest first; return (answered, errors)."""
    missing = list(range(n))
    errors = 0
    deadline = time.monotonic() + timeout
    while missing and time.monotonic() < deadline:
        chunk = missing[:POLL_CHUNK]
        values = r.mget([names.result(i) for i in chunk])
        errors += sum(not isinstance(unpack(v), dict) for v in values if v is not None)
        still = [i for i, v in zip(chunk, values, strict=True) if v is None]
        missing = still + missing[len(chunk) :]
        if still:  # part of the chunk is not there yet: give the worker a moment
            time.sleep(POLL_SLEEP_S)
    return n - len(missing), errors


def produce(url: str, names: Names, x: np.ndarray, n: int, pids: dict[str, int]) -> dict[str, Any]:
    """The timed window: submit n requests, wait for every result, measure CPU around it."""
    r = redis.Redis.from_url(url)
    rows = [x[i % len(x)] for i in range(n)]  # the caller's arrays: built before the clock
    before = cpu_snapshot(r, pids)
    started = time.perf_counter()
    submit(r, names, rows)
    answered, errors = wait_results(r, names, n, timeout=max(60.0, n / 100))
    seconds = time.perf_counter() - started
    after = cpu_snapshot(r, pids)
    spent = {role: after[role] - before[role] for role in before}
    return figures(n, seconds, answered, errors, spent)


def figures(
    n: int, seconds: float, answered: int, errors: int, spent: dict[str, float]
) -> dict[str, Any]:
    """`cpu_us_per_request` sums all four roles, Redis included; `roles_us_per_request` leaves
    Redis out, like `bench overhead`'s `overhead_us_per_request`."""
    roles = ("producer", "router", "worker")
    return {
        "requests": n,
        "seconds": round(seconds, 4),
        "throughput_rps": round(answered / seconds, 1),
        "cpu_seconds": {k: round(v, 4) for k, v in spent.items()},
        "cpu_us_per_request": round(sum(spent.values()) / n * 1e6, 2),
        "roles_us_per_request": round(sum(spent[k] for k in roles) / n * 1e6, 2),
        "per_role_us": {k: round(spent[k] / n * 1e6, 2) for k in (*roles, "redis")},
        "errors": errors,
        "lost": n - answered,
    }


# --- the orchestration --------------------------------------------------------------------


def spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cascadeq.bench.floor", "role", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()


def wait_ready(r: Any, names: Names, roles: dict[str, subprocess.Popen[bytes]]) -> None:
    """A readiness probe: each role sets its key once connected (the worker, once loaded)."""
    deadline = time.monotonic() + 120
    for role, proc in roles.items():
        while not r.exists(names.ready(role)):
            if proc.poll() is not None:
                err = proc.communicate()[1].decode(errors="replace")
                raise RuntimeError(f"floor {role} exited with {proc.returncode}: {err[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"floor {role} not ready after 120 s")
            time.sleep(0.02)


def delete_keys(r: Any, names: Names, n: int) -> None:
    r.delete(names.ingress, names.model, names.ready("router"), names.ready("worker"))
    for start in range(0, n, 1000):
        r.delete(*[names.result(i) for i in range(start, min(start + 1000, n))])


@contextmanager
def floor_session(
    url: str, model_path: Path, input_name: str, x: np.ndarray, n: int, *, prefix: str
) -> Iterator[dict[str, Any]]:
    """One run; yields its figures (with the role pids) while the results still exist, then
    stops every role and deletes the run's keys."""
    names = Names(prefix)
    r = redis.Redis.from_url(url)
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="cascadeq-floor-") as tmp:
        try:
            r.xgroup_create(names.ingress, ROUTER_GROUP, id="0", mkstream=True)
            r.xgroup_create(names.model, WORKER_GROUP, id="0", mkstream=True)
            base = ("--redis-url", url, "--prefix", prefix)
            roles = {
                "router": spawn("router", *base),
                "worker": spawn(
                    "worker", *base, "--model", str(model_path), "--input-name", input_name
                ),
            }
            procs.extend(roles.values())
            wait_ready(r, names, roles)
            inputs = Path(tmp) / "x.npy"
            np.save(inputs, np.ascontiguousarray(x), allow_pickle=False)
            pids = {role: p.pid for role, p in roles.items()}
            producer = spawn(*producer_args(base, inputs, n, pids))
            procs.append(producer)
            figs = producer_figures(producer, n)
            yield {**figs, "pids": {**pids, "producer": producer.pid}}
        finally:
            stop(procs)
            delete_keys(r, names, n)
            r.close()


def producer_args(base: tuple[str, ...], inputs: Path, n: int, pids: dict[str, int]) -> list[str]:
    return ["producer", *base, "--inputs", str(inputs), "--n", str(n), "--pids", json.dumps(pids)]


def producer_figures(proc: subprocess.Popen[bytes], n: int) -> dict[str, Any]:
    """The producer's last stdout line: its figures."""
    out, err = proc.communicate(timeout=max(600.0, n / 50))
    if proc.returncode != 0:
        raise RuntimeError(f"floor producer exited with {proc.returncode}: {err.decode()[-2000:]}")
    figs: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return figs


def run_floor(
    url: str, model_path: Path, input_name: str, x: np.ndarray, n: int, *, prefix: str
) -> dict[str, Any]:
    """The floor's figures for n one-sample requests (rows of x, cycled) on one model."""
    with floor_session(url, model_path, input_name, x, n, prefix=prefix) as figs:
        figs.pop("pids")
        return figs


def fresh_prefix() -> str:
    return f"floor-{uuid.uuid4().hex[:10]}"


def floor_for(bench: Bench, model: str | None = None, n: int | None = None) -> dict[str, Any]:
    """The floor on the bench's own Redis and model file; by default the small digits model
    at the bench's saturating size (pass TRIVIAL and scale.overhead beside `bench overhead`)."""
    from cascadeq.bench.workbench import SMALL  # noqa: PLC0415 - no cycle at import

    model = model or SMALL
    spec = bench.spec(model)
    count = n if n is not None else bench.scale.saturate[model]
    figs = run_floor(
        bench.system.url,
        spec.path,
        spec.inputs[0].name,
        bench.inputs[model],
        count,
        prefix=fresh_prefix(),
    )
    return {"model": model, **figs}


def bench_floor(redis_url: str | None, models_dir: Path, n: int, *, as_json: bool) -> int:
    """`cascadeq bench floor`: the floor alone, on the small digits model (built if need
    be), on REDIS_URL or a private redis-server."""
    from cascadeq.bench.harness import progress, redis_for  # noqa: PLC0415 - no cycle
    from cascadeq.examples import digits  # noqa: PLC0415 - the build extra

    digits.ensure_built(models_dir, log=lambda line: progress("floor", line))
    x = np.load(models_dir / "digits_test.npz")["X"].astype(np.float32)
    with redis_for(redis_url) as url:
        progress("floor", f"{n} one-sample requests on digits-small, redis {url}")
        figs = run_floor(
            url, models_dir / "digits_small.onnx", "input", x, n, prefix=fresh_prefix()
        )
    if not as_json:
        per = figs["per_role_us"]
        print(f"{'req/s':>9}{'us CPU':>9}" + "".join(f"{role:>10}" for role in per))
        print(
            f"{figs['throughput_rps']:>9.0f}{figs['cpu_us_per_request']:>9.1f}"
            + "".join(f"{v:>10.1f}" for v in per.values())
        )
    print(json.dumps(figs) if as_json else f"lost {figs['lost']}, errors {figs['errors']}")
    return 0 if not figs["lost"] and not figs["errors"] else 1


# --- command line -------------------------------------------------------------------------


def role_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="cascadeq.bench.floor role")
    parser.add_argument("role", choices=["producer", "router", "worker"])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--input-name")
    parser.add_argument("--inputs", type=Path)
    parser.add_argument("--n", type=int)
    parser.add_argument("--pids", type=json.loads)
    args = parser.parse_args(argv)
    names = Names(args.prefix)
    if args.role == "router":
        serve_router(args.redis_url, names)
    elif args.role == "worker":
        serve_worker(args.redis_url, names, args.model, args.input_name)
    else:
        x = np.load(args.inputs, allow_pickle=False)
        print(json.dumps(produce(args.redis_url, names, x, args.n, args.pids)))


def load_inputs(model: Path) -> np.ndarray:
    """The digits test split when it sits beside the model, else standard normal rows."""
    split = model.parent / "digits_test.npz"
    if split.exists():
        rows: np.ndarray = np.load(split)["X"]
        return rows.astype(np.float32)
    shape = [d if isinstance(d, int) else 1 for d in open_session(model).get_inputs()[0].shape]
    return np.random.default_rng(0).standard_normal((512, *shape[1:])).astype(np.float32)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["role"]:
        role_main(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="python -m cascadeq.bench.floor", description=__doc__)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--input-name", required=True)
    parser.add_argument("--n", type=int, default=30_000)
    parser.add_argument("--json", action="store_true", help="one JSON line only")
    args = parser.parse_args(argv)
    x = load_inputs(args.model)
    figs = run_floor(args.redis_url, args.model, args.input_name, x, args.n, prefix=fresh_prefix())
    if not args.json:
        for key, value in figs.items():
            print(f"{key:>22}: {value}")
    print(json.dumps(figs))


if __name__ == "__main__":
    with suppress(KeyboardInterrupt):
        main()
