"""SWAG (Maddox et al., 2019): a Gaussian with diagonal plus low-rank covariance over the weights.

``theta = mean + sqrt(scale) * (sqrt(variance) * z1 + deviations.T @ z2 / sqrt(K - 1))`` with
``z1 ~ N(0, I_P)``, ``z2 ~ N(0, I_K)``; ``deviations [K, P]`` are the last K SGD iterates minus
the running mean (SWAG's ``D``), ``variance = E[theta^2] - E[theta]^2``. The graph samples it
in place (mode ``weight``) or stores K' exact draws (``frozen:K'``). The self-check compares with
the SWAG authors' sampling loop (:func:`swag_draws`, one network per draw). BatchNorm
statistics are the model's running statistics for every draw: the authors' ``bn_update``
(re-estimating them per draw on training data) has no in-graph equivalent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from qbnn.runtimes.contract import Task
from qbnn.runtimes.errors import ConfigError, ExportError

from ..modules.vector import DiagTerm, LowRankTerm, VectorGaussian
from ..registry import BuiltModel, SamplingMode, register_exporter
from ..tensors import CompressTensors
from .gaussian import WeightGaussian, build_weight_gaussian, draw_reference

__all__ = ["SwagPosterior", "build_swag", "swag_draws"]


def _default_names(model: nn.Module) -> tuple[str, ...]:
    return tuple(n for n, p in model.named_parameters() if p.requires_grad)


def _as_vector(snap: Mapping[str, torch.Tensor] | torch.Tensor, names, i: int) -> torch.Tensor:
    if isinstance(snap, torch.Tensor):
        return snap.detach().reshape(-1).double()
    missing = [n for n in names if n not in snap]
    if missing:
        raise ConfigError(f"SWAG snapshot {i} lacks parameters {missing[:3]}")
    return torch.cat([snap[n].detach().reshape(-1).double() for n in names])


@dataclass(frozen=True)
class SwagPosterior:
    """A SWAG posterior over ``param_names`` of ``model`` (``parameters_to_vector`` order).

    ``mean``, ``variance``: ``[P]``; ``deviations``: ``[K, P]`` or ``None`` (SWAG-diagonal);
    ``scale``: SWAG's covariance scale (0.5 in the paper).
    """

    model: nn.Module
    mean: torch.Tensor
    variance: torch.Tensor
    deviations: torch.Tensor | None = None
    scale: float = 0.5
    param_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        names = self.param_names or _default_names(self.model)
        object.__setattr__(self, "param_names", tuple(names))
        params = dict(self.model.named_parameters())
        unknown = [n for n in names if n not in params]
        if unknown:
            raise ConfigError(f"SWAG param_names not in the model: {unknown[:3]}")
        p = sum(params[n].numel() for n in names)
        if self.mean.shape != (p,) or self.variance.shape != (p,):
            raise ConfigError(
                f"SWAG mean and variance must be [P] = [{p}] for the named parameters; got "
                f"{list(self.mean.shape)} and {list(self.variance.shape)}"
            )
        if self.deviations is not None and (
            self.deviations.dim() != 2 or self.deviations.shape[1] != p
        ):
            raise ConfigError(
                f"SWAG deviations must be [K, {p}]; got {list(self.deviations.shape)}"
            )
        if self.deviations is not None and self.deviations.shape[0] < 2:
            raise ConfigError(
                "SWAG's low-rank term needs K >= 2 deviations (it is scaled by 1/sqrt(K - 1)); "
                f"got K = {self.deviations.shape[0]} (pass deviations=None for SWAG-diagonal)"
            )
        if bool((self.variance < 0).any()) or not self.scale > 0:
            raise ConfigError("SWAG variance must be >= 0 and scale > 0")

    @property
    def rank(self) -> int:
        return 0 if self.deviations is None else int(self.deviations.shape[0])

    @classmethod
    def from_snapshots(
        cls,
        model: nn.Module,
        snapshots: Sequence[Mapping[str, torch.Tensor] | torch.Tensor],
        *,
        rank: int = 20,
        scale: float = 0.5,
        param_names: Sequence[str] | None = None,
    ) -> SwagPosterior:
        """SWAG's moments from SGD iterates (state dicts or ``[P]`` vectors), in order.

        Running first and second moments; the deviation of iterate ``n`` is taken against the
        running mean after it (as in the authors' ``collect_model``); the last ``rank`` are kept.
        """
        names = tuple(param_names or _default_names(model))
        if rank == 1 or rank < 0:
            raise ConfigError(f"SWAG rank must be 0 (diagonal only) or >= 2; got {rank}")
        if len(snapshots) < 2:
            raise ConfigError(f"SWAG needs at least 2 snapshots; got {len(snapshots)}")
        mean = sq = None
        devs: list[torch.Tensor] = []
        for n, snap in enumerate(snapshots):
            v = _as_vector(snap, names, n)
            mean = v.clone() if mean is None else (n * mean + v) / (n + 1)
            sq = v * v if sq is None else (n * sq + v * v) / (n + 1)
            devs = [*devs, v - mean][-rank:] if rank > 0 else []
        var = torch.clamp(sq - mean * mean, min=1e-30)
        d = torch.stack(devs).float() if len(devs) >= 2 else None
        return cls(model, mean.float(), var.float(), d, scale, names)

    def gaussian(self) -> VectorGaussian:
        """As structured terms: diagonal ``sqrt(scale * var)`` plus low-rank
        ``sqrt(scale / (K - 1)) * deviations``."""
        terms = [DiagTerm(0, torch.sqrt(self.scale * self.variance.double()).float())]
        if self.rank >= 2:
            f = math.sqrt(self.scale / (self.rank - 1))
            terms.append(LowRankTerm(0, (self.deviations.double() * f).float()))
        return VectorGaussian(self.mean.float(), tuple(terms))


def swag_draws(post: SwagPosterior):
    """The SWAG authors' per-draw formula, independent of :meth:`SwagPosterior.gaussian`:
    ``draws(S, gen) -> theta [S, P]``."""
    mean, std = post.mean.double(), post.variance.double().sqrt()
    k = post.rank

    def draws(s: int, gen: torch.Generator) -> torch.Tensor:
        out = []
        for _ in range(s):
            rand = std * torch.randn(mean.shape, generator=gen, dtype=torch.float64)
            if k >= 2:
                z2 = torch.randn(k, generator=gen, dtype=torch.float64)
                rand = rand + post.deviations.double().t() @ z2 / math.sqrt(k - 1)
            out.append((mean + math.sqrt(post.scale) * rand).float())
        return torch.stack(out)

    return draws


@register_exporter(
    "swag",
    modes=("weight", "frozen"),
    default_mode="weight",
    detect=lambda obj: isinstance(obj, SwagPosterior),
    description="a SwagPosterior (SWA mean, diagonal variance, low-rank deviations)",
    priority=20,
    whole_network=True,
    tensors=CompressTensors(refused="its weights are drawn from factors at run time"),
)
def build_swag(post, mode: SamplingMode, *, task: Task, seed: int | None) -> BuiltModel:
    """SWAG -> graph sampling ``theta`` in place (``weight``) or K frozen draws."""
    if not isinstance(post, SwagPosterior):
        raise ExportError(f"the 'swag' family needs a SwagPosterior, got {type(post).__name__}")
    gauss = post.gaussian()
    note = f"SWAG over {gauss.num_params} parameters, rank {post.rank}, scale {post.scale}"
    weights = WeightGaussian(post.model, gauss, param_names=post.param_names)
    reference = draw_reference(weights, swag_draws(post))  # the authors' loop, net per draw
    built = build_weight_gaussian(weights, mode, task=task, seed=seed, reference=reference)
    built.notes.insert(0, note)
    return built
