"""Partially stochastic networks: qbnn's default export against the deterministic network run
once, measured side by side in one interleaved run (issue 21).

Contenders per (model, batch, S) cell, 2 threads, the same inputs:
  qbnn         the default export (``posterior="auto"``, default sampling mode), fp32, provider
               ``auto``: one ``session.run`` for all S samples, with the exporter's split passes
  qbnn_nosplit the same export with the split passes turned off (``split=False``): the graph
               qbnn wrote before issue 21, where the whole network runs once per MC sample
  det_once     the deterministic network (same weights, no noise) in PyTorch, one pass: the floor
  ort_det_once the same deterministic network as plain ONNX in ONNX Runtime (same provider rule):
               ONNX Runtime's own floor, which separates the split's cost from kernel speed
  eager_S      the Bayesian network in PyTorch eager, S forward passes (K member passes for exact
               posteriors: ``frozen:K`` and ensembles evaluate their K members whatever S is)
ONNX Runtime thread spinning is off so that idle ORT workers do not steal the CPU from the torch
contenders. Rounds rotate the contender order (see ``peers.time_cell``).
Usage: chrt -f 10 python benchmarks/partial.py [--quick] [--models a,b] [--out partial]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import partial_models as pm
import peers
import torch
from torch import nn

from qbnn.pipeline.bench.environment import cpu_model
from qbnn.runtimes import Predictor, PredictorOptions, SessionOptions

CACHE = Path("/tmp/qbnn-bench-partial")
#: (model, export sampling or None for the default, S values measured)
MODELS = {
    "bt_head_r20": (None, 32),
    "dropout_head_r20": (None, 32),
    "vgg_lastblock": (None, 32),
    "bt_lastblock_r20": (None, 32),
    "dropout_mobile": (None, 32),
    "bt_head_seq": (None, 32),
    "lrt_bt_head_r20": ("lrt", 32),
    "frozen8_bt_head_r20": ("frozen:8", 8),
    "multihead_ens": (None, 4),
    "resnet20_full": (None, 8),
}
BATCHES = (32, 1)


def _export(name: str, bnn, shape, sampling: str | None, split: bool) -> Path:
    from qbnn.exporters import export

    path = CACHE / f"{name}.{'split' if split else 'nosplit'}.onnx"
    CACHE.mkdir(parents=True, exist_ok=True)
    x = torch.from_numpy(pm.inputs(shape, 4))
    kwargs = {"sampling": sampling} if sampling else {}
    export(bnn, x, path, verify=False, split=split, **kwargs)
    return path


def _ort(path: Path, x: np.ndarray, s: int):
    opts = PredictorOptions(session=SessionOptions(config_entries=peers.NO_SPIN))
    pred = Predictor(path, provider="auto", threads=2, seed=0, options=opts)
    feed = {"input": x, "num_samples": np.array(s, dtype=np.int64)}
    if not pred.info.takes_num_samples:
        feed = {pred.info.input_name: x}
    return (lambda: pred.session.run(None, feed)), pred.provider


def _plain(name: str, det, shape) -> Path:
    from qbnn.exporters.plain import export_plain

    path = CACHE / f"{name}.det.onnx"
    return export_plain(det, torch.from_numpy(pm.inputs(shape, 4)), path)


def _eager(bnn, x: np.ndarray, passes: int):
    xt = torch.from_numpy(x)
    members = bnn if isinstance(bnn, list) else [bnn] * passes
    for m in members:
        m.eval()
        for d in m.modules():  # MC dropout: dropout sampling, BatchNorm in eval
            if isinstance(d, nn.Dropout):
                d.train()

    def run() -> None:
        with torch.no_grad():
            for m in members:
                m(xt)

    return run


def _det(det, x: np.ndarray):
    xt = torch.from_numpy(x)

    def run() -> None:
        with torch.no_grad():
            det(xt)

    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one model, short budget")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", default="partial")
    args = ap.parse_args()
    torch.set_num_threads(2)
    names = ["dropout_head_r20"] if args.quick else args.models.split(",")
    rows = []
    t_start = time.time()
    for name in names:
        sampling, s = MODELS[name]
        det, bnn, shape = pm.build(name)
        paths = {split: _export(name, bnn, shape, sampling, split) for split in (True, False)}
        plain = _plain(name, det, shape)
        for batch in BATCHES:
            x = pm.inputs(shape, batch)
            runners, provider = {}, {}
            for split, label in ((True, "qbnn"), (False, "qbnn_nosplit")):
                runners[label], provider[label] = _ort(paths[split], x, s)
            runners["det_once"] = _det(det, x)
            runners["ort_det_once"], provider["ort_det_once"] = _ort(plain, x, 1)
            passes = len(bnn) if isinstance(bnn, list) else (8 if sampling == "frozen:8" else s)
            runners["eager_S"] = _eager(bnn, x, passes)
            times = peers.time_cell(runners, budget_s=0.4 if args.quick else 1.5)
            ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
            row = {"model": name, "sampling": sampling or "default", "batch": batch, "S": s,
                   "provider": provider["qbnn"], "ms": ms,
                   "nodes": {k: _nodes(p) for k, p in (("split", paths[True]),
                                                        ("nosplit", paths[False]))},
                   "flops_once": _flops_once(paths[True], batch, s)}  # fmt: skip
            rows.append(row)
            print(_line(row), flush=True)
    _write(rows, time.time() - t_start, args.out)


def _nodes(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


def _flops_once(path: Path, batch: int, s: int) -> float:
    """Fraction of the split graph's FLOPs that run once per call (``split_report``)."""
    import onnx

    from qbnn.runtimes import split_report

    return split_report(onnx.load(str(path)), batch, s).fraction_once


def _line(r: dict) -> str:
    ms = r["ms"]
    return (
        f"| {r['model']} | {r['sampling']} | {r['batch']} | {r['S']} | {r['provider']} | "
        f"{100 * r['flops_once']:.1f} % | "
        f"{ms['qbnn']:.1f} | {ms['qbnn_nosplit']:.1f} | {ms['det_once']:.1f} | "
        f"{ms['eager_S']:.1f} | {ms['ort_det_once']:.1f} | {ms['qbnn'] / ms['det_once']:.2f}x | "
        f"{ms['qbnn'] / ms['ort_det_once']:.2f}x | "
        f"{ms['eager_S'] / ms['qbnn']:.1f}x | {ms['qbnn_nosplit'] / ms['qbnn']:.2f}x |"
    )


def _write(rows: list[dict], seconds: float, out: str) -> None:
    peers.RESULTS.mkdir(exist_ok=True)
    (peers.RESULTS / f"{out}.json").write_text(json.dumps(rows, indent=1))
    import onnxruntime as ort

    lines = [
        f"# Partially stochastic networks ({time.strftime('%Y-%m-%d')})",
        "",
        f"`benchmarks/partial.py`; onnxruntime {ort.__version__}, torch {torch.__version__}, "
        f"2 threads, ORT spinning off, median ms per call. CPU: {cpu_model()}, "
        f"{peers._cpu_flags()}. Scheduling: {peers._scheduling()}. {seconds:.0f} s in all.",
        "",
        "qbnn = default export with the split passes; nosplit = the same export without them "
        "(the whole network per MC sample, as before issue 21); FLOPs run once = "
        "`qbnn.runtimes.split_report` of the qbnn graph at that batch and S; det once = the "
        "deterministic torch network, one pass; eager S = the Bayesian torch network, S passes "
        "(K member passes for exact posteriors); ORT det once = the deterministic network as "
        "plain ONNX in ONNX Runtime, one pass (ONNX Runtime's floor: qbnn / ORT det once is "
        "the cost of the posterior alone, apart from kernel speed).",
        "",
        "| model | sampling | batch | S | provider | FLOPs run once | qbnn ms | nosplit ms | "
        "det once ms | eager S ms | ORT det once ms | qbnn / det once | qbnn / ORT det once | "
        "eager S / qbnn | nosplit / qbnn |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[_line(r) for r in rows],
    ]
    (peers.RESULTS / f"{out}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {peers.RESULTS / out}.md")


if __name__ == "__main__":
    main()
