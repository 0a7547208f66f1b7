"""Cheap per-request complexity scores, by name, for the router's complexity rule.

A scorer takes one input array (dimension 0 is the samples) and returns one float for
the whole request; it must cost microseconds, since the router calls it per request.
Register your own with ``@register("name")``, or name it in the catalog as
``"package.module:function"``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import numpy as np

Scorer = Callable[[np.ndarray], float]

_REGISTRY: dict[str, Scorer] = {}


class ScorerError(LookupError):
    """A scorer name that resolves to nothing callable."""


def register(name: str) -> Callable[[Scorer], Scorer]:
    def add(fn: Scorer) -> Scorer:
        _REGISTRY[name] = fn
        return fn

    return add


def names() -> list[str]:
    return sorted(_REGISTRY)


def resolve(name: str) -> Scorer:
    if name in _REGISTRY:
        return _REGISTRY[name]
    module, _, attr = name.partition(":")
    if not attr:
        raise ScorerError(f"no complexity scorer named {name!r}")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ScorerError(f"cannot import scorer {name!r}: {exc}") from exc
    if not callable(fn):
        raise ScorerError(f"{name!r} is not callable")
    _REGISTRY[name] = fn
    return fn  # type: ignore[no-any-return]


@register("input_size")
def input_size(arr: np.ndarray) -> float:
    """Elements per sample: bigger images, longer documents."""
    return float(arr.size // max(1, arr.shape[0]))


@register("sequence_length")
def sequence_length(arr: np.ndarray) -> float:
    """Length of axis 1, counting only non-zero (non-padding) positions of token ids."""
    if arr.ndim < 2:
        return 1.0
    if arr.dtype.kind in "iu":
        return float(np.count_nonzero(arr, axis=1).max())
    return float(arr.shape[1])


@register("nonzero_fraction")
def nonzero_fraction(arr: np.ndarray) -> float:
    """Share of non-zero values; for the digits example, how much ink a scan holds."""
    return float(np.count_nonzero(arr)) / max(1, arr.size)
