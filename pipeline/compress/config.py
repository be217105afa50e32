"""The ``compress`` section of ``pipeline.yaml`` (the optional ``compress`` stage of ``qbnn run``).

YAML example::

    stages: [export, quantize, compress, validate, bench]
    compress:
      mode: auto            # plan (needs 'plan') | auto (needs data.calib, data.test) | share
      plan: plan.yaml       # mode plan: a precision plan, relative to pipeline.yaml
      budget: 0.03          # mode auto: largest relative BOPs accepted (null = any)
      k: 2.0                # mode share: tolerance in posterior standard deviations
      max_unique: 16        # mode share: shared values per layer
      max_trials: 12        # mode auto: plans validated at most
      sigma_bits: 4         # mode share: log-grid bits of mean-field sigma (4, 8; 32 = fp32)
      snr: 0.0              # mode share: prune weights with |mu| / sigma below it
      num_samples: 8        # MC samples per calibration input
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from qbnn.runtimes.errors import ConfigError

from ..common import coerce_enums

__all__ = ["CompressConfig", "CompressMode"]


class CompressMode(StrEnum):
    PLAN = "plan"
    AUTO = "auto"
    SHARE = "share"


@dataclass(frozen=True, kw_only=True)
class CompressConfig:
    """How the ``compress`` stage compresses ``model.fp32.onnx`` (see the module docstring)."""

    mode: CompressMode = CompressMode.AUTO
    plan: str = ""
    budget: float | None = None
    k: float = 2.0
    max_unique: int = 16
    num_samples: int = 8
    max_trials: int = 12
    sigma_bits: int = 4
    snr: float = 0.0

    def __post_init__(self) -> None:
        coerce_enums(self)
        if self.mode == CompressMode.PLAN and not self.plan:
            raise ConfigError("compress.mode 'plan' needs 'compress.plan' (a plan YAML file)")
        if self.num_samples < 1:
            raise ConfigError(f"compress.num_samples: {self.num_samples} must be >= 1")
        if self.max_trials < 1:
            raise ConfigError(f"compress.max_trials: {self.max_trials} must be >= 1")
        if self.sigma_bits not in (0, 4, 8, 32):
            raise ConfigError(
                f"compress.sigma_bits: {self.sigma_bits} is not one of 0 (one per channel), 4, "
                "8, 32 (fp32)"
            )
        if not self.snr >= 0:
            raise ConfigError(f"compress.snr: {self.snr} must be >= 0 (0 prunes nothing)")
