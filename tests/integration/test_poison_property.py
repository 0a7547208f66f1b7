"""Property: whatever entries a hostile client writes to ingress, the system serves on.

Arbitrary msgpack headers, forged trace hops and input extensions go through a real
router and real workers (in process, stepped by this test) on the suite's Redis, with
good requests alongside. No loop may raise, every good request is answered correctly,
and every hostile entry ends with a result under its id (where that id is valid) or a
dead letter, with nothing left pending.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from streamview import dead_letters

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.protocol import keys as keynames
from cascadeq.protocol import wire
from cascadeq.protocol.messages import (
    HEADER_FIELD,
    INPUTS_FIELD,
    Header,
    Result,
    now_ms,
    salvage_id,
)
from cascadeq.router.service import Router
from cascadeq.workers import ModelWorker

awkward = st.sampled_from(
    [math.inf, -math.inf, math.nan, -1e308, -math.inf, math.nan, -1e308, 1e308, 2**64 - 1, None]
)
scalars = st.one_of(
    awkward,
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.binary(max_size=8),
)
ext = st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=24))
values = st.recursive(
    st.one_of(scalars, ext),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
HOP_KEYS = ["model", "rule", "tier", "skipped", "confidence", "queue_ms", "batch_wait_ms"]
hops = st.dictionaries(
    st.one_of(
        st.sampled_from([*HOP_KEYS, "compute_ms", "batch_size", "score"]),
        st.binary(min_size=1, max_size=2),
    ),
    st.one_of(scalars, st.sampled_from(["digits-small", "digits-large", "direct"])),
    max_size=5,
)
FIELDS = [*Header.__struct_fields__, "extra"]


def base(rid: str) -> dict[str, Any]:
    return {"id": rid, "task": "digits", "submitted_at": now_ms(), "trace": []}


def forged_header(rid: str) -> st.SearchStrategy[dict[str, Any]]:
    """Mostly a valid header with a few fields forged, sometimes anything at all.

    Built once: the test gives each drawn header an id of its own where it kept ``rid``.
    """
    changes = st.dictionaries(
        st.sampled_from(FIELDS),
        st.one_of(values, st.lists(hops, max_size=17), st.sampled_from(["digits-large", "free"])),
        min_size=1,
        max_size=3,
    )
    numbers = st.one_of(awkward, st.floats(allow_nan=True, allow_infinity=True))
    epoch = st.sampled_from(["submitted_at", "deadline", "routed_at"])
    one_number = st.tuples(epoch, numbers)
    one_hop_number = st.tuples(st.sampled_from([*HOP_KEYS[4:], "compute_ms"]), numbers)
    return st.one_of(
        st.dictionaries(epoch, numbers, min_size=2).map(lambda c: {**base(rid), **c}),
        one_number.map(lambda kv: {**base(rid), kv[0]: kv[1]}),
        one_hop_number.map(lambda kv: {**base(rid), "trace": [{"model": "x", kv[0]: kv[1]}]}),
        changes.map(lambda c: {**base(rid), **c}),
        st.lists(hops, min_size=1, max_size=3).map(lambda t: {**base(rid), "trace": t}),
        st.dictionaries(st.sampled_from(FIELDS), values, max_size=8),
    )


def raw_array(dtype: str, shape: list[int], buf: bytes) -> msgpack.ExtType:
    return msgpack.ExtType(wire.EXT_NDARRAY, msgpack.packb([dtype, shape, buf]))


arrays = st.builds(
    raw_array,
    st.sampled_from(["<f4", "<f8", "<i8", "|b1", ">f4", "<U4", "x"]),
    st.lists(st.sampled_from([0, 1, 2, 64, 2**40]), max_size=3),
    st.one_of(st.binary(max_size=64), st.just(bytes(256)), st.just(bytes(512))),
)
inputs = st.one_of(
    st.just({"input": np.zeros((1, 64), np.float32)}),
    st.dictionaries(st.sampled_from(["input", "pixels"]), st.one_of(arrays, values), max_size=2),
    st.just({"input": np.full((1, 64), np.nan, np.float32)}),
)
hostile = st.tuples(forged_header("bad"), inputs)


def packed_inputs(obj: dict[Any, Any]) -> bytes:
    def ext(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            return raw_array(v.dtype.str, list(v.shape), v.tobytes())
        return v

    return bytes(msgpack.packb({k: ext(v) for k, v in obj.items()}, use_bin_type=True))


@pytest.fixture(scope="module")
def digits(digits_dir: Path) -> np.ndarray:
    return np.load(digits_dir / "digits_test.npz")["X"]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_hostile_ingress_entries_never_stop_the_system_nor_its_good_requests(
    r: redis.Redis, settings: Settings, catalog: Catalog, digits: np.ndarray
) -> None:
    router = Router(r, catalog, settings, "router")
    workers = [ModelWorker(r, catalog, m, settings, f"w-{m.name}") for m in catalog.models.values()]
    loops: list[Router | ModelWorker] = [router, *workers]
    for loop in loops:
        loop.setup()
    runners = {w.spec.name: w.runner for w in workers}
    keys = router.keys
    serial = itertools.count()

    def drain() -> None:
        while sum(loop.step(None) for loop in loops):  # a raise here is a dead loop
            pass

    @hsettings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(hostile, min_size=1, max_size=4), st.randoms(use_true_random=False))
    def check(entries: list[tuple[dict[str, Any], dict[Any, Any]]], rng: Any) -> None:
        n = next(serial)
        goods = {f"good-{n}-{i}-ok": digits[(7 * n + i) % len(digits)][None] for i in range(2)}
        writes: list[tuple[str | None, bytes, bytes]] = [
            (rid, Header(**base(rid)).dumps(), wire.dumps_inputs({"input": x}))  # type: ignore[arg-type]
            for rid, x in goods.items()
        ]
        for k, (h, x) in enumerate(entries):
            forged = {**h, "id": f"bad-{n}-{k}"} if h.get("id") == "bad" else h
            writes.append((None, msgpack.packb(forged, use_bin_type=True), packed_inputs(x)))
        rng.shuffle(writes)
        written = [
            (rid, hdr, bytes(r.xadd(keys.ingress, {HEADER_FIELD: hdr, INPUTS_FIELD: x})))
            for rid, hdr, x in writes
        ]
        drain()
        dead = {d.entry.encode() for d in dead_letters(r, keys) if d.stream == keys.ingress}
        for rid, hdr, eid in written:
            if rid is not None:  # a good request: answered, and by the model it names
                got = Result.loads(r.get(keys.result(rid)) or b"")
                assert got.ok, got.error
                assert got.model is not None
                expected = runners[got.model].run({"input": goods[rid]}, 1)
                np.testing.assert_allclose(
                    got.outputs["probabilities"], expected, rtol=1e-5, atol=1e-6
                )
                continue
            salvaged, _ = salvage_id(hdr)
            answered = salvaged is not None and r.exists(keys.result(salvaged))
            assert answered or eid in dead, (msgpack.unpackb(hdr, strict_map_key=False), eid)
        streams = [(keys.ingress, keynames.ROUTER_GROUP)] + [
            (s, keynames.WORKER_GROUP) for w in workers for s in w.lanes
        ]
        assert all(int(r.xpending(s, g)["pending"]) == 0 for s, g in streams)

    check()
