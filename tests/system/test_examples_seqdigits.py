"""The variable-length example: tokens, ONNX contract, padding invariance, reproducibility."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from sklearn.datasets import load_digits

from cascadeq.config.catalog import Catalog
from cascadeq.examples import seqdigits as seq


def test_all_outputs_exist_and_the_catalog_loads(seq_dir: Path) -> None:
    assert seq.is_built(seq_dir)
    assert not seq.is_built(seq_dir / "missing")
    cat = Catalog.load(seq_dir / seq.CATALOG_FILE)
    spec = cat.models[seq.MODEL_NAME]
    assert spec.inputs[0].name == "tokens"
    assert spec.inputs[0].shape == (-1, -1)
    assert spec.inputs[0].dtype == np.int64


def test_tokens_encode_pixel_and_intensity_and_lengths_vary() -> None:
    images = np.zeros((2, 64), dtype=np.int64)
    images[0, [0, 5]] = [16, 3]
    images[1, 63] = 1
    first, second = seq.to_tokens(images)
    assert first.tolist() == [1 + 16, 1 + 17 * 5 + 3]
    assert second.tolist() == [1 + 17 * 63 + 1]
    padded = seq.pad([first, second])
    assert padded.tolist() == [[17, 89], [1073, seq.PAD]]
    lengths = [len(s) for s in seq.to_tokens(np.asarray(load_digits().data, np.int64))]
    assert min(lengths) < 20 < 40 < max(lengths)  # really variable


def test_onnx_contract_has_free_batch_and_length(seq_dir: Path) -> None:
    sess = ort.InferenceSession(str(seq_dir / seq.MODEL_FILE), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert (inp.name, inp.type) == ("tokens", "tensor(int64)")
    assert all(isinstance(d, str) for d in inp.shape)  # both axes free
    (out,) = sess.get_outputs()
    assert out.name == "probabilities"
    assert out.shape[1] == seq.N_CLASSES


def test_onnx_matches_numpy_and_padding_changes_nothing(seq_dir: Path) -> None:
    val = seq.load_split(seq_dir / seq.VAL_FILE)
    path = seq_dir / seq.MODEL_FILE
    batched = seq.onnx_probabilities(path, val.tokens)
    assert np.allclose(batched.sum(axis=1), 1.0, atol=1e-5)
    one_by_one = np.concatenate([seq.onnx_probabilities(path, t) for t in seq.unpad(val)[:50]])
    assert np.allclose(batched[:50], one_by_one, atol=1e-6)
    assert np.array_equal(batched[:50].argmax(axis=1), one_by_one.argmax(axis=1))
    wider = np.pad(val.tokens[:50], ((0, 0), (0, 30)), constant_values=seq.PAD)
    assert np.allclose(seq.onnx_probabilities(path, wider), one_by_one, atol=1e-6)


def test_out_of_vocabulary_ids_count_as_padding(seq_dir: Path) -> None:
    val = seq.load_split(seq_dir / seq.VAL_FILE)
    path = seq_dir / seq.MODEL_FILE
    clean = val.tokens[:5]
    noisy = np.concatenate([clean, np.full((5, 3), -7), np.full((5, 2), seq.VOCAB + 4)], axis=1)
    assert np.allclose(seq.onnx_probabilities(path, noisy), seq.onnx_probabilities(path, clean))


def test_held_out_accuracy(seq_dir: Path) -> None:
    test = seq.load_split(seq_dir / seq.TEST_FILE)
    assert len(test.y) == 360
    assert seq.accuracy(seq_dir / seq.MODEL_FILE, test) > 0.93


def test_same_seed_gives_a_byte_identical_model(seq_dir: Path, tmp_path: Path) -> None:
    report = seq.build(tmp_path, log=lambda _line: None)
    assert (tmp_path / seq.MODEL_FILE).read_bytes() == (seq_dir / seq.MODEL_FILE).read_bytes()
    assert report.test_accuracy == seq.accuracy(
        seq_dir / seq.MODEL_FILE, seq.load_split(seq_dir / seq.TEST_FILE)
    )
