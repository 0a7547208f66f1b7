"""When a batch's escalations run in-process: the catalog's mode, what the process
serves, whether the inputs match and, with auto, the next model's backlog."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from catalogs import POLICY_CATALOG

from cascadeq.config.catalog import Catalog
from cascadeq.infra.observed import CallCost, LoadBoard, ModelState, Speed
from cascadeq.protocol.keys import Keys
from cascadeq.workers.local import LocalModel, LocalModels, cheaper_here, goes_local


def never(inputs: object, samples: int) -> np.ndarray:
    raise AssertionError("not run here")


def setup(mode: str, backlog: int = 0) -> tuple[Catalog, LocalModels, LoadBoard]:
    cat = Catalog.loads(POLICY_CATALOG, source="c.toml", check_files=False)
    cat = replace(cat, tasks={"toy": replace(cat.tasks["toy"], escalate=mode)})
    local = {m: LocalModel(cat.models[m], never, Speed()) for m in cat.models}
    board = LoadBoard(None, Keys("p"), cat)  # type: ignore[arg-type] - never refreshed
    board.states["toy-large"] = ModelState(backlog=backlog)
    return cat, local, board


@pytest.mark.parametrize(("mode", "expected"), [("queue", False), ("local", True), ("auto", True)])
def test_the_mode_decides_when_the_next_model_is_here_and_idle(mode: str, expected: bool) -> None:
    cat, local, board = setup(mode)
    small = cat.models["toy-small"]
    assert goes_local(cat.tasks["toy"], small, "toy-large", local, board) is expected


def test_a_model_the_process_does_not_serve_is_reached_through_the_queue() -> None:
    for mode in ("local", "auto"):
        cat, local, board = setup(mode)
        del local["toy-large"]
        assert not goes_local(cat.tasks["toy"], cat.models["toy-small"], "toy-large", local, board)


def test_auto_queues_from_the_bound_on_and_local_ignores_it() -> None:
    bound = 32  # toy-large's max_batch: the default bound
    for backlog, expected in [(bound - 1, True), (bound, False)]:
        cat, local, board = setup("auto", backlog)
        task, small = cat.tasks["toy"], cat.models["toy-small"]
        assert goes_local(task, small, "toy-large", local, board) is expected
        assert goes_local(
            replace(task, local_backlog=backlog + 1), small, "toy-large", local, board
        )
        lax = replace(task, escalate="local")
        assert goes_local(lax, small, "toy-large", local, board)


def test_a_next_model_declaring_other_inputs_is_reached_through_the_queue() -> None:
    cat, local, board = setup("local")
    large = local["toy-large"]
    other = replace(large.spec.inputs[0], shape=(-1, 8))
    local["toy-large"] = replace(large, spec=replace(large.spec, inputs=(other,)))
    assert not goes_local(cat.tasks["toy"], cat.models["toy-small"], "toy-large", local, board)
    picky = replace(large.spec, allow_nonfinite=False)
    local["toy-large"] = replace(large, spec=picky)
    lax_small = replace(cat.models["toy-small"], allow_nonfinite=True)
    assert not goes_local(cat.tasks["toy"], lax_small, "toy-large", local, board)


def test_the_call_cost_fit_splits_fixed_from_per_row_cost() -> None:
    cost = CallCost()
    assert cost.fit() is None
    for _ in range(20):
        cost.add(32, 2.0 + 0.1 * 32)  # full batches of the model's own
    assert cost.fit() is None  # one size only: no slope
    for _ in range(20):
        cost.add(4, 2.0 + 0.1 * 4)  # local escalations
    fixed, per_row = cost.fit() or (0.0, 0.0)
    assert fixed == pytest.approx(2.0)
    assert per_row == pytest.approx(0.1)


def seen_at(fixed_ms: float, per_row_ms: float, max_batch: int = 32) -> LocalModel:
    cat = Catalog.loads(POLICY_CATALOG, source="c.toml", check_files=False)
    spec = cat.models["toy-large"]
    spec = replace(spec, batching=replace(spec.batching, max_batch=max_batch))
    there = LocalModel(spec, never, Speed())
    for n in (max_batch, 2) * 10:
        there.speed.update(fixed_ms + per_row_ms * n, n, 0.0)
    return there


def test_auto_runs_few_rows_of_a_call_bound_model_through_the_queue() -> None:
    heavy = seen_at(fixed_ms=2.0, per_row_ms=0.05)  # weights read once per call
    assert not cheaper_here(heavy, rows=4, hop_us=50.0)  # 2.2 ms here vs 0.6 ms queued
    assert cheaper_here(heavy, rows=4, hop_us=1000.0)  # a dear hop makes here cheaper


def test_auto_runs_rows_here_that_would_fill_no_more_of_a_queued_batch() -> None:
    heavy = seen_at(fixed_ms=2.0, per_row_ms=0.05)
    assert not cheaper_here(heavy, rows=18, hop_us=5.0, batch=32.0)  # joining full ones
    assert cheaper_here(heavy, rows=18, hop_us=5.0, batch=18.0)  # its batches hold 18
    assert cheaper_here(heavy, rows=18, hop_us=5.0, batch=4.0)  # at least the hop's rows


def test_auto_without_a_published_batch_takes_the_calls_this_process_made() -> None:
    heavy = seen_at(fixed_ms=2.0, per_row_ms=0.05)
    for _ in range(50):  # only local calls of 18 rows lately: its batches hold about 18
        heavy.speed.update(2.0 + 0.05 * 18, 18, 0.0)
    assert cheaper_here(heavy, rows=18, hop_us=5.0)
    assert not cheaper_here(heavy, rows=18, hop_us=5.0, batch=32.0)  # published: full ones


def test_auto_runs_rows_of_a_row_bound_model_here() -> None:
    light = seen_at(fixed_ms=0.01, per_row_ms=0.02)
    assert cheaper_here(light, rows=4, hop_us=30.0)


def test_auto_stays_local_until_it_knows_the_split_and_a_hop_cost() -> None:
    cat = Catalog.loads(POLICY_CATALOG, source="c.toml", check_files=False)
    fresh = LocalModel(cat.models["toy-large"], never, Speed())
    assert cheaper_here(fresh, rows=4, hop_us=50.0)
    assert cheaper_here(seen_at(2.0, 0.05), rows=4, hop_us=0.0)
