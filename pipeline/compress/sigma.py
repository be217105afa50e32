"""Compressing the posterior scale itself: sigma on a log grid, and pruning by SNR.

Mean-field graphs (``weight``, ``lrt``, ``flipout``) store one scale per weight beside mu
(sigma, or sigma² in ``lrt`` graphs): half the file. Two posterior-guided reductions:

- **Pruning by signal-to-noise ratio** (Blundell et al. 2015, "Weight Uncertainty in Neural
  Networks", sec. 5.1): a weight with ``|mu| / sigma < t`` is indistinguishable from 0 under its
  own posterior; its mu *and* sigma are set to exactly 0 (the weight is then always 0).
- **Sigma on a log grid**: a scale needs its order of magnitude, not its digits. Per layer, the
  positive scales are rounded in log space onto ``2**b`` geometrically spaced values between the
  layer's smallest and largest scale (one value is 0 when pruned weights are present) and
  stored as a codebook of ``2**b`` float32 values plus ``b``-bit indices (UINT4 for ``b <= 4``,
  else UINT8), rebuilt by ``Gather`` under the tensor's own name (:func:`.share.deploy_codebook`).
  The relative error of a coded scale is at most ``sqrt(r)`` with ``r`` the grid ratio
  ``(max / min) ** (1 / (2**b - 1))``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .layers import Layer

__all__ = ["log_grid", "snr_prune"]



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
