"""Provider registry: name -> session factory (ONNX Runtime EPs and native OpenVINO).

Backends register their factories with :func:`register_provider` (``ortsession`` registers
``cpu`` and ``dnnl``, ``ovsession`` registers ``openvino``). ``auto`` is resolved per model by
:mod:`qbnn.runtimes.autorule`; without a model it means the best available provider by rank.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .options import Precision, SessionOptions, parse_precision

__all__ = [
    "RETIRED",
    "BackendSession",
    "ProviderSpec",
    "SessionFactory",
    "available_providers",
    "known_providers",
    "register_provider",
    "resolve_provider",
]


@dataclass(frozen=True)
class BackendSession:
    """An open session and the float precision it computes in.

    ``session`` has ONNX Runtime's calling convention: ``run(output_names | None, feed) ->
    list[np.ndarray]`` (``feed``: name -> array; ``input [B, *F]`` float32, ``num_samples``
    int64 scalar), ``get_inputs()`` and ``get_outputs()`` (objects with ``name`` and ``shape``).
    """

    session: Any
    precision: Precision


#: ``factory(model, options, source) -> BackendSession``; ``model`` is the (re)seeded proto,
#: ``source`` names the file in error messages. Factories raise ``ModelLoadError`` (one line).
SessionFactory = Callable[[Any, SessionOptions, str], BackendSession]


@dataclass(frozen=True)
class ProviderSpec:
    """One runtime provider. ``ep``: the backend's own name for it (an ONNX Runtime EP, or
    ``openvino:CPU``). Lower ``rank`` is preferred by ``auto`` when no model is known."""

    name: str
    ep: str
    package: str
    rank: int
    factory: SessionFactory
    is_available: Callable[[], bool]
    precisions: tuple[Precision, ...] = (Precision.FP32,)
    description: str = ""
    default_options: dict[str, str] = field(default_factory=dict)


_REGISTRY: dict[str, ProviderSpec] = {}

#: Names that once were providers, with what to use instead.
RETIRED: dict[str, str] = {
    "ort-openvino": (
        "ONNX Runtime's OpenVINO EP (package onnxruntime-openvino) is retired: it replaced "
        "onnxruntime and needed its own venv; use 'openvino' (native OpenVINO, installed with qbnn)"
    ),
}


def register_provider(
    name: str,
    *,
    ep: str,
    package: str,
    rank: int,
    available: Callable[[], bool],
    precisions: tuple[Precision, ...] = (Precision.FP32,),
    description: str = "",
    default_options: dict[str, str] | None = None,
) -> Callable[[SessionFactory], SessionFactory]:
    """Decorator: register ``factory`` under ``name`` (names are unique)."""

    def deco(factory: SessionFactory) -> SessionFactory:
        if name in _REGISTRY or name in RETIRED or name == "auto":
            raise ValueError(f"provider '{name}' registered twice or reserved")
        _REGISTRY[name] = ProviderSpec(
            name, ep, package, rank, factory, available, tuple(precisions), description,
            dict(default_options or {}),
        )  # fmt: skip
        return factory

    return deco


def known_providers() -> dict[str, ProviderSpec]:
    """Every registered provider by name (best rank first), present on this machine or not."""
    return dict(sorted(_REGISTRY.items(), key=lambda kv: kv[1].rank))


def available_providers() -> list[str]:
    """Registered providers usable here, best rank first."""
    return [name for name, spec in known_providers().items() if spec.is_available()]


def _known() -> str:
    return ", ".join(["auto", *known_providers()])


def resolve_provider(name: str, precision: Precision | str = Precision.FP32) -> ProviderSpec:
    """A name -> its spec, or a one-line :class:`ConfigError`; ``auto`` -> the best available
    provider by rank that runs ``precision`` (the per-model rule is applied by
    :func:`qbnn.runtimes.session.open_model`)."""
    precision = parse_precision(precision)
    key = name.strip().lower() if isinstance(name, str) else name
    here = available_providers()
    if key == "auto":
        fits = [p for p in here if precision in _REGISTRY[p].precisions]
        if not fits:
            raise ConfigError(
                f"no available provider runs precision '{precision}'; available here: "
                f"{', '.join(here)}; use precision 'fp32'"
            )
        return _REGISTRY[fits[0]]
    if key in RETIRED:
        raise ConfigError(f"provider '{name}': {RETIRED[key]}. Known providers: {_known()}")
    if key not in _REGISTRY:
        raise ConfigError(
            f"unknown provider '{name}'; known providers: {_known()}; "
            f"available here: {', '.join(here)}"
        )
    spec = _REGISTRY[key]
    if key not in here:
        raise ConfigError(
            f"provider '{key}' ({spec.ep}) is not available here; it comes with {spec.package}. "
            f"Available here: {', '.join(here)}"
        )
    if precision not in spec.precisions:
        able = [p for p in here if precision in _REGISTRY[p].precisions]
        raise ConfigError(
            f"provider '{key}' runs {', '.join(spec.precisions)} only, got precision "
            f"'{precision}'; providers here that run it: {', '.join(able) or 'none'}"
        )
    return spec
