"""Benchmark models (random weights are fine for speed) and a cache of their ONNX exports.

* ``digits_mlp``: Bayesian MLP 64-256-256-10 of Bayesian-Torch ``LinearReparameterization``
  layers (the digits-size model; inputs ``[B, 64]``).
* ``resnet20``: Bayesian-Torch's CIFAR ResNet-20 converted with ``dnn_to_bnn`` (``[B, 3, 32, 32]``).
* ``resnet50``: Bayesian-Torch's ImageNet ResNet-50 converted with ``dnn_to_bnn``
  (``[B, 3, 224, 224]``).
* ``resnet20_flipout``: ResNet-20 converted with ``dnn_to_bnn(type="Flipout")``
  (Bayesian-Torch ``Conv2dFlipout`` / ``LinearFlipout`` layers).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

PRIOR = {"prior_mu": 0.0, "prior_sigma": 1.0, "posterior_mu_init": 0.0,
         "posterior_rho_init": -3.0, "type": "Reparameterization", "moped_enable": False,
         "moped_delta": 0.5}  # fmt: skip
SHAPES = {
    "digits_mlp": (64,),
    "resnet20": (3, 32, 32),
    "resnet20_flipout": (3, 32, 32),
    "resnet50": (3, 224, 224),
}


def deterministic(name: str, seed: int = 0) -> nn.Module:
    """The deterministic network (the floor a BNN is measured against)."""
    torch.manual_seed(seed)
    if name == "digits_mlp":
        net = nn.Sequential(
            nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
        )
    elif name in ("resnet20", "resnet20_flipout"):
        from bayesian_torch.models.deterministic.resnet import resnet20

        net = resnet20()
    else:
        from bayesian_torch.models.deterministic.resnet_large import resnet50

        net = resnet50()
    return net.eval()


def bayesian(name: str, seed: int = 0) -> nn.Module:
    """``dnn_to_bnn`` of :func:`deterministic` (Bayesian-Torch mean-field layers; Flipout
    layers for ``resnet20_flipout``)."""
    from bayesian_torch.models.dnn_to_bnn import dnn_to_bnn

    net = copy.deepcopy(deterministic(name, seed))
    torch.manual_seed(seed + 1)
    prior = {**PRIOR, "type": "Flipout"} if name.endswith("_flipout") else PRIOR
    dnn_to_bnn(net, prior)
    return net.eval()


def inputs(name: str, batch: int, seed: int = 0) -> np.ndarray:
    """Standard-normal inputs ``[batch, *shape]`` float32."""
    return np.random.default_rng(seed).standard_normal((batch, *SHAPES[name])).astype(np.float32)


def exported(name: str, mode: str, cache: Path, *, num_samples: int = 8) -> Path:
    """``<cache>/<name>.<mode>.fp32.onnx`` (exported once, self-check skipped for speed:
    fidelity is covered by the test suite)."""
    from qbnn.exporters import export

    path = cache / f"{name}.{mode.replace(':', '_')}.fp32.onnx"
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        export(
            bayesian(name),
            torch.from_numpy(inputs(name, 2)),
            path,
            sampling=mode,
            num_samples=num_samples,
            verify=False,
        )
    return path


def plain(name: str, cache: Path) -> Path:
    """The deterministic network as plain ONNX."""
    from qbnn.exporters.plain import export_plain

    path = cache / f"{name}.det.fp32.onnx"
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        export_plain(deterministic(name), torch.from_numpy(inputs(name, 2)), path)
    return path


def quantized(src: Path, name: str, *, fmt: str = "qoperator") -> Path:
    """INC int8 of ``src`` (calibrated on standard-normal inputs, S = 8: 64 inputs, or 4 for
    ResNet-50, whose per-batch activations ONNX Runtime's calibrator keeps in memory)."""
    from qbnn.pipeline.quantize import CalibrationConfig, QuantConfig, quantize_model

    dst = src.with_name(src.name.replace(".fp32.", f".int8-{fmt}."))
    if not dst.is_file():
        size = 4 if name == "resnet50" else 64
        calib = CalibrationConfig(size=size, batch_size=min(size, 16))
        quantize_model(
            src, dst, QuantConfig(format=fmt, calibration=calib), calib=inputs(name, size, seed=1)
        )
    return dst
