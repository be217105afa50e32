"""Laplace approximations fitted with laplace-torch (installed --no-deps, see README "Set-up").

Supported posteriors (``Laplace(model, ..., subset_of_weights=..., hessian_structure=...)``):

=================  ======================  =========================================
subset_of_weights  hessian_structure       graph
=================  ======================  =========================================
``last_layer``     ``full``/``kron``/      body once, final Linear sampled S times
                   ``diag``                (:class:`~..modules.vectormodel.LastLayerModel`)
``all``            ``full``/``kron``/      every Linear/Conv/BatchNorm parameter sampled
                   ``diag``                per MC sample (like mean-field ``weight`` mode)
=================  ======================  =========================================

Modes: ``weight`` samples ``theta = mean + delta`` in the graph (``delta`` from the posterior's
own square-root factors, see :mod:`..modules.vector`); ``frozen:K`` stores K exact draws
taken at export time from the same factors with torch (their covariance equals laplace-torch's
posterior covariance: tested). The self-check compares ``weight`` graphs with laplace-torch's own
``predictive_samples(x, pred_type="nn")``, and ``frozen:K`` graphs draw by draw with the stored
draws.
"""

from __future__ import annotations

import torch

from qbnn.runtimes.contract import Task
from qbnn.runtimes.errors import ConfigError, ExportError, UnsupportedLayerError

from ..modules.vector import DenseTerm, DiagTerm, KronTerm, Term, VectorGaussian
from ..registry import BuiltModel, SamplingMode, register_exporter
from ..tensors import CompressTensors
from .gaussian import WeightGaussian, build_weight_gaussian, names_of

__all__ = ["build_laplace", "laplace_posterior", "to_weight_gaussian"]

_SUPPORTED = ("FullLaplace", "KronLaplace", "DiagLaplace")
MAX_DENSE_PARAMS = 8192  # a dense [P, P] factor beyond this is > 256 MB of initializer


def _detect(obj: object) -> bool:
    """Any laplace-torch approximation; unsupported variants get a clear error in ``_kind``."""
    mod = type(obj).__module__ or ""
    return mod.split(".")[0] == "laplace" and any(
        c.__name__ == "BaseLaplace" for c in type(obj).__mro__
    )


def _kind(la) -> tuple[str, bool]:
    """``(structure, last_layer)`` of a fitted laplace-torch object, or a clear error."""
    names = [c.__name__ for c in type(la).__mro__]
    last = "LLLaplace" in names
    if "SubnetLaplace" in names or "FunctionalLaplace" in names or "BaseFunctionalLaplace" in names:
        names = []  # subnetwork and GP (functional) posteriors: not a weight-space Gaussian here
    for base in _SUPPORTED:
        if base in names:
            if not getattr(la, "n_data", 0) or not isinstance(
                getattr(la, "mean", None), torch.Tensor
            ):
                raise ExportError(f"{type(la).__name__} is not fitted: call la.fit(loader) first")
            return base.removesuffix("Laplace").lower(), last
    raise UnsupportedLayerError(
        f"{type(la).__name__} is not supported; qbnn exports laplace-torch's full, kron and "
        "diag Hessian structures over all weights or the last layer (not low-rank, subnetwork "
        "or functional Laplace)"
    )


def laplace_posterior(la) -> VectorGaussian:
    """The posterior ``N(la.mean, P^-1)`` of a fitted laplace-torch object as structured terms.

    ``full``: ``delta = eps @ la.posterior_scale.T``; ``diag``: ``la.posterior_scale * eps``;
    ``kron``: one term per Kronecker group of ``la.posterior_precision`` (``KronDecomposed``).
    """
    structure, _ = _kind(la)
    mean = la.mean.detach().float().reshape(-1)
    if structure == "diag":
        return VectorGaussian(mean, (DiagTerm(0, la.posterior_scale.detach().float()),))
    if structure == "full":
        if mean.numel() > MAX_DENSE_PARAMS:
            raise ExportError(
                f"full-covariance Laplace over {mean.numel()} parameters needs a "
                f"{mean.numel()}x{mean.numel()} factor; qbnn exports at most {MAX_DENSE_PARAMS} "
                "(use hessian_structure='kron' or 'diag', or subset_of_weights='last_layer')"
            )
        return VectorGaussian(mean, (DenseTerm(0, la.posterior_scale.detach().float()),))
    return VectorGaussian(mean, tuple(_kron_terms(la.posterior_precision)))


def _kron_terms(prec) -> list[Term]:
    """Mirror of ``KronDecomposed._bmm(W, exponent=-0.5)``, one term per group."""
    terms: list[Term] = []
    start = 0
    for ls, qs, delta in zip(prec.eigenvalues, prec.eigenvectors, prec.deltas, strict=True):
        delta = delta.detach().double()
        if len(ls) == 1:
            q, lam = qs[0].detach().double(), ls[0].detach().double()
            scale = q * torch.pow(lam + delta, -0.5).unsqueeze(0)  # Q diag(d)
            terms.append(DenseTerm(start, scale.float()))
            start += int(lam.numel())
            continue
        (q1, q2), (l1, l2) = [q.detach().double() for q in qs], [v.detach().double() for v in ls]
        if prec.damping:
            m = torch.pow(torch.outer(l1 + delta.sqrt(), l2 + delta.sqrt()), -0.5)
        else:
            m = torch.pow(torch.outer(l1, l2) + delta, -0.5)
        terms.append(KronTerm(start, q1.float(), q2.float(), m.float()))
        start += int(m.numel())
    return terms


def _reference(la, task: Task):
    """laplace-torch's own MC predictive; classifiers return log-probabilities (softmax of
    them gives back laplace's probabilities, which is what the self-check compares)."""

    def sample(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
        out = la.predictive_samples(x, pred_type="nn", n_samples=s, generator=gen).detach()
        if task == Task.CLASSIFICATION:
            return torch.log(torch.clamp(out, min=1e-30))
        return out.reshape(s, x.shape[0], -1)

    return sample


def _check_task(la, task: Task) -> None:
    lik = str(getattr(la.likelihood, "value", la.likelihood))
    if lik != task.value:
        raise ExportError(
            f"the Laplace object was fitted with likelihood '{lik}' but task='{task.value}'; "
            f"export it with task='{lik}'"
        )


def to_weight_gaussian(la) -> WeightGaussian:
    """The fitted laplace-torch object as a :class:`WeightGaussian` (model, factors, layer)."""
    _, last = _kind(la)
    post = laplace_posterior(la)
    if last:
        fe = la.model  # laplace's FeatureExtractor around a copy of the user's model
        if getattr(fe, "feature_reduction", None) is not None:
            raise UnsupportedLayerError(
                "last-layer Laplace with feature_reduction is not supported"
            )
        return WeightGaussian(fe.model, post, last_layer=fe._last_layer_name)
    return WeightGaussian(la.model, post, param_names=names_of(la.model, la.params))


def _noise_variance(la) -> float:
    """The observation-noise variance of a regression Laplace object: ``sigma_noise**2``."""
    sigma = torch.as_tensor(la.sigma_noise).detach().reshape(-1)
    if sigma.numel() != 1:
        raise ConfigError(
            f"the Laplace object has a per-output sigma_noise ({sigma.numel()} values); qbnn "
            "graphs add one observation-noise variance: pass noise_variance explicitly"
        )
    return float(sigma[0]) ** 2


def _last_layer(la) -> tuple[torch.nn.Module, str]:
    """laplace-torch's FeatureExtractor around the user's model, and its last layer's name."""
    return la.model.model, la.model._last_layer_name


@register_exporter(
    "laplace",
    modes=("weight", "frozen"),
    default_mode="weight",
    detect=_detect,
    description="a fitted laplace-torch Laplace object (full/kron/diag, all weights or last layer)",
    priority=10,
    trainer="laplace-torch",
    whole_network=True,
    tensors=CompressTensors(refused="its weights are drawn from factors at run time"),
    heteroscedastic="laplace-torch fits a homoscedastic Gaussian likelihood, so a Laplace "
    "posterior has no heteroscedastic head; its sigma_noise**2 becomes the graph's noise_variance",
    noise_variance=_noise_variance,
    last_layer=_last_layer,
)
def build_laplace(la, mode: SamplingMode, *, task: Task, seed: int | None) -> BuiltModel:
    """A fitted ``laplace.*Laplace`` -> graph sampling its Gaussian posterior; the self-check
    compares with ``la.predictive_samples(pred_type="nn")``."""
    if not _detect(la):
        raise ExportError(
            f"the 'laplace' family needs a fitted laplace-torch object, got {type(la).__name__}"
        )
    structure, last = _kind(la)
    _check_task(la, task)
    post = to_weight_gaussian(la)
    ref = _reference(la, task)
    built = build_weight_gaussian(post, mode, task=task, seed=seed, reference=ref)
    where = "the last layer" if last else "all weights"
    n = post.posterior.num_params
    built.notes.insert(0, f"{structure} Laplace over {where} ({n} parameters)")
    if task == Task.CLASSIFICATION and built.reference is ref:
        built.reference_head = "log_probs"  # laplace-torch's predictive, see _reference
    return built
