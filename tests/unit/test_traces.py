"""The sampled-trace record: what a worker writes is what `router train` reads."""

from __future__ import annotations

from cascadeq.protocol import traces


def test_a_trace_says_whether_the_first_answer_was_kept() -> None:
    kept, went_on = traces.record(b"x", kept=True), traces.record(b"x", kept=False)
    assert kept[traces.INPUTS] == b"x"
    assert (traces.hard(kept), traces.hard(went_on)) == (False, True)
    assert traces.hard({traces.INPUTS: b"x"})  # no verdict: not counted as kept
