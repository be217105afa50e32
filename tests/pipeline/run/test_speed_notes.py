"""The run summary explains a row where int8 is not faster than fp32 (issue 12, section 3)."""

from __future__ import annotations

import json

import onnx
from onnx import TensorProto, helper

from qbnn.pipeline.run import speed_notes


def _bench(root, fp32: float, int8: float) -> None:
    (root / "bench").mkdir()
    cells = [
        {"model": "fp32", "batch": 32, "num_samples": 16, "images_per_s": fp32},
        {"model": "int8", "batch": 32, "num_samples": 16, "images_per_s": int8},
        {"model": "int8", "batch": 1, "num_samples": 16, "images_per_s": int8 / 2},
    ]
    (root / "bench" / "bench.json").write_text(json.dumps({"cells": cells}))


def _model(path, sampling: str) -> None:
    g = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    m = helper.make_model(g)
    m.metadata_props.add(key="qbnn.sampling", value=sampling)
    onnx.save(m, str(path))


def test_int8_slower_lrt_row_is_explained(tmp_path):
    _bench(tmp_path, fp32=2264.0, int8=1173.0)
    _model(tmp_path / "model.int8.onnx", "lrt")
    (note,) = speed_notes(tmp_path)
    assert note.startswith("int8 ran slower than fp32 here (1,173 vs 2,264 images/s")
    assert "one normal per activation" in note


def test_other_modes_get_the_cpu_reason_and_faster_int8_no_note(tmp_path):
    _bench(tmp_path, fp32=100.0, int8=90.0)
    _model(tmp_path / "model.int8.onnx", "frozen:8")
    (note,) = speed_notes(tmp_path)
    assert "VNNI" in note and "conv_weights.md" in note
    (tmp_path / "bench" / "bench.json").unlink()
    (tmp_path / "bench").rmdir()
    _bench(tmp_path, fp32=100.0, int8=150.0)
    assert speed_notes(tmp_path) == []


def test_no_bench_no_note(tmp_path):
    assert speed_notes(tmp_path) == []


def _manifest(root, speed: dict) -> None:
    stages = {"quantize": {"status": "done", "speed": speed}}
    (root / "manifest.json").write_text(json.dumps({"stages": stages}))


def test_quantize_stage_measurement_comes_first_when_int8_was_slower(tmp_path):
    """Issue 21, item 5: the quantize stage's measured line (manifest ``quantize.speed``) is
    said when int8 ran slower there, before the benchmark's explanation; not when faster."""
    line = "int8 is slower than fp32 on this CPU for this graph (12.3 ms vs 9.8 ms per call, ...)"
    _manifest(tmp_path, {"int8_slower": True, "message": line})
    assert speed_notes(tmp_path) == [line]
    _bench(tmp_path, fp32=100.0, int8=90.0)
    _model(tmp_path / "model.int8.onnx", "frozen:8")
    notes = speed_notes(tmp_path)
    assert notes[0] == line and notes[1].startswith("int8 ran slower than fp32 here")
    _manifest(tmp_path, {"int8_slower": False, "message": "int8 runs 1.20x as fast ..."})
    assert len(speed_notes(tmp_path)) == 1  # only the benchmark's


def test_note_and_table_show_the_same_figures(tmp_path):
    """Issue 24, item 4: the demo's table said fp32 891 / int8 633 images/s while the note
    under it said "15,619 vs 22,870 images/s at their best benchmarked batch and S" (another
    cell). Both now show the table's cell: the largest batch, each model's largest S there."""
    from qbnn.pipeline.run import summary_rows

    (tmp_path / "bench").mkdir()
    cells = [
        {"model": m, "batch": b, "num_samples": s, "images_per_s": v}
        for m, grid in {
            "fp32": {(1, 1): 22870.0, (32, 1): 20000.0, (32, 64): 891.0},
            "int8": {(1, 1): 15619.0, (32, 1): 14000.0, (32, 64): 633.0},
        }.items()
        for (b, s), v in grid.items()
    ]
    (tmp_path / "bench" / "bench.json").write_text(json.dumps({"cells": cells}))
    for name in ("fp32", "int8"):
        _model(tmp_path / f"model.{name}.onnx", "frozen:8")
    table = {r["model"]: r["images_per_s"] for r in summary_rows(tmp_path)}
    assert table == {"fp32": "891 (B=32, S=64)", "int8": "633 (B=32, S=64)"}
    (note,) = speed_notes(tmp_path)
    assert note.startswith(
        "int8 ran slower than fp32 here (633 vs 891 images/s at B=32, S=64, the table's images/s)"
    )
    assert "22,870" not in note and "15,619" not in note
