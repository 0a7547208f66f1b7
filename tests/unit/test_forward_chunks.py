"""The router's shortcuts agree with the general paths they skip.

Bundles without R (one sample per request) are cut by slicing, and header checks run over
distinct (key, type) pairs and a shared route; these compare each shortcut with the per-request
path on generated cases, so a shortcut can never route or refuse differently.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from cascadeq.protocol import bundle, wire
from cascadeq.protocol.bundle import Bundle, Header
from cascadeq.router import forward


def _bundle(size: int, unit: bool) -> Bundle:
    headers = [Header(id=f"r{i}", model="m") for i in range(size)]
    b = Bundle("s", b"1-0", headers, {}, np.ones(size, np.int64), b"", single=False)
    b.unit = unit
    return b


def _shape(chunks: list[list[forward.Part]]) -> list[list[tuple[int, list[int]]]]:
    return [[(n, list(indices)) for _, n, indices in chunk] for chunk in chunks]


@given(
    st.lists(st.tuples(st.integers(1, 40), st.integers(0, 40)), min_size=1, max_size=6),
    st.integers(0, 70),
)
def test_unit_row_chunks_match_the_general_cut(spec: list[tuple[int, int]], max_batch: int) -> None:
    for unit in (True, False):
        parts: list[forward.Part] = []
        for n, (size, drop) in enumerate(spec):
            b = _bundle(size, unit)
            parts.append((b, n, [i for i in range(size) if i >= min(drop, size - 1)]))
        if unit:
            fast = _shape(list(forward._chunks(parts, max_batch)))
        else:
            slow = _shape(list(forward._chunks(parts, max_batch)))
    assert fast == slow


_TEXT = st.sampled_from([*sorted(bundle.HOP_TEXT), "score", "confidence", "latency_ms"])
_VALUE = st.one_of(st.none(), st.text(max_size=3), st.integers(-5, 5), st.floats(-1e3, 1e3))


@given(st.lists(st.lists(st.dictionaries(_TEXT, _VALUE, max_size=4), max_size=3), max_size=5))
def test_the_bundle_trace_check_refuses_exactly_what_the_per_header_check_does(
    traces: list[list[dict[str, object]]],
) -> None:
    raw = wire.dumps([{"id": f"r{i}", "model": "m", "trace": t} for i, t in enumerate(traces)])
    headers, bad, _ = bundle._headers(raw)
    expected = [i for i, h in enumerate(headers) if bundle.name_problem(h)]
    assert [item.index for item in bad] == expected


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "Bad Name", "x" * 70]),
            st.sampled_from(["standard", "gold", "UP"]),
            st.sampled_from(["r1", "r 2", None]),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_the_bundle_name_check_refuses_exactly_what_the_per_header_check_does(
    specs: list[tuple[str, str, str | None]],
) -> None:
    docs = [
        {"id": f"r{i}", "task": task, "tier": tier, **({"reply_to": rt} if rt else {})}
        for i, (task, tier, rt) in enumerate(specs)
    ]
    headers, bad, route = bundle._headers(wire.dumps(docs))
    assert [item.index for item in bad] == [
        i for i, h in enumerate(headers) if bundle.name_problem(h)
    ]
    distinct = {(h.task, h.model, h.tier, h.priority, h.tenant) for h in headers}
    assert route == (next(iter(distinct)) if len(distinct) == 1 else None)
