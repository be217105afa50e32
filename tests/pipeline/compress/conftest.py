"""Module-scoped fixtures for the compress tests: a 2-member CNN ensemble (weights as
initializers; channel pruning removable between the convolutions and between the dense
layers) and labelled data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from qbnn.exporters import export

from compress_tiny import TinyCNN, data, members

__all__ = ["TinyCNN"]


@pytest.fixture(scope="session")
def ensemble_model(tmp_path_factory) -> tuple[Path, list[TinyCNN]]:
    """The exported 2-member ensemble (fp32) and its torch members."""
    ms = members()
    path = tmp_path_factory.mktemp("compress") / "ens.onnx"
    export(ms, torch.from_numpy(data(4)[0]), path, verify=False)
    return path, ms


@pytest.fixture(scope="session")
def arrays(tmp_path_factory) -> dict[str, Path]:
    """calib / test / ood npz files."""
    d = tmp_path_factory.mktemp("data")
    x, y = data(200, seed=7)
    np.savez(d / "calib.npz", x=data(64, seed=3)[0])
    np.savez(d / "test.npz", x=x, y=y)
    rng = np.random.default_rng(9)
    np.savez(d / "ood.npz", x=(rng.random((100, 1, 8, 8)) * 3).astype(np.float32))
    return {"calib": d / "calib.npz", "test": d / "test.npz", "ood": d / "ood.npz"}
