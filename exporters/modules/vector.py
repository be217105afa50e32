"""Gaussian posteriors over a flat parameter vector, sampled as graph ops.

Laplace approximations and SWAG describe the posterior of a parameter vector ``theta [P]``
(``torch.nn.utils.parameters_to_vector`` order) as ``theta = mean + delta`` where ``delta`` is a
sum or a concatenation of structured Gaussian terms:

- :class:`DiagTerm`: ``delta = scale * eps`` (diagonal Laplace, SWAG's diagonal part);
- :class:`DenseTerm`: ``delta = eps @ scale.T`` (full-covariance Laplace: ``scale`` is the
  posterior's square-root factor, e.g. a Cholesky factor);
- :class:`KronTerm`: ``delta = Q1 (E * M) Q2.T`` (Kronecker-factored Laplace in the factors'
  eigenbases: ``M = (l1 l2^T + delta)^{-1/2}``, exactly the law of laplace-torch's
  ``KronDecomposed.bmm(eps, exponent=-0.5)`` because ``Q1.T E Q2`` is again standard normal);
- :class:`LowRankTerm`: ``delta = z @ factor`` with ``z [S, K]`` (SWAG's deviation matrix).

:class:`VectorSampler` turns a :class:`VectorGaussian` into ``theta [S, P]`` inside the graph
(noise from :class:`~.layers.SampleContext`); ``VectorGaussian.sample`` is the exact
torch-side twin used for frozen draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from qbnn.runtimes.errors import ConfigError

from .layers import SampleContext

__all__ = [
    "DenseTerm",
    "DiagTerm",
    "KronTerm",
    "LowRankTerm",
    "Term",
    "VectorGaussian",
    "VectorSampler",
]


@dataclass(frozen=True)
class DiagTerm:
    """``delta[start:start+p] = scale * eps``; ``scale [p]``."""

    start: int
    scale: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.scale.numel())

    def draw(self, eps_of) -> torch.Tensor:
        return eps_of((self.size,)) * self.scale


@dataclass(frozen=True)
class DenseTerm:
    """``delta[start:start+p] = eps @ scale.T``; ``scale [p, p]`` with ``scale scale^T = Cov``."""

    start: int
    scale: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.scale.shape[0])

    @classmethod
    def from_covariance(cls, start: int, cov: torch.Tensor) -> DenseTerm:
        """From a covariance ``[p, p]`` (its Cholesky factor)."""
        return cls(start, _cholesky(cov, "covariance").float())

    @classmethod
    def from_precision(cls, start: int, prec: torch.Tensor) -> DenseTerm:
        """From a precision ``P [p, p]``: with ``P = L L^T``, ``scale = L^-T`` has
        ``scale scale^T = P^-1``."""
        lower = _cholesky(prec, "precision")
        eye = torch.eye(lower.shape[0], dtype=torch.float64)
        inv_lower = torch.linalg.solve_triangular(lower, eye, upper=False)
        return cls(start, inv_lower.t().float())

    def draw(self, eps_of) -> torch.Tensor:
        return torch.matmul(eps_of((self.size,)), self.scale.t())


@dataclass(frozen=True)
class KronTerm:
    """``delta[start:start+a*b] = vec(Q1 (E * M) Q2^T)``; ``Q1 [a,a]``, ``Q2 [b,b]``,
    ``M [a,b]``."""

    start: int
    q1: torch.Tensor
    q2: torch.Tensor
    m: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.m.numel())

    @classmethod
    def from_precision(
        cls, start: int, a: torch.Tensor, b: torch.Tensor, delta: float = 0.0
    ) -> KronTerm:
        """From Kronecker precision factors of a weight ``W [a, b]`` (row-major vec):
        precision ``A kron B + delta I`` (``A [a,a]``: output side, ``B [b,b]``: input side).
        With ``delta = 0`` the draw is ``A^-1/2 E B^-1/2``."""
        l1, q1 = torch.linalg.eigh(a.double())
        l2, q2 = torch.linalg.eigh(b.double())
        eig = torch.outer(l1, l2) + delta
        if not bool((eig > 0).all()):
            raise ConfigError(
                f"Kronecker precision A kron B + {delta} I is not positive definite (smallest "
                f"eigenvalue {float(eig.min()):.3g}); add a prior precision (delta > 0)"
            )
        return cls(start, q1.float(), q2.float(), torch.pow(eig, -0.5).float())

    def draw(self, eps_of) -> torch.Tensor:
        a, b = self.m.shape
        e = eps_of((a, b)) * self.m  # [S, a, b]
        out = torch.matmul(torch.matmul(self.q1, e), self.q2.t())
        return out.reshape(out.shape[0], a * b)


@dataclass(frozen=True)
class LowRankTerm:
    """``delta[start:start+p] = z @ factor`` with ``z ~ N(0, I_K)``; ``factor [K, p]``."""

    start: int
    factor: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.factor.shape[1])

    def draw(self, eps_of) -> torch.Tensor:
        return torch.matmul(eps_of((int(self.factor.shape[0]),)), self.factor)


Term = DiagTerm | DenseTerm | KronTerm | LowRankTerm


def _cholesky(mat: torch.Tensor, what: str) -> torch.Tensor:
    if mat.dim() != 2 or mat.shape[0] != mat.shape[1]:
        raise ConfigError(f"a {what} must be a square matrix; got shape {list(mat.shape)}")
    lower, info = torch.linalg.cholesky_ex(mat.double())
    if int(info) != 0:
        raise ConfigError(f"the {what} [{mat.shape[0]}x{mat.shape[0]}] is not positive definite")
    return lower


@dataclass(frozen=True)
class VectorGaussian:
    """``theta = mean + delta``; ``mean [P]``.

    ``terms`` either partition ``[0, P)`` (concatenated, Laplace) or each span all of it
    (summed, SWAG's diagonal plus low-rank parts).
    """

    mean: torch.Tensor
    terms: tuple[Term, ...]

    def __post_init__(self) -> None:
        if self.mean.dim() != 1 or not self.terms:
            raise ConfigError(
                f"a posterior needs a mean [P] and at least one term; got mean shape "
                f"{list(self.mean.shape)} and {len(self.terms)} terms"
            )
        for i, t in enumerate(self.terms):
            _check_term(t, i)
        p = int(self.mean.numel())
        spans = [(t.start, t.start + t.size) for t in self.terms]
        full = all(s == (0, p) for s in spans)
        ordered = sorted(spans)
        tiles = bool(ordered) and ordered[0][0] == 0 and ordered[-1][1] == p
        tiles = tiles and all(a[1] == b[0] for a, b in zip(ordered, ordered[1:], strict=False))
        if not (full or tiles):
            raise ConfigError(
                f"posterior terms cover {spans}: they must either tile [0, {p}) (one term per "
                "parameter block) or each span all of it (summed, e.g. diagonal + low-rank)"
            )
        object.__setattr__(self, "_concat", tiles and not full)

    @property
    def num_params(self) -> int:
        return int(self.mean.numel())

    def _delta(self, eps_of) -> torch.Tensor:
        terms = sorted(self.terms, key=lambda t: t.start)
        return _combine([t.draw(eps_of) for t in terms], self._concat)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` exact draws ``[n, P]`` from ``generator`` (torch side, for frozen members)."""

        def eps_of(shape):
            return torch.randn((n, *shape), generator=generator, dtype=self.mean.dtype)

        with torch.no_grad():
            return self.mean.unsqueeze(0) + self._delta(eps_of)

    def covariance(self) -> torch.Tensor:
        """The exact dense covariance ``[P, P]`` (float64; for tests and small posteriors)."""
        p = self.num_params
        out = torch.zeros(p, p, dtype=torch.float64)
        for t in self.terms:
            sl = slice(t.start, t.start + t.size)
            if isinstance(t, DiagTerm):
                f = torch.diag(t.scale.double())
            elif isinstance(t, DenseTerm):
                f = t.scale.double()
            elif isinstance(t, LowRankTerm):
                f = t.factor.double().t()
            else:  # vec(Q1 (E*M) Q2^T) = (Q1 kron Q2) diag(vec M) vec(E), row-major vec
                f = torch.kron(t.q1.double(), t.q2.double()) * t.m.double().reshape(1, -1)
            out[sl, sl] += f @ f.t()
        return out


def _check_term(t: Term, i: int) -> None:
    """Shapes and finiteness of one term; a :class:`ConfigError` names the term."""
    if isinstance(t, DiagTerm):
        ok = t.scale.dim() == 1
    elif isinstance(t, DenseTerm):
        ok = t.scale.dim() == 2 and t.scale.shape[0] == t.scale.shape[1]
    elif isinstance(t, KronTerm):
        a, b = t.q1.shape[0], t.q2.shape[0]
        ok = t.q1.shape == (a, a) and t.q2.shape == (b, b) and t.m.shape == (a, b)
    elif isinstance(t, LowRankTerm):
        ok = t.factor.dim() == 2
    else:
        raise ConfigError(
            f"term {i} is a {type(t).__name__}; expected DiagTerm, DenseTerm, KronTerm or "
            "LowRankTerm"
        )
    tensors = [getattr(t, n) for n in ("scale", "q1", "q2", "m", "factor") if hasattr(t, n)]
    if not ok:
        shapes = [list(x.shape) for x in tensors]
        raise ConfigError(f"term {i} ({type(t).__name__}) has inconsistent shapes {shapes}")
    if not all(bool(torch.isfinite(x).all()) for x in tensors):
        raise ConfigError(f"term {i} ({type(t).__name__}) holds NaN or inf values")


def _combine(parts: list[torch.Tensor], concat: bool) -> torch.Tensor:
    """Term draws ``[S, p_i]`` in start order -> ``delta [S, P]``: concatenated (tiling terms)
    or summed (terms spanning the whole vector)."""
    if concat:
        return torch.cat(parts, dim=1)
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out


class _TermModule(nn.Module):
    """One term's tensors as buffers (ONNX initializers) plus its ``draw``."""

    def __init__(self, term: Term) -> None:
        super().__init__()
        self.kind = type(term)
        self.start = term.start
        self.names = [n for n in ("scale", "q1", "q2", "m", "factor") if hasattr(term, n)]
        for n in self.names:
            self.register_buffer(n, getattr(term, n).detach().float().clone())

    def draw(self, eps_of) -> torch.Tensor:
        term = self.kind(self.start, *(getattr(self, n) for n in self.names))
        return term.draw(eps_of)


class VectorSampler(nn.Module):
    """``forward() -> theta [S, P]`` as graph ops; S comes from the shared sample context."""

    def __init__(self, posterior: VectorGaussian, ctx: SampleContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.concat = posterior._concat
        self.register_buffer("mean", posterior.mean.detach().float().clone())
        order = sorted(posterior.terms, key=lambda t: t.start)
        self.terms = nn.ModuleList(_TermModule(t) for t in order)

    def forward(self) -> torch.Tensor:
        delta = _combine([t.draw(self.ctx.noise) for t in self.terms], self.concat)
        return self.mean.unsqueeze(0) + delta
