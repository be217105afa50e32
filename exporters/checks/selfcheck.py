"""Self-check of an exported graph against the torch model's own sampler.

Stochastic modes are compared statistically on the example input: per element of the per-sample
predictions (``probs`` or regression ``mean``), the graph's MC mean must agree with the torch
sampler's within ``z_tol`` standard errors, and the spread (the mean over elements of the std
over samples) is compared by a statistical test with an absolute floor: it fails only when the
gap is both significant (more than ``spread_z`` bootstrap standard errors of the difference,
the S samples of each side resampled ``BOOTSTRAP`` times with a fixed seed) and material (more than
``spread_rtol`` of the larger spread plus ``spread_atol``). A confident model's spread (about
1e-3 or less) is dominated by a few rare dropout masks or draws, so 64 samples estimate it to
only about 30 %: a relative test alone refused correct graphs of well-trained models. Exact modes
(ensembles, frozen draws) are compared sample by sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from qbnn.runtimes.contract import INPUT, NUM_SAMPLES, Task
from qbnn.runtimes.errors import VerificationError
from qbnn.runtimes.seeding import reseed

from ..modules.heads import Head, HeadSpec, to_probs
from ..registry import BuiltModel

__all__ = ["BOOTSTRAP", "FidelityReport", "spread_test", "verify_export"]

#: bootstrap resamples of the S samples behind the spread's standard error
BOOTSTRAP = 200


@dataclass(frozen=True)
class FidelityReport:
    """Numbers measured by the self-check (see module docstring)."""

    output: str
    samples: int
    max_z: float
    max_abs_mean_diff: float
    spread_graph: float
    spread_torch: float
    exact: bool
    warnings: tuple[str, ...] = field(default=())
    spread_z: float = 0.0

    def summary(self) -> str:
        """One line for logs and the CLI."""
        if self.exact:
            return (
                f"self-check ({self.output}, {self.samples} samples, exact): "
                f"max |diff| {self.max_abs_mean_diff:.2e}"
            )
        return (
            f"self-check ({self.output}, {self.samples} samples): max |mean diff| "
            f"{self.max_abs_mean_diff:.4f} (max z {self.max_z:.2f}), spread graph "
            f"{self.spread_graph:.4f} vs torch {self.spread_torch:.4f} (z {self.spread_z:.2f})"
        )


def verify_export(
    path: Path,
    built: BuiltModel,
    example: torch.Tensor,
    task: Task,
    *,
    head: Head | str | HeadSpec = Head.LOGITS,
    samples: int = 64,
    seed: int = 0,
    z_tol: float = 5.0,
    spread_rtol: float = 0.2,
    spread_atol: float = 2e-3,
    spread_z: float = 4.0,
    exact_atol: float = 1e-3,
) -> FidelityReport:
    """Run the graph once with ``num_samples=samples`` and compare it with the torch sampler.

    ``example``: ``[B, *F]`` float32. The torch outputs go through the same documented
    conversion as the graph (``head``: softmax of logits, probabilities as they are, exp of
    log-probabilities), so a graph that treats the model's output as the wrong form fails.
    Spreads are compared by :func:`spread_test` (``spread_z``, ``spread_rtol``, ``spread_atol``;
    Bayesian-Torch's flipout ResNet-20 in ``weight`` mode, spread 0.150 vs 0.097, is at z 4.85).
    Raises :class:`VerificationError` naming the output and the numbers when the graph and
    torch disagree beyond tolerance, followed by ``built.hint`` (the mode that fits) if set.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    model = onnx.load(str(path))
    reseed(model, seed)  # a reproducible check: fixed graph seeds as well as torch seeds
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    out_name = "mean" if task == Task.REGRESSION else "probs"
    feed = {INPUT: example.numpy(), NUM_SAMPLES: np.array(samples, dtype=np.int64)}
    graph = sess.run([out_name], feed)[0].astype(np.float64)  # [S, B, C]
    if not np.isfinite(graph).all():
        bad = int((~np.isfinite(graph)).sum())
        raise VerificationError(
            f"self-check failed: the graph's '{out_name}' has {bad} non-finite values (NaN/inf) "
            f"of {graph.size}; check the posterior's factors and the model's numerics"
        )
    gen = torch.Generator().manual_seed(seed)
    ref = built.reference(example, samples, gen).double()
    if task == Task.CLASSIFICATION:
        ref = to_probs(ref, built.reference_head or head)
    ref = ref.numpy()
    if task == Task.REGRESSION and ref.shape[-1] == 2 * graph.shape[-1]:
        ref = ref[..., : graph.shape[-1]]  # heteroscedastic head: compare the means
    ref = ref.reshape(graph.shape)
    try:
        if built.exact:
            return _exact(out_name, graph, ref, exact_atol)
        tol = _Tol(z_tol, spread_rtol, spread_atol, seed, spread_z)
        return _statistical(out_name, graph, ref, tol, built.approximate)
    except VerificationError as exc:
        if built.hint is None:
            raise
        raise VerificationError(f"{exc}; {built.hint}") from None


def _exact(name: str, graph: np.ndarray, ref: np.ndarray, atol: float) -> FidelityReport:
    diff = float(np.abs(graph - ref).max())
    if diff > atol:
        idx = np.unravel_index(np.abs(graph - ref).argmax(), graph.shape)
        raise VerificationError(
            f"self-check failed: '{name}' differs from the torch members by {diff:.3g} "
            f"(tolerance {atol}) at [s, b, c] = {list(map(int, idx))}"
        )
    return FidelityReport(name, graph.shape[0], 0.0, diff, 0.0, 0.0, exact=True)


@dataclass(frozen=True)
class _Tol:
    z: float
    rtol: float
    atol: float
    seed: int
    spread_z: float


def _spread(x: np.ndarray) -> float:
    return float(x.std(0).mean())


def _boot_spreads(x: np.ndarray, rng: np.random.Generator, rounds: int) -> np.ndarray:
    """``rounds`` spreads of ``x [S, N]`` with its S samples resampled (with replacement),
    from resampling counts: E_w[x^2] - E_w[x]^2 on centred columns (exact, no copies of x)."""
    s = x.shape[0]
    xc = x - x.mean(0)
    counts = np.stack([np.bincount(rng.integers(0, s, s), minlength=s) for _ in range(rounds)])
    w = counts / s  # [R, S]
    out = np.empty(rounds)
    for lo in range(0, rounds, 50):  # [50, N] at a time
        m1 = w[lo : lo + 50] @ xc
        m2 = w[lo : lo + 50] @ (xc * xc)
        out[lo : lo + 50] = np.sqrt(np.maximum(m2 - m1 * m1, 0.0)).mean(1)
    return out


def spread_test(
    graph: np.ndarray,
    ref: np.ndarray,
    *,
    rtol: float = 0.2,
    atol: float = 2e-3,
    seed: int = 0,
    rounds: int = BOOTSTRAP,
) -> tuple[float, float, float, bool]:
    """Compare the spreads of ``graph [S1, ...]`` and ``ref [S2, ...]`` (float64 samples on axis 0).

    The spread is the mean over elements of the std over samples. Returns ``(spread_graph,
    spread_ref, z, material)``: ``z`` the gap in bootstrap standard errors of the difference
    (``rounds`` resamples of each side's samples, seeded by ``seed``), ``material`` whether the
    gap exceeds ``rtol * max(spreads) + atol``. A caller refuses when both ``z`` is large and the
    gap is material.
    """
    g, r = graph.reshape(len(graph), -1), ref.reshape(len(ref), -1)
    sp_g, sp_r = _spread(g), _spread(r)
    rng = np.random.default_rng(seed)
    se = float(np.hypot(_boot_spreads(g, rng, rounds).std(), _boot_spreads(r, rng, rounds).std()))
    gap = abs(sp_g - sp_r)
    z = gap / se if se > 0 else (0.0 if gap == 0 else float("inf"))
    return sp_g, sp_r, z, gap > rtol * max(sp_g, sp_r) + atol


def _statistical(name, graph, ref, tol: _Tol, approximate) -> FidelityReport:
    s = graph.shape[0]
    diff = np.abs(graph.mean(0) - ref.mean(0))
    se = np.sqrt((graph.var(0, ddof=1) + ref.var(0, ddof=1)) / s) if s > 1 else np.zeros_like(diff)
    z = diff / np.maximum(se, 1e-9)
    bad = diff > tol.z * se + 1e-4
    sp_g, sp_t, sp_z, material = spread_test(
        graph, ref, rtol=tol.rtol, atol=tol.atol, seed=tol.seed
    )
    report_args = (name, s, float(z.max()), float(diff.max()), sp_g, sp_t, False)
    problems = []
    if bad.any():
        idx = np.unravel_index(np.argmax(np.where(bad, z, -1)), diff.shape)
        problems.append(
            f"'{name}' MC mean differs from the torch sampler by {diff[idx]:.4f} "
            f"({z[idx]:.1f} standard errors > {tol.z}) at [b, c] = {list(map(int, idx))}"
        )
    if material and sp_z > tol.spread_z:
        problems.append(
            f"'{name}' spread (mean std over samples) is {sp_g:.4f} in the graph vs "
            f"{sp_t:.4f} in torch ({sp_z:.1f} bootstrap standard errors > {tol.spread_z}, and more "
            f"than {tol.rtol:g} relative + {tol.atol:g} absolute)"
        )
    if problems and approximate:
        return FidelityReport(
            *report_args,
            warnings=tuple(f"{p} [expected: {approximate}]" for p in problems),
            spread_z=sp_z,
        )
    if problems:
        raise VerificationError("self-check failed: " + "; ".join(problems))
    return FidelityReport(*report_args, spread_z=sp_z)
