"""int8 vs fp32 per sampling mode: file size, and throughput from one interleaved run.

Bayesian MLP (digits size) and Bayesian ResNet-20, batch 32, S = 8, on every available
provider (run it in the main venv for the CPU EP and in the OpenVINO venv for both EPs).
Usage: python benchmarks/quantize_modes.py [--cache DIR] [--out results/quantize_modes.md]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import onnxruntime as ort
import zoo

from qbnn.pipeline.bench import BenchConfig, bench
from qbnn.runtimes import available_providers

MODES = ("weight", "lrt", "frozen:8")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path, default=Path("/tmp/qbnn-bench-models"))
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).parent
        / "results"
        / f"quantize_modes.{'openvino' if 'openvino' in available_providers() else 'cpu'}.md",
    )
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    providers = tuple(available_providers())
    lines = [
        f"# int8 vs fp32 per sampling mode ({time.strftime('%Y-%m-%d')})",
        "",
        f"onnxruntime {ort.__version__}, providers {providers}, "
        f"{platform.processor() or platform.machine()}, 2 threads, batch 32, S = 8, "
        "random weights. Throughput = input images/s (each image counted once).",
        "",
        "| model | mode | provider | fp32 MB | int8 MB (QOp / QDQ) | size ratio | "
        "fp32 img/s | int8 QOp img/s | int8 QDQ img/s | best int8/fp32 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("digits_mlp", "resnet20"):
        for mode in MODES:
            fp32 = zoo.exported(name, mode, args.cache)
            qop, qdq = zoo.quantized(fp32, name), zoo.quantized(fp32, name, fmt="qdq")
            cfg = BenchConfig(
                batches=(32,),
                samples=(8,),
                providers=providers,
                threads=2,
                repeats=args.repeats,
                warmup=2,
                measure_memory=False,
            )
            res = bench({"fp32": fp32, "qop": qop, "qdq": qdq}, cfg)
            for prov in providers:
                c = {x.model: x.images_per_s for x in res.cells if x.provider == prov}
                mb = [p.stat().st_size / 1e6 for p in (fp32, qop, qdq)]
                best = max(c["qop"], c["qdq"]) / c["fp32"]
                lines.append(
                    f"| {name} | {mode} | {prov} | {mb[0]:.2f} | {mb[1]:.2f} / {mb[2]:.2f} | "
                    f"{mb[1] / mb[0]:.3f} | {c['fp32']:,.0f} | {c['qop']:,.0f} | "
                    f"{c['qdq']:,.0f} | {best:.2f} |"
                )
                print(lines[-1], flush=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
