"""The ``validate`` stage's config: MC samples, seeds, bins, bootstrap, provider and gates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qbnn.runtimes import PlainOutput, known_providers
from qbnn.runtimes.errors import ConfigError
from qbnn.runtimes.options import parse_precision

from ..common import from_dict, load_config, to_dict
from .gates import Gates

__all__ = ["MAX_SAMPLES", "ValidateConfig"]

MAX_SAMPLES = 4096


@dataclass(frozen=True, kw_only=True)
class ValidateConfig:
    """How ``validate`` measures.

    ``num_samples``: MC samples S per input (plain models always run S = 1).
    ``seed``: Predictor seed of the reported numbers, and seed of the bootstrap.
    ``n_bins``: equal-width bins of ECE / MCE / reliability (and equal-mass ECE).
    ``referral_targets``: accuracies for which the needed referral fraction is reported
    (0.99 feeds the ``referral99_increase`` gate). ``bootstrap``: replicates for the 95 %
    intervals (0 = none). ``mc_repeats``: extra seeds for the MC-noise estimate (0 = none).
    ``provider`` / ``threads``: runtime provider (``auto``, ``cpu``, ``openvino``) and intra-op
    threads. ``precision``: float precision of the *candidates'* sessions (``fp32``, or ``bf16``
    on OpenVINO, gated like int8: pass the same file as reference and candidate); the reference
    and the baseline always run fp32.
    ``plain_output``: whether plain (non-qbnn) models output ``logits`` or ``probs``.
    ``gates``: the limits (:class:`Gates`).
    """

    num_samples: int = 32
    seed: int = 0
    n_bins: int = 15
    referral_targets: tuple[float, ...] = (0.99, 0.995)
    bootstrap: int = 200
    mc_repeats: int = 2
    provider: str = "auto"
    threads: int | None = None
    precision: str = "fp32"
    plain_output: PlainOutput = PlainOutput.LOGITS
    gates: Gates = field(default_factory=Gates)

    def __post_init__(self) -> None:
        for name, lo, hi in (
            ("num_samples", 1, MAX_SAMPLES),
            ("seed", 0, 2**63 - 1),
            ("n_bins", 1, 10_000),
            ("bootstrap", 0, 100_000),
            ("mc_repeats", 0, 100),
        ):
            _check_int(name, getattr(self, name), lo, hi)
        if self.threads is not None:
            _check_int("threads", self.threads, 1, 4096)
        targets = self.referral_targets
        if isinstance(targets, (int, float)) or not isinstance(targets, Sequence):
            raise ConfigError(f"referral_targets must be a list of accuracies, got {targets!r}")
        for t in targets:
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < t <= 1.0:
                raise ConfigError(f"referral target {t!r} must be an accuracy in (0, 1]")
        object.__setattr__(self, "referral_targets", tuple(float(t) for t in targets))
        valid = ["auto", *known_providers()]
        if not isinstance(self.provider, str) or self.provider.strip().lower() not in valid:
            raise ConfigError(f"unknown provider {self.provider!r}; valid: {', '.join(valid)}")
        object.__setattr__(self, "precision", parse_precision(self.precision).value)
        try:
            object.__setattr__(self, "plain_output", PlainOutput(self.plain_output))
        except ValueError:
            valid_po = ", ".join(p.value for p in PlainOutput)
            raise ConfigError(f"plain_output is {self.plain_output!r}; valid: {valid_po}") from None
        if isinstance(self.gates, Mapping):
            object.__setattr__(self, "gates", Gates.from_dict(self.gates))
        elif not isinstance(self.gates, Gates):
            raise ConfigError(f"gates must be a Gates or a mapping, got {type(self.gates)}")

    @property
    def seeds(self) -> list[int]:
        """The main seed followed by the MC-noise seeds."""
        return [self.seed + k for k in range(self.mc_repeats + 1)]

    @classmethod
    def from_dict(cls, data: Mapping | None) -> ValidateConfig:
        """Build from plain data; unknown keys and wrong types raise :class:`ConfigError`."""
        return from_dict(cls, dict(data) if isinstance(data, Mapping) else data)

    @classmethod
    def load(cls, path: str | Path) -> ValidateConfig:
        """Read from a YAML or JSON file."""
        return load_config(cls, path)

    def to_dict(self) -> dict:
        return to_dict(self)


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise ConfigError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
