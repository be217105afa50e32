"""torch BNN -> self-contained stochastic ONNX graph.

``export(model, example_input, path, ...)`` is the one public verb; exporters per posterior
family live in their own modules and register with :func:`register_exporter`.
"""

from .api import ExportResult, export, export_model, resolve_family
from .checks.selfcheck import FidelityReport
from .families.ensemble import WeightSamples
from .families.gaussian import WeightGaussian
from .families.swag import SwagPosterior
from .modules.vector import DenseTerm, DiagTerm, KronTerm, LowRankTerm, VectorGaussian
from .registry import Exporter, SamplingMode, get_exporter, known_families, register_exporter

__all__ = [
    "ExportResult",
    "Exporter",
    "FidelityReport",
    "SamplingMode",
    "DenseTerm",
    "DiagTerm",
    "KronTerm",
    "LowRankTerm",
    "SwagPosterior",
    "VectorGaussian",
    "WeightGaussian",
    "WeightSamples",
    "export",
    "export_model",
    "get_exporter",
    "known_families",
    "register_exporter",
    "resolve_family",
]
