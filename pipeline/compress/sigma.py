"""Compressing the posterior scale itself: sigma on a log grid, and pruning by SNR.

Mean-field graphs (``weight``, ``lrt``, ``flipout``) store one scale per weight beside mu
(sigma, or sigma² in ``lrt`` graphs): half the file. Two posterior-guided reductions:

- **Pruning by signal-to-noise ratio** (Blundell et al. 2015, "Weight Uncertainty in Neural
  Networks", sec. 5.1): a weight with ``|mu| / sigma < t`` is indistinguishable from 0 under its
  own posterior; its mu *and* sigma are set to exactly 0 (the weight is then always 0). The
  noise those weights injected goes with them: on the digits CNN, t = 2 pruned 8-37 % of each
  layer and the mutual information fell to 0.74x (the gates decide; rescaling the kept sigma
  per channel to keep the noise power over-corrected, 2.4x, and is not done).
- **Sigma on a log grid**: a scale needs its order of magnitude, not its digits. Per layer, the
  positive scales are rounded in log space onto ``2**b`` geometrically spaced values between the
  layer's smallest and largest scale (one value is 0 when pruned weights are present) and
  stored as a codebook of ``2**b`` float32 values plus ``b``-bit indices (UINT4 for ``b <= 4``,
  else UINT8), rebuilt by ``Gather`` under the tensor's own name (:func:`.share.deploy_codebook`).
  The relative error of a coded scale is at most ``sqrt(r)`` with ``r`` the grid ratio
  ``(max / min) ** (1 / (2**b - 1))``.
- **Sigma per output channel** (``sigma_bits: 0``, no bits per weight): one float32 scale per
  output channel, the root mean square of the channel's nonzero scales (it keeps the noise
  power the channel injects), broadcast back by ``Expand``; in a layer with pruned weights
  (zero scales) it is multiplied by ``mu != 0`` so that they stay exactly 0 (a weight whose
  mu was rounded or shared to 0 then loses its noise too). ``lrt`` graphs store variances: the
  mean variance.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .layers import Layer
from .share import replace_with_codebook

__all__ = ["code_scales", "log_grid", "per_channel_scale", "snr_prune", "zero_scales"]


def log_grid(scale: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """``(codebook [U] float32 sorted, indices int64 [scale.shape])`` of ``scale`` (>= 0) on a
    ``2**bits``-value log grid (see the module docstring); ``codebook[indices]`` is the coded
    scale, exactly 0 where ``scale`` is 0."""
    s = np.asarray(scale, np.float64)
    pos = s[s > 0]
    zero = bool((s <= 0).any())
    n = 2**bits - int(zero)
    if pos.size == 0 or n < 1:
        book = np.zeros(1, np.float32)
        return book, np.zeros(s.shape, np.int64)
    lo, hi = np.log(pos.min()), np.log(pos.max())
    grid = np.exp(np.linspace(lo, hi, n)) if n > 1 and hi > lo else np.exp([lo])
    book = np.concatenate([[0.0] if zero else [], grid]).astype(np.float32)
    book = np.unique(book)
    logs = np.log(np.maximum(book[book > 0].astype(np.float64), 1e-300))
    off = int(zero and book[0] == 0)
    idx = np.abs(np.log(np.maximum(s, 1e-300))[..., None] - logs).argmin(-1) + off
    idx = np.where(s > 0, idx, 0)
    return book, idx.astype(np.int64)


def snr_prune(model: onnx.ModelProto, lay: Layer, t: float) -> float:
    """Set mu and the scale of every weight with ``|mu| / sigma < t`` to 0, in place (layers
    with mu and a stored scale only); returns the fraction of the layer's weights pruned."""
    if t <= 0 or lay.role != "mu" or not lay.scales:
        return 0.0
    inits = {i.name: i for i in model.graph.initializer}
    mu = numpy_helper.to_array(inits[lay.weights[0]]).astype(np.float32)
    s = numpy_helper.to_array(inits[lay.scales[0]]).astype(np.float32)
    sigma = np.sqrt(np.maximum(s, 0)) if lay.scale_kind == "var" else s
    low = np.abs(mu) < t * sigma
    for name, arr in ((lay.weights[0], mu), (lay.scales[0], s)):
        out = np.where(low, np.float32(0), arr).astype(np.float32)
        inits[name].CopyFrom(numpy_helper.from_array(out, name))
    return float(low.mean())


def code_scales(model: onnx.ModelProto, lay: Layer, bits: int) -> int:
    """Put the layer's weight scales on a ``2**bits``-value log grid (:mod:`.sigma`) stored as
    codebook + indices, or (``bits`` 0) one value per output channel; returns their bytes (0
    when ``bits`` is 32 or there are none). Bias scales stay fp32 (coding one small tensor adds
    more graph than it saves)."""
    if bits >= 32 or not lay.scales:
        return 0
    if bits == 0:
        return sum(per_channel_scale(model, lay, n) for n in lay.scales)
    arrs = [_array(model, n).astype(np.float32) for n in lay.scales]
    book, idx = log_grid(np.concatenate([a.ravel() for a in arrs]), bits)
    parts, start = [], 0
    for a in arrs:
        parts.append(idx[start : start + a.size].reshape(a.shape))
        start += a.size
    return replace_with_codebook(model, lay.scales, book, parts, f"{lay.name}/scale")


def zero_scales(model: onnx.ModelProto, lay: Layer) -> None:
    """Set every weight scale of ``lay`` to 0 in place (a pruned layer: weight_bits 0)."""
    for init in model.graph.initializer:
        if init.name in lay.scales:
            a = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(np.zeros(a.shape, np.float32), init.name))


def _array(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name))


def per_channel_scale(model: onnx.ModelProto, lay: Layer, name: str) -> int:
    """Replace scale initializer ``name`` of ``lay`` by one value per output channel (see the
    module docstring), in place; returns the bytes stored."""
    g = model.graph
    init = next(i for i in g.initializer if i.name == name)
    s = numpy_helper.to_array(init).astype(np.float64)
    ax = lay.out_axis if s.ndim > 1 else 0
    flat = np.moveaxis(s, ax, 0).reshape(s.shape[ax], -1)
    nz = np.maximum((flat > 0).sum(1), 1)
    power = flat.sum(1) if lay.scale_kind == "var" else (flat**2).sum(1)
    per = power / nz if lay.scale_kind == "var" else np.sqrt(power / nz)
    shape = [1] * s.ndim
    shape[ax] = -1
    p = f"qbnn/compress/sigma/{name}"
    g.initializer.remove(init)
    g.initializer.extend([
        numpy_helper.from_array(per.reshape(shape).astype(np.float32), f"{p}/c"),
        numpy_helper.from_array(np.array(s.shape, np.int64), f"{p}/shape"),
        numpy_helper.from_array(np.float32(0), f"{p}/zero"),
    ])  # fmt: skip
    mu = lay.weights[0]
    nodes = [helper.make_node("Expand", [f"{p}/c", f"{p}/shape"], [name], name=f"{p}/Expand")]
    if (s <= 0).any():  # pruned weights: sigma = 0 where mu = 0
        nodes = [
            helper.make_node("Expand", [f"{p}/c", f"{p}/shape"], [f"{p}/e"], name=f"{p}/Expand"),
            helper.make_node("Equal", [mu, f"{p}/zero"], [f"{p}/z"], name=f"{p}/Equal"),
            helper.make_node("Not", [f"{p}/z"], [f"{p}/nz"], name=f"{p}/Not"),
            helper.make_node("Cast", [f"{p}/nz"], [f"{p}/m"], name=f"{p}/Cast", to=1),
            helper.make_node("Mul", [f"{p}/e", f"{p}/m"], [name], name=f"{p}/Mul"),
        ]
    at = _first_use(g, mu)
    for k, n in enumerate(nodes):
        g.node.insert(at + k, n)
    return per.size * 4


def _first_use(g: onnx.GraphProto, produced: str) -> int:
    """The index just after the node producing ``produced`` (0 for an initializer)."""
    for i, n in enumerate(g.node):
        if produced in n.output:
            return i + 1
    return 0
