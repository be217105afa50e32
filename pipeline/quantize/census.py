"""What a graph holds in int8: quantized ops and 8-bit tensors, walked through subgraphs.

Used before quantizing (a model that is already quantized is refused) and after (the result
says which ops now run in int8, which tensors are stored in 8 bits, and what stayed fp32).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto

from qbnn.runtimes.contract import ContractMeta
from qbnn.runtimes.onnxgraph import iter_graphs

__all__ = [
    "INT8_OPS",
    "Census",
    "already_quantized",
    "iter_graphs",
    "iter_nodes",
    "quantized_ops",
    "take_census",
]

#: op types that compute on (or convert to/from) 8-bit integers
INT8_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "QGemm",
        "MatMulInteger",
        "ConvInteger",
        "MatMulIntegerToFloat",
        "QAttention",
    }
)
INT8_TYPES = (TensorProto.INT8, TensorProto.UINT8)


def iter_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and of its subgraphs."""
    for g in iter_graphs(graph):
        yield from g.node


def _is_int8_op(op_type: str) -> bool:
    return op_type in INT8_OPS or op_type.startswith("QLinear")


def quantized_ops(model: onnx.ModelProto) -> Counter:
    """``{op_type: count}`` of the int8 ops in ``model`` (subgraphs included)."""
    return Counter(n.op_type for n in iter_nodes(model.graph) if _is_int8_op(n.op_type))


def already_quantized(model: onnx.ModelProto) -> str | None:
    """Why ``model`` counts as quantized already (its ``qbnn.precision`` or its int8 ops), or
    ``None`` for a float model."""
    if ContractMeta.from_model(model).precision == "int8":
        return "its metadata says qbnn.precision=int8"
    ops = quantized_ops(model)
    if ops:
        listed = ", ".join(f"{n} {op}" for op, n in ops.most_common(3))
        return f"it holds {sum(ops.values())} int8 ops ({listed})"
    return None


#: ops that do the heavy arithmetic; the ones left in fp32 are listed with a reason
HEAVY_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
#: int8 compute ops (QOperator format) and where their 8-bit tensor inputs sit
_INT8_COMPUTE = {
    "QLinearConv": (0, 3),
    "QLinearMatMul": (0, 3),
    "QGemm": (0, 3),
    "MatMulInteger": (0, 1),
    "ConvInteger": (0, 1),
    "MatMulIntegerToFloat": (0, 1),
}
#: fp32 float tensors below this size are not worth 8-bit storage (see ``weightonly``)
SMALL_TENSOR = 256


@dataclass(frozen=True)
class Census:
    """What a quantized graph holds (subgraphs included).

    ``int8_ops``: ``{op_type: n}`` of ops that compute in int8 (QOperator ops such as
    ``QLinearConv``, and in QDQ graphs MatMul/Gemm/Conv fed by DequantizeLinear on both
    operands, which ONNX Runtime runs as int8 kernels). ``int8_tensors``: initializers stored
    in 8 bits and ``int8_values`` their total size. ``fp32_ops``: ``{node: reason}`` of the
    heavy ops (MatMul/Gemm/Conv) that still compute in fp32. ``fp32_small``: float tensors kept
    fp32 because they hold fewer than 256 values.
    """

    int8_ops: dict[str, int]
    int8_tensors: tuple[str, ...]
    int8_values: int
    fp32_ops: dict[str, str] = field(default_factory=dict)
    fp32_small: int = 0

    @property
    def precision(self) -> str:
        """``int8`` when anything is computed or stored in 8 bits, else ``fp32``."""
        return "int8" if self.int8_ops or self.int8_tensors else "fp32"

    def to_dict(self) -> dict:
        """Counts only (kept in the model's metadata, so it must stay small): heavy fp32 ops
        are counted per reason."""
        reasons: dict[str, int] = {}
        for reason in self.fp32_ops.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        return {
            "precision": self.precision,
            "int8_ops": dict(self.int8_ops),
            "int8_tensors": len(self.int8_tensors),
            "int8_values": self.int8_values,
            "fp32_ops": reasons,
            "fp32_small_tensors": self.fp32_small,
        }

    def lines(self, max_names: int = 4) -> list[str]:
        """Human-readable lines: what is int8 now, and what stayed fp32 and why."""
        ops = ", ".join(f"{n} {op}" for op, n in sorted(self.int8_ops.items())) or "none"
        out = [
            f"ops computing in int8: {sum(self.int8_ops.values())} ({ops})",
            f"tensors stored in 8 bits: {len(self.int8_tensors)} ({self.int8_values:,} values)",
        ]
        by_reason: dict[str, list[str]] = {}
        for node, reason in self.fp32_ops.items():
            by_reason.setdefault(reason, []).append(node)
        for reason, nodes in sorted(by_reason.items()):
            shown = ", ".join(nodes[:max_names]) + (" ..." if len(nodes) > max_names else "")
            out.append(f"fp32: {len(nodes)} op(s), {reason}: {shown}")
        if self.fp32_small:
            out.append(
                f"fp32: {self.fp32_small} small tensor(s) (< {SMALL_TENSOR} values; 8-bit "
                "storage would not pay for its scales)"
            )
        return out


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in iter_nodes(model.graph) for o in n.output}


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {i.name: i for g in iter_graphs(model.graph) for i in g.initializer}


def _eight_bit_tensors(model, inits) -> dict[str, int]:
    """8-bit initializers in a data position (not zero points): ``{name: size}``."""
    out = {}
    for n in iter_nodes(model.graph):
        slots = (0,) if n.op_type == "DequantizeLinear" else _INT8_COMPUTE.get(n.op_type, ())
        for i in slots:
            init = inits.get(n.input[i]) if i < len(n.input) else None
            if init is not None and init.data_type in INT8_TYPES:
                out[init.name] = int(np.prod(init.dims))
    return out


def _weight_is_constant(node, producers, inits) -> bool:
    name = node.input[1] if len(node.input) > 1 else ""
    if name in inits:
        return True
    src = producers.get(name)
    return src is not None and src.op_type == "DequantizeLinear" and src.input[0] in inits


def _reason(node, reasons: Mapping[str, str], constant: bool) -> str:
    base = node.name.split("/MatMulAddFusion")[0]
    for key in (node.name, base):
        if key in reasons:
            return reasons[key]
    if not constant:
        return "weight computed at run time (sampled per MC draw; static int8 needs a constant)"
    return "left fp32 by the quantizer"


def _qdq_fed(node, producers) -> bool:
    """Both operands come from static-quantization DequantizeLinear nodes (not qbnn's
    weight-only storage), so ONNX Runtime fuses the op into an int8 kernel."""
    fed = [producers.get(i) for i in node.input[:2]]
    return len(fed) == 2 and all(
        p is not None and p.op_type == "DequantizeLinear" and not p.name.startswith("qbnn/w8/")
        for p in fed
    )


def take_census(model: onnx.ModelProto, reasons: Mapping[str, str] | None = None) -> Census:
    """Count what ``model`` computes and stores in int8; ``reasons`` ``{node: why}`` explains
    heavy ops the caller kept in fp32 on purpose (others get a reason from the graph)."""
    reasons = reasons or {}
    producers, inits = _producers(model), _initializers(model)
    int8_ops: Counter = Counter()
    fp32: dict[str, str] = {}
    for n in iter_nodes(model.graph):
        if n.op_type in _INT8_COMPUTE or n.op_type.startswith("QLinear"):
            int8_ops[n.op_type] += 1
        elif n.op_type in HEAVY_OPS:
            if _qdq_fed(n, producers):
                int8_ops[f"{n.op_type} (QDQ)"] += 1
                continue
            fp32[n.name] = _reason(n, reasons, _weight_is_constant(n, producers, inits))
    eight = _eight_bit_tensors(model, inits)
    small = sum(
        1
        for i in inits.values()
        if i.data_type == TensorProto.FLOAT and 1 < int(np.prod(i.dims)) < SMALL_TENSOR
    )
    return Census(dict(int8_ops), tuple(sorted(eight)), sum(eight.values()), fp32, small)
