"""The precision plan: per layer weight / activation bit widths, learned ranges, pruned channels.

YAML (every key optional; layers are named by module, e.g. ``conv1``, ``layer1.0.conv2``)::

    default: {weight_bits: 32, act_bits: 32}      # layers the plan does not list
    layers:
      conv1: {weight_bits: 8, act_bits: 8}         # -> INC static int8 (its own calibrated ranges)
      conv2: {weight_bits: 4, act_bits: 8, prune_channels: [3, 17]}
      fc1:   {weight_bits: 2, act_bits: 8, weight_range: [-0.4, 0.4], act_range: [0.0, 6.0]}
      fc2:   {weight_bits: 8, act_bits: 8}

``weight_bits``: 0 (the layer is pruned: weights zero), 2, 4, 8, 16 or 32 (fp32).
``act_bits``: bits of the layer's input activation, 2, 4, 8, 16 or 32 (fp32, not quantized).
``weight_range`` ``[lo, hi]``: a learned clipping range (Bayesian Bits); the grid is then
``s * round(clip(w, lo, hi) / s)`` with ``s = (hi - lo) / (2**bits - 1)`` (zero on the grid),
per tensor. Without it, the grid is symmetric per output channel, ``s = max|w_c| / (2**(b-1) - 1)``.
``act_range`` ``[lo, hi]``: a fixed activation range, else calibrated (min/max over the
calibration data, every MC sample path). ``prune_channels``: output channels forced to zero and
removed from the graph when the structure allows (see :mod:`.prune`). ``act_rounding``:
``direct`` (QuantizeLinear/DequantizeLinear) or ``nested`` (Bayesian Bits' residual rounding,
bit-exact with its quantizer, as fp32 ops; needs ``act_range``; see :mod:`.nested`).
``match_variance`` ``m`` in [0, 1] (``frozen:K`` / ensemble layers): shrink each draw's
deviation from the posterior mean before rounding, ``w' = mu + c (w - mu)`` with
``c**2 = max(0, 1 - m step**2 / (12 sigma**2))`` per weight, so that shrunk deviations plus
rounding noise (variance ``step**2 / 12`` where the spread is wide compared with the step)
keep the posterior variance; rounding each draw independently otherwise inflates the spread
between draws (digits CNN, 4 bits: mutual information x2.2). ``m = 1`` is full moment
matching, which over-corrects where the spread is narrow (rounding then removes spread rather
than adding noise); ``--auto`` searches ``m``. In ``weight``-mode graphs (weights drawn at run
time) ``weight_bits`` also rounds every drawn weight onto a b-bit grid before its op, and ``m``
shrinks the stored sigma to make room for that rounding noise (see :mod:`.drawn`).
``sigma_bits`` (mean-field layers: ``weight``, ``lrt``, ``flipout``): the stored posterior scales
on a ``2**b``-value log grid, 4 or 8, or 0: one scale per output channel (32 = fp32; see
:mod:`.sigma`). ``prune_snr`` ``t``
(mean-field layers): weights with ``|mu| / sigma < t`` get mu = sigma = 0 (Blundell et al. 2015).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from qbnn.runtimes.errors import ConfigError

__all__ = ["ACT_BITS", "SIGMA_BITS", "WEIGHT_BITS", "LayerPlan", "Plan", "load_plan"]

WEIGHT_BITS = (0, 2, 4, 8, 16, 32)
SIGMA_BITS = (0, 4, 8, 32)
ACT_BITS = (2, 4, 8, 16, 32)


def _one_of(name: str, value: Any, allowed: tuple[int, ...]) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(map(str, allowed))}")


def _range(name: str, value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    ok = isinstance(value, (list, tuple)) and len(value) == 2
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not ok or not float(value[0]) < float(value[1]):
        raise ConfigError(f"{name}: {value!r} is not a range [lo, hi] with lo < hi")
    return float(value[0]), float(value[1])


@dataclass(frozen=True, kw_only=True)
class LayerPlan:
    """How one layer is deployed (see the module docstring for the meaning of each field)."""

    weight_bits: int = 32
    act_bits: int = 32
    weight_range: tuple[float, float] | None = None
    act_range: tuple[float, float] | None = None
    prune_channels: tuple[int, ...] = ()
    act_rounding: str = "direct"
    match_variance: float = 0.0
    sigma_bits: int = 32
    prune_snr: float = 0.0

    def __post_init__(self) -> None:
        _one_of("weight_bits", self.weight_bits, WEIGHT_BITS)
        _one_of("sigma_bits", self.sigma_bits, SIGMA_BITS)
        t = self.prune_snr
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t >= 0:
            raise ConfigError(f"prune_snr: {t!r} is not a number >= 0")
        object.__setattr__(self, "prune_snr", float(t))
        if self.act_rounding not in ("direct", "nested"):
            raise ConfigError(f"act_rounding: {self.act_rounding!r} is not one of direct, nested")
        if self.act_rounding == "nested" and (
            self.act_range is None or self.act_bits not in (2, 4, 8, 16)
        ):
            raise ConfigError("act_rounding: nested needs act_range and act_bits in 2, 4, 8, 16")
        _one_of("act_bits", self.act_bits, ACT_BITS)
        object.__setattr__(self, "weight_range", _range("weight_range", self.weight_range))
        object.__setattr__(self, "act_range", _range("act_range", self.act_range))
        ch = self.prune_channels
        if not isinstance(ch, (list, tuple)) or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in ch
        ):
            raise ConfigError(f"prune_channels: {ch!r} is not a list of channel indices >= 0")
        object.__setattr__(self, "prune_channels", tuple(sorted(set(ch))))
        m = self.match_variance
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 <= m <= 1:
            raise ConfigError(f"match_variance: {m!r} is not a number in [0, 1]")
        object.__setattr__(self, "match_variance", float(m))

    @property
    def via_inc(self) -> bool:
        """8-bit weights and activations without fixed ranges go through INC static int8."""
        return (
            self.weight_bits == 8
            and self.act_bits == 8
            and self.weight_range is None
            and self.act_range is None
        )

    @property
    def is_fp32(self) -> bool:
        return (
            self.weight_bits == 32
            and self.act_bits == 32
            and not self.prune_channels
            and self.sigma_bits == 32
            and not self.prune_snr
        )

    @classmethod
    def from_dict(cls, data: Any, where: str) -> LayerPlan:
        """Build from a mapping; errors name the dotted path ``<where>.<key>``."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: must be a mapping, got {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        for key in data:
            if key not in known:
                raise ConfigError(f"{where}.{key}: unknown key; valid keys: {', '.join(known)}")
        try:
            return cls(**dict(data))
        except ConfigError as exc:
            raise ConfigError(f"{where}.{exc}") from None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"weight_bits": self.weight_bits, "act_bits": self.act_bits}
        if self.weight_range is not None:
            out["weight_range"] = list(self.weight_range)
        if self.act_range is not None:
            out["act_range"] = list(self.act_range)
        if self.prune_channels:
            out["prune_channels"] = list(self.prune_channels)
        if self.act_rounding != "direct":
            out["act_rounding"] = self.act_rounding
        if self.match_variance:
            out["match_variance"] = self.match_variance
        if self.sigma_bits != 32:
            out["sigma_bits"] = self.sigma_bits
        if self.prune_snr:
            out["prune_snr"] = self.prune_snr
        return out


@dataclass(frozen=True, kw_only=True)
class Plan:
    """Per-layer :class:`LayerPlan` s; ``default`` applies to layers not listed."""

    layers: Mapping[str, LayerPlan] = field(default_factory=dict)
    default: LayerPlan = field(default_factory=LayerPlan)

    def __post_init__(self) -> None:
        for name, lp in self.layers.items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"layers: layer names must be non-empty strings, got {name!r}")
            if not isinstance(lp, LayerPlan):
                raise ConfigError(f"layers.{name}: expected a LayerPlan, got {type(lp).__name__}")
        object.__setattr__(self, "layers", dict(self.layers))

    def layer(self, name: str) -> LayerPlan:
        """The plan of layer ``name`` (the default when it is not listed)."""
        return self.layers.get(name, self.default)

    def check_layers(self, known: list[str]) -> None:
        """Raise :class:`ConfigError` naming any listed layer that the model does not have."""
        for name in self.layers:
            if name not in known:
                raise ConfigError(
                    f"layers.{name}: no such layer in the model; its layers: {', '.join(known)}"
                )

    @classmethod
    def from_dict(cls, data: Any) -> Plan:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"plan: must be a mapping, got {type(data).__name__}")
        for key in data:
            if key not in ("layers", "default"):
                raise ConfigError(f"{key}: unknown key; valid keys: layers, default")
        layers = data.get("layers") or {}
        if not isinstance(layers, Mapping):
            raise ConfigError(f"layers: must be a mapping, got {type(layers).__name__}")
        default = LayerPlan.from_dict(data.get("default") or {}, "default")
        built = {str(k): LayerPlan.from_dict(v, f"layers.{k}") for k, v in layers.items()}
        return cls(layers=built, default=default)

    def to_dict(self) -> dict[str, Any]:
        return {
            "default": self.default.to_dict(),
            "layers": {k: v.to_dict() for k, v in self.layers.items()},
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def load_plan(path: str | Path) -> Plan:
    """Read a plan from YAML or JSON; raises :class:`ConfigError` (dotted paths) on bad input."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"plan file {p} does not exist; write one as in `qbnn compress --help`")
    text = p.read_text()
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(f"plan file {p} is not valid YAML/JSON: {exc}") from None
    return Plan.from_dict(data)
