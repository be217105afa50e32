"""Torch-side checks of an export: the model's output form (:mod:`.outputform`; multi-label
heads: :mod:`.multilabel`), the census of
the random draws its forward makes (:mod:`.noisecensus`), BatchNorm statistics under weight
posteriors (:mod:`.bnstats`) and the self-check of the written graph against the torch model
(:mod:`.selfcheck`)."""

from .selfcheck import FidelityReport, verify_export

__all__ = ["FidelityReport", "verify_export"]
