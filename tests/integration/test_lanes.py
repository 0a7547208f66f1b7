"""Priority lanes: higher lanes first, lower lanes never starved, routing by priority."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis
import streamview
from test_router import hdr, put

from cascadeq.config.catalog import Catalog, CatalogError
from cascadeq.config.settings import Settings
from cascadeq.infra import streams
from cascadeq.protocol import wire
from cascadeq.protocol.keys import WORKER_GROUP, Keys
from cascadeq.router import Router
from cascadeq.workers import ModelWorker
from cascadeq.workers.lanes import LaneReader

LANES = ("interactive", "batch")


def fill(r: redis.Redis, stream: str, n: int) -> None:
    streams.ensure_group(r, stream, WORKER_GROUP)
    for i in range(n):
        r.xadd(stream, {b"n": str(i).encode()})


def lanes_of(got: list[tuple[str, streams.Entry]]) -> list[str]:
    return [stream.rsplit(":", 1)[1] for stream, _ in got]


def test_the_highest_lane_fills_the_batch_and_every_nth_read_serves_the_lowest_first(
    r: redis.Redis, settings: Settings
) -> None:
    keys = Keys(settings.prefix)
    hi, lo = (keys.model_stream("m", lane) for lane in LANES)
    fill(r, hi, 100)
    fill(r, lo, 100)
    reader = LaneReader(r, [hi, lo], "c1", turn_every=3)
    reads = [lanes_of(reader(4, None)) for _ in range(6)]
    assert reads[0] == reads[1] == ["interactive"] * 4
    assert reads[2] == ["batch"] * 4  # the third read is the lower lane's turn
    assert reads[3] == reads[4] == ["interactive"] * 4
    assert reads[5] == ["batch"] * 4


def test_a_lower_lane_fills_what_the_higher_leaves(r: redis.Redis, settings: Settings) -> None:
    keys = Keys(settings.prefix)
    hi, lo = (keys.model_stream("m", lane) for lane in LANES)
    fill(r, hi, 2)
    fill(r, lo, 10)
    reader = LaneReader(r, [hi, lo], "c1", turn_every=4)
    assert lanes_of(reader(5, None)) == ["interactive"] * 2 + ["batch"] * 3


def test_an_idle_reader_blocks_on_all_lanes_and_wakes_on_the_lowest(
    r: redis.Redis, settings: Settings
) -> None:
    keys = Keys(settings.prefix)
    hi, lo = (keys.model_stream("m", lane) for lane in LANES)
    fill(r, hi, 0)
    fill(r, lo, 0)
    reader = LaneReader(r, [hi, lo], "c1", turn_every=4)
    assert reader(4, None) == []
    r.xadd(lo, {b"n": b"late"})
    assert lanes_of(reader(4, 5000)) == ["batch"]


def test_requests_travel_in_their_priority_lane_and_are_answered(
    r: redis.Redis, settings: Settings, catalog: Catalog, digits_dir: Path
) -> None:
    models = {name: replace(spec, lanes=LANES) for name, spec in catalog.models.items()}
    cat = replace(catalog, models=models)
    router = Router(r, cat, settings)
    router.setup()
    keys = router.keys
    x = np.load(digits_dir / "digits_test.npz")["X"][:1]
    inputs = wire.dumps_inputs({"input": x})
    put(r, keys, hdr("fast", model="digits-small", priority="interactive"), inputs)
    put(r, keys, hdr("slow", model="digits-small", priority="batch"), inputs)
    put(r, keys, hdr("plain", model="digits-small"), inputs)  # undeclared: lowest lane
    router.step(block_ms=None)

    def ids(lane: str) -> list[str]:
        return [h.id for h in streamview.headers_in(r, keys.model_stream("digits-small", lane))]

    assert ids("interactive") == ["fast"]
    assert ids("batch") == ["slow", "plain"]
    worker = ModelWorker(r, cat, cat.models["digits-small"], settings, "c1")
    worker.setup()
    while worker.step(block_ms=None):
        pass
    assert all(r.exists(keys.result(i)) for i in ("fast", "slow", "plain"))


@pytest.mark.parametrize("lanes", ["[]", '["a", "a"]', '["Bad Name"]'])
def test_bad_lane_lists_are_explained(lanes: str) -> None:
    text = f"""
[models.m]
path = "m.onnx"
output = "probabilities"
inputs = [{{ name = "input", dtype = "float32", shape = [-1, 4] }}]
lanes = {lanes}
"""
    with pytest.raises(CatalogError) as info:
        Catalog.loads(text, source="c.toml", check_files=False)
    assert "models.m.lanes" in info.value.field_path
