"""Functional building blocks of the export-time layers.

Tensors flowing through an exported network carry the Monte-Carlo sample axis folded into the
batch: ``[S * B, ...]`` with the sample index outermost. ``per_sample_*`` functions apply a
different weight to each of the S blocks; the other functions share one weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["ConvSpec", "apply_shared", "apply_per_sample"]


@dataclass(frozen=True)
class ConvSpec:
    """Geometry of a 1-D or 2-D convolution (``ndim`` spatial dims)."""

    ndim: int
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int


def apply_shared(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, conv: ConvSpec | None
) -> torch.Tensor:
    """Dense or convolution with one weight for every row.

    ``x``: ``[N, in]`` (or ``[N, ..., in]``) for dense, ``[N, C, *spatial]`` for conv.
    ``weight``: ``[out, in]`` or ``[O, C/groups, *kernel]``.
    """
    if conv is None:
        return F.linear(x, weight, bias)
    fn = F.conv1d if conv.ndim == 1 else F.conv2d
    return fn(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def apply_per_sample(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    conv: ConvSpec | None,
    num_samples: int | torch.SymInt,
) -> torch.Tensor:
    """Dense or convolution with a different weight per Monte-Carlo sample.

    ``x``: ``[S * B, ...]``; ``weight``: ``[S, *w_shape]``; ``bias``: ``[S, out]`` or None.
    Returns ``[S * B, out, ...]``. Dense layers use a batched MatMul; convolutions use an
    im2col (``unfold``) plus a batched MatMul, which keeps S dynamic (a grouped convolution
    would fix S at export time).
    """
    if conv is None:
        return _linear_per_sample(x, weight, bias, num_samples)
    return _conv_per_sample(x, weight, bias, conv, num_samples)


def _linear_per_sample(x, weight, bias, s):
    lead = x.shape[:-1]
    x3 = x.reshape(s, -1, x.shape[-1])  # [S, B', in]
    out = torch.matmul(x3, weight.transpose(1, 2))  # [S, B', out]
    if bias is not None:
        out = out + bias.unsqueeze(1)
    return out.reshape(*lead, weight.shape[1])


def _im2col(x: torch.Tensor, kernel, stride, padding, dilation) -> torch.Tensor:
    """``F.unfold`` as a depthwise convolution with one-hot kernels: ``[N, C, H, W]`` ->
    ``[N, C * kh * kw, Ho, Wo]`` in unfold's channel order (``c * kh * kw + i * kw + j``).

    ``F.unfold`` exports as a chain of Gather ops that profiled at 63 % of a weight-mode
    ResNet-20 run; a convolution with constant one-hot weights is a fast, int8-able op.
    """
    c = x.shape[1]
    kk = kernel[0] * kernel[1]
    eye = torch.eye(kk, dtype=x.dtype).reshape(kk, 1, kernel[0], kernel[1])
    onehot = eye.repeat(c, 1, 1, 1)  # [C * kk, 1, kh, kw]
    return F.conv2d(x, onehot, None, stride, padding, dilation, groups=c)


def _conv_per_sample(x, weight, bias, conv: ConvSpec, s):
    if conv.ndim == 1:
        x = x.unsqueeze(2)  # [N, C, 1, L]
        weight = weight.unsqueeze(3)  # [S, O, C/g, 1, k]
        kernel = (1, weight.shape[-1])
        stride, padding, dilation = ((1, *conv.stride), (0, *conv.padding), (1, *conv.dilation))
    else:
        kernel = tuple(weight.shape[-2:])
        stride, padding, dilation = conv.stride, conv.padding, conv.dilation
    n, c, h, w = x.shape
    g = conv.groups
    out_ch = weight.shape[1]
    ho = (h + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    cols = _im2col(x, kernel, stride, padding, dilation)  # [N, C*kh*kw, Ho, Wo]
    k = (c // g) * kernel[0] * kernel[1]
    cols = cols.reshape(s, -1, g, k, ho * wo)  # [S, B', g, K, L]
    wmat = weight.reshape(s, 1, g, out_ch // g, k)  # [S, 1, g, O/g, K]
    out = torch.matmul(wmat, cols)  # [S, B', g, O/g, L]
    out = out.reshape(s, -1, out_ch, ho * wo)
    if bias is not None:
        out = out + bias.reshape(s, 1, out_ch, 1)
    out = out.reshape(n, out_ch, ho, wo)
    return out.squeeze(2) if conv.ndim == 1 else out
