"""torch BNN -> self-contained stochastic ONNX graph.

``export(model, example_input, path, config=ExportConfig(...))`` is the one public verb
(:mod:`.api`, the driver; its steps in :mod:`.steps`). The rooms: :mod:`.families` (one module
per posterior family, each registering with :func:`register_exporter`; :mod:`.registry` holds
what the rest of qbnn knows about a family), :mod:`.modules` (the torch modules that get
traced), :mod:`.passes` (ONNX graph passes with one contract, run in one declared order),
:mod:`.checks` (output form, noise census, BatchNorm statistics, the self-check).
"""

from .api import ExportResult, export, export_model, resolve_family
from .checks.selfcheck import FidelityReport
from .config import ExportConfig
from .families.ensemble import WeightSamples
from .families.gaussian import WeightGaussian, from_pyro_guide
from .families.swag import SwagPosterior
from .modules.vector import DenseTerm, DiagTerm, KronTerm, LowRankTerm, VectorGaussian
from .registry import Exporter, SamplingMode, get_exporter, known_families, register_exporter

__all__ = [
    "ExportConfig",
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
    "from_pyro_guide",
    "get_exporter",
    "known_families",
    "register_exporter",
    "resolve_family",
]
