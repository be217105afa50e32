"""BatchNorm statistics under whole-network weight posteriors (SWAG, Laplace, Gaussian, mean-field).

A BatchNorm layer in eval mode normalizes with the running statistics collected while training
the *mean* weights. Under a whole-network posterior every draw has other weights, so those
statistics are stale for it; the SWAG authors (Maddox et al., 2019, ``utils.bn_update`` in
``wjmaddox/swa_gaussian``) therefore recompute them per draw with one pass over training data.
A graph that samples weights in place cannot do that (it has no training data), so qbnn:

* warns at export; given ``bn_update`` data (training inputs) with a mode that samples in the
  graph, :func:`measure_effect` takes 8 exact draws of the posterior, evaluates each with the
  stored statistics and with statistics recomputed on the data, and the warning states the
  largest change of the predictive (``mean_probs`` or ``pred_mean``) on the example input;
* for ``frozen:K`` with ``bn_update`` data, recomputes the statistics of every stored draw
  (:func:`recompute`), with :func:`torch.optim.swa_utils.update_bn` (the same cumulative
  average as the authors' ``bn_update``), so the graph is the authors' predictive.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable

import torch
from torch import nn

from qbnn.runtimes.contract import Task
from qbnn.runtimes.errors import ConfigError

from ..modules.btlayers import FLIPOUT_TYPES, REPARAM_TYPES
from ..modules.heads import HeadSpec, to_probs
from ..modules.loopmodel import SampleLoopModel, StackedDraws, stack_state_dicts
from ..modules.vectormodel import LastLayerModel
from ..registry import BuiltModel, Exporter, SamplingMode, known_families
from .outputform import network_of

__all__ = [
    "apply_bn_policy",
    "batchnorm_after_posterior",
    "has_batchnorm",
    "measure_effect",
    "recompute",
]

log = logging.getLogger("qbnn.export")

#: families whose every draw changes the whole network's weights
_MEASURE_DRAWS = 8
#: rows per batch when ``bn_update`` is one tensor (the SWAG authors' CIFAR batch size); the
#: statistics are a cumulative average over batches, so pass your own batches to match a loader
BN_BATCH = 128


def has_batchnorm(net: nn.Module | None) -> bool:
    """Whether ``net`` holds a BatchNorm layer that tracks running statistics."""
    return net is not None and any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        for m in net.modules()
    )


def batchnorm_after_posterior(net: nn.Module | None, x: torch.Tensor) -> bool:
    """Whether a BatchNorm layer (tracking running statistics) runs after a sampled layer in
    ``net``'s forward on ``x [B, ...]``. Sampled layers are Bayesian-Torch's mean-field and
    flipout layers; a network with none of them (SWAG, Laplace, Gaussian posteriors over plain
    layers) counts every layer as sampled, so any BatchNorm counts. A BatchNorm that runs only
    before the first sampled layer (a deterministic backbone under a Bayesian head) sees the same
    inputs in every draw: its stored statistics are right for all of them."""
    if not has_batchnorm(net):
        return False
    sampled = (*REPARAM_TYPES, *FLIPOUT_TYPES)
    if not any(type(m).__name__ in sampled for m in net.modules()):
        return True
    order: list[str] = []
    hooks = [
        m.register_forward_pre_hook(lambda mod, _a: order.append(_kind(mod, sampled)))
        for m in net.modules()
        if _kind(m, sampled)
    ]
    try:
        with torch.no_grad():
            net(x)
    except Exception:  # the probe is advisory: a forward that fails here fails later by name
        return True
    finally:
        for h in hooks:
            h.remove()
    return "bn" in order[order.index("sampled") :] if "sampled" in order else False


def _kind(m: nn.Module, sampled: tuple[str, ...]) -> str:
    if type(m).__name__ in sampled:
        return "sampled"
    bn = isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    return "bn" if bn else ""


BnData = torch.Tensor | Iterable


def _batches(data: BnData) -> Iterable:
    return list(data.split(BN_BATCH)) if isinstance(data, torch.Tensor) else data


def _rows(data: BnData) -> int:
    if isinstance(data, torch.Tensor):
        return len(data)
    return sum(len(b[0] if isinstance(b, (list, tuple)) else b) for b in data)


def recompute(members: list[nn.Module], data: BnData) -> None:
    """Recompute every BatchNorm's running statistics of each member in place from ``data``
    (training inputs ``[N, *F]`` split into batches of :data:`BN_BATCH` rows, or the user's own
    re-iterable batches such as a ``DataLoader``; ``(x, y)`` batches use ``x``): reset, then the
    cumulative average over the batches of one pass in train mode, as the SWAG authors'
    ``bn_update``. Members stay in eval mode; the global torch RNG is restored."""
    with torch.random.fork_rng():
        for m in members:
            torch.optim.swa_utils.update_bn(_batches(data), m)
            m.eval()


def _predictive(members: list[nn.Module], x: torch.Tensor, task: Task, head: HeadSpec):
    with torch.no_grad():
        outs = torch.stack([_out(m(x)).reshape(x.shape[0], -1) for m in members]).double()
    if task == Task.CLASSIFICATION:
        return to_probs(outs, head).mean(0)
    return outs.mean(0)


def _out(y):
    return y[0] if isinstance(y, (tuple, list)) else y


def measure_effect(
    members: list[nn.Module], x: torch.Tensor, data: torch.Tensor, task: Task, head: HeadSpec
) -> float:
    """Largest |change| of the predictive on ``x`` (``mean_probs`` in probability, or
    ``pred_mean`` in output units) when the members' BatchNorm statistics are recomputed on
    ``data`` instead of the stored ones."""
    stored = _predictive(members, x, task, head)
    fresh = [copy.deepcopy(m) for m in members]
    recompute(fresh, data)
    return float((_predictive(fresh, x, task, head) - stored).abs().max())


def apply_bn_policy(
    model: object,
    family: str,
    mode: SamplingMode,
    exporter: Exporter,
    built: BuiltModel,
    x: torch.Tensor,
    bn_update: torch.Tensor | None,
    task: Task,
    head: HeadSpec,
) -> None:
    """BatchNorm statistics of whole-network posteriors over BatchNorm nets; adds notes.

    ``frozen:K`` with ``bn_update`` data: every draw's statistics are recomputed. Other modes
    with data: the effect of the stored statistics is measured and warned about. Without data:
    a warning that the effect is unmeasured. Raises :class:`ConfigError` when ``bn_update`` is
    given for a model it cannot apply to (no BatchNorm, last-layer or ensemble posteriors).
    """
    net = network_of(model)
    whole = exporter.whole_network and not isinstance(built.module, LastLayerModel)
    if bn_update is not None:
        _check_data(bn_update, x)
        if not (whole and has_batchnorm(net)):
            names = ", ".join(e.family for e in known_families().values() if e.whole_network)
            raise ConfigError(
                "bn_update recomputes BatchNorm statistics per posterior draw: it applies to "
                f"whole-network posteriors ({names}; not last-layer ones) of a network with "
                f"BatchNorm; got posterior '{family}'"
                + ("" if has_batchnorm(net) else " on a network without BatchNorm")
            )
    if not whole or not has_batchnorm(net):
        return
    if bn_update is None and not batchnorm_after_posterior(net, x):
        return  # only a deterministic backbone before the sampled layers has BatchNorm
    if mode.name == "frozen" and bn_update is not None and built.members is not None:
        stored = _predictive(built.members, x, task, head)
        recompute(built.members, bn_update)
        if isinstance(built.module, SampleLoopModel):
            states = [m.state_dict() for m in built.members]
            built.module.source = StackedDraws(stack_state_dicts(states))
        gap = float((_predictive(built.members, x, task, head) - stored).abs().max())
        built.notes.append(
            f"BatchNorm statistics recomputed per draw on {_rows(bn_update)} rows (SWAG's "
            f"bn_update); the predictive moved by up to {gap:.3g} from the stored statistics"
        )
        return
    head_msg = (
        f"the network has BatchNorm and the '{family}' posterior changes every weight, but each "
        "draw reuses the stored BatchNorm statistics (the SWAG authors recompute them per draw)"
    )
    fix = (
        "for the authors' predictive export sampling='frozen:K' with "
        "bn_update=<training inputs> (--bn-update)"
    )
    if bn_update is None:
        msg = f"{head_msg}; the effect is not measured without training inputs: {fix}"
    else:
        probe = exporter.build(model, SamplingMode("frozen", _MEASURE_DRAWS), task=task, seed=0)
        gap = measure_effect(probe.members or [], x, bn_update, task, head)
        what = "mean_probs" if task == Task.CLASSIFICATION else "pred_mean"
        msg = (
            f"{head_msg}: recomputing them on the {_rows(bn_update)} bn_update rows changes {what} "
            f"on the example input by up to {gap:.3g} ({_MEASURE_DRAWS} draws); {fix}"
        )
    log.warning(msg)
    built.notes.append("warning: " + msg)


def _check_data(data: BnData, x: torch.Tensor) -> None:
    if not isinstance(data, torch.Tensor):
        first = next(iter(data), None) if isinstance(data, Iterable) else None
        first = first[0] if isinstance(first, (list, tuple)) and first else first
        if not isinstance(first, torch.Tensor):
            raise ConfigError(
                "bn_update must be training inputs: a tensor [N >= 2, *feature_shape] or "
                f"re-iterable batches of them (a DataLoader); got {type(data).__name__}"
            )
        data = first
    if data.dim() < 1 or len(data) < 2:
        raise ConfigError(
            f"bn_update must be a tensor of training inputs [N >= 2, *feature_shape]; got "
            f"{list(data.shape)}"
        )
    if tuple(data.shape[1:]) != tuple(x.shape[1:]):
        raise ConfigError(
            f"bn_update inputs have feature shape {list(data.shape[1:])} but the example input "
            f"has {list(x.shape[1:])}"
        )
