"""``scaled_dot_product_attention`` decomposed, so its attention dropout becomes qbnn's noise.

``F.scaled_dot_product_attention(..., dropout_p > 0)`` is one fused op: torch.export cannot
trace its random draw (the export fails) and no ONNX op carries it. :func:`sdpa_decomposed`
computes the same function from matmul, softmax and qbnn's keep-mask
(:func:`~qbnn.exporters.modules.noise.keep_mask_like`, a ``RandomUniformLike`` in the graph),
following torch's documented reference implementation (scale, boolean and additive masks,
``is_causal``, ``enable_gqa``, fully masked rows giving zeros as torch's math kernel does).
"""

from __future__ import annotations

import math

import torch

from .noise import keep_mask_like

__all__ = ["sdpa_decomposed"]


def _bias(
    attn_mask: torch.Tensor | None, is_causal: bool, scores: torch.Tensor
) -> torch.Tensor | None:
    """The additive bias ``[..., L, S]`` of a boolean / float mask or a causal mask."""
    if is_causal:
        if attn_mask is not None:
            raise RuntimeError(
                "scaled_dot_product_attention: explicit attn_mask should not be set when "
                "is_causal=True"
            )
        n_q, n_k = scores.shape[-2], scores.shape[-1]
        attn_mask = torch.ones(n_q, n_k, dtype=torch.bool, device=scores.device).tril()
    if attn_mask is None:
        return None
    if attn_mask.dtype == torch.bool:
        ninf = torch.full_like(scores, float("-inf"))
        return torch.where(attn_mask, torch.zeros_like(scores), ninf)
    return attn_mask.to(scores.dtype)


def sdpa_decomposed(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` with its dropout drawn by qbnn's keep-mask.

    ``query [..., Hq, L, E]``, ``key [..., Hk, S, E]``, ``value [..., Hk, S, Ev]`` (float;
    ``Hq`` a multiple of ``Hk`` with ``enable_gqa``); ``attn_mask`` broadcastable to
    ``[..., Hq, L, S]``: boolean (True = attend) or additive float. Returns ``[..., Hq, L, Ev]``:
    ``dropout(softmax(q kᵀ * scale + bias), dropout_p) @ v`` with ``scale`` defaulting to
    ``1 / sqrt(E)``; a row whose every score is masked gives zeros (torch's math kernel does the
    same). The dropout is inverted dropout on the attention weights ``[..., Hq, L, S]``, one
    independent keep draw per weight, the law of torch's own ``dropout_p``. Raises RuntimeError
    for ``attn_mask`` together with ``is_causal`` (as torch does).
    """
    sc = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        rep = query.shape[-3] // key.shape[-3]
        key = key.repeat_interleave(rep, dim=-3)
        value = value.repeat_interleave(rep, dim=-3)
    scores = (query @ key.transpose(-2, -1)) * sc
    bias = _bias(attn_mask, is_causal, scores)
    if bias is not None:
        scores = scores + bias
    weights = torch.softmax(scores, dim=-1)
    if bias is not None:  # fully masked rows: zeros, not NaN (torch's _safe_softmax)
        dead = torch.isneginf(scores).all(dim=-1, keepdim=True)
        weights = torch.where(dead, torch.zeros_like(weights), weights)
    if dropout_p > 0.0:
        weights = weights * keep_mask_like(weights, dropout_p)
    return weights @ value
