"""Members or MC samples stacked on the batch axis, detected from the model's own forward.

One-network ensembles (torch-uncertainty's packed ensembles, BatchEnsemble, MIMO, Masksembles)
and ensemble / MC-dropout wrappers return ``[k * B, ...]`` for an input ``[B, ...]``: k members
(or k MC samples), member-major (rows ``m * B .. m * B + B - 1`` are member ``m``).
:func:`stacked_rows` runs the forward in eval mode (as the library evaluates it) at two batch
sizes and reports k when the output has k rows per input row at both, and whether the rows are
random (two passes with different seeds differ: stacked MC samples, not members). A
deterministic forward must also be member-major: with the input rows reversed, each member's
rows come back reversed (an ``[(b t), ...]`` sequence output is not taken for k members).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..modules.wrapper import first_output

__all__ = ["Stacking", "shared_draws", "stacked_output", "stacked_rows"]


@dataclass(frozen=True)
class Stacking:
    """``k`` members (or samples) per input row; ``random``: the rows are MC samples (two
    passes of the forward on the same input differ)."""

    k: int
    random: bool


def stacked_output(model: nn.Module, x: torch.Tensor, seed: int = 0) -> torch.Tensor | None:
    """``model(x)`` (its first output) in eval mode under ``seed``, the caller's RNG and train
    flags untouched; None when the forward raises or returns no tensor."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(seed)
            model.eval()
            out = first_output(model(x))
    except Exception:  # noqa: BLE001 - not stacked; the export's probe names the model's error
        return None
    finally:
        for m, training in flags:
            m.training = training
    return out if isinstance(out, torch.Tensor) and out.dim() >= 1 else None


def _rows_per_input(model: nn.Module, x: torch.Tensor) -> int | None:
    out = stacked_output(model, x)
    if out is None or out.shape[0] % x.shape[0]:
        return None
    return out.shape[0] // x.shape[0]


def stacked_rows(model: object, x: torch.Tensor) -> Stacking | None:
    """k and randomness of a forward that stacks k > 1 members on the batch axis of
    ``x [B, *F]``, or None (not a module, not stacked, or not member-major)."""
    if not isinstance(model, nn.Module) or x.shape[0] < 1:
        return None
    x2 = torch.cat([x, x[:1]]) if x.shape[0] > 1 else torch.cat([x, x])
    k = _rows_per_input(model, x)
    if k is None or k < 2 or _rows_per_input(model, x2) != k:
        return None
    random = not _same(stacked_output(model, x2, 0), stacked_output(model, x2, 1))
    if not random and not member_major(model, x2, k):
        return None
    return Stacking(k, random)


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return a is not None and b is not None and a.shape == b.shape and torch.equal(a, b)


def member_major(model: nn.Module, x: torch.Tensor, k: int) -> bool:
    """Whether ``model(x) [k * B, ...]`` is member-major: reversing the B input rows reverses
    the rows of each member block ``[k, B, ...]`` (deterministic forwards only)."""
    if x.shape[0] < 2:
        return True
    out, flipped = stacked_output(model, x), stacked_output(model, x.flip(0))
    if out is None or flipped is None or out.shape != flipped.shape:
        return False
    a = out.reshape(k, x.shape[0], -1)
    b = flipped.reshape(k, x.shape[0], -1).flip(1)
    if not (a.is_floating_point() and b.is_floating_point()):
        return bool(torch.equal(a, b))
    scale = 1.0 + float(a.abs().max()) if a.numel() else 1.0
    gap = float((a - b).abs().max()) if a.numel() else 0.0
    return math.isfinite(gap) and gap <= 1e-4 * scale


class _Draws(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if torch.Tag.nondeterministic_seeded in func.tags and isinstance(out, torch.Tensor):
            self.shapes.append((str(func.overloadpacket.__name__), tuple(out.shape)))
        return out


def _draws(model: nn.Module, x: torch.Tensor) -> list[tuple[str, tuple[int, ...]]] | None:
    rec = _Draws()
    with rec:
        out = stacked_output(model, x)
    return rec.shapes if out is not None else None


def shared_draws(model: nn.Module, x: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """The random draws ``(aten op, shape)`` of the eval-mode forward on ``x [B, *F]`` whose
    shape does not follow the batch (weight-shaped noise), found by a second run on B + 1 rows.
    One pass over an input tiled n times would share such a draw across the n tiles."""
    first, second = _draws(model, x), _draws(model, torch.cat([x, x[:1]]))
    if first is None or second is None or len(first) != len(second):
        return []
    return [a for a, b in zip(first, second, strict=True) if a[1] == b[1]]
