"""Each routing rule firing and not firing, through a real router on a real Redis."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis
from catalogs import POLICY_CATALOG
from test_router import hdr, put

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.config.tasks import Learned
from cascadeq.infra.observed import Speed
from cascadeq.ops import train_router as learned_train
from cascadeq.protocol import bundle, wire
from cascadeq.protocol.keys import Keys
from cascadeq.protocol.messages import now_ms
from cascadeq.router import Router

ZEROS = np.zeros((1, 4), np.float32)
ONES = np.ones((1, 4), np.float32)


@pytest.fixture
def policy_catalog() -> Catalog:
    return Catalog.loads(POLICY_CATALOG, source="toy/catalog.toml", check_files=False)


def route(router: Router, *entries: tuple[str, np.ndarray, dict[str, object]]) -> None:
    for rid, x, kw in entries:
        put(router.r, router.keys, hdr(rid, **kw), wire.dumps_inputs({"input": x}))
    router.board.refresh(force=True)
    assert router.step(block_ms=None) == len(entries)


def hops(r: redis.Redis, keys: Keys, model: str) -> dict[str, dict[str, object]]:
    stream = keys.model_stream(model)
    headers = [  # the fake backlog's entries ({f: v}) hold no requests
        h
        for eid, f in r.xrange(stream)
        if bundle.HEADER in f or bundle.HEADERS in f
        for h in bundle.decode(stream, eid, f, 1 << 30).headers
    ]
    return {h.id: h.trace[-1] for h in headers}


def counts(r: redis.Redis, keys: Keys) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in r.hgetall(keys.routing_counts).items()}  # type: ignore[union-attr]


def test_tier_starts_premium_at_the_large_model_and_standard_at_the_small(
    r: redis.Redis, settings: Settings, policy_catalog: Catalog
) -> None:
    router = Router(r, policy_catalog, settings)
    router.setup()
    route(
        router,
        ("p", ZEROS, {"task": "toy", "tier": "premium"}),
        ("s", ZEROS, {"task": "toy", "tier": "standard"}),
        ("u", ZEROS, {"task": "toy", "tier": "unheard-of"}),  # undeclared: task defaults
    )
    assert hops(r, router.keys, "toy-large")["p"] == {
        "model": "toy-large",
        "rule": "tier",
        "tier": "premium",
        "score": 0.0,
    }
    small = hops(r, router.keys, "toy-small")
    assert {small["s"]["rule"], small["u"]["rule"]} == {"cascade"}
    assert counts(r, router.keys) == {"route:tier": 1, "route:cascade": 2}


def test_pinned_requests_ignore_every_other_rule(
    r: redis.Redis, settings: Settings, policy_catalog: Catalog
) -> None:
    router = Router(r, policy_catalog, settings)
    router.setup()
    route(router, ("pin", ONES, {"model": "toy-small", "tier": "premium"}))
    assert hops(r, router.keys, "toy-small")["pin"] == {"model": "toy-small", "rule": "pinned"}


def test_complexity_above_the_threshold_starts_at_the_large_model(
    r: redis.Redis, settings: Settings, policy_catalog: Catalog
) -> None:
    router = Router(r, policy_catalog, settings)
    router.setup()
    half = np.array([[1, 1, 0, 0]], np.float32)  # score 0.5: not above 0.5
    route(router, ("hard", ONES, {"task": "toy"}), ("edge", half, {"task": "toy"}))
    assert hops(r, router.keys, "toy-large")["hard"] == {
        "model": "toy-large",
        "rule": "complexity",
        "score": 1.0,
    }
    assert hops(r, router.keys, "toy-small")["edge"] == {
        "model": "toy-small",
        "rule": "cascade",
        "score": 0.5,
    }


def test_a_tight_deadline_moves_the_start_to_a_model_that_can_make_it(
    r: redis.Redis, settings: Settings, policy_catalog: Catalog
) -> None:
    keys = Keys(settings.prefix)
    slow, fast = Speed(), Speed()
    slow.update(compute_ms=500.0, batch=1, queue_ms=0.0)
    fast.update(compute_ms=1.0, batch=1, queue_ms=0.0)
    pipe = r.pipeline()
    slow.queue(pipe, keys, "toy-small")
    fast.queue(pipe, keys, "toy-large")
    pipe.execute()
    router = Router(r, policy_catalog, settings)
    router.setup()
    route(
        router,
        ("tight", ZEROS, {"task": "toy", "deadline": now_ms() + 300}),
        ("loose", ZEROS, {"task": "toy", "deadline": now_ms() + 60_000}),
    )
    tight = hops(r, router.keys, "toy-large")["tight"]
    assert tight["rule"] == "deadline"
    assert tight["est_ms"] == pytest.approx(3.0)  # 1 ms compute + 2 ms batch window
    assert 0 < float(tight["remaining_ms"]) <= 300  # type: ignore[arg-type]
    assert hops(r, router.keys, "toy-small")["loose"]["rule"] == "cascade"


def test_overload_biases_to_the_lighter_model_with_hysteresis(
    r: redis.Redis, settings: Settings, policy_catalog: Catalog
) -> None:
    router = Router(r, policy_catalog, settings)
    router.setup()
    keys = router.keys
    backlog = keys.backlog(keys.model_stream("toy-large"))  # requests waiting there
    r.set(backlog, 5)
    premium = {"task": "toy", "tier": "premium"}
    route(router, ("over", ZEROS, premium))
    assert hops(r, keys, "toy-small")["over"] == {
        "model": "toy-small",
        "rule": "load",
        "tier": "premium",
        "score": 0.0,
        "backlog": 5,
    }
    r.set(backlog, 3)  # below high, above low
    route(router, ("still", ZEROS, premium))
    assert hops(r, keys, "toy-small")["still"]["rule"] == "load"
    r.set(backlog, 2)  # at the low-water mark
    route(router, ("back", ZEROS, premium))
    assert hops(r, keys, "toy-large")["back"]["rule"] == "tier"
    assert router.board.switches == 2  # on once, off once: no flapping in between
    assert counts(r, keys)["load_switch"] == 2


def test_the_learned_router_sends_predicted_hard_requests_to_the_large_model(
    r: redis.Redis, settings: Settings, policy_catalog: Catalog, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((400, 4)).astype(np.float32)
    hard = (x[:, 0] > 0.5).astype(np.int64)  # hard exactly when the first feature is high
    path = tmp_path / "toy-router.onnx"
    task = policy_catalog.tasks["toy"]
    report = learned_train.train(policy_catalog, task, x, hard, path, min_precision=0.9)
    assert report.precision >= 0.9
    assert report.recall > 0.5
    learned = replace(task, learned=Learned(path, report.threshold, "toy-large"))
    learned = replace(learned, complexity=None)
    catalog = replace(policy_catalog, tasks={"toy": learned})
    router = Router(r, catalog, settings)
    router.setup()
    easy_x = np.array([[0.05, 0.5, 0.5, 0.5]], np.float32)
    hard_x = np.array([[0.95, 0.5, 0.5, 0.5]], np.float32)
    route(router, ("easy", easy_x, {"task": "toy"}), ("hard", hard_x, {"task": "toy"}))
    hard_hop = hops(r, router.keys, "toy-large")["hard"]
    assert hard_hop["rule"] == "learned"
    assert float(hard_hop["p_hard"]) >= report.threshold  # type: ignore[arg-type]
    easy_hop = hops(r, router.keys, "toy-small")["easy"]
    assert easy_hop["rule"] == "cascade"
    assert float(easy_hop["p_hard"]) < report.threshold  # type: ignore[arg-type]
