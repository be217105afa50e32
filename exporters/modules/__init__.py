"""The torch modules an export traces: the sample context and export-time layers, the top-level
wrappers with the in-graph uncertainty summary, the sample loop, vector-parameter models, noise
and dropout ops, and classifier heads.

Families build these; nothing here knows a family's name.
"""

from .heads import Head, HeadSpec
from .vector import DenseTerm, DiagTerm, KronTerm, LowRankTerm, VectorGaussian

__all__ = ["DenseTerm", "DiagTerm", "Head", "HeadSpec", "KronTerm", "LowRankTerm", "VectorGaussian"]
