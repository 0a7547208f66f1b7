"""W3C trace context (``traceparent``) carried by a request from submit to its result.

A producer accepts a caller's ``traceparent`` (checked here) or, when its settings ask,
starts one; the header carries it through router and workers, each hop logs it, and the
result holds it in ``info["traceparent"]``. Starting one costs a counter step per request
and one ``os.urandom`` per submit call, not a random draw per request.
"""

from __future__ import annotations

import itertools
import os
import re

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


def check(value: object) -> str:
    """The traceparent if valid (version 00, non-zero ids, lowercase hex), else ValueError."""
    if not isinstance(value, str):
        raise ValueError(f"traceparent must be a string, got {type(value).__name__}")
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        raise ValueError(
            f"traceparent {value!r} is not W3C trace context: write "
            "00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>, lowercase"
        )
    if match.group(1) == _ZERO_TRACE or match.group(2) == _ZERO_SPAN:
        raise ValueError(f"traceparent {value!r} has an all-zero trace or parent id")
    return value


def trace_id(traceparent: str) -> str:
    """The 32-hex trace id a traceparent names (what log lines carry)."""
    return traceparent[3:35]


def parent_id(traceparent: str) -> str:
    return traceparent[36:52]


class Starter:
    """New traceparents for one submit call: one random draw, then a counter."""

    _count = itertools.count(1)  # process-wide, so two calls' ids differ even by chance

    def __init__(self) -> None:
        self.base = os.urandom(12).hex()
        self.span = os.urandom(4).hex()

    def __call__(self) -> str:
        n = next(self._count) & 0xFFFFFFFF
        return f"00-{self.base}{n:08x}-{self.span}{n:08x}-01"
