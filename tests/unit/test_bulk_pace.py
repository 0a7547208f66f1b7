"""The bulk job's send rate: grows while answers come back fast, cut once per round trip."""

from __future__ import annotations

import pytest

from cascadeq.bulk.job import chunk_for
from cascadeq.bulk.pace import CUT, FIRST_GAP_S, GROW, Pace, median_total_ms
from cascadeq.protocol.messages import Result


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def answered(*totals: float) -> list[Result]:
    return [
        Result(id=f"r{i}", status="ok", path=[{"model": "m"}], timings={"total_ms": t})
        for i, t in enumerate(totals)
    ]


def test_median_of_the_answered_rows_only() -> None:
    rows = [*answered(5.0, 1.0, 3.0), Result(id="x", status="error", timings={"total_ms": 99.0})]
    assert median_total_ms(rows) == 3.0
    assert median_total_ms([Result(id="y", status="ok")]) is None


def test_adaptive_starts_at_one_chunk_per_gap_and_spaces_sends() -> None:
    clock = Clock()
    pace = Pace(100, clock=clock)
    assert pace.rate == pytest.approx(100 / FIRST_GAP_S)
    assert pace.due_in() == 0.0
    pace.sent(100)
    assert pace.due_in() == pytest.approx(FIRST_GAP_S)
    clock.now += FIRST_GAP_S
    assert pace.due_in() == 0.0


def test_fast_answers_grow_the_rate_and_a_slow_one_cuts_it_once() -> None:
    clock = Clock()
    pace = Pace(10, clock=clock)
    start = pace.rate
    sent = [pace.sent(10) for _ in range(4)]
    pace.observe(sent[0], answered(4.0, 4.0))
    pace.observe(sent[1], answered(5.0))
    assert pace.rate == pytest.approx(start * GROW * GROW)
    grown = pace.rate
    clock.now += 1.0
    pace.observe(sent[2], answered(40.0))  # queueing: 10x the fastest
    assert pace.rate == pytest.approx(grown * CUT)
    pace.observe(sent[3], answered(40.0))  # sent before the cut: not new news
    assert pace.rate == pytest.approx(grown * CUT)
    later = pace.sent(10)
    pace.observe(later, answered(40.0))  # sent after it and still slow: cut again
    assert pace.rate == pytest.approx(grown * CUT * CUT)


def test_a_fixed_rate_never_moves() -> None:
    pace = Pace(10, rate=500.0, clock=Clock())
    sent = pace.sent(10)
    pace.observe(sent, answered(1.0))
    pace.observe(sent, answered(100.0))
    pace.congested()
    assert pace.rate == 500.0
    with pytest.raises(ValueError, match="rate must be"):
        Pace(10, rate=-1.0)


def test_queue_full_cuts_at_most_once_per_round_trip() -> None:
    clock = Clock()
    pace = Pace(10, clock=clock)
    start = pace.rate
    pace.congested()
    pace.congested()
    assert pace.rate == pytest.approx(start * CUT)
    clock.now += 2 * FIRST_GAP_S
    pace.congested()
    assert pace.rate == pytest.approx(start * CUT * CUT)


@pytest.mark.parametrize(("max_batch", "chunk"), [(1, 16), (64, 128), (32, 64), (512, 250)])
def test_chunks_are_two_batches_within_bounds(max_batch: int, chunk: int) -> None:
    assert chunk_for(max_batch) == chunk
