"""The optional ``compress`` stage of ``qbnn run``: runs only when listed, records the plan."""

from __future__ import annotations

import json

import pytest

from qbnn.pipeline.common import from_dict
from qbnn.pipeline.run import run
from qbnn.pipeline.run.config import DEFAULT_STAGES, RunConfig
from qbnn.runtimes.errors import ConfigError


def test_compress_stage_writes_the_model_and_records_the_plan(ensemble_model, arrays, tmp_path):
    src, _ = ensemble_model
    (tmp_path / "plan.yaml").write_text("layers:\n  conv2: {weight_bits: 4, act_bits: 8}\n")
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(
        f"name: c\noutput_root: {tmp_path / 'out'}\nmodel: {{onnx: {src}}}\n"
        f"data: {{calib: {arrays['calib']}, test: {arrays['test']}}}\n"
        "stages: [export, compress]\n"
        "compress: {mode: plan, plan: plan.yaml}\n"
        "validate: {num_samples: 2, bootstrap: 0, mc_repeats: 0, provider: cpu}\n"
    )
    res = run(cfg)
    assert res.ran == ("export", "compress")
    root = tmp_path / "out" / "c"
    assert (root / "model.compressed.onnx").is_file()
    manifest = json.loads(res.manifest.read_text())
    stage = manifest["stages"]["compress"]
    assert stage["plan"]["layers"]["conv2"] == {"weight_bits": 4, "act_bits": 8}
    assert 0 < stage["relative_bops"] < 1 and stage["gates_passed"] in (True, False)
    paths = {a["path"] for a in manifest["artifacts"] if a["stage"] == "compress"}
    assert {"model.compressed.onnx", "compress/compress.json", "compress/plan.yaml"} <= paths


def test_compress_is_not_a_default_stage_and_checks_its_data():
    assert "compress" not in DEFAULT_STAGES
    with pytest.raises(ConfigError, match="stage 'compress' needs 'data.test'"):
        from_dict(RunConfig, {"name": "x", "model": {"onnx": "m.onnx"}, "stages": ["compress"],
                              "data": {"calib": "c.npz"}})  # fmt: skip
