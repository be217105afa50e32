"""``compress.json`` / ``compress.md`` and the search plots.

``compress.json`` stable keys: ``relative_bops`` (float, or null for ``--share``, where the ops
run in fp32), ``unique_weights`` (distinct weight values summed over layers),
``max_unique_per_layer``, ``size_bytes`` (output file), ``fp32_bytes`` (input file),
``size_vs_fp32``, ``int8_bytes_estimate`` (the input with every layer weight stored in 8 bits)
and ``size_vs_int8``, ``gates_passed`` (true / false, or null when no ``--data`` was given),
``gates`` (``[{name, status, value, limit}]``), ``layers`` (per layer: bits, route, pruned
fraction, unique values, entropy in bits per weight, bytes), ``plan`` / ``share`` and
``search`` (every tried plan: relative BOPs, accuracy, ECE, verdict).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..common import atomic_path, pyplot, save_png
from .auto import Trial
from .deploy import CompressResult

__all__ = [
    "compress_record",
    "failed_gates",
    "gate_verdict",
    "save_search_plot",
    "to_markdown",
    "write_compress_report",
    "write_failed_search",
]


def compress_record(
    res: CompressResult,
    *,
    weight_bytes_fp32: int,
    gates: list[Any] | None = None,
    trials: list[Trial] | None = None,
) -> dict[str, Any]:
    """The ``compress.json`` content (see the module docstring)."""
    int8_est = res.fp32_bytes - (weight_bytes_fp32 * 3) // 4
    return {
        "mode": res.mode,
        "model": str(res.path),
        "relative_bops": res.relative_bops,
        "unique_weights": res.unique_weights,
        "max_unique_per_layer": res.max_unique_per_layer,
        "size_bytes": res.size_bytes,
        "fp32_bytes": res.fp32_bytes,
        "size_vs_fp32": res.size_bytes / res.fp32_bytes,
        "int8_bytes_estimate": int8_est,
        "size_vs_int8": res.size_bytes / int8_est if int8_est > 0 else None,
        "gates_passed": None if gates is None else all(g.passed is not False for g in gates),
        "gates": [
            {"name": g.name, "status": g.status, "value": g.value, "limit": g.limit}
            for g in gates or []
        ],
        "layers": [asdict(lay) for lay in res.layers],
        "plan": None if res.plan is None else res.plan.to_dict(),
        "share": None if res.share is None else asdict(res.share),
        "search": [
            {
                "fraction": t.fraction,
                "snr": t.snr,
                "match": t.match,
                "sigma_bits": t.sigma_bits,
                "relative_bops": t.relative_bops,
                "size_bytes": t.size_bytes,
                "accuracy": t.accuracy,
                "ece": t.ece,
                "passed": t.passed,
                "failed": list(t.failed),
                "skipped": t.skipped,
            }
            for t in trials or []
        ],
    }


def to_markdown(rec: dict[str, Any]) -> str:
    """A human-readable summary of a ``compress.json`` record."""
    rel = rec["relative_bops"]
    lines = [
        f"# compress ({rec['mode']})",
        "",
        f"- relative BOPs: {'n/a (fp32 ops)' if rel is None else f'{rel:.4f}'}",
        f"- unique weights: {rec['unique_weights']} (max per layer {rec['max_unique_per_layer']})",
        f"- size: {rec['size_bytes']} bytes = {rec['size_vs_fp32']:.3f}x fp32"
        + (f", {rec['size_vs_int8']:.3f}x int8 (estimate)" if rec["size_vs_int8"] else ""),
        f"- gates passed: {rec['gates_passed']}",
        "",
        "| layer | w bits | a bits | route | pruned | unique | entropy (bits) | bytes | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for lay in rec["layers"]:
        lines.append(
            f"| {lay['name']} | {lay['weight_bits']} | {lay['act_bits']} | {lay['route']} | "
            f"{lay['pruned_fraction']:.1%} {lay['prune_mode']} | {lay['unique']} | "
            f"{lay['entropy']:.2f} | {lay['bytes']} | {lay['note']} |"
        )
    if rec["gates"]:
        lines += ["", "| gate | status | value | limit |", "|---|---|---|---|"]
        for g in rec["gates"]:
            v = "" if g["value"] is None else f"{g['value']:.4g}"
            lines.append(f"| {g['name']} | {g['status']} | {v} | {g['limit']} |")
    lines += _search_table(rec["search"])
    return "\n".join(lines) + "\n"


def _search_table(search: list[dict[str, Any]]) -> list[str]:
    """Markdown lines of the search trials (none when there were none)."""
    lines: list[str] = []
    if not search:
        return lines
    lines += [
        "",
        "| f | snr | match | relative BOPs | accuracy | ECE | gates |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in search:
        acc = "" if t["accuracy"] is None else f"{t['accuracy']:.4f}"
        ece = "" if t["ece"] is None else f"{t['ece']:.4f}"
        verdict = {True: "pass", False: "FAIL", None: "not validated"}[t["passed"]]
        if t.get("failed"):
            verdict += f" ({'; '.join(t['failed'])})"
        elif t.get("skipped"):
            verdict += f" ({t['skipped']})"
        lines.append(
            f"| {t['fraction']:g} | {t['snr']:g} | {t['match']:g} | {t['relative_bops']:.4f} | "
            f"{acc} | {ece} "
            f"| {verdict} |"
        )
    return lines


def save_search_plot(trials: list[Trial], path: Path) -> Path | None:
    """Accuracy and ECE vs relative BOPs of the validated trials (matplotlib PNG)."""
    pts = [t for t in trials if t.accuracy is not None]
    if not pts:
        return None
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, label in ((axes[0], "accuracy", "accuracy"), (axes[1], "ece", "ECE")):
        for ok, marker, color in ((True, "o", "tab:green"), (False, "x", "tab:red")):
            sel = [t for t in pts if bool(t.passed) == ok]
            xs = [t.relative_bops * 100 for t in sel]
            label_ = "gates pass" if ok else "gates fail"
            ax.scatter(xs, [getattr(t, key) for t in sel], marker=marker, color=color, label=label_)
        ax.set_xlabel("relative BOPs (% of fp32)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    return save_png(fig, path, dpi=100, bbox_inches=None)


def write_compress_report(rec: dict[str, Any], out_dir: str | Path, trials=None) -> list[Path]:
    """Write ``compress.json``, ``compress.md`` and ``search.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with atomic_path(out / "compress.json") as tmp:
        tmp.write_text(json.dumps(rec, indent=2, allow_nan=False) + "\n")
    written.append(out / "compress.json")
    with atomic_path(out / "compress.md") as tmp:
        tmp.write_text(to_markdown(rec))
    written.append(out / "compress.md")
    plot = save_search_plot(trials or [], out / "search.png")
    if plot is not None:
        written.append(plot)
    return written


def _limit(limit) -> str:
    """A gate limit as people read it: ``0.01``, ``[0.8, 1.25]``, ``<= 1.05`` or ``>= 0.8``."""
    if not isinstance(limit, (tuple, list)):
        return f"{limit}"
    lo, hi = limit
    if lo is None:
        return "-" if hi is None else f"<= {hi}"
    return f">= {lo}" if hi is None else f"[{lo}, {hi}]"


def _gate(name: str, value: float | None, limit) -> str:
    return f"{name} {'n/a' if value is None else f'{value:.4g}'} (limit {_limit(limit)})"


def failed_gates(gates) -> tuple[str, ...]:
    """Each failing gate of a ``validate`` verdict as ``name value (limit)``."""
    return tuple(_gate(g.name, g.value, g.limit) for g in gates if g.passed is False)


def gate_verdict(rec: dict[str, Any], model: str) -> str | None:
    """One line for a ``compress.json`` record: ``gates (N against MODEL): all pass`` or
    ``... FAIL name value (limit); ...``; None when no gates were run."""
    if rec.get("gates_passed") is None:
        return None
    failed = [_gate(g["name"], g["value"], g["limit"]) for g in rec["gates"]
              if g["status"] == "FAIL"]  # fmt: skip
    verdict = "all pass" if not failed else "FAIL " + "; ".join(failed)
    return f"gates ({len(rec['gates'])} against {model}): {verdict}"


def write_failed_search(out_dir: Path, trials: list[Trial], message: str) -> list[Path]:
    """``compress.json`` / ``compress.md`` of a search that found no plan: what was tried and
    why each failed (``gates_passed`` false, no model)."""
    rec = compress_record_search(trials)
    rec["error"] = message
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "compress.json") as tmp:
        tmp.write_text(json.dumps(rec, indent=2, allow_nan=False) + "\n")
    lines = ["# compress (auto): no plan passed the gates", "", message, ""]
    lines += _search_table(rec["search"])
    with atomic_path(out / "compress.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return [out / "compress.json", out / "compress.md"]


def compress_record_search(trials: list[Trial]) -> dict[str, Any]:
    """The ``search`` part of a record alone (a failed search has no model)."""
    fake = CompressResult(Path(""), "auto", None, 0, 1, ())
    rec = compress_record(fake, weight_bytes_fp32=0, trials=trials)
    return {"mode": "auto", "model": None, "gates_passed": False, "search": rec["search"]}
