"""The newer trainers end to end: fidelity at S = 1000 and diabetes regression fp32 vs int8.

Part 1 - fidelity of each Laplace / SWAG / SG-MCMC export against the trainer's own sampler
(laplace-torch ``predictive_samples(pred_type="nn")`` on iris; the SWAG authors' sampling loop
and the SGLD member loop on diabetes), 1000 samples each side, via the exporter's self-check.

Part 2 - every family trained on scikit-learn's diabetes data (tests/trainers.py), exported
with a homoscedastic (observation noise = training residual variance; Laplace: its
sigma_noise) or heteroscedastic head, quantized with INC, and measured by ``validate`` on the
100 held-out rows (S = 64): RMSE, Gaussian NLL, PICP@95 %, and the regression gates.
Usage: python benchmarks/trainers.py [--out results/trainers.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from qbnn.exporters import SwagPosterior, WeightSamples, export_model  # noqa: E402
from qbnn.pipeline.validate import ValidateConfig, validate  # noqa: E402

import trainers as T  # noqa: E402

S = 1000
FAMILIES = ["meanfield", "mcdropout", "ensemble", "swag", "sgld", "laplace-ll-kron",
            "laplace-ll-full", "laplace-all-diag"]  # fmt: skip
HETERO = ["meanfield", "mcdropout", "ensemble", "swag", "sgld"]


def fidelity_rows(tmp: Path) -> list[str]:
    rows = []
    iris = T.iris()
    net = T.fit(T.mlp(4, 3), iris.x_train, iris.y_train, "ce", steps=300)
    for subset in ("last_layer", "all"):
        for structure in ("full", "kron", "diag"):
            la = T.laplace(net, iris.x_train, iris.y_train, "classification", subset, structure)
            res = export_model(la, iris.x_test[:8], tmp / "f.onnx", verify_samples=S, seed=0)
            rows.append(_fid_row(f"laplace {subset} {structure}", "iris", res))
    dia = T.diabetes()
    swag_net = T.mlp(10, 1)
    snaps = T.sgd_iterates(swag_net, dia.x_train, dia.y_train, epochs=20, keep=10, lr=0.01)
    post = SwagPosterior.from_snapshots(swag_net, snaps, rank=10)
    res = export_model(post, dia.x_test[:8], tmp / "f.onnx", task="regression",
                       verify_samples=S, seed=0)  # fmt: skip
    rows.append(_fid_row("swag rank 10", "diabetes", res))
    sg_net = T.mlp(10, 1)
    samples = WeightSamples(sg_net, T.sgld(sg_net, dia.x_train, dia.y_train, n=8))
    res = export_model(samples, dia.x_test[:8], tmp / "f.onnx", task="regression",
                       verify_samples=S)  # fmt: skip
    rows.append(_fid_row("sgld 8 samples", "diabetes", res))
    return rows


def _fid_row(name: str, data: str, res) -> str:
    f = res.fidelity
    if f.exact:  # the same members on both sides: compared sample by sample
        line = f"| {name} | {data} | {res.sampling} | exact | {f.max_abs_mean_diff:.1e} | - | - |"
        print(line, flush=True)
        return line
    line = (
        f"| {name} | {data} | {res.sampling} | {f.max_z:.2f} | {f.max_abs_mean_diff:.4f} | "
        f"{f.spread_graph:.4f} | {f.spread_torch:.4f} |"
    )
    print(line, flush=True)
    return line


def regression_row(tmp: Path, dia, family: str, hetero: bool) -> str:
    post, posterior, sampling = T.diabetes_posterior(family, dia, "hetero" if hetero else "mse")
    fp32, q = T.diabetes_fp32_int8(post, posterior, sampling, hetero, dia, tmp)
    int8 = q.path
    cfg = ValidateConfig(num_samples=64, bootstrap=100, mc_repeats=1, threads=2)
    rep = validate({"fp32": fp32, "int8": int8}, dia.npz_test(), config=cfg)
    m = {r.name: r.metrics for r in rep.models}
    gates = (
        "pass"
        if rep.passed
        else "FAIL " + ", ".join(g.name for g in rep.gates["int8"] if g.passed is False)
    )
    cells = [f"{m[k]['rmse']:.3f}" for k in ("fp32", "int8")]
    cells += [f"{m[k]['gaussian_nll']:.3f}" for k in ("fp32", "int8")]
    cells += [f"{m[k]['picp@0.95']:.2f}" for k in ("fp32", "int8")]
    line = (
        f"| {family} | {'hetero' if hetero else 'homo'} | " + " / ".join(cells[:2]) + " | "
        + " / ".join(cells[2:4]) + " | " + " / ".join(cells[4:]) + f" | {q.size_ratio:.2f} | "
        f"{gates} |"
    )  # fmt: skip
    print(line, flush=True)
    return line


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).parent / "results" / "trainers.md")  # fmt: skip
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="qbnn-trainers-"))
    t0 = time.perf_counter()
    lines = [
        f"# Laplace, SWAG, SG-MCMC and regression heads ({time.strftime('%Y-%m-%d')})",
        "",
        "Produced by `benchmarks/trainers.py`. Part 1: the export self-check at S = "
        f"{S} per side against each trainer's own sampler (max z = largest |MC mean difference|"
        " / standard error over all elements; spread = mean per-element std over samples).",
        "",
        "| posterior | data | mode | max z | max abs mean diff | spread graph | spread torch |",
        "|---|---|---|---|---|---|---|",
        *fidelity_rows(tmp),
        "",
        "Part 2: diabetes (342 train / 100 test rows, standardized target: predicting the "
        "training mean gives RMSE 1.0, ordinary least squares 0.70), fp32 / INC int8 at S = 64, "
        "same seed. Gates: RMSE ratio <= 1.05, NLL increase <= 0.1, total and epistemic "
        "variance ratios in [0.8, 1.25].",
        "",
        "| family | head | RMSE | Gaussian NLL | PICP@95% | int8/fp32 size | gates |",
        "|---|---|---|---|---|---|---|",
    ]
    dia = T.diabetes()
    for family in FAMILIES:
        lines.append(regression_row(tmp, dia, family, hetero=False))
    for family in HETERO:
        lines.append(regression_row(tmp, dia, family, hetero=True))
    lines += ["", f"Wall time {time.perf_counter() - t0:.0f} s."]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
