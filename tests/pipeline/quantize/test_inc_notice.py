"""INC's ``VNNI is not supported ... reduce_range=True is recommended`` (issue 24, item 4).

onnx-neural-compressor logs it for every static config it builds on a CPU without VNNI (2-4
times per quantize), while qbnn applies its own 7-bit weight grid after INC. A real INC
quantize must not let it reach the output; qbnn says once, in its own words, what applies.

INC decides "no VNNI" from its ``CpuInfo`` (cpuid). So that the test means the same on a VNNI
CPU as on an AVX2 one, INC's detected flag is set to "no VNNI" for the test (the only thing
changed; the quantization itself is real), and the first test shows that the notice then does
reach the output without qbnn's filter.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from qbnn.exporters.plain import export_plain
from qbnn.pipeline.quantize import QuantConfig, quantize_model
from qbnn.pipeline.quantize.backends import INC_VNNI_NOTICE, inc_static_config

utility = pytest.importorskip("onnx_neural_compressor.utility")

NOTE = "this CPU has no VNNI: qbnn puts int8 conv/GEMM weights on a 7-bit grid"


@pytest.fixture
def no_vnni(monkeypatch):
    """INC's CPU detection answers "no VNNI" (as on an AVX2 CPU)."""
    monkeypatch.setattr(utility.CpuInfo(), "_vnni", False)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def inc_output():
    """Every message that reaches a handler of INC's logger (its own stderr handler among
    them), and so the output."""
    import onnx_neural_compressor.logger  # noqa: F401  (creates INC's handler)

    handler = _Collect()
    inc_log = logging.getLogger("onnx_neural_compressor")
    inc_log.addHandler(handler)
    yield handler.messages
    inc_log.removeHandler(handler)


@pytest.fixture(scope="module")
def conv_model(tmp_path_factory):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 4 * 4, 3)).eval()  # fmt: skip
    x = np.random.default_rng(0).uniform(0, 1, (16, 3, 6, 6)).astype(np.float32)
    path = export_plain(net, torch.from_numpy(x[:2]), tmp_path_factory.mktemp("m") / "c.onnx")
    return path, x


def test_inc_emits_the_notice_without_qbnns_filter(no_vnni, inc_output):
    """The premise: on a "no VNNI" CPU, building INC's config outputs the notice."""
    inc_static_config(QuantConfig(), None, [])
    assert any(m.startswith(INC_VNNI_NOTICE) for m in inc_output), inc_output


@pytest.mark.parametrize("reduce_range", [True, False])
def test_quantize_hides_incs_notice_and_says_once_what_applies(
    no_vnni, inc_output, conv_model, tmp_path, capfd, caplog, reduce_range
):
    src, x = conv_model
    with caplog.at_level(logging.INFO):
        quantize_model(src, tmp_path / "q.onnx", QuantConfig(reduce_range=reduce_range), calib=x)
    out = capfd.readouterr()
    assert not [m for m in inc_output if INC_VNNI_NOTICE in m]
    assert INC_VNNI_NOTICE not in out.out + out.err
    assert INC_VNNI_NOTICE not in caplog.text
    ours = [r for r in caplog.records if "has no VNNI" in r.getMessage()]
    assert len(ours) == 1, [r.getMessage() for r in ours]
    if reduce_range:
        assert ours[0].levelno == logging.INFO and ours[0].getMessage().startswith(NOTE)
    else:
        assert ours[0].levelno == logging.WARNING
        assert "set reduce_range: true" in ours[0].getMessage()
