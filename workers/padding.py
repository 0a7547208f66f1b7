"""Stacking a batch of requests whose inputs may differ in length.

A model declares a variable axis with -1 beyond axis 0. Requests then cannot simply be
concatenated: they are grouped into sub-batches and padded with the model's pad value to
the longest request in their sub-batch. Without bucketing a batch is one sub-batch; with
bucketing boundaries (e.g. [16, 32, 64]) a request joins the first bucket whose boundary
is at least its length (longer ones share an overflow bucket), so short requests are not
padded to the length of a long neighbour. Without a pad value only requests of identical
shape share a sub-batch. Each sub-batch runs on its own; outputs come back in request
order, so the caller splits them by row offsets as for any batch.

Padding overhead = elements run / real elements (1.0 means no padding); it tells an
operator whether bucketing boundaries suit the traffic.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cascadeq.config.catalog import ModelSpec

Inputs = Mapping[str, np.ndarray]
#: run(inputs, samples) -> one output row per sample
RunFn = Callable[[Inputs, int], np.ndarray]


@dataclass(frozen=True)
class SubBatch:
    """Requests (by index in the batch) that run together, stacked and padded."""

    members: tuple[int, ...]
    inputs: dict[str, np.ndarray]
    samples: int


@dataclass(frozen=True)
class Plan:
    sub_batches: tuple[SubBatch, ...]
    padded: int  # elements that go into the model
    real: int  # elements the requests brought

    @property
    def overhead(self) -> float:
        return self.padded / self.real if self.real else 1.0


def has_variable_axes(spec: ModelSpec) -> bool:
    return any(-1 in i.shape[1:] for i in spec.inputs)


def length(request: Inputs, spec: ModelSpec) -> int:
    """The longest variable axis of any input: what bucketing sorts by."""
    sizes = [
        request[i.name].shape[axis]
        for i in spec.inputs
        for axis in range(1, len(i.shape))
        if i.shape[axis] == -1
    ]
    return max(sizes, default=0)


def group_key(request: Inputs, spec: ModelSpec) -> Hashable:
    """Which sub-batch a request joins."""
    batching = spec.batching
    if batching.pad_value is None:
        return tuple(request[i.name].shape[1:] for i in spec.inputs)
    if not batching.bucketing:
        return 0
    return int(np.searchsorted(batching.bucketing, length(request, spec), side="left"))


def pad_stack(arrays: Sequence[np.ndarray], pad_value: float) -> np.ndarray:
    """Concatenate along axis 0, padding every other axis to the longest with pad_value."""
    if all(a.shape[1:] == arrays[0].shape[1:] for a in arrays):
        return np.concatenate(arrays)
    trailing = np.max([a.shape[1:] for a in arrays], axis=0)
    out = np.full((sum(a.shape[0] for a in arrays), *trailing), pad_value, arrays[0].dtype)
    offset = 0
    for a in arrays:
        out[(slice(offset, offset + a.shape[0]), *(slice(0, n) for n in a.shape[1:]))] = a
        offset += a.shape[0]
    return out


def plan(requests: Sequence[Inputs], spec: ModelSpec) -> Plan:
    """Group and pad a batch; groups keep the order of their first request."""
    groups: dict[Hashable, list[int]] = {}
    for index, request in enumerate(requests):
        groups.setdefault(group_key(request, spec), []).append(index)
    pad = spec.batching.pad_value
    subs = []
    for members in groups.values():
        stacked = {
            i.name: pad_stack([requests[m][i.name] for m in members], 0 if pad is None else pad)
            for i in spec.inputs
        }
        samples = sum(requests[m][spec.inputs[0].name].shape[0] for m in members)
        subs.append(SubBatch(tuple(members), stacked, samples))
    padded = sum(a.size for s in subs for a in s.inputs.values())
    real = sum(a.size for r in requests for a in r.values())
    return Plan(tuple(subs), padded, real)


def run(run_fn: RunFn, requests: Sequence[Inputs], spec: ModelSpec) -> tuple[np.ndarray, float]:
    """Run a batch as its sub-batches; return outputs in request order and the overhead."""
    if len(requests) == 1:
        only = requests[0]
        return run_fn(only, only[spec.inputs[0].name].shape[0]), 1.0
    if not has_variable_axes(spec):
        stacked = {i.name: np.concatenate([r[i.name] for r in requests]) for i in spec.inputs}
        return run_fn(stacked, stacked[spec.inputs[0].name].shape[0]), 1.0
    batch = plan(requests, spec)
    outs = [run_fn(s.inputs, s.samples) for s in batch.sub_batches]
    return _in_request_order(outs, batch, requests, spec), batch.overhead


def _in_request_order(
    outs: list[np.ndarray], batch: Plan, requests: Sequence[Inputs], spec: ModelSpec
) -> np.ndarray:
    """Scatter sub-batch outputs back to the rows their requests hold in the whole batch."""
    if len(outs) == 1:
        return outs[0]  # one sub-batch keeps the request order
    rows = np.array([r[spec.inputs[0].name].shape[0] for r in requests])
    starts = np.concatenate([[0], np.cumsum(rows)[:-1]])
    order = np.concatenate(
        [np.arange(starts[m], starts[m] + rows[m]) for s in batch.sub_batches for m in s.members]
    )
    joined = np.concatenate(outs)  # trailing shapes must agree, else the batch re-runs singly
    result = np.empty_like(joined)
    result[order] = joined
    return result
