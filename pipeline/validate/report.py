"""The validation report: ``report.json`` (machine-readable), ``report.md`` (side by side), plots.

``report.json`` schema (``version`` "1"); every float is finite or ``null``:

- ``version``: schema version; ``passed``: ``true`` unless some gate failed; ``task``.
- ``config``: the :class:`~qbnn.pipeline.validate.ValidateConfig` as plain data (with ``gates``).
- ``seeds``: ``main`` (Predictor seed of the reported numbers), ``mc`` (all seeds run for the
  MC-noise estimate, main first), ``bootstrap`` (seed of the row resampling).
- ``sample_counts``: ``n`` in-distribution rows, ``n_ood`` OOD rows (or ``null``),
  ``bootstrap`` replicates, ``mc_runs`` runs per stochastic model, ``num_samples`` {model: S}.
- ``data``: ``source``, ``ood_source``, ``num_classes`` (``null`` for regression),
  ``feature_shape``.
- ``reference``: name of the first model (deltas and gates are relative to it).
- ``models``: list in input order, each with ``name``, ``path``, ``role`` (reference |
  candidate | baseline), ``info`` (posterior, sampling, precision, stochastic, provider,
  num_samples), ``metrics`` {key: float|null} (see ``evaluation.full_metrics``; a key is
  absent when unavailable; ``referral_needed@t`` is ``null`` when never reached), ``deltas``
  {key: model - reference}, ``intervals`` {key: [low, high]} (95 % percentile bootstrap over
  rows), ``mc_noise`` {key: {``values``: [one per seed; a single one for deterministic models],
  ``spread``: max - min, ``null`` with a single run: no MC noise}}, ``curves`` (see
  ``evaluation.curves``). ``ood_auroc_mi`` / ``ood_aupr_mi`` are absent for a model run with
  one sample (a deterministic baseline): its MI is 0 for every input.
- ``gates``: {candidate name: [{``name``, ``value``, ``limit``, ``passed`` (true|false|null =
  skipped), ``status``, ``detail``, ``noise``, ``within_noise``}]}.
- ``failed_gates``: [{``model``, ``gate``, ``detail``}]; ``plots``: PNG file names in the
  report directory; ``notes``: free-text remarks; ``warnings``: results that deserve a look
  whatever the gates say (an OOD AUROC below 0.5: uncertainty inverted on the OOD set).
- Only the gates of the report's ``task`` are listed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..common import atomic_path, to_dict
from .gates import GateResult, format_limit

__all__ = [
    "SCHEMA_VERSION",
    "ModelResult",
    "Report",
    "gate_table",
    "summary_table",
    "to_markdown",
    "write_report",
]

SCHEMA_VERSION = "1"


@dataclass(frozen=True)
class ModelResult:
    """Everything measured for one model (see the module docstring for the fields)."""

    name: str
    path: str
    role: str
    info: dict[str, Any]
    metrics: dict[str, float | None]
    deltas: dict[str, float]
    intervals: dict[str, list[float] | None]
    mc_noise: dict[str, dict[str, Any]]
    curves: dict[str, dict]


@dataclass(frozen=True)
class Report:
    """The result of ``validate``. ``gates`` maps each candidate to its gate results."""

    task: str
    config: Any
    seeds: dict[str, Any]
    sample_counts: dict[str, Any]
    data: dict[str, Any]
    models: list[ModelResult]
    gates: dict[str, list[GateResult]]
    notes: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def reference(self) -> ModelResult:
        return self.models[0]

    @property
    def failed_gates(self) -> list[tuple[str, GateResult]]:
        """``(candidate name, gate result)`` of every failed gate."""
        return [(m, g) for m, gs in self.gates.items() for g in gs if g.passed is False]

    @property
    def passed(self) -> bool:
        return not self.failed_gates

    def model(self, name: str) -> ModelResult:
        """The result of the model called ``name``."""
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"no model named '{name}'; models: {[m.name for m in self.models]}")

    def to_dict(self) -> dict[str, Any]:
        """The ``report.json`` content (NaN/inf become ``null``)."""
        out = {
            "version": SCHEMA_VERSION,
            "passed": self.passed,
            "task": self.task,
            "config": to_dict(self.config),
            "seeds": self.seeds,
            "sample_counts": self.sample_counts,
            "data": self.data,
            "reference": self.reference.name,
            "models": [asdict(m) for m in self.models],
            "gates": {
                m: [asdict(g) | {"status": g.status} for g in gs] for m, gs in self.gates.items()
            },
            "failed_gates": [
                {"model": m, "gate": g.name, "detail": g.detail} for m, g in self.failed_gates
            ],
            "plots": list(self.plots),
            "notes": list(self.notes),
            "warnings": list(self.warnings),
        }
        return _finite(out)


def _finite(obj: Any) -> Any:
    """Recursively turn tuples into lists and non-finite floats into ``None``."""
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalar
        return _finite(obj.item())
    return obj


# --------------------------------------------------------------------------- tables


def _fmt(value: float | None, key: str) -> str:
    if value is None:
        return "never" if key.startswith("referral_needed") else "—"
    return _num(value)


def _num(value: float, sign: str = "") -> str:
    """4 decimals, or 3 significant digits for magnitudes below 1e-3 (e.g. a collapsed MI)."""
    return f"{value:{sign}.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:{sign}.3g}"


def _metric_keys(report: Report) -> list[str]:
    keys: list[str] = []
    for m in report.models:
        keys += [k for k in m.metrics if k not in keys]
    return keys


def summary_table(report: Report, *, intervals: bool = True) -> tuple[list[str], list[list[str]]]:
    """Side-by-side table: one row per metric, one column per model.

    The reference column shows ``value [95 % interval]``; the others ``value (delta vs
    reference)``. Returns ``(header, rows)`` of strings (used by ``report.md`` and the CLI).
    """
    header = ["metric"] + [f"{m.name} ({m.role})" for m in report.models]
    rows = []
    for key in _metric_keys(report):
        row = [key]
        for i, m in enumerate(report.models):
            if key not in m.metrics:
                row.append("—")
                continue
            cell = _fmt(m.metrics[key], key)
            if i == 0 and intervals and m.intervals.get(key):
                lo, hi = m.intervals[key]
                cell += f" [{lo:.4f}, {hi:.4f}]"
            elif i > 0 and key in m.deltas:
                cell += f" ({_num(m.deltas[key], '+')})"
            row.append(cell)
        rows.append(row)
    return header, rows


def gate_table(report: Report) -> tuple[list[str], list[list[str]]]:
    """One row per (candidate, gate): value, limit, combined noise, status, detail."""
    header = ["model", "gate", "value", "limit", "noise ±", "status", "detail"]
    rows = []
    for model, results in report.gates.items():
        for g in results:
            limit = format_limit(g.limit)
            value = "—" if g.value is None else f"{g.value:+.4f}"
            if g.value is not None and isinstance(g.limit, tuple):  # a ratio
                value = f"{g.value:.4g}"
            noise = "—" if g.noise is None else f"{g.noise:.4g}"
            rows.append([model, g.name, value, limit, noise, g.status, g.detail])
    return header, rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines)


def _mc_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Metrics measured over MC seeds (rows) per model; ``—`` where there is no spread (a
    deterministic model runs once; a metric undefined at every seed)."""
    keys = [
        k
        for k in _metric_keys(report)
        if any(m.mc_noise.get(k, {}).get("spread") is not None for m in report.models)
    ]
    header = ["metric"] + [m.name for m in report.models]
    rows = []
    for k in keys:
        cells = []
        for m in report.models:
            s = m.mc_noise.get(k, {}).get("spread")
            cells.append("—" if s is None else f"{s:.4f}")
        rows.append([k, *cells])
    return header, rows


def _mc_section(report: Report) -> str:
    header, rows = _mc_rows(report)
    if not rows:
        return "_No MC noise measured (deterministic models, or one MC seed)._"
    return _md_table(header, rows)


def to_markdown(report: Report) -> str:
    """``report.md``: verdict, side-by-side table, gates, MC noise, plots."""
    sc, data = report.sample_counts, report.data
    ood = f", {sc['n_ood']} OOD inputs" if sc.get("n_ood") else ", no OOD data"
    verdict = "PASSED" if report.passed else "FAILED"
    parts = [
        "# qbnn validate report",
        f"**{verdict}**: {len(report.failed_gates)} failed gate(s). Reference: "
        f"`{report.reference.name}`. Data: {sc['n']} inputs ({data.get('source')}){ood}; "
        f"S per model {sc['num_samples']}; MC seeds {report.seeds['mc']}; "
        f"{sc['bootstrap']} bootstrap replicates.",
        *(f"> **Warning:** {w}" for w in report.warnings),
        "## Models\n\nReference column: value [95 % bootstrap interval]; other columns: value "
        "(delta vs reference).",
        _md_table(*summary_table(report)),
        "## Gates\n\nVerdicts use the point estimates at the main seed; `noise ±` is the combined "
        "half-width of the statistic (paired bootstrap over rows + range over MC seeds).",
        _md_table(*gate_table(report)) if report.gates else "_No candidate: nothing gated._",
        "## MC noise\n\nRange (max - min) of each metric over the MC seeds; — where there is "
        "none to measure (a deterministic model runs once) or the metric is undefined.",
        _mc_section(report),
    ]
    if report.plots:
        parts.append("## Plots\n\n" + "\n".join(f"![{p}]({p})" for p in report.plots))
    if report.notes:
        parts.append("## Notes\n\n" + "\n".join(f"- {n}" for n in report.notes))
    return "\n\n".join(parts) + "\n"


def write_report(report: Report, out_dir: str | Path, *, plots: bool = True) -> Report:
    """Write plots (PNG), ``report.json`` and ``report.md`` into ``out_dir`` (created).

    Every file is written atomically. Returns the report with ``plots`` filled in.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if plots:
        from .plots import save_plots

        names = [p.name for p in save_plots(report, out)]
        report = replace(report, plots=names)
    text = json.dumps(report.to_dict(), indent=2, allow_nan=False)
    with atomic_path(out / "report.json") as tmp:
        tmp.write_text(text + "\n")
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(to_markdown(report))
    return report
