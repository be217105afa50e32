"""NCHWc kernels for the sample loop's convolutions (``qbnn.runtimes.nchwc``): session-level A/B.

Each ``weight``-mode graph (Bayesian ResNet-20, batch 32, S 8; Bayesian ResNet-50, batch 8,
S 4) is opened three times on ONNX Runtime's CPU EP, 2 threads, same seed: with the rewrite as
shipped (3x3+ convolutions), with every eligible convolution rewritten (1x1 too), and without
the rewrite; the three sessions are timed interleaved (median of 7 runs after a warm-up) and
their outputs compared. Run it under ``chrt -f 10`` on a shared machine.
Usage: python benchmarks/nchwc.py [--cache DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import zoo

import qbnn.runtimes.nchwc as nchwc
from qbnn.runtimes import Predictor, PredictorOptions, SessionOptions

CELLS = [("resnet20", 32, 8), ("resnet50", 8, 4)]
NO_SPIN = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}


def _open(path: Path, variant: str) -> Predictor:
    shipped, eligible = nchwc.nchwc_loop_convs, nchwc._eligible

    def all_convs(node, graph, consts, block):  # the shipped rule without the 1x1 exclusion
        if node.op_type == "Conv" and node.input[1] not in consts:
            shape = nchwc._static_shape(graph, node.input[1])
            if shape and len(shape) == 4 and shape[2] * shape[3] == 1:
                ok = not (shape[0] % block or shape[1] % block)
                return shape if ok else None
        return eligible(node, graph, consts, block)

    if variant == "off":
        nchwc.nchwc_loop_convs = lambda model, block=None: 0
    elif variant == "all":
        nchwc._eligible = all_convs
    try:
        opts = PredictorOptions(session=SessionOptions(config_entries=NO_SPIN))
        return Predictor(path, provider="cpu", threads=2, seed=5, options=opts)
    finally:
        nchwc.nchwc_loop_convs, nchwc._eligible = shipped, eligible


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path, default=Path("/tmp/qbnn-bench-models"))
    args = ap.parse_args()
    lines = [
        f"# NCHWc kernels in the sample loop ({time.strftime('%Y-%m-%d')})",
        "",
        f"onnxruntime {ort.__version__}, CPU EP, 2 threads, NCHWc block {nchwc.block_size()}, "
        f"scheduling policy {os.sched_getscheduler(0)} (1 = SCHED_FIFO). `shipped`: 3x3+ "
        "convolutions rewritten (qbnn's rule); `all`: 1x1 too; `off`: no rewrite. Median of 7.",
        "",
        "| model | batch | S | shipped ms | all ms | off ms | off / shipped | max abs diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, batch, s in CELLS:
        path = zoo.exported(name, "weight", args.cache)
        preds = {v: _open(path, v) for v in ("shipped", "all", "off")}
        feed = {"input": zoo.inputs(name, batch), "num_samples": np.array(s, dtype=np.int64)}
        outs = {v: p.session.run(["probs"], feed)[0] for v, p in preds.items()}
        diff = max(float(np.abs(outs[v] - outs["off"]).max()) for v in ("shipped", "all"))
        times: dict[str, list[float]] = {v: [] for v in preds}
        for _ in range(7):
            for v, p in preds.items():
                t0 = time.perf_counter()
                p.session.run(None, feed)
                times[v].append(time.perf_counter() - t0)
        med = {v: statistics.median(t) * 1e3 for v, t in times.items()}
        lines.append(
            f"| {name} | {batch} | {s} | {med['shipped']:.1f} | {med['all']:.1f} | "
            f"{med['off']:.1f} | {med['off'] / med['shipped']:.2f}x | {diff:.1e} |"
        )
        print(lines[-1], flush=True)
    out = Path(__file__).parent / "results" / "nchwc.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
