"""The self-check compares the graph with the user's model itself (issue 14, "Also"): a qbnn
wrapper that changes the model's function cannot pass.

Each test breaks one of qbnn's wrappers on purpose (the graph side only) and expects the
self-check to refuse the export; the unbroken export of the same model passes.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qbnn.exporters import DiagTerm, VectorGaussian, WeightGaussian, export_model
from qbnn.exporters import steps as export_steps
from qbnn.exporters.modules.layers import FixedLayer
from qbnn.exporters.modules.ops import apply_shared
from qbnn.runtimes.errors import VerificationError

from tiny_models import bayes_mlp, example


class Tempered(nn.Module):
    """[B, 6] -> [B, 3]; forward divides the last Linear's output by a temperature."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU())
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(self.body(x)) / 0.25


def _last_layer(net: nn.Module) -> WeightGaussian:
    mean = torch.cat([net.fc.weight.detach().reshape(-1), net.fc.bias.detach()])
    post = VectorGaussian(mean, (DiagTerm(0, torch.full_like(mean, 1e-3)),))
    return WeightGaussian(net, post, last_layer="fc")


def test_last_layer_graph_that_drops_an_op_fails_the_self_check(tmp_path, monkeypatch):
    """With the early refusal switched off, the last-layer graph drops the temperature; the
    self-check runs the user's whole forward per draw (the old reference ran qbnn's body plus
    head and agreed with the wrong graph) and refuses it."""
    monkeypatch.setattr(export_steps, "_check_last_layer", lambda *a, **k: None)
    with pytest.raises(VerificationError, match="differs from the torch members|MC mean differs"):
        export_model(_last_layer(Tempered()), example((6,)), tmp_path / "t.onnx", sampling="weight")
    assert not (tmp_path / "t.onnx").exists()


def test_last_layer_graph_of_a_model_ending_in_its_linear_passes(tmp_path):
    class Plain(Tempered):
        def forward(self, x):  # ends at the last Linear: nothing is dropped
            return self.fc(self.body(x))

    res = export_model(_last_layer(Plain()), example((6,)), tmp_path / "ok.onnx", sampling="weight")
    assert res.fidelity is not None and not res.fidelity.exact


def test_frozen_draws_are_checked_against_the_users_bayesian_layers(tmp_path, monkeypatch):
    """frozen:K's reference is the user's Bayesian-Torch model collapsed onto each draw, not
    qbnn's placeholder network: a placeholder that loses the bias is caught."""

    def no_bias(self, x):
        return apply_shared(x, self.weight, None, self.conv)

    res = export_model(bayes_mlp(), example((6,)), tmp_path / "ok.onnx", sampling="frozen:3")
    assert res.fidelity.exact and res.fidelity.max_abs_mean_diff < 1e-4
    monkeypatch.setattr(FixedLayer, "compute", no_bias)
    with pytest.raises(VerificationError, match="differs from the torch members"):
        export_model(bayes_mlp(), example((6,)), tmp_path / "b.onnx", sampling="frozen:3")
