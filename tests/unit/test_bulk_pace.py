"""The bulk job's send rate: a steady pace, cut on queue_full, won back up to its start."""

from __future__ import annotations

import pytest

from cascadeq.bulk.job import chunk_for
from cascadeq.bulk.pace import CUT, GAP_S, GROW, Pace


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_default_is_one_chunk_per_gap_and_spaces_sends() -> None:
    clock = Clock()
    pace = Pace(100, clock=clock)
    assert pace.rate == pytest.approx(100 / GAP_S)
    assert pace.due_in() == 0.0
    pace.sent(100)
    assert pace.due_in() == pytest.approx(GAP_S)
    clock.now += GAP_S
    assert pace.due_in() == 0.0


def test_queue_full_cuts_at_most_once_per_gap_and_answers_win_it_back_to_the_start() -> None:
    clock = Clock()
    pace = Pace(10, clock=clock)
    start = pace.rate
    pace.congested()
    pace.congested()  # the same moment: one cut
    assert pace.rate == pytest.approx(start * CUT)
    clock.now += 2 * GAP_S
    pace.congested()
    assert pace.rate == pytest.approx(start * CUT * CUT)
    pace.answered()
    assert pace.rate == pytest.approx(start * CUT * CUT * GROW)
    for _ in range(100):
        pace.answered()
    assert pace.rate == pytest.approx(start)  # never past the start


def test_a_fixed_rate_never_moves() -> None:
    pace = Pace(10, rate=500.0, clock=Clock())
    pace.answered()
    pace.congested()
    assert pace.rate == 500.0
    with pytest.raises(ValueError, match="rate must be"):
        Pace(10, rate=-1.0)


@pytest.mark.parametrize(
    ("max_batch", "chunk"), [(1, 16), (64, 128), (32, 64), (512, 128), (256, 128)]
)
def test_chunks_are_two_batches_within_bounds(max_batch: int, chunk: int) -> None:
    assert chunk_for(max_batch) == chunk
