"""Providers seen on this machine, noise quality per provider, and a short latency table.

Noise: a Bayesian layer whose output is its noise (mu = 0, sigma = 1), 64 x 2000 draws per
provider; Kolmogorov-Smirnov against N(0, 1). Latency: digits-size Bayesian MLP and Bayesian
ResNet-20 (LRT graphs, fp32), batch 32, S = 1 and 16, interleaved across providers.
Run in the main venv (CPU EP) and in the OpenVINO venv (CPU + OpenVINO EPs).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import zoo
from scipy import stats

from qbnn.exporters import export
from qbnn.pipeline.bench import BenchConfig, bench
from qbnn.runtimes import Predictor, available_providers, known_providers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_models import UnitNoise  # noqa: E402

CACHE = Path("/tmp/qbnn-bench-models")


def main() -> None:
    provs = available_providers()
    tag = "openvino" if "openvino" in provs else "cpu"
    lines = [
        f"# Providers ({time.strftime('%Y-%m-%d')}, onnxruntime {ort.__version__})",
        "",
        f"registered: {list(known_providers())}; available here: {provs}",
        "",
        "## Noise per provider (64 x 2000 draws, seed 3)",
        "",
        "| provider | mode | KS p-value | mean | std | P(abs(z)>3) |",
        "|---|---|---|---|---|---|",
    ]
    CACHE.mkdir(exist_ok=True)
    for mode in ("weight", "lrt"):
        path = export(
            UnitNoise(),
            torch.ones(1, 1),
            CACHE / f"unit_{mode}.onnx",
            sampling=mode,
            task="regression",
            verify=False,
        )
        for p in provs:
            z = (
                Predictor(path, provider=p, seed=3)
                .predict(np.ones((1, 1), np.float32), 2000, return_samples=True)
                .samples.ravel()
            )
            lines.append(
                f"| {p} | {mode} | {stats.kstest(z, 'norm').pvalue:.3f} | "
                f"{z.mean():+.4f} | {z.std():.4f} | {np.mean(np.abs(z) > 3):.4f} |"
            )
    lines += [
        "",
        "## Latency, batch 32 (fp32 LRT graphs, 2 threads)",
        "",
        "| model | provider | S | median ms | p90 ms | images/s |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("digits_mlp", "resnet20"):
        path = zoo.exported(name, "lrt", CACHE)
        res = bench(
            {name: path},
            BenchConfig(
                batches=(32,),
                samples=(1, 16),
                providers=tuple(provs),
                threads=2,
                repeats=15,
                measure_memory=False,
            ),
        )
        for c in res.cells:
            lines.append(
                f"| {name} | {c.provider} | {c.num_samples} | {c.median_ms:.2f} | "
                f"{c.p90_ms:.2f} | {c.images_per_s:,.0f} |"
            )
    out = Path(__file__).parent / "results" / f"providers.{tag}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
