"""The measurement behind ``auto``'s provider rule (``qbnn/runtimes/autorule.py``).

Short probe, not a benchmark run: every qbnn graph kind x every available provider, one
interleaved round-robin per cell, 5-15 timed ``session.run`` calls each, 2 threads. The table
gives the median and the best (minimum) time; the rule is read from the best times, which are
the least disturbed by other processes on a shared machine (the medians are shown beside them).

Graphs (random weights, fine for speed): a tiny dense BNN (``tests/tiny_models.bayes_mlp``,
6-16-3), the digits-size Bayesian MLP (64-256-256-10) and Bayesian ResNet-20 (``dnn_to_bnn``),
each in the ``frozen:8``, ``lrt`` and ``weight`` sampling modes, fp32 and INC int8 QDQ (and
QOperator on ONNX Runtime, the only provider that runs it). Cells: batch 32 and batch 1, S = 8.
ONNX Runtime's thread spinning is off so idle ORT workers do not steal the CPU from the
OpenVINO runs interleaved with them.

Usage: python benchmarks/provider_rule.py [--cache DIR] [--budget SECONDS]
Writes benchmarks/results/provider_rule.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import openvino as ov
import torch
import zoo

from qbnn.runtimes import Predictor, PredictorOptions, SessionOptions, available_providers
from qbnn.runtimes.errors import ModelLoadError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_models import bayes_mlp  # noqa: E402

RESULTS = Path(__file__).parent / "results"
NOTES: list[str] = []
NO_SPIN = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}
MODELS = ("tiny_mlp", "digits_mlp", "resnet20")
MODES = ("frozen:8", "lrt", "weight")
CELLS = ((32, 8), (1, 8))
SHAPES = {**zoo.SHAPES, "tiny_mlp": (6,)}


def _stamp(cache: Path) -> str:
    """The qbnn commit the cached graphs were exported with (stamped on first export)."""
    stamp = cache / "EXPORTED_AT"
    if not stamp.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        stamp.write_text(_commit())
    return stamp.read_text().strip()


def _export(name: str, mode: str, cache: Path) -> Path:
    if name != "tiny_mlp":
        return zoo.exported(name, mode, cache)
    from qbnn.exporters import export

    path = cache / f"tiny_mlp.{mode.replace(':', '_')}.fp32.onnx"
    if not path.is_file():
        x = torch.from_numpy(_inputs(name, 2))
        export(bayes_mlp(), x, path, sampling=mode, num_samples=8, verify=False)
    return path


def _inputs(name: str, batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, *SHAPES[name])).astype(np.float32)


def _quantized(src: Path, name: str, fmt: str) -> Path:
    if name != "tiny_mlp":
        return zoo.quantized(src, name, fmt=fmt)
    from qbnn.pipeline.quantize import CalibrationConfig, QuantConfig, quantize_model

    dst = src.with_name(src.name.replace(".fp32.", f".int8-{fmt}."))
    if not dst.is_file():
        cfg = QuantConfig(format=fmt, calibration=CalibrationConfig(size=64, batch_size=16))
        quantize_model(src, dst, cfg, calib=_inputs(name, 64, seed=1))
    return dst


def _runner(path: Path, provider: str, x: np.ndarray, s: int):
    opts = PredictorOptions(session=SessionOptions(config_entries=NO_SPIN))
    pred = Predictor(path, provider=provider, threads=2, seed=0, options=opts)
    feed = {"input": x, "num_samples": np.array(s, dtype=np.int64)}
    return lambda: pred.session.run(None, feed)


def contenders(name: str, batch: int, s: int, cache: Path, providers: list[str]) -> dict:
    x = _inputs(name, batch)
    out = {}
    for mode in MODES:
        fp32 = _export(name, mode, cache)
        graphs = {"fp32": fp32, "qdq": _quantized(fp32, name, "qdq")}
        graphs["qoperator"] = _quantized(fp32, name, "qoperator")
        for kind, path in graphs.items():
            for prov in providers:
                if kind == "qoperator" and prov == "openvino":
                    continue  # OpenVINO does not convert QOperator graphs
                try:
                    out[(name, mode, kind, prov)] = _runner(path, prov, x, s)
                except ModelLoadError as exc:
                    NOTES.append(f"{name} {mode} {kind} on {prov}: {exc}")
                    print(f"  {mode} {kind} {prov}: {exc}", flush=True)
    return out


def time_cell(runners: dict, budget_s: float) -> dict:
    """Warm-up, then round-robin (rotating the start) until each has its repeats (5..15).
    Returns ``{key: (median s, min s)}``."""
    first = {}
    for k, fn in runners.items():
        fn()
        t0 = time.perf_counter()
        fn()
        first[k] = time.perf_counter() - t0
    reps = {k: max(5, min(15, int(budget_s / max(t, 1e-5)))) for k, t in first.items()}
    times: dict = {k: [] for k in runners}
    names = list(runners)
    for r in range(max(reps.values())):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            if len(times[k]) < reps[k]:
                t0 = time.perf_counter()
                runners[k]()
                times[k].append(time.perf_counter() - t0)
    return {k: (statistics.median(v), min(v)) for k, v in times.items()}


def _cpu_flags() -> str:
    flags = next(
        (ln.split(":", 1)[1].split() for ln in Path("/proc/cpuinfo").read_text().splitlines()
         if ln.startswith("flags")), [],
    )  # fmt: skip
    keep = [f for f in flags if f.startswith(("avx", "amx")) or "vnni" in f or "bf16" in f]
    return " ".join(sorted(keep)) or "unknown"


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _summary(rows: list[dict]) -> list[str]:
    """In how many cells ONNX Runtime's CPU EP is faster or within 5 % (best times), and the
    cells where OpenVINO is faster (best and median ratios)."""
    cells: dict = {}
    for r in rows:
        cells.setdefault((r["model"], r["batch"], r["mode"], r["graph"]), {})[r["provider"]] = r
    both = [c for c in cells.values() if {"cpu", "openvino"} <= set(c)]
    level = [c for c in both if c["cpu"]["min_ms"] <= 1.05 * c["openvino"]["min_ms"]]
    lines = [f"- CPU EP faster or within 5 % (best times): {len(level)} of {len(both)} cells."]
    for c in both:
        if c not in level:
            r, o = c["cpu"], c["openvino"]
            lines.append(
                f"- OpenVINO faster: {r['model']} batch {r['batch']} {r['mode']} {r['graph']} "
                f"(CPU EP / OpenVINO: best {r['min_ms'] / o['min_ms']:.2f}, median "
                f"{r['median_ms'] / o['median_ms']:.2f})"
            )
    return lines


def write(rows: list[dict], providers: list[str], minutes: float, load: tuple, cache: Path):
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "provider_rule.json").write_text(json.dumps(rows, indent=1))
    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    lines = [
        f"# Provider rule probe ({time.strftime('%Y-%m-%d')}, {minutes:.1f} min)",
        "",
        f"onnxruntime {ort.__version__}, openvino {ov.get_version().split('-')[0]}, torch "
        f"{torch.__version__}, python {platform.python_version()}, qbnn commit {_commit()} "
        f"(graphs exported at {_stamp(cache)}); "
        f"providers {providers}; 2 threads; CPU flags: {_cpu_flags()}; OpenVINO CPU "
        f"capabilities: {caps}. Milliseconds of one session.run (S samples of the whole batch), "
        "best / median. "
        f"Load average (1 min) at start / end: {load[0]:.2f} / {os.getloadavg()[0]:.2f}.",
        "",
        "## Summary",
        "",
        *_summary(rows),
        "",
    ]
    for name, batch, s in dict.fromkeys((r["model"], r["batch"], r["samples"]) for r in rows):
        cell = [r for r in rows if (r["model"], r["batch"], r["samples"]) == (name, batch, s)]
        lines += [
            f"## {name}, batch {batch}, S {s}",
            "",
            "| mode | graph | "
            + " | ".join(f"{p} ms best / median" for p in providers)
            + " | cpu / openvino (best) |",
            "|---|---|" + "---|" * (len(providers) + 1),
        ]
        for mode, kind in dict.fromkeys((r["mode"], r["graph"]) for r in cell):
            ms = {r["provider"]: r for r in cell if (r["mode"], r["graph"]) == (mode, kind)}
            vals = " | ".join(
                f"{ms[p]['min_ms']:.2f} / {ms[p]['median_ms']:.2f}" if p in ms else "-"
                for p in providers
            )
            both = {"cpu", "openvino"} <= set(ms)
            ratio = f"{ms['cpu']['min_ms'] / ms['openvino']['min_ms']:.2f}" if both else "-"
            lines.append(f"| {mode} | {kind} | {vals} | {ratio} |")
        lines.append("")
    lines += ["## Notes", ""] + [f"- {n}" for n in dict.fromkeys(NOTES)] if NOTES else []
    (RESULTS / "provider_rule.md").write_text("\n".join(lines) + "\n")
    print(f"-> {RESULTS / 'provider_rule.md'}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path, default=Path("/tmp/qbnn-rule-models"))
    ap.add_argument("--budget", type=float, default=1.0, help="seconds per contender per cell")
    args = ap.parse_args()
    torch.set_num_threads(2)
    providers = [p for p in available_providers() if p in ("cpu", "openvino")]
    t_start, load = time.perf_counter(), os.getloadavg()
    _stamp(args.cache)
    rows = []
    for name in MODELS:
        for batch, s in CELLS:
            print(f"== {name} batch {batch} S {s}", flush=True)
            timed = time_cell(contenders(name, batch, s, args.cache, providers), args.budget)
            for (model, mode, kind, prov), (med, best) in timed.items():
                rows.append({"model": model, "mode": mode, "graph": kind, "provider": prov,
                             "batch": batch, "samples": s, "median_ms": med * 1e3,
                             "min_ms": best * 1e3})  # fmt: skip
                print(f"  {mode:9s} {kind:9s} {prov:9s} best {best * 1e3:9.2f} median "
                      f"{med * 1e3:9.2f} ms", flush=True)  # fmt: skip
    write(rows, providers, (time.perf_counter() - t_start) / 60, load, args.cache)


if __name__ == "__main__":
    main()
