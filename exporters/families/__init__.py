"""Posterior families: one module per family, each registering its exporter with
:func:`~qbnn.exporters.registry.register_exporter` when imported.

Importing this package imports every module in it (so a new family is one new file here), and
with them the registry is complete. Shared helpers live beside the families:
:mod:`.bayesiantorch` (Bayesian-Torch Gaussian layers, used by ``meanfield`` and ``flipout``)
and :mod:`.reference` (the torch-side reference samplers of the self-check).
"""

import importlib
import pkgutil

from .ensemble import WeightSamples
from .gaussian import WeightGaussian
from .swag import SwagPosterior

__all__ = ["SwagPosterior", "WeightGaussian", "WeightSamples"]

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
