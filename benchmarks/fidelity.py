"""Fidelity of every exporter family x sampling mode against its torch sampler.

Tiny seeded models from tests/tiny_models.py; 1000 MC samples each side (graph: one
session.run; torch: the trainer's own loop). Reports the largest |MC mean difference| of the
per-sample probabilities in standard errors, and the mean per-element spread of both.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from qbnn.exporters import export_model  # noqa: E402
from qbnn.exporters.modules.dropout import mc_mode  # noqa: E402
from qbnn.runtimes import Predictor  # noqa: E402

from tiny_models import CASES, example, resnet20_bnn  # noqa: E402

EXPORTS = [("meanfield-mlp", m) for m in ("weight", "lrt", "frozen:4")] + [
    ("meanfield-cnn", m) for m in ("weight", "lrt", "frozen:4")] + [
    ("meanfield-conv1d", "weight"), ("meanfield-conv1d", "lrt"),
    ("meanfield-dnn_to_bnn", "weight"), ("flipout-cnn", "flipout"), ("flipout-cnn", "weight"),
    ("flipout-cnn", "lrt"), ("mcdropout-mlp", "dropout"), ("ensemble-mlp", "members"),
    ("resnet20", "weight"), ("resnet20", "lrt")]  # fmt: skip
S = 1000


def torch_probs(model, x, s, exact_members=None):
    torch.manual_seed(99)
    with torch.no_grad():
        if exact_members is not None:
            return np.stack(
                [F.softmax(exact_members[i % len(exact_members)](x), -1).numpy() for i in range(s)]
            )
        outs = []
        for _ in range(s):
            o = model(x)
            outs.append(F.softmax(o[0] if isinstance(o, tuple) else o, -1).numpy())
        return np.stack(outs)


def main() -> None:
    out_dir = Path("/tmp/qbnn-fidelity")
    out_dir.mkdir(exist_ok=True)
    lines = [
        f"# Export fidelity vs the torch samplers ({time.strftime('%Y-%m-%d')})",
        "",
        f"S = {S} samples each side, batch 4, fixed seeds. max z = largest |mean diff| / "
        "standard error over all (input, class) elements.",
        "",
        "| model | family | mode | max z | max abs mean diff | spread graph | spread torch |",
        "|---|---|---|---|---|---|---|",
    ]
    for case, mode in EXPORTS:
        if case == "resnet20":
            factory, shape, s = resnet20_bnn, (3, 32, 32), 100
        else:
            (factory, shape), s = CASES[case], S
        x = example(shape)
        res = export_model(factory(), x, out_dir / "m.onnx", sampling=mode, verify=False)
        g = Predictor(res.path, seed=1).predict(x.numpy(), s, return_samples=True).probs
        model = factory()
        members = None
        if res.family == "ensemble":
            members = [m.eval() for m in model]
        elif mode.startswith("frozen"):
            continue  # exact by construction (sample-by-sample check in the test suite)
        else:
            model = mc_mode(model) if res.family == "mcdropout" else model.eval()
        t = torch_probs(model, x, s, members)
        diff = np.abs(g.mean(0) - t.mean(0))
        se = np.sqrt((g.var(0, ddof=1) + t.var(0, ddof=1)) / s)
        z = float((diff / np.maximum(se, 1e-9)).max()) if members is None else 0.0
        lines.append(
            f"| {case} | {res.family} | {mode} | {z:.2f} | {diff.max():.4f} | "
            f"{g.std(0).mean():.4f} | {t.std(0).mean():.4f} |"
        )
        print(lines[-1], flush=True)
    (Path(__file__).parent / "results" / "fidelity.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
