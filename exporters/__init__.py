"""torch BNN -> self-contained stochastic ONNX graph.

``export(model, example_input, path, ...)`` is the one public verb; exporters per posterior
family live in their own modules and register with :func:`register_exporter`.
"""

from .api import ExportResult, export, export_model, resolve_family
from .ensemble import WeightSamples
from .registry import Exporter, SamplingMode, get_exporter, known_families, register_exporter
from .swag import SwagPosterior
from .vector import DenseTerm, DiagTerm, KronTerm, LowRankTerm, VectorGaussian
from .verify import FidelityReport
from .weightgaussian import WeightGaussian

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
