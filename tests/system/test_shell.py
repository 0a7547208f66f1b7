"""`cascadeq submit` and `cascadeq result`, run as a person at a shell would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import run_cli

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra.process import ProcessGroup
from cascadeq.producer import Producer


def test_submit_wait_and_result_from_the_shell(
    env: dict[str, str], group: ProcessGroup, digits_dir: Path, tmp_path: Path
) -> None:
    x = np.load(digits_dir / "digits_test.npz")["X"][:2]
    np.save(tmp_path / "x.npy", x)
    group.spawn("router")
    group.spawn("worker")
    waited = run_cli(
        env, "submit", "--task", "digits", "--input", f"input={tmp_path / 'x.npy'}", "--wait", "60"
    )
    assert waited.returncode == 0, waited.stderr
    answer = json.loads(waited.stdout)
    assert answer["status"] == "ok"
    assert np.array(answer["outputs"]["probabilities"]).shape == (2, 10)
    rid = run_cli(
        env, "submit", "--model", "digits-small", "--input", f"input={tmp_path / 'x.npy'}"
    ).stdout.strip()
    polled = run_cli(env, "result", rid, "--wait", "60")
    assert polled.returncode == 0, polled.stderr
    assert json.loads(polled.stdout)["model"] == "digits-small"
    refused = run_cli(env, "submit", "--task", "nope", "--input", f"input={tmp_path / 'x.npy'}")
    assert refused.returncode == 3
    assert "unknown_task" in refused.stderr
    unknown = run_cli(env, "result", "no-such-id")
    assert unknown.returncode == 6
    assert "unknown id no-such-id (never submitted" in unknown.stderr


def test_configuration_errors_are_one_line_without_a_traceback(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": "redis://127.0.0.1:1/0"}
    missing = run_cli(env, "worker", "--catalog", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr
    assert "nope.toml: (file): cannot be read" in missing.stderr
    (tmp_path / "bad.toml").write_text('[models.m]\npath = "m.onnx"\n')
    bad = run_cli(env, "router", "--catalog", str(tmp_path / "bad.toml"))
    assert bad.returncode == 2
    assert "models.m.inputs: is missing" in bad.stderr
    no_url = run_cli({"PATH": "/usr/bin:/bin"}, "router", "--catalog", str(tmp_path / "bad.toml"))
    assert "Traceback" not in no_url.stderr


def test_result_wait_wakes_for_a_request_another_client_submitted(
    env: dict[str, str],
    group: ProcessGroup,
    settings: Settings,
    catalog: Catalog,
    digits_dir: Path,
) -> None:
    x = np.load(digits_dir / "digits_test.npz")["X"][:1]
    with Producer(settings=settings, catalog=catalog) as client:
        rid = client.submit(task="digits", inputs={"input": x})  # nothing serves it yet
    waiter = subprocess.Popen(
        [sys.executable, "-m", "cascadeq.cli", "result", rid, "--wait", "60"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    group.spawn("router")
    group.spawn("worker")
    out, err = waiter.communicate(timeout=90)
    assert waiter.returncode == 0, err
    assert json.loads(out)["id"] == rid
