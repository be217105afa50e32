"""PNG plots of a validation :class:`~qbnn.pipeline.validate.Report` (matplotlib, Agg backend).

matplotlib is imported inside :func:`save_plots` (never when qbnn is imported), after selecting
the non-interactive Agg backend, so plotting works on headless servers and never changes the
backend of an importing application at import time.

Files of a classification report:

- ``reliability.png``: one reliability diagram per model (accuracy vs confidence per bin).
- ``entropy_hist.png``: predictive-entropy histograms, correct vs wrong (and OOD), per model.
- ``referral.png``: accuracy on retained inputs vs referred fraction, all models on one axis.
- ``ood_roc.png``: OOD ROC curves of all models, scored by entropy and by MI (with OOD data).
- ``uncertainty_maps.png`` (dense prediction with 2-D maps): per model and for the first
  images, the predicted class map, the predictive-entropy map and the mutual-information map.

Files of a regression report:

- ``pred_vs_true.png``: predicted mean vs target per model (output 0, at most 400 rows), with
  the 95 % central interval as error bars for models with a predictive distribution.
- ``coverage.png``: observed vs nominal coverage of central Gaussian intervals, all models
  with a predictive distribution on one axis (the diagonal is perfect calibration).
- ``pit_hist.png``: histogram of the probability integral transform per such model (flat for
  a calibrated model; U-shaped: intervals too narrow; hump: too wide).

Every file is written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..common import pyplot, save_png

__all__ = ["save_plots"]

_DPI = 110


def _panels(plt, n: int, title: str):
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, list(axes.flat[:n])


def _label(m) -> str:
    return f"{m.name} ({m.role})"


def _reliability(plt, report, out: Path) -> Path:
    fig, axes = _panels(plt, len(report.models), "Reliability (mean-prediction top label)")
    for ax, m in zip(axes, report.models, strict=True):
        r = m.curves["reliability"]
        lo, hi = np.array(r["bin_lower"]), np.array(r["bin_upper"])
        acc = np.array([np.nan if v is None else v for v in r["accuracy"]], dtype=float)
        conf = np.array([np.nan if v is None else v for v in r["confidence"]], dtype=float)
        ok = np.isfinite(acc)
        ax.bar(
            lo[ok],
            acc[ok],
            width=(hi - lo)[ok],
            align="edge",
            color="tab:blue",
            edgecolor="black",
            linewidth=0.5,
            label="accuracy",
        )
        ax.bar(
            lo[ok],
            (conf - acc)[ok],
            bottom=acc[ok],
            width=(hi - lo)[ok],
            align="edge",
            facecolor="none",
            edgecolor="tab:red",
            hatch="///",
            linewidth=0.8,
            label="gap to mean confidence",
        )
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
        ax.set_title(f"{_label(m)}\nECE {m.metrics['ece']:.4f}, acc {m.metrics['accuracy']:.4f}")
        ax.legend(loc="upper left", fontsize=7)
    return save_png(fig, out / "reliability.png", dpi=_DPI)


def _entropy_hist(plt, report, out: Path) -> Path:
    fig, axes = _panels(plt, len(report.models), "Predictive entropy (density)")
    colors = {"correct": "tab:green", "wrong": "tab:red", "ood": "tab:purple"}
    for ax, m in zip(axes, report.models, strict=True):
        h = m.curves["entropy_hist"]
        edges = np.array(h["edges"])
        for group in ("correct", "wrong", "ood"):
            counts = np.array(h.get(group, []), dtype=float)
            if counts.size == 0 or counts.sum() == 0:
                continue
            density = counts / (counts.sum() * np.diff(edges))
            ax.stairs(
                density,
                edges,
                fill=True,
                alpha=0.35,
                color=colors[group],
                label=f"{group} (n={int(counts.sum())})",
            )
            ax.stairs(density, edges, color=colors[group], linewidth=1.2)
        ax.set(xlabel="predictive entropy [nats]", ylabel="density", yscale="log")
        ax.set_title(_label(m))
        ax.legend(fontsize=7)
    return save_png(fig, out / "entropy_hist.png", dpi=_DPI)


def _referral(plt, report, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for m in report.models:
        r = m.curves["referral"]
        ax.plot(
            r["referral"],
            r["accuracy"],
            label=_label(m),
            linestyle=":" if m.role == "baseline" else "-",
        )
    for t in report.config.referral_targets:
        ax.axhline(t, color="gray", linewidth=0.7, linestyle="--")
        ax.annotate(
            f"target {t:g}",
            (1.0, t),
            xycoords=("axes fraction", "data"),
            ha="right",
            va="bottom",
            fontsize=7,
            color="gray",
        )
    ax.set(
        xlabel="fraction referred (most uncertain by predictive entropy)",
        ylabel="accuracy on retained inputs",
        title="Accuracy vs referral",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, out / "referral.png", dpi=_DPI)


def _ood_roc(plt, report, out: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.6))
    for ax, (key, what) in zip(
        axes, (("entropy", "predictive entropy"), ("mi", "mutual information")), strict=True
    ):
        for m in report.models:
            c = m.curves[f"roc_{key}"]
            auc = m.metrics.get(f"ood_auroc_{key}")
            if auc is None:  # MI of a single-sample model: 0 everywhere, no ranking
                continue
            ax.plot(
                c["fpr"],
                c["tpr"],
                label=f"{_label(m)}: AUROC {auc:.3f}",
                linestyle=":" if m.role == "baseline" else "-",
            )
        ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1.01),
            xlabel="false positive rate (in-distribution)",
            ylabel="true positive rate (OOD)",
            title=f"OOD ROC, score = {what}",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    return save_png(fig, out / "ood_roc.png", dpi=_DPI)


def _pred_vs_true(plt, report, out: Path) -> Path:
    fig, axes = _panels(plt, len(report.models), "Predicted vs true (output 0)")
    for ax, m in zip(axes, report.models, strict=True):
        c = m.curves["pred_vs_true"]
        true, mean = np.array(c["true"]), np.array(c["mean"])
        if "std" in c:
            half = 1.959964 * np.array(c["std"])
            ax.errorbar(true, mean, yerr=half, fmt="none", ecolor="tab:blue", alpha=0.25,
                        linewidth=0.8, label="95 % interval")  # fmt: skip
        ax.scatter(true, mean, s=6, color="tab:blue", label="predicted mean")
        lo, hi = float(min(true.min(), mean.min())), float(max(true.max(), mean.max()))
        ax.plot([lo, hi], [lo, hi], "k--", linewidth=1, label="y = x")
        ax.set(xlabel="true", ylabel="predicted")
        ax.set_title(f"{_label(m)}\nRMSE {m.metrics['rmse']:.4g}")
        ax.legend(fontsize=7, loc="upper left")
    return save_png(fig, out / "pred_vs_true.png", dpi=_DPI)


def _coverage(plt, models, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    for m in models:
        c = m.curves["coverage"]
        ax.plot(c["nominal"], c["observed"], marker="o", markersize=3, label=_label(m),
                linestyle=":" if m.role == "baseline" else "-")  # fmt: skip
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="nominal coverage of the central interval",
           ylabel="observed coverage", title="Interval coverage vs nominal")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return save_png(fig, out / "coverage.png", dpi=_DPI)


def _pit_hist(plt, models, out: Path) -> Path:
    fig, axes = _panels(plt, len(models), "PIT histogram (flat = calibrated)")
    for ax, m in zip(axes, models, strict=True):
        c = m.curves["pit"]
        edges, counts = np.array(c["edges"]), np.array(c["counts"], dtype=float)
        density = counts / max(counts.sum(), 1.0) / np.diff(edges)
        ax.stairs(density, edges, fill=True, alpha=0.4, color="tab:blue")
        ax.stairs(density, edges, color="tab:blue", linewidth=1.2)
        ax.axhline(1.0, color="k", linestyle="--", linewidth=1, label="uniform")
        ax.set(xlim=(0, 1), xlabel="PIT = Phi((y - mean) / std)", ylabel="density")
        ax.set_title(f"{_label(m)}\nPICP@95% {m.metrics.get('picp@0.95') or float('nan'):.3f}")
        ax.legend(fontsize=7)
    return save_png(fig, out / "pit_hist.png", dpi=_DPI)


def _regression(plt, report, out: Path) -> list[Path]:
    paths = [_pred_vs_true(plt, report, out)]
    spread = [m for m in report.models if "coverage" in m.curves]
    if spread:  # point predictors have no interval and no PIT
        paths += [_coverage(plt, spread, out), _pit_hist(plt, spread, out)]
    return paths


def _uncertainty_maps(plt, report, out: Path) -> Path:
    rows = []
    for m in report.models:
        maps = m.curves["uncertainty_maps"]
        for i in range(len(maps["prediction"])):
            rows.append((m, i, maps))
    kinds = (("prediction", "predicted class", "tab10"), ("entropy", "entropy [nats]", "magma"),
             ("mutual_information", "MI [nats]", "viridis"))  # fmt: skip
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 2.8 * len(rows)), squeeze=False)
    for r, (m, i, maps) in enumerate(rows):
        for c, (key, title, cmap) in enumerate(kinds):
            ax = axes[r][c]
            im = ax.imshow(np.asarray(maps[key][i]), cmap=cmap, interpolation="nearest")
            ax.set_title(f"{m.name} #{i}: {title}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle("Per-pixel uncertainty maps")
    return save_png(fig, out / "uncertainty_maps.png", dpi=_DPI)


def save_plots(report, out_dir: str | Path) -> list[Path]:
    """Write the PNGs described in the module docstring into ``out_dir``; returns their paths.

    ``report``: a :class:`~qbnn.pipeline.validate.Report` (classification or regression).
    """
    out = Path(out_dir)
    if report.task != "classification":
        return _regression(pyplot(), report, out)
    plt = pyplot()
    paths = [
        _reliability(plt, report, out),
        _entropy_hist(plt, report, out),
        _referral(plt, report, out),
    ]
    if all("roc_entropy" in m.curves for m in report.models):
        paths.append(_ood_roc(plt, report, out))
    if any("uncertainty_maps" in m.curves for m in report.models):
        paths.append(_uncertainty_maps(plt, _with_maps(report), out))
    return paths


def _with_maps(report):
    """The report restricted to models that kept uncertainty maps."""
    from dataclasses import replace

    return replace(report, models=[m for m in report.models if "uncertainty_maps" in m.curves])
