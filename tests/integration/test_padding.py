"""Padding and bucketing: overhead figures, request order, and identical answers end to end."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis

from cascadeq.config.catalog import Batching, Catalog, CatalogError, ModelSpec
from cascadeq.config.settings import Settings
from cascadeq.examples import seqdigits as seq
from cascadeq.protocol import keys as keynames
from cascadeq.protocol import wire
from cascadeq.protocol.keys import Keys
from cascadeq.protocol.messages import HEADER_FIELD, INPUTS_FIELD, Header, Result, now_ms
from cascadeq.workers import ModelWorker, padding

SEQ_CATALOG = """
[models.seq]
path = "seq.onnx"
output = "probabilities"
inputs = [{ name = "tokens", dtype = "int64", shape = [-1, -1] }]
[models.seq.batching]
pad_value = 0
bucketing = [3]
"""


def seq_spec(pad_value: float | None = 0, bucketing: tuple[int, ...] = ()) -> ModelSpec:
    spec = Catalog.loads(SEQ_CATALOG, check_files=False).models["seq"]
    return replace(spec, batching=Batching(pad_value=pad_value, bucketing=bucketing))


def tokens(*rows: list[int]) -> dict[str, np.ndarray]:
    return {"tokens": np.array(rows, dtype=np.int64)}


def row_sums(inputs: padding.Inputs, samples: int) -> np.ndarray:
    """A stand-in model whose answer padding with zeros cannot change."""
    out = inputs["tokens"].sum(axis=1, keepdims=True)
    assert out.shape[0] == samples
    return out


BATCH = [tokens([1, 2]), tokens([3, 4, 5, 6, 7]), tokens([8, 9, 10]), tokens([1, 1], [2, 0])]


def test_padding_to_the_longest_reports_the_overhead() -> None:
    plan = padding.plan(BATCH, seq_spec())
    [sub] = plan.sub_batches
    assert sub.inputs["tokens"].shape == (5, 5)
    assert sub.inputs["tokens"][0].tolist() == [1, 2, 0, 0, 0]
    assert (plan.padded, plan.real) == (25, 14)
    assert plan.overhead == pytest.approx(25 / 14)


def test_bucketing_runs_each_length_range_as_its_own_sub_batch() -> None:
    plan = padding.plan(BATCH, seq_spec(bucketing=(3,)))
    assert [s.members for s in plan.sub_batches] == [(0, 2, 3), (1,)]
    assert [s.inputs["tokens"].shape for s in plan.sub_batches] == [(4, 3), (1, 5)]
    assert (plan.padded, plan.real) == (17, 14)
    out, overhead = padding.run(row_sums, BATCH, seq_spec(bucketing=(3,)))
    assert out[:, 0].tolist() == [3, 25, 27, 2, 2]  # back in request order
    assert overhead == pytest.approx(17 / 14)


def test_without_a_pad_value_only_equal_shapes_share_a_sub_batch() -> None:
    plan = padding.plan(BATCH, seq_spec(pad_value=None))
    assert [s.members for s in plan.sub_batches] == [(0, 3), (1,), (2,)]
    assert plan.overhead == 1.0
    out, _ = padding.run(row_sums, BATCH, seq_spec(pad_value=None))
    assert out[:, 0].tolist() == [3, 25, 27, 2, 2]


def test_fixed_shape_models_concatenate_as_before(catalog: Catalog) -> None:
    spec = catalog.models["digits-small"]
    assert not padding.has_variable_axes(spec)
    batch = [{"input": np.ones((2, 64), np.float32)}, {"input": np.zeros((1, 64), np.float32)}]
    out, overhead = padding.run(lambda x, n: x["input"][:, :1], batch, spec)
    assert out[:, 0].tolist() == [1.0, 1.0, 0.0]
    assert overhead == 1.0


@pytest.mark.parametrize(
    ("batching", "field", "fix"),
    [
        ("bucketing = [8]", "bucketing", "pad_value = 0"),
        ("pad_value = 0.5", "pad_value", "integer pad_value"),
        ("pad_value = 0\nbucketing = [8, 4]", "bucketing", "increasing order"),
        ("pad_value = 0\nbucketing = [0]", "bucketing", "increasing order"),
        ('pad_value = "0"', "pad_value", "int or float"),
    ],
)
def test_catalog_padding_errors_name_field_and_fix(batching: str, field: str, fix: str) -> None:
    text = SEQ_CATALOG.replace("pad_value = 0\nbucketing = [3]", batching)
    with pytest.raises(CatalogError, match=fix) as info:
        Catalog.loads(text, check_files=False)
    assert info.value.field_path == f"models.seq.batching.{field}"


def test_padding_a_model_without_a_free_axis_is_a_catalog_error() -> None:
    text = SEQ_CATALOG.replace("[-1, -1]", "[-1, 4]").replace("bucketing = [3]", "")
    with pytest.raises(CatalogError, match="no input has a free axis") as info:
        Catalog.loads(text, check_files=False)
    assert info.value.field_path == "models.seq.batching.pad_value"


# -- through a real worker and real Redis -------------------------------------------------


def enqueue(r: redis.Redis, keys: Keys, rid: str, x: np.ndarray) -> None:
    header = Header(id=rid, model=seq.MODEL_NAME, submitted_at=now_ms())
    r.xadd(
        keys.model_stream(seq.MODEL_NAME),
        {HEADER_FIELD: header.dumps(), INPUTS_FIELD: wire.dumps_inputs({"tokens": x})},
    )


def drain(worker: ModelWorker) -> None:
    worker.setup()
    while worker.step(block_ms=None):
        pass


@pytest.mark.parametrize(
    ("pad_value", "bucketing"), [(0, ()), (0, seq.BUCKETS), (None, ())], ids=str
)
def test_padded_batches_answer_exactly_as_requests_run_alone(
    r: redis.Redis,
    settings: Settings,
    seq_dir: Path,
    pad_value: int | None,
    bucketing: tuple[int, ...],
) -> None:
    cat = Catalog.load(seq_dir / seq.CATALOG_FILE)
    batching = Batching("dynamic", 64, 50.0, pad_value, bucketing)
    spec = replace(cat.models[seq.MODEL_NAME], batching=batching)
    worker = ModelWorker(r, cat, spec, settings, "w1")
    val = seq.load_split(seq_dir / seq.VAL_FILE)
    requests = seq.unpad(val)[:40]
    client_padded = np.pad(val.tokens[40:43], ((0, 0), (0, 50 - val.tokens.shape[1])))
    requests.append(client_padded)  # one request of 3 rows, padded by its client
    for i, x in enumerate(requests):
        enqueue(r, worker.keys, f"s{i}", x)
    drain(worker)
    model = seq.session(seq_dir / seq.MODEL_FILE)
    got = [Result.loads(r.get(worker.keys.result(f"s{i}")) or b"") for i in range(len(requests))]
    for res, x in zip(got, requests, strict=True):
        assert res.ok
        alone = model.run(["probabilities"], {"tokens": x})[0]
        mine = res.outputs["probabilities"]
        assert np.allclose(mine, alone, atol=1e-6)
        assert np.array_equal(mine.argmax(axis=1), alone.argmax(axis=1))
        assert res.info["padding_overhead"] >= 1.0
    assert max(res.batch_size for res in got) > 1  # they really shared batches
    overheads = {res.info["padding_overhead"] for res in got}
    if pad_value is None:
        assert overheads == {1.0}
    else:
        assert max(overheads) > 1.0
    stream = worker.keys.model_stream(seq.MODEL_NAME)
    assert r.xpending(stream, keynames.WORKER_GROUP)["pending"] == 0
