"""Tiny seeded models and data for the compress tests (imported by ``conftest.py`` and tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from qbnn.runtimes import model_info
from qbnn.runtimes.loading import load_onnx


class TinyCNN(nn.Module):
    """Conv(1->4) ReLU MaxPool Conv(4->6) ReLU Flatten Linear(24->8) ReLU Linear(8->3);
    ``[B, 1, 8, 8] -> [B, 3]`` logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc1 = nn.Linear(6 * 2 * 2, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        h = torch.max_pool2d(torch.relu(self.conv2(h)), 2).flatten(1)
        return self.fc2(torch.relu(self.fc1(h)))


def members(k: int = 2, seed: int = 0) -> list[TinyCNN]:
    """``k`` TinyCNNs trained briefly on the synthetic task of :func:`data` (seeded)."""
    x, y = data(256, seed=seed)
    out = []
    for i in range(k):
        torch.manual_seed(seed + i)
        m = TinyCNN()
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        for _ in range(60):
            loss = nn.functional.cross_entropy(m(xt), yt)
            opt.zero_grad()
            loss.backward()
            opt.step()
        out.append(m.eval())
    return out


def data(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``x [n, 1, 8, 8]`` float32 in [0, 1), ``y [n]`` int64: which third of the image is
    brightest (3 classes)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, 8, 8)).astype(np.float32)
    thirds = np.stack([x[:, 0, :, :3].mean((1, 2)), x[:, 0, :, 3:5].mean((1, 2)),
                       x[:, 0, :, 5:].mean((1, 2))], 1)  # fmt: skip
    return x, thirds.argmax(1).astype(np.int64)


def run(
    path: Path | str,
    x: np.ndarray,
    samples: int | None = None,
    config: dict | None = None,
    optimize: bool = True,
) -> dict[str, np.ndarray]:
    """All outputs of a compiled model on ``x`` (CPU provider; ``config``: session entries;
    ``optimize=False``: no graph optimizations; ``samples=None``: the model's default S)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for k, v in (config or {}).items():
        opts.add_session_config_entry(k, v)
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {"input": x}
    if any(i.name == "num_samples" for i in sess.get_inputs()):
        s = model_info(load_onnx(path)).default_samples if samples is None else samples
        feed["num_samples"] = np.array(s, np.int64)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feed), strict=True))
