"""Weight sharing from the posterior (probabilistic weight fixing) and its codebook deployment.

Rule (PWFN, Subia-Waud & Dasmahapatra, NeurIPS 2023, applied post-training): a weight with
posterior mean ``mu`` and scale ``sigma`` may move to any value within ``k * sigma`` of it
without leaving its posterior's bulk. Per layer, shared values are chosen greedily - first
powers of two (and 0), then cluster centres of the weights still free - each time the value
that the most free weights may move to, until every weight is fixed or the layer holds
``max_unique`` values. Weights left free then move to the nearest shared value (the fraction
that moved further than ``k * sigma`` is reported, never hidden). For ``frozen:K`` graphs each
draw is a weight sample and moves within ``k`` posterior standard deviations (the std over the
draws). A tensor that already takes at most ``max_unique`` values (a PWFN-trained model) is
kept as it is.

Deployment: per layer one float32 codebook ``[U]`` and, per weight tensor, an index tensor of
the weight's shape in UINT4 (``U <= 16``, two per byte) or UINT8; ``Gather(codebook, idx)``
rebuilds the weight under its original name, so the file shrinks to ~4 or 8 bits per weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qbnn.runtimes.errors import ConfigError

from .layers import Layer, layer_posterior
from .lowbit import pack4

__all__ = ["ShareConfig", "SharedLayer", "deploy_codebook", "replace_with_codebook", "share_layer"]


@dataclass(frozen=True, kw_only=True)
class ShareConfig:
    """``k``: noise tolerance in posterior standard deviations; ``max_unique``: shared values
    per layer (<= 256; <= 16 gives 4-bit indices); ``candidates``: cluster-centre candidates
    tried per step; ``min_cover``: a power of two is taken only if it fixes at least this
    fraction of the layer's weights; ``match`` (``frozen:K`` draws): variance-matching
    strength m in [0, 1] - before the final assignment each draw's deviation from the mean is
    shrunk by ``c = sqrt(max(0, 1 - m gap**2 / (12 sigma**2)))``, ``gap`` the codebook spacing
    around the mean, so moving draws to shared values does not inflate the spread between them
    (as ``LayerPlan.match_variance`` does for grids); ``sigma_bits`` (mean-field layers): the
    stored posterior scales go on a ``2**b``-value log grid per layer (:mod:`.sigma`; 4 or 8,
    32 keeps them fp32); ``snr``: weights with ``|mu| / sigma`` below it are pruned (mu and
    sigma set to 0, Blundell et al. 2015) before sharing (0 = none)."""

    k: float = 2.0
    max_unique: int = 16
    candidates: int = 256
    min_cover: float = 0.01
    match: float = 0.0
    sigma_bits: int = 4
    snr: float = 0.0

    def __post_init__(self) -> None:
        if not self.k > 0:
            raise ConfigError(f"share.k: {self.k!r} must be > 0 (posterior standard deviations)")
        if not 2 <= self.max_unique <= 256:
            raise ConfigError(f"share.max_unique: {self.max_unique!r} must be in [2, 256]")
        if not 0 <= self.match <= 1:
            raise ConfigError(f"share.match: {self.match!r} must be in [0, 1]")
        if self.sigma_bits not in (0, 4, 8, 32):
            raise ConfigError(
                f"share.sigma_bits: {self.sigma_bits!r} is not one of 0 (one per channel), 4, 8, "
                "32 (fp32)"
            )
        if not self.snr >= 0:
            raise ConfigError(f"share.snr: {self.snr!r} must be >= 0 (0 prunes nothing)")
        if self.candidates < 2 or not 0 <= self.min_cover < 1:
            raise ConfigError(
                f"share.candidates >= 2 and 0 <= share.min_cover < 1; got {self.candidates}, "
                f"{self.min_cover}"
            )


@dataclass(frozen=True)
class SharedLayer:
    """One layer after sharing: ``codebook [U]`` float32 (sorted), ``indices`` (one int64
    array per weight tensor, the tensor's shape), the fraction of weights moved further than
    ``k * sigma`` and whether the layer was already shared (nothing moved)."""

    name: str
    codebook: np.ndarray
    indices: tuple[np.ndarray, ...]
    beyond_k_sigma: float
    already_shared: bool

    def weights(self) -> list[np.ndarray]:
        """The shared weight tensors (float32), in the layer's tensor order."""
        return [self.codebook[i] for i in self.indices]


def _powers_of_two(v: np.ndarray) -> np.ndarray:
    nz = np.abs(v[v != 0])
    if nz.size == 0:
        return np.zeros(1, np.float32)
    lo, hi = int(np.floor(np.log2(nz.min()))), int(np.ceil(np.log2(nz.max())))
    p = 2.0 ** np.arange(max(lo, hi - 24), hi + 1)
    return np.concatenate([[0.0], p, -p]).astype(np.float32)


def _greedy(v, tol, free, cands, limit, book, min_count) -> None:
    """Add to ``book`` the candidates that fix the most free weights (at least ``min_count``)."""
    while len(book) < limit and free.any():
        cover = np.abs(v[free][None, :] - cands[:, None]) <= tol[free][None, :]
        counts = cover.sum(1)
        best = int(counts.argmax())
        if counts[best] < max(min_count, 1):
            return
        book.append(float(cands[best]))
        idx = np.flatnonzero(free)[cover[best]]
        free[idx] = False


def share_layer(model: onnx.ModelProto, lay: Layer, cfg: ShareConfig) -> SharedLayer:
    """Shared values for layer ``lay`` (see the module docstring).

    Raises :class:`ConfigError` when the layer has no posterior scale and more than
    ``max_unique`` distinct values (nothing says how far its weights may move)."""
    inits = {i.name: i for i in model.graph.initializer}
    tensors = [numpy_helper.to_array(inits[n]).astype(np.float32) for n in lay.weights]
    v = np.concatenate([t.ravel() for t in tensors])
    uniq = np.unique(v)
    if uniq.size <= cfg.max_unique:
        return SharedLayer(
            lay.name, uniq, tuple(np.searchsorted(uniq, t) for t in tensors), 0.0, True
        )
    _, sigma = layer_posterior(model, lay)
    if sigma is None:
        raise ConfigError(
            f"layer {lay.name} has {uniq.size} distinct weights and no posterior scale: --share "
            "needs a posterior (mu/sigma or K draws) to know how far weights may move, or a model "
            f"whose layers already hold <= {cfg.max_unique} values"
        )
    tol = cfg.k * np.concatenate([sigma.ravel()] * len(tensors)).astype(np.float32)
    free = np.ones(v.size, bool)
    book: list[float] = []
    _greedy(v, tol, free, _powers_of_two(v), cfg.max_unique, book, cfg.min_cover * v.size)
    while len(book) < cfg.max_unique and free.any():
        q = np.unique(np.quantile(v[free], np.linspace(0, 1, cfg.candidates)).astype(np.float32))
        before = len(book)
        _greedy(v, tol, free, q, before + 1, book, 1)
        if len(book) == before:
            break
    codebook = np.array(sorted(set(book)), np.float32)
    if cfg.match > 0 and lay.role == "draws" and len(tensors) > 1:
        v = _shrink(v, tensors, sigma, codebook, cfg.match)
    # final assignment: nearest shared value
    dist = np.abs(v[:, None] - codebook[None, :])
    idx = dist.argmin(1)
    beyond = float((dist[np.arange(v.size), idx] > tol).mean())
    out, start = [], 0
    for t in tensors:
        out.append(idx[start : start + t.size].reshape(t.shape).astype(np.int64))
        start += t.size
    return SharedLayer(lay.name, codebook, tuple(out), beyond, False)


def _shrink(v, tensors, sigma, codebook, m) -> np.ndarray:
    """Draws (flattened as ``v``, ``K * n``) with deviations from their mean shrunk so that
    snapping to ``codebook`` keeps their spread (see ``ShareConfig.match``)."""
    k = len(tensors)
    draws = v.reshape(k, -1)
    mu = draws.mean(0)
    pos = np.clip(np.searchsorted(codebook, mu), 1, max(len(codebook) - 1, 1))
    gap = (codebook[pos] - codebook[pos - 1]) if len(codebook) > 1 else np.ones_like(mu)
    s2 = np.maximum(sigma.ravel().astype(np.float64) ** 2, 1e-30)
    c = np.sqrt(np.clip(1 - m * gap.astype(np.float64) ** 2 / 12 / s2, 0, 1)).astype(np.float32)
    return (mu + c * (draws - mu)).ravel()


def deploy_codebook(model: onnx.ModelProto, lay: Layer, shared: SharedLayer) -> int:
    """Replace each weight initializer of ``lay`` by ``Gather(codebook, indices)`` in place
    (:func:`replace_with_codebook`); returns the bytes of codebook and indices."""
    return replace_with_codebook(model, lay.weights, shared.codebook, shared.indices, lay.name)


def replace_with_codebook(
    model: onnx.ModelProto,
    names: list[str],
    codebook: np.ndarray,
    indices: tuple[np.ndarray, ...] | list[np.ndarray],
    key: str,
) -> int:
    """Replace initializers ``names`` by ``Gather(codebook, indices)`` in place.

    ``codebook``: ``[U]`` float32; ``indices``: one int array per name, of its tensor's shape.
    Index tensors are UINT4 (dequantized to float, cast to int64; ONNX Gather takes int32/64
    indices) when the codebook has <= 16 entries, else UINT8 (cast to int64); ``key`` names the
    codebook initializer. Returns the bytes of codebook and indices."""
    g = model.graph
    drop = set(names)
    keep = [i for i in g.initializer if i.name not in drop]
    del g.initializer[:]
    g.initializer.extend(keep)
    cb = f"qbnn/compress/codebook/{key}"
    codebook = np.asarray(codebook, np.float32)
    g.initializer.append(numpy_helper.from_array(codebook, cb))
    total = codebook.nbytes
    nodes = []
    four = codebook.size <= 16
    if four:
        g.initializer.append(numpy_helper.from_array(np.float32(1.0), f"{cb}/one"))
    for name, idx in zip(names, indices, strict=True):
        p = f"qbnn/compress/share/{name}"
        if four:
            t = helper.make_tensor(f"{p}/idx", TensorProto.UINT4, list(idx.shape), pack4(idx),
                                   raw=True)  # fmt: skip
            nodes.append(helper.make_node("DequantizeLinear", [t.name, f"{cb}/one"], [f"{p}/f"],
                                          name=f"{p}/DQ"))  # fmt: skip
            cast_in = f"{p}/f"
            total += len(t.raw_data)
        else:
            t = numpy_helper.from_array(idx.astype(np.uint8), f"{p}/idx")
            cast_in = t.name
            total += idx.size
        g.initializer.append(t)
        nodes += [
            helper.make_node(
                "Cast", [cast_in], [f"{p}/i64"], name=f"{p}/Cast", to=TensorProto.INT64
            ),
            helper.make_node("Gather", [cb, f"{p}/i64"], [name], name=f"{p}/Gather", axis=0),
        ]
    for k, n in enumerate(nodes):
        g.node.insert(k, n)
    return total
