"""Reading a bulk job's input file into per-row requests, and writing its output file.

Arrays (``.npy``/``.npz``): one row per item. JSON Lines: one request per line, a mapping
of input name to nested lists (or ``{"inputs": {...}}``). A row that cannot become a
request keeps its reason instead, so it fails alone and the rest still run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cascadeq.config.models import InputSpec
from cascadeq.protocol.messages import Result

ARRAYS, JSONL = "npz", "jsonl"


@dataclass
class Rows:
    """Each row's inputs, or None and the reason it could not be read."""

    kind: str
    inputs: list[dict[str, np.ndarray] | None] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.inputs)


def kind_of(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in {".npy", ".npz"}:
        return ARRAYS
    if suffix in {".jsonl", ".ndjson", ".json"}:
        return JSONL
    raise ValueError(f"{path}: unknown input kind {suffix!r}; use .npy, .npz or .jsonl")


def default_output(path: str | Path) -> str:
    p = Path(path)
    return str(p.with_name(f"{p.stem}.out.{kind_of(p)}"))


def read(path: str | Path, specs: tuple[InputSpec, ...]) -> Rows:
    if kind_of(path) == ARRAYS:
        return _read_arrays(Path(path), specs)
    return _read_jsonl(Path(path), specs)


def _read_arrays(path: Path, specs: tuple[InputSpec, ...]) -> Rows:
    if path.suffix.lower() == ".npy":
        columns = {specs[0].name: np.load(path, allow_pickle=False)}
    else:
        with np.load(path, allow_pickle=False) as npz:
            found = {k: npz[k] for k in npz.files}
        if len(found) == 1:
            columns = {specs[0].name: next(iter(found.values()))}
        else:
            missing = [s.name for s in specs if s.name not in found]
            if missing:
                raise ValueError(f"{path}: no array named {missing} (has {sorted(found)})")
            columns = {s.name: found[s.name] for s in specs}
    counts = {len(a) for a in columns.values()}
    if len(counts) != 1:
        raise ValueError(f"{path}: the input arrays differ in row count {sorted(counts)}")
    n = counts.pop()
    rows = Rows(ARRAYS)
    for i in range(n):
        rows.inputs.append({k: np.ascontiguousarray(a[i : i + 1]) for k, a in columns.items()})
        rows.errors.append(None)
    return rows


def _read_jsonl(path: Path, specs: tuple[InputSpec, ...]) -> Rows:
    rows = Rows(JSONL)
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.inputs.append(_jsonl_row(line, specs))
                rows.errors.append(None)
            except (ValueError, TypeError) as exc:
                rows.inputs.append(None)
                rows.errors.append(f"line {number}: {exc}")
    return rows


def _jsonl_row(line: str, specs: tuple[InputSpec, ...]) -> dict[str, np.ndarray]:
    doc = json.loads(line)
    if isinstance(doc, dict) and isinstance(doc.get("inputs"), dict):
        doc = doc["inputs"]
    if not isinstance(doc, dict):
        raise ValueError("a line must be a JSON object of input name to lists")
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name not in doc:
            raise ValueError(f"no input named {spec.name!r} (has {sorted(doc)})")
        arr = np.asarray(doc[spec.name], dtype=spec.dtype)
        if arr.ndim == len(spec.shape) - 1:  # one sample: give it the batch dimension
            arr = arr[None]
        out[spec.name] = np.ascontiguousarray(arr)
    return out


def write(path: str | Path, kind: str, ids: list[str], results: list[Result]) -> None:
    """Write to a temporary name, then rename: a reader never sees half a file."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    if kind == JSONL:
        with tmp.open("w", encoding="utf-8") as f:
            for row, (rid, res) in enumerate(zip(ids, results, strict=True)):
                f.write(json.dumps(_jsonl_out(row, rid, res)) + "\n")
    else:
        with tmp.open("wb") as f:
            np.savez(f, **_arrays_out(ids, results))  # type: ignore[arg-type]
    os.replace(tmp, target)


def _jsonl_out(row: int, rid: str, res: Result) -> dict[str, Any]:
    out: dict[str, Any] = {"row": row, "id": rid, "status": res.status}
    if res.ok:
        out["model"] = res.model
        out["outputs"] = {k: np.asarray(v).tolist() for k, v in res.outputs.items()}
    else:
        out["error"] = res.error or {}
    return out


def _arrays_out(ids: list[str], results: list[Result]) -> dict[str, np.ndarray]:
    """One array per output (NaN where a row failed) beside status/error/model columns."""
    n = len(results)
    template = next((r for r in results if r.ok), None)
    columns: dict[str, np.ndarray] = {}
    if template is not None:
        for name, value in template.outputs.items():
            v = np.asarray(value)[0]
            filled = np.issubdtype(v.dtype, np.floating)
            col = np.full((n, *v.shape), np.nan if filled else 0, dtype=v.dtype)
            for i, r in enumerate(results):
                if r.ok:
                    col[i] = np.asarray(r.outputs[name])[0]
            columns[name] = col
    columns["id"] = np.array(ids, dtype=str)
    columns["status"] = np.array([r.status for r in results], dtype=str)
    columns["model"] = np.array([r.model or "" for r in results], dtype=str)
    columns["error"] = np.array([_reason(r) for r in results], dtype=str)
    return columns


def _reason(res: Result) -> str:
    if res.ok or not res.error:
        return ""
    return f"{res.error.get('code', '?')}: {res.error.get('message', '')}"
