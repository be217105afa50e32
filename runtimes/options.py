"""Session options shared by every runtime backend (ONNX Runtime, native OpenVINO)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from .errors import ConfigError

__all__ = ["GraphOptLevel", "Precision", "SessionOptions", "effective_precision", "parse_precision"]


class GraphOptLevel(StrEnum):
    """ONNX Runtime graph optimization levels (OpenVINO always optimizes fully)."""

    DISABLE = "disable"
    BASIC = "basic"
    EXTENDED = "extended"
    ALL = "all"


class Precision(StrEnum):
    """Float arithmetic a session runs in. ``bf16`` (OpenVINO only) rounds activations and
    float weights to 8 significant bits: a precision change that ``validate`` must gate, like
    int8."""

    FP32 = "fp32"
    BF16 = "bf16"


def _enum(cls: type[StrEnum], name: str, value: object) -> StrEnum:
    try:
        return cls(value.strip().lower() if isinstance(value, str) else value)
    except ValueError:
        valid = ", ".join(v.value for v in cls)
        raise ConfigError(f"unknown {name} {value!r}; valid: {valid}") from None


def parse_precision(value: object) -> Precision:
    """``"fp32"`` / ``"bf16"`` (any case) -> :class:`Precision`, else a :class:`ConfigError`."""
    return _enum(Precision, "precision", value)


@dataclass(frozen=True, kw_only=True)
class SessionOptions:
    """How to open a session.

    ``provider``: a registry name (``qbnn.runtimes.known_providers()``) or ``auto`` (the
    measured rule in :mod:`qbnn.runtimes.autorule`). ``threads``: intra-op threads (``None``:
    the runtime decides, all cores). ``precision``: ``fp32`` (default, on every provider) or
    ``bf16`` (providers that list it, i.e. ``openvino``). ``provider_options``: ONNX Runtime EP
    options, or OpenVINO CPU properties (e.g. ``{"CPU_DENORMALS_OPTIMIZATION": "YES"}``).
    ``graph_optimization_level`` and ``config_entries`` (ONNX Runtime session config entries,
    e.g. ``{"session.intra_op.allow_spinning": "0"}``) apply to ONNX Runtime only.
    """

    provider: str = "auto"
    threads: int | None = None
    precision: Precision = Precision.FP32
    graph_optimization_level: GraphOptLevel = GraphOptLevel.ALL
    provider_options: dict[str, str] = field(default_factory=dict)
    config_entries: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.threads is not None and (isinstance(self.threads, bool) or self.threads < 1):
            raise ConfigError(f"threads must be >= 1 or None, got {self.threads}")
        if not isinstance(self.provider, str):
            raise ConfigError(f"provider must be a name, got {self.provider!r}")
        level = _enum(GraphOptLevel, "graph optimization level", self.graph_optimization_level)
        object.__setattr__(self, "graph_optimization_level", level)
        object.__setattr__(self, "precision", parse_precision(self.precision))


def effective_precision(model_precision: str, compute: Precision) -> str:
    """What a session really computes in: the model's declared ``qbnn.precision`` (``fp32`` /
    ``int8``; plain models count as ``fp32``) combined with the session's float precision.
    ``fp32`` model + ``bf16`` -> ``bf16``; ``int8`` model + ``bf16`` -> ``int8+bf16``."""
    base = model_precision if model_precision in ("fp32", "int8") else "fp32"
    if compute == Precision.FP32:
        return base
    return compute.value if base == "fp32" else f"{base}+{compute.value}"
