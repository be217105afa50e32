"""Export time and graph size of ``frozen:K`` against K (LeNet-5-sized Bayesian-Torch BNN).

Up to ``UNROLL_MAX`` draws the graph holds K network copies (constant weights: fast kernels,
static int8); above it the draws are stored stacked and run in the sample loop, so node count and
export time stop growing with K. Each K is exported in a fresh process (no warm import caches
favour later rows), self-check included (every sample compared exactly with the member loop).
Usage: python benchmarks/frozen_export.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
KS = (8, 32, 33, 128, 512)

CHILD = r"""
import json, sys, time, tempfile
from pathlib import Path
import onnx, torch
import torch.nn.functional as F
from torch import nn
from bayesian_torch.layers import Conv2dReparameterization as C, LinearReparameterization as L
from qbnn.exporters import export_model

class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.c2 = C(1, 6, 5), C(6, 16, 5)
        self.f1, self.f2, self.f3 = L(256, 120), L(120, 84), L(84, 10)
    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)[0]), 2)
        x = F.max_pool2d(F.relu(self.c2(x)[0]), 2).flatten(1)
        x = F.relu(self.f1(x)[0])
        return self.f3(F.relu(self.f2(x)[0]))[0]

k = int(sys.argv[1])
net, x = LeNet().eval(), torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
with tempfile.TemporaryDirectory() as d:
    t0 = time.perf_counter()
    res = export_model(net, x, Path(d) / "m.onnx", sampling=f"frozen:{k}", seed=0)
    sec = time.perf_counter() - t0
    m = onnx.load(str(res.path))
    print(json.dumps({"k": k, "seconds": sec, "nodes": len(m.graph.node),
                      "mb": res.path.stat().st_size / 1e6, "exact": res.fidelity.exact,
                      "max_abs_diff": res.fidelity.max_abs_mean_diff,
                      "scan": any(n.op_type == "Scan" for n in m.graph.node)}))
"""


def main() -> None:
    rows = []
    for k in KS:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(k)], capture_output=True, text=True, check=True
        ).stdout
        row = json.loads(out.strip().splitlines()[-1])
        rows.append(row)
        print(row, flush=True)
    from qbnn.exporters.modules.loopmodel import UNROLL_MAX

    t = {r["k"]: r["seconds"] for r in rows}
    lines = [
        f"# frozen:K export time ({time.strftime('%Y-%m-%d')})",
        "",
        f"LeNet-5-sized Bayesian-Torch BNN (2 Conv2dReparameterization + 3 "
        f"LinearReparameterization), one fresh process per K, export + self-check (exact, per "
        f"sample). UNROLL_MAX = {UNROLL_MAX}. Load average (1 min) at the end: "
        f"{os.getloadavg()[0]:.2f}.",
        "",
        "| K | construction | export s | nodes | file MB | self-check max abs diff |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        kind = "stacked, sample loop" if r["scan"] else "unrolled copies"
        lines.append(
            f"| {r['k']} | {kind} | {r['seconds']:.1f} | {r['nodes']} | {r['mb']:.2f} | "
            f"{r['max_abs_diff']:.1e} |"
        )
    lines += ["", f"frozen:512 / frozen:32 export time: {t[512] / t[32]:.2f}x (target <= 2x)."]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "frozen_export.md").write_text("\n".join(lines) + "\n")
    print(f"-> {RESULTS / 'frozen_export.md'}")


if __name__ == "__main__":
    main()
