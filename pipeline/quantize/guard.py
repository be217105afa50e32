"""Posterior-erasure guard: a quantized BNN that is no longer Bayesian never passes silently.

Two measurements on calibration inputs:

* **per quantizer** — every ``QuantizeLinear`` whose input depends on a random op quantizes
  posterior noise. The noise std of that input over MC samples (measured in the int8 graph) is
  compared with the quantizer's step (its scale). Noise well under one step is rounded away
  (measured with Bayesian-Torch's own int8 path: sigma ~ 1e-4 makes the "QBNN" deterministic).
* **globally** — the int8 / fp32 ratio of the mean per-sample spread of the outputs and of the
  mean mutual information.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qbnn.runtimes.contract import INPUT, NUM_SAMPLES, Task
from qbnn.runtimes.seeding import RANDOM_OPS, reseed

__all__ = [
    "ErasedQuantizer",
    "SpreadCheck",
    "erased_quantizers",
    "noise_path_layers",
    "spread_check",
]

_HEAVY = (
    "QLinearConv",
    "QLinearMatMul",
    "QGemm",
    "Conv",
    "Gemm",
    "MatMul",
    "MatMulInteger",
    "ConvInteger",
)


@dataclass(frozen=True)
class ErasedQuantizer:
    """A quantizer that rounds the noise away: ``noise_std / step < threshold``."""

    tensor: str
    consumers: tuple[str, ...]
    noise_std: float
    step: float

    @property
    def ratio(self) -> float:
        return self.noise_std / self.step if self.step > 0 else float("inf")

    def describe(self) -> str:
        who = ", ".join(self.consumers) or self.tensor
        return (
            f"{who} (noise std {self.noise_std:.3g} = {self.ratio:.2f} int8 steps of "
            f"{self.step:.3g})"
        )


@dataclass(frozen=True)
class SpreadCheck:
    """Mean per-element std over MC samples of the logits, and mean MI, fp32 vs int8."""

    spread_fp32: float
    spread_int8: float
    mi_fp32: float
    mi_int8: float

    @property
    def ratio(self) -> float:
        """int8 / fp32 logit spread (1.0 when fp32 has no spread at all)."""
        return self.spread_int8 / self.spread_fp32 if self.spread_fp32 > 1e-12 else 1.0


def _session(model: onnx.ModelProto, seed: int):
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    reseed(m, seed)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _random_derived(model: onnx.ModelProto) -> set[str]:
    tainted: set[str] = set()
    for node in model.graph.node:  # graph order is topological
        if node.op_type in RANDOM_OPS or any(i in tainted for i in node.input):
            tainted.update(node.output)
    return tainted


_SCALE_CHAIN = ("Clip", "Sqrt", "Identity", "Cast", "Abs", "Relu")


def _eps_tensors(model: onnx.ModelProto) -> set[str]:
    """Pure noise: random-op outputs and what is computed from them and constants only."""
    consts = {i.name for i in model.graph.initializer}
    eps: set[str] = set()
    for node in model.graph.node:
        if node.op_type in RANDOM_OPS:
            eps.update(node.output)
        elif node.op_type == "Constant":
            consts.update(node.output)
        elif any(i in eps for i in node.input) and all(
            i in eps or i in consts or not i for i in node.input
        ):
            eps.update(node.output)
    return eps


def noise_path_layers(model: onnx.ModelProto) -> list[str]:
    """Heavy ops computing a noise *scale* (e.g. LRT's ``x^2 * sigma^2`` convolution): the
    layers whose output multiplies pure noise, through Clip/Sqrt-like ops."""
    eps = _eps_tensors(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    found = set()
    for node in model.graph.node:
        if node.op_type != "Mul" or sum(i in eps for i in node.input) != 1:
            continue
        other = next(i for i in node.input if i not in eps)
        n = producer.get(other)
        while n is not None and n.op_type in _SCALE_CHAIN:
            n = producer.get(n.input[0])
        if n is not None and n.op_type in _HEAVY:
            found.add(n.name)
    return sorted(found)


def _layers(model: onnx.ModelProto, qnode: onnx.NodeProto) -> list[str]:
    """Heavy ops around a quantizer: the producer of its input (output quantization) and the
    consumers of its output (through the Q/DQ pair in QDQ graphs), by original node name."""
    out = set(_consumers(model, qnode.output[0]))
    for n in model.graph.node:
        if qnode.input[0] in n.output and n.op_type in _HEAVY:
            out.add(n.name.removesuffix("_quant"))
    return sorted(out)


def _consumers(model: onnx.ModelProto, tensor: str) -> list[str]:
    """Heavy ops fed by ``tensor`` (through the Q/DQ pair in QDQ graphs)."""
    by_input: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            by_input.setdefault(i, []).append(n)
    out, frontier, seen = [], [tensor], set()
    while frontier:
        t = frontier.pop()
        for n in by_input.get(t, []):
            if n.name in seen:
                continue
            seen.add(n.name)
            if n.op_type in _HEAVY:
                out.append(n.name.removesuffix("_quant"))
            elif n.op_type in ("QuantizeLinear", "DequantizeLinear"):
                frontier.extend(n.output)
    return sorted(set(out))


def erased_quantizers(
    int8: onnx.ModelProto, x: np.ndarray, num_samples: int, threshold: float, seed: int = 0
) -> list[ErasedQuantizer]:
    """Quantizers of noisy tensors whose noise std is below ``threshold`` steps.

    ``x``: calibration inputs ``[B, *F]``; tensors are ``[S * B, ...]`` or ``[S, ...]``.
    """
    tainted = _random_derived(int8)
    inits = {i.name: i for i in int8.graph.initializer}
    qnodes = [
        n
        for n in int8.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] in tainted and n.input[1] in inits
    ]
    if not qnodes:
        return []
    probe = onnx.ModelProto()
    probe.CopyFrom(int8)
    names = sorted({n.input[0] for n in qnodes})
    probe.graph.output.extend(
        helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in names
    )
    feed = {INPUT: x, NUM_SAMPLES: np.array(num_samples, dtype=np.int64)}
    values = dict(zip(names, _session(probe, seed).run(names, feed), strict=True))
    flagged = []
    for node in qnodes:
        v = values[node.input[0]].astype(np.float64)
        noise = float(v.reshape(num_samples, -1).std(0).mean())
        step = float(np.max(numpy_helper.to_array(inits[node.input[1]])))
        if step > 0 and noise < threshold * step:
            flagged.append(ErasedQuantizer(node.input[0], tuple(_layers(int8, node)), noise, step))
    return sorted(flagged, key=lambda e: e.ratio)


def _spread_tensor(model: onnx.ModelProto, task: Task) -> str:
    """The per-sample pre-softmax (multi-label: pre-sigmoid) tensor (logits ``[S, B, C]``) or
    the regression ``mean``."""
    if task == Task.REGRESSION:
        return "mean"
    for node in model.graph.node:
        if node.op_type in ("Softmax", "Sigmoid") and "probs" in node.output:
            return node.input[0]
    return "probs"


def spread_check(
    fp32: onnx.ModelProto,
    int8: onnx.ModelProto,
    x: np.ndarray,
    task: Task,
    num_samples: int,
    seed: int = 0,
) -> SpreadCheck:
    """Compare the predictive spread of two graphs on ``x [B, *F]`` (same seeds).

    Spread is the mean over elements of the std over MC samples of the *logits* (the softmax
    input): probabilities of a confident classifier saturate, which makes their spread a noisy
    measure on a few calibration inputs, while the logit noise is what quantization can erase.
    """
    stats = []
    for model in (fp32, int8):
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        tensor = _spread_tensor(probe, task)
        names = [tensor]
        if tensor not in {o.name for o in probe.graph.output}:
            probe.graph.output.append(
                helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None)
            )
        if task == Task.CLASSIFICATION:
            names.append("mutual_information")
        feed = {INPUT: x, NUM_SAMPLES: np.array(num_samples, dtype=np.int64)}
        res = _session(probe, seed).run(names, feed)
        spread = float(res[0].astype(np.float64).reshape(num_samples, -1).std(0).mean())
        mi = float(res[1].mean()) if len(res) > 1 else 0.0
        stats.append((spread, mi))
    (s32, m32), (s8, m8) = stats
    return SpreadCheck(s32, s8, m32, m8)
