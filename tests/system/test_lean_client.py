"""The client installs alone: with the serving extras unimportable it still submits and
waits against a live system (routers and workers run with everything installed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import redis
from conftest import wait_for

from cascadeq.infra.process import ProcessGroup

SERVING_ONLY = ("onnxruntime", "prometheus_client", "tomlkit")

# Runs in a fresh interpreter: an import hook refuses the serving extras (as if they were
# not installed), then the client submits one request per model and waits for them.
CLIENT = """
import importlib.abc, json, sys

BLOCKED = set(sys.argv[1].split(","))

class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Missing())
for name in BLOCKED:
    try:
        __import__(name)
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit(f"{name} is still importable")

import numpy as np
from cascadeq.producer import Producer, Request

x = np.load(sys.argv[2])["X"][:2].astype(np.float32)
with Producer() as client:
    ids = client.submit_many([Request({"input": x[:1]}, task="digits"),
                              Request({"input": x[1:2]}, model="digits-large")])
    got = client.wait_many(ids, timeout=60)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps({"status": [g.status for g in got], "models": [g.model for g in got],
                  "loaded": loaded}))
"""


def test_the_client_submits_and_waits_without_the_serving_extras(
    r: redis.Redis, digits_dir: Path, group: ProcessGroup, env: dict[str, str]
) -> None:
    group.spawn("router")
    group.spawn("worker", "--models", "digits-small,digits-large")
    wait_for(
        lambda: any(c["name"].startswith("cq-worker") for c in r.client_list()),
        60,
        "a worker connects",
    )
    split = digits_dir / "digits_test.npz"
    done = subprocess.run(
        [sys.executable, "-c", CLIENT, ",".join(SERVING_ONLY), str(split)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["status"] == ["ok", "ok"], report
    assert report["models"][1] == "digits-large"
    assert report["models"][0] in ("digits-small", "digits-large")
    assert report["loaded"] == []  # nothing reached for a serving extra, even lazily
