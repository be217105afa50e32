"""Portable random tensors built from ``torch.rand_like`` (exported as ``RandomUniformLike``).

ONNX Runtime's OpenVINO execution provider computes ``RandomNormalLike`` wrongly, while its
``RandomUniformLike`` is correct, so Gaussian noise is made with the Box-Muller transform from two
uniforms. These functions run in torch (for tracing) and become graph ops in the export.
"""

from __future__ import annotations

import math

import torch

__all__ = ["normal_like", "sign_like", "keep_mask_like"]


def _even_static_dim(template: torch.Tensor) -> int | None:
    """A dimension (after the first, which may be dynamic) with a static even size."""
    for dim in range(1, template.dim()):
        size = template.shape[dim]
        if isinstance(size, int) and size % 2 == 0:
            return dim
    return None


def normal_like(template: torch.Tensor) -> torch.Tensor:
    """Standard normal noise with the shape and dtype of ``template`` (values are ignored).

    Box-Muller: with ``u1, u2 ~ U[0, 1)`` and ``r = sqrt(-2 ln(1 - u1))`` (``1 - u1`` lies in
    ``(0, 1]``, so the log is finite), ``r cos(2 pi u2)`` and ``r sin(2 pi u2)`` are two
    independent N(0, 1) draws. When ``template`` has a static even dimension both are used
    (one uniform per normal, measured ~1.7x faster on ONNX Runtime's CPU provider, where the
    random ops dominate the cost of sampling); otherwise only the cosine branch.
    """
    dim = _even_static_dim(template)
    if dim is None:
        u1, u2 = torch.rand_like(template), torch.rand_like(template)
        return torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos((2.0 * math.pi) * u2)
    half = template.narrow(dim, 0, template.shape[dim] // 2)
    u1, u2 = torch.rand_like(half), torch.rand_like(half)
    r = torch.sqrt(-2.0 * torch.log1p(-u1))
    theta = (2.0 * math.pi) * u2
    return torch.cat([r * torch.cos(theta), r * torch.sin(theta)], dim=dim)


def sign_like(template: torch.Tensor) -> torch.Tensor:
    """Random signs in ``{-1, +1}`` with probability 1/2 each, shaped like ``template``.

    Same law as Bayesian-Torch's ``x.clone().uniform_(-1, 1).sign()`` (which is 0 with
    probability zero).
    """
    u = torch.rand_like(template)
    return torch.where(u < 0.5, -torch.ones_like(u), torch.ones_like(u))


def keep_mask_like(template: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted-dropout mask: ``1 / (1 - p)`` with probability ``1 - p``, else ``0``."""
    u = torch.rand_like(template)
    return (u >= p).to(template.dtype) * (1.0 / (1.0 - p))
