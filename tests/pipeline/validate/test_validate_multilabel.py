"""``validate`` on multi-label models (issue 22, kind 5): per-label metrics averaged over labels.

Definitions (pipeline/validate/multilabel.py): accuracy = per-label (Hamming) accuracy,
subset_accuracy = every label right, NLL = mean Bernoulli NLL, Brier = mean (p - y)**2, ECE =
each label's two-class top-label ECE averaged over labels; referral / AURC rank inputs by the
summed entropy and score the per-label accuracy of the kept inputs; OOD AUROC uses the summed
entropy / MI. Every expected number below is computed by hand in the comments.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from qbnn.pipeline.validate import ValidateConfig, validate
from qbnn.pipeline.validate.evaluation import Outputs, core_metrics, curves, full_metrics
from qbnn.runtimes.errors import ConfigError, RuntimeInputError

P = np.array([[0.9, 0.2], [0.4, 0.7], [0.6, 0.1]])
Y = np.array([[1, 0], [1, 1], [0, 0]])
U = np.array([0.1, 0.5, 0.3])  # summed predictive entropy per input
MI = np.array([0.02, 0.2, 0.08])
OOD_U = np.array([0.4, 0.6])


def _out() -> Outputs:
    return Outputs(3, P, U, MI, OOD_U, np.array([0.1, 0.3]), multilabel=True)


def test_hand_computed_metrics():
    m = full_metrics(_out(), Y, n_bins=15, targets=(1.0, 0.7))
    # decisions p > 0.5: [[1, 0], [0, 1], [1, 0]] -> 4 of 6 labels right; only row 0 all right
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["subset_accuracy"] == pytest.approx(1 / 3)
    nll = -(math.log(0.9) + math.log(0.8) + math.log(0.4) + math.log(0.7) + math.log(0.4)
            + math.log(0.9)) / 6  # fmt: skip
    assert m["nll"] == pytest.approx(nll)
    assert m["brier"] == pytest.approx((0.01 + 0.04 + 0.36 + 0.09 + 0.36 + 0.01) / 6)  # 0.145
    # label 0: confidences 0.9 (right), 0.6, 0.6 (both wrong, one bin): 1/3*0.1 + 2/3*0.6;
    # label 1: 0.8, 0.7, 0.9 all right, separate bins: (0.2 + 0.3 + 0.1) / 3
    assert m["ece"] == pytest.approx(((0.1 / 3 + 0.4) + 0.2) / 2)
    # referral over label slots, inputs by U: row 0 (2/2 right), row 2 (1/2), row 1 (1/2)
    assert m["referral_needed@1"] == pytest.approx(4 / 6)  # keep row 0 only
    assert m["referral_needed@0.7"] == pytest.approx(2 / 6)  # keep rows 0, 2: 3/4 right
    # risk-coverage steps: (2/6, 0), (4/6, 1/4), (1, 2/6)
    assert m["aurc"] == pytest.approx(2 / 6 * 0.25 + 2 / 6 * (2 / 6))
    # OOD by summed entropy: 0.4 beats 0.1 and 0.3, 0.6 beats all three: 5 of 6 pairs
    assert m["ood_auroc_entropy"] == pytest.approx(5 / 6)
    assert m["mean_mi"] == pytest.approx(0.1)
    assert m["entropy_correct"] == pytest.approx(0.1)  # row 0 is the only all-right row
    assert m["entropy_wrong"] == pytest.approx(0.4)
    assert set(core_metrics(_out(), Y, n_bins=15, targets=(0.7,))) <= set(m)


def test_curves_pool_the_labels():
    c = curves(_out(), Y, n_bins=15)
    assert sum(c["reliability"]["count"]) == 6  # every label decision once
    assert c["entropy_hist"]["edges"][-1] == pytest.approx(2 * math.log(2))  # K log 2
    assert c["referral"]["accuracy"][0] == pytest.approx(4 / 6)


def test_bootstrap_keeps_the_multilabel_flag():
    idx = np.array([0, 0, 2])
    assert _out().take(idx, None).multilabel
    m = core_metrics(_out().take(idx, None), Y[idx], n_bins=15, targets=(0.7,))
    assert m["accuracy"] == pytest.approx(5 / 6)  # rows 0, 0, 2: 2 + 2 + 1 right


def _multilabel_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3), nn.Sigmoid()
    )
    with torch.no_grad():
        net[3].bias.copy_(torch.tensor([2.0, -2.0, 0.0]))
    return net.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A multi-label MC-dropout graph (K = 3), a single-label one, and labelled data."""
    from qbnn.exporters import export

    d = tmp_path_factory.mktemp("ml")
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(3))
    ml = export(_multilabel_net(), x[:4], d / "ml.onnx", seed=0, verify=False)
    torch.manual_seed(0)
    single = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.2), nn.Linear(8, 3))
    sl = export(single, x[:4], d / "sl.onnx", seed=0, verify=False)
    with torch.no_grad():
        p = _multilabel_net()(x).numpy()
    y = (np.random.default_rng(0).random(p.shape) < p).astype(np.int64)  # drawn from the model
    return ml, sl, {"x": x.numpy(), "y": y}


FAST = {"num_samples": 16, "bootstrap": 20, "mc_repeats": 1}


def test_validate_end_to_end(exported):
    ml, _, data = exported
    rep = validate([ml], data, ood={"x": data["x"][:16] * 4}, config=ValidateConfig(**FAST))
    m = rep.reference.metrics
    assert {"accuracy", "subset_accuracy", "nll", "brier", "ece", "ood_auroc_entropy"} <= set(m)
    assert 0.5 < m["accuracy"] <= 1 and m["subset_accuracy"] <= m["accuracy"]
    assert any(n.startswith("multi-label: 3 independent labels") for n in rep.notes)
    assert rep.data["num_classes"] == 3


def test_validate_refuses_bad_labels_and_mixed_heads(exported):
    ml, sl, data = exported
    cfg = ValidateConfig(**FAST)
    with pytest.raises(RuntimeInputError, match=r"0/1 matrix of shape \[64, 3\]; got shape \[64\]"):
        validate([ml], {"x": data["x"], "y": data["y"][:, 0]}, config=cfg)
    bad = data["y"].copy()
    bad[5, 2] = 2
    with pytest.raises(RuntimeInputError, match=r"holds 2 at row 5, label 2; each entry must be 0"):
        validate([ml], {"x": data["x"], "y": bad}, config=cfg)
    with pytest.raises(ConfigError, match=r"mix multi-label \(ml\) and single-label"):
        validate([ml], data, baseline=sl, config=cfg)
