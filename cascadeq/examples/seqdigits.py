"""Reproducible builder of a variable-length example: digits as bags of pixel tokens.

Each 8x8 digits image becomes the sequence of its non-zero pixels, one token per pixel,
``1 + 17 * pixel_index + intensity`` (intensity 1-16), so sequence lengths vary per image
(about 16 to 42). Token 0 is reserved for padding. The ONNX graph is an embedding bag:
Gather(embedding, tokens) -> masked mean over the length axis -> Gemm -> Softmax. The
mean divides by the number of real tokens, so a padded batch gives the same answer as
each request run alone: the property the workers' padding and bucketing rely on.

The embedding is a fixed feature map (each token contributes its pixel's intensity and
presence); the classifier on the mean embedding is a seeded LogisticRegression. Split,
training and export are deterministic, so the ONNX file is byte-identical across builds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from cascadeq.examples.common import measure_cost, session, write_atomically

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

PAD = 0
N_PIXELS = 64
LEVELS = 17  # intensities 0-16; 0 never becomes a token
VOCAB = 1 + LEVELS * N_PIXELS
EMBED_DIM = 2 * N_PIXELS
N_CLASSES = 10
C = 1000.0  # weak regularisation: the mean divides features by ~30, so C must be large
MODEL_NAME = "seq-digits"
MODEL_FILE = "seq_digits.onnx"
VAL_FILE = "seq_val.npz"
TEST_FILE = "seq_test.npz"
CATALOG_FILE = "catalog.toml"
SUBDIR = "seq"  # `cascadeq models build --out DIR` writes this example to DIR/seq
OUTPUT_FILES = (MODEL_FILE, VAL_FILE, TEST_FILE, CATALOG_FILE)
OPSET = 17
# Lengths run from 16 to 42 (median 33): three boundaries keep padding per bucket small.
BUCKETS = (24, 30, 36)
PROBA_ATOL = 1e-5


@dataclass(frozen=True)
class BuildReport:
    """What a build produced and how well the model did on held-out data."""

    catalog_path: Path
    val_accuracy: float
    test_accuracy: float
    cost_us: float
    seconds: float


@dataclass(frozen=True)
class Split:
    """Sequences padded with PAD to the longest in the split; lengths say where each ends."""

    tokens: I64
    lengths: I64
    y: I64


def to_tokens(images: I64) -> list[I64]:
    """One sequence per image: its non-zero pixels in raster order."""
    out = []
    for row in images:
        pixels = np.flatnonzero(row)
        out.append((1 + LEVELS * pixels + row[pixels]).astype(np.int64))
    return out


def pad(seqs: list[I64], width: int | None = None) -> I64:
    """Stack sequences into [n, width] with PAD after each sequence's end."""
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    width = int(lengths.max()) if width is None else width
    out = np.full((len(seqs), width), PAD, dtype=np.int64)
    mask = np.arange(width) < lengths[:, None]
    out[mask] = np.concatenate(seqs)
    return out


def unpad(split: Split) -> list[I64]:
    """The sequences again, each at its own length, shaped [1, length] as a request."""
    return [split.tokens[i : i + 1, : split.lengths[i]] for i in range(len(split.y))]


def load_splits(seed: int = 0) -> tuple[Split, Split, Split]:
    """Stratified 60/20/20 train/val/test split, the same proportions as the digits example."""
    data = load_digits()
    images = np.asarray(data.data).astype(np.int64)
    y = np.asarray(data.target).astype(np.int64)
    index = np.arange(len(y))
    train, rest = train_test_split(index, test_size=0.4, stratify=y, random_state=seed)
    val, test = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=seed)
    return tuple(_split(images[i], y[i]) for i in (train, val, test))  # type: ignore[return-value]


def _split(images: I64, y: I64) -> Split:
    seqs = to_tokens(images)
    return Split(pad(seqs), np.array([len(s) for s in seqs], dtype=np.int64), y)


def embedding_table() -> F32:
    """Row t: the intensity/16 and presence of token t's pixel; row PAD is all zeros."""
    table = np.zeros((VOCAB, EMBED_DIM), dtype=np.float32)
    tokens = np.arange(1, VOCAB)
    pixel, level = (tokens - 1) // LEVELS, (tokens - 1) % LEVELS
    table[tokens, pixel] = level / 16.0
    table[tokens, N_PIXELS + pixel] = 1.0
    return table


def mean_embedding(table: F32, tokens: I64) -> F32:
    """Masked mean over the length axis; ids outside 1..VOCAB-1 count as padding."""
    mask = (tokens > PAD) & (tokens < len(table))
    safe = np.where(mask, tokens, PAD)
    summed = (table[safe] * mask[..., None]).sum(axis=1)
    count = np.maximum(mask.sum(axis=1, keepdims=True), 1).astype(np.float32)
    return np.asarray(summed / count, dtype=np.float32)


def reference_probabilities(table: F32, weights: F32, bias: F32, tokens: I64) -> F32:
    """The numpy twin of the ONNX graph, used to verify the export."""
    logits = mean_embedding(table, tokens) @ weights.T + bias
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=1, keepdims=True), dtype=np.float32)


def train(table: F32, split: Split, seed: int = 0) -> tuple[F32, F32]:
    """lbfgs is deterministic, so weights are reproducible bit for bit."""
    model = LogisticRegression(C=C, max_iter=10_000, random_state=seed)
    model.fit(mean_embedding(table, split.tokens), split.y)
    return model.coef_.astype(np.float32), model.intercept_.astype(np.float32)


def graph(table: F32, weights: F32, bias: F32) -> onnx.ModelProto:
    """tokens int64 [batch, length] -> probabilities float [batch, classes]."""
    node = helper.make_node
    nodes = [
        node("Greater", ["tokens", "pad_id"], ["above_pad"]),
        node("Less", ["tokens", "vocab"], ["in_vocab"]),
        node("And", ["above_pad", "in_vocab"], ["real"]),
        node("Where", ["real", "tokens", "pad_id"], ["safe"]),
        node("Cast", ["real"], ["mask"], to=TensorProto.FLOAT),
        node("Gather", ["embedding", "safe"], ["embedded"], axis=0),
        node("Unsqueeze", ["mask", "axis2"], ["mask3"]),
        node("Mul", ["embedded", "mask3"], ["masked"]),
        node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
        node("ReduceSum", ["mask", "axis1"], ["count"], keepdims=1),
        node("Max", ["count", "one"], ["divisor"]),
        node("Div", ["summed", "divisor"], ["mean"]),
        node("Gemm", ["mean", "weights", "bias"], ["logits"], transB=1),
        node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    inits = [
        numpy_helper.from_array(table, "embedding"),
        numpy_helper.from_array(weights, "weights"),
        numpy_helper.from_array(bias, "bias"),
        numpy_helper.from_array(np.array(PAD, dtype=np.int64), "pad_id"),
        numpy_helper.from_array(np.array(VOCAB, dtype=np.int64), "vocab"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
    ]
    g = helper.make_graph(
        nodes,
        "seq_digits",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "length"])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", N_CLASSES])],
        inits,
    )
    model = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="cascadeq"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def onnx_probabilities(path: Path, tokens: I64) -> F32:
    """Class probabilities exactly as the workers will see them."""
    return np.asarray(session(path).run(["probabilities"], {"tokens": tokens})[0], np.float32)


def export(path: Path, table: F32, weights: F32, bias: F32, check: Split) -> None:
    """Write the graph and refuse to ship it if it disagrees with the numpy reference."""
    path.write_bytes(graph(table, weights, bias).SerializeToString())
    got = onnx_probabilities(path, check.tokens)
    want = reference_probabilities(table, weights, bias, check.tokens)
    if not np.allclose(got, want, atol=PROBA_ATOL):
        worst = float(np.abs(got - want).max())
        raise RuntimeError(f"{path.name} disagrees with numpy (max abs diff {worst:.2e})")


def accuracy(path: Path, split: Split) -> float:
    """Top-1 accuracy of the ONNX model on a split."""
    return float(np.mean(onnx_probabilities(path, split.tokens).argmax(axis=1) == split.y))


def catalog_toml(seed: int, cost: float, test_accuracy: float) -> str:
    """One model pinned by name; its only input has a free length axis."""
    return (
        f"# cascadeq catalog: built by `cascadeq models build` (seed {seed}); held-out test "
        f"accuracy {test_accuracy:.4f}.\n"
        f'[models.{MODEL_NAME}]\npath = "{MODEL_FILE}"\nversion = "1"\n'
        f'output = "probabilities"\noutput_kind = "probabilities"\ncost = {cost!r}\n'
        f"intra_op_threads = 1\n"
        f'inputs = [{{ name = "tokens", dtype = "int64", shape = [-1, -1] }}]\n\n'
        f'[models.{MODEL_NAME}.batching]\nmode = "dynamic"\nmax_batch = 64\nmax_wait_ms = 2.0\n'
        f"pad_value = {PAD}\nbucketing = {list(BUCKETS)}\n"
    )


def save_split(split: Split, path: Path) -> None:
    """Plain npz arrays (no pickled objects) so any consumer can load them safely."""
    np.savez(path, tokens=split.tokens, lengths=split.lengths, y=split.y)


def load_split(path: Path) -> Split:
    data = np.load(path)
    return Split(data["tokens"], data["lengths"], data["y"])


def build(out_dir: Path, *, seed: int = 0, log: Callable[[str], None] = print) -> BuildReport:
    """Split, train, export, verify against numpy, measure, then write the catalog."""
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    train_split, val, test = load_splits(seed)
    log(
        f"seq digits (seed {seed}): {len(train_split.y)} train / {len(val.y)} val / "
        f"{len(test.y)} test, lengths {int(train_split.lengths.min())}-"
        f"{int(train_split.lengths.max())}"
    )
    save_split(val, out_dir / VAL_FILE)
    save_split(test, out_dir / TEST_FILE)
    table = embedding_table()
    weights, bias = train(table, train_split, seed)
    path = out_dir / MODEL_FILE
    export(path, table, weights, bias, val)
    val_acc, test_acc = accuracy(path, val), accuracy(path, test)
    cost = measure_cost(path, "tokens", val.tokens)
    log(f"exported {MODEL_FILE}: val accuracy {val_acc:.4f}, test {test_acc:.4f}, {cost} us")
    catalog_path = out_dir / CATALOG_FILE
    write_atomically(catalog_path, catalog_toml(seed, cost, test_acc))
    log(f"wrote {catalog_path}")
    return BuildReport(catalog_path, val_acc, test_acc, cost, time.perf_counter() - started)


def is_built(out_dir: Path) -> bool:
    """All outputs present (the catalog is written last, so a crashed build reads as unbuilt)."""
    return all((out_dir / name).is_file() for name in OUTPUT_FILES)


def ensure_built(out_dir: Path, *, log: Callable[[str], None] = print) -> Path:
    """Build with the default seed unless a complete build is already there; return the catalog."""
    if not is_built(out_dir):
        build(out_dir, log=log)
    return out_dir / CATALOG_FILE
