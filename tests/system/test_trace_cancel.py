"""Trace context and cancellation through real router and worker processes: the caller's
traceparent comes back in the result and appears in the log lines of every hop (router,
first model, the model escalated to), and `cascadeq cancel` says what happened."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import numpy as np
import redis
from conftest import run_cli, wait_for

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra.process import ProcessGroup
from cascadeq.producer import Producer

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def escalating_catalog(digits_dir: Path, tmp_path: Path) -> Path:
    """The digits catalog with every first-stage answer escalated (threshold 1.0)."""
    text = (digits_dir / "catalog.toml").read_text()
    text = text.replace('path = "digits_', f'path = "{digits_dir}/digits_')
    text = text.replace('validation = "', f'validation = "{digits_dir}/')
    head, sep, rest = text.partition('{ model = "digits-small", threshold = ')
    text = head + sep + "1.0" + rest[rest.index(" }") :]
    path = tmp_path / "catalog.toml"
    path.write_text(text)
    return path


def logged(group: ProcessGroup, log: Path, *argv: str) -> None:
    """A cascadeq process whose stderr (its JSON log lines) goes to ``log``."""
    cmd = shlex.join([sys.executable, "-m", "cascadeq.cli", *argv])
    group.start(["sh", "-c", f"exec {cmd} 2> {shlex.quote(str(log))}"])


def hops(log: Path) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "hop"]


def test_a_traceparent_reaches_the_result_and_the_logs_of_every_hop(
    r: redis.Redis,
    settings: Settings,
    env: dict[str, str],
    digits_dir: Path,
    tmp_path: Path,
) -> None:
    catalog_path = escalating_catalog(digits_dir, tmp_path)
    env = {
        **env,
        "CASCADEQ_CATALOG": str(catalog_path),
        "CASCADEQ_LOG_LEVEL": "debug",
        "CASCADEQ_LOG_FORMAT": "json",
    }
    x = np.load(digits_dir / "digits_test.npz")["X"][:2]
    logs = {name: tmp_path / f"{name}.log" for name in ("router", "small", "large")}
    with ProcessGroup(env) as group:
        logged(group, logs["router"], "router")
        logged(group, logs["small"], "worker", "--models", "digits-small")
        logged(group, logs["large"], "worker", "--models", "digits-large")
        catalog = Catalog.load(catalog_path)
        with Producer(settings=settings, catalog=catalog) as client:
            traced = client.submit(task="digits", inputs={"input": x[:1]}, traceparent=TRACEPARENT)
            plain = client.submit(task="digits", inputs={"input": x[1:]})
            got, untraced = client.wait_many([traced, plain], timeout=120)
        wait_for(lambda: len(hops(logs["large"])) > 0, 30, "the last hop's line is written")
    assert got.ok
    assert got.traceparent == TRACEPARENT
    assert [hop["model"] for hop in got.path] == ["digits-small", "digits-large"]
    assert untraced.ok
    assert untraced.traceparent is None
    assert "traceparent" not in untraced.info
    for name, model in (
        ("router", "digits-small"),
        ("small", "digits-small"),
        ("large", "digits-large"),
    ):
        lines = hops(logs[name])
        assert [line["request_id"] for line in lines] == [traced], name  # only the traced one
        assert lines[0]["trace_id"] == TRACE_ID
        assert lines[0]["model"] == model


def test_cascadeq_cancel_says_cancelled_done_or_unknown(
    r: redis.Redis, settings: Settings, env: dict[str, str], catalog: Catalog, digits_dir: Path
) -> None:
    x = np.load(digits_dir / "digits_test.npz")["X"][:2]
    with Producer(settings=settings, catalog=catalog) as client:
        queued = client.submit(task="digits", inputs={"input": x[:1]})  # no router runs yet
        cancelled = run_cli(env, "cancel", queued)
        again = run_cli(env, "cancel", queued, "--json")
        unknown = run_cli(env, "cancel", "nobody")
        result = client.result(queued)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == f"{queued}: cancelled (it will never be computed)"
    assert again.returncode == 1
    assert json.loads(again.stdout) == {"id": queued, "outcome": "done", "status": "cancelled"}
    assert unknown.returncode == 6
    assert "unknown" in unknown.stdout
    assert result is not None
    assert result.status == "cancelled"
