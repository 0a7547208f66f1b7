"""Model lifecycle with real processes: versions switched under load, a bad version
refused, a canary's share, promote and rollback, provider fallback, and the LRU of a
worker's sessions under a memory budget."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from conftest import run_cli, wait_for

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.infra import catalogs
from cascadeq.infra.process import ProcessGroup
from cascadeq.producer import Producer, Request
from cascadeq.protocol.keys import Keys
from cascadeq.protocol.messages import Result
from cascadeq.workers.versions import canary_point

INPUTS = 'inputs = [{ name = "input", dtype = "float32", shape = [-1, 64] }]\n'


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def two_versions(digits_dir: Path, active: str = "1", extra: str = "", sha2: str = "") -> str:
    """Model ``digits`` whose version 1 is the small digits model and 2 the large one."""
    small, large = digits_dir / "digits_small.onnx", digits_dir / "digits_large.onnx"
    return (
        f'[models.digits]\nactive = "{active}"\noutput = "probabilities"\n{INPUTS}{extra}'
        f'[models.digits.versions.1]\npath = "{small}"\nsha256 = "{sha(small)}"\n'
        f'[models.digits.versions.2]\npath = "{large}"\nsha256 = "{sha2 or sha(large)}"\n'
    )


def version_of(result: Result) -> str:
    return str(result.path[-1]["version"])


@pytest.fixture
def x(digits_dir: Path) -> np.ndarray:
    return np.ascontiguousarray(np.load(digits_dir / "digits_test.npz")["X"][:64], np.float32)


@pytest.fixture
def served(
    env: dict[str, str], tmp_path: Path, digits_dir: Path
) -> Iterator[tuple[ProcessGroup, Path, dict[str, str]]]:
    """A router and a worker serving the two-version catalog at ``catalog.toml``."""
    path = tmp_path / "catalog.toml"
    path.write_text(two_versions(digits_dir))
    mine = {**env, "CASCADEQ_CATALOG": str(path)}
    group = ProcessGroup(mine)
    group.spawn("router")
    group.spawn("worker")
    yield group, path, mine
    group.stop()


def ask(client: Producer, x: np.ndarray, n: int, **kw: str) -> list[Result]:
    ids = client.submit_many(
        [Request({"input": x[i % len(x)][None]}, model="digits", **kw) for i in range(n)]  # type: ignore[arg-type]
    )
    return [client.wait(i, timeout=60) for i in ids]


def canary_probe(client: Producer, x: np.ndarray) -> str:
    """The version answering a new id that falls within a 10% canary's share."""
    rid = next(
        r
        for r in (f"probe-{os.getpid()}-{next(PROBES)}" for _ in iter(int, 1))
        if canary_point(r) < 0.1
    )
    [result] = ask(client, x, 1, id=rid)
    return version_of(result)


PROBES = itertools.count()


def test_a_version_switch_under_steady_load_loses_and_fails_no_request(
    served: tuple[ProcessGroup, Path, dict[str, str]],
    settings: Settings,
    tmp_path: Path,
    digits_dir: Path,
    x: np.ndarray,
) -> None:
    _, path, env = served
    got: list[Result] = []
    stop = threading.Event()
    with Producer(settings=settings, catalog=Catalog.load(path)) as client:
        got += ask(client, x, 20)  # flowing, on version 1

        def load() -> None:
            while not stop.is_set():
                got.extend(ask(client, x, 20))

        steady = threading.Thread(target=load)
        steady.start()
        new = tmp_path / "v2.toml"
        new.write_text(two_versions(digits_dir, active="2"))
        published = run_cli(env, "models", "publish", str(new))
        assert published.returncode == 0, published.stderr
        assert "model digits: active 2" in published.stdout
        wait_for(lambda: any(version_of(r) == "2" for r in got[-20:]), 60, "version 2 answers")
        stop.set()
        steady.join()
        got += ask(client, x, 20)
    assert all(r.ok for r in got), [r.error for r in got if not r.ok][:3]
    versions = [version_of(r) for r in got]
    assert versions[0] == "1"
    assert set(versions) == {"1", "2"}
    assert set(versions[-20:]) == {"2"}  # after the switch, only the new version answers
    assert {r.path[-1]["provider"] for r in got} == {"CPUExecutionProvider"}


def test_an_invalid_version_is_refused_and_the_old_one_keeps_serving(
    served: tuple[ProcessGroup, Path, dict[str, str]],
    settings: Settings,
    r: redis.Redis,
    tmp_path: Path,
    digits_dir: Path,
    x: np.ndarray,
) -> None:
    _, path, env = served
    keys = Keys(settings.prefix)
    bad = tmp_path / "bad.toml"
    bad.write_text(two_versions(digits_dir, active="2", sha2="0" * 64))
    refused = run_cli(env, "models", "publish", str(bad))
    assert refused.returncode == 2
    assert "model digits version 2: sha256: the catalog says 0000" in refused.stderr
    with Producer(settings=settings, catalog=Catalog.load(path)) as client:
        assert {version_of(r) for r in ask(client, x, 10)} == {"1"}
        # Published past the command's checks (a file changed on the worker's host): the
        # worker checks again, refuses it, says why, and keeps serving version 1.
        catalogs.publish(r, keys, Catalog.load(bad, check_files=False))
        wait_for(
            lambda: r.hget(keys.model_versions("digits"), "2:refused") is not None,
            60,
            "the worker refuses version 2",
        )
        why = r.hget(keys.model_versions("digits"), "2:refused")
        assert b"model digits version 2: sha256" in why  # type: ignore[operator]
        after = ask(client, x, 30)
    assert all(r.ok for r in after)
    assert {version_of(r) for r in after} == {"1"}


def test_a_canary_takes_its_share_then_promote_and_rollback_switch_versions(
    served: tuple[ProcessGroup, Path, dict[str, str]],
    settings: Settings,
    tmp_path: Path,
    digits_dir: Path,
    x: np.ndarray,
) -> None:
    env = served[2]
    canary = tmp_path / "canary.toml"
    canary.write_text(two_versions(digits_dir, extra='canary = { version = "2", share = 0.1 }\n'))
    assert run_cli(env, "models", "publish", str(canary)).returncode == 0
    with Producer(settings=settings) as client:  # the published catalog
        wait_for(lambda: canary_probe(client, x) == "2", 60, "the worker serves the canary")
        got = ask(client, x, 2000)
        assert all(r.ok for r in got)
        share = sum(version_of(r) == "2" for r in got) / len(got)
        assert abs(share - 0.1) <= 0.03, share
        compared = run_cli(env, "models", "compare", "digits", "--json")
        assert compared.returncode == 0, compared.stderr
        rows = json.loads(compared.stdout.splitlines()[-1])["versions"]
        assert (rows["1"]["role"], rows["2"]["role"]) == ("active", "canary")
        assert rows["2"]["requests"] >= sum(version_of(r) == "2" for r in got)  # and probes
        assert 0.5 < rows["2"]["agreement"] <= 1.0  # small and large mostly agree
        assert 0.0 < rows["1"]["confidence"] <= 1.0
        assert 0.0 < rows["2"]["confidence"] <= 1.0
        promoted = run_cli(env, "models", "promote", "digits")
        assert promoted.returncode == 0, promoted.stderr
        assert "model digits: active 2 (versions 1, 2)" in promoted.stdout
        wait_for(lambda: version_of(ask(client, x, 1)[0]) == "2", 60, "version 2 answers all")
        assert {version_of(r) for r in ask(client, x, 50)} == {"2"}
        rolled = run_cli(env, "models", "rollback", "digits")
        assert rolled.returncode == 0, rolled.stderr
        assert "active 2 -> 1" in rolled.stdout
        wait_for(lambda: version_of(ask(client, x, 1)[0]) == "1", 60, "version 1 answers again")
        assert {version_of(r) for r in ask(client, x, 50)} == {"1"}


def test_an_unavailable_provider_falls_back_and_is_refused_under_strict(
    env: dict[str, str], settings: Settings, tmp_path: Path, digits_dir: Path, x: np.ndarray
) -> None:
    wanted = 'providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]\n'
    loose, strict = tmp_path / "loose.toml", tmp_path / "strict.toml"
    loose.write_text(two_versions(digits_dir, extra=wanted))
    strict.write_text(two_versions(digits_dir, extra=wanted + "strict = true\n"))
    refused = run_cli(env, "models", "publish", str(strict))
    assert refused.returncode == 2
    assert "model digits version 1: providers: ['CUDAExecutionProvider'] not available" in (
        refused.stderr
    )
    with ProcessGroup({**env, "CASCADEQ_CATALOG": str(strict)}) as group:
        assert group.spawn("worker").wait(timeout=60) == 2  # a configuration error, said once
    with ProcessGroup({**env, "CASCADEQ_CATALOG": str(loose)}) as group:
        group.spawn("router")
        group.spawn("worker")
        with Producer(settings=settings, catalog=Catalog.load(loose)) as client:
            got = ask(client, x, 10)
    assert all(r.ok for r in got)
    assert {r.path[-1]["provider"] for r in got} == {"CPUExecutionProvider"}


def test_a_budget_for_one_model_evicts_and_reloads_with_correct_answers(
    env: dict[str, str], r: redis.Redis, settings: Settings, tmp_path: Path, digits_dir: Path
) -> None:
    import onnxruntime as ort

    text = ""
    for name in ("alpha", "beta"):  # two models of one size: the large digits model's copies
        shutil.copy(digits_dir / "digits_large.onnx", tmp_path / f"{name}.onnx")
        text += f'[models.{name}]\npath = "{name}.onnx"\noutput = "probabilities"\n{INPUTS}'
    path = tmp_path / "catalog.toml"
    path.write_text(text)
    x = np.load(digits_dir / "digits_test.npz")["X"][:8].astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "alpha.onnx"))
    want = session.run(["probabilities"], {"input": x})[0]
    keys = Keys(settings.prefix)
    # RSS deltas vary with the allocator's state, so a budget under one model's size is
    # what holds exactly one (the last used always stays): every switch evicts.
    mine = {**env, "CASCADEQ_CATALOG": str(path), "CASCADEQ_MEMORY_BUDGET_MB": "1"}
    with ProcessGroup(mine) as group, Producer(settings=settings, catalog=Catalog.load(path)) as c:
        group.spawn("router")
        group.spawn("worker", "--models", "alpha,beta")
        for model in ("alpha", "beta", "alpha", "beta"):
            [got] = [c.wait(i, 60) for i in c.submit_many([Request({"input": x}, model=model)])]
            assert got.ok
            assert np.allclose(got.outputs["probabilities"], want, atol=1e-6)
        figures = {m: r.hgetall(keys.model_versions(m)) for m in ("alpha", "beta")}
    for m in ("alpha", "beta"):
        assert int(figures[m][b"1:loads"]) >= 2  # at start, then again after its eviction
        assert int(figures[m][b"1:evictions"]) >= 1
        assert int(figures[m][b"1:load_us"]) > 0
    resident = [int(figures[m][b"1:resident_bytes"]) for m in ("alpha", "beta")]
    assert sorted(resident)[0] == 0  # one of them evicted now
    assert sorted(resident)[1] >= (tmp_path / "alpha.onnx").stat().st_size
