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

Laplace, SWAG and other ``gaussian`` graphs draw weights from factors; they are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from qbnn.runtimes.contract import ContractMeta
from qbnn.runtimes.errors import ConfigError

__all__ = ["HEAVY_OPS", "Layer", "find_layers", "layer_posterior"]

HEAVY_OPS = ("Conv", "Gemm", "MatMul")
REFUSED = ("laplace", "swag", "gaussian")
_DRAW = re.compile(r"^members\.(\d+)\.(.+)\.(weight|bias)$")
_LRT = re.compile(r"^net\.(.+)\.(mu_w|var_w|sigma_w|mu_b|var_b|sigma_b)$")
_SOURCE = re.compile(r"^source\.(mu|sigma)__(.+)__(weight|bias)$")
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
    ``lrt`` graphs), counted in relative BOPs at the bits they run with.
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


def _strip(name: str) -> str:
    for p in _PREFIXES:
        if name.startswith(p):
            name = name[len(p) :]
    return name.removesuffix(".weight")


def _consumers(graph: onnx.GraphProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    out: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for n in graph.node:
        for i, name in enumerate(n.input):
            out.setdefault(name, []).append((n, i))
    return out


def find_layers(model: onnx.ModelProto) -> dict[str, Layer]:
    """``{layer name: Layer}`` in graph order; raises :class:`ConfigError` for graphs whose
    posterior is not stored as per-layer initializers (Laplace, SWAG, Gaussian factors)."""
    meta = ContractMeta.from_model(model)
    posterior = meta.posterior or ""
    if posterior in REFUSED:
        raise ConfigError(
            f"compress does not support the '{posterior}' posterior (sampling "
            f"'{meta.sampling or '?'}'): its weights are drawn from factors at run time. "
            "Supported: frozen:K and ensembles, weight/lrt mean-field graphs, deterministic and "
            "MC-dropout models; export with --sampling frozen:K to compress its draws"
        )
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    cons = _consumers(g)
    layers: dict[str, Layer] = {}

    def get(name: str) -> Layer:
        return layers.setdefault(name, Layer(name))

    for name in inits:
        if m := _DRAW.match(name):
            lay = get(m.group(2))
            lay.role = "draws"
            (lay.weights if m.group(3) == "weight" else lay.biases).append(name)
        elif m := _LRT.match(name):
            lay = get(m.group(1))
            lay.role = "mu"
            if m.group(2)[:-2] in ("var", "sigma"):
                lay.scale_kind = m.group(2)[:-2]
            slots = {"mu_w": lay.weights, "var_w": lay.scales, "sigma_w": lay.scales}
            slots |= {"mu_b": lay.biases, "var_b": lay.bias_scales, "sigma_b": lay.bias_scales}
            slots[m.group(2)].append(name)
        elif m := _SOURCE.match(name):
            lay = get(m.group(2).replace("__", "."))
            lay.role, lay.scale_kind = "mu", "sigma"
            mu, w = m.group(1) == "mu", m.group(3) == "weight"
            target = (
                (lay.weights if mu else lay.scales)
                if w
                else (lay.biases if mu else lay.bias_scales)
            )
            target.append(name)
    if not layers:  # deterministic / MC dropout: weights read directly by a heavy op
        for name, init in inits.items():
            users = cons.get(name, [])
            if len(init.dims) >= 2 and any(n.op_type in HEAVY_OPS and i == 1 for n, i in users):
                lay = get(_strip(name))
                lay.weights.append(name)
                for n, i in users:
                    if n.op_type in ("Conv", "Gemm") and i == 1 and len(n.input) > 2 and n.input[2]:
                        lay.biases.append(n.input[2])
    for lay in layers.values():
        lay.weights.sort(key=_member_key)
        lay.biases.sort(key=_member_key)
        _attach_nodes(lay, cons)
    layers = {k: v for k, v in layers.items() if v.weights}
    if not layers:
        raise ConfigError(
            "no compressible layer found: compress needs layer weights stored as initializers "
            "(frozen:K, ensembles, weight/lrt mean-field, deterministic or MC-dropout graphs)"
        )
    return layers


def _member_key(name: str) -> tuple[int, str]:
    m = _DRAW.match(name)
    return (int(m.group(1)) if m else 0, name)


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
