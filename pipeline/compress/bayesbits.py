"""Reading a Bayesian-Bits-trained model into a plan.

Bayesian Bits (van Baalen et al., NeurIPS 2020) quantizes a tensor ``x`` clipped to a learned
range ``[lo, hi]`` by a residual decomposition with gates ``z_2, z_4, z_8, z_16, z_32``:
``x_2 = s_2 round(x / s_2)`` with ``s_2 = (hi - lo) / (2**2 - 1)``, then
``eps_2b = s_2b round((x - x_b) / s_2b)`` with the nested scale ``s_2b = s_b / (2**b + 1)``,
and ``x_q = z_2 (x_2 + z_4 (eps_4 + z_8 (eps_8 + z_16 (eps_16 + z_32 eps_32))))``. Because
``s_2b`` divides ``s_b`` (``2**b + 1`` times), ``x_2 + eps_4 + ... + eps_b`` is the b-bit grid
``s_b round(x / s_b)`` with ``s_b = (hi - lo) / (2**b - 1)``, except at rounding ties (the
clip edges of a symmetric range are ties, and float32 residuals tip near-ties). ``b`` is the
last bit width whose gate (and every gate before it) is on; ``z_2 = 0`` prunes the tensor
(0 bits). The plan deploys weights with ``weight_range = (lo, hi)``, rounded by
:func:`~qbnn.pipeline.compress.lowbit.weight_grid` the nested way, and activations with
``act_range = (0, hi)`` (unsigned) and ``act_rounding: nested`` (the residual chain itself,
:mod:`.nested`), so the deployed network computes what was trained. 32 bits deploys as fp32
(the int32 grid's step is below float32 resolution).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from qbnn.runtimes.errors import ConfigError

from .plan import LayerPlan, Plan

__all__ = ["QuantizerState", "bits_from_gates", "plan_from_bayesian_bits"]

LEVELS = (2, 4, 8, 16, 32)


@dataclass(frozen=True)
class QuantizerState:
    """A trained quantizer after its gates were fixed: ``gates`` ``(z_2, z_4, z_8, z_16,
    z_32)`` in {0, 1} and the learned range ``[lo, hi]`` (weights: ``[-beta, beta]``;
    activations: ``[0, beta]``)."""

    gates: Sequence[int]
    lo: float
    hi: float


def bits_from_gates(gates: Sequence[int]) -> int:
    """Bit width of fixed gates: 0 when ``z_2 = 0``, else the last level of the leading run of
    open gates (a closed gate switches off every finer residual after it)."""
    if len(gates) != len(LEVELS) or any(g not in (0, 1) for g in gates):
        raise ConfigError(
            f"gates {list(gates)} must be five 0/1 values (z_2, z_4, z_8, z_16, z_32)"
        )
    bits = 0
    for level, z in zip(LEVELS, gates, strict=True):
        if not z:
            break
        bits = level
    return bits


def plan_from_bayesian_bits(
    weights: Mapping[str, QuantizerState],
    activations: Mapping[str, QuantizerState] | None = None,
) -> Plan:
    """A :class:`Plan` with each layer's weight bits and range from its weight quantizer and
    its input activation's bits and range from ``activations[layer]`` (fp32 when absent).

    Raises :class:`ConfigError` for an activation quantizer that prunes (0 bits) or whose
    range does not start at 0 (Bayesian Bits' activation quantizers are unsigned)."""
    layers = {}
    for name, w in weights.items():
        wb = bits_from_gates(w.gates)
        a = (activations or {}).get(name)
        ab, arange = 32, None
        if a is not None:
            ab = bits_from_gates(a.gates)
            if ab == 0 or a.lo != 0:
                raise ConfigError(
                    f"layers.{name}: activation quantizer with {ab} bits and range "
                    f"[{a.lo}, {a.hi}]; expected >= 2 bits and an unsigned range [0, hi]"
                )
            arange = None if ab == 32 else (0.0, float(a.hi))
        layers[name] = LayerPlan(
            weight_bits=wb,
            act_bits=ab,
            weight_range=None if wb in (0, 32) else (float(w.lo), float(w.hi)),
            act_range=arange,
            act_rounding="direct" if arange is None else "nested",
        )
    return Plan(layers=layers)
