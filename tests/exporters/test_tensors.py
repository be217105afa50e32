"""The typed readers compress uses (``qbnn.exporters.tensors``) read exactly the buffer names the
export modules write: a renamed buffer fails here instead of silently breaking compression."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qbnn.exporters import known_families
from qbnn.exporters.modules.layers import FlipoutLayer, GaussianLayer, LRTLayer, SampleContext
from qbnn.exporters.modules.loopmodel import SOURCE_MOMENTS, GaussianSource
from qbnn.exporters.modules.wrapper import (
    FLIPOUT_MOMENTS,
    LRT_MOMENTS,
    MEMBER_DRAWS,
    EnsembleModel,
    SampledModel,
)
from qbnn.exporters.tensors import Role, Slot, TensorRef
from qbnn.runtimes.contract import Task


def _post() -> GaussianLayer:
    w, b = torch.zeros(3, 4), torch.zeros(3)
    return GaussianLayer(w, w + 1, b, b + 1, None, False)


def _net(layer: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Sequential(nn.Identity(), layer))  # layer path "0.1"


def _buffers(module: nn.Module) -> list[str]:
    return [n for n, _ in module.named_buffers()]


def test_member_draws_read_an_ensembles_parameters():
    model = EnsembleModel([nn.Linear(4, 3), nn.Linear(4, 3)], Task.CLASSIFICATION)
    refs = {n: MEMBER_DRAWS.read(n) for n, _ in model.named_parameters()}
    assert refs == {
        "members.0.weight": None,  # a member's own top-level weight has no layer name
        "members.0.bias": None,
        "members.1.weight": None,
        "members.1.bias": None,
    }
    model = EnsembleModel([_net(nn.Linear(4, 3)) for _ in range(2)], Task.CLASSIFICATION)
    refs = {n: MEMBER_DRAWS.read(n) for n, _ in model.named_parameters()}
    assert refs == {
        "members.0.0.1.weight": TensorRef("0.1", Slot.WEIGHT, Role.DRAWS, member=0),
        "members.0.0.1.bias": TensorRef("0.1", Slot.BIAS, Role.DRAWS, member=0),
        "members.1.0.1.weight": TensorRef("0.1", Slot.WEIGHT, Role.DRAWS, member=1),
        "members.1.0.1.bias": TensorRef("0.1", Slot.BIAS, Role.DRAWS, member=1),
    }


@pytest.mark.parametrize(
    ("layer", "reader", "scale", "kind"),
    [
        (lambda: LRTLayer(_post()), LRT_MOMENTS, "var", "var"),
        (lambda: FlipoutLayer(_post(), SampleContext()), FLIPOUT_MOMENTS, "sigma", "sigma"),
    ],
)
def test_layer_moments_read_every_buffer_of_their_layer(layer, reader, scale, kind):
    model = SampledModel(_net(layer()), SampleContext(), Task.CLASSIFICATION)
    refs = {n: reader.read(n) for n in _buffers(model)}
    assert refs == {
        "net.0.1.mu_w": TensorRef("0.1", Slot.WEIGHT, Role.MU),
        f"net.0.1.{scale}_w": TensorRef("0.1", Slot.WEIGHT_SCALE, Role.MU, scale_kind=kind),
        "net.0.1.mu_b": TensorRef("0.1", Slot.BIAS, Role.MU),
        f"net.0.1.{scale}_b": TensorRef("0.1", Slot.BIAS_SCALE, Role.MU, scale_kind=kind),
    }


def test_source_moments_read_every_buffer_of_a_gaussian_source():
    w = torch.zeros(3, 4)
    source = GaussianSource({"layer1.0.conv.weight": (w, w + 1), "fc.bias": (w[0], w[0] + 1)})
    refs = {f"source.{n}": SOURCE_MOMENTS.read(f"source.{n}") for n in _buffers(source)}
    ref = lambda layer, slot: TensorRef(layer, slot, Role.MU, scale_kind="sigma")  # noqa: E731
    assert refs == {
        "source.mu__layer1__0__conv__weight": ref("layer1.0.conv", Slot.WEIGHT),
        "source.sigma__layer1__0__conv__weight": ref("layer1.0.conv", Slot.WEIGHT_SCALE),
        "source.mu__fc__bias": ref("fc", Slot.BIAS),
        "source.sigma__fc__bias": ref("fc", Slot.BIAS_SCALE),
    }


@pytest.mark.parametrize(
    "name", ["net.fc.weight", "members.x.fc.weight", "source.mu__fc", "members.0.fc.scale"]
)
def test_other_names_are_not_read(name):
    for family in known_families().values():
        assert family.tensors.read(name) is None, family.family


def test_every_family_says_whether_compress_reads_it():
    for family in known_families().values():
        t = family.tensors
        assert bool(t.readers) + bool(t.refused) <= 1, family.family  # read or refused, not both
        assert t.refused is None or t.refused.strip(), family.family
