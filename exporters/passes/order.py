"""The one declared order of the exporter's graph passes, from torch.onnx's output to the
written graph.

1. :class:`~.randomops.OwnRandomOps`: every foreign random op becomes ``RandomUniformLike``
   (needs torch.onnx's per-node metadata, so it runs first);
2. :class:`~.hoist.HoistScanNoise`: noise of the sample loop's body drawn once for all samples;
3. :func:`~.finalize.finalize_passes`: the ``num_samples`` input, tracing metadata stripped,
   self-contained Scan bodies, node names, seeds, ``qbnn.*`` metadata;
4. :data:`~qbnn.exporters.passes.SPLIT_PASSES`: deterministic work moved out of the per-sample
   part (issue 21);
5. :class:`~.randomops.CheckRandomOps`: the guard that every random op is one qbnn owns.
"""

from __future__ import annotations

from qbnn.exporters.passes import SPLIT_PASSES

from .base import GraphPass
from .finalize import finalize_passes
from .hoist import HoistScanNoise
from .randomops import CheckRandomOps, OwnRandomOps

__all__ = ["export_passes"]


def export_passes(
    template_name: str,
    seed: int | None,
    meta: dict[str, str],
    split: bool = True,
) -> tuple[GraphPass, ...]:
    """Every pass of an export in order; ``template_name``: the traced sample-template input
    (float ``[S]``) that becomes the int64 scalar ``num_samples`` input (its default is
    ``meta``'s ``default_samples``); ``seed``: fixes every random node's seed (None: fresh per
    session); ``meta``: the ``qbnn.*`` metadata; ``split``: include :data:`SPLIT_PASSES`."""
    return (
        OwnRandomOps(),
        HoistScanNoise(),
        *finalize_passes(template_name, seed, meta),
        *(SPLIT_PASSES if split else ()),
        CheckRandomOps(),
    )
