"""Self-check of an exported graph against the torch model's own sampler.

Stochastic modes are compared statistically on the example input: per element of the per-sample
predictions (``probs`` or regression ``mean``), the graph's MC mean must agree with the torch
sampler's within ``z_tol`` standard errors, and the mean per-element spread (std over samples)
must agree within ``spread_rtol``. Exact modes (ensembles, frozen draws) are compared sample by
sample.
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

__all__ = ["FidelityReport", "verify_export"]


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
            f"{self.spread_graph:.4f} vs torch {self.spread_torch:.4f}"
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
    exact_atol: float = 1e-3,
) -> FidelityReport:
    """Run the graph once with ``num_samples=samples`` and compare it with the torch sampler.

    ``example``: ``[B, *F]`` float32. The torch outputs go through the same documented
    conversion as the graph (``head``: softmax of logits, probabilities as they are, exp of
    log-probabilities), so a graph that treats the model's output as the wrong form fails.
    Raises :class:`VerificationError` naming the output and
    the numbers when the graph and torch disagree beyond tolerance.
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
    if built.exact:
        return _exact(out_name, graph, ref, exact_atol)
    return _statistical(out_name, graph, ref, z_tol, spread_rtol, built.approximate)


def _exact(name: str, graph: np.ndarray, ref: np.ndarray, atol: float) -> FidelityReport:
    diff = float(np.abs(graph - ref).max())
    if diff > atol:
        idx = np.unravel_index(np.abs(graph - ref).argmax(), graph.shape)
        raise VerificationError(
            f"self-check failed: '{name}' differs from the torch members by {diff:.3g} "
            f"(tolerance {atol}) at [s, b, c] = {list(map(int, idx))}"
        )
    return FidelityReport(name, graph.shape[0], 0.0, diff, 0.0, 0.0, exact=True)


def _statistical(name, graph, ref, z_tol, spread_rtol, approximate) -> FidelityReport:
    s = graph.shape[0]
    diff = np.abs(graph.mean(0) - ref.mean(0))
    se = np.sqrt((graph.var(0, ddof=1) + ref.var(0, ddof=1)) / s) if s > 1 else np.zeros_like(diff)
    z = diff / np.maximum(se, 1e-9)
    bad = diff > z_tol * se + 1e-4
    sp_g, sp_t = float(graph.std(0).mean()), float(ref.std(0).mean())
    report_args = (name, s, float(z.max()), float(diff.max()), sp_g, sp_t, False)
    problems = []
    if bad.any():
        idx = np.unravel_index(np.argmax(np.where(bad, z, -1)), diff.shape)
        problems.append(
            f"'{name}' MC mean differs from the torch sampler by {diff[idx]:.4f} "
            f"({z[idx]:.1f} standard errors > {z_tol}) at [b, c] = {list(map(int, idx))}"
        )
    if abs(sp_g - sp_t) > spread_rtol * max(sp_g, sp_t) + 1e-4:
        problems.append(
            f"'{name}' spread (mean std over samples) is {sp_g:.4f} in the graph vs "
            f"{sp_t:.4f} in torch (relative tolerance {spread_rtol})"
        )
    if problems and approximate:
        return FidelityReport(
            *report_args, warnings=tuple(f"{p} [expected: {approximate}]" for p in problems)
        )
    if problems:
        raise VerificationError("self-check failed: " + "; ".join(problems))
    return FidelityReport(*report_args)
