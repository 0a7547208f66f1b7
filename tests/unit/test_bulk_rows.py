"""Bulk input and output files, row ids and the progress line: no Redis, no processes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cascadeq.bulk import rows as rowfile
from cascadeq.bulk.job import item_id
from cascadeq.bulk.view import line
from cascadeq.config.models import InputSpec
from cascadeq.protocol.keys import check_id
from cascadeq.protocol.messages import Result

SPECS = (InputSpec("input", np.dtype(np.float32), (-1, 4)),)


def test_item_ids_are_valid_stable_and_distinct_per_job_and_row() -> None:
    job = "ddd1d434-5466-4c57-b35f-e3261aadb144"
    ids = [item_id(job, i) for i in (0, 1, 10**9)]
    assert all(check_id(i) for i in ids)
    assert len(set(ids)) == 3
    assert item_id(job, 1) == ids[1]
    assert item_id("another-job", 1) != ids[1]


def test_an_npz_gives_one_request_per_row(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.savez(tmp_path / "in.npz", whatever=x)
    got = rowfile.read(tmp_path / "in.npz", SPECS)
    assert got.kind == rowfile.ARRAYS
    assert len(got) == 3
    assert got.errors == [None, None, None]
    assert all(r is not None and r["input"].shape == (1, 4) for r in got.inputs)
    assert np.array_equal(got.inputs[2]["input"][0], x[2])  # type: ignore[index]


def test_a_jsonl_line_that_cannot_be_read_keeps_its_reason(tmp_path: Path) -> None:
    lines = [json.dumps({"input": [1, 2, 3, 4]}), "{oops", json.dumps({"other": [1]}), "[1]"]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    got = rowfile.read(tmp_path / "in.jsonl", SPECS)
    assert got.inputs[0] is not None
    assert got.inputs[0]["input"].shape == (1, 4)
    assert got.inputs[1:] == [None, None, None]
    assert got.errors[0] is None
    assert str(got.errors[1]).startswith("line 2: ")
    assert "no input named 'input'" in str(got.errors[2])
    assert "JSON object" in str(got.errors[3])


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown input kind"):
        rowfile.kind_of("x.csv")
    assert rowfile.default_output("/d/in.npy") == "/d/in.out.npz"
    assert rowfile.default_output("/d/in.jsonl") == "/d/in.out.jsonl"


def _results() -> list[Result]:
    ok = Result(id="a", status="ok", model="m", outputs={"p": np.array([[0.25, 0.75]])})
    bad = Result(id="b", status="rejected", error={"code": "bad_input", "message": "NaN"})
    return [ok, bad]


def test_npz_output_has_outputs_and_status_columns_in_row_order(tmp_path: Path) -> None:
    rowfile.write(tmp_path / "o.npz", rowfile.ARRAYS, ["a", "b"], _results())
    with np.load(tmp_path / "o.npz", allow_pickle=False) as out:
        assert out["status"].tolist() == ["ok", "rejected"]
        assert out["id"].tolist() == ["a", "b"]
        assert out["error"].tolist() == ["", "bad_input: NaN"]
        assert out["p"][0].tolist() == [0.25, 0.75]
        assert np.isnan(out["p"][1]).all()


def test_jsonl_output_has_one_line_per_row(tmp_path: Path) -> None:
    rowfile.write(tmp_path / "o.jsonl", rowfile.JSONL, ["a", "b"], _results())
    out = [json.loads(s) for s in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert out[0] == {"row": 0, "id": "a", "status": "ok", "model": "m",
                      "outputs": {"p": [[0.25, 0.75]]}}  # fmt: skip
    assert out[1]["error"] == {"code": "bad_input", "message": "NaN"}


def test_the_progress_line_shows_done_total_rate_eta_errors() -> None:
    state = {"id": "j", "status": "started", "done": 250, "total": 1000, "errors": 2,
             "rate": 125.0, "eta_s": 6.0}  # fmt: skip
    assert line(state) == (
        "j started [#######.......................] 250/1000 25% 125 rows/s ETA 6s errors 2"
    )
    assert "0/? " in line({**state, "done": 0, "total": None, "eta_s": None})
