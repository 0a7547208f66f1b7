"""After a model ran: tier thresholds, skipped escalations, traces and published speed,
through a real worker on the digits models and a real Redis."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis
import streamview
from test_workers import drain, enqueue, result

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.config.tasks import Load, TaskSpec, Tier
from cascadeq.infra.observed import Speed
from cascadeq.ops import train_router as train
from cascadeq.ops.calibration import probabilities
from cascadeq.protocol.keys import Keys
from cascadeq.protocol.messages import now_ms
from cascadeq.workers import ModelWorker


@pytest.fixture(scope="module")
def x(digits_dir: Path) -> np.ndarray:
    return np.load(digits_dir / "digits_test.npz")["X"][:8]


def with_task(catalog: Catalog, **changes: object) -> Catalog:
    """The digits task with the small model always unsure (threshold 1.0), plus changes."""
    task = catalog.tasks["digits"]
    stages = (replace(task.cascade[0], threshold=1.0), *task.cascade[1:])
    new: TaskSpec = replace(task, cascade=stages, **changes)  # type: ignore[arg-type]
    return replace(catalog, tasks={"digits": new})


def small_worker(r: redis.Redis, catalog: Catalog, settings: Settings) -> ModelWorker:
    return ModelWorker(r, catalog, catalog.models["digits-small"], settings, "c1")


def test_a_tier_threshold_overrides_the_task_threshold(
    r: redis.Redis, settings: Settings, catalog: Catalog, x: np.ndarray
) -> None:
    cat = with_task(catalog, tiers={"free": Tier("free", thresholds=(0.0,))})
    keys = Keys(settings.prefix)
    enqueue(r, keys, "digits-small", "free", x[:1], task="digits", tier="free")
    enqueue(r, keys, "digits-small", "std", x[:1], task="digits")
    drain(small_worker(r, cat, settings))
    assert result(r, keys, "free").model == "digits-small"
    assert r.exists(keys.result("std")) == 0  # escalated: waiting in the large model's queue
    assert streamview.count(r, keys.model_stream("digits-large")) == 1
    assert r.hget(keys.routing_counts, "escalate:digits-small") == b"1"


def test_escalation_is_skipped_when_the_next_model_cannot_answer_in_time(
    r: redis.Redis, settings: Settings, catalog: Catalog, x: np.ndarray
) -> None:
    keys = Keys(settings.prefix)
    slow = Speed()
    slow.update(compute_ms=60_000.0, batch=1, queue_ms=0.0)
    pipe = r.pipeline()
    slow.queue(pipe, keys, "digits-large")
    pipe.execute()
    cat = with_task(catalog)
    enqueue(r, keys, "digits-small", "tight", x[:1], task="digits", deadline=now_ms() + 20_000)
    enqueue(r, keys, "digits-small", "free-of-time", x[:1], task="digits")
    worker = small_worker(r, cat, settings)
    drain(worker)
    tight = result(r, keys, "tight")
    assert tight.ok
    assert tight.model == "digits-small"
    assert tight.info == {"escalation_skipped": "deadline"}
    assert tight.path[-1]["skipped"] == "deadline"
    assert r.exists(keys.result("free-of-time")) == 0  # no deadline: escalated as usual
    assert r.hget(keys.routing_counts, "skip:deadline") == b"1"


def test_escalation_into_an_overloaded_model_is_skipped_until_it_recovers(
    r: redis.Redis, settings: Settings, catalog: Catalog, x: np.ndarray
) -> None:
    keys = Keys(settings.prefix)
    cat = with_task(catalog, load=Load(high_water=3, low_water=1))
    backlog = keys.backlog(keys.model_stream("digits-large"))  # requests waiting there
    r.set(backlog, 3)
    worker = small_worker(r, cat, settings)
    enqueue(r, keys, "digits-small", "busy", x[:1], task="digits")
    drain(worker)
    assert result(r, keys, "busy").info == {"escalation_skipped": "load"}
    r.set(backlog, 0)
    worker.board.refresh(force=True)
    enqueue(r, keys, "digits-small", "calm", x[:1], task="digits")
    drain(worker)
    assert r.exists(keys.result("calm")) == 0  # escalated again
    assert worker.board.switches == 2


def test_first_stage_outcomes_are_logged_as_traces_for_training(
    r: redis.Redis, settings: Settings, catalog: Catalog, x: np.ndarray
) -> None:
    keys = Keys(settings.prefix)
    conf = probabilities(catalog.models["digits-small"], {"input": x}).max(axis=1)
    task = catalog.tasks["digits"]
    stages = (replace(task.cascade[0], threshold=float(np.median(conf))), *task.cascade[1:])
    cat = replace(catalog, tasks={"digits": replace(task, cascade=stages, trace_sample=1.0)})
    for i in range(len(x)):
        enqueue(r, keys, "digits-small", f"t{i}", x[i : i + 1], task="digits")
    enqueue(r, keys, "digits-small", "pinned", x[:1], model="digits-small")  # not logged
    drain(small_worker(r, cat, settings))
    feats, hard = train.read_traces(r, keys, "digits", limit=100)
    assert feats.shape == (len(x), 64)
    escalated = streamview.count(r, keys.model_stream("digits-large"))
    assert 0 < escalated < len(x)  # the median threshold splits them
    assert int(hard.sum()) == escalated


def test_workers_publish_their_speed_for_routers(
    r: redis.Redis, settings: Settings, catalog: Catalog, x: np.ndarray
) -> None:
    keys = Keys(settings.prefix)
    enqueue(r, keys, "digits-small", "s", x[:4], model="digits-small")
    worker = small_worker(r, catalog, settings)
    drain(worker)
    worker.board.refresh(force=True)
    state = worker.board.state("digits-small")
    assert state.compute_ms > 0
    assert state.batch == 4
    assert state.backlog == 0
    assert state.est_latency_ms >= state.compute_ms
