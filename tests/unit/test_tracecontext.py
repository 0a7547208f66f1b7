"""W3C traceparent checks and the ids a producer starts."""

from __future__ import annotations

import pytest

from cascadeq.protocol import tracecontext
from cascadeq.protocol.bundle import Header, loads_header
from cascadeq.protocol.wire import WireError

GOOD = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # unknown version
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # uppercase
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # no flags
        GOOD + "\n",
    ],
)
def test_malformed_traceparents_are_refused_saying_why(bad: str) -> None:
    with pytest.raises(ValueError, match="traceparent"):
        tracecontext.check(bad)


def test_a_valid_traceparent_passes_and_names_its_ids() -> None:
    assert tracecontext.check(GOOD) == GOOD
    assert tracecontext.trace_id(GOOD) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert tracecontext.parent_id(GOOD) == "00f067aa0ba902b7"


def test_started_traceparents_are_valid_and_distinct() -> None:
    start = tracecontext.Starter()
    made = [start() for _ in range(1000)] + [tracecontext.Starter()() for _ in range(10)]
    assert len(set(made)) == len(made)
    assert len({tracecontext.trace_id(t) for t in made}) == len(made)
    for t in made[:20] + made[-10:]:
        assert tracecontext.check(t) == t


def test_the_header_carries_it_only_when_set_and_refuses_a_forged_one() -> None:
    plain = Header(id="a", task="t")
    assert b"traceparent" not in plain.dumps()  # an untraced header's bytes are unchanged
    traced = Header(id="a", task="t", traceparent=GOOD)
    assert loads_header(traced.dumps()).traceparent == GOOD
    forged = traced.dumps().replace(b"-01", b"-zz")
    with pytest.raises(WireError):
        loads_header(forged)
