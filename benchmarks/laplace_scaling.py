"""Last-layer Laplace: S Monte-Carlo samples cost little more than one forward pass.

ResNet-20 (Bayesian-Torch's deterministic CIFAR ResNet, random weights: speed does not depend
on them) with laplace-torch posteriors fitted on 256 random labelled images:

* ``ll-kron`` / ``ll-full``: last-layer Laplace graphs (body once, the 64->10 head sampled S
  times), fp32 and INC int8;
* ``all-diag``: diagonal Laplace over all weights (every conv sampled per MC sample, the
  ``weight``-mode kernels) - what sampling the body costs;
* ``plain``: the deterministic network exported as a plain ONNX graph (one forward);
* ``laplace-torch``: laplace-torch's own ``predictive_samples(pred_type="nn")`` for the
  last-layer Kronecker posterior (it also caches the features), eager torch, same threads.

One interleaved ``qbnn bench`` run over the ONNX graphs (CPU EP, 2 threads, spinning off),
batch 32; laplace-torch timed right after in the same process.
Usage: python benchmarks/laplace_scaling.py [--out results/laplace_scaling.md] [--repeats N]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch
from torch.utils.data import DataLoader, TensorDataset

from qbnn.exporters import export_model
from qbnn.exporters.plain import export_plain
from qbnn.pipeline.bench import BenchConfig, bench
from qbnn.pipeline.quantize import QuantConfig, quantize_model

SAMPLES = (1, 8, 32, 128)
BATCH = 32


def _resnet20() -> torch.nn.Module:
    from bayesian_torch.models.deterministic.resnet import resnet20

    torch.manual_seed(0)
    return resnet20().eval()


def _fit(net, structure: str, subset: str, x, y):
    from laplace import Laplace
    from laplace.curvature import AsdlGGN

    # laplace-torch's default CurvlinopsGGN backend was OOM-killed (> 24 GB) fitting the
    # all-weights diagonal on ResNet-20 here; ASDL's diagonal GGN takes ~15 s and 0.7 GB.
    backend = AsdlGGN if subset == "all" else None
    la = Laplace(
        net,
        "classification",
        subset_of_weights=subset,
        hessian_structure=structure,
        backend=backend,
    )
    la.fit(DataLoader(TensorDataset(x, y), batch_size=64))
    return la


def _time_laplace_torch(la, x: torch.Tensor, s: int, repeats: int) -> float:
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    la.predictive_samples(x, pred_type="nn", n_samples=s, generator=gen)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        la.predictive_samples(x, pred_type="nn", n_samples=s, generator=gen)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" /
                    "laplace_scaling.md")  # fmt: skip
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    x_fit = torch.randn(256, 3, 32, 32, generator=g)
    y_fit = torch.randint(0, 10, (256,), generator=g)
    x = torch.randn(BATCH, 3, 32, 32, generator=g)
    net = _resnet20()
    tmp = Path(tempfile.mkdtemp(prefix="qbnn-laplace-bench-"))
    models: dict[str, Path] = {}
    t0 = time.perf_counter()
    for name, structure, subset in (("ll-kron", "kron", "last_layer"),
                                    ("ll-full", "full", "last_layer"),
                                    ("all-diag", "diag", "all")):  # fmt: skip
        la = _fit(net, structure, subset, x_fit, y_fit)
        if name == "ll-kron":
            la_kron = la
        res = export_model(la, x[:8], tmp / f"{name}.onnx", verify_samples=256, seed=0)
        models[name] = res.path
        print(f"{name}: {res.fidelity.summary()}", flush=True)
        if subset == "last_layer":
            q = quantize_model(res.path, tmp / f"{name}.int8.onnx", QuantConfig(),
                               calib=x_fit[:32].numpy())  # fmt: skip
            models[f"{name} int8"] = q.path
    models["plain"] = export_plain(net, x[:2], tmp / "plain.onnx")
    print(f"export + quantize: {time.perf_counter() - t0:.0f} s", flush=True)

    cfg = BenchConfig(batches=(BATCH,), samples=SAMPLES, providers=("cpu",), threads=2,
                      repeats=args.repeats, warmup=2, measure_memory=False)  # fmt: skip
    sampled_body = {"all-diag": models.pop("all-diag")}
    res = bench(models, cfg)
    ms = {(c.model, c.num_samples): c.median_ms for c in res.cells}
    # sampling the whole body at S=128 would need ~2.4 GB of im2col buffers: S <= 8 only
    body_cfg = BenchConfig(
        batches=(BATCH,),
        samples=(1, 8),
        providers=("cpu",),
        threads=2,
        repeats=max(3, args.repeats // 3),
        warmup=1,
        measure_memory=False,
    )
    ms.update({(c.model, c.num_samples): c.median_ms for c in bench(sampled_body, body_cfg).cells})
    plain = ms[("plain", 1)]
    bt = {s: _time_laplace_torch(la_kron, x, s, max(5, args.repeats // 3)) for s in SAMPLES}

    lines = [
        f"# Last-layer Laplace: cost of S samples ({time.strftime('%Y-%m-%d')})",
        "",
        f"ResNet-20, batch {BATCH}, onnxruntime {ort.__version__} CPU EP, 2 threads, "
        f"{platform.processor() or platform.machine()}; torch {torch.__version__} 2 threads. "
        "Median ms per call (one call = all S samples for the whole batch); in brackets the "
        "ratio to one deterministic forward pass (`plain`, "
        f"{plain:.1f} ms). Produced by `benchmarks/laplace_scaling.py`.",
        "",
        "| model | " + " | ".join(f"S={s}" for s in SAMPLES) + " |",
        "|---|" + "---|" * len(SAMPLES),
    ]
    names = [n for n in models if n != "plain"]
    for n in [*names, "all-diag"]:
        cells = [
            f"{ms[(n, s)]:.1f} ({ms[(n, s)] / plain:.2f}x)" if (n, s) in ms else "not run"
            for s in SAMPLES
        ]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    cells = [f"{bt[s]:.1f} ({bt[s] / plain:.2f}x)" for s in SAMPLES]
    lines.append("| laplace-torch ll-kron (eager) | " + " | ".join(cells) + " |")
    lines.append(f"| plain (deterministic) | {plain:.1f} (1.00x) |" + " |" * (len(SAMPLES) - 1))
    lines += [
        "",
        "Cost of going from S=1 to S=128 (same model): "
        + ", ".join(f"{n} {ms[(n, SAMPLES[-1])] / ms[(n, 1)]:.2f}x" for n in names)
        + f", laplace-torch {bt[SAMPLES[-1]] / bt[1]:.2f}x; all-diag S=1 -> S=8: "
        f"{ms[('all-diag', 8)] / ms[('all-diag', 1)]:.2f}x.",
    ]
    for note in res.notes:
        lines.append(f"- {note}")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
