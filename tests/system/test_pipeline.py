"""The whole system as deployed: router and worker processes, a real Redis, real models."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import redis
import streamview
from conftest import run_cli, wait_for

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra.process import ProcessGroup
from cascadeq.producer import Producer, Request
from cascadeq.protocol import keys as keynames
from cascadeq.protocol import results, wire
from cascadeq.protocol.keys import Keys
from cascadeq.protocol.messages import HEADER_FIELD, INPUTS_FIELD, Header, now_ms


def blocked_readers(r: redis.Redis, model: str) -> int:
    """Worker connections for ``model`` parked in a blocking read: ready for work."""
    return sum(
        1 for c in r.client_list() if c["name"] == f"cq-worker-{model}" and "b" in c["flags"]
    )


def consumers(r: redis.Redis, stream: str) -> dict[str, int]:
    if not r.exists(stream):
        return {}
    return {
        c["name"].decode(): int(c["pending"])
        for c in r.xinfo_consumers(stream, keynames.WORKER_GROUP)
    }


def test_600_requests_through_one_router_and_two_workers_all_accounted_for(
    r: redis.Redis, settings: Settings, catalog: Catalog, digits_dir: Path, group: ProcessGroup
) -> None:
    split = np.load(digits_dir / "digits_test.npz")
    x, y = split["X"], split["y"]
    router = group.spawn("router")
    workers = [
        group.spawn("worker"),
        group.spawn("worker", "--models", "digits-small,digits-large"),
    ]
    wait_for(lambda: blocked_readers(r, "digits-small") == 2, 60, "both workers wait for work")
    requests = [Request({"input": x[i % len(x)][None]}, task="digits") for i in range(500)]
    requests += [Request({"input": x[i][None]}, model="digits-large") for i in range(50)]
    requests += [Request({"input": x[i : i + 3]}, model="digits-small") for i in range(50)]
    with Producer(settings=settings, catalog=catalog) as client:
        ids = client.submit_many(requests)
        got = client.wait_many(ids, timeout=120)
    assert [g.id for g in got] == ids
    assert all(g.ok for g in got), [g.error for g in got if not g.ok][:3]
    cascade = got[:500]
    accuracy = np.mean(
        [np.argmax(g.outputs["probabilities"][0]) == y[i % len(y)] for i, g in enumerate(cascade)]
    )
    assert accuracy > 0.9
    escalated = [g for g in cascade if g.model == "digits-large"]
    assert 0 < len(escalated) < len(cascade)
    assert all([h["model"] for h in g.path] == ["digits-small", "digits-large"] for g in escalated)
    assert all(g.model == "digits-large" and len(g.path) == 1 for g in got[500:550])
    assert all(g.outputs["probabilities"].shape == (3, 10) for g in got[550:])
    keys = Keys(settings.prefix)
    small = consumers(r, keys.model_stream("digits-small"))
    assert len(small) == 2  # both worker processes joined the group ...
    assert sum(small.values()) == 0  # ... and acknowledged everything
    group.stop()
    assert router.returncode == 0
    assert [w.returncode for w in workers] == [0, 0]  # SIGTERM: a clean, graceful exit


def test_a_worker_killed_mid_batch_loses_nothing(
    r: redis.Redis,
    settings: Settings,
    catalog: Catalog,
    digits_dir: Path,
    env: dict[str, str],
    group: ProcessGroup,
) -> None:
    env["CASCADEQ_VISIBILITY_TIMEOUT_MS"] = "1000"
    x = rows_of_32(digits_dir)
    keys = Keys(settings.prefix)
    stream = keys.model_stream("digits-large")
    with Producer(settings=settings, catalog=catalog) as client:
        ids = backlog(r, keys, x, client.client_id, 1500)
        victim = group.spawn("worker", "--models", "digits-large")
        client.wait(ids[0], timeout=60)  # the victim is serving
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        assert held_by(r, stream, victim.pid) > 0, "the victim held no batch when it died"
        group.spawn("worker", "--models", "digits-large")  # the survivor
        got = client.wait_many(ids, timeout=180)
    assert all(g.ok for g in got)
    assert [g.id for g in got] == ids
    assert held_by(r, stream, victim.pid) == 0
    assert r.xpending(stream, keynames.WORKER_GROUP)["pending"] == 0


def rows_of_32(digits_dir: Path) -> np.ndarray:
    """One request of 32 samples: a full batch for digits-large, so backlogs last a while."""
    return np.ascontiguousarray(np.resize(np.load(digits_dir / "digits_test.npz")["X"], (32, 64)))


def held_by(r: redis.Redis, stream: str, pid: int | None) -> int:
    """Entries a worker process has read and not yet acknowledged."""
    return sum(n for name, n in consumers(r, stream).items() if f"-{pid}-" in name)


def backlog(r: redis.Redis, keys: Keys, x: np.ndarray, reply_to: str, n: int) -> list[str]:
    """Requests for digits-large queued as a router would queue them."""
    inputs = wire.dumps_inputs({"input": x})
    ids = [f"k{i}" for i in range(n)]
    pipe = r.pipeline(transaction=False)
    for rid in ids:
        header = Header(id=rid, model="digits-large", submitted_at=now_ms(), reply_to=reply_to)
        pipe.xadd(
            keys.model_stream("digits-large"), {HEADER_FIELD: header.dumps(), INPUTS_FIELD: inputs}
        )
    pipe.execute()
    return ids


#: With CASCADEQ_BLOCK_MS=200: one blocking read, one batch window, a batch or two of
#: compute, interpreter exit. docs/architecture.md (Shutdown) states the general bound.
SHUTDOWN_BOUND_S = 3.0


def test_sigterm_lets_a_worker_finish_and_ack_its_batch_then_exit(
    r: redis.Redis, settings: Settings, catalog: Catalog, digits_dir: Path, group: ProcessGroup
) -> None:
    x = rows_of_32(digits_dir)
    keys = Keys(settings.prefix)
    stream = keys.model_stream("digits-large")
    with Producer(settings=settings, catalog=catalog) as client:
        ids = backlog(r, keys, x, client.client_id, 1500)
        worker = group.spawn("worker", "--models", "digits-large")
        client.wait(ids[0], timeout=60)
        signalled = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        assert time.monotonic() - signalled < SHUTDOWN_BOUND_S
        assert (
            held_by(r, stream, worker.pid) == 0
        )  # everything it had read was answered and acknowledged
        stored = r.mget([keys.result(i) for i in ids])
        answered = [raw for raw in stored if raw and not results.is_pending(raw)]
        assert 0 < len(answered) < len(ids)  # it stopped early, leaving the rest queued
        group.spawn("worker", "--models", "digits-large")
        assert all(g.ok for g in client.wait_many(ids, timeout=180))


def test_sigterm_lets_a_router_forward_and_ack_what_it_read_then_exit(
    r: redis.Redis, settings: Settings, catalog: Catalog, digits_dir: Path, env: dict[str, str]
) -> None:
    x = np.load(digits_dir / "digits_test.npz")["X"][:1]
    keys = Keys(settings.prefix)
    small = keys.model_stream("digits-small")
    with Producer(settings=settings, catalog=catalog) as client:  # 2,000 bundles of 10
        ids = [
            rid
            for _ in range(2_000)
            for rid in client.submit_many([Request({"input": x}, task="digits")] * 10)
        ]
    group = ProcessGroup({**env, "CASCADEQ_ROUTER_BATCH": "1"})  # one bundle a read
    try:
        router = group.spawn("router")
        wait_for(lambda: r.xlen(small) > 0, 60, "the router is forwarding")
        signalled = time.monotonic()
        router.send_signal(signal.SIGTERM)
        assert router.wait(timeout=30) == 0
        assert time.monotonic() - signalled < SHUTDOWN_BOUND_S
        assert r.xpending(keys.ingress, keynames.ROUTER_GROUP)["pending"] == 0  # acked
        routed = streamview.count(r, small)
        assert 0 < routed < len(ids)  # it stopped early, leaving the rest on ingress
        group.spawn("router")
        wait_for(
            lambda: int(r.get(keys.backlog(small)) or 0) == len(ids), 120, "the rest is routed"
        )
        assert streamview.count(r, small) == len(ids)
        assert r.xpending(keys.ingress, keynames.ROUTER_GROUP)["pending"] == 0
    finally:
        group.stop()


def test_replicas_are_restarted_when_they_die(
    settings: Settings,
    catalog: Catalog,
    digits_dir: Path,
    env: dict[str, str],
    group: ProcessGroup,
) -> None:
    import psutil

    # A copy killed inside a blocking read may still be handed the next entry; a short
    # visibility timeout lets the new copies reclaim it quickly.
    env["CASCADEQ_VISIBILITY_TIMEOUT_MS"] = "1000"

    x = np.load(digits_dir / "digits_test.npz")["X"][:1]
    group.spawn("router")
    parent = group.spawn("worker", "--models", "digits-small", "--replicas", "2")
    with Producer(settings=settings, catalog=catalog) as client:
        client.wait(client.submit(model="digits-small", inputs={"input": x}), timeout=60)
        first = psutil.Process(parent.pid).children()
        assert len(first) == 2
        for child in first:
            child.kill()
        # Served only if the supervisor started new copies: both originals are dead.
        client.wait(client.submit(model="digits-small", inputs={"input": x}), timeout=60)
    second = psutil.Process(parent.pid).children()
    assert len(second) == 2
    assert not {c.pid for c in first} & {c.pid for c in second}
    group.stop()
    assert parent.returncode == 0


def test_replicas_that_keep_crashing_stop_the_group_with_their_exit_code(
    env: dict[str, str], digits_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "broken.onnx").write_bytes(b"not an onnx model")
    text = (digits_dir / "catalog.toml").read_text()
    text = text.replace('path = "digits_large.onnx"', f'path = "{digits_dir}/digits_large.onnx"')
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(text.replace('path = "digits_small.onnx"', 'path = "broken.onnx"'))
    assert "broken.onnx" in catalog.read_text()
    argv = ["worker", "--models", "digits-small", "--replicas", "2", "--catalog", str(catalog)]
    parent = run_cli(env, *argv, timeout=120)
    assert parent.returncode == 2  # ModelLoadError in every copy: a configuration error
    assert parent.stderr.count("replica_exited") >= 3  # it did restart them, then gave up
    assert "cannot load" in parent.stderr
