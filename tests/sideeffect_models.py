"""Hand-written Bayes-by-backprop models whose forward has side effects (issue 22, kind 2).

Designed here, in the style of third-party BBB libraries: attribute writes for the ELBO
(``self.kl = ...``, a call counter), noise filled in place into a buffer (``eps.normal_()``,
blitz-style ``self.eps.data.normal_()``) and noise drawn by ``torch.normal(mu, sigma)``.
Every factory seeds torch itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SideEffectBBB(nn.Module):
    """A BBB dense layer: weight noise filled in place into the buffer ``eps``, bias drawn by
    ``torch.normal(mu, sigma)``; writes ``self.kl`` (a tensor) and ``self.calls`` (an int)."""

    def __init__(self, n_in: int, n_out: int, rho: float = -2.0) -> None:
        super().__init__()
        self.w_mu = nn.Parameter(torch.randn(n_out, n_in) / n_in**0.5)
        self.w_rho = nn.Parameter(torch.full((n_out, n_in), rho))
        self.b_mu = nn.Parameter(torch.zeros(n_out))
        self.b_rho = nn.Parameter(torch.full((n_out,), rho))
        self.register_buffer("eps", torch.zeros(n_out, n_in))
        self.calls = 0
        self.kl = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.eps.data.normal_()
        w_sigma, b_sigma = F.softplus(self.w_rho), F.softplus(self.b_rho)
        w = self.w_mu + w_sigma * self.eps
        b = torch.normal(self.b_mu, b_sigma)
        self.kl = (0.5 * (w_sigma**2 + self.w_mu**2) - torch.log(w_sigma) - 0.5).sum()
        self.calls += 1
        return F.linear(x, w, b)


class SideEffectMLP(nn.Module):
    """[B, 6] -> [B, 3]: two :class:`SideEffectBBB` layers; the model sums their KL into
    ``self.kl`` as its forward runs."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = SideEffectBBB(6, 16)
        self.l2 = SideEffectBBB(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.l2(torch.relu(self.l1(x)))
        self.kl = self.l1.kl + self.l2.kl
        return out


class FillsMLP(nn.Module):
    """[B, 6] -> [B, 3] with one in-place fill of each kind into buffers: ``uniform_(-1, 1)``
    signs (flipout-like), ``bernoulli_(0.7)`` unit masks, ``exponential_(2.0)`` scales; exact
    laws of the traced rewrites are tested on the returned noise tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 3)
        for name in ("u", "m", "e"):
            self.register_buffer(name, torch.zeros(3))

    def forward(self, x: torch.Tensor):
        self.u.uniform_(-1.0, 1.0)
        self.m.bernoulli_(0.7)
        self.e.exponential_(2.0)
        out = self.lin(x) * self.m + self.u * self.e
        return out, torch.stack([self.u, self.m, self.e])


def _seeded(fn):
    def make():
        torch.manual_seed(0)
        return fn()

    make.__name__, make.__doc__ = fn.__name__, fn.__doc__
    return make


@_seeded
def side_effect_mlp() -> nn.Module:
    """:class:`SideEffectMLP`, seeded."""
    return SideEffectMLP().eval()


@_seeded
def fills_mlp() -> nn.Module:
    """:class:`FillsMLP`, seeded."""
    return FillsMLP().eval()
