"""The dead-letter record: what is written is what the operator tools read back."""

from __future__ import annotations

import numpy as np

from cascadeq.protocol import bundle, deadletter, wire
from cascadeq.protocol.messages import MAX_HEADER_BYTES


def test_a_record_reads_back_with_its_origin_and_its_original_fields() -> None:
    header = wire.dumps({"id": "r1", "task": "toy"})
    x = wire.dumps_inputs({"input": np.zeros((1, 3), dtype="<f4")})
    fields = {bundle.HEADER: header, bundle.INPUTS: x}
    rec = deadletter.record(fields, stream="cq:ingress", entry_id=b"5-0", code="c", reason="why")
    got = deadletter.parse(b"9-1", rec)
    assert (got.id, got.stream, got.entry, got.code, got.reason) == (
        "9-1", "cq:ingress", "5-0", "c", "why"
    )  # fmt: skip
    assert got.fields == fields
    assert (got.request_id, got.missing) == ("r1", [])
    assert got.detail()["inputs"] == {"input": {"dtype": "<f4", "shape": [1, 3]}}


def test_a_long_reason_is_cut_and_a_record_without_inputs_is_not_replayable() -> None:
    rec = deadletter.record({}, stream="s", entry_id=b"1-0", code="c", reason="x" * 5000)
    got = deadletter.parse(b"1-0", rec)
    assert len(got.reason) == deadletter.REASON_MAX_BYTES
    assert got.missing == ["h", "x"]
    assert got.request_id is None


def test_a_too_large_entry_keeps_only_headers_that_are_not_the_problem() -> None:
    small, huge = b"\x80", b"\x00" * (MAX_HEADER_BYTES + 1)
    entry = {bundle.HEADER: small, bundle.INPUTS: b"big"}
    assert deadletter.kept(entry, "bad_payload") is entry
    assert deadletter.kept(entry, "too_large") == {bundle.HEADER: small}
    assert deadletter.kept({bundle.HEADER: huge}, "too_large") == {}
    assert deadletter.kept({bundle.HEADERS: small, bundle.STACKED: b"x"}, "too_large") == {
        bundle.HEADERS: small
    }
    assert deadletter.kept({bundle.HEADERS: huge}, "too_large") == {}
