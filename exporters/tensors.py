"""How compress reads a compiled graph's posterior tensors: typed readers over initializer names.

The export modules name their buffers (and so the ONNX initializers) in a few fixed layouts;
each layout has a reader here, instantiated beside the module that names the buffers
(:data:`~qbnn.exporters.modules.wrapper.MEMBER_DRAWS`, :data:`~qbnn.exporters.modules.layers.
LRT_MOMENTS`, ...), and each family's registry entry lists the readers of the graphs it writes
(:attr:`~qbnn.exporters.registry.Exporter.tensors`). ``pipeline.compress`` asks the entry of the
graph's ``qbnn.posterior`` instead of matching buffer names itself. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

__all__ = [
    "CompressTensors",
    "LayerMoments",
    "MemberDraws",
    "Role",
    "Slot",
    "SourceMoments",
    "TensorReader",
    "TensorRef",
]


class Slot(StrEnum):
    """Which of a layer's tensors an initializer is."""

    WEIGHT = "weight"
    BIAS = "bias"
    WEIGHT_SCALE = "weight_scale"
    BIAS_SCALE = "bias_scale"


class Role(StrEnum):
    """What a layer's weights are: K posterior ``draws``, or the posterior mean ``mu``."""

    DRAWS = "draws"
    MU = "mu"


@dataclass(frozen=True)
class TensorRef:
    """One initializer read as a layer tensor: ``layer`` (module path, ``conv1``), ``slot``,
    ``role``, ``member`` (the draw index for :attr:`Role.DRAWS`, else 0) and ``scale_kind``
    (``"var"`` or ``"sigma"`` for a moments layout with scales, else None)."""

    layer: str
    slot: Slot
    role: Role
    member: int = 0
    scale_kind: str | None = None


class TensorReader(Protocol):
    """Reads one initializer name: a :class:`TensorRef`, or None when the name is not its."""

    def read(self, name: str) -> TensorRef | None: ...


def _split(name: str, prefix: str) -> list[str] | None:
    if not name.startswith(prefix + "."):
        return None
    return name[len(prefix) + 1 :].split(".")


@dataclass(frozen=True)
class MemberDraws:
    """``<prefix>.<k>.<layer>.weight|bias``: K deterministic members (ensembles, ``frozen:K``)."""

    prefix: str

    def read(self, name: str) -> TensorRef | None:
        parts = _split(name, self.prefix)
        if not parts or len(parts) < 3 or not parts[0].isdigit() or not parts[0].isascii():
            return None
        if parts[-1] not in ("weight", "bias"):
            return None
        slot = Slot.WEIGHT if parts[-1] == "weight" else Slot.BIAS
        return TensorRef(".".join(parts[1:-1]), slot, Role.DRAWS, member=int(parts[0]))


@dataclass(frozen=True)
class LayerMoments:
    """``<prefix>.<layer>.<suffix>``: a layer's stored posterior moments; ``suffixes`` maps each
    buffer suffix (``mu_w``, ``var_w``, ...) to its slot and ``scale_kind`` names what the scale
    buffers hold (``var`` or ``sigma``)."""

    prefix: str
    suffixes: dict[str, Slot] = field(default_factory=dict)
    scale_kind: str = "sigma"

    def read(self, name: str) -> TensorRef | None:
        parts = _split(name, self.prefix)
        if not parts or len(parts) < 2 or parts[-1] not in self.suffixes:
            return None
        slot = self.suffixes[parts[-1]]
        kind = self.scale_kind if slot in (Slot.WEIGHT_SCALE, Slot.BIAS_SCALE) else None
        return TensorRef(".".join(parts[:-1]), slot, Role.MU, scale_kind=kind)


@dataclass(frozen=True)
class SourceMoments:
    """``<prefix>.<mu>__<layer with __ for .>__weight|bias`` and the ``<sigma>__`` twin: per-
    parameter mean and standard deviation drawn per MC sample (``weight`` mode)."""

    prefix: str
    mu: str
    sigma: str
    sep: str = "__"

    def read(self, name: str) -> TensorRef | None:
        parts = _split(name, self.prefix)
        if not parts or len(parts) != 1:
            return None
        kind, _, rest = parts[0].partition(self.sep)
        layer, _, what = rest.rpartition(self.sep)
        if kind not in (self.mu, self.sigma) or not layer or what not in ("weight", "bias"):
            return None
        scale = kind == self.sigma
        slot = {
            (False, "weight"): Slot.WEIGHT,
            (True, "weight"): Slot.WEIGHT_SCALE,
            (False, "bias"): Slot.BIAS,
            (True, "bias"): Slot.BIAS_SCALE,
        }[(scale, what)]
        return TensorRef(layer.replace(self.sep, "."), slot, Role.MU, scale_kind="sigma")


@dataclass(frozen=True)
class CompressTensors:
    """Whether and how compress reads a family's graphs: ``readers`` tried in order on every
    initializer name (none: only weights read directly by Conv/Gemm/MatMul), or ``refused``, the
    reason compress refuses the family's graphs."""

    readers: tuple[TensorReader, ...] = ()
    refused: str | None = None

    def read(self, name: str) -> TensorRef | None:
        """The first reader's :class:`TensorRef` for ``name``, or None."""
        for reader in self.readers:
            ref = reader.read(name)
            if ref is not None:
                return ref
        return None
