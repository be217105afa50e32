"""Flipout's default sampling mode per layer type (issue 22, kind 8).

``LinearFlipout``: each row's effective weight is an exact posterior draw, so ``weight``
sampling has the same per-row law (measured against Bayesian-Torch's own forward, 2,000
passes: spread 0.0719 vs 0.0714). ``Conv2dFlipout`` draws its sign vectors per input and
output *position*: one image's positions see differently flipped perturbations, which is not
one weight draw shared by all positions. After pooling over positions the spreads differ
(ResNet-20: 0.150 in a ``weight`` graph vs 0.097 in Bayesian-Torch), so models with flipout
convolutions default to ``flipout`` (the estimator itself) and a ``weight`` graph's self-check
refusal names it.
"""

from __future__ import annotations

import onnx
import pytest
import torch
from bayesian_torch.layers import Conv2dFlipout, LinearFlipout
from torch import nn

from qbnn.exporters import export_model
from qbnn.exporters.families.flipout import default_sampling
from qbnn.runtimes.errors import VerificationError

from tiny_models import example, flipout_cnn


class FlipoutMLP(nn.Module):
    """LinearFlipout x2. [B, 16] -> [B, 5]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.l1 = LinearFlipout(16, 32, posterior_rho_init=-2.0)
        self.l2 = LinearFlipout(32, 5, posterior_rho_init=-2.0)

    def forward(self, x):
        h, _ = self.l1(x)
        return self.l2(torch.relu(h))[0]


class PooledFlipoutConv(nn.Module):
    """Conv2dFlipout (3 -> 16, 3x3) on 16x16, global average pool, Linear: the pool sums 256
    positions, whose perturbations are one draw under ``weight`` sampling and sign-decorrelated
    under Bayesian-Torch's flipout. [B, 3, 16, 16] -> [B, 4]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = Conv2dFlipout(3, 16, 3, padding=1, posterior_rho_init=-1.0)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        h, _ = self.conv(x)
        return self.fc(torch.relu(h).mean((2, 3)))


def _sampling(path) -> str:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}["qbnn.sampling"]


def test_default_is_weight_for_linear_flipout_and_flipout_for_convolutions():
    assert default_sampling(FlipoutMLP()) == "weight"
    assert default_sampling(flipout_cnn()) == "flipout"
    assert default_sampling(PooledFlipoutConv()) == "flipout"


def test_linear_flipout_default_export_is_weight_and_passes(tmp_path):
    res = export_model(FlipoutMLP().eval(), example((16,), batch=8), tmp_path / "m.onnx")
    assert _sampling(res.path) == "weight" and res.fidelity.max_z < 5


def test_flipout_convolutions_default_to_the_estimator_and_weight_is_refused_naming_it(tmp_path):
    """Against Bayesian-Torch's own forward (the self-check, 64 samples, seed 0): the default
    (``flipout``) graph passes; the ``weight`` graph's spread is several times Bayesian-Torch's
    and it is refused, naming ``sampling='flipout'``; no file is left."""
    model = PooledFlipoutConv().eval()
    x = example((3, 16, 16), batch=4)
    res = export_model(model, x, tmp_path / "f.onnx")
    f = res.fidelity
    assert _sampling(res.path) == "flipout" and f.max_z < 5
    assert abs(f.spread_graph - f.spread_torch) <= 0.2 * f.spread_torch + 2e-3, f.summary()
    with pytest.raises(VerificationError, match=r"spread .*use sampling='flipout'") as e:
        export_model(model, x, tmp_path / "w.onnx", sampling="weight")
    assert "\n" not in str(e.value) and not (tmp_path / "w.onnx").exists()
