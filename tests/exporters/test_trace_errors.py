"""torch.export failures are reported with torch's own cause (issue 22, kind 4): the reason and
the user's line, not torch.onnx's "Failed to export ... step 1/3 ... Next steps" banner, and
advice naming only sampling modes the family has."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from qbnn.exporters import export
from qbnn.exporters.tracecause import trace_cause
from qbnn.runtimes.errors import ExportError

from tiny_models import example

BANNER = ("Failed to export the model", "step 1/3", "Next steps", "\x1b[")
LINE = r"test_trace_errors\.py:\d+ in forward \(`if h\.sum\(\) > 0:`\)"


class BranchyDropout(nn.Module):
    """MC dropout with a Python branch on a tensor's value: no graph can hold it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.drop = nn.Linear(6, 3), nn.Dropout(0.3)

    def forward(self, x):
        h = self.drop(self.lin(x))
        if h.sum() > 0:
            return h
        return -h


class BranchyNoise(nn.Module):
    """A self-sampling layer (``stochastic`` family) with the same branch, in the sample loop."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 3)

    def forward(self, x):
        h = nn.functional.linear(x, self.lin.weight + 0.1 * torch.randn_like(self.lin.weight))
        if h.sum() > 0:
            return h
        return -h


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and not any(b in msg for b in BANNER), msg
    return msg


def test_a_data_dependent_branch_is_named_with_its_line(tmp_path):
    with pytest.raises(ExportError) as exc:
        export(BranchyDropout(), example((6,)), tmp_path / "m.onnx")
    msg = _one_line(exc)
    assert re.search(
        r"^torch\.export could not trace the model: GuardOnDataDependentSymNode: Could not "
        r"guard on data-dependent expression .*; at .*" + LINE,
        msg,
    ), msg
    assert msg.endswith("(the 'mcdropout' family has no other sampling mode)")
    assert "lrt" not in msg and "frozen" not in msg
    assert not (tmp_path / "m.onnx").exists()


def test_in_the_sample_loop_the_reason_and_line_come_from_dynamo(tmp_path):
    with pytest.raises(ExportError) as exc:
        export(BranchyNoise(), example((6,)), tmp_path / "m.onnx")
    msg = _one_line(exc)
    assert msg.startswith(
        "the network's forward could not be traced inside the sample loop (one network pass "
        "per MC sample, traced like torch.compile): UncapturedHigherOrderOpError: "
        "Data-dependent branching (Detected data-dependent branching"
    ), msg
    assert re.search(LINE, msg), msg
    assert msg.endswith("(the 'stochastic' family has no other sampling mode)")
    assert "lrt" not in msg


class _BannerOnly(Exception):
    """Stands for torch.onnx's wrapper when it carries no chained cause."""


_BannerOnly.__module__ = "torch.onnx._internal.exporter._errors"


def test_the_banners_exception_summary_is_used_when_nothing_is_chained():
    banner = (
        "Failed to export the model with torch.export. \x1b[96mThis is step 1/3\x1b[0m of "
        "exporting the model to ONNX. Next steps:\n- Modify the model code\n\n"
        "## Exception summary\n\n<class 'torch._dynamo.exc.Unsupported'>: Unsupported context "
        "manager Foo(). Dynamo does not know how to enter it.\n\n(Refer to the full stack trace)"
    )
    assert trace_cause(_BannerOnly(banner)) == "Unsupported: Unsupported context manager Foo()"
    assert trace_cause(ValueError("plain reason. More.\nsecond")) == "ValueError: plain reason"
