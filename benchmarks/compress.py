"""Record posterior-guided compression on the digits CNN into ``benchmarks/results/compress.md``.

The demo's Bayesian CNN (Bayesian-Torch layers, trained on scikit-learn's digits as ``qbnn
demo`` trains it) is exported as ``frozen:K`` (K posterior draws stored as initializers) and
compressed four ways, each validated against the fp32 export with ``validate``'s default gates:

* int8 everywhere (INC static int8, the ``quantize`` stage): the reference, 6.25 % relative BOPs;
* ``--auto``: plan from the posterior, searched for the smallest relative BOPs that passes;
* ``--share`` with 16 (4-bit indices; without and with variance matching of the draws) and 32
  shared values per layer (8-bit indices).

Then the default export a Bayesian-Torch user gets (``meanfield``, ``weight`` mode: weights
drawn at run time, mu and sigma stored) of the same trained CNN, and of a Bayesian ResNet-20
(Bayesian-Torch's CIFAR ResNet-20 through ``dnn_to_bnn``, ``benchmarks/zoo.py``) **trained
briefly** (``--resnet-epochs``, NLL only) on the same digits upscaled to 32 x 32 x 3 (no CIFAR
data here), each compressed with ``--auto`` (mu/sigma grids, drawn weights rounded at run time,
SNR pruning) and ``--share`` (mu shared within k sigma, sigma on a 4-bit log grid or one value
per channel).

Recorded: relative BOPs, unique weights per layer, file bytes vs fp32 and vs the int8 file,
accuracy, ECE, OOD AUROC, MI ratio and every gate verdict. Usage:
``python benchmarks/compress.py [--draws 16] [--epochs 30] [--resnet-n 256]``;
``--quick`` checks the script (few epochs, small data, small searches) and writes
``compress.quick.md`` instead of ``compress.md``; ``--quick --resnet-only`` checks the ResNet-20
part alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def _verdict(r: dict) -> str:
    """A row's gate verdict: reference, all pass, or FAIL with the failing gates."""
    verdict = {None: "reference", True: "all pass", False: "FAIL"}[r["gates_passed"]]
    failed = [k for k, v in r["gates"].items() if v == "FAIL"]
    return f"{verdict} ({', '.join(failed)})" if failed else verdict


def _train(epochs: int, seed: int):
    import torch

    from qbnn.pipeline.run import digits

    data = digits.load_split(seed)
    torch.manual_seed(seed)
    model = digits.train(digits.bayes_cnn(), data.x_train, data.y_train, epochs=epochs, seed=seed)
    return model, data


def _metrics(report, name: str) -> dict:
    m = report.model(name).metrics
    keys = ("accuracy", "ece", "ood_auroc_entropy", "ood_auroc_mi", "mean_mi")
    return {k: m.get(k) for k in keys}


def _row(label, rel, rec_or_sizes, report, name, fp32_bytes, int8_bytes) -> dict:
    gates = report.gates[name]
    return {
        "model": label,
        "relative_bops": rel,
        "size_bytes": rec_or_sizes["size_bytes"],
        "size_vs_fp32": rec_or_sizes["size_bytes"] / fp32_bytes,
        "size_vs_int8": rec_or_sizes["size_bytes"] / int8_bytes,
        "max_unique_per_layer": rec_or_sizes.get("max_unique_per_layer"),
        "gates_passed": all(g.passed is not False for g in gates),
        "gates": {g.name: g.status for g in gates},
        **_metrics(report, name),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--draws", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resnet-n", type=int, default=433, help="ResNet-20 test inputs")
    ap.add_argument("--resnet-epochs", type=int, default=3, help="ResNet-20 training epochs")
    ap.add_argument(
        "--resnet-only",
        action="store_true",
        help="check the ResNet-20 part alone (prints, writes no result file)",
    )
    ap.add_argument("--quick", action="store_true", help="check the script: tiny settings")
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.draws, args.resnet_n, args.resnet_epochs = 2, 4, 16, 1
    if args.resnet_only:
        from qbnn.pipeline.run import digits

        with tempfile.TemporaryDirectory(prefix="qbnn-compress-bench-") as tmp:
            rn = _resnet20(Path(tmp), args, digits.load_split(args.seed))
        print(_meanfield_md({"meanfield": [rn]}))
        return
    import torch

    from qbnn.exporters import export
    from qbnn.pipeline.compress import AutoConfig, ShareConfig, compress
    from qbnn.pipeline.quantize import quantize_model
    from qbnn.pipeline.validate import ValidateConfig, validate
    from qbnn.runtimes.errors import QuantizationError

    t0 = time.perf_counter()
    model, data = _train(args.epochs, args.seed)
    vcfg = ValidateConfig(num_samples=args.draws, bootstrap=100, mc_repeats=0, provider="cpu")
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="qbnn-compress-bench-") as tmp:
        d = Path(tmp)
        np.savez(d / "calib.npz", x=data.x_train[:256])
        np.savez(d / "test.npz", x=data.x_test, y=data.y_test)
        np.savez(d / "ood.npz", x=data.x_ood)
        fp32 = d / "bnn.onnx"
        export(model, torch.from_numpy(data.x_train[:4]), fp32,
               sampling=f"frozen:{args.draws}", num_samples=args.draws, seed=args.seed,
               verify=False)  # fmt: skip
        fp32_bytes = fp32.stat().st_size
        int8 = d / "bnn.int8.onnx"
        quantize_model(fp32, int8, calib=d / "calib.npz")
        int8_bytes = int8.stat().st_size
        rep = validate({"fp32": fp32, "int8": int8}, d / "test.npz", ood=d / "ood.npz", config=vcfg)
        fp32_row = {"model": "fp32 (frozen)", "relative_bops": 1.0, "size_bytes": fp32_bytes,
                    "size_vs_fp32": 1.0, "size_vs_int8": fp32_bytes / int8_bytes,
                    "gates_passed": None, "gates": {}, **_metrics(rep, "fp32")}  # fmt: skip
        rows.append(fp32_row)
        rows.append(_row("int8 everywhere (INC)", 1 / 16, {"size_bytes": int8_bytes}, rep,
                         "int8", fp32_bytes, int8_bytes))  # fmt: skip
        search_dir = d / "auto"
        auto_layers, search, auto_plan = [], [], None
        try:
            auto = compress(
                fp32, d / "auto.onnx",
                auto=AutoConfig(fractions=(0.25, 1.0, 2.0, 4.0), snr=(0.0, 1.0, 2.0, 3.0),
                                match=(0.0, 0.8), max_trials=2 if args.quick else 24,
                                explore=0 if args.quick else 6),
                calib=d / "calib.npz", data=d / "test.npz", ood=d / "ood.npz",
                validate_config=vcfg, report_dir=search_dir, log=print,
            )  # fmt: skip
            rows.append(_row("--auto (searched)", auto.result.relative_bops, auto.record,
                             auto.report, "compressed", fp32_bytes, int8_bytes))  # fmt: skip
            auto_layers, search = auto.record["layers"], auto.record["search"]
            auto_plan = auto.record["plan"]
        except QuantizationError as exc:  # recorded, not hidden
            rows.append(_failed_row(f"--auto: {exc}"))
        png = search_dir / "search.png"
        if png.is_file() and not args.quick:
            (RESULTS / "compress_search.png").write_bytes(png.read_bytes())
        share_layers = {}
        shares = ((16, 0.0), (16, 0.5), (16, 0.7), (16, 0.85), (16, 1.0), (32, 0.0), (32, 0.7))
        for k, match in shares[:2] if args.quick else shares:
            sh = compress(fp32, d / f"share{k}.onnx",
                          share=ShareConfig(k=2.0, max_unique=k, match=match),
                          data=d / "test.npz", ood=d / "ood.npz", validate_config=vcfg)  # fmt: skip
            label = f"--share, <= {k} values/layer, match {match:g}"
            rows.append(_row(label, None, sh.record, sh.report, "compressed", fp32_bytes,
                             int8_bytes))  # fmt: skip
            share_layers[f"{k}, match {match:g}"] = sh.record["layers"]
        mf = _meanfield(model, data, d, vcfg, args, label="digits CNN")
        rn = _resnet20(d, args, data)
    wall = time.perf_counter() - t0
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "draws": args.draws,
        "epochs": args.epochs,
        "rows": rows,
        "auto_layers": auto_layers,
        "auto_plan": auto_plan,
        "search": search,
        "share_layers": {str(k): v for k, v in share_layers.items()},
        "notes": notes,
        "meanfield": [mf, rn],
    }
    RESULTS.mkdir(exist_ok=True)
    stem = "compress.quick" if args.quick else "compress"
    (RESULTS / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(_markdown(record, wall) + _meanfield_md(record))
    print(f"-> {RESULTS / f'{stem}.md'} ({wall:.0f} s)")


def _failed_row(label: str) -> dict:
    keys = ("accuracy", "ece", "ood_auroc_entropy", "ood_auroc_mi", "mean_mi")
    return {"model": label, "relative_bops": None, "size_bytes": 0, "size_vs_fp32": 0.0,
            "size_vs_int8": 0.0, "gates_passed": False, "gates": {},
            "max_unique_per_layer": None, **dict.fromkeys(keys)}  # fmt: skip


def _meanfield_configs(quick: bool, small: bool = False):
    """The ``--auto`` search and ``--share`` settings of the mean-field rows; ``small``: a
    narrower search (ResNet-20: each validation runs the network 16 times on every input)."""
    from qbnn.pipeline.compress import AutoConfig, ShareConfig

    if small:
        auto = AutoConfig(fractions=(0.05, 0.25, 1.0), snr=(0.0, 0.5, 1.0), match=(0.8,),
                          sigma_bits=(0,), max_trials=2 if quick else 9)  # fmt: skip
    else:
        auto = AutoConfig(fractions=(0.05, 0.25, 1.0, 4.0), snr=(0.0, 0.5, 1.0, 2.0),
                          match=(0.8, 1.0, 0.0), sigma_bits=(4, 0),
                          max_trials=2 if quick else 40)  # fmt: skip
    shares = [ShareConfig(k=1.0, sigma_bits=0), ShareConfig(k=1.0, sigma_bits=4),
              ShareConfig(k=2.0, sigma_bits=4)]  # fmt: skip
    return auto, shares[:1] if quick else shares


def _compress_rows(fp32: Path, d: Path, vcfg, args, label: str, small: bool = False) -> dict:
    """``--auto`` and ``--share`` rows of one mean-field (``weight``-mode) export."""
    from qbnn.pipeline.compress import compress
    from qbnn.pipeline.validate import validate
    from qbnn.runtimes.errors import QuantizationError

    auto_cfg, shares = _meanfield_configs(args.quick, small)
    fp32_bytes = fp32.stat().st_size
    rep = validate({"fp32": fp32}, d / "test.npz", ood=d / "ood.npz", config=vcfg)
    rows = [{"model": f"fp32 ({label}, weight mode)", "relative_bops": 1.0,
             "size_bytes": fp32_bytes, "size_vs_fp32": 1.0, "size_vs_int8": None,
             "gates_passed": None, "gates": {}, **_metrics(rep, "fp32")}]  # fmt: skip
    search, plan, layers = [], None, []
    try:
        auto = compress(fp32, d / "mf_auto.onnx", auto=auto_cfg, calib=d / "mf_calib.npz",
                        data=d / "test.npz", ood=d / "ood.npz", validate_config=vcfg,
                        log=print)  # fmt: skip
        rows.append(_row("--auto (searched)", auto.result.relative_bops, auto.record,
                         auto.report, "compressed", fp32_bytes, fp32_bytes))  # fmt: skip
        search, plan, layers = auto.record["search"], auto.record["plan"], auto.record["layers"]
    except QuantizationError as exc:  # a failed search is a result too: recorded, not hidden
        rows.append(_failed_row(f"--auto: {exc}"))
    for sh in shares:
        out = compress(fp32, d / "mf_share.onnx", share=sh, data=d / "test.npz",
                       ood=d / "ood.npz", validate_config=vcfg)  # fmt: skip
        sigma = "one per channel" if sh.sigma_bits == 0 else f"{sh.sigma_bits}-bit log grid"
        rows.append(_row(f"--share, k {sh.k:g}, <= {sh.max_unique} mu values/layer, sigma "
                         f"{sigma}", None, out.record, out.report, "compressed", fp32_bytes,
                         fp32_bytes))  # fmt: skip
    return {"label": label, "rows": rows, "search": search, "plan": plan, "layers": layers}


def _meanfield(model, data, d: Path, vcfg, args, label: str) -> dict:
    """The default export (meanfield, weight mode) of the trained digits CNN."""
    import torch

    from qbnn.exporters import export

    fp32 = d / "bnn.weight.onnx"
    export(model, torch.from_numpy(data.x_train[:4]), fp32, seed=args.seed, verify=False)
    np.savez(d / "mf_calib.npz", x=data.x_train[:256])
    return _compress_rows(fp32, d, vcfg, args, label)


def _digits32(x: np.ndarray) -> np.ndarray:
    """Digits ``[N, 1, 8, 8]`` as ResNet-20 inputs ``[N, 3, 32, 32]`` (each pixel 4 x 4, the
    grey channel three times)."""
    big = np.kron(x, np.ones((1, 1, 4, 4), np.float32))
    return np.ascontiguousarray(np.repeat(big, 3, axis=1), np.float32)


def _resnet20(d: Path, args, data) -> dict:
    """Bayesian ResNet-20 (Bayesian-Torch's CIFAR ResNet-20 through ``dnn_to_bnn``,
    benchmarks/zoo.py) trained briefly on the digits 0-7 upscaled to 32 x 32 x 3 (NLL only,
    ``--resnet-epochs``), default export; test digits 0-7, OOD digits 8-9."""
    import sys

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    import zoo

    from qbnn.exporters import export
    from qbnn.pipeline.run import digits
    from qbnn.pipeline.validate import ValidateConfig

    r = d / "resnet20"
    r.mkdir()
    x_train, x_test = _digits32(data.x_train), _digits32(data.x_test)
    n = 64 if args.quick else len(x_train)
    net = zoo.bayesian("resnet20", seed=args.seed)
    digits.train(net, x_train[:n], data.y_train[:n], epochs=args.resnet_epochs, seed=args.seed)
    net.eval()
    fp32 = r / "bnn.weight.onnx"
    export(net, torch.from_numpy(x_train[:2]), fp32, seed=args.seed, verify=False)
    m = args.resnet_n
    np.savez(r / "test.npz", x=x_test[:m], y=data.y_test[:m])
    np.savez(r / "ood.npz", x=_digits32(data.x_ood)[:m])
    np.savez(r / "mf_calib.npz", x=x_train[: 8 if args.quick else 64])
    vcfg = ValidateConfig(num_samples=args.draws, bootstrap=0 if args.quick else 100,
                          mc_repeats=0, provider="cpu")  # fmt: skip
    label = f"ResNet-20, trained {args.resnet_epochs} epoch(s) on digits 32 x 32"
    return _compress_rows(fp32, r, vcfg, args, label, small=True)


def _meanfield_md(rec: dict) -> str:
    lines = []
    for mf in rec["meanfield"]:
        lines += ["", f"## Default export (meanfield, `weight` mode): {mf['label']}", "",
                  "| model | relative BOPs | bytes | vs fp32 | accuracy | ECE | OOD AUROC (MI) "
                  "| gates |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in mf["rows"]:
            verdict = _verdict(r)
            lines.append(
                f"| {r['model']} | {_f(r['relative_bops'])} | {r['size_bytes']} | "
                f"{r['size_vs_fp32']:.3f} | {_f(r.get('accuracy'))} | {_f(r.get('ece'))} | "
                f"{_f(r.get('ood_auroc_mi'))} | {verdict} |"
            )
        if mf["layers"]:
            lines += ["", "| layer | w bits | a bits | route | unique | bytes | note |",
                      "|---|---|---|---|---|---|---|"]  # fmt: skip
            for lay in mf["layers"]:
                lines.append(f"| {lay['name']} | {lay['weight_bits']} | {lay['act_bits']} | "
                             f"{lay['route']} | {lay['unique']} | {lay['bytes']} | "
                             f"{lay['note']} |")  # fmt: skip
        if mf["search"]:
            lines += ["", "| f | SNR | match | relative BOPs | accuracy | ECE | gates |",
                      "|---|---|---|---|---|---|---|"]  # fmt: skip
            for t in mf["search"]:
                verdict = {True: "pass", False: "FAIL", None: "not validated"}[t["passed"]]
                why = "; ".join(t.get("failed") or []) or t.get("skipped") or ""
                lines.append(
                    f"| {t['fraction']:g} | {t['snr']:g} | {t['match']:g} | "
                    f"{t['relative_bops']:.4f} | {_f(t['accuracy'])} | {_f(t['ece'])} | "
                    f"{verdict}{f' ({why})' if why else ''} |"
                )
        auto = next((r for r in mf["rows"] if r["model"].startswith("--auto")), None)
        shares = [r for r in mf["rows"] if r["model"].startswith("--share")]
        ok_auto = bool(auto and auto["gates_passed"] and (auto["relative_bops"] or 1) <= 0.03)
        best = min((r for r in shares if r["gates_passed"]), key=lambda r: r["size_vs_fp32"],
                   default=None)  # fmt: skip
        ok_share = best is not None and best["size_vs_fp32"] <= 0.15
        lines += [
            "",
            f"Targets ({mf['label']}): `--auto` <= 3 % relative BOPs with every gate "
            f"passing: **{'met' if ok_auto else 'missed'}**"
            + (f" ({auto['relative_bops']:.4f})" if auto and auto["relative_bops"] else "")
            + f"; `--share` <= 0.15x fp32 with every gate passing: "
            f"**{'met' if ok_share else 'missed'}**"
            + (f" ({best['size_vs_fp32']:.3f}x, {best['model']})" if best else "")
            + ".",
        ]
    return "\n".join(lines) + "\n"


def _f(v, fmt="{:.4f}") -> str:
    return "" if v is None else fmt.format(v)


def _markdown(rec: dict, wall: float) -> str:
    versions = ", ".join(
        f"{p} {version(p)}" for p in ("torch", "onnxruntime", "onnx", "onnx-neural-compressor")
    )
    lines = [
        f"# Posterior-guided compression on the digits CNN ({rec['date']})",
        "",
        f"Recorded by `benchmarks/compress.py` ({platform.machine()}, {os.cpu_count()} cores, "
        f"shared with other jobs: load average {os.getloadavg()[0]:.1f} at the end; {versions}; "
        f"{wall:.0f} s). Model: the demo's Bayesian CNN (Bayesian-Torch "
        f"Conv2d/LinearReparameterization, {rec['epochs']} epochs on digits 0-7), exported as "
        f"`frozen:{rec['draws']}` ({rec['draws']} posterior draws as initializers). Validation: "
        f"test digits 0-7 (n = 540), OOD digits 8-9, S = {rec['draws']}, the default gates "
        "of `validate` against the fp32 export. Relative BOPs = sum MACs x w_bits x a_bits / "
        "sum MACs x 32 x 32 (Bayesian Bits); `--share` layers compute in fp32 (BOPs n/a). "
        "Sizes are whole ONNX files.",
        "",
        "| model | relative BOPs | bytes | vs fp32 | vs int8 | max unique/layer | accuracy | "
        "ECE | OOD AUROC (MI) | gates |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rec["rows"]:
        verdict = _verdict(r)
        lines.append(
            f"| {r['model']} | {_f(r['relative_bops'])} | {r['size_bytes']} | "
            f"{r['size_vs_fp32']:.3f} | {r['size_vs_int8']:.3f} | "
            f"{_f(r.get('max_unique_per_layer'), '{}')} | {_f(r['accuracy'])} | {_f(r['ece'])} | "
            f"{_f(r['ood_auroc_mi'])} | {verdict} |"
        )
    lines += ["", "## The searched plan (per layer)", "",
              "| layer | w bits | a bits | route | pruned | unique | entropy (bits) | bytes |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for lay in rec["auto_layers"]:
        lines.append(
            f"| {lay['name']} | {lay['weight_bits']} | {lay['act_bits']} | {lay['route']} | "
            f"{lay['pruned_fraction']:.1%} {lay['prune_mode']} | {lay['unique']} | "
            f"{lay['entropy']:.2f} | {lay['bytes']} |"
        )
    lines += [
        "",
        "## The search (validated in order of relative BOPs; the first pass is the answer;",
        "a few more are validated only for the plot)",
        "",
    ]
    lines += ["| f | SNR | match | relative BOPs | accuracy | ECE | gates |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for t in rec["search"]:
        verdict = {True: "pass", False: "FAIL", None: "not validated"}[t["passed"]]
        lines.append(
            f"| {t['fraction']:g} | {t['snr']:g} | {t['match']:g} | {t['relative_bops']:.4f} | "
            f"{_f(t['accuracy'])} | {_f(t['ece'])} | {verdict} |"
        )
    for k, layers in rec["share_layers"].items():
        lines += ["", f"## `--share` with <= {k} values per layer", ""]
        lines += ["| layer | unique | entropy (bits) | bytes | note |", "|---|---|---|---|---|"]
        for lay in layers:
            lines.append(
                f"| {lay['name']} | {lay['unique']} | {lay['entropy']:.2f} | {lay['bytes']} | "
                f"{lay['note']} |"
            )
    lines += ["", "Plot of the search: `compress_search.png` (accuracy and ECE vs relative BOPs)."]
    return "\n".join(lines) + "\n" + _targets(rec)


def _targets(rec: dict) -> str:
    """The issue's targets on this model, met or missed, from the rows above."""
    auto = next(r for r in rec["rows"] if r["model"].startswith("--auto"))
    if auto["relative_bops"] is None:
        return "\n## Targets\n\n- `--auto` found no plan: " + auto["model"] + "\n"
    shares = [r for r in rec["rows"] if r["model"].startswith("--share")]
    passing = [r for r in shares if r["gates_passed"] and r["max_unique_per_layer"] <= 32]
    best = min(passing, key=lambda r: r["size_vs_fp32"], default=None)
    met_auto = auto["relative_bops"] <= 0.03 and auto["gates_passed"]
    lines = [
        "",
        "## Targets",
        "",
        f"- Posterior-planned mixed precision, relative BOPs <= 3 % with every gate passing: "
        f"**{'met' if met_auto else 'missed'}** ({auto['relative_bops']:.4f}).",
    ]
    if best is None:
        lines.append(
            "- Weight sharing, <= 32 values per layer with every gate passing: **missed**."
        )
    else:
        size_ok = best["size_vs_fp32"] <= 0.15
        lines.append(
            f"- Weight sharing, <= 32 values per layer with every gate passing: **met** "
            f"({best['model']}); file <= 0.15x fp32: **{'met' if size_ok else 'missed'}** "
            f"({best['size_vs_fp32']:.3f}x: 4-bit indices are 0.125x of the weights, and the "
            "graph, the fp32 biases and the codebook lookups add the rest)."
        )
    lines.append("- Default export and Bayesian ResNet-20: see the sections below.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
