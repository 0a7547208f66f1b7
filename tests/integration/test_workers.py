"""A worker on its own: real ONNX models, real Redis, entries written straight to its stream."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis
import streamview

from cascadeq.config.catalog import Catalog
from cascadeq.config.settings import Settings
from cascadeq.protocol import keys as keynames
from cascadeq.protocol import wire
from cascadeq.protocol.keys import Keys
from cascadeq.protocol.messages import HEADER_FIELD, INPUTS_FIELD, Header, Result, now_ms
from cascadeq.workers import ModelWorker


@pytest.fixture(scope="module")
def digits(digits_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    split = np.load(digits_dir / "digits_test.npz")
    return split["X"], split["y"]


def with_threshold(catalog: Catalog, threshold: float) -> Catalog:
    task = catalog.tasks["digits"]
    stages = (replace(task.cascade[0], threshold=threshold), *task.cascade[1:])
    return replace(catalog, tasks={"digits": replace(task, cascade=stages)})


def enqueue(
    r: redis.Redis, keys: Keys, stream_model: str, rid: str, x: np.ndarray, **header: object
) -> None:
    h = Header(
        id=rid, submitted_at=now_ms(), trace=[{"model": stream_model, "rule": "test"}], **header
    )  # type: ignore[arg-type]
    r.xadd(
        keys.model_stream(stream_model),
        {HEADER_FIELD: h.dumps(), INPUTS_FIELD: wire.dumps_inputs({"input": x})},
    )


def result(r: redis.Redis, keys: Keys, rid: str) -> Result:
    raw = r.get(keys.result(rid))
    assert raw is not None, f"no result for {rid}"
    return Result.loads(raw)


def drain(worker: ModelWorker) -> None:
    worker.setup()
    while worker.step(block_ms=None):
        pass


def test_confident_answers_are_final_with_path_timings_and_batch_size(
    r: redis.Redis, settings: Settings, catalog: Catalog, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = digits
    cat = with_threshold(catalog, 0.0)  # everything is confident enough
    worker = ModelWorker(r, cat, cat.models["digits-small"], settings, "w1")
    keys = worker.keys
    for i in range(40):
        enqueue(r, keys, "digits-small", f"q{i}", x[i : i + 1], task="digits")
    drain(worker)
    got = [result(r, keys, f"q{i}") for i in range(40)]
    assert all(g.ok and g.model == "digits-small" for g in got)
    predicted = np.array([int(np.argmax(g.outputs["probabilities"][0])) for g in got])
    assert (predicted == y[:40]).mean() > 0.85
    first = got[0]
    assert first.path[0]["model"] == "digits-small"
    assert 0.0 < first.path[0]["confidence"] <= 1.0
    assert set(first.timings) == {"route_ms", "queue_ms", "batch_wait_ms", "compute_ms", "total_ms"}
    assert first.timings["compute_ms"] > 0
    assert 1 <= first.batch_size <= cat.models["digits-small"].batching.max_batch
    assert sum(1 for g in got if g.batch_size > 1) > 0  # they really were batched
    assert r.xpending(keys.model_stream("digits-small"), keynames.WORKER_GROUP)["pending"] == 0


def test_unsure_answers_escalate_to_the_next_model_and_finish_there(
    r: redis.Redis, settings: Settings, catalog: Catalog, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = digits
    cat = with_threshold(catalog, 1.0)  # nothing is confident enough
    small = ModelWorker(r, cat, cat.models["digits-small"], settings, "w1")
    large = ModelWorker(r, cat, cat.models["digits-large"], settings, "w2")
    keys = small.keys
    enqueue(r, keys, "digits-small", "esc", x[:2], task="digits")
    enqueue(r, keys, "digits-small", "pin", x[:1], model="digits-small")
    drain(small)
    assert r.get(keys.result("esc")) is None
    assert result(r, keys, "pin").model == "digits-small"  # pinned: never escalates
    drain(large)
    got = result(r, keys, "esc")
    assert got.model == "digits-large"
    assert [hop["model"] for hop in got.path] == ["digits-small", "digits-large"]
    assert got.path[1]["rule"] == "escalate"
    assert got.outputs["probabilities"].shape == (2, 10)


def test_bad_entries_get_error_results_and_the_batch_still_runs(
    r: redis.Redis, settings: Settings, catalog: Catalog, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = digits
    cat = with_threshold(catalog, 0.0)
    worker = ModelWorker(r, cat, cat.models["digits-small"], settings, "w1")
    keys = worker.keys
    stream = keys.model_stream("digits-small")
    enqueue(r, keys, "digits-small", "good1", x[:1], task="digits")
    enqueue(r, keys, "digits-small", "f64", x[:1].astype(np.float64), task="digits")
    enqueue(r, keys, "digits-small", "shape", x[:1, :10], task="digits")
    enqueue(r, keys, "digits-small", "nan", np.full((1, 64), np.nan, np.float32), task="digits")
    enqueue(r, keys, "digits-small", "late", x[:1], task="digits", deadline=now_ms() - 1)
    ok_header = Header(id="garbled", task="digits", submitted_at=now_ms()).dumps()
    r.xadd(stream, {HEADER_FIELD: ok_header, INPUTS_FIELD: b"\x93\x01\x02"})
    r.xadd(stream, {b"junk": b"\x00"})
    enqueue(r, keys, "digits-small", "good2", x[1:3], task="digits")
    drain(worker)
    assert result(r, keys, "good1").ok
    assert result(r, keys, "good2").outputs["probabilities"].shape == (2, 10)
    for rid, match in [
        ("f64", "float32"),
        ("shape", "shape"),
        ("nan", "NaN"),
        ("garbled", "msgpack"),
    ]:
        bad = result(r, keys, rid)
        assert bad.status == "error"
        assert bad.error is not None
        assert bad.error["code"] == "bad_input"
        assert match in bad.error["message"]
    late = result(r, keys, "late")
    assert late.status == "expired"
    assert not any("compute_ms" in hop for hop in late.path)  # answered, never computed
    assert result(r, keys, "good1").batch_size == 3  # good1 + good2's two rows, not "late"
    assert r.xlen(keys.dead_letter) == 5
    assert r.xpending(stream, keynames.WORKER_GROUP)["pending"] == 0


def test_a_result_is_written_once_and_never_overwritten(
    r: redis.Redis, settings: Settings, catalog: Catalog, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = digits
    cat = with_threshold(catalog, 0.0)
    worker = ModelWorker(r, cat, cat.models["digits-small"], settings, "w1")
    keys = worker.keys
    enqueue(r, keys, "digits-small", "dup", x[:1], task="digits")
    drain(worker)
    first = r.get(keys.result("dup"))
    enqueue(r, keys, "digits-small", "dup", x[5:6], task="digits")  # a redelivery, other data
    drain(worker)
    assert r.get(keys.result("dup")) == first
    assert 0 < r.ttl(keys.result("dup")) <= settings.result_ttl_s


def test_a_catalog_that_does_not_match_the_onnx_file_fails_at_load(catalog: Catalog) -> None:
    from cascadeq.workers import ModelLoadError, OnnxRunner

    spec = catalog.models["digits-small"]
    renamed = replace(spec, inputs=(replace(spec.inputs[0], name="pixels"),))
    with pytest.raises(ModelLoadError, match=r"inputs: the catalog declares \[.pixels.\]"):
        OnnxRunner(renamed)
    with pytest.raises(ModelLoadError, match="version 1: output: 'logits' is not among"):
        OnnxRunner(replace(spec, output="logits"))


def test_an_entry_delivered_too_often_is_dead_lettered_with_an_error_result(
    r: redis.Redis, settings: Settings, catalog: Catalog, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = digits
    fast = replace(settings, visibility_timeout_ms=1, max_deliveries=2)
    worker = ModelWorker(r, catalog, catalog.models["digits-small"], fast, "survivor")
    worker.setup()
    keys = worker.keys
    stream = keys.model_stream("digits-small")
    enqueue(r, keys, "digits-small", "poison", x[:1], task="digits")
    # Consumer c1 took it and died; c2 claimed it and died too: two deliveries.
    r.xreadgroup(keynames.WORKER_GROUP, "c1", {stream: ">"})
    eid = r.xrange(stream)[0][0]
    r.execute_command("XCLAIM", stream, keynames.WORKER_GROUP, "c2", 0, eid, "IDLE", 10_000)
    entry = r.xpending_range(stream, keynames.WORKER_GROUP, "-", "+", 10)[0]
    assert entry["times_delivered"] == 2
    worker.step(block_ms=None)
    got = result(r, keys, "poison")
    assert got.status == "error"
    assert got.error is not None
    assert got.error["code"] == "dead_letter"
    [dead] = streamview.dead_letters(r, keys)
    assert (dead.code, dead.stream) == ("dead_letter", stream)
    assert r.xpending(stream, keynames.WORKER_GROUP)["pending"] == 0


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"trace": [1]}, "bad_payload"),
        ({"trace": [{"model": "x", "queue_ms": "soon"}]}, "bad_payload"),
        ({"trace": [{"model": 5}]}, "bad_payload"),
        ({"attempt": 2**63}, "bad_payload"),
        ({"stage": -1}, "bad_payload"),
        ({"tier": "a:b"}, "bad_payload"),
        ({"priority": ""}, "bad_payload"),
        ({"deadline": "tomorrow"}, "bad_payload"),
        ({"trace": [{"model": "x", "queue_ms": None}]}, "bad_payload"),
        ({"submitted_at": float("-inf")}, "bad_payload"),
        ({"routed_at": 1e308}, "bad_payload"),
    ],
)
def test_forged_headers_get_error_results_and_the_worker_carries_on(
    r: redis.Redis,
    settings: Settings,
    catalog: Catalog,
    digits: tuple[np.ndarray, np.ndarray],
    fields: dict[str, object],
    code: str,
) -> None:
    x, _ = digits
    cat = with_threshold(catalog, 1.0)  # so the innocent neighbour escalates too
    worker = ModelWorker(r, cat, cat.models["digits-small"], settings, "w1")
    keys = worker.keys
    stream = keys.model_stream("digits-small")
    inputs = wire.dumps_inputs({"input": x[:1]})
    forged = {"id": "forged", "task": "digits", "submitted_at": now_ms(), **fields}
    enqueue(r, keys, "digits-small", "before", x[:1], task="digits")
    r.xadd(stream, {HEADER_FIELD: wire.dumps(forged), INPUTS_FIELD: inputs})
    enqueue(r, keys, "digits-small", "after", x[:1], task="digits")
    drain(worker)
    bad = result(r, keys, "forged")
    assert bad.status == "error"
    assert bad.error is not None
    assert bad.error["code"] == code
    assert streamview.count(r, keys.model_stream("digits-large")) == 2  # both neighbours
    assert r.xpending(stream, keynames.WORKER_GROUP)["pending"] == 0


def test_input_maps_with_non_string_names_are_bad_input(
    r: redis.Redis, settings: Settings, catalog: Catalog, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = digits
    worker = ModelWorker(r, catalog, catalog.models["digits-small"], settings, "w1")
    keys = worker.keys
    header = Header(id="mixed", task="digits", submitted_at=now_ms()).dumps()
    inputs = wire.dumps({"input": x[:1], b"input": x[:1]})
    r.xadd(keys.model_stream("digits-small"), {HEADER_FIELD: header, INPUTS_FIELD: inputs})
    drain(worker)
    got = result(r, keys, "mixed")
    assert got.error is not None
    assert got.error["code"] == "bad_input"


def test_a_model_that_breaks_the_length_contract_fails_its_requests_not_the_worker(
    r: redis.Redis, settings: Settings, tmp_path: Path
) -> None:
    import onnx
    from onnx import TensorProto, helper

    # Sums over the batch axis: one row out, whatever the number of rows in.
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["input", "axes"], ["scores"], keepdims=1)],
        "breaks_contract",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "bad.onnx")
    (tmp_path / "catalog.toml").write_text(
        '[models.bad]\npath = "bad.onnx"\noutput = "scores"\noutput_kind = "scores"\n'
        'inputs = [{ name = "input", dtype = "float32", shape = [-1, 4] }]\n'
    )
    cat = Catalog.load(tmp_path / "catalog.toml")
    from cascadeq.workers import ModelLoadError, OnnxRunner
    from cascadeq.workers.sessions import Sessions

    # The warm-up batch at max_batch finds it before it serves ...
    with pytest.raises(ModelLoadError, match=r"model bad version 1: output: a batch of 32 gave"):
        ModelWorker(r, cat, cat.models["bad"], settings, "w1")
    # ... and were it served unwarmed, its requests fail, not the worker.
    sessions = Sessions()
    sessions.adopt(OnnxRunner(cat.models["bad"], warm=False))
    worker = ModelWorker(r, cat, cat.models["bad"], settings, "w1", sessions=sessions)
    keys = worker.keys
    one = np.ones((1, 4), np.float32)
    enqueue(r, keys, "bad", "single", one, model="bad")  # one row in, one out: fine
    enqueue(r, keys, "bad", "double", np.ones((2, 4), np.float32), model="bad")
    drain(worker)
    assert result(r, keys, "single").ok
    broken = result(r, keys, "double")
    assert broken.status == "error"
    assert broken.error is not None
    assert broken.error["code"] == "compute_failed"
    assert "returned shape (1, 4) for 2 samples" in broken.error["message"]


def test_workers_trim_what_they_acknowledged(
    r: redis.Redis, settings: Settings, catalog: Catalog, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = digits
    cat = with_threshold(catalog, 0.0)
    worker = ModelWorker(r, cat, cat.models["digits-small"], settings, "w1")
    keys = worker.keys
    for i in range(10):
        enqueue(r, keys, "digits-small", f"t{i}", x[:1], task="digits")
    drain(worker)
    worker.trim_clock.next = 0.0
    worker.step(block_ms=None)
    assert r.xlen(keys.model_stream("digits-small")) == 0
