"""Any Gaussian posterior over named weights, given by its square-root factors.

:class:`WeightGaussian` is the family every weight-space Gaussian export goes through: laplace-
torch objects and SWAG convert to it, and users with their own Laplace / KFAC / SWAG code hand
one over directly (``MAP weights plus the posterior's factors``)::

    post = VectorGaussian(mean, (DenseTerm(0, cholesky_of_covariance),))
    export(WeightGaussian(model, post, last_layer="fc"), x, "model.onnx")

With ``last_layer`` (the module name of a final ``nn.Linear``) the body runs once and only the
head is sampled; otherwise every named parameter (Linear / Conv / BatchNorm) is sampled per MC
sample.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from qbnn.runtimes.contract import Task
from qbnn.runtimes.errors import ConfigError, ExportError

from ..modules.loopmodel import UNROLL_MAX, SampleLoopModel, StackedDraws
from ..modules.vector import DiagTerm, VectorGaussian, VectorSampler
from ..modules.vectormodel import (
    FrozenTable,
    LastLayerModel,
    ParamContext,
    VectorSource,
    last_layer_body,
    param_slots,
    snapshot,
)
from ..modules.wrapper import EnsembleModel, first_output
from ..registry import BuiltModel, SamplingMode, register_exporter
from ..tensors import CompressTensors
from .reference import export_generator, member_sampler

__all__ = ["WeightGaussian", "build_weight_gaussian", "draw_reference", "from_pyro_guide"]

Reference = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class WeightGaussian:
    """``theta ~ posterior`` over ``param_names`` of ``model`` (``parameters_to_vector`` order).

    ``param_names`` defaults to the ``last_layer``'s weight and bias, else every parameter with
    ``requires_grad``. ``model`` holds the architecture (and every parameter outside the
    posterior); ``posterior.mean`` is the MAP / SWA vector ``[P]``.
    """

    model: nn.Module
    posterior: VectorGaussian
    param_names: tuple[str, ...] | None = None
    last_layer: str | None = None

    def __post_init__(self) -> None:
        if self.last_layer is not None:
            try:
                head = self.model.get_submodule(self.last_layer)
            except AttributeError:
                raise ConfigError(f"last_layer '{self.last_layer}' is not a submodule") from None
            if not isinstance(head, nn.Linear):
                raise ConfigError(
                    f"last_layer '{self.last_layer}' is a {type(head).__name__}; a last-layer "
                    "posterior needs an nn.Linear"
                )
            own = tuple(f"{self.last_layer}.{n}" for n, _ in head.named_parameters())
            names = tuple(self.param_names or own)
            if names != own:
                raise ConfigError(f"a last-layer posterior covers {list(own)}; got {list(names)}")
        else:
            names = tuple(
                self.param_names or (n for n, p in self.model.named_parameters() if p.requires_grad)
            )
        object.__setattr__(self, "param_names", names)
        params = dict(self.model.named_parameters())
        missing = [n for n in names if n not in params]
        if missing:
            raise ConfigError(f"posterior parameters not in the model: {missing[:3]}")
        p = sum(params[n].numel() for n in names)
        if self.posterior.num_params != p:
            raise ConfigError(
                f"the posterior has {self.posterior.num_params} parameters but "
                f"{len(names)} named parameters hold {p}"
            )


def from_pyro_guide(model: nn.Module, guide: object) -> WeightGaussian:
    """A Pyro mean-field guide (``AutoNormal``, as TyXe builds it) as a :class:`WeightGaussian`.

    Each latent site of ``guide`` must be named after a parameter of ``model`` (a plain torch
    network with the guide's architecture: ``"fc1.weight"``, as TyXe and a Pyro model that
    calls ``torch.func.functional_call`` with ``pyro.sample(name, ...)`` per parameter name
    it) and have real support; its ``loc`` / ``scale`` (``[*shape]``) become that parameter's
    mean and diagonal scale. The guide must have run once (Pyro builds its sites lazily).
    Raises :class:`ConfigError` for any other guide, a site that is not a parameter of
    ``model``, a shape mismatch or a constrained site.
    """
    trace = getattr(guide, "prototype_trace", None)
    if trace is None or not hasattr(guide, "locs") or not hasattr(guide, "scales"):
        raise ConfigError(
            f"expected a fitted Pyro AutoNormal guide (run it once, e.g. by training it); "
            f"got a {type(guide).__name__}"
        )
    from pyro.util import deep_getattr  # lazy: pyro is optional

    params = dict(model.named_parameters())
    names, means, scales = [], [], []
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        if name not in params:
            raise ConfigError(
                f"guide site '{name}' is not a parameter of {type(model).__name__} (its "
                f"parameters: {', '.join(list(params)[:4])}, ...); name each sample site after "
                "the parameter it replaces"
            )
        support = site["fn"].support
        while hasattr(support, "base_constraint"):  # Independent(...) of a site's .to_event()
            support = support.base_constraint
        if not isinstance(support, type(torch.distributions.constraints.real)):
            raise ConfigError(f"guide site '{name}' has support {site['fn'].support}, not real")
        loc = deep_getattr(guide.locs, name).detach().float()
        scale = deep_getattr(guide.scales, name).detach().float()
        if loc.shape != params[name].shape:
            raise ConfigError(
                f"guide site '{name}' has shape {list(loc.shape)}, the parameter "
                f"{list(params[name].shape)}"
            )
        names.append(name)
        means.append(loc.reshape(-1))
        scales.append(scale.reshape(-1))
    post = VectorGaussian(torch.cat(means), (DiagTerm(0, torch.cat(scales)),))
    return WeightGaussian(model, post, param_names=tuple(names))


def draw_reference(post: WeightGaussian, draws: Callable[[int, torch.Generator], torch.Tensor]):
    """A torch sampler: ``draws(S, gen) -> theta [S, P]``, then the user's whole network per
    draw (its own forward with ``theta`` loaded), last-layer posteriors included: the self-check
    compares the graph with the model itself, so a graph that drops an op of forward (after
    the last layer, say) cannot pass."""
    slots = param_slots(post.model, post.param_names)

    def sample_net(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
        net = copy.deepcopy(post.model).eval()  # one copy, each draw loaded in turn
        outs = []
        with torch.no_grad():
            for theta in draws(s, gen):
                for slot in slots:
                    owner = net.get_submodule(slot.module) if slot.module else net
                    value = theta[slot.start : slot.stop].reshape(slot.shape)
                    getattr(owner, slot.attr).copy_(value)
                outs.append(first_output(net(x)).reshape(x.shape[0], -1).float())
        return torch.stack(outs)

    return sample_net


def build_weight_gaussian(
    post: WeightGaussian,
    mode: SamplingMode,
    *,
    task: Task,
    seed: int | None,
    reference: Reference | None = None,
) -> BuiltModel:
    """``weight``: ``theta`` sampled in the graph; ``frozen:K``: K exact draws stored.

    ``reference`` is the trainer's own sampler for the self-check of ``weight`` mode (default:
    :func:`draw_reference` with torch draws from ``post.posterior``).
    """
    gauss = post.posterior
    frozen = mode.name == "frozen"
    draws = gauss.sample(mode.k or 1, export_generator(seed)) if frozen else None
    ctx = ParamContext()
    if post.last_layer is not None:
        head = post.model.get_submodule(post.last_layer)
        sampler = FrozenTable(draws, ctx) if frozen else VectorSampler(gauss, ctx)
        module: nn.Module = LastLayerModel(
            last_layer_body(post.model, post.last_layer), sampler, ctx, head.out_features,
            head.in_features, head.bias is not None, task,
        )  # fmt: skip
        if frozen:
            table = draws

            def cycle(s: int, gen: torch.Generator) -> torch.Tensor:
                return table[torch.arange(s) % table.shape[0]]

            ref = draw_reference(post, cycle)
            return BuiltModel(module, ref, exact=True, notes=[f"{mode.k} frozen draws"])
    else:
        slots = param_slots(post.model, post.param_names)
        if frozen:
            members = [snapshot(post.model, slots, d) for d in draws]
            module = EnsembleModel(members, task)
            if len(members) > UNROLL_MAX:
                stacks = {t.name: draws[:, t.start : t.stop].reshape(-1, *t.shape) for t in slots}
                net = copy.deepcopy(post.model).eval()
                module = SampleLoopModel(net, StackedDraws(stacks), task)
            notes = [f"{mode.k} frozen draws"]
            return BuiltModel(
                module, member_sampler(members), exact=True, notes=notes, members=members
            )
        net = copy.deepcopy(post.model).eval()
        module = SampleLoopModel(net, VectorSource(VectorSampler(gauss, ctx), ctx, slots), task)
    ref = reference or draw_reference(post, gauss.sample)
    return BuiltModel(module, ref)


def _last_layer(post: object) -> tuple[nn.Module, str] | None:
    """The network and last-layer name a last-layer :class:`WeightGaussian` samples."""
    return (post.model, post.last_layer) if isinstance(post, WeightGaussian) else None


@register_exporter(
    "gaussian",
    modes=("weight", "frozen"),
    default_mode="weight",
    detect=lambda obj: isinstance(obj, WeightGaussian),
    description="a WeightGaussian (MAP weights plus a posterior's square-root factors)",
    priority=30,
    whole_network=True,
    tensors=CompressTensors(refused="its weights are drawn from factors at run time"),
    last_layer=_last_layer,
)
def build_gaussian_family(post, mode: SamplingMode, *, task: Task, seed: int | None) -> BuiltModel:
    """A user-built :class:`WeightGaussian`."""
    if not isinstance(post, WeightGaussian):
        raise ExportError(
            f"the 'gaussian' family needs a WeightGaussian, got {type(post).__name__}"
        )
    where = f"the last layer '{post.last_layer}'" if post.last_layer else "the named weights"
    built = build_weight_gaussian(post, mode, task=task, seed=seed)
    built.notes.insert(0, f"Gaussian over {where} ({post.posterior.num_params} parameters)")
    return built


def names_of(model: nn.Module, params: Sequence[torch.Tensor]) -> tuple[str, ...]:
    """Names of ``params`` (tensors of ``model``) in their order."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    names = tuple(by_id.get(id(p), "") for p in params)
    if not all(names):
        raise ExportError("some posterior parameters are not parameters of the model")
    return names
