"""Deterministic baselines as plain ONNX (no qbnn metadata; runtimes treat them as S = 1)."""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
from torch import nn

from qbnn.exporters.passes.finalize import strip_tracing_metadata
from qbnn.runtimes.atomic import atomic_path
from qbnn.runtimes.contract import INPUT, ContractMeta
from qbnn.runtimes.errors import ExportError, first_line
from qbnn.runtimes.loading import set_metadata

from .quiet import quiet_export

__all__ = ["export_plain"]


class _FirstOutput(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        out = self.net(x)
        return out[0] if isinstance(out, (tuple, list)) else out


def export_plain(
    model: nn.Module, example_input: torch.Tensor, path: str | Path, task: str = "classification"
) -> Path:
    """Export ``model`` (eval mode) with input ``input [B, *F]`` and output ``logits [B, C]``
    (regression: the predictions ``[B, D]``, marked with ``qbnn.task = regression``)."""
    x = example_input.detach().float()
    x = x if x.shape[0] > 1 else x.expand(2, *x.shape[1:]).contiguous()
    try:
        with quiet_export():
            prog = torch.onnx.export(
                _FirstOutput(model).eval(), (x,), dynamo=True, input_names=[INPUT],
                output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                opset_version=18, verbose=False,
            )  # fmt: skip
    except Exception as exc:
        msg = first_line(exc)
        raise ExportError(f"torch.onnx.export of the baseline failed: {msg}") from exc
    proto = prog.model_proto
    strip_tracing_metadata(proto)
    for i, node in enumerate(proto.graph.node):
        node.name = node.name or f"{node.op_type}_{i}"
    if task == "regression":
        set_metadata(proto, ContractMeta(task=task).to_props())
    with atomic_path(path) as tmp:
        onnx.checker.check_model(proto)
        onnx.save_model(proto, str(tmp))
    return Path(path)
