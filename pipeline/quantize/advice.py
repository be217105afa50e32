"""Guard refusals that name fixes which work: each candidate is tried on the same rows first.

Issue 23: on an ``lrt`` MLP the erasure refusal said "list layers in exclude_nodes"; doing so
changed nothing, while ``posterior_int8: false`` (which the message never named) passed. Before
the stage refuses, :func:`try_fixes` re-runs the quantization with each candidate change (one
round, same calibration rows, same guard) and the message names the ones that pass, with the
numbers of those that do not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from .config import QuantConfig

__all__ = ["Fix", "Trial", "candidate_fixes", "fixes_text", "try_fixes"]


@dataclass(frozen=True)
class Trial:
    """One guarded quantization attempt: ``passed`` and a short account (``spread ratio 0.80``)."""

    passed: bool
    account: str


@dataclass(frozen=True)
class Fix:
    """A config change (``change``: how the user writes it) and how it fared when tried."""

    change: str
    config: QuantConfig
    trial: Trial | None = None


def candidate_fixes(
    cfg: QuantConfig, layers: Sequence[str], total_rows: int | None = None
) -> list[Fix]:
    """The changes that can apply to this graph, cheapest first: ``posterior_int8: false`` (when
    the posterior tensors were stored in 8 bits), keeping ``layers`` (the guard's per-layer
    findings) in fp32, both, and, when ``total_rows`` exceeds ``calibration.size``, calibrating
    on every row of the file."""
    fixes = []
    if cfg.posterior_int8:
        fixes.append(Fix("posterior_int8: false", replace(cfg, posterior_int8=False)))
    if layers:
        names = sorted(set(layers) - set(cfg.exclude_nodes))
        if names:
            keep = replace(cfg, exclude_nodes=(*cfg.exclude_nodes, *names))
            fixes.append(Fix(f"exclude_nodes: [{', '.join(names)}]", keep))
            if cfg.posterior_int8:
                both = replace(keep, posterior_int8=False)
                fixes.append(Fix(f"posterior_int8: false and {fixes[-1].change}", both))
    if total_rows is not None and total_rows > cfg.calibration.size:
        cal = replace(cfg.calibration, size=total_rows)
        fixes.append(Fix(f"calibration.size: {total_rows}", replace(cfg, calibration=cal)))
    return fixes


def try_fixes(fixes: Sequence[Fix], attempt: Callable[[QuantConfig], Trial]) -> list[Fix]:
    """Try ``fixes`` in order with ``attempt(config) -> Trial`` until one passes (a combined fix
    is tried only when its parts failed); returns the tried fixes with their trials."""
    tried: list[Fix] = []
    for fix in fixes:
        if any(t.trial is not None and t.trial.passed for t in tried):
            break
        tried.append(replace(fix, trial=attempt(fix.config)))
    return tried


def fixes_text(tried: Sequence[Fix]) -> str:
    """One sentence: the fixes that pass (to use), then those that were tried and do not."""
    good = [f for f in tried if f.trial is not None and f.trial.passed]
    bad = [f for f in tried if f.trial is not None and not f.trial.passed]
    parts = []
    if good:
        parts.append(
            "Fix (tried on these rows, passes): "
            + "; ".join(f"{f.change} ({f.trial.account})" for f in good)
        )
    if bad:
        parts.append(
            "Tried and not enough: " + "; ".join(f"{f.change} ({f.trial.account})" for f in bad)
        )
    if not good:
        parts.append("No config change tried here passes: keep this graph in fp32")
    return ". ".join(parts)
