"""Bulk jobs end to end: real Redis, router and worker processes, a real rq worker."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import psutil
import pytest
import redis
from conftest import run_cli, wait_for
from test_pipeline import blocked_readers

from cascadeq.bulk import jobs
from cascadeq.bulk.job import chunk_for, item_id
from cascadeq.bulk.pace import GAP_S
from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra.process import ProcessGroup
from cascadeq.protocol.keys import Keys

JOB_WAIT_S = 240


def serving(group: ProcessGroup, r: redis.Redis) -> None:
    group.spawn("router")
    group.spawn("worker")
    wait_for(lambda: blocked_readers(r, "digits-large") >= 1, 60, "the worker waits for work")


def rows(digits_dir: Path, n: int) -> np.ndarray:
    x = np.load(digits_dir / "digits_test.npz")["X"]
    return np.ascontiguousarray(np.resize(x, (n, x.shape[1])).astype(np.float32))


def direct_labels(catalog: Catalog, x: np.ndarray, models: np.ndarray) -> np.ndarray:
    """Each row run on the model that answered it, straight through ONNX Runtime."""
    labels = np.full(len(x), -1)
    for name in set(models.tolist()):
        spec = catalog.model(name)
        session = ort.InferenceSession(str(spec.path), providers=["CPUExecutionProvider"])
        mask = models == name
        (probs,) = session.run([spec.output], {spec.inputs[0].name: x[mask]})
        labels[mask] = np.argmax(probs, axis=1)
    return labels


def answered_total(r: redis.Redis, settings: Settings, catalog: Catalog) -> int:
    keys = Keys(settings.prefix)
    return sum(int(r.hget(keys.model_totals(m), "answered") or 0) for m in catalog.models)


def test_a_5000_row_npz_job_answers_every_row_in_input_order(
    r: redis.Redis,
    settings: Settings,
    catalog: Catalog,
    digits_dir: Path,
    group: ProcessGroup,
    tmp_path: Path,
) -> None:
    serving(group, r)
    group.spawn("bulk", "worker")
    x = rows(digits_dir, 5000)
    np.savez(tmp_path / "in.npz", input=x)
    job_id = jobs.submit(tmp_path / "in.npz", task="digits", settings=settings)
    state = jobs.wait(job_id, settings, JOB_WAIT_S)
    assert state["status"] == "finished", state
    assert (state["done"], state["total"], state["errors"]) == (5000, 5000, 0)
    start = chunk_for(catalog.models["digits-small"].batching.max_batch) / GAP_S
    assert 0 < state["send_rate"] <= start  # the default pace: never past its start
    with np.load(tmp_path / "in.out.npz", allow_pickle=False) as out:
        assert (out["status"] == "ok").all()
        assert out["id"].tolist() == [item_id(job_id, i) for i in range(5000)]
        got = np.argmax(out["probabilities"], axis=1)
        assert (got == direct_labels(catalog, x, out["model"])).all()
        assert set(out["model"].tolist()) <= set(catalog.models)
    assert answered_total(r, settings, catalog) == 5000


def test_a_jsonl_job_fails_bad_rows_alone_with_their_reasons(
    r: redis.Redis,
    settings: Settings,
    env: dict[str, str],
    digits_dir: Path,
    group: ProcessGroup,
    tmp_path: Path,
) -> None:
    serving(group, r)
    group.spawn("bulk", "worker")
    x = rows(digits_dir, 30)
    lines = [json.dumps({"input": row.tolist()}) for row in x]
    lines[5] = "{not json"
    nan = x[7].copy()
    nan[3] = np.nan
    lines[7] = json.dumps({"input": [None if np.isnan(v) else float(v) for v in nan]})
    lines[9] = json.dumps({"input": x[9][:-1].tolist()})  # wrong shape
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    done = run_cli(env, "bulk", "submit", str(tmp_path / "in.jsonl"), "--task", "digits")
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    watched = run_cli(env, "bulk", "status", job_id, "--watch", "0.2", timeout=JOB_WAIT_S)
    assert watched.returncode == 0, watched.stderr
    assert "30/30 100%" in watched.stdout.splitlines()[-1]
    assert "errors 3" in watched.stdout.splitlines()[-1]
    out = [json.loads(s) for s in (tmp_path / "in.out.jsonl").read_text().splitlines()]
    assert [o["row"] for o in out] == list(range(30))
    bad = {o["row"]: o for o in out if o["status"] != "ok"}
    assert sorted(bad) == [5, 7, 9]
    assert "line 6" in bad[5]["error"]["message"]
    assert bad[7]["error"]["code"] == "bad_input"
    assert bad[9]["error"]["code"] == "bad_input"
    assert all(o["outputs"]["probabilities"] for o in out if o["status"] == "ok")
    shown = run_cli(env, "bulk", "status", job_id, "--json")
    assert json.loads(shown.stdout.splitlines()[-1])["status"] == "finished"


def kill_tree(proc: psutil.Process) -> None:
    """The rq worker and its work horse, as a machine failing takes them."""
    for child in proc.children(recursive=True):
        child.send_signal(signal.SIGKILL)
    proc.send_signal(signal.SIGKILL)


def test_an_rq_worker_killed_mid_job_finishes_on_retry_with_each_row_answered_once(
    r: redis.Redis,
    settings: Settings,
    catalog: Catalog,
    env: dict[str, str],
    digits_dir: Path,
    group: ProcessGroup,
    tmp_path: Path,
) -> None:
    serving(group, r)
    victim = group.spawn("bulk", "worker")
    n = 40_000  # long enough to be caught part way through
    np.save(tmp_path / "in.npy", rows(digits_dir, n))
    job_id = jobs.submit(tmp_path / "in.npy", task="digits", settings=settings)

    def started() -> bool:
        state = jobs.progress(job_id, settings)
        assert state["status"] not in jobs.ENDED, state
        return 0 < state["done"] < n

    wait_for(started, JOB_WAIT_S, "the job is part way through")
    kill_tree(psutil.Process(victim.pid))
    victim.wait()
    assert jobs.progress(job_id, settings)["status"] == "started"  # orphaned, as rq sees it
    done = run_cli(env, "bulk", "retry", job_id)
    assert done.returncode == 0, done.stderr
    group.spawn("bulk", "worker")
    state = jobs.wait(job_id, settings, JOB_WAIT_S)
    assert state["status"] == "finished", state
    assert (state["done"], state["errors"]) == (n, 0)
    with np.load(tmp_path / "in.out.npz", allow_pickle=False) as out:
        ids = out["id"].tolist()
        assert (out["status"] == "ok").all()
    assert ids == [item_id(job_id, i) for i in range(n)]
    assert len(set(ids)) == n
    assert answered_total(r, settings, catalog) == n  # nothing computed twice


@pytest.mark.parametrize("argv", [("status",), ("cancel",), ("retry",)])
def test_an_unknown_job_id_is_a_clear_error(env: dict[str, str], argv: tuple[str, ...]) -> None:
    done = run_cli(env, "bulk", *argv, "no-such-job")
    assert done.returncode == 6, done.stderr
    assert done.stderr.strip() == (
        "cascadeq bulk: no bulk job no-such-job (never submitted, or expired)"
    )


def test_an_input_of_unknown_kind_is_refused_at_submit(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("1,2\n")
    done = run_cli(env, "bulk", "submit", str(tmp_path / "in.csv"), "--task", "digits")
    assert done.returncode == 2, done.stderr
    assert "unknown input kind '.csv'" in done.stderr


def test_cancel_stops_a_running_job(
    r: redis.Redis,
    settings: Settings,
    env: dict[str, str],
    digits_dir: Path,
    group: ProcessGroup,
    tmp_path: Path,
) -> None:
    serving(group, r)
    group.spawn("bulk", "worker")
    n = 40_000
    np.save(tmp_path / "in.npy", rows(digits_dir, n))
    job_id = jobs.submit(tmp_path / "in.npy", task="digits", settings=settings)
    wait_for(lambda: jobs.progress(job_id, settings)["done"] > 0, JOB_WAIT_S, "the job runs")
    done = run_cli(env, "bulk", "cancel", job_id)
    assert done.returncode == 0, done.stderr
    state = jobs.wait(job_id, settings, JOB_WAIT_S)
    assert state["status"] == "stopped", state
    assert state["done"] < n
    assert not (tmp_path / "in.out.npz").exists()


def test_status_watch_leaves_cleanly_on_ctrl_c(
    settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    np.save(tmp_path / "in.npy", np.zeros((3, 64), np.float32))
    job_id = jobs.submit(tmp_path / "in.npy", task="digits", settings=settings)  # no rq worker
    watch = subprocess.Popen(
        [sys.executable, "-m", "cascadeq.cli", "bulk", "status", job_id, "--watch", "0.05"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert watch.stdout is not None
    first = watch.stdout.readline()  # it is in its loop: the job is queued, never ending
    assert f"{job_id} queued" in first
    watch.send_signal(signal.SIGINT)
    _, err = watch.communicate(timeout=30)
    assert watch.returncode == 0, err
    assert "Traceback" not in err
