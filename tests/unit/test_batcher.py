"""The batch window on its own: a scripted reader stands in for XREADGROUP."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from cascadeq.config.catalog import Batching, Catalog, ModelSpec
from cascadeq.infra.streams import Entry
from cascadeq.protocol import wire
from cascadeq.protocol.messages import HEADER_FIELD, INPUTS_FIELD, Header
from cascadeq.workers.batcher import Bad, Batcher, Item


class ScriptedReader:
    """Hands out queued entries; records each call's count and block time."""

    def __init__(self) -> None:
        self.queue: list[Entry] = []
        self.calls: list[tuple[int, int | None]] = []
        self.seq = 0

    def add(self, samples: int = 1, *, broken: bool = False) -> None:
        self.seq += 1
        header = Header(id=f"r{self.seq}", model="toy-small").dumps()
        inputs = wire.dumps_inputs({"input": np.ones((samples, 4), np.float32)})
        fields = {HEADER_FIELD: header, INPUTS_FIELD: b"\xc1" if broken else inputs}
        self.queue.append((f"{self.seq}-0".encode(), fields))

    def __call__(self, count: int, block_ms: int | None) -> list[tuple[str, Entry]]:
        self.calls.append((count, block_ms))
        taken, self.queue = self.queue[:count], self.queue[count:]
        if not taken and block_ms:
            time.sleep(block_ms / 1000)  # what a real blocking read does when nothing comes
        return [("s", e) for e in taken]


def spec(toy_catalog: Catalog, max_batch: int, max_wait_ms: float) -> ModelSpec:
    return replace(
        toy_catalog.models["toy-small"], batching=Batching("dynamic", max_batch, max_wait_ms)
    )


def ids(batch: list[Item | Bad]) -> list[str]:
    return [i.headers[0].id if isinstance(i, Item) and i.samples else "bad" for i in batch]


def test_full_batch_launches_without_waiting(toy_catalog: Catalog) -> None:
    reader = ScriptedReader()
    for _ in range(10):
        reader.add()
    batcher = Batcher(spec(toy_catalog, 4, 1000.0), reader)
    started = time.monotonic()
    assert ids(batcher.collect(block_ms=500)) == ["r1", "r2", "r3", "r4"]
    assert time.monotonic() - started < 0.5  # did not sit out the 1 s window
    assert reader.calls == [(4, 500)]


def test_partial_batch_launches_when_the_window_closes(toy_catalog: Catalog) -> None:
    reader = ScriptedReader()
    reader.add()
    batcher = Batcher(spec(toy_catalog, 8, 30.0), reader)
    started = time.monotonic()
    assert ids(batcher.collect(block_ms=500)) == ["r1"]
    waited = time.monotonic() - started
    assert 0.02 <= waited < 0.5
    first, second = reader.calls[0], reader.calls[1]
    assert first == (8, 500)
    assert second[0] == 7
    assert second[1] is not None
    assert 1 <= second[1] <= 30


def test_zero_wait_takes_only_what_is_there(toy_catalog: Catalog) -> None:
    reader = ScriptedReader()
    reader.add()
    batcher = Batcher(spec(toy_catalog, 8, 0.0), reader)
    assert ids(batcher.collect(block_ms=500)) == ["r1"]
    assert reader.calls == [(8, 500)]


def test_nothing_queued_returns_an_empty_batch(toy_catalog: Catalog) -> None:
    batcher = Batcher(spec(toy_catalog, 8, 5.0), ScriptedReader())
    assert batcher.collect(block_ms=10) == []


def test_batch_size_counts_samples_and_carries_the_overflow(toy_catalog: Catalog) -> None:
    reader = ScriptedReader()
    reader.add(samples=3)
    reader.add(samples=3)
    reader.add(samples=3)
    batcher = Batcher(spec(toy_catalog, 7, 50.0), reader)
    first = batcher.collect(block_ms=100)
    assert ids(first) == ["r1", "r2"]
    assert sum(i.samples for i in first if isinstance(i, Item)) == 6
    assert ids(batcher.collect(block_ms=100)) == ["r3"]


def test_an_oversized_request_runs_alone(toy_catalog: Catalog) -> None:
    reader = ScriptedReader()
    reader.add(samples=20)
    reader.add(samples=1)
    batcher = Batcher(spec(toy_catalog, 8, 5.0), reader)
    assert ids(batcher.collect(block_ms=100)) == ["r1"]
    assert ids(batcher.collect(block_ms=100)) == ["r2"]


def test_broken_entries_come_back_as_bad_and_do_not_count(toy_catalog: Catalog) -> None:
    reader = ScriptedReader()
    reader.add()
    reader.add(broken=True)
    reader.add()
    batcher = Batcher(spec(toy_catalog, 2, 20.0), reader)
    batch = batcher.collect(block_ms=100)
    assert ids(batch) == ["r1", "bad", "r3"]
    bad = batch[1]  # its header is fine, so it is answered with its own error
    assert isinstance(bad, Item)
    assert bad.samples == 0
    [failed] = bad.bad
    assert failed.code == "bad_input"
    assert failed.salvage() == ("r2", None)


class TenantReader(ScriptedReader):
    """Entries of a busy and a light tenant's streams; ``first`` puts the light one's
    ahead, as a lane reader with tenants' sub-streams does (workers/lanes.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def add_to(self, stream: str, samples: int) -> None:
        self.add(samples=samples)
        self.names.append(stream)

    def __call__(self, count: int, block_ms: int | None) -> list[tuple[str, Entry]]:
        got = super().__call__(count, block_ms)
        names, self.names = self.names[: len(got)], self.names[len(got) :]
        return [(name, entry) for name, (_, entry) in zip(names, got, strict=True)]

    def first(self, held: list[Item | Bad]) -> list[Item | Bad]:
        light = [i for i in held if i.stream == "light"]
        return light + [i for i in held if i.stream != "light"]


def test_tenant_lanes_take_light_entries_first_and_fill_past_one_that_does_not_fit(
    toy_catalog: Catalog,
) -> None:
    for reader in (TenantReader(), ScriptedReader()):
        for stream, samples in (("busy", 4), ("busy", 4), ("light", 3), ("busy", 1)):
            if isinstance(reader, TenantReader):
                reader.add_to(stream, samples)
            else:
                reader.add(samples=samples)
        batcher = Batcher(spec(toy_catalog, 8, 50.0), reader)
        first, second = batcher.collect(block_ms=100), batcher.collect(block_ms=100)
        if isinstance(reader, TenantReader):
            # light's 3 first, then busy's 4; the next 4 does not fit, the 1 after it does
            assert (ids(first), ids(second)) == (["r3", "r1", "r4"], ["r2"])
        else:  # a lane without tenants: as read, cut at the first entry that overflows
            assert (ids(first), ids(second)) == (["r1", "r2"], ["r3", "r4"])
