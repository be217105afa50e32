"""Deploying plans: the b-bit model computes what the plan says (checked against torch),
pruned channels are really removed, 8-bit layers go through INC, refusals are clear."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch

from qbnn.pipeline.compress import COMPRESSION_KEY, Plan, deploy_plan
from qbnn.pipeline.compress.lowbit import activation_grid, weight_grid
from qbnn.runtimes.errors import ConfigError

from compress_tiny import data, run

PLAN = {
    "layers": {
        "conv1": {"weight_bits": 4, "act_bits": 8, "prune_channels": [1]},
        "conv2": {"weight_bits": 2, "act_bits": 8, "prune_channels": [0]},
        "fc1": {"weight_bits": 8, "weight_range": [-0.5, 0.5], "prune_channels": [2, 5]},
        "fc2": {"weight_bits": 16},
    }
}


def _fake_quant(x: torch.Tensor, lo: float, hi: float, bits: int) -> torch.Tensor:
    s, zp, clo, chi = activation_grid(lo, hi, bits)
    s = torch.tensor(s, dtype=torch.float32)
    q = torch.clamp(torch.round(torch.clamp(x, clo, chi) / s) + zp, 0, 2**bits - 1)
    return (q - zp) * s


def _torch_reference(member, plan: Plan, calib: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The plan applied to a torch member: pruned channels zeroed, weights on their grid,
    activations fake-quantized on the calibration min/max of the pruned model."""
    m = copy.deepcopy(member)
    layers = {"conv1": m.conv1, "conv2": m.conv2, "fc1": m.fc1, "fc2": m.fc2}
    with torch.no_grad():
        for name, mod in layers.items():
            ch = list(plan.layer(name).prune_channels)
            mod.weight[ch] = 0
            mod.bias[ch] = 0
        # removed channels leave the consumer too, so its per-channel grid never sees them
        m.conv2.weight[:, list(plan.layer("conv1").prune_channels)] = 0
        m.fc2.weight[:, list(plan.layer("fc1").prune_channels)] = 0
        for c in plan.layer("conv2").prune_channels:  # flattened: 4 columns per channel
            m.fc1.weight[:, 4 * c : 4 * c + 4] = 0
    ranges: dict[str, tuple[float, float]] = {}
    hooks = [
        mod.register_forward_pre_hook(
            lambda _m, a, n=name: ranges.__setitem__(n, (a[0].min().item(), a[0].max().item()))
        )
        for name, mod in layers.items()
    ]
    with torch.no_grad():
        m(torch.from_numpy(calib))
    for h in hooks:
        h.remove()
    with torch.no_grad():
        for name, mod in layers.items():
            lp = plan.layer(name)
            if lp.weight_bits < 32:
                codes, s = weight_grid(mod.weight.numpy(), lp.weight_bits, 0, lp.weight_range)
                shape = (-1,) + (1,) * (mod.weight.ndim - 1) if s.ndim else ()
                mod.weight.copy_(torch.from_numpy((codes * s.reshape(shape)).astype(np.float32)))
            if lp.act_bits < 32:
                lo, hi = ranges[name]
                mod.register_forward_pre_hook(
                    lambda _m, a, lo=lo, hi=hi, b=lp.act_bits: (_fake_quant(a[0], lo, hi, b),)
                )
        return torch.softmax(m(torch.from_numpy(x)), -1).numpy()


@pytest.fixture(scope="module")
def deployed(ensemble_model, tmp_path_factory):
    src, _ = ensemble_model
    dst = tmp_path_factory.mktemp("deploy") / "mixed.onnx"
    calib = data(64, seed=3)[0]
    return deploy_plan(src, dst, Plan.from_dict(PLAN), calib=calib, num_samples=2), calib


def test_mixed_plan_computes_what_the_plan_says(ensemble_model, deployed):
    _, members = ensemble_model
    res, calib = deployed
    x = data(32, seed=11)[0]
    probs = run(res.path, x, samples=2, optimize=False)["probs"]
    optimized = run(res.path, x, samples=2)["probs"]
    for k, member in enumerate(members):
        ref = _torch_reference(member, res.plan, calib, x)
        np.testing.assert_allclose(probs[k], ref, atol=2e-5)
        # ONNX Runtime's graph optimizations round the fp32 bias of a Conv whose input and
        # weight are dequantized to int32 at scale s_a * s_w (integer-kernel semantics): a
        # small, bounded change the README states
        assert np.abs(optimized[k] - ref).max() < 0.02


def test_pruned_channels_are_removed_where_the_structure_allows(ensemble_model, deployed):
    res, _ = deployed
    m = onnx.load(res.path)
    shapes = {i.name: list(i.dims) for i in m.graph.initializer}
    rep = {lay.name: lay for lay in res.layers}
    assert rep["conv1"].prune_mode == "removed"  # conv1 -> relu -> maxpool -> conv2
    assert shapes["members.0.conv1.bias"] == [3]
    assert shapes["members.1.conv2.weight__q"] == [5, 3, 3, 3]  # input channels follow
    assert rep["fc1"].prune_mode == "removed"  # fc1 -> relu -> fc2
    assert shapes["members.0.fc1.weight__q"] == [6, 20]  # 4 columns per conv2 channel
    assert shapes["members.0.fc2.weight__q"] == [3, 6]
    assert rep["conv2"].prune_mode == "removed"  # through relu, maxpool and the flatten
    assert shapes["members.0.conv2.bias"] == [5]
    reshapes = [n for n in m.graph.node if n.op_type == "Reshape" and "qbnn_pruned" in n.input[1]]
    assert len(reshapes) == 2 and all(
        onnx.numpy_helper.to_array(
            next(i for i in m.graph.initializer if i.name == r.input[1])
        ).tolist()[1]
        == 20
        for r in reshapes
    )
    assert rep["conv1"].pruned_fraction == pytest.approx(0.25)


def test_storage_bits_opset_and_metadata(deployed):
    res, _ = deployed
    m = onnx.load(res.path)
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) == 21
    types = {i.name: i.data_type for i in m.graph.initializer}
    assert types["members.0.conv1.weight__q"] == onnx.TensorProto.INT4
    assert types["members.0.conv2.weight__q"] == onnx.TensorProto.INT4  # 2-bit in 4 bits
    assert types["members.0.fc2.weight__q"] == onnx.TensorProto.INT16
    rep = {lay.name: lay for lay in res.layers}
    assert rep["conv2"].unique <= 3 and rep["conv1"].unique <= 15
    meta = {p.key: p.value for p in m.metadata_props}
    assert '"weight_bits":2' in meta[COMPRESSION_KEY]
    assert meta["qbnn.precision"] == "int8"
    params = 2 * (4 * 9 + 6 * 4 * 9 + 8 * 24 + 3 * 8)  # two members' fp32 weights
    assert sum(lay.bytes for lay in res.layers) < 0.3 * 4 * params
    assert res.size_bytes < res.fp32_bytes  # (graph overhead dominates this tiny file)


def test_relative_bops_counts_pruned_macs(deployed):
    res, _ = deployed
    share = {lay.name: lay.macs_share for lay in res.layers}
    # conv1 keeps 3/4 of its output channels, conv2 3/4 of its inputs (removed), the rest dense
    expected = sum(
        share[n] * w * a for n, (w, a) in
        {"conv1": (4, 8), "conv2": (2, 8), "fc1": (8, 32), "fc2": (16, 32)}.items()
    ) / 1024  # fmt: skip
    assert res.relative_bops == pytest.approx(expected, rel=1e-9)
    assert res.relative_bops < 0.1


def test_w8a8_layers_go_through_inc(ensemble_model, tmp_path):
    src, _ = ensemble_model
    plan = Plan.from_dict({"default": {"weight_bits": 8, "act_bits": 8}})
    x = data(64, seed=3)[0]
    res = deploy_plan(src, tmp_path / "int8.onnx", plan, calib=x, num_samples=2)
    ops = {n.op_type for n in onnx.load(res.path).graph.node}
    assert "QLinearConv" in ops
    routes = {lay.name: lay.route for lay in res.layers}
    assert set(routes.values()) <= {"inc", "kept_fp32"} and "inc" in routes.values()
    quantized = sum(lay.macs_share for lay in res.layers if lay.route == "inc")
    assert res.relative_bops == pytest.approx(quantized / 16 + (1 - quantized), rel=1e-6)
    a = run(src, data(100, seed=5)[0], samples=2)["mean_probs"].argmax(1)
    b = run(res.path, data(100, seed=5)[0], samples=2)["mean_probs"].argmax(1)
    assert (a == b).mean() >= 0.9


def test_bad_plans_are_refused(ensemble_model, tmp_path):
    src, _ = ensemble_model
    x = data(8)[0]
    cases = [
        ({"layers": {"conv9": {"weight_bits": 4}}}, "layers.conv9: no such layer"),
        ({"layers": {"conv1": {"prune_channels": [7]}}}, r"layers.conv1.prune_channels: \[7\] out"),
        ({"layers": {"conv1": {"prune_channels": [0, 1, 2, 3]}}}, "all 4 channels pruned"),
    ]
    for plan, msg in cases:
        with pytest.raises(ConfigError, match=msg):
            deploy_plan(src, tmp_path / "x.onnx", Plan.from_dict(plan), calib=x)
        assert not (tmp_path / "x.onnx").exists()


def test_factor_posteriors_are_refused(ensemble_model, tmp_path):
    src, _ = ensemble_model
    m = onnx.load(src)
    for p in m.metadata_props:
        if p.key == "qbnn.posterior":
            p.value = "laplace"
    onnx.save(m, tmp_path / "lap.onnx")
    with pytest.raises(ConfigError, match="does not support the 'laplace' posterior"):
        deploy_plan(tmp_path / "lap.onnx", tmp_path / "x.onnx", Plan(), calib=data(8)[0])


def test_variance_matching_shrinks_draws_before_rounding(ensemble_model, tmp_path):
    from qbnn.pipeline.compress.layers import find_layers

    src, _ = ensemble_model
    x = data(16, seed=3)[0]
    spread = {}
    for m in (0.0, 1.0):
        plan = Plan.from_dict({"layers": {"conv2": {"weight_bits": 2, "match_variance": m}}})
        res = deploy_plan(src, tmp_path / f"v{m}.onnx", plan, calib=x, num_samples=2)
        model = onnx.load(res.path)
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
        names = find_layers(onnx.load(src))["conv2"].weights
        codes = np.stack([inits[f"{n}__q"].astype(np.int64) for n in names])
        spread[m] = (codes[0] != codes[1]).mean()  # draws rounded to different codes
    assert spread[1.0] < spread[0.0]
    with pytest.raises(ConfigError, match="match_variance: 2 is not a number in"):
        Plan.from_dict({"layers": {"conv2": {"match_variance": 2}}})
