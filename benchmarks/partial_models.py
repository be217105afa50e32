"""Partially stochastic benchmark models (random weights are fine for speed).

Each entry builds ``(deterministic, bayesian)`` torch modules that share the deterministic
part's weights (Bayesian layers are ``dnn_to_bnn``'s fresh posteriors), so "det once" is the same
architecture run once without noise:

* ``bt_head_r20``: Bayesian-Torch CIFAR ResNet-20 whose classifier is a
  ``LinearReparameterization`` (``dnn_to_bnn`` applied to the classifier only).
* ``dropout_head_r20``: ResNet-20 with ``nn.Dropout(0.2)`` before the classifier (where
  torchvision's VGG / MobileNet classifiers put it).
* ``vgg_lastblock``: a VGG-style CNN (3 conv blocks 64/128/256, max pooling) whose last conv
  block is Bayesian (``Conv2dReparameterization``).
* Designs of our own, one per kind: ``bt_lastblock_r20`` (``dnn_to_bnn`` on ResNet-20's last
  residual block), ``dropout_mobile`` (a depthwise-separable CNN, dropout before the
  classifier), ``bt_head_seq`` (a 1-D conv sequence encoder ``[B, 16, 128]`` with a Bayesian
  head), ``multihead_ens`` (a 4-member ensemble that shares the ResNet-20 backbone and differs in
  the head: a multi-head ensemble as a list of members).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

PRIOR = {"prior_mu": 0.0, "prior_sigma": 1.0, "posterior_mu_init": 0.0,
         "posterior_rho_init": -3.0, "type": "Reparameterization", "moped_enable": False,
         "moped_delta": 0.5}  # fmt: skip
SHAPES = {"seq": (16, 128), "img": (3, 32, 32)}


def _bayes(module: nn.Module) -> nn.Module:
    """``dnn_to_bnn`` of one module (Bayesian-Torch converts children, so wrap it once)."""
    from bayesian_torch.models.dnn_to_bnn import dnn_to_bnn

    holder = nn.Sequential(copy.deepcopy(module))
    dnn_to_bnn(holder, PRIOR)
    return holder[0]


def _resnet20() -> nn.Module:
    from bayesian_torch.models.deterministic.resnet import resnet20

    return resnet20().eval()


def _vgg() -> nn.Module:
    layers: list[nn.Module] = []
    c_in = 3
    for c in (64, 128, 256):
        convs = [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1),
                 nn.ReLU(), nn.MaxPool2d(2)]  # fmt: skip
        layers.append(nn.Sequential(*convs))
        c_in = c
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(256 * 4 * 4, 10)).eval()


def _mobile() -> nn.Module:
    def sep(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in), nn.BatchNorm2d(c_in), nn.ReLU(),
                nn.Conv2d(c_in, c_out, 1), nn.BatchNorm2d(c_out), nn.ReLU()]  # fmt: skip

    return nn.Sequential(
        nn.Conv2d(3, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.ReLU(),
        *sep(32, 64, 1), *sep(64, 128, 2), *sep(128, 256, 2), *sep(256, 256, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(256, 10),
    ).eval()  # fmt: skip


def _seq() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(16, 64, 5, padding=2), nn.ReLU(), nn.Conv1d(64, 128, 5, padding=2), nn.ReLU(),
        nn.MaxPool1d(2), nn.Conv1d(128, 128, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(128, 10),
    ).eval()  # fmt: skip


def _randomize_bn(net: nn.Module) -> nn.Module:
    """Non-trivial running statistics (a trained network's BatchNorm is not the identity)."""
    g = torch.Generator().manual_seed(3)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(1 + 0.1 * torch.rand(m.num_features, generator=g))
    return net


def build(name: str) -> tuple[nn.Module, nn.Module | list[nn.Module], tuple[int, ...]]:
    """``(deterministic, bayesian, feature_shape)`` for the named model; seeded."""
    torch.manual_seed(0)
    if name == "vgg_lastblock":
        det = _vgg()
        bnn = copy.deepcopy(det)
        bnn[2] = _bayes(det[2])
        return det, bnn.eval(), SHAPES["img"]
    det = _randomize_bn(_seq() if name == "bt_head_seq" else
                        _mobile() if name == "dropout_mobile" else _resnet20())  # fmt: skip
    shape = SHAPES["seq" if name == "bt_head_seq" else "img"]
    bnn = copy.deepcopy(det)
    if name in ("bt_head_r20", "frozen8_bt_head_r20", "lrt_bt_head_r20"):
        bnn.linear = _bayes(det.linear)
    elif name == "dropout_head_r20":
        bnn.linear = nn.Sequential(nn.Dropout(0.2), det.linear)
    elif name == "bt_lastblock_r20":
        bnn.layer3[-1] = _bayes(det.layer3[-1])
    elif name == "bt_head_seq":
        bnn[-1] = _bayes(det[-1])
    elif name == "multihead_ens":
        members = []
        for k in range(4):
            m = copy.deepcopy(det)
            torch.manual_seed(10 + k)
            m.linear = nn.Linear(64, 10)
            members.append(m.eval())
        return det, members, shape
    elif name == "dropout_mobile":
        pass  # the dropout is in the network already
    elif name == "resnet20_full":
        from bayesian_torch.models.dnn_to_bnn import dnn_to_bnn

        dnn_to_bnn(bnn, PRIOR)
    else:
        raise KeyError(name)
    return det, bnn.eval(), shape


def inputs(shape: tuple[int, ...], batch: int, seed: int = 0) -> np.ndarray:
    """Standard-normal inputs ``[batch, *shape]`` float32."""
    return np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)
