"""The exporter registry: one entry per posterior family, filled by a decorator.

An entry (:class:`Exporter`) holds everything the rest of qbnn knows about a family: how
``auto`` detects it and in which order, its sampling modes and default, its trainer (for
``qbnn.source``), whether its draws are whole networks (the BatchNorm policy), how compress
reads its tensors, and its hooks into the export driver. Families are written only in
:mod:`qbnn.exporters.families`; everything else reads this registry.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version

import torch
from torch import nn

from qbnn.runtimes.contract import Task
from qbnn.runtimes.errors import ConfigError

from .tensors import CompressTensors

__all__ = [
    "BuiltModel",
    "Exporter",
    "SamplingMode",
    "detection_order",
    "get_exporter",
    "known_families",
    "register_exporter",
]


@dataclass(frozen=True)
class SamplingMode:
    """A parsed ``--sampling`` value: ``weight``, ``lrt``, ``flipout``, ``dropout``,
    ``members`` or ``frozen:K``."""

    name: str
    k: int | None = None

    def __str__(self) -> str:
        return f"{self.name}:{self.k}" if self.k is not None else self.name


@dataclass
class BuiltModel:
    """What an exporter hands to the export driver.

    ``module(input [B, *F], template [S])`` returns the contract's outputs.
    ``reference(x [B, *F], num_samples, generator) -> [S, B, C]`` samples the *torch* model the
    way its trainer does (pre-softmax outputs), for the self-check.
    ``exact`` means the graph is deterministic given the sample index (ensembles, frozen draws):
    the self-check then compares sample by sample instead of statistically.
    ``approximate`` names a reason the graph only approximates the torch sampler (e.g. LRT on
    convolutions): spread mismatches are then reported, not raised.
    ``reference_head``: the form of ``reference``'s outputs when it is fixed by the trainer
    (laplace-torch's predictive returns log-probabilities); None means the model's own head.
    ``members``: the K deterministic networks of a ``frozen:K`` export of a whole-network
    posterior (the same objects the graph module and ``reference`` use), for BatchNorm
    statistics recomputed per draw (:mod:`qbnn.exporters.checks.bnstats`).
    ``hint``: advice appended to a self-check refusal (e.g. the sampling mode that reproduces
    the trainer's sampler for this model).
    """

    module: nn.Module
    reference: Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]
    exact: bool = False
    approximate: str | None = None
    notes: list[str] = field(default_factory=list)
    reference_head: str | None = None
    members: list[nn.Module] | None = None
    hint: str | None = None


@dataclass(frozen=True, kw_only=True)
class Exporter:
    """A posterior family: how to detect it, which sampling modes it emits, how to build.

    ``priority``: ``auto`` tries families in ascending priority; ``detect(model) -> bool``
    sees the model only, ``detect_input(model, x)`` (optional) also the example input
    ``x [B, *F]`` and runs only when one is given. ``trainer``: the distribution whose version
    goes into ``qbnn.source`` (None: torch only). ``whole_network``: a draw is a whole network
    (BatchNorm statistics can be recomputed per ``frozen:K`` draw). ``tensors``: how compress
    reads the graph's posterior tensors, or why it refuses. Hooks into the export driver, all
    optional: ``check(model, x)`` raises before building; ``heteroscedastic``: the reason a
    heteroscedastic head is refused (None: allowed); ``noise_variance(model) -> float | None``:
    the default observation-noise variance of a regression export; ``last_layer(model) ->
    (network, name) | None``: the network and last-layer name a last-layer graph samples;
    ``undetected(model)``: raises when ``auto`` detected no family but ``model`` holds this
    family's layers in a form it cannot export; ``auto_hint``: advice added to ``auto``'s
    error (which posterior to pass for models detection cannot see); ``counted_modes``: modes
    that take an optional ``:K`` count (None when absent; ``frozen:K`` is always counted);
    ``resolve_mode(model, x, mode) -> SamplingMode``: the mode the family takes on this model
    and example input (a default that follows the model, a count read from its forward; the
    result is what ``build`` gets and ``qbnn.sampling`` records);
    ``view(model, x, mode) -> nn.Module | None``: the network whose output is the model's
    output form one row per example (one member of a network that stacks members on the batch
    axis), for the output-form checks;
    ``build_takes_input``: ``build`` also receives ``example=x [B, *F]`` (to trace the forward
    beforehand);
    ``default_for(model) -> str``: the default sampling mode for this model when it depends on
    the model's layers (None: ``default_mode``).
    """

    family: str
    modes: tuple[str, ...]
    default_mode: str
    detect: Callable[[object], bool]
    build: Callable[..., BuiltModel]
    description: str
    priority: int = 100
    detect_input: Callable[[object, torch.Tensor], bool] | None = None
    trainer: str | None = None
    whole_network: bool = False
    tensors: CompressTensors = field(default_factory=CompressTensors)
    check: Callable[[object, torch.Tensor], None] | None = None
    heteroscedastic: str | None = None
    noise_variance: Callable[[object], float | None] | None = None
    last_layer: Callable[[object], tuple[nn.Module, str] | None] | None = None
    undetected: Callable[[object], None] | None = None
    auto_hint: str | None = None
    counted_modes: tuple[str, ...] = ()
    resolve_mode: Callable[[object, torch.Tensor, SamplingMode], SamplingMode] | None = None
    view: Callable[[object, torch.Tensor, SamplingMode], nn.Module | None] | None = None
    build_takes_input: bool = False
    default_for: Callable[[object], str] | None = None

    def source(self) -> str:
        """The ``qbnn.source`` text: the trainer's version (when it has one) and torch's."""
        if self.trainer is not None:
            return f"{self.trainer} {version(self.trainer)}; torch {torch.__version__}"
        return f"torch {torch.__version__}"

    def parse_mode(
        self, sampling: str | None, num_samples: int, model: object = None
    ) -> SamplingMode:
        """Validate ``sampling`` for this family; ``frozen`` alone means ``frozen:num_samples``.
        No ``sampling``: the family's default for ``model`` (``default_for``, else
        ``default_mode``)."""
        raw = (sampling or self.default_for_model(model)).strip().lower()
        m = re.fullmatch(r"([a-z]+)(?::(\d+))?", raw)
        name = m.group(1) if m else raw
        if not m or name not in self.modes:
            raise ConfigError(
                f"sampling mode '{sampling}' is not valid for the '{self.family}' family; "
                f"valid modes: {', '.join(self.mode_names())}"
            )
        if name == "frozen":
            k = int(m.group(2)) if m.group(2) else num_samples
            if k < 1:
                raise ConfigError(f"frozen:K needs K >= 1, got {k}")
            return SamplingMode(name, k)
        if name in self.counted_modes:
            k = int(m.group(2)) if m.group(2) else None
            if k is not None and k < 1:
                raise ConfigError(f"{name}:K needs K >= 1, got {k}")
            return SamplingMode(name, k)
        if m.group(2):
            raise ConfigError(f"sampling mode '{name}' takes no ':K' suffix (got '{sampling}')")
        return SamplingMode(name)

    def default_for_model(self, model: object = None) -> str:
        """The sampling mode used when none is given, for ``model`` (None: the family's)."""
        if model is not None and self.default_for is not None:
            return self.default_for(model)
        return self.default_mode

    def mode_names(self) -> list[str]:
        """The family's sampling modes as users spell them (``frozen:K``, ``members[:K]``)."""
        counted = {m: f"{m}[:K]" for m in self.counted_modes} | {"frozen": "frozen:K"}
        return [counted.get(m, m) for m in self.modes]


_REGISTRY: dict[str, Exporter] = {}


def register_exporter(family: str, **spec: object):
    """Decorator registering ``build(model, mode, *, task, seed) -> BuiltModel`` for ``family``;
    ``spec``: the other :class:`Exporter` fields (``modes``, ``default_mode``, ``detect`` and
    ``description`` are required). Raises ValueError for a family registered twice."""

    def deco(build: Callable[..., BuiltModel]) -> Callable[..., BuiltModel]:
        if family in _REGISTRY:
            raise ValueError(f"exporter family '{family}' registered twice")
        _REGISTRY[family] = Exporter(family=family, build=build, **spec)
        return build

    return deco


def detection_order() -> list[Exporter]:
    """The registered exporters in ``auto``'s order (ascending priority, then name)."""
    return sorted(_REGISTRY.values(), key=lambda e: (e.priority, e.family))


def known_families() -> dict[str, Exporter]:
    """All registered exporters by family name, in alphabetical order."""
    return dict(sorted(_REGISTRY.items()))


def get_exporter(family: str) -> Exporter:
    """The exporter for ``family``; unknown names raise :class:`ConfigError` listing the known."""
    try:
        return _REGISTRY[family]
    except KeyError:
        raise ConfigError(
            f"unknown posterior family '{family}'; known families: auto, "
            f"{', '.join(sorted(_REGISTRY))}"
        ) from None


def task_of(task: str | Task) -> Task:
    """Parse a task name with a clear error."""
    try:
        return Task(task)
    except ValueError:
        raise ConfigError(
            f"unknown task '{task}'; valid tasks: {', '.join(t.value for t in Task)}"
        ) from None
