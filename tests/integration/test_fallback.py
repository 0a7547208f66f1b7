"""Fallbacks on a real Redis with the real router and workers: a model that raises, or
whose file fails to load, passes its requests to the catalog's fallback, a hop marked
``fallback``; the fallback takes over the stage, so the cascade's rules hold on it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis
from test_workers import drain

from cascadeq.config.catalog import Catalog, CatalogError
from cascadeq.config.settings import Settings
from cascadeq.producer import Producer, Request
from cascadeq.router import Router
from cascadeq.workers import ModelWorker
from cascadeq.workers.sessions import Sessions


class Broken:
    """A model whose every call raises, as a model with a bug would."""

    def run(self, inputs: Mapping[str, np.ndarray], samples: int) -> np.ndarray:
        raise RuntimeError("the model fell over")


def catalog_with(
    digits_dir: Path, tmp_path: Path, threshold: str, extra: str, more: str = "", small: str = ""
) -> Catalog:
    """The digits catalog with absolute paths, a first-stage threshold, ``extra`` lines in
    digits-small's table, ``more`` tables, and ``small`` as digits-small's file if given."""
    text = (digits_dir / "catalog.toml").read_text()
    text = text.replace('path = "digits_', f'path = "{digits_dir}/digits_')
    text = text.replace('validation = "', f'validation = "{digits_dir}/')
    head, sep, rest = text.partition('{ model = "digits-small", threshold = ')
    text = head + sep + threshold + rest[rest.index(" }") :]
    text = text.replace(
        "[models.digits-small.batching]", f"{extra}\n[models.digits-small.batching]"
    )
    if small:
        text = text.replace(f'path = "{digits_dir}/digits_small.onnx"', f'path = "{small}"', 1)
    path = tmp_path / "catalog.toml"
    path.write_text(text + more)
    return Catalog.load(path)


@pytest.fixture(scope="module")
def x(digits_dir: Path) -> np.ndarray:
    return np.load(digits_dir / "digits_test.npz")["X"][:6]


def _held(cat: Catalog, name: str, runners: dict[str, object]) -> Sessions | None:
    """Sessions holding a test's runner for ``name`` as its active version, if it has one."""
    runner = runners.get(name)
    if runner is None:
        return None
    runner.spec = cat.models[name]  # type: ignore[attr-defined]
    sessions = Sessions()
    sessions.adopt(runner)  # type: ignore[arg-type]
    return sessions


def serve(
    r: redis.Redis, cat: Catalog, settings: Settings, ids: list[str], **runners: object
) -> dict[str, ModelWorker]:
    router = Router(r, cat, settings)
    router.setup()
    while router.step(block_ms=None):
        pass
    workers = {
        name: ModelWorker(
            r, cat, cat.models[name], settings, f"w-{name}", _held(cat, name, runners)
        )
        for name in cat.models
    }
    for _ in range(3):  # each model in cascade order, as often as hops can chain
        for name in ("digits-small", "digits-spare", "digits-large"):
            if name in workers:
                drain(workers[name])
    return workers


def test_a_model_that_raises_passes_its_requests_to_the_fallback(
    r: redis.Redis, settings: Settings, digits_dir: Path, tmp_path: Path, x: np.ndarray
) -> None:
    cat = catalog_with(digits_dir, tmp_path, "0.0", 'fallback = "digits-large"')
    with Producer(settings=settings, catalog=cat) as client:
        ids = [client.submit(task="digits", inputs={"input": x[i : i + 1]}) for i in range(4)]
        workers = serve(r, cat, settings, ids, **{"digits-small": Broken()})
        got = client.wait_many(ids, timeout=5)
    assert all(g.ok and g.model == "digits-large" for g in got), [g.error for g in got]
    first = got[0].path
    assert [hop["model"] for hop in first] == ["digits-small", "digits-large"]
    assert first[0]["failed"] == "RuntimeError: the model fell over"
    assert (first[1]["rule"], first[1]["hop"]) == ("fallback", "fallback")
    assert workers["digits-small"].stats["samples"] == 0
    assert workers["digits-large"].stats["samples"] == 4
    assert r.hget(workers["digits-small"].keys.routing_counts, "fallback:digits-small") == b"4"


def test_a_model_that_fails_to_load_falls_back_and_the_fallback_keeps_the_stage_rules(
    r: redis.Redis, settings: Settings, digits_dir: Path, tmp_path: Path, x: np.ndarray
) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not an ONNX model")
    spare = f"""
[models.digits-spare]
path = "{digits_dir}/digits_small.onnx"
output = "probabilities"
inputs = [{{ name = "input", dtype = "float32", shape = [-1, 64] }}]
"""
    cat = catalog_with(
        digits_dir, tmp_path, "1.0", 'fallback = "digits-spare"', more=spare, small=str(broken)
    )
    with Producer(settings=settings, catalog=cat) as client:
        ids = [client.submit(task="digits", inputs={"input": x[i : i + 1]}) for i in range(3)]
        workers = serve(r, cat, settings, ids)
        got = client.wait_many(ids, timeout=5)
    assert all(g.ok for g in got), [g.error for g in got]
    path = got[0].path
    # threshold 1.0 holds on the spare standing in for digits-small: it escalates
    assert [(hop["model"], hop["rule"]) for hop in path] == [
        ("digits-small", "cascade"),
        ("digits-spare", "fallback"),
        ("digits-large", "escalate"),
    ]
    assert "cannot load" in str(path[0]["failed"])
    assert workers["digits-spare"].stats["samples"] == 3
    assert workers["digits-large"].stats["samples"] == 3


def test_a_fallback_must_be_another_model_with_the_same_inputs(
    digits_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(CatalogError, match="fallback: names 'nope'"):
        catalog_with(digits_dir, tmp_path, "0.5", 'fallback = "nope"')
    cat = catalog_with(digits_dir, tmp_path, "0.5", 'fallback = "digits-large"')
    text = Path(cat.source).read_text()
    looped = text.replace(
        "[models.digits-large.batching]",
        'fallback = "digits-small"\n[models.digits-large.batching]',
    )
    with pytest.raises(CatalogError, match="loop"):
        Catalog.loads(looped, source=cat.source)


def test_a_queue_held_at_its_bound_past_the_wait_sends_the_router_to_the_fallback(
    r: redis.Redis, settings: Settings, digits_dir: Path, tmp_path: Path, x: np.ndarray
) -> None:
    cat = catalog_with(digits_dir, tmp_path, "0.0", 'fallback = "digits-large"')
    held = replace(settings, model_max_depth=2, router_batch=1, fallback_wait_ms=0)
    router = Router(r, cat, held)
    router.setup()
    large = ModelWorker(r, cat, cat.models["digits-large"], held, "w-large")
    with Producer(settings=held, catalog=cat) as client:
        first = client.submit_many(
            [Request({"input": x[i : i + 1]}, task="digits") for i in range(2)]
        )
        then = client.submit_many([Request({"input": x[i : i + 1]}, task="digits") for i in (2, 3)])
        assert router.step(block_ms=None) == 1  # the first bundle fills digits-small's queue
        assert router.step(block_ms=None) == 1  # held at the bound: the next goes to the fallback
        assert router.diverted == {"digits-small": "digits-large"}
        drain(large)
        got = client.wait_many(then, timeout=5)
        assert client.result(first[0]) is None  # still queued for digits-small
    assert all(g.ok and g.model == "digits-large" for g in got)
    assert [(h["model"], h["rule"]) for h in got[0].path] == [
        ("digits-small", "cascade"),
        ("digits-large", "fallback"),
    ]
    assert got[0].path[0]["failed"] == "queue held at its bound"
    assert large.stats["samples"] == 2
