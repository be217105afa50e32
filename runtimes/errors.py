"""Typed errors shared by every qbnn stage.

Every error a user can cause derives from :class:`QbnnError`; the CLI catches that family in one
place and prints one line (exit code 1, or 2 for :class:`UsageError`).
"""

from __future__ import annotations

__all__ = [
    "first_line",
    "ConfigError",
    "ExportError",
    "ModelLoadError",
    "QbnnError",
    "QuantizationError",
    "RuntimeInputError",
    "UnsupportedLayerError",
    "UsageError",
    "VerificationError",
]


class QbnnError(Exception):
    """Base class of every error caused by user input or a failed check."""


class UsageError(QbnnError):
    """Bad command-line usage (exit code 2)."""


class ConfigError(QbnnError):
    """An invalid configuration value or key."""


class ModelLoadError(QbnnError):
    """A model factory, checkpoint or ONNX file could not be loaded."""


class ExportError(QbnnError):
    """Export of a torch model to ONNX failed."""


class UnsupportedLayerError(ExportError):
    """The model holds a stochastic layer that no exporter supports."""


class VerificationError(ExportError):
    """The exported graph does not reproduce the torch model's predictive distribution."""


class RuntimeInputError(QbnnError):
    """Inputs given to a compiled model are invalid (shape, dtype, non-finite values)."""


class QuantizationError(QbnnError):
    """Quantization failed or produced a model that is no longer Bayesian."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name if it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
