"""The ``validate`` stage: compare models side by side on labelled data and apply gates.

``validate(models, data, ood=..., baseline=..., config=...) -> Report``. The first model is the
*reference* (e.g. the fp32 BNN): every other model in ``models`` is a *candidate* whose deltas
are gated against it; an optional *baseline* (e.g. a deterministic twin, possibly a plain ONNX
file without qbnn metadata, run as S = 1) is shown but never gated.

Reproducibility: every model runs through a :class:`~qbnn.runtimes.Predictor` opened with
``config.seed`` (one session per model and seed; in-distribution data first, then OOD data), so
two runs with the same config give identical numbers. Models with the same graph structure
draw the same noise (common random numbers), which makes their deltas less noisy.

Uncertainty of the numbers:

* *Data noise*: ``config.bootstrap`` percentile-bootstrap replicates over rows (in-distribution
  and OOD rows resampled independently, the same indices for every model) give 95 % intervals
  of accuracy, NLL, Brier, ECE and OOD AUROC, and paired intervals of every gate statistic.
* *MC noise*: each stochastic model is re-run with ``config.mc_repeats`` extra seeds
  (``seed + 1``, ``seed + 2``, ...); ``mc_noise`` reports each metric's values and range.
* A gate's ``noise`` is ``sqrt(h_boot**2 + h_mc**2)``: the half-width of the paired bootstrap
  interval of its statistic and the range of the statistic over the seeds (for three normal
  draws E[range] ~ 1.7 sigma, close to a 1.96 sigma half-width). When the statistic is within
  ``noise`` of "no change" the detail says so, but **the verdict always uses the point
  estimate at the main seed**: noise never turns a failure into a pass (or back).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np

from qbnn.runtimes import Predictor, PredictorOptions, Task
from qbnn.runtimes.errors import ConfigError

from . import dense as D
from . import evaluation as E
from . import multilabel as ML
from .config import MAX_SAMPLES, ValidateConfig
from .gates import GateResult, Gates, GateSpec, evaluate_gates, gate_specs, gate_statistic
from .inputs import ModelEntry, check_labels, check_targets, load_arrays, model_entries
from .inputs import check_models as _check_models
from .report import ModelResult, Report

__all__ = ["validate"]

log = logging.getLogger("qbnn.validate")


# --------------------------------------------------------------------------- running models


def _open(entry: ModelEntry, cfg: ValidateConfig, seed: int) -> Predictor:
    opts = PredictorOptions(plain_output=cfg.plain_output, max_samples=MAX_SAMPLES)
    precision = cfg.precision if entry.role == "candidate" else "fp32"
    return Predictor(
        entry.path, provider=cfg.provider, threads=cfg.threads, seed=seed, precision=precision,
        options=opts,
    )  # fmt: skip


def _predict(pred: Predictor, x: np.ndarray, x_ood: np.ndarray | None, s: int) -> E.Outputs:
    """Run ``x [N, *F]`` then ``x_ood [M, *F]`` through one session."""
    samples = s if pred.info.takes_num_samples else None
    r = pred.predict(x, samples)
    if pred.info.task == Task.REGRESSION:
        return E.Outputs(
            r.num_samples,
            pred_mean=r.pred_mean,
            pred_variance=r.pred_variance,
            epistemic_variance=r.epistemic_variance,
        )
    o = pred.predict(x_ood, samples) if x_ood is not None else None
    fields = (
        r.mean_probs,
        r.predictive_entropy,
        r.mutual_information,
        None if o is None else o.predictive_entropy,
        None if o is None else o.mutual_information,
    )
    if not D.is_dense(r.mean_probs):
        return E.Outputs(r.num_samples, *fields, multilabel=r.multilabel)
    maps = D.uncertainty_maps(*fields[:3])  # pixels become rows, the metric code is shared
    spatial = tuple(r.mean_probs.shape[2:])
    return E.Outputs(r.num_samples, *D.flatten_pixels(*fields), spatial=spatial, maps=maps)


def _info(pred: Predictor, out: E.Outputs) -> dict:
    i = pred.info
    return {
        "task": i.task.value,
        "posterior": i.posterior,
        "sampling": i.sampling,
        "precision": pred.precision,  # effective: the model's int8/fp32 and the session's bf16
        "stochastic": i.stochastic,
        "qbnn": i.is_qbnn,
        "provider": pred.provider,
        "num_samples": out.num_samples,
    }


# --------------------------------------------------------------------------- noise and gates


def _mc_noise(per_seed: list[dict]) -> dict[str, dict]:
    """``{key: {"values": [...], "spread": max - min}}`` over the seeds' core metrics; the
    spread is ``None`` with a single run (a deterministic model has no MC noise)."""
    keys = [k for k in per_seed[0] if all(k in d for d in per_seed)]
    single = len(per_seed) < 2
    return {
        k: {
            "values": [d[k] for d in per_seed],
            "spread": None if single else E.spread([d[k] for d in per_seed]),
        }
        for k in keys
    }


def _half_width(interval: list[float] | None) -> float | None:
    return None if interval is None else (interval[1] - interval[0]) / 2.0


def _gate_noise(spec: GateSpec, ref: dict, cand: dict) -> float | None:
    """Combined half-width of the gate statistic: paired bootstrap (+) range over seeds."""

    def stats(kind: str) -> list[float | None]:
        a, b = _pair(ref, cand, kind)
        key = spec.metric
        return [gate_statistic(spec, r.get(key), c.get(key)) for r, c in zip(a, b, strict=True)]

    boot, mc = stats("b"), stats("mc")
    parts = [_half_width(E.percentile_interval(boot)) if boot else None, E.spread(mc)]
    parts = [p for p in parts if p is not None]
    return math.hypot(*parts) if parts else None


def _pair(ref: dict, cand: dict, kind: str) -> tuple[list, list]:
    """Replicates (``b``) or per-seed metrics (``mc``) of two models, aligned; a deterministic
    model's single seed run is repeated to match the other's."""
    a, b = ref[kind], cand[kind]
    if kind == "mc" and len(a) != len(b):
        a, b = (a * len(b), b) if len(a) == 1 else (a, b * len(a))
    return a, b


def _attach_noise(g: GateResult, spec: GateSpec, noise: float | None) -> GateResult:
    """Record the combined noise on ``g`` and mark a change that lies within it."""
    if g.value is None or noise is None:
        return g
    within = abs(g.value - spec.null) <= noise
    if noise == 0:  # e.g. both exact, or both 0 (referral) on every resample and seed
        note = "; no noise: the statistic is the same on every bootstrap resample and MC seed"
    else:
        note = f"; change {'within' if within else 'exceeds'} combined noise ±{noise:.4g}"
    return replace(g, noise=noise, within_noise=within, detail=g.detail + note)


# --------------------------------------------------------------------------- the stage


def validate(
    models: Sequence[str | Path] | Mapping[str, str | Path],
    data: str | Path | Mapping[str, np.ndarray],
    *,
    ood: str | Path | Mapping[str, np.ndarray] | None = None,
    baseline: str | Path | tuple[str, str | Path] | None = None,
    config: ValidateConfig | None = None,
) -> Report:
    """Measure ``models`` (and ``baseline``) on ``data`` and gate candidates vs the first model.

    Args:
        models: ONNX paths (named by file stem) or a ``{name: path}`` mapping; the first is
            the reference, the rest are candidates.
        data: ``.npz`` path or mapping with ``x [N, *feature_shape] float32`` and ``y`` (``[N]``
            int class labels in ``[0, C)``, or ``[N]`` / ``[N, D]`` float regression targets).
        ood: optional ``.npz`` / mapping with ``x [M, *feature_shape]`` (OOD inputs).
        baseline: optional deterministic model, as a path or ``(name, path)``; not gated.
        config: measurement settings and gates (defaults: :class:`ValidateConfig`).

    Returns:
        The :class:`Report` (write it with :func:`qbnn.pipeline.validate.write_report`).
    """
    cfg = config or ValidateConfig()
    entries = model_entries(models, baseline)
    arrays, source = load_arrays(data, "data", ("x", "y"))
    x, y = arrays["x"], arrays["y"]
    x_ood, ood_source = None, None
    if ood is not None:
        ood_arrays, ood_source = load_arrays(ood, "ood", ("x",))
        x_ood = ood_arrays["x"]
    preds = {e.name: _open(e, cfg, cfg.seed) for e in entries}
    task, n_classes = _check_models(entries, preds, x, x_ood, y, source)
    notes = []
    if task == Task.REGRESSION and x_ood is not None:
        notes.append("OOD data ignored: OOD metrics are defined for classifiers only")
        x_ood = None
    outs = {e.name: _predict(preds[e.name], x, x_ood, cfg.num_samples) for e in entries}
    if task == Task.CLASSIFICATION:
        n_classes = _common_classes(outs, n_classes)
        ref_out = outs[entries[0].name]
        if ref_out.spatial:
            y = D.pixel_labels(y, ref_out.spatial, source)
            notes.append(
                f"dense prediction: metrics over {len(y)} pixels ({len(x)} inputs of "
                f"{list(ref_out.spatial)}); bootstrap intervals resample pixels"
            )
        y, note = _labels(outs, y, n_classes, source)
        notes += [note] if note else []
    else:
        y = check_targets(y, outs)
    results, per_model = _measure(entries, preds, outs, x, x_ood, y, cfg)
    for e in entries:
        if preds[e.name].info.is_qbnn and not preds[e.name].info.takes_num_samples:
            notes.append(f"{e.name} has a fixed sample count S={outs[e.name].num_samples}")
    gates = {
        e.name: _gate(per_model[entries[0].name], per_model[e.name], cfg.gates, task)
        for e in entries
        if e.role == "candidate"
    }
    return Report(
        task=task.value,
        config=cfg,
        seeds={"main": cfg.seed, "mc": cfg.seeds, "bootstrap": cfg.seed},
        sample_counts={
            "n": len(x),
            "n_ood": None if x_ood is None else len(x_ood),
            "bootstrap": cfg.bootstrap,
            "mc_runs": len(cfg.seeds),
            "num_samples": {n: o.num_samples for n, o in outs.items()},
        },
        data={
            "source": source,
            "ood_source": ood_source,
            "num_classes": n_classes,
            "feature_shape": list(x.shape[1:]),
        },
        models=results,
        gates=gates,
        notes=notes,
        warnings=_ood_warnings(results),
    )


def _gate(ref: dict, cand: dict, gates: Gates, task: Task) -> list[GateResult]:
    """Gate results of one candidate (the gates of its task), each with its combined data +
    MC noise."""
    results = evaluate_gates(ref["metrics"], cand["metrics"], gates, task)
    return [
        _attach_noise(g, spec, _gate_noise(spec, ref, cand))
        for g, spec in zip(results, gate_specs(task), strict=True)
    ]


def _ood_warnings(results: list[ModelResult]) -> list[str]:
    """A warning per model whose OOD AUROC is below 0.5: its uncertainty ranks the OOD data
    as *more* familiar than the in-distribution data."""
    out = []
    for m in results:
        for key, by in (("ood_auroc_entropy", "entropy"), ("ood_auroc_mi", "mutual information")):
            value = m.metrics.get(key)
            if value is None or not value < 0.5:
                continue
            ci = m.intervals.get(key)
            if ci and ci[1] >= 0.5:
                why = (
                    f" (95 % interval [{ci[0]:.3f}, {ci[1]:.3f}] includes 0.5): its {by} does "
                    "not tell this OOD set from the test data"
                )
            else:
                ci = f" (95 % interval [{ci[0]:.3f}, {ci[1]:.3f}])" if ci else ""
                why = (
                    f"{ci}: the model is *more* certain on this OOD set than on the test data "
                    "(uncertainty inverted)"
                )
            out.append(f"{m.name}: OOD AUROC by {by} is {value:.3f} < 0.5{why}")
    return out


def _labels(outs: dict[str, E.Outputs], y, n_classes: int, source: str):
    """Class labels ``[N]`` (or ``[N, K]`` 0/1 for multi-label models) checked against the
    models, and the note a multi-label report carries; models must agree on the head."""
    kinds = {n: o.multilabel for n, o in outs.items()}
    if len(set(kinds.values())) > 1:
        multi = sorted(n for n, k in kinds.items() if k)
        raise ConfigError(
            f"models mix multi-label ({', '.join(multi)}) and single-label classifiers; "
            "validate compares models of one head: use a multi-label baseline or none"
        )
    n = len(next(iter(outs.values())).mean_probs)
    if not any(kinds.values()):
        return check_labels(y, n, n_classes, source), None
    note = (
        f"multi-label: {n_classes} independent labels, 'y' [N, {n_classes}] in {{0, 1}}; "
        "accuracy is per-label (Hamming) accuracy (subset_accuracy: every label right), NLL "
        "the mean Bernoulli NLL, Brier and ECE per label averaged over the labels; referral, "
        "AURC and OOD rank inputs by the predictive entropy / MI summed over the labels"
    )
    return ML.check_labels(y, n, n_classes, source), note


def _common_classes(outs: dict[str, E.Outputs], declared: int | None) -> int:
    counts = {n: o.mean_probs.shape[1] for n, o in outs.items()}
    if len(set(counts.values())) != 1 or (declared is not None and declared not in counts.values()):
        raise ConfigError(f"models predict different numbers of classes: {counts}")
    return next(iter(counts.values()))


def _measure(entries, preds, outs, x, x_ood, y, cfg: ValidateConfig):
    """Metrics, curves, bootstrap intervals and MC noise of every model.

    Returns ``(model results, {name: {"metrics", "b": bootstrap replicates, "mc": core
    metrics per seed}})``.
    """
    core = partial(E.core_metrics, n_bins=cfg.n_bins, targets=cfg.referral_targets)
    ref_out = outs[entries[0].name]  # rows: inputs, or pixels of a dense classifier
    n = len(ref_out.mean_probs) if ref_out.is_classifier else len(x)
    n_ood = None if x_ood is None else len(ref_out.ood_entropy)
    indices = E.bootstrap_indices(n, n_ood, cfg.bootstrap, cfg.seed)
    per_model = {}
    for e in entries:
        out, pred = outs[e.name], preds[e.name]
        seeds = [E.full_metrics(out, y, n_bins=cfg.n_bins, targets=cfg.referral_targets)]
        if pred.info.stochastic:  # deterministic models give the same numbers for every seed
            for seed in cfg.seeds[1:]:
                seeds.append(core(_predict(_open(e, cfg, seed), x, x_ood, cfg.num_samples), y))
        per_model[e.name] = {
            "metrics": seeds[0],
            "b": E.replicate(core, out, y, indices),
            "mc": seeds,
        }
    ref = per_model[entries[0].name]["metrics"]
    results = [
        _result(e, preds[e.name], outs[e.name], per_model[e.name], ref, y, cfg) for e in entries
    ]
    return results, per_model


def _result(e: ModelEntry, pred, out, measured: dict, ref: dict, y, cfg) -> ModelResult:
    metrics, boot = measured["metrics"], measured["b"]
    return ModelResult(
        name=e.name,
        path=str(e.path),
        role=e.role,
        info=_info(pred, out),
        metrics=metrics,
        deltas={
            k: v - ref[k] for k, v in metrics.items() if v is not None and ref.get(k) is not None
        },
        intervals={
            k: E.percentile_interval([b.get(k) for b in boot])
            for k in E.INTERVAL_KEYS
            if k in metrics and boot
        },
        mc_noise=_mc_noise(measured["mc"]),
        curves=E.curves(out, y, n_bins=cfg.n_bins)
        | ({"uncertainty_maps": out.maps} if out.maps else {}),
    )
