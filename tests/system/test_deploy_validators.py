"""deploy/ passes the real validators (scripts/check_deploy.py), and each validator really
rejects the mistake it is there for: a broken copy of deploy/ must fail, naming the file."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check_deploy.py"


def checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_deploy", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_deploy_files_pass_every_validator() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for what in ("Dockerfile", "Kubernetes", "KEDA", "Compose"):
        assert f"deploy check {what}: ok" in done.stdout


BREAKS = [
    # (file under deploy/, text, replacement, check, what the problem names)
    ("Dockerfile", "USER 10001", "RUN apt-get install curl\nUSER 10001", "dockerfile", "DL3008"),
    ("k8s/worker.yaml", "imagePullPolicy:", "imagePullPolicyy:", "kubernetes", "worker.yaml"),
    ("k8s/config.yaml", "CASCADEQ_LOG_LEVEL: info", "CASCADEQ_LOG_LEVEL: 3", "kubernetes", "3"),
    ("k8s/redis.yaml", "replicas: 6", 'replicas: "6"', "kubernetes", "redis.yaml"),
    ("k8s/keda.yaml", 'lagCount: "64"', "lagCount: 64", "keda", "cascadeq-worker-digits-large"),
    ("k8s/keda.yaml", "  minReplicaCount: 1\n", "  minReplicas: 1\n", "keda", "minReplicas"),
    ("k8s/keda.yaml", "- parameter: password", "- parametr: password", "keda", "parameter"),
    ("compose.yaml", "stop_grace_period: 30s", "stop_grace_periods: 30s", "compose", "compose"),
]


@pytest.mark.parametrize(("name", "old", "new", "check", "named"), BREAKS)
def test_a_broken_deploy_file_fails_its_validator(
    tmp_path: Path, name: str, old: str, new: str, check: str, named: str
) -> None:
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    module = checker()
    run: Callable[[Path], list[str]] = getattr(module, check)
    assert run(tmp_path / "deploy") == [], "the copy passes before it is broken"
    path = tmp_path / "deploy" / name
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{name} no longer holds {old!r}: update this test"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    problems = run(tmp_path / "deploy")
    assert problems, f"{check} accepted {name} with {new!r}"
    assert any(named in p for p in problems), problems
