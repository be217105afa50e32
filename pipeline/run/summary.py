"""The end-of-run table: quality (from ``report.json``) beside speed and size (``bench.json``)."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = [
    "REGRESSION_SUMMARY_COLUMNS",
    "SUMMARY_COLUMNS",
    "speed_notes",
    "summary_columns",
    "summary_rows",
]

SUMMARY_COLUMNS = [
    ("model", "model"), ("accuracy", "accuracy"), ("ece", "ECE"),
    ("ood_auroc_entropy", "OOD AUROC (H)"), ("ood_auroc_mi", "OOD AUROC (MI)"),
    ("referral_needed@0.99", "referral@99%"), ("images_per_s", "images/s"),
    ("size_mb", "size MB"), ("gates", "gates"),
]  # fmt: skip
REGRESSION_SUMMARY_COLUMNS = [
    ("model", "model"), ("rmse", "RMSE"), ("gaussian_nll", "Gaussian NLL"),
    ("picp@0.95", "PICP@95%"), ("mean_variance", "mean variance"), ("images_per_s", "images/s"),
    ("size_mb", "size MB"), ("gates", "gates"),
]  # fmt: skip
_FILES = {"fp32": "model.fp32.onnx", "int8": "model.int8.onnx", "baseline": "baseline.onnx"}


def _fmt(key: str, value) -> str:
    if value is None:
        return "-"
    if key == "size_mb":
        return f"{value:.3f}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _table_cells(root: Path) -> dict[str, tuple[int, int, float]]:
    """``model -> (batch, S, images/s)`` of the benchmark cell the summary shows: the largest
    batch benched, and each model's largest S at that batch. The table's images/s column and
    the int8-vs-fp32 note both read these, so they show the same figures."""
    path = root / "bench" / "bench.json"
    cells = json.loads(path.read_text()).get("cells", []) if path.is_file() else []
    if not cells:
        return {}
    batch = max(c["batch"] for c in cells)
    best: dict[str, tuple[int, float]] = {}
    for c in cells:
        if c["batch"] != batch:
            continue
        key = (c["num_samples"], c["images_per_s"])
        best[c["model"]] = max(best.get(c["model"], key), key)
    return {m: (batch, s, v) for m, (s, v) in best.items()}


def _throughput(root: Path) -> dict[str, str]:
    """images/s per model at the largest batch and the largest S it was benched at."""
    return {m: f"{v:,.0f} (B={b}, S={s})" for m, (b, s, v) in _table_cells(root).items()}


def _report(root: Path) -> dict:
    rep_path = root / "report" / "report.json"
    return json.loads(rep_path.read_text()) if rep_path.is_file() else {"models": []}


def summary_columns(root: str | Path) -> list[tuple[str, str]]:
    """``(key, label)`` columns for a run folder: classification or regression metrics."""
    regression = _report(Path(root)).get("task") == "regression"
    return REGRESSION_SUMMARY_COLUMNS if regression else SUMMARY_COLUMNS


def summary_rows(root: str | Path) -> list[dict[str, str]]:
    """One row per model of a run folder (formatted strings; '-' where not measured)."""
    root = Path(root)
    report = _report(root)
    columns = summary_columns(root)
    speed = _throughput(root)
    gates = report.get("gates", {})
    names = [m["name"] for m in report["models"]] or [
        n for n in _FILES if (root / _FILES[n]).is_file()
    ]
    metrics = {m["name"]: m["metrics"] for m in report["models"]}
    rows = []
    for name in names:
        row = {"model": name}
        for key, _ in columns[1:-3]:
            row[key] = _fmt(key, metrics.get(name, {}).get(key))
        row["images_per_s"] = speed.get(name, "-")
        f = root / _FILES.get(name, f"{name}.onnx")
        row["size_mb"] = _fmt("size_mb", f.stat().st_size / 1e6 if f.is_file() else None)
        if name in gates:
            failed = [g["name"] for g in gates[name] if g.get("passed") is False]
            row["gates"] = "pass" if not failed else "FAIL: " + ", ".join(failed)
        else:
            row["gates"] = "reference" if name == report.get("reference") else "-"
        rows.append(row)
    return rows


def _sampling(path: Path) -> str:
    """``qbnn.sampling`` of a model file ('' when absent or unreadable)."""
    try:
        import onnx

        from qbnn.runtimes.contract import ContractMeta

        sampling = ContractMeta.from_model(onnx.load(str(path), load_external_data=False)).sampling
    except Exception:  # a missing or foreign file: no explanation beyond the generic one
        return ""
    return sampling or ""


def _quantize_speed(root: Path) -> list[str]:
    """The quantize stage's measured line when int8 ran slower than fp32 there."""
    path = root / "manifest.json"
    stages = json.loads(path.read_text()).get("stages", {}) if path.is_file() else {}
    speed = stages.get("quantize", {}).get("speed") or {}
    return [speed["message"]] if speed.get("int8_slower") and speed.get("message") else []


def speed_notes(root: str | Path) -> list[str]:
    """One line for each reason int8 did not run faster than fp32: the quantize stage's own
    measurement (``int8 is slower than fp32 on this CPU for this graph (...)``), then the run's
    benchmark (empty when int8 was faster, or when neither measured both)."""
    root = Path(root)
    return _quantize_speed(root) + _bench_speed(root)


def _bench_speed(root: Path) -> list[str]:
    cells = _table_cells(root)
    if "fp32" not in cells or "int8" not in cells or cells["int8"][2] >= cells["fp32"][2]:
        return []
    (bi, si, int8), (bf, sf, fp32) = cells["int8"], cells["fp32"]
    where = f"B={bi}, S={si}" if (bi, si) == (bf, sf) else f"B={bi}, S={si} vs B={bf}, S={sf}"
    lead = (
        f"int8 ran slower than fp32 here ({int8:,.0f} vs {fp32:,.0f} images/s at {where}, the "
        "table's images/s)"
    )
    mode = _sampling(root / _FILES["int8"])
    if mode == "lrt":
        why = (
            "an lrt graph spends most of its time drawing one normal per activation, which "
            "stays fp32, and a model this small has little convolution work to speed up; int8 "
            "pays on frozen:K graphs and on weight-mode graphs with convolutions "
            "(benchmarks/results/peers.md)"
        )
    else:
        why = (
            "on CPUs without int8 dot-product instructions (VNNI/AMX) int8 kernels gain little "
            "over fp32, and the quantize/dequantize steps around them cost extra "
            "(benchmarks/results/conv_weights.md)"
        )
    return [f"{lead}: {why}"]
