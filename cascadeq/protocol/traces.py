"""The sampled-trace record: one entry of a task's capped traces stream (``Keys.traces``).

Workers write one for a sample of the requests a task's first model answered at stage 0
(``trace_sample`` in the catalog); `cascadeq router train` reads them to learn which
requests that model will not answer well. Two fields: the request's inputs, and whether
the first model's answer was kept (not escalated).
"""

from __future__ import annotations

from cascadeq.protocol.bundle import INPUTS as INPUTS  # noqa: PLC0414 - a trace field too

KEPT = b"k"  # b"1": the first model's answer was final; b"0": the request went on
MAXLEN = 50_000  # per task: enough to train on, small enough to forget


def record(inputs: bytes, *, kept: bool) -> dict[bytes, bytes]:
    """The entry for one request: its encoded inputs and the first model's verdict."""
    return {INPUTS: inputs, KEPT: b"1" if kept else b"0"}


def hard(fields: dict[bytes, bytes]) -> bool:
    """True for a request the first model did not answer for good (what training predicts)."""
    return fields.get(KEPT) != b"1"
