"""The side effects of a forward: attributes it writes and module state it changes in place.

Third-party Bayes-by-backprop layers keep bookkeeping for their ELBO in ``forward``:
torch-uncertainty's ``BayesLinear`` / ``BayesConv2d`` write ``self.log_prior`` and
``self.log_variational_posterior`` (and their samplers ``self.sigma`` / ``self.weight``), blitz's
``BayesianLinear`` / ``BayesianConv2d`` draw their noise in place into a buffer
(``self.eps_w.data.normal_()``) and write ``self.w``. ``torch.export`` refuses both inside the
sample loop ("HOP: Unsafe side effect", in-place mutation of a buffer), although neither changes
what one forward returns for its own draw. :func:`side_effects` runs the forward once and lists
them; the ``stochastic`` family then traces the forward with them neutralised
(:mod:`qbnn.exporters.modules.pureforward`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode

from ..modules.dropout import mc_mode

__all__ = ["SideEffects", "detached_copy", "side_effects"]

#: ``nn.Module`` bookkeeping that is not the user's state
_MODULE_SLOTS = frozenset(
    {"_parameters", "_buffers", "_modules", "training", "_forward_hooks",
     "_forward_pre_hooks", "_backward_hooks", "_forward_hooks_with_kwargs",
     "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called", "_state_dict_hooks",
     "_load_state_dict_pre_hooks", "_state_dict_pre_hooks", "_load_state_dict_post_hooks",
     "_non_persistent_buffers_set", "_backward_pre_hooks", "_is_full_backward_hook"}
)  # fmt: skip


@dataclass(frozen=True)
class SideEffects:
    """What one forward changes besides its output: ``attributes`` written (``"fc1.log_prior"``)
    and ``state`` (buffers / parameters) changed in place, with the op
    (``"fc1.weight_sampler.eps_w (normal_)"``). Empty (falsy) for a side-effect-free forward."""

    attributes: tuple[str, ...] = ()
    state: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.attributes or self.state)

    def note(self) -> str:
        """One line for the export's notes."""
        parts = []
        if self.attributes:
            parts.append(f"attribute writes dropped ({_few(self.attributes)})")
        if self.state:
            parts.append(f"in-place writes into module state made functional ({_few(self.state)})")
        return "the forward's side effects were neutralised for tracing: " + "; ".join(parts)


def _few(names: tuple[str, ...], n: int = 3) -> str:
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def _attrs(net: nn.Module) -> dict[tuple[str, str], int]:
    """``{(module, attribute): id(value)}`` of every module's plain attributes."""
    out = {}
    for name, mod in net.named_modules():
        for key, value in vars(mod).items():
            if key not in _MODULE_SLOTS:
                out[(name, key)] = id(value)
    return out


class _StateWrites(TorchDispatchMode):
    """Records ops that write (in place) into a tensor sharing storage with module state."""

    def __init__(self, state: dict[StorageWeakRef, str]) -> None:
        super().__init__()
        self.state = state
        self.writes: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        schema = func._schema
        if schema.is_mutable:
            for arg_schema, arg in zip(schema.arguments, args, strict=False):
                info = arg_schema.alias_info
                if info is not None and info.is_write and isinstance(arg, torch.Tensor):
                    name = self.state.get(StorageWeakRef(arg.untyped_storage()))
                    entry = f"{name} ({func.overloadpacket.__name__})"
                    if name is not None and entry not in self.writes:
                        self.writes.append(entry)
        return func(*args, **kwargs)


def side_effects(model: object, x: torch.Tensor) -> SideEffects:
    """The side effects of one forward of ``model`` on ``x [B, *F]`` in MC mode (run on a copy;
    the caller's model and RNG are untouched). A forward that raises gives no side effects (the
    export's own probe reports its error); a non-module gives none."""
    if not isinstance(model, nn.Module):
        return SideEffects()
    net = mc_mode(copy.deepcopy(model))
    state = {StorageWeakRef(t.untyped_storage()): n for n, t in net.named_buffers()}
    state.update({StorageWeakRef(p.untyped_storage()): n for n, p in net.named_parameters()})
    before = _attrs(net)
    rec = _StateWrites(state)
    try:
        with torch.no_grad(), torch.random.fork_rng(), rec:
            net(x)
    except Exception:  # noqa: BLE001 - the export's probe names the model's own error
        return SideEffects()
    after = _attrs(net)
    written = [k for k, v in after.items() if before.get(k) != v]
    attrs = tuple(f"{m}.{a}" if m else a for m, a in written)
    return SideEffects(attributes=attrs, state=tuple(rec.writes))


def detached_copy(model: object) -> object:
    """``model`` itself, or for a module whose plain attributes hold tensors with autograd
    history (what a trained layer's forward left behind: blitz's ``self.w``, torch-uncertainty's
    ``self.log_prior``), a deep copy with those tensors detached: ``copy.deepcopy`` refuses
    non-leaf tensors, and the export copies the model. The caller's model is not changed."""
    if not isinstance(model, nn.Module):
        return model
    memo: dict[int, object] = {}
    for mod in model.modules():
        for key, value in vars(mod).items():
            if key not in _MODULE_SLOTS and isinstance(value, torch.Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo) if memo else model
