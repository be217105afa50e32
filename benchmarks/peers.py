"""qbnn vs its peers, measured side by side in one interleaved run on this machine.

Contenders per (model, batch, S) cell, all with 2 threads and the same inputs:
  bt_fp32   Bayesian-Torch fp32 eager: S forward passes in a loop, as its users run MC
  bt_int8   Bayesian-Torch's own int8 QBNN (prepare / calibrate / convert, x86 engine)
  det_fp32  the deterministic network in PyTorch, one pass (the floor; S does not apply)
  qbnn      fp32 and INC int8 ONNX graphs per sampling mode, one session.run for all S
Models have random weights (fine for speed). ONNX Runtime thread spinning is off so that idle
ORT workers do not steal the CPU from the torch contenders. Rounds rotate the contender order
so machine drift hits all alike; repeats adapt to ~1.5 s per contender (3..15), and a
contender whose first run exceeds 8 s is timed once.
Usage: python benchmarks/peers.py [--quick] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import bt_qbnn
import numpy as np
import onnxruntime as ort
import torch
import zoo

from qbnn.runtimes import Predictor, PredictorOptions, SessionOptions, available_providers

RESULTS = Path(__file__).parent / "results"
NOTES: list[str] = []
NO_SPIN = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}
CELLS = [("resnet20", 1, 1), ("resnet20", 32, 1), ("resnet20", 32, 8), ("resnet20", 32, 32),
         ("resnet50", 8, 1), ("digits_mlp", 32, 8)]  # fmt: skip
MODES = {
    "resnet20": ("weight", "lrt", "frozen:8"),
    "resnet50": ("lrt",),
    "digits_mlp": ("weight", "lrt", "frozen:8"),
}


def _torch_runner(model, x: np.ndarray, s: int, loop: bool):
    xt = torch.from_numpy(x)

    def run() -> None:
        with torch.no_grad():
            for _ in range(s if loop else 1):
                model(xt)

    return run


def _ort_runner(path: Path, x: np.ndarray, s: int, provider: str):
    # No spinning: idle ORT worker threads would otherwise steal the CPU from the torch
    # contenders interleaved with them.
    opts = PredictorOptions(session=SessionOptions(config_entries=NO_SPIN))
    pred = Predictor(path, provider=provider, threads=2, seed=0, options=opts)
    feed = {"input": x, "num_samples": np.array(s, dtype=np.int64)}
    if not pred.info.takes_num_samples:
        feed.pop("num_samples")
    return lambda: pred.session.run(None, feed)


def contenders(name: str, batch: int, s: int, cache: Path, providers) -> dict:
    x = zoo.inputs(name, batch)
    out = {"det_fp32": _torch_runner(zoo.deterministic(name), x, s, loop=False)}
    bnn = zoo.bayesian(name)
    out["bt_fp32"] = _torch_runner(bnn, x, s, loop=True)
    try:
        calib = torch.from_numpy(zoo.inputs(name, 32, seed=1))
        out["bt_int8"] = _torch_runner(bt_qbnn.bt_int8(bnn, calib, engine="x86"), x, s, True)
    except RuntimeError as exc:
        msg = str(exc).split(" is only available for these backends")[0]
        NOTES.append(f"{name}: Bayesian-Torch int8 unavailable: {msg}")
        print(f"  bt_int8 unavailable: {msg}")
    for mode in MODES[name]:
        if mode.startswith("frozen") and s != int(mode.split(":")[1]):
            continue  # frozen:K always evaluates its K members: only meaningful at S = K
        fp32 = zoo.exported(name, mode, cache)
        int8 = zoo.quantized(fp32, name)
        for prov in providers:
            out[f"qbnn_{mode}_fp32[{prov}]"] = _ort_runner(fp32, x, s, prov)
            out[f"qbnn_{mode}_int8[{prov}]"] = _ort_runner(int8, x, s, prov)
    return out


def time_cell(runners: dict, budget_s: float = 1.5) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in runners}
    first = {}
    for k, fn in runners.items():  # warm-up run, also sizes the repeats
        t0 = time.perf_counter()
        fn()
        first[k] = time.perf_counter() - t0
    repeats = {
        k: 1 if t > 8 else max(3, min(15, int(budget_s / max(t, 1e-4)))) for k, t in first.items()
    }
    names = list(runners)
    for r in range(max(repeats.values())):
        order = names[r % len(names) :] + names[: r % len(names)]
        for k in order:
            if len(times[k]) < repeats[k]:
                t0 = time.perf_counter()
                runners[k]()
                times[k].append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path, default=Path("/tmp/qbnn-bench-models"))
    ap.add_argument("--quick", action="store_true", help="ResNet-20 (32, 8) cell only")
    args = ap.parse_args()
    torch.set_num_threads(2)
    providers = available_providers()
    cells = [("resnet20", 32, 8)] if args.quick else CELLS
    t_start = time.perf_counter()
    rows = []
    for name, batch, s in cells:
        print(f"== {name} batch {batch} S {s}", flush=True)
        times = time_cell(contenders(name, batch, s, args.cache, providers))
        for k, ts in times.items():
            med = statistics.median(ts)
            rows.append(
                {
                    "model": name,
                    "batch": batch,
                    "samples": s,
                    "contender": k,
                    "runs": len(ts),
                    "median_ms": med * 1e3,
                    "images_per_s": batch / med,
                }
            )
            print(
                f"  {k:28s} {med * 1e3:10.1f} ms  {batch / med:10.1f} img/s  ({len(ts)} runs)",
                flush=True,
            )
    write(rows, providers, time.perf_counter() - t_start)


def write(rows: list[dict], providers, seconds: float) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "peers.json").write_text(json.dumps(rows, indent=1))
    lines = [
        f"# qbnn vs peers ({time.strftime('%Y-%m-%d')}, {seconds / 60:.1f} min)",
        "",
        f"torch {torch.__version__}, onnxruntime {ort.__version__}, providers "
        f"{providers}, 2 threads, random weights. images/s counts each input once.",
        "",
    ]
    for name, batch, s in dict.fromkeys((r["model"], r["batch"], r["samples"]) for r in rows):
        cell = [r for r in rows if (r["model"], r["batch"], r["samples"]) == (name, batch, s)]
        bt = next((r["images_per_s"] for r in cell if r["contender"] == "bt_fp32"), None)
        lines += [
            f"## {name}, batch {batch}, S {s}",
            "",
            "| contender | median ms | images/s | vs bt_fp32 |",
            "|---|---|---|---|",
        ]
        for r in sorted(cell, key=lambda r: -r["images_per_s"]):
            ratio = f"{r['images_per_s'] / bt:.2f}x" if bt else "-"
            lines.append(
                f"| {r['contender']} | {r['median_ms']:.1f} | {r['images_per_s']:,.1f} | {ratio} |"
            )
        lines.append("")
    lines += ["## Notes", ""] + [f"- {n}" for n in NOTES]
    (RESULTS / "peers.md").write_text("\n".join(lines) + "\n")
    print(f"-> {RESULTS / 'peers.md'}")


if __name__ == "__main__":
    main()
