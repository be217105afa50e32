"""Mean-field graphs: mu is compressed, sigma (or sigma²) stays fp32 unless ``sigma_bits`` says
otherwise; BOPs count the LRT variance path at the bits it runs with, and in ``weight`` mode the
Scan-body ops that read the drawn weights (rounded at run time to ``weight_bits``)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from qbnn.exporters import export
from qbnn.pipeline.compress import Plan, deploy_plan

from compress_tiny import data, run
from tiny_models import bayes_cnn


@pytest.mark.parametrize("sampling", ["lrt", "weight"])
def test_mu_on_the_grid_sigma_kept(sampling, tmp_path):
    src = tmp_path / f"{sampling}.onnx"
    export(bayes_cnn(), torch.from_numpy(data(4)[0]), src, sampling=sampling, seed=0,
           verify=False)  # fmt: skip
    x = data(32, seed=2)[0]
    res = deploy_plan(src, tmp_path / "c.onnx", Plan.from_dict({"default": {"weight_bits": 4}}),
                      calib=x)  # fmt: skip
    m = onnx.load(res.path)
    types = {i.name: i.data_type for i in m.graph.initializer}
    mu = "net.conv.mu_w" if sampling == "lrt" else "source.mu__conv__weight"
    scale = "net.conv.var_w" if sampling == "lrt" else "source.sigma__conv__weight"
    assert types[f"{mu}__q"] == onnx.TensorProto.INT4 and types[scale] == onnx.TensorProto.FLOAT
    a = run(src, x, samples=64)["mean_probs"]
    b = run(res.path, x, samples=64)["mean_probs"]
    assert np.abs(a - b).max() < 0.2  # 4-bit means, same posterior scale; MC noise at S = 64
    if sampling == "weight":  # every drawn weight rounded to 4 bits, fp32 activations
        assert res.relative_bops == pytest.approx(4 * 32 / 1024)
        plan = Plan.from_dict({"default": {"weight_bits": 4, "act_bits": 8}})
        res8 = deploy_plan(src, tmp_path / "d.onnx", plan, calib=x)
        assert res8.relative_bops == pytest.approx(4 * 8 / 1024)
        assert {lay.route for lay in res8.layers} == {"drawn"}
        c = run(res8.path, x, samples=64)["mean_probs"]
        assert np.abs(a - c).max() < 0.2
    else:  # the variance path (fp32) counts at 32 x 32: BOPs between the mean path's and 1
        assert 4 * 32 / 1024 < res.relative_bops < 1
