"""Launch rules on their own, and the Batcher driven by them under an injected clock."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from cascadeq.config.catalog import Batching, Catalog, CatalogError
from cascadeq.infra.streams import Entry
from cascadeq.protocol import wire
from cascadeq.protocol.messages import HEADER_FIELD, INPUTS_FIELD, Header
from cascadeq.workers import strategies
from cascadeq.workers.batcher import Batcher, Item


def test_dynamic_launches_when_full_or_when_max_wait_has_passed() -> None:
    rule = strategies.Dynamic(max_batch=8, max_wait_ms=5.0)
    assert not rule.launch_now(3, 0.0)
    assert rule.wait_budget_ms(3, 2.0) == 3.0
    assert rule.launch_now(8, 0.0)
    assert rule.launch_now(3, 5.0)
    assert rule.wait_budget_ms(3, 7.0) == 0.0


def test_static_waits_for_a_full_batch_up_to_the_safety_wait() -> None:
    rule = strategies.Static(max_batch=8, safety_wait_ms=100.0)
    assert not rule.launch_now(7, 99.0)
    assert rule.wait_budget_ms(7, 60.0) == 40.0
    assert rule.launch_now(8, 0.0)
    assert rule.launch_now(1, 100.0)  # low traffic is never stuck


def test_continuous_never_waits() -> None:
    rule = strategies.Continuous()
    assert rule.launch_now(1, 0.0)
    assert rule.wait_budget_ms(1, 0.0) == 0.0


def test_adaptive_behaves_as_dynamic_until_it_has_a_fit() -> None:
    rule = strategies.Adaptive(max_batch=32, latency_budget_ms=50.0, max_wait_ms=4.0)
    assert rule.wait_budget_ms(1, 1.0) == 3.0
    rule.observe(8, 3.0)
    rule.observe(8, 3.2)  # one size only: no slope to fit yet
    assert rule.fit is None
    assert rule.launch_now(1, 4.0)


def test_adaptive_fits_compute_and_waits_only_while_the_budget_holds() -> None:
    rule = strategies.Adaptive(max_batch=32, latency_budget_ms=50.0, max_wait_ms=4.0)
    for n in (1, 4, 8, 16, 32):
        rule.observe(n, 0.5 * n + 2.0)  # compute = 0.5 ms a sample + 2 ms
    assert rule.fit == pytest.approx((0.5, 2.0))
    assert rule.predicted_ms(32) == pytest.approx(18.0)
    # 50 ms budget - 18 ms for a full batch: it may wait until the oldest is 32 ms old.
    assert rule.wait_budget_ms(3, 10.0) == pytest.approx(22.0)
    assert not rule.launch_now(3, 31.0)
    assert rule.launch_now(3, 32.0)
    assert rule.launch_now(32, 0.0)


def test_adaptive_does_not_wait_when_a_full_batch_would_blow_the_budget() -> None:
    rule = strategies.Adaptive(max_batch=64, latency_budget_ms=10.0, max_wait_ms=4.0)
    rule.observe(1, 1.0)
    rule.observe(64, 64.0)
    assert rule.launch_now(1, 0.0)


def test_adaptive_forgets_old_batches_and_clamps_a_negative_fit() -> None:
    rule = strategies.Adaptive(max_batch=8, latency_budget_ms=50.0, max_wait_ms=2.0, window=2)
    rule.observe(1, 9.0)
    rule.observe(8, 1.0)  # noisy: bigger looked cheaper
    assert rule.fit == (0.0, pytest.approx(10.142857, rel=1e-5))
    rule.observe(2, 2.0)
    rule.observe(4, 4.0)
    assert rule.fit == pytest.approx((1.0, 0.0))


@pytest.mark.parametrize(
    ("mode", "kind"),
    [
        ("static", strategies.Static),
        ("dynamic", strategies.Dynamic),
        ("adaptive", strategies.Adaptive),
        ("continuous", strategies.Continuous),
    ],
)
def test_each_mode_gets_its_rule(mode: str, kind: type) -> None:
    assert isinstance(strategies.for_batching(Batching(mode)), kind)


# -- the Batcher, with a fake clock and a scripted reader --------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TimedReader:
    """Entries arrive at scripted times; a blocking read advances the fake clock."""

    def __init__(self, clock: FakeClock, arrivals: list[float]) -> None:
        self.clock, self.arrivals, self.calls = clock, sorted(arrivals), []
        self.seq = 0

    def _entry(self) -> Entry:
        self.seq += 1
        header = Header(id=f"r{self.seq}", model="toy-small").dumps()
        inputs = wire.dumps_inputs({"input": np.ones((1, 4), np.float32)})
        return f"{self.seq}-0".encode(), {HEADER_FIELD: header, INPUTS_FIELD: inputs}

    def __call__(self, count: int, block_ms: int | None) -> list[tuple[str, Entry]]:
        self.calls.append((count, block_ms))
        due = [t for t in self.arrivals if t <= self.clock.now]
        if not due and block_ms:
            limit = self.clock.now + block_ms / 1000.0
            if self.arrivals and self.arrivals[0] <= limit:
                self.clock.now = self.arrivals[0]  # woken by the first arrival
                due = [self.arrivals[0]]
            else:
                self.clock.now = limit  # the block ran out
        taken = due[:count]
        self.arrivals = self.arrivals[len(taken) :]
        return [("s", self._entry()) for _ in taken]


def batcher(toy: Catalog, batching: Batching, arrivals: list[float]) -> tuple[Batcher, FakeClock]:
    clock = FakeClock()
    spec = replace(toy.models["toy-small"], batching=batching)
    return Batcher(spec, TimedReader(clock, arrivals), clock=clock), clock


def sizes(b: Batcher, block_ms: int = 1000) -> list[int]:
    out = []
    while batch := b.collect(block_ms):
        out.append(sum(i.samples for i in batch if isinstance(i, Item)))
    return out


def test_batcher_dynamic_closes_the_window_at_max_wait(toy_catalog: Catalog) -> None:
    # one every ms: a 4.5 ms window after the first holds 5 of them (at 0,1,2,3,4)
    b, clock = batcher(toy_catalog, Batching("dynamic", 8, 4.5), [i / 1000 for i in range(12)])
    first = b.collect(1000)
    assert len(first) == 5
    assert clock.now == pytest.approx(0.004)  # 0.5 ms left is under XREADGROUP's 1 ms


def test_batcher_static_waits_for_full_batches_then_the_safety_wait(toy_catalog: Catalog) -> None:
    arrivals = [i / 1000 for i in range(10)]
    b, clock = batcher(toy_catalog, Batching("static", 4, safety_wait_ms=50.0), arrivals)
    assert [len(b.collect(1000)) for _ in range(3)] == [4, 4, 2]
    assert clock.now == pytest.approx(0.008 + 0.050)  # the last two waited the safety wait


def test_batcher_continuous_takes_whatever_is_there(toy_catalog: Catalog) -> None:
    b, _ = batcher(toy_catalog, Batching("continuous", 8), [0.0, 0.0, 0.0, 0.001])
    assert sizes(b, block_ms=10) == [3, 1]


def test_batcher_adaptive_feeds_the_rule_and_uses_its_fit(toy_catalog: Catalog) -> None:
    arrivals = [i / 1000 for i in range(100)]
    batching = Batching("adaptive", 64, 2.0, latency_budget_ms=30.0)
    b, clock = batcher(toy_catalog, batching, arrivals)
    assert len(b.collect(1000)) == 3  # no fit yet: the 2 ms prior window
    rule = b.rule
    assert isinstance(rule, strategies.Adaptive)
    run = b.timed(lambda x, n: clock_tick(clock, 0.0002 * n + 0.001))  # 0.2 ms/sample + 1 ms
    run({}, 1)
    run({}, 10)
    assert rule.fit == pytest.approx((0.2, 1.0))
    # full batch: 13.8 ms, so the window may stay open until the oldest is 16.2 ms old
    clock.now = 0.003
    assert len(b.collect(1000)) == 17  # entries at 3..19 ms


def clock_tick(clock: FakeClock, seconds: float) -> np.ndarray:
    clock.now += seconds
    return np.zeros((1, 1))


@pytest.mark.parametrize(
    ("line", "field", "fix"),
    [
        ('mode = "dynamic"\nsafety_wait_ms = 5', "safety_wait_ms", 'set mode = "static"'),
        ('mode = "static"\nlatency_budget_ms = 5', "latency_budget_ms", 'mode = "adaptive"'),
        ('mode = "adaptive"\nlatency_budget_ms = 0', "latency_budget_ms", "e.g. 50"),
        ('mode = "static"\nsafety_wait_ms = -1', "safety_wait_ms", "0 to 60000"),
        ('mode = "eager"', "mode", "adaptive"),
    ],
)
def test_mode_fields_are_checked(line: str, field: str, fix: str) -> None:
    text = (
        '[models.m]\npath = "m.onnx"\noutput = "p"\n'
        'inputs = [{ name = "input", dtype = "float32", shape = [-1, 4] }]\n'
        f"[models.m.batching]\n{line}\n"
    )
    with pytest.raises(CatalogError, match=fix) as info:
        Catalog.loads(text, check_files=False)
    assert info.value.field_path == f"models.m.batching.{field}"


def test_mode_fields_load() -> None:
    text = (
        '[models.m]\npath = "m.onnx"\noutput = "p"\n'
        'inputs = [{ name = "input", dtype = "float32", shape = [-1, 4] }]\n'
        '[models.m.batching]\nmode = "adaptive"\nlatency_budget_ms = 20\n'
    )
    assert Catalog.loads(text, check_files=False).models["m"].batching.latency_budget_ms == 20.0
