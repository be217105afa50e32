"""ONNX graph passes of the exporter: one contract (model in, :class:`PassResult` out), one pass
per module, run in the declared order of :data:`SPLIT_PASSES` by :func:`run_passes`.

Modelled on onnx/ir-py's ``passes`` (``PassResult(model, modified)``): a pass edits the
``onnx.ModelProto`` it is given, returns it in a :class:`PassResult` saying whether anything
changed, and adds human-readable notes (shown by ``qbnn export``).
"""

from .base import GraphPass, PassResult, run_passes
from .dedup import DedupPass
from .scan_licm import ScanLICM
from .sink_tile import SinkTile

#: Passes that move deterministic work out of the per-MC-sample part of the graph, in order
#: (issue 21): code motion first (out of the sample loop's Scan; below the sample tile of
#: tiled-batch graphs), then de-duplication of what the copies share. Each runs after
#: :func:`qbnn.exporters.passes.finalize.finalize`.
SPLIT_PASSES: tuple[GraphPass, ...] = (ScanLICM(), SinkTile(), DedupPass())

__all__ = ["SPLIT_PASSES", "GraphPass", "PassResult", "run_passes"]
