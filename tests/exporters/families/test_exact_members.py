"""Exact posteriors weight their members uniformly whatever S is (issue 14, item 4).

Ensembles, SG-MCMC weight samples and ``frozen:K`` draws: ``mean_probs``, entropy and MI are
the ensemble's (uniform over the K members) for every ``num_samples``; ``probs`` keeps S rows,
row ``s`` being member ``s mod K``. Reference values are exact averages of the members' own
torch outputs (float64), atol 1e-5.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from qbnn.exporters import export_model
from qbnn.exporters.families.ensemble import WeightSamples
from qbnn.exporters.families.gaussian import WeightGaussian
from qbnn.exporters.modules.loopmodel import UNROLL_MAX
from qbnn.exporters.modules.vector import DiagTerm, VectorGaussian

from tiny_models import BayesMLP, example, ort_session

NAMES = ["probs", "mean_probs", "predictive_entropy", "expected_entropy", "mutual_information"]


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3)).eval()


def _run(path, x, s, names=NAMES):
    feed = {"input": x.numpy(), "num_samples": np.array(s, dtype=np.int64)}
    outs = ort_session(path).run(names, feed)
    return {k: v.astype(np.float64) for k, v in zip(names, outs, strict=True)}


def _h(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(p)).sum(-1)


def _ensemble_truth(member_probs: np.ndarray) -> dict[str, np.ndarray]:
    """The ensemble's predictive from member probabilities ``[K, B, C]`` (uniform weights)."""
    mean = member_probs.mean(0)
    ee = _h(member_probs).mean(0)
    return {"mean_probs": mean, "predictive_entropy": _h(mean), "expected_entropy": ee,
            "mutual_information": _h(mean) - ee}  # fmt: skip


def _check(out: dict, truth: dict, member_probs: np.ndarray, s: int) -> None:
    for key, value in truth.items():
        np.testing.assert_allclose(out[key], value, atol=1e-5, err_msg=key)
    k = len(member_probs)
    np.testing.assert_allclose(out["probs"], member_probs[np.arange(s) % k], atol=1e-5)


@pytest.mark.parametrize("s", [16, 2, 1, 5])
def test_ensemble_of_three_is_uniform_at_any_s(tmp_path, s):
    """Issue example: at S = 16 member 0 weighed 6/16; at S = 2 member 2 was dropped."""
    members = [_mlp(i) for i in range(3)]
    x = example((6,), batch=5)
    path = export_model(members, x, tmp_path / "ens.onnx").path
    with torch.no_grad():
        mp = torch.stack([m(x) for m in members]).double().softmax(-1).numpy()
    out = _run(path, x, s)
    _check(out, _ensemble_truth(mp), mp, s)
    # the old weighting (sample s is member s mod K, averaged over S) differs here
    old = mp[np.arange(16) % 3].mean(0)
    assert np.abs(old - mp.mean(0)).max() > 1e-3


def test_weight_samples_and_stacked_members_are_uniform(tmp_path):
    """SG-MCMC draws as state dicts, K = 5 at S = 7, and K > UNROLL_MAX (the sample-loop
    graph with stacked members) at S = 3."""
    arch = _mlp(0)
    x = example((6,), batch=4)
    for k, s in ((5, 7), (UNROLL_MAX + 2, 3)):
        states = [_mlp(10 + i).state_dict() for i in range(k)]
        path = export_model(WeightSamples(arch, states), x, tmp_path / f"sg{k}.onnx").path
        nets = []
        for st in states:
            net = copy.deepcopy(arch)
            net.load_state_dict(st)
            nets.append(net)
        with torch.no_grad():
            mp = torch.stack([n(x) for n in nets]).double().softmax(-1).numpy()
        _check(_run(path, x, s), _ensemble_truth(mp), mp, s)


def test_frozen_draws_are_uniform(tmp_path):
    """frozen:K of a mean-field BNN (unrolled, K = 3) and of a last-layer Gaussian (a frozen
    table, K = 4): the summaries equal the average of the K draws the graph itself stores,
    whose per-sample outputs the exact self-check ties to the torch draws."""
    torch.manual_seed(0)
    x = example((6,), batch=4)
    path = export_model(BayesMLP(), x, tmp_path / "mf.onnx", sampling="frozen:3", seed=1).path
    draws = _run(path, x, 3)["probs"]  # all K draws, in order
    _check(_run(path, x, 8), _ensemble_truth(draws), draws, 8)
    _check(_run(path, x, 2), _ensemble_truth(draws), draws, 2)
    net = _mlp(3)
    p = sum(q.numel() for q in net[2].parameters())
    post = VectorGaussian(torch.zeros(p), (DiagTerm(0, torch.full((p,), 0.5)),))
    post = VectorGaussian(torch.cat([net[2].weight.reshape(-1), net[2].bias]).detach(),
                          post.terms)  # fmt: skip
    gw = WeightGaussian(net, post, last_layer="2")
    path = export_model(gw, x, tmp_path / "ll.onnx", sampling="frozen:4", seed=2).path
    draws = _run(path, x, 4)["probs"]
    _check(_run(path, x, 6), _ensemble_truth(draws), draws, 6)
    assert np.abs(draws[0] - draws[1]).max() > 1e-3  # real spread between the draws


def test_regression_ensemble_is_uniform(tmp_path):
    """Heteroscedastic regression members: pred_mean and the law of total variance over the
    K members, at S = 2 (fewer samples than members)."""
    members = []
    for i in range(3):
        torch.manual_seed(20 + i)
        members.append(nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 4)).eval())
    x = example((5,), batch=4)
    path = export_model(members, x, tmp_path / "reg.onnx", task="regression",
                        heteroscedastic=True).path  # fmt: skip
    names = ["mean", "variance", "pred_mean", "pred_variance"]
    out = _run(path, x, 2, names)
    with torch.no_grad():
        o = torch.stack([m(x) for m in members]).double().numpy()
    d = o.shape[-1] // 2
    mu, var = o[..., :d], np.exp(o[..., d:])
    np.testing.assert_allclose(out["pred_mean"], mu.mean(0), atol=1e-5)
    np.testing.assert_allclose(out["pred_variance"], var.mean(0) + mu.var(0), atol=1e-5)
    assert out["mean"].shape[0] == 2
