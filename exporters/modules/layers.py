"""Export-time replacements for stochastic torch layers.

Bayesian-Torch layers draw noise with ``eps.data.normal_()`` (an in-place mutation that
``torch.export`` cannot trace). Before export each such layer is swapped for one of the modules
below, which hold the posterior's tensors as buffers (exported as initializers) and draw noise
with functional random ops. Inputs are ``[S * B, ...]`` (sample axis folded into the batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .noise import normal_like, sign_like
from .ops import ConvSpec, apply_per_sample, apply_shared

__all__ = [
    "FixedLayer",
    "FlipoutLayer",
    "GaussianLayer",
    "LRTLayer",
    "SampleContext",
]


class SampleContext:
    """Carries the dynamic sample count S to every export-time layer during one forward.

    ``template`` is a float tensor ``[S]`` whose length is S; noise templates are derived from it
    so that the exported graph's noise shapes follow the ``num_samples`` input.
    """

    def __init__(self) -> None:
        self.template: torch.Tensor | None = None

    @property
    def num_samples(self) -> int | torch.SymInt:
        if self.template is None:
            raise RuntimeError("SampleContext used outside a sampled forward pass")
        return self.template.shape[0]

    def noise(self, shape: torch.Size) -> torch.Tensor:
        """Standard normal noise ``[S, *shape]``."""
        s = self.num_samples
        ones = (1,) * len(shape)
        tmpl = self.template.reshape(s, *ones).expand(s, *shape)
        return normal_like(tmpl)


@dataclass(frozen=True)
class GaussianLayer:
    """A mean-field Gaussian posterior of one layer: ``W ~ N(mu, sigma^2)`` elementwise.

    ``mu_w``/``sigma_w``: ``[out, in]`` or ``[O, C/groups, *kernel]``; biases ``[out]``.
    """

    mu_w: torch.Tensor
    sigma_w: torch.Tensor
    mu_b: torch.Tensor | None
    sigma_b: torch.Tensor | None
    conv: ConvSpec | None
    returns_kl: bool

    def sample(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One exact posterior draw ``(W, b)`` using ``generator``."""
        eps = torch.randn(self.mu_w.shape, generator=generator, dtype=self.mu_w.dtype)
        w = self.mu_w + self.sigma_w * eps
        if self.mu_b is None:
            return w, None
        eps_b = torch.randn(self.mu_b.shape, generator=generator, dtype=self.mu_b.dtype)
        return w, self.mu_b + self.sigma_b * eps_b


class _ExportLayer(nn.Module):
    """Shared plumbing: buffers and Bayesian-Torch's ``(out, kl)`` return convention."""

    def __init__(self, conv: ConvSpec | None, returns_kl: bool) -> None:
        super().__init__()
        self.conv = conv
        self.returns_kl = returns_kl

    def _opt(self, name: str, value: torch.Tensor | None) -> None:
        self.register_buffer(name, None if value is None else value.detach().clone())

    def forward(self, x: torch.Tensor, return_kl: bool = True):
        out = self.compute(x)
        if self.returns_kl and return_kl:
            return out, torch.zeros((), dtype=out.dtype)
        return out

    def compute(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class _GaussianSampled(_ExportLayer):
    """Holds ``mu`` and ``sigma`` of weight and bias, and the shared sample context."""

    def __init__(self, post: GaussianLayer, ctx: SampleContext) -> None:
        super().__init__(post.conv, post.returns_kl)
        self.ctx = ctx
        for name in ("mu_w", "sigma_w", "mu_b", "sigma_b"):
            self._opt(name, getattr(post, name))


class LRTLayer(_ExportLayer):
    """``lrt`` mode: ``out = x*mu + sqrt(x^2 * sigma^2) * eps`` with eps per output element."""

    def __init__(self, post: GaussianLayer) -> None:
        super().__init__(post.conv, post.returns_kl)
        self._opt("mu_w", post.mu_w)
        self._opt("var_w", post.sigma_w**2)
        self._opt("mu_b", post.mu_b)
        self._opt("var_b", None if post.sigma_b is None else post.sigma_b**2)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        mean = apply_shared(x, self.mu_w, self.mu_b, self.conv)
        var = apply_shared(x * x, self.var_w, self.var_b, self.conv)
        return mean + torch.sqrt(torch.clamp(var, min=1e-16)) * normal_like(mean)


class FlipoutLayer(_GaussianSampled):
    """Bayesian-Torch's flipout estimator with one delta-weight draw per MC sample.

    ``out = f(x, mu) + f(x * s_in, sigma * eps_s) * s_out`` with random sign tensors shaped like
    the layer's input and output, exactly as ``LinearFlipout`` / ``Conv2dFlipout`` compute it.
    """

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        outputs = apply_shared(x, self.mu_w, self.mu_b, self.conv)
        delta_w = self.sigma_w * self.ctx.noise(self.sigma_w.shape)
        delta_b = None
        if self.sigma_b is not None:
            delta_b = self.sigma_b * self.ctx.noise(self.sigma_b.shape)
        s = self.ctx.num_samples
        perturbed = apply_per_sample(x * sign_like(x), delta_w, delta_b, self.conv, s)
        return outputs + perturbed * sign_like(outputs)


class FixedLayer(_ExportLayer):
    """A deterministic layer holding one fixed posterior draw (``frozen:K`` members)."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        conv: ConvSpec | None,
        returns_kl: bool,
    ) -> None:
        super().__init__(conv, returns_kl)
        self._opt("weight", weight)
        self._opt("bias", bias)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return apply_shared(x, self.weight, self.bias, self.conv)
