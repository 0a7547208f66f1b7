"""A worker process killed while it escalates locally loses nothing: the first model's
entries are acknowledged only with the second model's results, in one commit."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import numpy as np
import redis
from test_pipeline import held_by, rows_of_32

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra.process import ProcessGroup
from cascadeq.producer import Producer
from cascadeq.protocol import keys as keynames
from cascadeq.protocol import wire
from cascadeq.protocol.keys import Keys
from cascadeq.protocol.messages import HEADER_FIELD, INPUTS_FIELD, Header, now_ms


def local_catalog(digits_dir: Path, out: Path) -> Path:
    """The digits catalog with every request unsure at the small model, escalated locally."""
    text = (digits_dir / "catalog.toml").read_text()
    text = re.sub(r'path = "(\w+\.onnx)"', lambda m: f'path = "{digits_dir / m[1]}"', text)
    text = re.sub(r'(model = "digits-small", threshold = )[0-9.]+', r"\g<1>1.0", text)
    text = text.replace("[tasks.digits]\n", '[tasks.digits]\nescalate = "local"\n', 1)
    path = out / "catalog.toml"
    path.write_text(text)
    assert Catalog.load(path).tasks["digits"].escalate == "local"
    return path


def backlog(r: redis.Redis, keys: Keys, x: np.ndarray, reply_to: str, n: int) -> list[str]:
    """Requests for the digits task queued at its first model, as a router queues them."""
    inputs = wire.dumps_inputs({"input": x})
    ids = [f"k{i}" for i in range(n)]
    pipe = r.pipeline(transaction=False)
    for rid in ids:
        header = Header(id=rid, task="digits", submitted_at=now_ms(), reply_to=reply_to)
        pipe.xadd(
            keys.model_stream("digits-small"), {HEADER_FIELD: header.dumps(), INPUTS_FIELD: inputs}
        )
    pipe.execute()
    return ids


def test_a_worker_killed_during_local_escalations_loses_nothing_and_answers_once(
    r: redis.Redis,
    settings: Settings,
    catalog: Catalog,
    digits_dir: Path,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    env["CASCADEQ_VISIBILITY_TIMEOUT_MS"] = "1000"
    env["CASCADEQ_CATALOG"] = str(local_catalog(digits_dir, tmp_path))
    x = rows_of_32(digits_dir)
    keys = Keys(settings.prefix)
    small = keys.model_stream("digits-small")
    n = 1500
    group = ProcessGroup(env)
    try:
        with Producer(settings=settings, catalog=catalog) as client:
            ids = backlog(r, keys, x, client.client_id, n)
            models = ("--models", "digits-small,digits-large")
            victim = group.spawn("worker", *models)
            client.wait(ids[0], timeout=60)  # the victim is serving
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            assert held_by(r, small, victim.pid) > 0, "the victim held no batch when it died"
            group.spawn("worker", *models)  # the survivor
            got = client.wait_many(ids, timeout=180)
    finally:
        group.stop()
    assert [g.id for g in got] == ids
    assert all(g.ok for g in got)
    assert all(
        [(h["model"], h.get("hop")) for h in g.path]
        == [("digits-small", None), ("digits-large", "local")]
        for g in got
    )
    assert r.xpending(small, keynames.WORKER_GROUP)["pending"] == 0
    assert int(r.get(keys.backlog(small)) or 0) == 0
    assert r.xlen(keys.model_stream("digits-large")) == 0  # nothing went through the queue
    # Each request was answered once: no result was computed twice and counted again.
    answered = {
        m: int(r.hget(keys.model_totals(m), "answered") or 0)
        for m in ("digits-small", "digits-large")
    }
    assert answered == {"digits-small": 0, "digits-large": n}
