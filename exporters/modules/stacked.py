"""Export modules for networks that stack k members or MC samples on the batch axis.

The network maps ``[B, *F]`` to ``[k * B, ...]``, member-major. :class:`StackedMembers` runs it
once and reads the rows as k exact members ``[k, B, ...]`` (an ensemble computed in one pass, no
k network copies); :class:`StackedSamples` reads them as k MC samples of a random forward and
runs the network on the input tiled ``n = ceil(S / k)`` times, so one pass gives every sample.
"""

from __future__ import annotations

import torch
from torch import nn

from qbnn.runtimes.contract import Task

from .heads import Head
from .wrapper import exact_head, first_output, uncertainty_head

__all__ = ["StackedMembers", "StackedSamples", "member_rows", "sample_rows"]


def member_rows(out: torch.Tensor, k: int, b: int) -> torch.Tensor:
    """``[k * B, ...]`` member-major rows -> ``[k, B, N]`` (N: the flattened per-row output)."""
    return out.reshape(k, b, -1)


def sample_rows(out: torch.Tensor, k: int, n: int, b: int) -> torch.Tensor:
    """The output ``[k * n * B, ...]`` of one pass over the input tiled n times -> ``[n * k, B,
    N]`` samples, sample ``s`` being row block ``s mod k`` of tile ``s // k`` (so the first S
    samples spread over the k stacked rows evenly)."""
    return out.reshape(k, n, b, -1).transpose(0, 1).reshape(n * k, b, -1)


class _Head(nn.Module):
    def __init__(self, net: nn.Module, k: int, task: Task) -> None:
        super().__init__()
        self.net = net
        self.k = k
        self.task = task
        self.heteroscedastic = False  # set by the export driver
        self.noise_variance = 0.0  # set by the export driver
        self.head = Head.LOGITS  # set by the export driver


class StackedMembers(_Head):
    """``net`` returns k exact members stacked on the batch axis; the summaries are uniform over
    the k members whatever S is and ``probs`` row ``s`` is member ``s mod k``
    (:func:`~.wrapper.exact_head`). ``forward(input [B, *F], template [S])``."""

    def forward(self, x: torch.Tensor, template: torch.Tensor):
        outs = member_rows(first_output(self.net(x)), self.k, x.shape[0])
        return exact_head(
            outs, template, self.task, self.heteroscedastic, self.noise_variance, self.head
        )


class StackedSamples(_Head):
    """``net`` returns k MC samples stacked on the batch axis: the input is tiled
    ``n = ceil(S / k)`` times, the network runs once on ``[n * B, *F]`` and the first S of the
    ``n * k`` samples (:func:`sample_rows`) feed the uncertainty head."""

    def __init__(self, net: nn.Module, k: int, task: Task) -> None:
        super().__init__(net, k, task)
        # the driver traces with a template of this length: n = 3 tiles, so no tile count or
        # sample count is 0 or 1 while traced (torch.export would specialise it)
        self.trace_samples = 2 * k + 1

    def forward(self, x: torch.Tensor, template: torch.Tensor):
        s, b = template.shape[0], x.shape[0]
        n = (s + self.k - 1) // self.k
        xs = x.unsqueeze(0).expand(n, *x.shape).reshape(n * b, *x.shape[1:])
        out = sample_rows(first_output(self.net(xs)), self.k, n, b)[:s]
        return uncertainty_head(
            out, self.task, self.heteroscedastic, self.noise_variance, self.head
        )
