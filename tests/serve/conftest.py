"""Fixtures of the serving tests: tiny compiled models (exported once per session) and a real
uvicorn server on a free localhost port, started and stopped by the test."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'qbnn[serve]'")

from serving import IDS, TokenNet  # noqa: E402
from tiny_models import CASES, bayes_mlp, example  # noqa: E402


@pytest.fixture(scope="session")
def model_files(tmp_path_factory) -> dict[str, Path]:
    """``cnn``: mean-field CNN [B, 1, 8, 8] -> 4 classes, S = 8 by default (fresh noise per
    run); ``frozen``: the same with 4 frozen noise draws (deterministic, exact);
    ``reg``: a mean-field MLP regressor [B, 6] -> [B, 3]."""
    from qbnn.exporters import export

    d = tmp_path_factory.mktemp("served")
    fac, shape = CASES["meanfield-cnn"]
    return {
        "cnn": export(fac(), example(shape), d / "cnn.onnx", num_samples=8, verify=False),
        "frozen": export(
            fac(), example(shape), d / "frozen.onnx", sampling="frozen:4", verify=False
        ),  # fmt: skip
        "reg": export(
            bayes_mlp(),
            example((6,)),
            d / "reg.onnx",
            task="regression",
            num_samples=8,
            verify=False,
        ),  # fmt: skip
    }


@pytest.fixture(scope="session")
def token_files(tmp_path_factory) -> dict[str, Path]:
    """``ids64`` / ``ids32``: :class:`serving.TokenNet` (MC dropout over token ids) exported by
    qbnn with an int64 / int32 ``input [B, 7]``, 16 samples by default."""
    import torch

    from qbnn.exporters import export

    d = tmp_path_factory.mktemp("tokens")
    return {
        name: export(TokenNet().eval(), torch.as_tensor(IDS, dtype=dt), d / f"{name}.onnx",
                     seed=0, verify=False)
        for name, dt in (("ids64", torch.int64), ("ids32", torch.int32))
    }  # fmt: skip
