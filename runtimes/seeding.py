"""Seeds of the random nodes of an ONNX graph.

ONNX Runtime seeds a random op without a ``seed`` attribute from the process start time plus the
node index, so a second session in the same process replays the first one's draws. qbnn therefore
always writes explicit, distinct seeds: derived from the user's seed (reproducible across
sessions and processes) or from fresh OS entropy (new draws for every session).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .onnxgraph import walk_nodes

__all__ = ["RANDOM_OPS", "random_nodes", "reseed"]

RANDOM_OPS = frozenset(
    {
        "RandomUniformLike",
        "RandomNormalLike",
        "RandomUniform",
        "RandomNormal",
        "Bernoulli",
        "Multinomial",
    }
)
_SEED_LIMIT = 2**24  # seeds are float attributes: keep them exactly representable


def random_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Random nodes of the graph and its subgraphs (a random op in a ``Scan`` body draws
    fresh noise per iteration), in depth-first graph order."""
    return [n for n in walk_nodes(model.graph) if n.op_type in RANDOM_OPS]


def _distinct_seeds(seed: int | None, n: int) -> list[int]:
    seq = np.random.SeedSequence(seed)
    raw = seq.generate_state(max(n, 1) * 2, dtype=np.uint32) % _SEED_LIMIT
    out: list[int] = []
    for v in raw.tolist():
        if v not in out:
            out.append(v)
        if len(out) == n:
            return out
    return [(out[0] + i) % _SEED_LIMIT for i in range(n)]  # pragma: no cover - astronomically rare


def _export_order(name: str, position: int) -> tuple[int, int]:
    """``(0, i)`` for the exporter's ``qbnn/random/<i>``, else ``(1, graph position)``."""
    prefix, _, tail = name.rpartition("/")
    if prefix == "qbnn/random" and tail.isdigit():
        return (0, int(tail))
    return (1, position)


def reseed(model: onnx.ModelProto, seed: int | None) -> int:
    """Give every random node (subgraphs included) a distinct ``seed`` attribute, in place;
    returns the node count.

    ``seed=None`` draws the seeds from OS entropy (fresh noise per call of this function).
    Nodes named ``qbnn/random/<i>`` by the exporter get their seeds in ``<i>`` order, so a
    quantizer that reorders the graph keeps each node's noise stream: fp32 and int8 graphs run
    with the same ``seed`` draw the same noise, and comparisons between them are paired.
    """
    nodes = random_nodes(model)
    idx = sorted(range(len(nodes)), key=lambda i: _export_order(nodes[i].name, i))
    for i, value in zip(idx, _distinct_seeds(seed, len(idx)), strict=True):
        node = nodes[i]
        kept = [a for a in node.attribute if a.name != "seed"]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.append(helper.make_attribute("seed", float(value)))
    return len(idx)
