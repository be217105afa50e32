"""Pass/fail gates that a candidate model (e.g. the int8 QBNN) must meet against the reference.

A gate compares one metric of the candidate with the same metric of the reference (the first
model given to ``validate``) through a *statistic* (a signed difference or a ratio) and a limit:

====================== ======================= ==================== =============================
gate                   metric key              statistic            passes when
====================== ======================= ==================== =============================
accuracy_drop          accuracy                ref - cand           stat <= max_accuracy_drop
ece_delta              ece                     cand - ref           |stat| <= max_abs_ece_delta
ood_auroc_entropy_drop ood_auroc_entropy       ref - cand           stat <= max_ood_auroc_drop
ood_auroc_mi_drop      ood_auroc_mi            ref - cand           stat <= max_ood_auroc_drop
referral99_increase    referral_needed@0.99    cand - ref           stat <= max_referral99_increase
mi_ratio               mean_mi                 cand / ref           mi_ratio_min <= stat <= max
rmse_ratio             rmse                    cand / ref           stat <= rmse_ratio_max
gaussian_nll_increase  gaussian_nll            cand - ref           stat <= max_gaussian_nll_inc.
variance_ratio         mean_variance           cand / ref           variance_ratio_min <= stat
                                                                    <= variance_ratio_max
epistemic_ratio        mean_epistemic_variance cand / ref           epistemic_ratio_min <= stat
                                                                    <= epistemic_ratio_max
====================== ======================= ==================== =============================

The first six apply to classifiers, the last four to regression models. ``mean_variance`` is
the whole predictive variance (observation noise and a heteroscedastic head's aleatoric part
included), so it can hide a lost posterior; ``mean_epistemic_variance`` (the spread of the
per-sample means) cannot.

A gate is *skipped* (``passed is None``), never silently passed, when its metric is missing from
either metrics mapping (e.g. no OOD data, a regression model), when its limit is ``None``
(disabled in the gates file), or when the statistic is undefined (reference mean MI ~ 0).
``referral_needed@0.99`` may be present with value ``None``: the model never reaches 99 %
accuracy at any referral fraction; a candidate that fails where the reference succeeds fails.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path

from qbnn.runtimes.contract import Task
from qbnn.runtimes.errors import ConfigError

from ..common import from_dict, load_config, to_dict

__all__ = [
    "GATE_SPECS",
    "GateKind",
    "GateResult",
    "GateSpec",
    "Gates",
    "default_gates_path",
    "evaluate_gates",
    "format_limit",
    "gate_specs",
    "gate_statistic",
    "load_gates",
]

#: Below this mean MI (nats) the reference has no epistemic uncertainty to compare against.
MI_FLOOR = 1e-6


@dataclass(frozen=True, kw_only=True)
class Gates:
    """Limits applied to every candidate vs the reference; ``None`` disables a gate.

    Accuracy, ECE and referral are fractions (0.01 = one point); AUROC drops are absolute;
    the MI ratio is candidate mean MI / reference mean MI on the in-distribution data.
    Regression: RMSE ratio cand / ref, Gaussian NLL increase in nats, and the ratio of mean
    predictive variances (the regression analogue of the MI ratio).
    """

    max_accuracy_drop: float | None = 0.01
    max_abs_ece_delta: float | None = 0.01
    max_ood_auroc_drop: float | None = 0.02
    max_referral99_increase: float | None = 0.02
    mi_ratio_min: float | None = 0.8
    mi_ratio_max: float | None = 1.25
    rmse_ratio_max: float | None = 1.05
    max_gaussian_nll_increase: float | None = 0.1
    variance_ratio_min: float | None = 0.8
    variance_ratio_max: float | None = 1.25
    epistemic_ratio_min: float | None = 0.8
    epistemic_ratio_max: float | None = 1.25

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(
                    f"gate '{f.name}' must be a number or null, got {type(value).__name__} "
                    f"({value!r})"
                )
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"gate '{f.name}' must be a finite number >= 0, got {value!r}")
            object.__setattr__(self, f.name, float(value))
        for name in ("mi_ratio", "variance_ratio", "epistemic_ratio"):
            lo, hi = getattr(self, f"{name}_min"), getattr(self, f"{name}_max")
            if lo is not None and hi is not None and lo > hi:
                raise ConfigError(f"{name}_min ({lo}) must not exceed {name}_max ({hi})")

    @classmethod
    def from_dict(cls, data: Mapping | None) -> Gates:
        """Build from a mapping; unknown keys and wrong types raise :class:`ConfigError`."""
        return from_dict(cls, dict(data) if isinstance(data, Mapping) else data)

    def to_dict(self) -> dict[str, float | None]:
        """Plain data for YAML/JSON (inverse of :meth:`from_dict`)."""
        return to_dict(self)


def default_gates_path() -> Path:
    """The documented default gates file shipped with qbnn (``pipeline/configs/gates.yaml``)."""
    return Path(__file__).resolve().parents[1] / "configs" / "gates.yaml"


def load_gates(path: str | Path) -> Gates:
    """Read gates from a YAML or JSON file (``.json`` suffix -> JSON)."""
    return load_config(Gates, path)


class GateKind(StrEnum):
    """How a gate compares: ``drop`` (ref - cand <= limit), ``abs_delta`` (|cand - ref| <=
    limit), ``increase`` (cand - ref <= limit), ``ratio`` (lo <= cand / ref <= hi)."""

    DROP = "drop"
    ABS_DELTA = "abs_delta"
    INCREASE = "increase"
    RATIO = "ratio"


_WORDS = {GateKind.DROP: "drop", GateKind.ABS_DELTA: "change", GateKind.INCREASE: "increase"}


@dataclass(frozen=True)
class GateSpec:
    """How one gate turns two metric values into a statistic and a verdict.

    ``limit_fields``: the :class:`Gates` field(s) holding the limit (two for ratios);
    ``needs``: what makes the metric available (shown when the gate is skipped);
    ``task``: the task the gate applies to (other tasks never show it).
    ``null``: the statistic's value when both models agree (0, or 1 for ratios).
    """

    name: str
    metric: str
    kind: GateKind
    limit_fields: tuple[str, ...]
    needs: str
    task: Task = Task.CLASSIFICATION

    @property
    def null(self) -> float:
        return 1.0 if self.kind == GateKind.RATIO else 0.0


GATE_SPECS: tuple[GateSpec, ...] = (
    GateSpec("accuracy_drop", "accuracy", GateKind.DROP, ("max_accuracy_drop",), "a classifier"),
    GateSpec("ece_delta", "ece", GateKind.ABS_DELTA, ("max_abs_ece_delta",), "a classifier"),
    GateSpec(
        "ood_auroc_entropy_drop",
        "ood_auroc_entropy",
        GateKind.DROP,
        ("max_ood_auroc_drop",),
        "OOD data (--ood) and a classifier",
    ),
    GateSpec(
        "ood_auroc_mi_drop",
        "ood_auroc_mi",
        GateKind.DROP,
        ("max_ood_auroc_drop",),
        "OOD data (--ood), a classifier and S > 1",
    ),
    GateSpec(
        "referral99_increase",
        "referral_needed@0.99",
        GateKind.INCREASE,
        ("max_referral99_increase",),
        "0.99 in referral_targets and a classifier",
    ),
    GateSpec(
        "mi_ratio", "mean_mi", GateKind.RATIO, ("mi_ratio_min", "mi_ratio_max"), "a classifier"
    ),
    GateSpec(
        "rmse_ratio",
        "rmse",
        GateKind.RATIO,
        ("rmse_ratio_max",),
        "a regression model",
        Task.REGRESSION,
    ),
    GateSpec(
        "gaussian_nll_increase",
        "gaussian_nll",
        GateKind.INCREASE,
        ("max_gaussian_nll_increase",),
        "a regression model",
        Task.REGRESSION,
    ),
    GateSpec(
        "variance_ratio",
        "mean_variance",
        GateKind.RATIO,
        ("variance_ratio_min", "variance_ratio_max"),
        "a regression model",
        Task.REGRESSION,
    ),
    GateSpec(
        "epistemic_ratio",
        "mean_epistemic_variance",
        GateKind.RATIO,
        ("epistemic_ratio_min", "epistemic_ratio_max"),
        "a regression model",
        Task.REGRESSION,
    ),
)


def gate_specs(task: Task | str | None = None) -> tuple[GateSpec, ...]:
    """The gates that apply to ``task`` (all of them for ``None``), in :data:`GATE_SPECS`
    order."""
    if task is None:
        return GATE_SPECS
    return tuple(s for s in GATE_SPECS if s.task == Task(task))


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict for one candidate.

    ``value``: the statistic (signed; see the module table) or ``None`` when it is undefined;
    ``limit``: the bound, or ``(lo, hi)`` for the MI ratio; ``passed``: ``True``/``False``, or
    ``None`` when skipped; ``noise``: combined data + MC half-width of the statistic (filled by
    ``validate``), ``within_noise``: ``|value - null| <= noise``, i.e. the change is not
    distinguishable from noise. The verdict always uses the point estimate.
    """

    name: str
    value: float | None
    limit: float | tuple[float | None, float | None] | None
    passed: bool | None
    detail: str
    noise: float | None = None
    within_noise: bool | None = None

    @property
    def status(self) -> str:
        """``pass``, ``FAIL`` or ``skipped``."""
        return "skipped" if self.passed is None else ("pass" if self.passed else "FAIL")


def format_limit(limit) -> str:
    """A limit as people read it: ``0.01``, ``[0.8, 1.25]``, ``<= 1.05`` or ``>= 0.8``."""
    if not isinstance(limit, tuple):
        return f"{limit}"
    lo, hi = limit
    if lo is None:
        return "—" if hi is None else f"<= {hi}"
    return f">= {lo}" if hi is None else f"[{lo}, {hi}]"


def gate_statistic(spec: GateSpec, ref: float | None, cand: float | None) -> float | None:
    """The statistic of ``spec`` for two metric values; ``None`` if undefined."""
    if ref is None or cand is None:
        return None
    if spec.kind == GateKind.RATIO:
        return None if ref <= MI_FLOOR else cand / ref
    return ref - cand if spec.kind == GateKind.DROP else cand - ref


def _limit(spec: GateSpec, gates: Gates):
    values = tuple(getattr(gates, f) for f in spec.limit_fields)
    if spec.kind == GateKind.RATIO:
        return values if len(values) == 2 else (None, values[0])  # one field: an upper bound
    return values[0]


def _verdict(spec: GateSpec, stat: float, limit) -> bool:
    if spec.kind == GateKind.RATIO:
        lo, hi = limit
        return (lo is None or stat >= lo) and (hi is None or stat <= hi)
    return abs(stat) <= limit if spec.kind == GateKind.ABS_DELTA else stat <= limit


def _unreachable(spec: GateSpec, ref: float | None, cand: float | None, limit) -> GateResult:
    """Referral: ``None`` means the target accuracy is never reached."""
    if ref is None and cand is None:
        return GateResult(spec.name, None, limit, None, "skipped: neither model reaches 99 %")
    if cand is None:
        return GateResult(
            spec.name,
            None,
            limit,
            False,
            f"candidate never reaches 99 % accuracy; the reference does at referral {ref:.4f}",
        )
    return GateResult(spec.name, None, limit, True, "only the candidate reaches 99 % accuracy")


def _evaluate_one(spec: GateSpec, ref_m: Mapping, cand_m: Mapping, gates: Gates) -> GateResult:
    limit = _limit(spec, gates)
    if all(v is None for v in (limit if isinstance(limit, tuple) else (limit,))):
        return GateResult(spec.name, None, limit, None, "skipped: disabled in the gates config")
    missing = [
        who for who, m in (("reference", ref_m), ("candidate", cand_m)) if spec.metric not in m
    ]
    if missing:
        return GateResult(
            spec.name,
            None,
            limit,
            None,
            f"skipped: '{spec.metric}' unavailable for the {' and '.join(missing)} "
            f"(needs {spec.needs})",
        )
    ref, cand = ref_m[spec.metric], cand_m[spec.metric]
    if (ref is None or cand is None) and spec.metric.startswith("referral_needed"):
        return _unreachable(spec, ref, cand, limit)
    if ref is None or cand is None:
        who = " and ".join(w for w, v in (("reference", ref), ("candidate", cand)) if v is None)
        return GateResult(
            spec.name,
            None,
            limit,
            None,
            f"skipped: {spec.metric} is undefined for the {who} (no predictive variance)",
        )
    stat = gate_statistic(spec, ref, cand)
    if stat is None:
        return GateResult(
            spec.name,
            None,
            limit,
            None,
            f"skipped: reference {spec.metric} = {ref:.3g} <= {MI_FLOOR:g} (nothing to compare "
            "a ratio against, e.g. no epistemic uncertainty)",
        )
    passed = _verdict(spec, stat, limit)
    if spec.kind == GateKind.RATIO:
        what = f"ratio {stat:.4g} vs {format_limit(limit)}"
    else:
        what = f"{_WORDS[spec.kind]} {stat:+.4f} vs limit {limit}"
    detail = f"{spec.metric}: ref {ref:.4g}, cand {cand:.4g}; {what}"
    return GateResult(spec.name, stat, limit, passed, detail)


def evaluate_gates(
    reference_metrics: Mapping[str, float | None],
    candidate_metrics: Mapping[str, float | None],
    gates: Gates,
    task: Task | str | None = None,
) -> list[GateResult]:
    """Apply every gate of :data:`GATE_SPECS` that applies to ``task`` to one candidate.

    Args:
        reference_metrics: scalar metrics of the reference model (keys as in the module table;
            a missing key means the metric is unavailable).
        candidate_metrics: the same for the candidate.
        gates: the limits.
        task: ``classification`` or ``regression``; ``None`` evaluates every gate.

    Returns:
        One :class:`GateResult` per gate of ``gate_specs(task)``, in :data:`GATE_SPECS` order
        (skipped ones included).
    """
    if not isinstance(gates, Gates):
        raise ConfigError(f"gates must be a Gates instance, got {type(gates).__name__}")
    specs = gate_specs(task)
    return [_evaluate_one(s, reference_metrics, candidate_metrics, gates) for s in specs]
