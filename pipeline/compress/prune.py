"""Pruned output channels: zeroed, then removed from the graph when the structure allows.

A pruned channel's weights and bias (and their posterior scales) are set to zero, so the
channel outputs exactly 0. It is then *removed* when every op of the layer feeds, through
ops that keep a zero channel zero (Relu, MaxPool, Dropout, Identity, LeakyRelu) and at most
one flattening Reshape (to a constant ``[-1, C * k]``) or Flatten, exactly one Conv (group 1)
or Gemm/MatMul with its own weight initializer: the channel is sliced out of the layer's
weights and the consumer's input channels (``k`` columns per channel after flattening, the
Reshape gets its own narrower shape), which computes the same outputs with fewer MACs.
Otherwise (BatchNorm or a residual Add in between, an output layer, a mean-field graph whose
variance path shares the channel) it stays zeroed.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from qbnn.runtimes.errors import ConfigError

from .layers import Layer, consumers

__all__ = ["prune_channels"]

_KEEPS_ZERO = ("Relu", "MaxPool", "Dropout", "Identity", "LeakyRelu")


def _arrays(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {i.name: i for i in model.graph.initializer}


def _set(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    init = _arrays(model)[name]
    init.CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))


def _zero(model, names: list[str], axis: int, channels: list[int]) -> None:
    inits = _arrays(model)
    for n in names:
        a = numpy_helper.to_array(inits[n]).copy()
        idx = [slice(None)] * a.ndim
        idx[axis if a.ndim > 1 else 0] = channels
        a[tuple(idx)] = 0
        _set(model, n, a)


def _flatten_block(n: onnx.NodeProto, inits, n_out: int) -> int | None:
    """Elements per channel when ``n`` flattens ``[B, C, *spatial]`` to ``[B, C * block]``:
    a Reshape to a constant ``[-1 or 0, C * block]`` or a Flatten with axis 1; else None."""
    if n.op_type == "Flatten":
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        return -1 if axis == 1 else None  # block known only from the consumer's weight
    if n.op_type != "Reshape" or len(n.input) < 2 or n.input[1] not in inits:
        return None
    shape = numpy_helper.to_array(inits[n.input[1]]).tolist()
    if len(shape) != 2 or shape[0] not in (-1, 0) or shape[1] <= 0 or shape[1] % n_out:
        return None
    return shape[1] // n_out


def _consumer_of(model, node_name: str, cons, inits, n_out: int):
    """The single Conv/Gemm/MatMul fed by ``node_name``'s output through zero-keeping ops
    (and at most one flattening Reshape/Flatten), the axis of its weight that indexes input
    channels, the elements per channel (1 without flattening) and the Reshape node (or None);
    None when there is no such consumer."""
    g = model.graph
    outputs = {o.name for o in g.output}
    node = next(n for n in g.node if n.name == node_name)
    t = node.output[0]
    block, reshape = 1, None
    while True:
        users = cons.get(t, [])
        if t in outputs or len(users) != 1:
            return None
        n, i = users[0]
        if n.op_type in _KEEPS_ZERO and i == 0 and reshape is None:
            t = n.output[0]
            continue
        flat = _flatten_block(n, inits, n_out) if i == 0 and reshape is None else None
        if flat is not None:
            block, reshape, t = flat, n, n.output[0]
            continue
        if i != 0 or len(n.input) < 2 or n.input[1] not in inits:
            return None
        if len(cons.get(n.input[1], [])) != 1:
            return None
        attrs = {a.name: a for a in n.attribute}
        if n.op_type == "Conv" and reshape is None:
            group = attrs["group"].i if "group" in attrs else 1
            return (n, 1, 1, None) if group == 1 else None
        axis = None
        if n.op_type == "Gemm" and not ("transA" in attrs and attrs["transA"].i):
            axis = 1 if ("transB" in attrs and attrs["transB"].i) else 0
        elif n.op_type == "MatMul":
            axis = 0
        if axis is None:
            return None
        width = inits[n.input[1]].dims[axis]
        if block == -1:
            block = width // n_out if width % n_out == 0 else 0
        if block <= 0 or width != block * n_out:
            return None
        return n, axis, block, reshape


def prune_channels(model: onnx.ModelProto, lay: Layer, channels: tuple[int, ...]) -> str:
    """Prune output ``channels`` of layer ``lay`` in place; returns ``"removed"`` or
    ``"zeroed"``. Raises :class:`ConfigError` for a channel index out of range or when every
    channel would be pruned (use ``weight_bits: 0`` for that)."""
    inits = _arrays(model)
    shape = list(inits[lay.weights[0]].dims)
    n_out = shape[lay.out_axis]
    bad = [c for c in channels if c >= n_out]
    if bad:
        raise ConfigError(
            f"layers.{lay.name}.prune_channels: {bad} out of range; the layer has {n_out} "
            f"output channels (0..{n_out - 1})"
        )
    if len(channels) >= n_out:
        raise ConfigError(
            f"layers.{lay.name}.prune_channels: all {n_out} channels pruned; set weight_bits: 0 "
            "to prune the whole layer"
        )
    ch = list(channels)
    _zero(model, lay.weights + lay.scales, lay.out_axis, ch)
    _zero(model, lay.biases + lay.bias_scales, 0, ch)
    cons = consumers(model.graph)
    found = [_consumer_of(model, n, cons, inits, n_out) for n in lay.nodes]
    removable = (
        lay.role in ("draws", "weight")
        and lay.nodes
        and len(lay.nodes) == len(lay.weights)
        and all(f is not None for f in found)
    )
    if not removable:
        return "zeroed"
    keep = [c for c in range(n_out) if c not in set(ch)]
    for name in lay.weights:
        _set(model, name, np.take(numpy_helper.to_array(inits[name]), keep, axis=lay.out_axis))
    for name in lay.biases:
        _set(model, name, numpy_helper.to_array(inits[name])[keep])
    for n, axis, block, reshape in found:
        w = n.input[1]
        cols = [c * block + j for c in keep for j in range(block)]
        _set(model, w, np.take(numpy_helper.to_array(inits[w]), cols, axis=axis))
        if reshape is not None and reshape.op_type == "Reshape":  # its own, narrower shape
            name = f"{reshape.name}/qbnn_pruned_shape"
            shape = numpy_helper.to_array(inits[reshape.input[1]]).copy()
            shape[1] = len(cols)
            model.graph.initializer.append(numpy_helper.from_array(shape, name))
            reshape.input[1] = name
    del model.graph.value_info[:]  # intermediate shapes changed; ONNX Runtime re-infers them
    return "removed"
