"""The batch axis stays free (issue 22, kind 7): a graph that fixes it is refused at export."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from qbnn.exporters import export_model
from qbnn.exporters.checks.batchaxis import check_batch_axis, second_batch
from qbnn.exporters.modules.batchfree import BatchFreeMask, batch_free
from qbnn.runtimes.errors import ExportError

from thirdparty import torch_uncertainty
from tiny_models import example


def _graph(shape: list[int], batch: int | str = "batch") -> onnx.ModelProto:
    """``input [batch, 6]`` -> Reshape(shape) -> ``probs``; plus the contract's ``num_samples``."""
    nodes = [helper.make_node("Reshape", ["input", "shape"], ["probs"], name="r")]
    shape_init = helper.make_tensor("shape", TensorProto.INT64, [len(shape)], shape)
    g = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 6]),
            helper.make_tensor_value_info("num_samples", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, None)],
        [shape_init],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def test_a_free_batch_axis_passes():
    check_batch_axis(_graph([-1, 6]), example((6,)))
    assert second_batch(4) not in (4, 2) and second_batch(1) not in (1, 2)


def test_a_literal_reshape_inside_is_refused_in_one_line():
    with pytest.raises(
        ExportError, match=r"fixes the batch axis at 4: run at batch 7 it fails"
    ) as e:
        check_batch_axis(_graph([4, 6]), example((6,)))
    assert "\n" not in str(e.value) and "x.reshape(M, -1, ...)" in str(e.value)


def test_a_declared_fixed_batch_is_refused():
    with pytest.raises(ExportError, match=r"fixes the batch axis at 8 \(its input is declared"):
        check_batch_axis(_graph([-1, 6], batch=8), example((6,), batch=8))


def test_outputs_that_do_not_follow_the_batch_are_refused():
    with pytest.raises(ExportError, match=r"run at batch 7 it returns outputs of shape \[42\]"):
        check_batch_axis(_graph([-1]), example((6,)))  # runs, but folds the batch away


class _SplitMasks(nn.Module):
    """Own design, Masksembles-like: 2 members stacked on the batch axis, each masked after a
    ``torch.split(h, batch // 2)`` (the arithmetic that fixes a traced batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 12), nn.Linear(12, 3)
        self.register_buffer("masks", (torch.arange(24).reshape(2, 12) % 3 != 0).float())

    def forward(self, x):
        h = torch.relu(self.fc1(x.repeat(2, 1)))
        parts = torch.split(h.unsqueeze(1), h.shape[0] // 2, dim=0)
        h = torch.cat(parts, 1).permute(1, 0, 2) * self.masks.unsqueeze(1)
        return self.fc2(torch.cat(torch.split(h, 1, dim=0), 1).squeeze(0))


def test_a_model_that_fixes_the_batch_is_refused_and_nothing_is_written(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(ExportError, match=r"fixes the batch axis at 8 .*torch\.split"):
        export_model(_SplitMasks().eval(), example((6,), batch=8), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("conv", [False, True], ids=["Mask1d", "Mask2d"])
def test_batch_free_masks_compute_what_masksembles_computes(conv):
    layers = torch_uncertainty("layers")
    torch.manual_seed(0)
    layer = (
        layers.MaskedConv2d(12, 5, 3, num_estimators=4, scale=2.0)
        if conv
        else layers.MaskedLinear(12, 5, num_estimators=4, scale=2.0)
    )
    ref = copy.deepcopy(layer.mask)  # the library's own Mask1d / Mask2d
    assert batch_free(layer) == ["mask"] and isinstance(layer.mask, BatchFreeMask)
    for b in (1, 3, 8):
        x = torch.randn(4 * b, 12, 6, 6) if conv else torch.randn(4 * b, 12)
        np.testing.assert_array_equal(layer.mask(x).numpy(), ref(x).numpy())


def test_the_member_view_workaround_of_masksembles_is_refused_clearly(tmp_path):
    """tp_06's workaround (a list of member views of a Masksembles net, the ``ensemble``
    family, which does not rewrite the masks) used to export a graph fixed at batch 8 that
    crashed at predict time; it is refused at export."""
    layers = torch_uncertainty("layers")
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(6, 12)
            self.fc2 = layers.MaskedLinear(12, 3, num_estimators=2, scale=2.0)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x.repeat(2, 1))))

    class Member(nn.Module):
        def __init__(self, net: nn.Module, m: int) -> None:
            super().__init__()
            self.net, self.m = net, m

        def forward(self, x):
            return self.net(x).reshape(2, x.shape[0], -1)[self.m]

    net = Net().eval()
    with pytest.raises(ExportError, match="fixes the batch axis at 8"):
        export_model([Member(net, 0), Member(net, 1)], example((6,), batch=8), tmp_path / "m.onnx")
    res = export_model(net, example((6,), batch=8), tmp_path / "auto.onnx")  # the stacked route
    assert res.sampling == "members:2" and res.fidelity.exact
