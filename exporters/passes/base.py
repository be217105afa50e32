"""The one contract every exporter graph pass obeys."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import onnx

__all__ = ["GraphPass", "PassResult", "run_passes"]


@dataclass(frozen=True)
class PassResult:
    """What a pass returns: the (possibly edited) model, whether it changed, and notes."""

    model: onnx.ModelProto
    modified: bool
    notes: tuple[str, ...] = field(default=())


class GraphPass(Protocol):
    """A graph pass: ``name`` (for notes and errors) and ``__call__(model) -> PassResult``.

    Preconditions and postconditions are stated in each pass's docstring; a pass that does not
    apply to a graph returns ``PassResult(model, False)`` unchanged.
    """

    name: str

    def __call__(self, model: onnx.ModelProto) -> PassResult: ...


def run_passes(model: onnx.ModelProto, passes: Iterable[GraphPass]) -> PassResult:
    """Run ``passes`` in order; the result is modified when any pass modified the model, and
    carries every pass's notes in order."""
    modified, notes = False, []
    for p in passes:
        result = p(model)
        model = result.model
        modified |= result.modified
        notes.extend(result.notes)
    return PassResult(model, modified, tuple(notes))
