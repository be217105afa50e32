"""``ExportConfig``: every option of an export, one frozen record shared by the Python API, the
CLI (``qbnn export``) and ``pipeline.yaml`` (``model:`` section)."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, fields
from typing import Any

from qbnn.runtimes.contract import Task
from qbnn.runtimes.errors import ConfigError

from .modules.heads import Head

__all__ = ["ExportConfig"]


@dataclass(frozen=True, kw_only=True)
class ExportConfig:
    """How to export a model (see :func:`qbnn.exporters.export` for what each option does).

    ``posterior``: ``auto`` or a registered family; ``sampling``: that family's mode (None: its
    default; ``frozen`` alone is ``frozen:num_samples``; ``members:K`` / ``samples:K`` state the
    k members or MC samples a forward stacks on the batch axis, ``[k*B, C]`` for ``[B, ...]``,
    where ``auto`` cannot detect it); ``num_samples``: the graph's default
    S (>= 1); ``task``: :class:`~qbnn.runtimes.contract.Task`; ``seed``: fixes every random
    node's seed (None: fresh noise per session); ``verify`` / ``verify_samples`` (>= 2): the
    self-check; ``opset``: the ONNX opset (>= 18, torch.onnx's dynamo exporter); ``source``:
    the ``qbnn.source`` text (None: the trainer's name and version); ``heteroscedastic``,
    ``noise_variance`` (finite, > 0): regression heads; ``head``: a classifier's output form
    (None or ``auto``: detected; ``multilabel``: K independent labels given as logits, see
    :class:`~qbnn.exporters.modules.heads.Head`); ``split``: run the split passes
    (:data:`qbnn.exporters.passes.SPLIT_PASSES`) that compute the deterministic part of the
    network once per call instead of once per MC sample (False: the whole network per sample,
    for A/B measurements; the outputs' law is the same); ``output_key``: which output of a
    forward that returns a dict (or a tuple: its index, ``"0"``) is the prediction (None: the
    dict's one batch-shaped tensor, e.g. Hugging Face's ``{"logits": ...}``). String values
    (from YAML, JSON or the CLI) become the enums; a bad value raises :class:`ConfigError`
    naming it. Family names and sampling modes are checked against the registry when the
    export runs.
    """

    posterior: str = "auto"
    sampling: str | None = None
    num_samples: int = 16
    task: Task = Task.CLASSIFICATION
    seed: int | None = None
    verify: bool = True
    verify_samples: int = 64
    opset: int = 18
    source: str | None = None
    heteroscedastic: bool = False
    noise_variance: float | None = None
    head: Head | None = None
    split: bool = True
    output_key: str | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "task", Task(self.task))
        except ValueError:
            valid = ", ".join(t.value for t in Task)
            raise ConfigError(f"unknown task '{self.task}'; valid tasks: {valid}") from None
        if self.head is not None:
            self._set_head(self.head)
        for name in ("num_samples", "verify_samples", "opset"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ConfigError(f"{name} must be an integer; got {value!r}")
            object.__setattr__(self, name, int(value))  # numpy integers become int
        if self.num_samples < 1 or self.verify_samples < 2:
            raise ConfigError(
                f"num_samples must be >= 1 and verify_samples >= 2; got {self.num_samples}, "
                f"{self.verify_samples}"
            )
        if self.opset < 18:
            raise ConfigError(
                f"opset must be >= 18 (torch.onnx's dynamo exporter); got {self.opset}"
            )
        key = self.output_key
        if isinstance(key, numbers.Integral) and not isinstance(key, bool) and key >= 0:
            object.__setattr__(self, "output_key", str(int(key)))  # a tuple index
        elif key is not None and (not isinstance(key, str) or not key):
            raise ConfigError(
                f"output_key must be a key of the model's output dict (a non-empty string) or "
                f"a tuple index >= 0; got {key!r}"
            )
        if not isinstance(self.posterior, str) or not self.posterior:
            raise ConfigError(f"posterior must be 'auto' or a family name; got {self.posterior!r}")
        nv = self.noise_variance
        if (
            nv is not None
            and nv != 0
            and not (isinstance(nv, numbers.Real) and math.isfinite(nv) and nv > 0)
        ):
            raise ConfigError(f"noise_variance must be a finite number > 0; got {nv}")

    def _set_head(self, head: Head | str) -> None:
        if head == "auto":
            object.__setattr__(self, "head", None)
            return
        try:
            object.__setattr__(self, "head", Head(head))
        except ValueError:
            valid = ", ".join(["auto", *(h.value for h in Head)])
            raise ConfigError(f"unknown head '{head}'; valid heads: {valid}") from None

    def replace(self, **changes: Any) -> ExportConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML values (enums as their strings)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, Task | Head) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportConfig:
        """The inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError` listing the
        valid ones."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"unknown export option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}"
            )
        return cls(**data)
