"""Local escalation: a worker process that serves the next model runs the unsure rows on
it at once, in the same commit. Real workers on the digits models and a real Redis; the
same inputs go through a queued and a local escalation and must come out the same."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import streamview
from test_workers import drain, enqueue, result

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.config.tasks import Stage, TaskSpec, Tier
from cascadeq.infra.observed import Speed
from cascadeq.ops.calibration import probabilities
from cascadeq.protocol import keys as keynames
from cascadeq.protocol.keys import Keys
from cascadeq.protocol.messages import Result, now_ms
from cascadeq.workers import ModelWorker, settle
from cascadeq.workers.local import LocalModels

TIMINGS = ("queue_ms", "batch_wait_ms", "compute_ms")


@pytest.fixture(scope="module")
def x(digits_dir: Path) -> np.ndarray:
    return np.load(digits_dir / "digits_test.npz")["X"][:24]


def escalating(catalog: Catalog, mode: str, threshold: float = 1.0, **changes: Any) -> Catalog:
    """The digits task escalating ``mode``-wise below ``threshold`` (1.0: always)."""
    task = catalog.tasks["digits"]
    stages = (replace(task.cascade[0], threshold=threshold), *task.cascade[1:])
    new: TaskSpec = replace(task, cascade=stages, escalate=mode, **changes)
    return replace(catalog, tasks={"digits": new})


def workers(
    r: redis.Redis, cat: Catalog, settings: Settings, models: list[str], local: LocalModels | None
) -> dict[str, ModelWorker]:
    return {m: ModelWorker(r, cat, cat.models[m], settings, f"c-{m}", local=local) for m in models}


def fresh(settings: Settings) -> Settings:
    return replace(settings, prefix=f"t{uuid.uuid4().hex[:10]}")


def comparable(res: Result) -> list[dict[str, Any]]:
    """The path without what differs by nature between two runs: timings, the hop mark."""
    return [{k: v for k, v in hop.items() if k not in TIMINGS and k != "hop"} for hop in res.path]


def traffic(r: redis.Redis, keys: Keys, x: np.ndarray) -> list[str]:
    """Single-row requests in two tiers, and requests of three rows."""
    ids = []
    for i in range(len(x) - 3):
        tier = "free" if i % 3 == 0 else "standard"
        enqueue(r, keys, "digits-small", f"q{i}", x[i : i + 1], task="digits", tier=tier)
        ids.append(f"q{i}")
    for i in range(2):
        enqueue(r, keys, "digits-small", f"m{i}", x[i : i + 3], task="digits")
        ids.append(f"m{i}")
    return ids


def totals(r: redis.Redis, keys: Keys, model: str) -> dict[str, int]:
    raw: Any = r.hgetall(keys.model_totals(model))
    wanted = {"processed", "samples", "batches", "escalated", "answered"}
    return {k.decode(): int(v) for k, v in raw.items() if k.decode() in wanted}


def test_local_and_queued_escalation_give_the_same_results_apart_from_the_hop_mark(
    r: redis.Redis, settings: Settings, catalog: Catalog, x: np.ndarray
) -> None:
    conf = probabilities(catalog.models["digits-small"], {"input": x}).max(axis=1)
    tiers = {"free": Tier("free", thresholds=(float(np.quantile(conf, 0.25)),))}
    median = float(np.median(conf))  # about half the standard requests escalate
    runs: dict[str, dict[str, Result]] = {}
    figures: dict[str, dict[str, Any]] = {}
    for mode in ("queue", "local"):
        cat = escalating(catalog, mode, median, tiers=tiers)
        s = fresh(settings)
        keys = Keys(s.prefix)
        local: LocalModels = {}
        both = workers(r, cat, s, ["digits-small", "digits-large"], local)
        ids = traffic(r, keys, x)
        drain(both["digits-small"])
        if mode == "queue":
            assert r.exists(*[keys.result(i) for i in ids]) < len(ids)  # some are queued
            drain(both["digits-large"])
        else:
            assert streamview.count(r, keys.model_stream("digits-large")) == 0  # no queue hop
        runs[mode] = {i: result(r, keys, i) for i in ids}
        counts: Any = r.hgetall(keys.routing_counts)
        figures[mode] = {
            "small": totals(r, keys, "digits-small"),
            "large": totals(r, keys, "digits-large"),
            "counts": {k.decode(): int(v) for k, v in counts.items()},
        }
        assert r.xpending(keys.model_stream("digits-small"), keynames.WORKER_GROUP)["pending"] == 0
    queued, local_run = runs["queue"], runs["local"]
    up = [i for i, res in local_run.items() if res.model == "digits-large"]
    assert 0 < len(up) < len(local_run)
    for rid, res in local_run.items():
        other = queued[rid]
        assert (res.status, res.model, res.batch_size) == (
            other.status,
            other.model,
            other.batch_size,
        )
        assert comparable(res) == comparable(other)
        for name, value in res.outputs.items():
            np.testing.assert_array_equal(value, other.outputs[name])
        assert all("hop" not in hop for hop in other.path)
        marks = [hop.get("hop") for hop in res.path]
        assert marks == ([None, "local"] if rid in up else [None])
        if rid in up:
            hop = res.path[1]
            assert hop["queue_ms"] == 0.0
            assert hop["compute_ms"] > 0
            assert res.timings["compute_ms"] == pytest.approx(
                res.path[0]["compute_ms"] + hop["compute_ms"]
            )
    # The second model's batch counts as its own, as a queued one does.
    assert figures["local"]["large"] == figures["queue"]["large"]
    assert figures["local"]["large"]["answered"] == len(up)
    assert figures["local"]["small"] == figures["queue"]["small"]
    counts = figures["local"]["counts"]
    assert counts.pop("local:digits-small") == len(up)
    assert counts == figures["queue"]["counts"]


def test_auto_escalates_through_the_queue_when_the_next_model_is_not_in_the_process(
    r: redis.Redis, settings: Settings, catalog: Catalog, x: np.ndarray
) -> None:
    cat = escalating(catalog, "auto")
    keys = Keys(settings.prefix)
    small = workers(r, cat, settings, ["digits-small"], {})["digits-small"]
    enqueue(r, keys, "digits-small", "away", x[:1], task="digits")
    drain(small)
    assert r.exists(keys.result("away")) == 0
    assert streamview.count(r, keys.model_stream("digits-large")) == 1


def test_auto_escalates_through_the_queue_while_the_next_models_backlog_is_over_the_bound(
    r: redis.Redis, settings: Settings, catalog: Catalog, x: np.ndarray
) -> None:
    cat = escalating(catalog, "auto", local_backlog=5)
    keys = Keys(settings.prefix)
    both = workers(r, cat, settings, ["digits-small", "digits-large"], {})
    small = both["digits-small"]
    backlog = keys.backlog(keys.model_stream("digits-large"))
    r.set(backlog, 5)
    small.board.refresh(force=True)
    enqueue(r, keys, "digits-small", "busy", x[:1], task="digits")
    drain(small)
    assert r.exists(keys.result("busy")) == 0
    assert streamview.count(r, keys.model_stream("digits-large")) == 1  # queued
    r.set(backlog, 4)
    small.board.refresh(force=True)
    enqueue(r, keys, "digits-small", "calm", x[:1], task="digits")
    drain(small)
    calm = result(r, keys, "calm")
    assert calm.model == "digits-large"
    assert calm.path[-1]["hop"] == "local"
    assert streamview.count(r, keys.model_stream("digits-large")) == 1  # no new entry


def test_a_local_escalation_that_cannot_meet_the_deadline_is_skipped(
    r: redis.Redis, settings: Settings, catalog: Catalog, x: np.ndarray
) -> None:
    keys = Keys(settings.prefix)
    slow = Speed()
    slow.update(compute_ms=60_000.0, batch=1, queue_ms=0.0)
    pipe = r.pipeline()
    slow.queue(pipe, keys, "digits-large")
    pipe.execute()
    cat = escalating(catalog, "local")
    small = workers(r, cat, settings, ["digits-small", "digits-large"], {})["digits-small"]
    enqueue(r, keys, "digits-small", "tight", x[:1], task="digits", deadline=now_ms() + 20_000)
    enqueue(r, keys, "digits-small", "free-of-time", x[:1], task="digits")
    drain(small)
    tight = result(r, keys, "tight")
    assert (tight.model, tight.info) == ("digits-small", {"escalation_skipped": "deadline"})
    assert tight.path[-1]["skipped"] == "deadline"
    assert result(r, keys, "free-of-time").path[-1]["hop"] == "local"
    assert r.hget(keys.routing_counts, "skip:deadline") == b"1"


def test_a_local_hop_is_estimated_without_the_queue_it_does_not_wait_in(
    r: redis.Redis, settings: Settings, catalog: Catalog, x: np.ndarray
) -> None:
    """A backlog the queued hop would wait behind does not make a local hop miss."""
    keys = Keys(settings.prefix)
    seen = Speed()
    seen.update(compute_ms=10.0, batch=1, queue_ms=0.0)  # 10 ms a sample
    pipe = r.pipeline()
    seen.queue(pipe, keys, "digits-large")
    pipe.execute()
    r.set(keys.backlog(keys.model_stream("digits-large")), 10_000)  # ~100 s of queue
    for mode in ("queue", "local"):
        cat = escalating(catalog, mode, load=None)
        small = workers(r, cat, settings, ["digits-small", "digits-large"], {})["digits-small"]
        enqueue(r, keys, "digits-small", mode, x[:1], task="digits", deadline=now_ms() + 20_000)
        drain(small)
    assert result(r, keys, "queue").info == {"escalation_skipped": "deadline"}
    assert result(r, keys, "local").path[-1]["hop"] == "local"


def test_a_request_whose_deadline_passes_before_the_local_hop_is_answered_expired(
    r: redis.Redis,
    settings: Settings,
    catalog: Catalog,
    x: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As a queued hop's worker expires what it reads too late: time is moved on between
    the escalation decision and the local hop, not waited for."""
    cat = escalating(catalog, "local")
    keys = Keys(settings.prefix)
    small = workers(r, cat, settings, ["digits-small", "digits-large"], {})["digits-small"]
    later = [0.0]
    monkeypatch.setattr(settle, "now_ms", lambda: now_ms() + later[0])
    run_local = settle.Settler._run_local

    def after_a_minute(self: settle.Settler, work: Any, esc: Any) -> None:
        later[0] = 60_000.0
        run_local(self, work, esc)

    monkeypatch.setattr(settle.Settler, "_run_local", after_a_minute)
    enqueue(r, keys, "digits-small", "late", x[:1], task="digits", deadline=now_ms() + 20_000)
    enqueue(r, keys, "digits-small", "open", x[1:2], task="digits")
    drain(small)
    late = result(r, keys, "late")
    assert late.status == "expired"
    assert late.error is not None
    assert late.error["code"] == "deadline"
    assert [h["model"] for h in late.path] == ["digits-small", "digits-large"]
    assert "compute_ms" not in late.path[-1]  # never computed by the large model
    assert result(r, keys, "open").path[-1]["hop"] == "local"
    assert r.xpending(keys.model_stream("digits-small"), keynames.WORKER_GROUP)["pending"] == 0


def test_a_failed_local_run_goes_through_the_queue_instead(
    r: redis.Redis, settings: Settings, catalog: Catalog, x: np.ndarray
) -> None:
    cat = escalating(catalog, "local")
    keys = Keys(settings.prefix)
    local: LocalModels = {}
    both = workers(r, cat, settings, ["digits-small", "digits-large"], local)

    def broken(inputs: Any, samples: int) -> np.ndarray:
        raise RuntimeError("session gone")

    local["digits-large"] = replace(local["digits-large"], run=broken)
    enqueue(r, keys, "digits-small", "a", x[:2], task="digits")
    enqueue(r, keys, "digits-small", "b", x[2:3], task="digits")
    drain(both["digits-small"])
    assert r.exists(keys.result("a"), keys.result("b")) == 0
    assert streamview.count(r, keys.model_stream("digits-large")) == 2
    drain(both["digits-large"])
    for rid in ("a", "b"):
        got = result(r, keys, rid)
        assert got.model == "digits-large"
        assert all("hop" not in hop for hop in got.path)
    assert r.hget(keys.routing_counts, "escalate:digits-small") == b"2"


def three_stages(catalog: Catalog, mode: str) -> Catalog:
    """digits-small, digits-large, then digits-xl (the large model again under a new name),
    each unsure of everything."""
    large = catalog.models["digits-large"]
    models = {**catalog.models, "digits-xl": replace(large, name="digits-xl")}
    task = catalog.tasks["digits"]
    stages = (Stage("digits-small", 1.0), Stage("digits-large", 1.0), Stage("digits-xl", None))
    new = replace(task, cascade=stages, escalate=mode, tiers={}, load=None)
    return replace(catalog, models=models, tasks={"digits": new})


def test_a_cascade_goes_on_locally_stage_by_stage_then_queues_where_a_model_is_not_here(
    r: redis.Redis, settings: Settings, catalog: Catalog, x: np.ndarray
) -> None:
    cat = three_stages(catalog, "local")
    s1, s2 = fresh(settings), fresh(settings)
    everything = workers(r, cat, s1, ["digits-small", "digits-large", "digits-xl"], {})
    here = Keys(s1.prefix)
    enqueue(r, here, "digits-small", "all", x[:2], task="digits")
    drain(everything["digits-small"])
    alone = result(r, here, "all")
    assert [(h["model"], h.get("hop")) for h in alone.path] == [
        ("digits-small", None),
        ("digits-large", "local"),
        ("digits-xl", "local"),
    ]
    assert alone.outputs["probabilities"].shape == (2, 10)
    assert totals(r, here, "digits-xl")["answered"] == 1

    keys = Keys(s2.prefix)
    two = workers(r, cat, s2, ["digits-small", "digits-large"], {})
    enqueue(r, keys, "digits-small", "some", x[:2], task="digits")
    drain(two["digits-small"])
    assert r.exists(keys.result("some")) == 0
    assert streamview.count(r, keys.model_stream("digits-xl")) == 1
    xl = ModelWorker(r, cat, cat.models["digits-xl"], s2, "c-xl")
    drain(xl)  # the queued header carries the local mark: a text hop field it accepts
    got = result(r, keys, "some")
    assert [(h["model"], h.get("hop")) for h in got.path] == [
        ("digits-small", None),
        ("digits-large", "local"),
        ("digits-xl", None),
    ]
    np.testing.assert_array_equal(got.outputs["probabilities"], alone.outputs["probabilities"])


def test_a_surprise_in_a_local_escalation_leaves_only_its_entries_pending(
    r: redis.Redis,
    settings: Settings,
    catalog: Catalog,
    x: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cat = escalating(catalog, "local")
    keys = Keys(settings.prefix)
    small = workers(r, cat, settings, ["digits-small", "digits-large"], {})["digits-small"]

    def surprise(*_args: Any) -> bool:
        raise RuntimeError("surprise")

    monkeypatch.setattr(settle.Settler, "_admit_local", surprise)
    enqueue(r, keys, "digits-small", "pinned", x[:1], model="digits-small")
    enqueue(r, keys, "digits-small", "unsure", x[1:2], task="digits")
    drain(small)
    assert result(r, keys, "pinned").model == "digits-small"  # its entry committed
    assert r.exists(keys.result("unsure")) == 0
    pending = r.xpending(keys.model_stream("digits-small"), keynames.WORKER_GROUP)
    assert pending["pending"] == 1  # delivered again later, never lost
