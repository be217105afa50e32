"""Torch-side reference samplers used by the export self-check."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..modules.wrapper import first_output

__all__ = ["export_generator", "loop_sampler", "member_sampler"]


def export_generator(seed: int | None) -> torch.Generator:
    """The generator of export-time draws (``frozen:K``): ``seed``, or fresh OS entropy without
    reseeding the caller's global torch RNG."""
    return torch.Generator().manual_seed(
        seed if seed is not None else int(torch.Generator().seed() % 2**31)
    )


def loop_sampler(model: nn.Module) -> Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]:
    """S forward passes of ``model`` in a loop, as the trainer's users run MC inference.

    Returns ``sample(x [B, *F], S, generator) -> [S, B, C]``; torch's global RNG is forked and
    seeded from ``generator`` so the caller's RNG state is untouched.
    """

    def sample(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(seed)
            outs = [first_output(model(x)).reshape(x.shape[0], -1) for _ in range(s)]
        return torch.stack(outs)

    return sample


def member_sampler(
    members: list[nn.Module],
) -> Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]:
    """Deterministic members evaluated in order; sample ``s`` is member ``s mod K``."""

    def sample(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
        del gen
        with torch.no_grad():
            outs = [first_output(m(x)).reshape(x.shape[0], -1) for m in members]
        return torch.stack([outs[i % len(outs)] for i in range(s)])

    return sample
