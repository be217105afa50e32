"""ONNX graph passes of the exporter: one contract (model in, :class:`PassResult` out), one pass
per module, run in the declared order of :data:`SPLIT_PASSES` by :func:`run_passes`.

Modelled on onnx/ir-py's ``passes`` (``PassResult(model, modified)``): a pass edits the
``onnx.ModelProto`` it is given, returns it in a :class:`PassResult` saying whether anything
changed, and adds human-readable notes (shown by ``qbnn export``).
"""

from .base import GraphPass, PassResult, run_passes
from .sink_tile import SinkTile

#: Passes that move deterministic work out of the per-MC-sample part of the graph, in order
#: (issue 21). Each runs after :func:`qbnn.exporters.graph.finalize`.
SPLIT_PASSES: tuple[GraphPass, ...] = (SinkTile(),)

__all__ = ["SPLIT_PASSES", "GraphPass", "PassResult", "run_passes"]
