"""When a batch's escalations run in-process: the catalog's mode, what the process
serves, whether the inputs match and, with auto, the next model's backlog."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from catalogs import POLICY_CATALOG

from cascadeq.config.catalog import Catalog
from cascadeq.infra.observed import LoadBoard, ModelState, Speed
from cascadeq.protocol.keys import Keys
from cascadeq.workers.local import LocalModel, LocalModels, goes_local


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
