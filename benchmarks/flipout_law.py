"""``weight`` vs ``flipout`` sampling of Bayesian-Torch flipout models against Bayesian-Torch's
own MC average: is one weight draw per sample the same law as the flipout estimator?

Models: a LinearFlipout MLP [B, 16] -> [B, 5] and tests/tiny_models.py's flipout CNN (one
Conv2dFlipout 1->4, flatten, LinearFlipout), S passes of Bayesian-Torch's forward vs S graph
samples; then Bayesian-Torch's flipout ResNet-20 (untrained, random [4, 3, 32, 32] input)
through the export self-check (64 samples each side). Prints a markdown table.

    python benchmarks/flipout_law.py [--samples 2000] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from qbnn.exporters import export, export_model  # noqa: E402
from qbnn.runtimes import Predictor  # noqa: E402

from tiny_models import flipout_cnn  # noqa: E402


class FlipoutMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from bayesian_torch.layers import LinearFlipout

        self.l1 = LinearFlipout(16, 32, posterior_rho_init=-2.0)
        self.l2 = LinearFlipout(32, 5, posterior_rho_init=-2.0)

    def forward(self, x):
        h, _ = self.l1(x)
        return self.l2(torch.relu(h))[0]


def _bt(model, x, s):
    torch.manual_seed(11)
    with torch.no_grad():
        outs = [model(x) for _ in range(s)]
    return torch.stack([F.softmax(o[0] if isinstance(o, tuple) else o, -1) for o in outs]).numpy()


def _row(name, mode, tp, qp):
    se = np.sqrt(tp.var(0) / len(tp) + qp.var(0) / len(qp))
    z = float((np.abs(tp.mean(0) - qp.mean(0)) / np.maximum(se, 1e-6)).max())
    st, sq = float(tp.std(0).mean()), float(qp.std(0).mean())
    return f"| {name} | {mode} | {len(qp)} | {z:.1f} | {sq:.4f} | {st:.4f} | {sq / st:.3f} |"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--quick", action="store_true", help="200 samples, no ResNet-20")
    a = ap.parse_args()
    s = 200 if a.quick else a.samples
    print("| model | mode | S | max z of MC means | spread graph | spread Bayesian-Torch | ratio |")
    print("|---|---|---|---|---|---|---|")
    torch.manual_seed(0)
    cases = [("LinearFlipout MLP", FlipoutMLP().eval(), torch.randn(8, 16))]
    torch.manual_seed(7)
    cases.append(("tiny flipout CNN", flipout_cnn().eval(), torch.randn(6, 1, 8, 8)))
    for name, model, x in cases:
        tp = _bt(model, x, s)
        for mode in ("weight", "flipout"):
            path = Path(tempfile.mkdtemp()) / "m.onnx"
            export(model, x, path, sampling=mode, verify=False)
            q = Predictor(path, seed=5).predict(x.numpy(), num_samples=s, return_samples=True)
            print(_row(name, mode, tp, q.probs), flush=True)
    if a.quick:
        return
    from bayesian_torch.models.bayesian import resnet_flipout

    torch.manual_seed(0)
    net = resnet_flipout.resnet20().eval()
    x = torch.tensor(np.random.RandomState(0).randn(4, 3, 32, 32).astype(np.float32))
    for mode in ("flipout", "weight"):
        path = Path(tempfile.mkdtemp()) / "r.onnx"
        try:
            f = export_model(net, x, path, sampling=mode).fidelity
            print(f"| ResNet-20 flipout (self-check) | {mode} | 64 | {f.max_z:.1f} | "
                  f"{f.spread_graph:.4f} | {f.spread_torch:.4f} | passes |")  # fmt: skip
        except Exception as exc:  # noqa: BLE001  the refusal is the measurement
            print(f"| ResNet-20 flipout (self-check) | {mode} | 64 | refused: {exc} |")


if __name__ == "__main__":
    main()
