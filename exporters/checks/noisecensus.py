"""The noise census: which random draws a model's forward makes, and from which module.

:func:`noise_census` runs the forward once under a dispatch mode that records every random draw
(ops tagged ``nondeterministic_seeded``) with the module that made it, at two batch sizes, so a
draw whose shape does not follow the batch (weight-shaped noise, which one pass over a tiled
batch would share across the S samples) is told apart from per-row noise (activations, dropout
masks). Families use it to detect self-sampling networks (hand-written Bayes-by-backprop layers,
noise injection: :func:`draws_own_noise`) and to refuse noise they would get wrong
(:func:`shared_noise`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..modules.btlayers import bayesian_layers
from ..modules.dropout import DROPOUT_CALLS, mc_mode, swap_random_calls

__all__ = [
    "Draw",
    "draws_own_noise",
    "noise_census",
    "shared_noise",
]

_ALPHA_FNS = ("alpha_dropout", "feature_alpha_dropout")


@dataclass(frozen=True)
class Draw:
    """One random draw of a forward: the module that made it (``""``: the root's own forward),
    the aten op, the drawn tensor's shape, whether it is dropout and whether its shape follows
    the batch (per-row noise) or not (shared noise, e.g. shaped like a weight)."""

    module: str
    op: str
    shape: tuple[int, ...]
    dropout: bool
    per_row: bool
    into_state: str = ""  # the buffer / parameter an in-place draw writes (``eps.normal_()``)
    call: str = ""  # the dropout call that drew it (``F.scaled_dot_product_attention``), if any
    hidden: bool = False  # that call reached qbnn only through its TorchFunctionMode

    def where(self) -> str:
        return f"module '{self.module}'" if self.module else "the model's own forward"


_Record = tuple[str, str, tuple[int, ...], bool, str, str, bool]


class _Recorder(TorchDispatchMode):
    def __init__(self, stack, flags: dict, state: dict[int, str]) -> None:
        super().__init__()
        self.stack, self.flags, self.state = stack, flags, state
        self.draws: list[_Record] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if torch.Tag.nondeterministic_seeded in func.tags:
            name, mod = self.stack[-1] if self.stack else ("", None)
            dropout = self.flags["dropout"] or isinstance(mod, nn.RNNBase)
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else ()
            op = str(func.overloadpacket.__name__)
            into = ""
            if op.endswith("_") and args and isinstance(args[0], torch.Tensor):
                into = self.state.get(args[0].untyped_storage().data_ptr(), "")
            call, hidden = self.flags["call"], self.flags["hidden"]
            self.draws.append((name, op, shape, dropout, into, call, hidden))
        return out


@contextlib.contextmanager
def _dropout_flag(flags: dict, net: nn.Module):
    """Mark draws made inside the dropout calls qbnn rewrites (:data:`DROPOUT_CALLS`:
    ``F.dropout*``, which ``nn.Dropout*`` call, ``torch.dropout``, SDPA's dropout and
    ``nn.MultiheadAttention``'s, however forward reached them) and the alpha dropouts."""

    def flagged(original, *args, _hidden=False, **kwargs):
        outer = dict(flags)
        if not flags["dropout"]:
            name = DROPOUT_CALLS[original][0] if original in DROPOUT_CALLS else original.__name__
            flags.update(dropout=True, call=name, hidden=_hidden)
        try:
            return original(*args, **kwargs)
        finally:
            flags.update(outer)

    def hidden(original, *args, **kwargs):
        return flagged(original, *args, _hidden=True, **kwargs)

    alpha = {n: getattr(F, n) for n in _ALPHA_FNS}
    for n, fn in alpha.items():
        setattr(F, n, lambda *a, _fn=fn, **k: flagged(_fn, *a, **k))
    try:
        with swap_random_calls(flagged, net, hidden):
            yield
    finally:
        for n, fn in alpha.items():
            setattr(F, n, fn)


def _record(net: nn.Module, x: torch.Tensor) -> list[_Record]:
    stack: list[tuple[str, nn.Module]] = []
    flags = {"dropout": False, "call": "", "hidden": False}
    hooks = []

    def enter(name: str, mod: nn.Module) -> None:
        stack.append((name, mod))

    def leave(*_) -> None:
        stack.pop()  # returns None: the module's output is kept

    for name, mod in net.named_modules():
        hooks.append(mod.register_forward_pre_hook(lambda m, a, n=name: enter(n, m)))
        hooks.append(mod.register_forward_hook(leave))
    state = {t.untyped_storage().data_ptr(): n for n, t in net.named_buffers()}
    state.update({p.untyped_storage().data_ptr(): n for n, p in net.named_parameters()})
    rec = _Recorder(stack, flags, state)
    try:
        with torch.no_grad(), torch.random.fork_rng(), _dropout_flag(flags, net), rec:
            net(x)
    finally:
        for h in hooks:
            h.remove()
    return rec.draws


def noise_census(model: nn.Module, x: torch.Tensor) -> list[Draw]:
    """Every random draw of ``model``'s forward on ``x [B, *F]`` in MC mode (train mode except
    normalization layers, as the sampling families run it), in call order.

    ``per_row`` compares with a second run on ``B + 1`` rows: a draw whose shape changes follows
    the batch. Returns ``[]`` for a forward that fails (the export's own probe reports it).
    """
    net = mc_mode(copy.deepcopy(model))
    xb = torch.cat([x, x[:1]])
    try:
        first, second = _record(net, x), _record(net, xb)
    except Exception:  # noqa: BLE001 - the sampler probe names the model's own error
        return []
    same_calls = len(first) == len(second)
    out = []
    for i, (name, op, shape, dropout, into, call, hidden) in enumerate(first):
        per_row = not same_calls or second[i][2] != shape
        out.append(Draw(name, op, shape, dropout, per_row, into, call, hidden))
    return out


def shared_noise(draws: Sequence[Draw]) -> list[Draw]:
    """Non-dropout draws whose shape does not follow the batch (weight-shaped noise)."""
    return [d for d in draws if not d.dropout and not d.per_row]


def draws_own_noise(model: object, x: torch.Tensor) -> bool:
    """Whether ``model``'s forward draws noise other than dropout (the ``stochastic`` family)."""
    if not isinstance(model, nn.Module) or any(True for _ in bayesian_layers(model)):
        return False
    return any(not d.dropout for d in noise_census(model, x))
