"""Execution-provider registry: name -> ONNX Runtime provider, chosen by name or ``auto``."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ConfigError

__all__ = [
    "ProviderSpec",
    "available_providers",
    "known_providers",
    "register_provider",
    "resolve_provider",
]


@dataclass(frozen=True)
class ProviderSpec:
    """One execution provider. Lower ``rank`` is preferred by ``auto``."""

    name: str
    ep: str
    package: str
    rank: int
    default_options: dict[str, str] = field(default_factory=dict)
    description: str = ""


_REGISTRY: dict[str, ProviderSpec] = {}


def register_provider(spec: ProviderSpec) -> ProviderSpec:
    """Add ``spec`` to the registry (names are unique)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"provider '{spec.name}' registered twice")
    _REGISTRY[spec.name] = spec
    return spec


register_provider(
    ProviderSpec(
        "dnnl",
        "DnnlExecutionProvider",
        "an onnxruntime built with --use_dnnl (no PyPI wheel)",
        0,
        description="oneDNN",
    )
)
register_provider(
    ProviderSpec(
        "openvino",
        "OpenVINOExecutionProvider",
        "onnxruntime-openvino (pip install 'qbnn[openvino]')",
        1,
        {"device_type": "CPU"},
        description="OpenVINO CPU plugin (oneDNN-based)",
    )
)
register_provider(
    ProviderSpec(
        "cpu",
        "CPUExecutionProvider",
        "onnxruntime",
        2,
        description="MLAS",
    )
)


def known_providers() -> dict[str, ProviderSpec]:
    """Every registered provider by name, present on this machine or not."""
    return dict(_REGISTRY)


def available_providers() -> list[str]:
    """Registered providers that the installed onnxruntime offers, best first."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    specs = sorted(_REGISTRY.values(), key=lambda s: s.rank)
    return [s.name for s in specs if s.ep in have]


def resolve_provider(name: str) -> ProviderSpec:
    """``auto`` -> the best available provider; a name -> its spec, or a clear error."""
    key = name.strip().lower()
    if key == "auto":
        return _REGISTRY[available_providers()[0]]
    if key not in _REGISTRY:
        raise ConfigError(
            f"unknown provider '{name}'; known providers: auto, {', '.join(_REGISTRY)}; "
            f"available here: {', '.join(available_providers())}"
        )
    spec = _REGISTRY[key]
    if key not in available_providers():
        raise ConfigError(
            f"provider '{key}' ({spec.ep}) is not in the installed onnxruntime; it comes with "
            f"{spec.package}. Available here: {', '.join(available_providers())}"
        )
    return spec
