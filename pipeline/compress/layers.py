"""Find a compiled model's layers and their posterior tensors in the ONNX graph.

A *layer* is one module of the trained network (``conv1``, ``layer1.0.conv2``). Supported
graphs keep the posterior's tensors as initializers:

- ``frozen:K`` and ensembles: ``members.<k>.L.weight`` / ``.bias``; posterior = mean and std
  of the K draws;
- ``weight`` mode: ``source.mu__L__weight`` and ``source.sigma__L__weight``; mu, sigma;
- ``lrt`` mode: ``net.L.mu_w`` and ``net.L.var_w`` (and ``_b``); mu, sqrt(var);
- ``flipout``: ``net.L.mu_w`` and ``net.L.sigma_w``; mu, sigma;
- deterministic and MC-dropout graphs: any weight read directly by Conv/Gemm/MatMul; no
  posterior scale (mu only).

Which of these layouts a graph may hold, and whether compress refuses it, is the registry
entry's of the graph's ``qbnn.posterior`` (:attr:`qbnn.exporters.registry.Exporter.tensors`,
typed readers defined beside the modules that name the buffers); graphs without a posterior
(plain ONNX) are read by their heavy ops' weights only. Reading a qbnn graph imports the
exporters' registry (torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from qbnn.runtimes.contract import ContractMeta
from qbnn.runtimes.errors import ConfigError

__all__ = ["HEAVY_OPS", "Layer", "consumers", "find_layers", "layer_posterior"]

HEAVY_OPS = ("Conv", "Gemm", "MatMul")
_PREFIXES = ("net.", "model.", "module.")


@dataclass
class Layer:
    """One module's tensors.

    ``weights``: the tensors compression rewrites (K draws, or mu, or the weight), all of one
    shape ``[C_out, ...]`` (``out_axis`` says which axis holds the output channels);
    ``scales``: posterior scales kept beside them (``sigma`` or ``var`` tensors, ``scale_kind``);
    ``biases`` / ``bias_scales``: the matching bias tensors; ``nodes``: Conv/Gemm/MatMul nodes
    reading a weight directly (input 1), one per weight (empty in ``weight`` mode, where weights
    are drawn at run time); ``scale_nodes``: ops reading a scale directly (the variance path of
    ``lrt`` graphs), counted in relative BOPs at the bits they run with; ``drawn`` (``weight``
    mode): ``(drawn tensor, body node)`` pairs, the outer tensor ``mu + sigma * eps`` holding
    the drawn weights ``[S, C_out, ...]`` that a ``Scan`` feeds, one sample at a time, to the
    Conv/Gemm/MatMul ``body node`` of its body (empty when the graph has another shape).
    """

    name: str
    weights: list[str] = field(default_factory=list)
    scales: list[str] = field(default_factory=list)
    scale_kind: str | None = None
    biases: list[str] = field(default_factory=list)
    bias_scales: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    scale_nodes: list[str] = field(default_factory=list)
    out_axis: int = 0
    role: str = "weight"  # draws | mu | weight
    drawn: list[tuple[str, str]] = field(default_factory=list)


def _strip(name: str) -> str:
    """The user's module name of a weight initializer: wrapper prefixes removed however
    nested (``model.net.c1.weight`` -> ``c1``)."""
    while name.startswith(_PREFIXES):
        name = name[len(next(p for p in _PREFIXES if name.startswith(p))) :]
    return name.removesuffix(".weight")


def consumers(graph: onnx.GraphProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    """``{tensor name: [(node, input index), ...]}`` over the nodes of ``graph`` (no subgraphs)."""
    out: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for n in graph.node:
        for i, name in enumerate(n.input):
            out.setdefault(name, []).append((n, i))
    return out


def _tensors(posterior: str):
    """The registry's reading of ``posterior``'s graphs (None for a graph without one)."""
    if not posterior:
        return None
    from qbnn.exporters import get_exporter  # torch: only for qbnn graphs

    return get_exporter(posterior).tensors


def find_layers(model: onnx.ModelProto) -> dict[str, Layer]:
    """``{layer name: Layer}`` in graph order; raises :class:`ConfigError` for graphs whose
    posterior is not stored as per-layer initializers (Laplace, SWAG, Gaussian factors)."""
    meta = ContractMeta.from_model(model)
    posterior = meta.posterior or ""
    tensors = _tensors(posterior)
    if tensors is not None and tensors.refused:
        raise ConfigError(
            f"compress does not support the '{posterior}' posterior (sampling "
            f"'{meta.sampling or '?'}'): {tensors.refused}. "
            "Supported: frozen:K and ensembles, weight/lrt mean-field graphs, deterministic and "
            "MC-dropout models; export with --sampling frozen:K to compress its draws"
        )
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    cons = consumers(g)
    layers: dict[str, Layer] = {}
    member: dict[str, int] = {}
    # a TensorRef's slot (qbnn.exporters.tensors.Slot, a StrEnum) -> the Layer field it fills
    slots = {
        "weight": "weights",
        "bias": "biases",
        "weight_scale": "scales",
        "bias_scale": "bias_scales",
    }
    for name in inits:
        ref = tensors.read(name) if tensors is not None else None
        if ref is None:
            continue
        lay = layers.setdefault(ref.layer, Layer(ref.layer))
        lay.role = ref.role.value
        if ref.scale_kind is not None:
            lay.scale_kind = ref.scale_kind
        getattr(lay, slots[ref.slot]).append(name)
        member[name] = ref.member
    if not layers:  # deterministic / MC dropout: weights read directly by a heavy op
        for name, init in inits.items():
            users = cons.get(name, [])
            if len(init.dims) >= 2 and any(n.op_type in HEAVY_OPS and i == 1 for n, i in users):
                lay = layers.setdefault(_strip(name), Layer(_strip(name)))
                lay.weights.append(name)
                for n, i in users:
                    if n.op_type in ("Conv", "Gemm") and i == 1 and len(n.input) > 2 and n.input[2]:
                        lay.biases.append(n.input[2])
    for lay in layers.values():
        lay.weights.sort(key=lambda n: (member.get(n, 0), n))
        lay.biases.sort(key=lambda n: (member.get(n, 0), n))
        _attach_nodes(lay, cons)
        if lay.role == "mu" and not lay.nodes:
            lay.drawn = _drawn(lay, cons)
    layers = {k: v for k, v in layers.items() if v.weights}
    if not layers:
        raise ConfigError(
            "no compressible layer found: compress needs layer weights stored as initializers "
            "(frozen:K, ensembles, weight/lrt mean-field, deterministic or MC-dropout graphs)"
        )
    return layers


def _drawn(lay: Layer, cons) -> list[tuple[str, str]]:
    """``weight`` mode: ``mu -> Add(mu, sigma * eps) -> Scan`` input ``j`` -> the body's heavy
    op reading body input ``j`` as its weight (see :attr:`Layer.drawn`)."""
    out = []
    for w in lay.weights:
        for add, _ in cons.get(w, []):
            if add.op_type != "Add":
                continue
            for scan, j in cons.get(add.output[0], []):
                if scan.op_type != "Scan":
                    continue
                body = next(a.g for a in scan.attribute if a.name == "body")
                name = body.input[j].name
                heavy = [n for n in body.node if n.op_type in HEAVY_OPS and len(n.input) > 1]
                out += [(add.output[0], n.name) for n in heavy if n.input[1] == name]
    return out


def _attach_nodes(lay: Layer, cons) -> None:
    for t in lay.scales:
        lay.scale_nodes += [n.name for n, i in cons.get(t, []) if n.op_type in HEAVY_OPS and i == 1]
    for w in lay.weights:
        for n, i in cons.get(w, []):
            if n.op_type in HEAVY_OPS and i == 1:
                lay.nodes.append(n.name)
                if n.op_type == "MatMul" or (
                    n.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in n.attribute)
                ):
                    lay.out_axis = 1


def layer_posterior(model: onnx.ModelProto, lay: Layer) -> tuple[np.ndarray, np.ndarray | None]:
    """``(mu, sigma)`` of a layer's weights, float32 of the weight's shape; ``sigma`` is None
    for a model without a posterior over this layer (one deterministic weight).

    Draws: mean and standard deviation (ddof=1) over the K draws; mean-field: the stored mu and
    sigma (``sqrt(var)`` for lrt graphs).
    """
    inits = {i.name: i for i in model.graph.initializer}
    arr = [numpy_helper.to_array(inits[n]).astype(np.float32) for n in lay.weights]
    if lay.role == "draws":
        stack = np.stack(arr)
        sigma = stack.std(0, ddof=1) if len(arr) > 1 else None
        return stack.mean(0), sigma
    if lay.scales:
        s = numpy_helper.to_array(inits[lay.scales[0]]).astype(np.float32)
        return arr[0], np.sqrt(np.maximum(s, 0)) if lay.scale_kind == "var" else s
    return arr[0], None
