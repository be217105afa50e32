"""Plans from the posterior, and the search for the smallest relative BOPs that passes gates.

Bits (per layer): the coarsest grid b in (2, 4, 8, 16) whose quantization noise stays below a
fraction ``f`` of the layer's posterior variance: ``mean_c(s_c**2) / 12 <= f * mean(sigma**2)``
with the symmetric per-channel step ``s_c = max|mu_c| / (2**(b-1) - 1)`` (uniform rounding
noise has variance step**2 / 12). Layers without a posterior scale get 8 bits.
Pruning (the "Bayesian compression" criterion, Louizos et al. 2017, per output channel): a
channel whose signal-to-noise ``||mu_c|| / ||sigma_c||`` is below ``t`` is pruned; the last
layer (the logits) is never pruned, and at least half of a layer's channels stay.
Variance matching (``m``, for ``frozen:K`` / ensemble layers and for weights drawn at run time,
below 8 bits): see ``LayerPlan.match_variance``.
Mean-field layers (mu and sigma stored: ``weight``, ``lrt``, ``flipout`` graphs): ``t`` also
prunes single weights with ``|mu| / sigma < t`` (Blundell et al. 2015), and sigma goes on a
``2**b``-value log grid for each ``b`` in ``sigma_bits``.
Activation bits are planned only where the graph can run them: a layer whose op reads its
weight (stored, or drawn in ``weight`` mode and fed to a ``Scan``, :mod:`.drawn`) gets
``act_bits``; any other keeps fp32 activations (32), so a plan never asks for what
``deploy_plan`` refuses.
Search: every ``(f, t, m)`` candidate is deployed, ordered by its relative BOPs, and validated
against the fp32 model with ``validate``'s gates in that order; the first that passes is the
smallest relative BOPs that passes (within ``budget`` when given).
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from qbnn.runtimes.errors import ConfigError
from qbnn.runtimes.loading import load_onnx

from ..common import atomic_path
from .deploy import CompressResult, deploy_plan
from .layers import find_layers, layer_posterior
from .plan import LayerPlan, Plan

__all__ = ["AutoConfig", "Trial", "auto_plan", "layer_bits", "no_plan_message", "search"]

_BITS = (2, 4, 8, 16)


@dataclass(frozen=True, kw_only=True)
class AutoConfig:
    """``fractions``: the noise-to-posterior-variance fractions f tried; ``snr``: channel
    SNR thresholds t tried (0 = no pruning); ``match``: variance-matching strengths m tried
    for layers of K draws below 8 bits (``LayerPlan.match_variance``); ``act_bits``:
    activation bits of every layer; ``budget``: largest relative BOPs accepted (None = any);
    ``sigma_bits``: bits of the log grid of mean-field sigma tried (32 = fp32);
    ``max_trials``: validations; ``explore``: candidates validated after the answer, only to
    draw the accuracy / ECE vs relative BOPs curve."""

    fractions: tuple[float, ...] = (0.05, 0.25, 1.0, 4.0)
    snr: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)
    match: tuple[float, ...] = (0.8, 1.0, 0.0)
    act_bits: int = 8
    sigma_bits: tuple[int, ...] = (4,)
    budget: float | None = None
    max_trials: int = 12
    explore: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "fractions", tuple(self.fractions))
        object.__setattr__(self, "snr", tuple(self.snr))
        object.__setattr__(self, "match", tuple(self.match))
        object.__setattr__(self, "sigma_bits", tuple(self.sigma_bits))
        if not self.sigma_bits or any(b not in (0, 4, 8, 32) for b in self.sigma_bits):
            raise ConfigError(
                f"auto.sigma_bits: {list(self.sigma_bits)} must be 0 (one per channel), 4, 8, 32"
            )
        if not self.match or any(not 0 <= m <= 1 for m in self.match):
            raise ConfigError(f"auto.match: {list(self.match)} must be numbers in [0, 1]")
        if not self.fractions or any(not f > 0 for f in self.fractions):
            raise ConfigError(f"auto.fractions: {list(self.fractions)} must be positive numbers")
        if any(t < 0 for t in self.snr) or not self.snr:
            raise ConfigError(f"auto.snr: {list(self.snr)} must be numbers >= 0")
        if self.act_bits not in (2, 4, 8, 16, 32):
            raise ConfigError(f"auto.act_bits: {self.act_bits} is not one of 2, 4, 8, 16, 32")
        if self.budget is not None and not 0 < self.budget <= 1:
            raise ConfigError(
                f"--budget: {self.budget} must be a relative BOPs fraction in (0, 1], e.g. 0.03"
            )
        if self.max_trials < 1 or self.explore < 0:
            raise ConfigError(
                f"auto.max_trials >= 1 and auto.explore >= 0; got {self.max_trials}, {self.explore}"
            )


def layer_bits(mu: np.ndarray, sigma: np.ndarray, fraction: float, out_axis: int = 0) -> int:
    """The coarsest b in (2, 4, 8, 16) with ``mean_c(s_c**2)/12 <= fraction * mean(sigma**2)``
    (``mu``, ``sigma``: ``[C_out, ...]`` float32); 16 when none is fine enough."""
    axes = tuple(i for i in range(mu.ndim) if i != out_axis)
    amax = np.abs(mu).max(axis=axes) if mu.ndim > 1 else np.abs(mu)
    var = float(np.mean(sigma.astype(np.float64) ** 2))
    for b in _BITS:
        step = amax / (2 ** (b - 1) - 1)
        if float(np.mean(step.astype(np.float64) ** 2)) / 12 <= fraction * var:
            return b
    return 16


def channel_snr(mu: np.ndarray, sigma: np.ndarray, out_axis: int = 0) -> np.ndarray:
    """``||mu_c|| / ||sigma_c||`` per output channel, ``[C_out]`` float64."""
    m = np.moveaxis(mu, out_axis, 0).reshape(mu.shape[out_axis], -1).astype(np.float64)
    s = np.moveaxis(sigma, out_axis, 0).reshape(mu.shape[out_axis], -1).astype(np.float64)
    return np.linalg.norm(m, axis=1) / np.maximum(np.linalg.norm(s, axis=1), 1e-30)


def auto_plan(
    model: onnx.ModelProto, fraction: float, snr: float, act_bits: int = 8, match: float = 0.0,
    sigma_bits: int = 32,
) -> Plan:  # fmt: skip
    """The plan the rules in the module docstring give for one ``(fraction, snr, match,
    sigma_bits)``."""
    layers = find_layers(model)
    names = list(layers)
    out: dict[str, LayerPlan] = {}
    for name, lay in layers.items():
        mu, sigma = layer_posterior(model, lay)
        ab = act_bits if (lay.nodes or lay.drawn) else 32
        if sigma is None:
            out[name] = LayerPlan(weight_bits=8, act_bits=ab)
            continue
        bits = layer_bits(mu, sigma, fraction, lay.out_axis)
        prune: tuple[int, ...] = ()
        if snr > 0 and name != names[-1] and lay.role == "draws":
            r = channel_snr(mu, sigma, lay.out_axis)
            low = np.argsort(r)[: len(r) // 2]
            prune = tuple(int(c) for c in low if r[c] < snr)
        mean_field = lay.role == "mu" and bool(lay.scales)
        matched = lay.role == "draws" or bool(lay.drawn)
        out[name] = LayerPlan(
            weight_bits=bits, act_bits=ab, prune_channels=prune,
            match_variance=match if matched and bits < 8 else 0.0,
            sigma_bits=sigma_bits if mean_field else 32,
            prune_snr=snr if mean_field else 0.0,
        )  # fmt: skip
    return Plan(layers=out)


@dataclass(frozen=True)
class Trial:
    """One searched plan: relative BOPs, the candidate's accuracy / ECE, the gate verdict
    (``None`` when it was not validated) and ``failed``: each failing gate as ``name value
    (limit)``; ``skipped``: why it was not validated (``budget``, ``max_trials``, or ``answer``
    when a smaller plan passed first)."""

    fraction: float
    snr: float
    match: float
    plan: Plan
    relative_bops: float
    size_bytes: int
    accuracy: float | None = None
    ece: float | None = None
    passed: bool | None = None
    failed: tuple[str, ...] = ()
    skipped: str = ""
    sigma_bits: int = 32


def search(
    src: str | Path,
    dst: str | Path,
    cfg: AutoConfig,
    *,
    calib,
    evaluate: Callable[[Path], tuple[bool, float | None, float | None, tuple[str, ...]]],
    num_samples: int = 8,
    quant_config=None,
    log: Callable[[str], None] = lambda s: None,
) -> tuple[CompressResult | None, list[Trial]]:
    """Deploy every candidate, then validate in order of relative BOPs; write the first that
    passes to ``dst``. ``evaluate(path) -> (passed, accuracy, ece, failed gates)`` runs
    ``validate``'s gates against the fp32 model. Returns ``(result or None when none passed,
    trials)``."""
    model = load_onnx(src)
    plans: dict[str, tuple[float, float, float, int, Plan]] = {}
    for f, t, m, sb in itertools.product(cfg.fractions, cfg.snr, cfg.match, cfg.sigma_bits):
        p = auto_plan(model, f, t, cfg.act_bits, m, sb)
        coded = any(lp.sigma_bits != 32 for lp in p.layers.values())
        plans.setdefault(p.to_yaml(), (f, t, m, sb if coded else 32, p))
    trials: list[Trial] = []
    with tempfile.TemporaryDirectory(prefix="qbnn-search-") as tmp:
        built = []
        for i, (f, t, m, sb, p) in enumerate(plans.values()):
            path = Path(tmp) / f"cand{i}.onnx"
            res = deploy_plan(src, path, p, calib=calib, num_samples=num_samples,
                              quant_config=quant_config)  # fmt: skip
            built.append((res.relative_bops, i, f, t, m, sb, p, res))
        built.sort(key=lambda b: (b[0], b[1]))
        chosen = None
        checked = extra = 0
        for rel, _, f, t, m, sb, p, res in built:
            trial = Trial(f, t, m, p, rel, res.size_bytes, sigma_bits=sb)
            if chosen is not None and extra < cfg.explore:
                extra += 1  # beyond the answer, for the accuracy / ECE vs BOPs curve only
            elif cfg.budget is not None and rel > cfg.budget:
                trials.append(replace(trial, skipped="budget"))
                continue
            elif chosen is not None or checked >= cfg.max_trials:
                trials.append(replace(trial, skipped="answer" if chosen else "max_trials"))
                continue
            checked += 1
            passed, acc, ece, failed = evaluate(res.path)
            verdict = "pass" if passed else f"FAIL ({'; '.join(failed)})"
            knobs = f"f={f:g}, snr={t:g}, match={m:g}" + (f", sigma_bits={sb}" if sb != 32 else "")
            log(f"relative BOPs {rel:.4f} ({knobs}): gates {verdict}")
            trials.append(replace(trial, accuracy=acc, ece=ece, passed=passed, failed=failed))
            if passed and chosen is None:
                chosen = res
        if chosen is None:
            return None, trials
        with atomic_path(dst) as out:  # exactly the file that passed the gates
            shutil.copyfile(chosen.path, out)
    return replace(chosen, path=Path(dst)), trials


def no_plan_message(trials: list[Trial], cfg: AutoConfig) -> str:
    """One line saying why the search found no plan and which real options to change."""
    tried = [t for t in trials if t.passed is False]
    capped = sum(t.skipped == "max_trials" for t in trials)
    over = sum(t.skipped == "budget" for t in trials)
    msg = f"no plan passed the validate gates: {len(tried)} tried"
    if tried:
        best = min(tried, key=lambda t: len(t.failed))
        msg += (
            f" (relative BOPs {tried[0].relative_bops:.4f} to {tried[-1].relative_bops:.4f}; "
            f"closest {best.relative_bops:.4f} failed {'; '.join(best.failed) or 'the gates'})"
        )
    fixes = []
    if capped:
        msg += f"; stopped at max_trials {cfg.max_trials} with {capped} larger plans not validated"
        fixes.append("raise --max-trials (compress.max_trials in pipeline.yaml)")
    if over:
        msg += f"; {over} plans over --budget {cfg.budget} not validated"
        fixes.append("raise --budget (compress.budget)")
    fixes.append("or relax the failing gates (--gates gates.yaml)")
    return f"{msg}: {', '.join(fixes)}"
